"""SinkGroup: every event to every output, so that one failing output raises an alarm instead of
stopping the others (and, with `on_sink_failure: stop`, asks the run to stop).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any, Callable, Sequence

from edgead.errors import EdgeADError
from edgead.protocols import InspectionEvent, RejectSink, SinkHealth
from edgead.signals.config import FAILURE_POLICIES

_logger = logging.getLogger("edgead.signals")

# (sink name, detail) of each failure, for the run's own alarm handling.
AlarmCallback = Callable[[str, str], None]


class SinkGroup:
    """Every event to every sink; a sink that fails raises an alarm instead of stopping the others.

    The run loop hands it every inspected event (`reject(event)`, so a group is itself a RejectSink);
    each sink picks what it wants (reject outputs: rejects only; mqtt/webhook/log: per their
    `per_part`). A failure (an exception from reject(), an output gone, a missed pulse, a dropped
    event) counts against that sink, calls on_alarm(sink_name, detail), and sets the alarm outputs
    (alarm pin, MQTT alarm topic, log line). With policy "stop", `should_stop` turns True.

    Any RejectSink may join: the failure hook (`listener`) and the alarm and ready outputs
    (`alarm`, `clear_alarm`, `set_ready`) are used where a sink has them.
    """

    name = "outputs"

    def __init__(self, sinks: Sequence[RejectSink], on_sink_failure: str = "alarm",
                 on_alarm: AlarmCallback | None = None) -> None:
        if on_sink_failure not in FAILURE_POLICIES:
            raise EdgeADError(f"'on_sink_failure' has a bad value {on_sink_failure!r}",
                              "alarm: keep inspecting with the other outputs; stop: stop the line")
        self.sinks = list(sinks)
        self.policy = on_sink_failure
        self.on_alarm = on_alarm
        self.failures: Counter[str] = Counter()
        self.alarms: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closing = False
        for sink in self.sinks:
            if hasattr(sink, "listener"):
                sink.listener = self._on_sink_report  # type: ignore[attr-defined]

    @property
    def should_stop(self) -> bool:
        return self._stop.is_set()

    def reject(self, event: InspectionEvent) -> None:
        for sink in self.sinks:
            try:
                sink.reject(event)
            except Exception as err:
                self._failure(sink.name, f"reject() raised {type(err).__name__}: {err}")

    def health(self) -> SinkHealth:
        bad = [(s.name, s.health()) for s in self.sinks]
        bad = [(n, h) for n, h in bad if not h.ok]
        return SinkHealth(not bad, "; ".join(f"{n}: {h.detail}" for n, h in bad))

    def set_ready(self, ready: bool) -> None:
        self._each("set_ready", ready)

    def raise_alarm(self, source: str, detail: str) -> None:
        """Drive every output's alarm line for a fault outside the outputs (a safe action, the camera lost)."""
        self._each("alarm", source, detail)

    def reset_alarm(self) -> None:
        """Operator acknowledged: clear the latched alarm outputs (and the stop request)."""
        self._stop.clear()
        self._each("clear_alarm")

    def close(self) -> None:
        """Ready off, then close each sink (pulses due soon still fire; parts left are reported)."""
        self.set_ready(False)
        self._closing = True                # from here alarms are recorded, not sent to closing sinks
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                _logger.exception("output %s: close failed", sink.name)

    def _on_sink_report(self, name: str, kind: str, detail: str) -> None:
        if kind != "recovered":
            self._failure(name, detail)

    def _failure(self, name: str, detail: str) -> None:
        with self._lock:
            self.failures[name] += 1
            self.alarms.append((name, detail))
        if not self._closing:
            if self.policy == "stop" and not self._stop.is_set():
                self._stop.set()
                self.set_ready(False)
            self._each("alarm", name, detail)
        if self.on_alarm is not None:
            try:
                self.on_alarm(name, detail)
            except Exception:
                _logger.exception("on_alarm callback failed")

    def _each(self, method: str, *args: Any) -> None:
        for sink in self.sinks:
            fn = getattr(sink, method, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception as err:        # an alarm output failing must not hide the first alarm
                _logger.warning("output %s: %s failed: %s", sink.name, method, err)
