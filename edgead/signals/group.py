"""SinkGroup: every event to every output, so that one failing output raises an alarm instead of
stopping the others (and, with `on_sink_failure: stop`, asks the run to stop).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from typing import Any, Callable, Sequence

from edgead.errors import EdgeADError
from edgead.protocols import InspectionEvent, RejectSink, SinkHealth
from edgead.signals.config import FAILURE_POLICIES

_logger = logging.getLogger("edgead.signals")
MAX_ALARMS_KEPT = 1000     # a month of outages must not grow memory: the counts are kept whole in `failures`

# (sink name, detail) of each failure, for the run's own alarm handling.
AlarmCallback = Callable[[str, str], None]
# Failure kinds that a "recovered" does not clear: only the operator's acknowledgement (reset_alarm).
LATCHED = ("missed", "dropped", "raised")
# (sink name) of an output that came back (its peer reachable again): its failure alarm may clear.
RecoveredCallback = Callable[[str], None]


class SinkGroup:
    """Every event to every sink; a sink that fails raises an alarm instead of stopping the others.

    The run loop hands it every inspected event (`reject(event)`, so a group is itself a RejectSink);
    each sink picks what it wants (reject outputs: rejects only; mqtt/webhook/log: per their
    `per_part`). A failure (an exception from reject(), an output gone, a missed pulse, a dropped
    event) counts against that sink, calls on_alarm(sink_name, detail), and sets the alarm outputs
    (alarm pin, MQTT alarm topic, log line). With policy "stop", `should_stop` turns True.

    An output that comes back (kind "recovered") calls on_recovered(sink_name); when no alarm is
    left (no other output down, no missed part or event not kept, nothing from `raise_alarm`), the
    alarm outputs are cleared again. Missed parts and events not kept stay latched until
    `reset_alarm()` (the operator's acknowledgement).

    Any RejectSink may join: the failure hook (`listener`), the alarm and ready outputs (`alarm`,
    `clear_alarm`, `set_ready`) and the outbox accounting (`undelivered`, `outbox_pending`) are
    used where a sink has them.
    """

    name = "outputs"

    def __init__(self, sinks: Sequence[RejectSink], on_sink_failure: str = "alarm",
                 on_alarm: AlarmCallback | None = None, on_recovered: RecoveredCallback | None = None) -> None:
        if on_sink_failure not in FAILURE_POLICIES:
            raise EdgeADError(f"'on_sink_failure' has a bad value {on_sink_failure!r}",
                              "alarm: keep inspecting with the other outputs; stop: stop the line")
        self.sinks = list(sinks)
        self.policy = on_sink_failure
        self.on_alarm = on_alarm
        self.on_recovered = on_recovered
        self.failures: Counter[str] = Counter()
        self.recoveries: Counter[str] = Counter()
        self._active: dict[str, set[str]] = {}     # what drives the alarm outputs: source -> kinds
        self._detail: dict[str, str] = {}          # the latest failure detail per output
        self.alarms: deque[tuple[str, str]] = deque(maxlen=MAX_ALARMS_KEPT)   # the latest, for tests and logs
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closing = False
        self._closed = False
        for sink in self.sinks:
            attach = getattr(sink, "attach", None)
            if attach is not None:
                down = attach(self._on_sink_report)
                if down:                        # down before the group existed (--allow-degraded): alarm, no stop
                    self._failure(sink.name, down, at_start=True)
            elif hasattr(sink, "listener"):
                sink.listener = self._on_sink_report  # type: ignore[attr-defined]

    @property
    def should_stop(self) -> bool:
        return self._stop.is_set()

    def reject(self, event: InspectionEvent) -> None:
        for sink in self.sinks:
            try:
                sink.reject(event)
            except Exception as err:
                self._failure(sink.name, f"reject() raised {type(err).__name__}: {err}", "raised")

    def health(self) -> SinkHealth:
        bad = [(s.name, s.health()) for s in self.sinks]
        bad = [(n, h) for n, h in bad if not h.ok]
        return SinkHealth(not bad, "; ".join(f"{n}: {h.detail}" for n, h in bad))

    def statuses(self) -> list[dict[str, Any]]:
        """Each output on its own (name, type, ok, detail, last_delivery, undelivered, ...), in config order."""
        out: list[dict[str, Any]] = []
        for sink in self.sinks:
            fn = getattr(sink, "status", None)
            try:
                out.append(dict(fn()) if fn is not None else
                           {"name": sink.name, "ok": bool(sink.health().ok), "detail": sink.health().detail})
            except Exception as err:     # a broken output must not break /health
                out.append({"name": getattr(sink, "name", "?"), "ok": False, "detail": f"status failed: {err!r}"})
        return out

    def set_ready(self, ready: bool) -> None:
        self._each("set_ready", ready)

    def undelivered(self) -> dict[str, dict[str, Any]]:
        """Per output with events not delivered: {"count": n, "where": its outbox folder, ...}."""
        out: dict[str, dict[str, Any]] = {}
        for sink in self.sinks:
            fn = getattr(sink, "undelivered", None)
            left = fn() if fn is not None else None
            if left and left.get("count"):
                out[sink.name] = dict(left)
        return out

    def outbox_pending(self) -> dict[str, int]:
        """Events waiting in each durable outbox (every output that has one, 0 included)."""
        out: dict[str, int] = {}
        for sink in self.sinks:
            fn = getattr(sink, "outbox_pending", None)
            n = fn() if fn is not None else None
            if n is not None:
                out[sink.name] = int(n)
        return out

    def raise_alarm(self, source: str, detail: str) -> None:
        """Drive every output's alarm line for a fault outside the outputs (a safe action, the camera lost).

        It stays until `clear_alarm_source(source)` (the condition cleared) or `reset_alarm()`."""
        with self._lock:
            self._active.setdefault(f"run:{source}", set()).add("alarm")
        self._each("alarm", source, detail)

    def clear_alarm_source(self, source: str) -> None:
        """The condition behind `raise_alarm(source, ...)` cleared; the alarm outputs clear when nothing is left."""
        with self._lock:
            had = self._active.pop(f"run:{source}", None) is not None
        if had:
            self._clear_if_quiet()

    def reset_alarm(self) -> None:
        """Operator acknowledged: clear the latched alarm outputs (and the stop request)."""
        self._stop.clear()
        self.clear_alarm_outputs()

    def clear_alarm_outputs(self) -> None:
        """No alarm is active any more (the run's alarm board says so): alarm outputs back to ok.

        Unlike reset_alarm() the stop request (policy "stop") stays."""
        with self._lock:
            self._active.clear()
        self._each("clear_alarm")

    def set_callbacks(self, on_alarm: AlarmCallback | None, on_recovered: RecoveredCallback | None) -> None:
        """Hand the failure and recovery reports to a new owner (the run loop, once it exists); the outputs
        already failing (down at start, or failed meanwhile) are reported to it at once."""
        with self._lock:
            self.on_alarm, self.on_recovered = on_alarm, on_recovered
            failing = [(name, self._detail.get(name, "failed")) for name, kinds in self._active.items()
                       if not name.startswith("run:") and kinds]
        for name, detail in failing:
            if on_alarm is not None:
                try:
                    on_alarm(name, detail)
                except Exception:
                    _logger.exception("on_alarm callback failed")

    def active_alarms(self) -> dict[str, list[str]]:
        """What drives the alarm outputs now: output name (or "run:<source>") -> kinds."""
        with self._lock:
            return {k: sorted(v) for k, v in self._active.items()}

    def close(self) -> None:
        """Ready off, then close each sink (pulses due soon still fire; parts left are reported). Once."""
        if self._closed:
            return
        self._closed = True
        self.set_ready(False)
        self._closing = True                # from here alarms are recorded, not sent to closing sinks
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                _logger.exception("output %s: close failed", sink.name)

    def _on_sink_report(self, name: str, kind: str, detail: str) -> None:
        if kind == "recovered":
            self._recovered(name)
        else:
            self._failure(name, detail, kind)

    def _recovered(self, name: str) -> None:
        with self._lock:
            self.recoveries[name] += 1
            kinds = self._active.get(name)
            if kinds is not None:
                kinds.discard("failure")         # a missed part or an event not kept stays until acknowledged
                if not kinds:
                    del self._active[name]
        if self.on_recovered is not None:
            try:
                self.on_recovered(name)
            except Exception:
                _logger.exception("on_recovered callback failed")
        if not self._closing:
            self._clear_if_quiet()

    def _clear_if_quiet(self) -> None:
        with self._lock:
            quiet = not self._active
        if quiet:
            self._each("clear_alarm")

    def _failure(self, name: str, detail: str, kind: str = "failure", at_start: bool = False) -> None:
        with self._lock:
            self.failures[name] += 1
            self.alarms.append((name, detail))
            self._active.setdefault(name, set()).add(kind if kind in LATCHED else "failure")
            self._detail[name] = detail
        if not self._closing:
            if self.policy == "stop" and not self._stop.is_set() and not at_start:
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
