"""OpenCV VideoCapture sources: USB/V4L2 cameras, network streams, GStreamer pipelines, video files.

Live sources (OpenCVCamera) raise EdgeADError when frames stop coming, so ReconnectingSource can
reopen them; a video file (VideoFileSource) ends cleanly: read() returns None and `finished` is True.
Frames are RGB (OpenCV's BGR is converted once, here).
"""

from __future__ import annotations

import glob
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from edgead.capture.accounting import FrameAccount
from edgead.capture.config import CameraConfig
from edgead.capture.frames import Pacer, make_frame
from edgead.errors import EdgeADError, redact_text
from edgead.protocols import Frame

log = logging.getLogger(__name__)

CaptureFactory = Callable[..., Any]      # cv2.VideoCapture, or a test double with the same calls


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return image


def has_gstreamer(build_information: str | None = None) -> bool:
    """Whether this OpenCV was built with GStreamer (pip's opencv-python wheels are not)."""
    info = cv2.getBuildInformation() if build_information is None else build_information
    found = re.search(r"GStreamer:\s*(\S+)", info)
    return found is not None and found.group(1).upper().startswith("YES")


class OpenCVCamera:
    """A live camera or stream: a device index, a /dev/video path, a URL, or a GStreamer pipeline.

    seq counts frames from 0 per open; t_capture is taken right after the frame is read (OpenCV
    gives no reliable capture time), and a driver timestamp, when there is one, goes to
    meta["camera_timestamp_ms"]. `max_failures` failed reads in a row mean the camera is gone.
    """

    SUPPORTED = {"frame_rate", "timeout_ms"}
    live: bool = True
    finished: bool = False          # a live camera never ends

    def __init__(self, target: int | str, *, config: CameraConfig | None = None, api: int = cv2.CAP_ANY,
                 name: str | None = None, max_failures: int = 3,
                 capture_factory: CaptureFactory = cv2.VideoCapture) -> None:
        self.target = target
        self.config = config or CameraConfig()
        self.api = api
        self.kind = "gst" if api == cv2.CAP_GSTREAMER else "device" if isinstance(target, int) or \
            str(target).startswith("/dev/") else "stream"
        self.name: str = name or (f"opencv:{target}" if self.kind == "device" else redact_text(str(target)))
        self.max_failures = max_failures
        self._factory = capture_factory
        self._cap: Any = None
        self._seq = 0
        self._failures = 0
        supported = set() if self.kind == "gst" else \
            self.SUPPORTED if self.kind == "device" else {"timeout_ms"}
        self.config.check_supported(self.name, supported, live=True)

    def accounting(self) -> dict[str, Any] | None:
        """None: a live camera or stream promises no number of frames (losses show as seq gaps)."""
        return None

    def open(self) -> None:
        if self._cap is not None:
            return
        ms = self.config.timeout_ms
        if self.kind == "stream":
            cap = self._factory(self.target, cv2.CAP_FFMPEG,
                                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        else:
            cap = self._factory(self.target, self.api)
        if not cap.isOpened():
            cap.release()
            raise self._open_error()
        if self.kind == "device":
            cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms)          # honoured by V4L2; others ignore it
            if self.config.frame_rate is not None:
                cap.set(cv2.CAP_PROP_FPS, self.config.frame_rate)
                got = cap.get(cv2.CAP_PROP_FPS)
                if got and abs(got - self.config.frame_rate) > 0.01 * self.config.frame_rate:
                    log.warning("%s: asked for %.3g fps, the driver runs %.3g fps", self.name,
                                self.config.frame_rate, got)
        self._cap, self._seq, self._failures = cap, 0, 0

    def read(self, timeout_s: float) -> Frame | None:
        """Next frame. OpenCV reads block: the wait is bounded by camera.timeout_ms, not timeout_s."""
        if self._cap is None:
            raise EdgeADError(f"{self.name} is not open", "call open() first")
        ok, image = self._cap.read()
        t = time.monotonic()
        if not ok or image is None:
            self._failures += 1
            if self._failures >= self.max_failures:
                raise EdgeADError(f"{self.name} stopped delivering frames ({self._failures} failed reads)",
                                  "check the cable/power or the network; the source reconnects when it is back")
            return None
        self._failures = 0
        meta: dict[str, Any] = {}
        stamp = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        if stamp and stamp > 0:
            meta["camera_timestamp_ms"] = float(stamp)
        frame = make_frame(_rgb(image), self._seq, self.name, t, meta)
        self._seq += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _open_error(self) -> EdgeADError:
        if self.kind == "device":
            nodes = sorted(glob.glob("/dev/video*"))
            dev = f"/dev/video{self.target}" if isinstance(self.target, int) else self.target
            label = f"camera {self.target}"
            return EdgeADError(
                f"{label} could not be opened",
                f"check that {dev} exists (found: {', '.join(nodes) or 'no /dev/video* devices'}), that this "
                "user may open it (group 'video'), and that no other program is using the camera")
        if self.kind == "gst":
            return EdgeADError(f"GStreamer pipeline could not be started: {self.target}",
                               "try it with gst-launch-1.0 first; it must end in appsink")
        return EdgeADError(
            f"stream {self.name} could not be opened",
            f"check the address, user and password, that the camera answers (ping) and the port is open; "
            f"waited {self.config.timeout_ms} ms (camera.timeout_ms)")


def gstreamer_camera(pipeline: str, *, config: CameraConfig | None = None,
                     build_information: str | None = None) -> OpenCVCamera:
    """A GStreamer pipeline (ending in appsink) read through OpenCV; a clear error without GStreamer."""
    pipeline = pipeline.strip()
    if not pipeline:
        raise EdgeADError("gst: needs a pipeline", "e.g. gst:v4l2src device=/dev/video0 ! videoconvert ! appsink")
    if not has_gstreamer(build_information):
        raise EdgeADError(
            "this OpenCV build has no GStreamer support, so gst: pipelines cannot be opened",
            "use an OpenCV built with GStreamer (e.g. Debian's python3-opencv, or a source build with "
            "-D WITH_GSTREAMER=ON) instead of the pip wheel, or open the camera another way "
            "(device index, rtsp://)")
    return OpenCVCamera(pipeline, config=config, api=cv2.CAP_GSTREAMER, name=f"gst:{pipeline}")


class VideoFileSource:
    """A recorded video: seq is the frame index (counting on through loops); ends with `finished`.

    camera.frame_rate paces playback (default: as fast as read() is called); camera.loop starts
    again after the last frame. meta has the file, frame_index, pass and the video's pos_ms.
    `accounting()` says how many frames the container promised, were read and could not be read: a
    failed read before the container's last frame is not the end: the reader goes on past it, and
    the frames it could not decode, and those between the last one read and the container's end,
    count as unreadable, so read + unreadable == expected when the container knows its count.
    """

    SUPPORTED = {"frame_rate", "loop"}
    PLAIN_RETRIES = 1024    # failed reads in a row before a damaged file is given up
    live: bool = False      # a recording: ReconnectingSource passes its errors through

    def __init__(self, path: str | Path, *, config: CameraConfig | None = None, loop: bool | None = None,
                 fps: float | None = None, sleep: Callable[[float], None] = time.sleep,
                 capture_factory: CaptureFactory = cv2.VideoCapture) -> None:
        self.path = Path(path)
        self.config = config or CameraConfig()
        self.loop = self.config.loop if loop is None else loop
        self.fps = self.config.frame_rate if fps is None else fps
        self.name: str = f"video:{self.path}"
        self._pacer = Pacer(self.fps, sleep)
        self._factory = capture_factory
        self._cap: Any = None
        self._seq = 0
        self._index = 0             # the container's index of the next frame
        self._pass = 0
        self._pass_read = 0         # frames handed out in this pass
        self._file_fps = 0.0
        self._account = FrameAccount()
        self.finished: bool = False
        self.config.check_supported(self.name, self.SUPPORTED, live=False)

    def accounting(self) -> dict[str, Any] | None:
        return self._account.as_dict()

    def open(self) -> None:
        if self._cap is not None:
            return
        if not self.path.is_file():
            raise EdgeADError(f"video file not found: {self.path}", "check the path")
        self._cap = self._capture()
        count = float(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._account = FrameAccount(expected=int(count) if math.isfinite(count) and count >= 1 else None,
                                     passes=1)
        self._file_fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0)
        self._seq = self._index = self._pass = self._pass_read = 0
        self._pacer.reset()
        self.finished = False

    def _capture(self) -> Any:
        cap = self._factory(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise EdgeADError(f"cannot open video file {self.path}: not a video, or its codec is not in "
                              "this OpenCV build", "convert it (e.g. to H.264 .mp4 or MJPG .avi) or check the file")
        return cap

    def read(self, timeout_s: float) -> Frame | None:
        if self.finished:
            return None
        if self._cap is None:
            raise EdgeADError(f"{self.name} is not open", "call open() first")
        if not self._pacer.wait(self._seq, timeout_s):
            return None
        image = self._next_image()
        if image is None and self.loop and self._pass_read > 0:
            self._end_of_pass()
            self._cap.release()
            self._cap = self._capture()
            self._index, self._pass, self._pass_read = 0, self._pass + 1, 0
            self._account.passes += 1
            image = self._next_image()
        if image is None:
            self._end_of_pass()
            self.finished = self._account.finished = True
            log.info("%s: end of file after %d frames", self.name, self._seq)
            return None
        meta = {"file": str(self.path), "frame_index": self._index, "pass": self._pass,
                "pos_ms": float(self._cap.get(cv2.CAP_PROP_POS_MSEC))}
        frame = make_frame(_rgb(image), self._seq, self.name, meta=meta)
        self._seq += 1
        self._index += 1
        self._pass_read += 1
        self._account.read += 1
        return frame

    def _end_of_pass(self) -> None:
        """The pass is over: the frames between the last one read and the container's end are lost."""
        expected = self._account.expected
        if expected is not None and self._index < expected:
            lost = expected - self._index
            self._account.unreadable += lost
            log.warning("%s: the file ended at frame %d of the %d its container lists: %d frame(s) could "
                        "not be read (truncated or damaged file)", self.name, self._index, expected, lost)
            self._index = expected

    def _next_image(self) -> np.ndarray | None:
        ok, image = self._cap.read()
        if ok and image is not None:
            return image
        return self._read_past_failure()

    def _read_past_failure(self) -> np.ndarray | None:
        """A read failed at self._index: read on past the bad frames when the container has more.

        A damaged frame costs a failed read and the demuxer carries on after it, so plain reads go
        on, up to PLAIN_RETRIES failures in a row (or the frames the container has left). Seeking
        ahead is not tried: where frames vanished unnoticed before, a seek lands on frames already
        handed out and they would be inspected twice; the frames never reached count as unreadable.
        """
        expected = self._account.expected
        if expected is not None and self._index >= expected:
            return None                                       # the normal end
        remaining = expected - self._index if expected is not None else self.PLAIN_RETRIES
        for failed in range(1, min(remaining, self.PLAIN_RETRIES)):
            ok, image = self._cap.read()
            if ok and image is not None:
                return self._resync(image, self._index + failed)
        return None

    def _resync(self, image: np.ndarray, guess: int) -> np.ndarray:
        """A frame decoded again after failed reads: its index from its timestamp (else `guess`, one
        frame per failed read); the frames between the last one handed out and it are unreadable."""
        at = self._position()
        index = at if at is not None and at >= self._index else guess
        if self._account.expected is not None:
            index = min(index, self._account.expected - 1)
        lost = max(index - self._index, 0)
        self._account.unreadable += lost
        if lost:
            log.warning("%s: %d frame(s) from frame %d could not be decoded; reading on at frame %d",
                        self.name, lost, self._index, index)
        self._index = index
        return image

    def _position(self) -> int | None:
        """The container's index of the frame just read, from its timestamp (None when unknown)."""
        ms = float(self._cap.get(cv2.CAP_PROP_POS_MSEC) or 0)
        if self._file_fps <= 0 or not math.isfinite(ms) or ms < 0:
            return None
        return int(round(ms * self._file_fps / 1000.0))

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
