"""Cameras and recordings as FrameSources, chosen by one spec string.

    open_source("0")                          OpenCV device index (also "/dev/video0")
    open_source("parts.mp4")                  a video file (finished at the end; camera.loop to repeat)
    open_source("rtsp://cam/stream")          a network stream (also rtsps://, http://, https://)
    open_source("gst:v4l2src ! videoconvert ! appsink")   GStreamer through OpenCV (needs a GStreamer build)
    open_source("/data/parts")                a folder of images, replayed in name order
    open_source("gige:Basler-12345")          a GigE Vision camera through Aravis ("gige:" = the first one;
                                              the id may be the Aravis id, serial number, MAC or IP address)
    open_source("genicam:/opt/vendor/x.cti:12345")   a GenTL producer (.cti) through Harvesters, by serial

Each kind lives in its own module and optional libraries (Aravis, Harvesters) are imported only
when that kind is opened, so the edge install stays numpy + OpenCV. Wrap a live camera in
ReconnectingSource to survive unplugging.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgead.errors import EdgeADError
from edgead.protocols import Frame, FrameSource

SPEC_HELP = ("use a device index like 0, a video file, a folder of images, rtsp://... or http://..., "
             "gst:<pipeline>, gige:<camera id> (gige: for the first), or genicam:<producer.cti>[:<serial>]")

_URL_SCHEMES = ("rtsp", "rtsps", "http", "https")


def wall_time(t_capture: float) -> str:
    """ISO-8601 UTC of a time.monotonic() instant (for logs; deadlines use the monotonic value)."""
    wall = time.time() - (time.monotonic() - t_capture)
    return datetime.fromtimestamp(wall, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_frame(image: np.ndarray, seq: int, source: str, t_capture: float | None = None,
               meta: dict[str, Any] | None = None) -> Frame:
    """A Frame stamped now (or at `t_capture`, a time.monotonic() value)."""
    t = time.monotonic() if t_capture is None else t_capture
    return Frame(image=image, seq=seq, t_capture=t, wall_time=wall_time(t), source=source, meta=meta or {})


class FrameIds:
    """Turn a camera's frame ids into an increasing seq and count the ids that never arrived.

    GigE Vision 1.x block ids are 16 bits and skip 0 (65535 is followed by 1). An id at or below the
    last one that is not such a wrap means the camera restarted its count: seq carries on, and the
    frames lost in between are unknown (not counted). Ids that never change (a producer without
    frame ids) make seq a plain counter.
    """

    WRAP = 1 << 16

    def __init__(self) -> None:
        self.last_id: int | None = None
        self.seq = -1

    def update(self, frame_id: int) -> tuple[int, int]:
        """(seq for this frame, ids missing just before it)."""
        missing = 0
        if self.last_id is None:
            self.seq = max(int(frame_id), 0)
        elif frame_id > self.last_id:
            missing = frame_id - self.last_id - 1
            self.seq += frame_id - self.last_id
        elif self.last_id < self.WRAP <= self.last_id + 1024 and 0 < frame_id < 1024:
            step = (self.WRAP - 1 - self.last_id) + frame_id      # 65535 -> 1 is one step
            missing = step - 1
            self.seq += step
        else:
            self.seq += 1
        self.last_id = int(frame_id)
        return self.seq, missing


class Pacer:
    """Hand out recorded frames at `fps` (frame n is due n/fps after the first); None = no pacing."""

    def __init__(self, fps: float | None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.fps = fps
        self._sleep = sleep
        self._t0: float | None = None

    def reset(self) -> None:
        self._t0 = None

    def wait(self, n: int, timeout_s: float) -> bool:
        """Sleep until frame n is due; False (after sleeping timeout_s) when it is not due in time."""
        if not self.fps:
            return True
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        wait = self._t0 + n / self.fps - now
        if wait > timeout_s:
            self._sleep(max(timeout_s, 0.0))
            return False
        if wait > 0:
            self._sleep(wait)
        return True


def open_source(spec: str, camera_config: dict[str, Any] | None = None, *, connect: bool = True) -> FrameSource:
    """Build the FrameSource a spec string names, configured by the `camera:` YAML section, and open it.

    Opening here makes a wrong id, path or setting fail at start with its EdgeADError, before any
    part passes uninspected. `connect=False` only builds it (ReconnectingSource.open opens it).
    """
    from edgead.capture.config import CameraConfig

    config = CameraConfig.from_dict(camera_config)
    source = _build(str(spec).strip(), config)
    if connect:
        source.open()
    return source


def _build(spec: str, config: Any) -> FrameSource:
    if not spec:
        raise EdgeADError("empty camera spec", SPEC_HELP)
    if re.fullmatch(r"\d+", spec) or re.fullmatch(r"/dev/video\d+", spec):
        from edgead.capture.opencv import OpenCVCamera
        return OpenCVCamera(int(spec) if spec.isdigit() else spec, config=config)
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", spec)
    if scheme and len(scheme.group(1)) > 1:               # "C:\..." is a Windows path, not a scheme
        kind, rest = scheme.group(1).lower(), spec[scheme.end():]
        if kind in _URL_SCHEMES:
            from edgead.capture.opencv import OpenCVCamera
            return OpenCVCamera(spec, config=config)
        if kind == "gst":
            from edgead.capture.opencv import gstreamer_camera
            return gstreamer_camera(rest, config=config)
        if kind == "gige":
            from edgead.capture.gige import GigESource
            return GigESource(rest.strip(), config=config)
        if kind == "genicam":
            from edgead.capture.genicam import GenICamSource, parse_genicam_spec
            cti, serial = parse_genicam_spec(rest)
            return GenICamSource(cti, serial, config=config)
        if not Path(spec).exists():
            raise EdgeADError(f"unknown camera spec '{spec}'", SPEC_HELP)
    path = Path(spec).expanduser()
    if path.is_dir():
        from edgead.capture.replay import ReplaySource
        return ReplaySource(path, config=config)
    if path.is_file():
        from edgead.capture.opencv import VideoFileSource
        return VideoFileSource(path, config=config)
    raise EdgeADError(f"camera spec '{spec}' is not a device index, URL or known prefix, "
                      "and no such file or folder exists", SPEC_HELP)


from edgead.capture.reconnect import Backoff, ReconnectingSource  # noqa: E402  (re-export; no cycle)

__all__ = ["Backoff", "FrameIds", "Pacer", "ReconnectingSource", "make_frame", "open_source", "wall_time"]
