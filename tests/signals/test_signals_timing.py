"""Reject timing on a fake clock: order, merging, lateness; the real thread; encoders; the FIFO worker; GPIO logic."""

from __future__ import annotations

import math
import sys
import threading
import time
import types

import pytest
from signals_fixtures import FakeClock, FakeLines, event, wait_for

from edgead.errors import EdgeADError
from edgead.signals.config import parse_sink
from edgead.signals.encoder import EncoderTracker
from edgead.signals.scheduler import EPS, Scheduler
from edgead.signals.worker import Worker

# Real-clock timing: an edge is never early (strict), and not later than this (a loaded 2-core
# machine can stall a thread for a while; the exact times are checked on the fake clock above).
SLACK_S = 0.5


class Recorder:
    """Scheduler callbacks that log (clock time, action, seqs)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.log, self.missed = clock, [], []

    def start(self, events):
        self.log.append((round(self.clock(), 4), "on", [e.seq for e in events]))

    def end(self):
        self.log.append((round(self.clock(), 4), "off", []))

    def extend(self, e):
        self.log.append((round(self.clock(), 4), "extend", [e.seq]))

    def on_missed(self, e, late):
        self.missed.append((e.seq, round(late, 4)))


def make(delay=0.3, width=0.05, late=0.01, t0=0.0):
    clock = FakeClock(t0)
    rec = Recorder(clock)
    sched = Scheduler(rec.start, rec.end, delay=delay, width=width, late=late, on_extend=rec.extend,
                      on_missed=rec.on_missed, clock=clock, start=False)
    return clock, rec, sched


def run_until(clock, sched, t_end, step=0.001):
    """Step the fake clock in whole milliseconds (no float drift), running what is due at each."""
    k = round(clock() / step)
    while True:
        clock.t = round(k * step, 9)
        sched.run_due()
        if clock.t >= t_end - 1e-9:
            return
        k += 1


def test_pulses_fire_delay_after_capture_in_capture_order_even_when_submitted_out_of_order():
    clock, rec, sched = make()
    sched.submit(event(2, 0.100))      # the later part's decision arrives first
    sched.submit(event(1, 0.000))
    sched.submit(event(3, 0.250))
    run_until(clock, sched, 1.0)
    assert rec.log == [(0.3, "on", [1]), (0.35, "off", []), (0.4, "on", [2]), (0.45, "off", []),
                       (0.55, "on", [3]), (0.6, "off", [])]
    assert sched.fired == 3 and sched.missed == 0 and rec.missed == []


def test_overlapping_and_touching_pulses_merge_into_one():
    clock, rec, sched = make()
    for seq, t in ((1, 0.0), (2, 0.03), (3, 0.08), (4, 0.5)):   # 3 starts exactly when 2 ends
        sched.submit(event(seq, t))
    run_until(clock, sched, 1.0)
    assert rec.log == [(0.3, "on", [1]), (0.3, "extend", [2]), (0.3, "extend", [3]), (0.43, "off", []),
                       (0.8, "on", [4]), (0.85, "off", [])]
    assert (sched.fired, sched.merged) == (2, 2)


def test_a_part_whose_window_has_passed_is_reported_not_fired():
    clock, rec, sched = make(t0=0.0)
    clock.t = 0.5                              # decision took 500 ms: window 0.3..0.35 is gone
    sched.submit(event(7, 0.0))
    sched.run_due()
    assert rec.log == [] and rec.missed == [(7, 0.2)] and sched.missed == 1


def test_slightly_late_pulse_still_fires_for_its_full_width():
    clock, rec, sched = make(late=0.01)
    clock.t = 0.305                            # 5 ms late, within late_ms
    sched.submit(event(1, 0.0))
    run_until(clock, sched, 0.5)
    assert rec.log == [(0.305, "on", [1]), (0.355, "off", [])]
    assert math.isclose(sched.max_late, 0.005) and rec.missed == []


def test_a_late_part_inside_a_running_pulse_that_started_after_its_window_is_missed():
    clock, rec, sched = make(width=0.1, late=0.01)
    sched.submit(event(1, 0.05))               # pulse 0.35..0.45
    run_until(clock, sched, 0.40)
    sched.submit(event(2, 0.0))                # window 0.30..0.40: the output came on 50 ms after it opened
    sched.submit(event(3, 0.06))               # 0.36..: covered by the running pulse from its start
    run_until(clock, sched, 0.6)
    assert rec.missed == [(2, 0.05)]
    assert rec.log == [(0.35, "on", [1]), (0.4, "extend", [3]), (0.46, "off", [])]


def test_close_switches_a_running_output_off_and_reports_the_rest():
    clock, rec, sched = make()
    sched.submit(event(1, 0.0))
    sched.submit(event(2, 0.5))
    run_until(clock, sched, 0.31)
    sched.close()
    assert rec.log == [(0.3, "on", [1]), (0.31, "off", [])]
    assert rec.missed[0][0] == 2 and math.isnan(rec.missed[0][1])


def test_the_thread_on_a_fake_clock_with_a_virtual_wait():
    """The real loop (heap + condition variable), with time advanced by the wait instead of slept."""
    clock = FakeClock(0.0)
    rec = Recorder(clock)

    def virtual_wait(cond, timeout):
        if timeout is None:
            cond.wait(0.005)
        else:
            clock.advance(timeout)

    sched = Scheduler(rec.start, rec.end, delay=0.3, width=0.05, late=0.0, on_extend=rec.extend,
                      on_missed=rec.on_missed, clock=clock, wait=virtual_wait, start=False)
    for seq, t in ((3, 0.2), (1, 0.0), (2, 0.02)):
        sched.submit(event(seq, t))
    sched.start()
    assert wait_for(lambda: len(rec.log) >= 5, 2)
    sched.close()
    assert rec.log == [(0.3, "on", [1]), (0.3, "extend", [2]), (0.37, "off", []), (0.5, "on", [3]),
                       (0.55, "off", [])]


def test_real_thread_fires_on_time():
    """The real thread on time.monotonic: never early and never short (strict), not grossly late (loose)."""
    lines = FakeLines()
    read: list[float] = []
    decided: list[float] = []                # the clock reading each edge was decided on

    def clock() -> float:                    # time.monotonic, remembering what the scheduler read last
        read.append(time.monotonic())
        return read[-1]

    def on(events) -> None:
        decided.append(read[-1])
        lines.set(1, True)

    def off() -> None:
        decided.append(read[-1])
        lines.set(1, False)

    # late 1 s: a stalled thread must still fire here (missing a late part is tested on the fake clock)
    sched = Scheduler(on, off, delay=0.04, width=0.03, late=1.0, clock=clock)
    t0 = time.monotonic()
    sched.submit(event(1, t0))
    assert wait_for(lambda: len(lines.log) == 2, 2 + SLACK_S)
    sched.close()
    (t_on, _, is_on), (t_off, _, is_off) = lines.log
    d_on, d_off = decided
    assert is_on and not is_off
    assert d_on + EPS >= t0 + 0.04 and t_on >= d_on, "fired early"
    assert d_off + EPS >= d_on + 0.03, "pulse cut short"        # full width from when it went on, even if late
    assert t_on - t0 < 0.04 + SLACK_S and t_off - t_on < 0.03 + SLACK_S, "grossly late"


def test_submit_does_not_wait_for_slow_output_io():
    """While on_start is stuck in I/O, submits still return: none of them waits for the output."""
    entered, release, returned = threading.Event(), threading.Event(), threading.Event()

    def stuck_io(events) -> None:
        if not entered.is_set():
            entered.set()
            release.wait(5)                  # a hung peer; released below, or after 5 s if submit() waited
            returned.set()

    sched = Scheduler(stuck_io, lambda: None, delay=0.0, width=0.001, late=10.0)
    try:
        sched.submit(event(1))
        assert entered.wait(2), "the scheduler thread never started the pulse"
        for i in range(50):
            sched.submit(event(i + 2))
        assert not returned.is_set(), "submit() waited for the output's I/O to finish"
        assert sched.pending() == 50
    finally:
        release.set()
    assert sched.wait_idle(5)
    sched.close()
    assert sched.fired + sched.merged == 51 and sched.missed == 0     # every part queued behind it still fired


# ---------------------------------------------------------------- encoder mode


def test_encoder_tracker_unwraps_a_16_bit_counter_and_interpolates():
    raw = iter([65500, 65530, 10, 60, 1000 % 65536])
    clock = FakeClock(0.0)
    tr = EncoderTracker(lambda: next(raw), bits=16, clock=clock, start=False)
    for _ in range(4):
        tr.sample()
        clock.advance(0.01)
    assert tr.position() == 65500 + 30 + 16 + 50
    assert tr.count_at(0.005) == pytest.approx(65515)
    assert tr.count_at(-1.0) == 65500 and tr.count_at(9.0) == tr.position()


def test_scheduler_in_encoder_counts_follows_the_belt_not_the_clock():
    count = {"n": 0}
    tr = EncoderTracker(lambda: count["n"], bits=0, start=False)
    tr.sample()
    rec = Recorder(FakeClock(0.0))
    rec.clock = tr.position                  # log the belt position at each action
    sched = Scheduler(rec.start, rec.end, delay=100, width=20, late=5, on_extend=rec.extend,
                      on_missed=rec.on_missed, clock=tr.position, position=lambda e: tr.count_at(e.t_capture),
                      start=False)
    sched.submit(event(1, time.monotonic()))  # captured at count 0
    for n in (50, 99, 100, 110, 119, 120):    # the belt stops at 99 for a while: nothing fires early
        count["n"] = n
        tr.sample()
        sched.run_due()
    assert rec.log == [(100, "on", [1]), (120, "off", [])]


# ---------------------------------------------------------------- the FIFO worker


def test_worker_keeps_order_drops_the_oldest_when_full_and_close_stops_a_retry_wait():
    got, dropped, gate, delivering = [], [], threading.Event(), threading.Event()

    def deliver(item):
        delivering.set()
        gate.wait(2)
        got.append(item)

    w = Worker(deliver, maxlen=3, name="t", on_error=lambda i, e: None, on_drop=dropped.append)
    w.put(0)
    assert delivering.wait(2)                # 0 is being delivered
    for i in range(1, 6):                    # 1..5 queue in 3 slots
        w.put(i)
    gate.set()
    assert w.wait_idle(2)
    assert got == [0, 3, 4, 5] and dropped == [1, 2]

    paused, pausing = [], threading.Event()

    def retry(item) -> None:
        pausing.set()
        paused.append(w2.pause(10))

    w2 = Worker(retry, maxlen=5, name="t2", on_error=lambda i, e: None, on_drop=lambda i: None)
    w2.put(1)
    assert pausing.wait(2)
    t = time.monotonic()
    w2.close(drain_s=0)
    assert time.monotonic() - t < 3 and paused == [False]     # not the 10 s pause: close() cut it short
    w.close()


# ---------------------------------------------------------------- GPIO logic (no hardware here)


def gpio_cfg(**kw):
    return parse_sink({"type": "gpio", "pin": 17, "alarm_pin": 27, "ready_pin": 22, **kw})


def test_gpio_sink_pulses_the_reject_pin_and_drives_alarm_and_ready_pins():
    from edgead.signals.gpio import GpioSink

    lines = FakeLines()
    # late_ms 1000: a stalled thread must not make part 2 a missed part
    sink = GpioSink(gpio_cfg(delay_ms=20, pulse_ms=20, late_ms=1000), backend=lines)
    assert sink.health().ok
    sink.set_ready(True)
    t0 = time.monotonic()
    sink.reject(event(1, t0, decision="pass"))    # a good part: nothing
    sink.reject(event(2, t0))
    assert wait_for(lambda: len(lines.edges(17)) == 2, 2)
    (t_on, on), (t_off, off) = lines.edges(17)
    assert on and not off and t_on - t0 >= 0.02 and t_off - t0 >= 0.02 + 0.02     # never early, never short
    sink.alarm("modbus", "PLC gone")
    assert lines.level[27] is True
    sink.clear_alarm()
    sink.close()
    assert lines.closed and lines.level == {17: False, 27: False, 22: False}


def test_gpiod_backend_requests_outputs_with_active_low_and_sets_logical_values(monkeypatch):
    gpiod = pytest.importorskip("gpiod", reason="gpiod (libgpiod v2 bindings) is not installed")
    from gpiod.line import Direction, Value

    from edgead.signals.gpio import GpiodBackend

    calls = {}

    class FakeRequest:
        def __init__(self):
            self.values = []

        def set_value(self, pin, value):
            self.values.append((pin, value))

        def release(self):
            calls["released"] = True

    req = FakeRequest()

    def request_lines(path, consumer, config):
        calls.update(path=path, consumer=consumer, config=config)
        return req

    monkeypatch.setattr(gpiod, "request_lines", request_lines)
    b = GpiodBackend("/dev/gpiochip3", [17, 27], active_low=True)
    (pins, settings), = calls["config"].items()
    assert calls["path"] == "/dev/gpiochip3" and pins == (17, 27)
    assert settings.direction == Direction.OUTPUT and settings.active_low is True
    assert settings.output_value == Value.INACTIVE
    b.set(17, True)
    b.close()
    assert req.values == [(17, Value.ACTIVE), (17, Value.INACTIVE), (27, Value.INACTIVE)] and calls["released"]


def test_jetson_backend_inverts_for_active_low(monkeypatch):
    out = []
    fake = types.SimpleNamespace(BOARD="BOARD", BCM="BCM", OUT="OUT", HIGH=1, LOW=0,
                                 setwarnings=lambda f: None, setmode=lambda m: out.append(("mode", m)),
                                 setup=lambda p, d, initial: out.append(("setup", p, initial)),
                                 output=lambda p, v: out.append(("out", p, v)),
                                 cleanup=lambda pins: out.append(("cleanup", tuple(pins))))
    pkg = types.ModuleType("Jetson")
    pkg.GPIO = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "Jetson", pkg)
    monkeypatch.setitem(sys.modules, "Jetson.GPIO", fake)
    from edgead.signals.gpio import JetsonBackend

    b = JetsonBackend([12], active_low=True)
    b.set(12, True)
    b.close()
    assert out == [("mode", "BOARD"), ("setup", 12, 1), ("out", 12, 0), ("out", 12, 1), ("cleanup", (12,))]


def test_missing_gpio_library_says_what_to_install(monkeypatch):
    from edgead.signals import build_sink

    monkeypatch.setitem(sys.modules, "gpiod", None)
    with pytest.raises(EdgeADError, match="gpio output: the gpiod Python module is not installed") as err:
        build_sink({"type": "gpio", "pin": 17})
    assert "gpiod" in err.value.message and "edgead[signals]" in err.value.hint


def test_gpio_without_a_chip_reports_unhealthy_instead_of_crashing():
    pytest.importorskip("gpiod", reason="gpiod (libgpiod v2 bindings) is not installed")
    from edgead.signals import build_sink, check_health

    sink = build_sink({"type": "gpio", "chip": "/dev/gpiochip-absent", "pin": 3})
    try:
        with pytest.raises(EdgeADError, match="output 'gpio' is unreachable: cannot request lines"):
            check_health([sink], timeout_s=0)
    finally:
        sink.close()


def test_gpio_edge_counter_counts_edge_events_from_the_request():
    from edgead.signals.encoder_sources import GpiodEdgeCounter

    class FakeEdges:
        def __init__(self):
            self.batches = [[1, 2], [3], [4, 5, 6]]
            self.released = False

        def wait_edge_events(self, timeout):
            if self.batches:
                return True
            time.sleep(timeout)
            return False

        def read_edge_events(self):
            return self.batches.pop(0)

        def release(self):
            self.released = True

    req = FakeEdges()
    counter = GpiodEdgeCounter("/dev/gpiochip0", 5, request=req)
    assert wait_for(lambda: counter.read() == 6, 2)
    counter.close()
    assert req.released


@pytest.mark.hardware                      # CI has no GPIO chip: this skip stands under EDGEAD_REQUIRE_PEERS=1
@pytest.mark.skipif(not __import__("os").environ.get("EDGEAD_GPIO_TEST_CHIP"),
                    reason="no GPIO hardware here: set EDGEAD_GPIO_TEST_CHIP=/dev/gpiochipN and "
                           "EDGEAD_GPIO_TEST_LINE=N (a free line, nothing wired to it) on a board")
def test_real_gpio_line_toggles():
    import os

    from edgead.signals.gpio import GpioSink

    sink = GpioSink(parse_sink({"type": "gpio", "chip": os.environ["EDGEAD_GPIO_TEST_CHIP"],
                                "pin": int(os.environ.get("EDGEAD_GPIO_TEST_LINE", "0")), "pulse_ms": 20}))
    try:
        assert sink.health().ok, sink.health().detail
        sink.fire_test()
    finally:
        sink.close()
