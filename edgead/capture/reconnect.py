"""Keep a live camera going through unplugging, power cycles and network drops.

A camera that disappears mid-shift must come back by itself, and the line must know what it missed:
ReconnectingSource closes the source on an EdgeADError, retries open() with exponential backoff (up
to a cap), counts reconnects, the time without frames and (where seq numbers tell) the frames lost,
and logs each step. It never blocks longer than about one read timeout plus one open() attempt, so the
run loop keeps its own clock (deadlines, health, shutdown) while the camera is away.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from edgead.errors import EdgeADError
from edgead.protocols import Frame, FrameSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Delay before reopen attempt n (0, 1, 2...): initial_s * factor**n, at most max_s."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * self.factor ** min(attempt, 64))


class ReconnectingSource:
    """A FrameSource wrapper: read() returns None while the camera is away, then frames again.

    Counters: `reconnects` (successful reopens), `gap_s_total` (seconds from the last frame before a
    loss to the first one after it), `frames_lost` (seq numbers skipped across those gaps; a camera
    that restarted its count tells nothing and adds 0), `failed_attempts` (reopens that failed).
    Frames keep an increasing seq across a restarted count (the camera's own is then in
    meta["source_seq"]). A recording (source.live False: video file, image folder) is not reopened:
    its errors propagate. A driver's own exception counts as a loss like an EdgeADError. `on_lost`
    hears of each loss (the run loop counts them); `opened` says the source is already open, so the
    first read does not open it again. `sleep` and `clock` are injectable so tests need no real waiting.
    """

    def __init__(self, source: FrameSource, backoff: Backoff | None = None, *,
                 on_lost: Callable[[EdgeADError], None] | None = None, opened: bool = False,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.on_lost = on_lost
        self.name: str = source.name
        self.live: bool = source.live               # as the wrapped source: a camera, or a recording
        self.backoff = backoff or Backoff()
        self._sleep, self._clock = sleep, clock
        self.reconnects: int = 0
        self.gap_s_total = 0.0
        self.frames_lost = 0
        self.failed_attempts = 0
        self.connected: bool = opened
        self._started = opened                      # open() done once (its errors propagate)
        self.last_error: EdgeADError | None = None
        self._attempt = 0
        self._next_try = 0.0
        self._lost_at: float | None = None          # clock() when the loss was noticed
        self._gap_open = False                      # a reconnect whose first frame has not come yet
        self._last_seq: int | None = None           # seq as the source numbered it
        self._last_t: float | None = None           # t_capture of the last frame handed out
        self._offset = 0                            # added to the source's seq after a restarted count
        self._last_out: int | None = None

    @property
    def finished(self) -> bool:
        """A recording that ended (video file, image folder); never true for a live camera."""
        return self.source.finished

    def accounting(self) -> dict[str, Any] | None:
        """The wrapped source's: a recording's frame counts, None for a live camera."""
        return self.source.accounting()

    def open(self) -> None:
        """First open (a no-op for a source open_source already opened): errors propagate, so a wrong
        id or setting stops the start-up with its message instead of being retried forever."""
        self.source.open()
        self.connected = self._started = True

    def read(self, timeout_s: float) -> Frame | None:
        if not self._started:
            self.open()
        if not self.connected:
            return self._try_reopen(timeout_s)
        try:
            frame = self.source.read(timeout_s)
        except Exception as e:
            if not self.source.live:
                raise                       # a bad file in a recording does not get better by reopening
            self._lost(e if isinstance(e, EdgeADError) else
                       EdgeADError(f"camera error: {e!r}", "check the camera's cable, power and driver"))
            return None
        return self._account(frame) if frame is not None else None

    def close(self) -> None:
        self.connected = self._started = False
        self.source.close()

    @staticmethod
    def _plain(error: EdgeADError) -> EdgeADError:
        """The error without its traceback, whose frames could keep a half-open camera alive."""
        return EdgeADError(error.message, error.hint)

    def _lost(self, error: EdgeADError) -> None:
        self.connected = False
        self.last_error = self._plain(error)
        self._lost_at = self._clock()
        self._attempt = 0
        self._next_try = self._lost_at + self.backoff.delay(0)
        log.warning("%s: camera lost (%s); reconnecting in %.2f s", self.name, error.message,
                    self.backoff.delay(0))
        self._close_quietly()
        if self.on_lost is not None:
            self.on_lost(self.last_error)

    def _close_quietly(self) -> None:
        try:
            self.source.close()
        except Exception as e:                       # a half-dead camera may fail to close; reopen anyway
            log.debug("%s: close after loss failed: %s", self.name, e)

    def _try_reopen(self, timeout_s: float) -> Frame | None:
        wait = self._next_try - self._clock()
        if wait > 0:
            self._sleep(min(wait, max(timeout_s, 0.0)))
            if wait > timeout_s:
                return None
        try:
            self.source.open()
        except EdgeADError as e:
            self.failed_attempts += 1
            self._attempt += 1
            self.last_error = self._plain(e)
            delay = self.backoff.delay(self._attempt)
            self._next_try = self._clock() + delay
            log.info("%s: reopen attempt %d failed (%s); next in %.2f s", self.name, self._attempt,
                     e.message, delay)
            self._close_quietly()
            return None
        self.connected = True
        self.reconnects += 1
        self._gap_open = True
        away = self._clock() - (self._lost_at if self._lost_at is not None else self._clock())
        log.warning("%s: camera back after %.2f s (%d failed attempts)", self.name, away, self._attempt)
        return None

    def _account(self, frame: Frame) -> Frame:
        if self._gap_open:
            self._gap_open = False
            start = self._last_t if self._last_t is not None else self._lost_at
            gap = max(0.0, frame.t_capture - start) if start is not None else 0.0
            lost = 0
            if self._last_seq is not None and frame.seq > self._last_seq:
                lost = frame.seq - self._last_seq - 1
            self.gap_s_total += gap
            self.frames_lost += lost
            log.warning("%s: first frame after reconnect: %.2f s without frames, %s", self.name, gap,
                        f"{lost} frames lost" if self._last_seq is not None and frame.seq > self._last_seq
                        else "frames lost unknown (the camera restarted its count)")
        self._last_seq, self._last_t = frame.seq, frame.t_capture
        out = frame.seq + self._offset
        if self._last_out is not None and out <= self._last_out:
            self._offset += self._last_out + 1 - out
            out = self._last_out + 1
        self._last_out = out
        if out != frame.seq:
            frame = dataclasses.replace(frame, seq=out, meta={**frame.meta, "source_seq": frame.seq})
        return frame
