"""Stamping and numbering the frames every source hands out, in one place.

Every source, live or recorded, must stamp a Frame the same way (a time.monotonic() capture time for
deadlines, its UTC wall time for logs), turn a camera's frame ids into an increasing seq, and pace a
recording like a camera would. Sources import these from here; this module imports no source.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from edgead.protocols import Frame


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
