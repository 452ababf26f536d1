"""Replay a folder of images as if a camera took them: to test a line set-up without the line.

Images go out in name order (zero-pad numbered names: frame_0010 after frame_0009), optionally at
camera.frame_rate, and `finished` turns True after the last one (camera.loop starts again). An
unreadable image stops the replay with an EdgeADError naming the file (and counts as unreadable), or
with camera.skip_bad it is logged, counted in `skipped`, listed by name in `accounting()`, and the
next image follows.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from edgead.capture.accounting import FrameAccount
from edgead.capture.config import CameraConfig
from edgead.capture.frames import Pacer, make_frame
from edgead.data.images import IMAGE_EXTENSIONS, list_images, read_image
from edgead.errors import EdgeADError
from edgead.io import check_input
from edgead.protocols import Frame

log = logging.getLogger(__name__)


class ReplaySource:
    """seq counts frames handed out (through loops); meta has the file and its index in the folder."""

    SUPPORTED = {"frame_rate", "loop", "skip_bad"}
    live: bool = False      # a recording: ReconnectingSource passes its errors through

    def __init__(self, folder: str | Path, *, config: CameraConfig | None = None, fps: float | None = None,
                 loop: bool | None = None, skip_bad: bool | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.folder = Path(folder)
        self.config = config or CameraConfig()
        self.fps = self.config.frame_rate if fps is None else fps
        self.loop = self.config.loop if loop is None else loop
        self.skip_bad = self.config.skip_bad if skip_bad is None else skip_bad
        self.name: str = f"replay:{self.folder}"
        self.skipped = 0            # images skipped (each time, through loops)
        self.finished: bool = False
        self._account = FrameAccount()
        self._pacer = Pacer(self.fps, sleep)
        self._files: list[Path] | None = None
        self._next = 0
        self._seq = 0
        self._pass = 0
        self.config.check_supported(self.name, self.SUPPORTED, live=False)

    def open(self) -> None:
        if self._files is not None:
            return
        check_input(self.folder, kind="dir", what="--camera",
                    hint="give a folder of images to replay (--camera, or 'camera.source' in the run config)")
        files = list_images(self.folder)
        if not files:
            raise EdgeADError(f"no images in {self.folder}",
                              f"put {', '.join(IMAGE_EXTENSIONS)} files directly in the folder (subfolders are not read)")
        self._files, self._next, self._seq, self._pass = files, 0, 0, 0
        self._account = FrameAccount(expected=len(files), passes=1)
        self.finished = False
        self._pacer.reset()

    def read(self, timeout_s: float) -> Frame | None:
        if self.finished:
            return None
        if self._files is None:
            raise EdgeADError(f"{self.name} is not open", "call open() first")
        if not self._pacer.wait(self._seq, timeout_s):
            return None
        bad_in_a_row = 0
        while True:
            if self._next >= len(self._files):
                if not self.loop or bad_in_a_row >= len(self._files):
                    self.finished = self._account.finished = True
                    log.info("%s: replay finished after %d frames (%d skipped)", self.name, self._seq, self.skipped)
                    return None
                self._next, self._pass = 0, self._pass + 1
                self._account.passes += 1
            path = self._files[self._next]
            index = self._next
            self._next += 1
            try:
                image = read_image(path)
            except EdgeADError as e:
                if not self.skip_bad:
                    self._account.unreadable += 1
                    raise EdgeADError(f"replay stopped at {path.name}: {e.message}",
                                      "fix or remove the file, or set camera.skip_bad: true") from e
                self.skipped += 1
                self._account.skip(path.name)
                bad_in_a_row += 1
                log.warning("%s: skipped unreadable %s (%s)", self.name, path.name, e.message)
                continue
            frame = make_frame(image, self._seq, self.name,
                               meta={"file": str(path), "index": index, "pass": self._pass})
            self._seq += 1
            self._account.read += 1
            return frame

    def accounting(self) -> dict[str, Any] | None:
        return self._account.as_dict()

    def close(self) -> None:
        self._files = None
