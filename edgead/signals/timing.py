"""When outputs act: pulses timed from the part's capture, and queues drained off the caller's thread.

The camera sees a part some distance before the reject station, so a reject output must fire
`delay` after the capture, for `width`, whatever order the decisions arrive in. `Scheduler` keeps
the pulses in a heap and fires them from its own thread (a condition variable wakes it for a new
pulse); overlapping pulses merge into one; a pulse whose window has passed is never fired late
without a word: it is a missed part, counted and reported (a safe-action event).

The clock and the wait are injected, so tests run the same code on a fake clock. With an encoder
the "clock" is the belt position in counts (EncoderTracker), so the delay follows the belt even
when its speed changes.

`Worker` is the other shape: a bounded FIFO drained by one thread (mqtt, webhook, log), so a slow
or absent peer never blocks the run loop.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar, cast

from edgead.protocols import InspectionEvent
from edgead.signals import SinkBase
from edgead.signals.config import EncoderConfig, TimedConfig

Clock = Callable[[], float]
Wait = Callable[[threading.Condition, "float | None"], object]
T = TypeVar("T")
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


class Worker(Generic[T]):
    """A bounded FIFO drained in order by one thread calling deliver(item).

    put() never blocks: when the queue is full the oldest item is dropped and on_drop(item) says so.
    deliver may block (a broker that is down, a retry backoff); it should use pause() to wait so
    that close() can interrupt it. An exception from deliver goes to on_error(item, err).
    """

    def __init__(self, deliver: Callable[[T], None], *, maxlen: int, name: str,
                 on_error: Callable[[T, BaseException], None], on_drop: Callable[[T], None],
                 start: bool = True) -> None:
        self._deliver, self._on_error, self._on_drop = deliver, on_error, on_drop
        self._queue: deque[T] = deque()
        self.maxlen = maxlen
        self._cond = threading.Condition()
        self._busy = False
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"edgead-{name}", daemon=True)
        if start:
            self._thread.start()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def put(self, item: T) -> None:
        dropped: list[T] = []
        with self._cond:
            self._queue.append(item)
            while len(self._queue) > self.maxlen:
                dropped.append(self._queue.popleft())
            self._cond.notify()
        for old in dropped:
            self._on_drop(old)

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    def pause(self, seconds: float) -> bool:
        """Sleep unless closing; False means stop trying (the worker is closing)."""
        return not self._closing.wait(seconds)

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, drain_s: float = 1.0) -> list[T]:
        """Deliver what is queued for up to drain_s, then stop; returns what was left undelivered."""
        if self._thread.is_alive():
            self.wait_idle(drain_s)
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._cond:
            left, self._queue = list(self._queue), deque()
        return left

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing.is_set():
                    self._cond.wait()
                if self._closing.is_set():
                    return
                item = self._queue.popleft()
                self._busy = True
            try:
                self._deliver(item)
            except Exception as err:
                if not self._closing.is_set():
                    self._on_error(item, err)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


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


def build_encoder(cfg: EncoderConfig, on_error: Callable[[BaseException], None] | None = None,
                  ) -> tuple[EncoderTracker, Callable[[], None]]:
    """The tracker for an `encoder:` mapping, and how to close its counter source."""
    if cfg.source == "modbus":
        from edgead.signals.modbus import ModbusRegisterCounter

        counter = ModbusRegisterCounter(cfg)
        tracker = EncoderTracker(counter.read, bits=cfg.bits, poll_s=cfg.poll_ms / 1000)
        tracker.on_error = on_error
        return tracker, counter.close
    from edgead.signals.gpio import GpiodEdgeCounter

    edges = GpiodEdgeCounter(cfg.chip, int(cfg.line or 0), cfg.edge, on_error=on_error)
    tracker = EncoderTracker(edges.read, bits=0, poll_s=cfg.poll_ms / 1000)
    tracker.on_error = on_error
    return tracker, edges.close


class TimedSink(SinkBase):
    """A sink that physically kicks the part: reject() queues a pulse; the scheduler's thread drives it.

    Subclasses implement `_start(events)` / `_end()` (the I/O, on the scheduler's thread) and may
    pass width=0 and no `_end` for outputs that send one message per part (serial, modbus set mode).
    """

    def __init__(self, name: str, target: str, cfg: TimedConfig, *, width_override: float | None = None,
                 has_end: bool = True, clock: Clock | None = None, wait: Wait | None = None,
                 start: bool = True) -> None:
        super().__init__(name, target)
        self.cfg = cfg
        self.encoder: EncoderTracker | None = None
        self._close_encoder: Callable[[], None] | None = None
        position: Callable[[InspectionEvent], float] | None = None
        if cfg.encoder is not None:
            enc = cfg.encoder
            self.encoder, self._close_encoder = build_encoder(enc, lambda err: self._fail(f"encoder: {err}"))
            tracker = self.encoder
            tracker.on_ok = self._ok
            poll = enc.poll_ms / 1000
            clock = tracker.position
            wait = lambda cond, timeout: cond.wait(None if timeout is None else poll)  # noqa: E731
            position = lambda e: tracker.count_at(e.t_capture)  # noqa: E731
            delay, width, late = float(enc.delay_counts), float(enc.pulse_counts), float(enc.late_counts)
        else:
            late_ms = cfg.late_ms if cfg.late_ms is not None else max(10.0, cfg.pulse_ms / 2)
            delay, width, late = cfg.delay_ms / 1000, cfg.pulse_ms / 1000, late_ms / 1000
        if width_override is not None:
            width = width_override
        self.scheduler = Scheduler(self._start_guarded, self._end_guarded if has_end else None,
                                   delay=delay, width=width, late=late, on_extend=self._extend_guarded,
                                   on_missed=self._on_missed, on_error=lambda e: self._fail(str(e)),
                                   clock=clock or time.monotonic, wait=wait or real_wait, position=position,
                                   name=name, start=start)

    def _opened(self) -> None:
        """The output is open: healthy, unless the encoder cannot be read."""
        if self.encoder is not None and self.encoder.error is not None:
            self._fail(f"encoder: {self.encoder.error}")
        else:
            self._ok()

    def reject(self, event: InspectionEvent) -> None:
        if event.rejected:
            self.stats["queued"] += 1
            self.scheduler.submit(event)

    def _on_missed(self, event: InspectionEvent, late: float) -> None:
        self.stats["missed"] += 1
        unit = "counts" if self.encoder is not None else "ms"
        late_txt = "output closed first" if late != late else (
            f"{late:.0f} counts late" if unit == "counts" else f"{late * 1000:.1f} ms late")
        self._notify("missed", f"part {event.seq} not kicked: its reject window had passed ({late_txt})")

    def _start_guarded(self, events: list[InspectionEvent]) -> None:
        self._start(events)
        self.stats["pulses"] += 1
        self._ok()

    def _extend_guarded(self, event: InspectionEvent) -> None:
        self.stats["merged"] += 1
        self._extend(event)

    def _end_guarded(self) -> None:
        self._end()
        self._ok()

    def _start(self, events: list[InspectionEvent]) -> None:
        raise NotImplementedError

    def _extend(self, event: InspectionEvent) -> None:
        """Another part inside the running pulse: nothing to do for a level output."""

    def _end(self) -> None:
        raise NotImplementedError

    def close_timing(self) -> None:
        """Finish queued pulses that are due soon, switch the output off, stop the encoder."""
        drain = 0.0 if self.encoder is not None else self.cfg.delay_ms / 1000 + self.cfg.pulse_ms / 1000 + 0.2
        self.scheduler.close(drain_s=min(drain, 5.0))
        if self.encoder is not None:
            self.encoder.close()
        if self._close_encoder is not None:
            self._close_encoder()
