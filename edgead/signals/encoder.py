"""The belt position from an encoder's counter, so a reject delay can follow the belt, not the clock.

The tracker only samples and interpolates a count; where the count comes from (a PLC register,
edges on a GPIO line) is encoder_sources.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from typing import Callable

from edgead.signals.scheduler import Clock


class EncoderTracker:
    """The belt position in encoder counts, sampled every poll_s, unwrapped past 2**bits.

    count_at(t) answers "where was the belt when this part was captured" by interpolating the
    recent samples, so the scheduler can place the pulse in counts after the capture.
    """

    def __init__(self, read: Callable[[], int], *, bits: int = 0, poll_s: float = 0.002,
                 history_s: float = 10.0, clock: Clock = time.monotonic, start: bool = True) -> None:
        self._read, self._bits, self._poll_s, self._clock = read, bits, poll_s, clock
        self._times: deque[float] = deque(maxlen=max(16, int(history_s / poll_s)))
        self._counts: deque[float] = deque(maxlen=self._times.maxlen)
        self._raw: int | None = None
        self._total = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.on_error: Callable[[BaseException], None] | None = None
        self.on_ok: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name="edgead-encoder", daemon=True)
        if start:
            try:
                self.sample()
            except Exception as err:     # the counter's peer is down: health says so, the thread retries
                self.error = err
            self._thread.start()

    def sample(self) -> float:
        """Read the counter once and record it; returns the unwrapped position."""
        raw = int(self._read())
        t = self._clock()
        with self._lock:
            if self._raw is None:
                self._total = raw
            else:
                step = raw - self._raw
                if self._bits:
                    span = 1 << self._bits       # shortest way round: a 16-bit counter wraps often
                    step = (step + span // 2) % span - span // 2
                self._total += step
            self._raw = raw
            self._times.append(t)
            self._counts.append(float(self._total))
            return float(self._total)

    def position(self) -> float:
        with self._lock:
            return self._counts[-1] if self._counts else 0.0

    def count_at(self, t: float) -> float:
        with self._lock:
            if not self._times:
                return 0.0
            i = bisect.bisect_right(self._times, t)
            if i == 0:
                return self._counts[0]
            if i >= len(self._times):
                return self._counts[-1]
            t0, t1 = self._times[i - 1], self._times[i]
            c0, c1 = self._counts[i - 1], self._counts[i]
            return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.sample()
            except Exception as err:
                first = self.error is None
                self.error = err
                if first and self.on_error is not None:
                    self.on_error(err)
                self._stop.wait(0.2)
                continue
            if self.error is not None:
                self.error = None
                if self.on_ok is not None:
                    self.on_ok()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
