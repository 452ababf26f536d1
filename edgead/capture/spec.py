"""One spec string names the camera or recording; open_source turns it into an opened FrameSource.

A line engineer writes one `source:` value, so every kind of source is told apart here, by its form:

    open_source("0")                          OpenCV device index (also "/dev/video0")
    open_source("parts.mp4")                  a video file (finished at the end; camera.loop to repeat)
    open_source("rtsp://cam/stream")          a network stream (also rtsps://, http://, https://)
    open_source("gst:v4l2src ! videoconvert ! appsink")   GStreamer through OpenCV (needs a GStreamer build)
    open_source("/data/parts")                a folder of images, replayed in name order
    open_source("gige:Basler-12345")          a GigE Vision camera through Aravis ("gige:" = the first one;
                                              the id may be the Aravis id, serial number, MAC or IP address)
    open_source("genicam:/opt/vendor/x.cti:12345")   a GenTL producer (.cti) through Harvesters, by serial

Each kind's module is imported only when that kind is named, so an optional library (Aravis,
Harvesters) is needed only by the sources that use it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from edgead.capture.config import CameraConfig
from edgead.errors import EdgeADError
from edgead.protocols import FrameSource

SPEC_HELP = ("use a device index like 0, a video file, a folder of images, rtsp://... or http://..., "
             "gst:<pipeline>, gige:<camera id> (gige: for the first), or genicam:<producer.cti>[:<serial>]")

_URL_SCHEMES = ("rtsp", "rtsps", "http", "https")


def open_source(spec: str, camera_config: dict[str, Any] | CameraConfig | None = None, *,
                connect: bool = True) -> FrameSource:
    """Build the FrameSource a spec string names, configured by the `camera:` YAML section, and open it.

    Opening here makes a wrong id, path or setting fail at start with its EdgeADError, before any
    part passes uninspected. `connect=False` only builds it (ReconnectingSource.open opens it).
    """
    config = CameraConfig.from_dict(camera_config)
    source = _build(str(spec).strip(), config)
    if connect:
        source.open()
    return source


def _build(spec: str, config: CameraConfig) -> FrameSource:
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
