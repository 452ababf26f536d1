"""Cameras and recordings as FrameSources, chosen by one spec string (see spec.py for the forms).

The run loop needs one import for every kind of source, so the public names are gathered here; the
work is in the modules: spec.py (spec string -> source), opencv.py (USB cameras, streams, GStreamer,
video files), replay.py (image folders), gige.py (GigE Vision via Aravis), genicam.py (GenTL via
Harvesters), reconnect.py (surviving an unplugged camera), frames.py (stamping and numbering frames),
accounting.py (a recording's frames promised, read, unreadable and skipped), pixels.py (raw buffers
to images) and config.py (the `camera:` YAML section).

Edge path: numpy + OpenCV, no torch. Aravis and Harvesters are imported only when a gige: or
genicam: source is opened. Wrap a live camera in ReconnectingSource to survive unplugging.
"""

from __future__ import annotations

from edgead.capture.frames import FrameIds, Pacer, make_frame, wall_time
from edgead.capture.reconnect import Backoff, ReconnectingSource
from edgead.capture.spec import open_source

__all__ = ["Backoff", "FrameIds", "Pacer", "ReconnectingSource", "make_frame", "open_source", "wall_time"]
