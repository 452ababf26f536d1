"""Reject pulses timed from the part's capture, fired from their own thread.

The camera sees a part some distance before the reject station, so a reject output must fire
`delay` after the capture, for `width`, whatever order the decisions arrive in. `Scheduler` keeps
the pulses in a heap and fires them from its own thread (a condition variable wakes it for a new
pulse); overlapping pulses merge into one; a pulse whose window has passed is never fired late
without a word: it is a missed part, counted and reported (a safe-action event).

The clock and the wait are injected, so tests run the same code on a fake clock. With an encoder
the "clock" is the belt position in counts (EncoderTracker), so the delay follows the belt even
when its speed changes.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, cast

from edgead.protocols import InspectionEvent

Clock = Callable[[], float]
Wait = Callable[[threading.Condition, "float | None"], object]
EPS = 1e-9          # positions this close count as equal (float sums of delays and widths)


def real_wait(cond: threading.Condition, timeout: float | None) -> None:
    cond.wait(timeout)


@dataclass(order=True)
class _Pending:
    start: float
    order: int
    end: float = field(compare=False)
    event: InspectionEvent = field(compare=False)


class Scheduler:
    """Fire `on_start(events)` at position(event) + delay and `on_end()` width later, in order.

    Positions and durations share one unit: seconds on the monotonic clock (time mode) or encoder
    counts (encoder mode). A pulse that starts within `late` of its start time still fires (for its
    full width); later it is reported through on_missed(event, lateness) and not fired. A pulse that
    starts before the current one ends extends it (on_extend(event)): one longer pulse, no glitch.
    The callbacks run on the scheduler's thread (the sink's I/O thread), never under its lock.
    """

    def __init__(self, on_start: Callable[[list[InspectionEvent]], None],
                 on_end: Callable[[], None] | None = None, *, delay: float, width: float, late: float,
                 on_extend: Callable[[InspectionEvent], None] | None = None,
                 on_missed: Callable[[InspectionEvent, float], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None,
                 clock: Clock = time.monotonic, wait: Wait = real_wait,
                 position: Callable[[InspectionEvent], float] | None = None,
                 name: str = "scheduler", start: bool = True) -> None:
        self.delay, self.width, self.late = delay, width, late
        self._on_start, self._on_end, self._on_extend = on_start, on_end, on_extend
        self._on_missed, self._on_error = on_missed, on_error
        self._clock, self._wait = clock, wait
        self._position = position or (lambda e: e.t_capture)
        self._heap: list[_Pending] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._active_end: float | None = None   # output on until here (None: off)
        self._on_since = 0.0
        self._dirty = False
        self._stopped = False
        self.fired = self.merged = self.missed = 0
        self.max_late = 0.0
        self._thread: threading.Thread | None = None
        self._name = name
        if start:
            self.start()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"edgead-{self._name}", daemon=True)
        self._thread.start()

    def submit(self, event: InspectionEvent) -> None:
        """Queue the pulse for this part; returns at once (the caller is the run loop)."""
        start = self._position(event) + self.delay
        with self._cond:
            heapq.heappush(self._heap, _Pending(start, next(self._order), start + self.width, event))
            self._dirty = True
            self._cond.notify()

    @property
    def active(self) -> bool:
        return self._active_end is not None

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def run_due(self) -> float | None:
        """Do everything due now; return the position of the next thing to do (None: nothing queued)."""
        actions: list[tuple[str, object]] = []
        with self._cond:
            now = self._clock()
            nxt = self._plan(now, actions)
        for kind, arg in actions:
            try:
                if kind == "start":
                    self._on_start(arg)  # type: ignore[arg-type]
                elif kind == "extend" and self._on_extend is not None:
                    self._on_extend(arg)  # type: ignore[arg-type]
                elif kind == "end" and self._on_end is not None:
                    self._on_end()
                elif kind == "missed" and self._on_missed is not None:
                    event, late = cast("tuple[InspectionEvent, float]", arg)
                    self._on_missed(event, late)
            except Exception as err:
                if self._on_error is None:
                    raise
                self._on_error(err)
        return nxt

    def _plan(self, now: float, actions: list[tuple[str, object]]) -> float | None:
        heap = self._heap
        while True:
            if self._active_end is not None:
                while heap and heap[0].start <= self._active_end + EPS:  # merge overlapping pulses
                    item = heapq.heappop(heap)
                    if self._missed(item, self._on_since - item.start, actions):
                        continue
                    self._active_end = max(self._active_end, item.end)
                    self.merged += 1
                    actions.append(("extend", item.event))
                if now + EPS < self._active_end:
                    return self._active_end
                self._active_end = None
                actions.append(("end", None))
                continue
            if not heap:
                return None
            if heap[0].start > now + EPS:
                return heap[0].start
            item = heapq.heappop(heap)
            if self._missed(item, now - item.start, actions):
                continue
            self._active_end = max(item.end, now + self.width)
            self._on_since = now
            self.fired += 1
            actions.append(("start", [item.event]))

    def _missed(self, item: _Pending, late: float, actions: list[tuple[str, object]]) -> bool:
        late = max(0.0, late)
        if late <= self.late:
            self.max_late = max(self.max_late, late)
            return False
        self.missed += 1
        actions.append(("missed", (item.event, late)))
        return True

    def _run(self) -> None:
        while True:
            nxt = self.run_due()
            with self._cond:
                if self._stopped:
                    return
                if self._dirty:
                    self._dirty = False
                    continue
                timeout = None if nxt is None else nxt - self._clock()
                if timeout is not None and timeout <= 0:
                    continue
                self._wait(self._cond, timeout)
                self._dirty = False

    def wait_idle(self, timeout_s: float) -> bool:
        """Real-time wait until nothing is queued and the output is off (close, tests)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._cond:
                if not self._heap and self._active_end is None:
                    return True
            time.sleep(0.002)
        return False

    def close(self, drain_s: float = 0.0) -> None:
        """Stop; wait up to drain_s for queued pulses. Never leaves the output on; the rest are missed."""
        if drain_s > 0 and self._thread is not None:
            self.wait_idle(drain_s)
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._cond:
            left, self._heap = self._heap, []
            was_on, self._active_end = self._active_end is not None, None
        if was_on and self._on_end is not None:
            try:
                self._on_end()
            except Exception as err:
                if self._on_error is not None:
                    self._on_error(err)
        for item in sorted(left):
            self.missed += 1
            if self._on_missed is not None:
                self._on_missed(item.event, float("nan"))
