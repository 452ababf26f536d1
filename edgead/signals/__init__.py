"""Reject outputs: the signals that get a defective part off the belt, and the line told when they fail.

`build_sinks(config_list)` turns the run YAML's `outputs:` list into RejectSinks (gpio, modbus,
mqtt, webhook, serial, log); `check_health` refuses to start with an unreachable output unless the
run is allowed to be degraded; `SinkGroup` fans every event out to all of them and turns a failing
output into an alarm (and, with `on_sink_failure: stop`, into a stop request).
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections import Counter
from typing import Any, Callable, Sequence

from edgead.errors import EdgeADError
from edgead.protocols import InspectionEvent, RejectSink, SinkHealth
from edgead.signals.config import FAILURE_POLICIES, SinkConfig, parse_outputs, parse_sink

_logger = logging.getLogger("edgead.signals")  # not "log": that is the submodule

# (sink name, kind, detail); kind is "failure", "recovered", "missed" or "dropped".
Listener = Callable[[str, str, str], None]
AlarmCallback = Callable[[str, str], None]

SINK_CLASSES = {
    "gpio": "edgead.signals.gpio:GpioSink",
    "modbus": "edgead.signals.modbus:ModbusSink",
    "mqtt": "edgead.signals.mqtt:MqttSink",
    "webhook": "edgead.signals.webhook:WebhookSink",
    "serial": "edgead.signals.serial:SerialSink",
    "log": "edgead.signals.log:LogSink",
}


class SinkBase:
    """Health, counters and the failure hook shared by the built-in sinks.

    A sink never raises into the run loop for an I/O problem: it records it here, and whoever
    listens (a SinkGroup) turns it into an alarm. Health changes are reported once per transition.
    """

    def __init__(self, name: str, target: str) -> None:
        self.name = name
        self.target = target            # what it talks to, for messages: "127.0.0.1:502 coil 12"
        self.stats: Counter[str] = Counter()
        self.listener: Listener | None = None
        self._health = SinkHealth(False, "starting")
        self._health_lock = threading.Lock()

    def health(self) -> SinkHealth:
        return self._health

    def _ok(self) -> None:
        with self._health_lock:
            was, self._health = self._health, SinkHealth(True)
        if not was.ok and was.detail != "starting":
            self._notify("recovered", f"{self.target}: back after: {was.detail}")

    def _fail(self, detail: str, every_time: bool = False) -> None:
        """Record an I/O failure; alarm on the ok -> failed transition only (no alarm storm), or on
        every call for a failure that lost something (an event given up)."""
        self.stats["errors"] += 1
        with self._health_lock:
            was, self._health = self._health, SinkHealth(False, detail)
        if was.ok or was.detail == "starting" or every_time:
            self._notify("failure", detail)

    def _notify(self, kind: str, detail: str) -> None:
        (_logger.info if kind == "recovered" else _logger.warning)("output %s: %s: %s", self.name, kind, detail)
        listener = self.listener
        if listener is not None:
            try:
                listener(self.name, kind, detail)
            except Exception:           # a broken listener must not take the output down with it
                _logger.exception("output %s: alarm listener failed", self.name)

    def wants(self, event: InspectionEvent, per_part: bool = False) -> bool:
        return per_part or event.rejected

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.target}>"


def build_sink(cfg: SinkConfig | dict[str, Any], index: int = 0) -> RejectSink:
    """One sink from its config (a typed config or the raw YAML mapping)."""
    if isinstance(cfg, dict):
        cfg = parse_sink(cfg, index)
    module, cls = SINK_CLASSES[cfg.type].split(":")
    sink: RejectSink = getattr(importlib.import_module(module), cls)(cfg)
    return sink


def build_sinks(config_list: Sequence[SinkConfig | dict[str, Any]] | None) -> list[RejectSink]:
    """All sinks of an `outputs:` list. Configs are checked first, so a typo opens nothing."""
    raw = list(config_list or [])
    if all(isinstance(c, dict) for c in raw):
        configs: list[SinkConfig] = parse_outputs({"outputs": raw}).sinks
    else:
        configs = [c if isinstance(c, SinkConfig) else parse_sink(c, i) for i, c in enumerate(raw)]
    sinks: list[RejectSink] = []
    try:
        for i, cfg in enumerate(configs):
            sinks.append(build_sink(cfg, i))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


def check_health(sinks: Sequence[RejectSink], allow_degraded: bool = False, timeout_s: float = 3.0,
                 warn: Callable[[str], None] | None = None) -> list[tuple[str, str]]:
    """At start: wait up to timeout_s for every output to be reachable; raise naming the ones that are not.

    With allow_degraded the problems are only warned about (the run inspects without them); the
    list of (name, detail) that are down is returned either way.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        bad = [(s.name, s.health()) for s in sinks]
        bad = [(n, h) for n, h in bad if not h.ok]
        if not bad or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    down = [(n, h.detail) for n, h in bad]
    if not down:
        return []
    lines = "; ".join(f"output '{n}' is unreachable: {d}" for n, d in down)
    if not allow_degraded:
        raise EdgeADError(lines, "check the output's address and wiring in `outputs:` of the run config "
                                 "(`edgead signals test --config run.yaml` tests each one), "
                                 "or start with --allow-degraded to inspect without it")
    (warn or _logger.warning)(f"running degraded: {lines}")
    return down


class SinkGroup:
    """Every event to every sink; a sink that fails raises an alarm instead of stopping the others.

    The run loop hands it every inspected event (`reject(event)`, so a group is itself a RejectSink);
    each sink picks what it wants (reject outputs: rejects only; mqtt/webhook/log: per their
    `per_part`). A failure (an exception from reject(), an output gone, a missed pulse, a dropped
    event) counts against that sink, calls on_alarm(sink_name, detail), and sets the alarm outputs
    (alarm pin, MQTT alarm topic, log line). With policy "stop", `should_stop` turns True.
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

    dispatch = reject

    def health(self) -> SinkHealth:
        bad = [(s.name, s.health()) for s in self.sinks]
        bad = [(n, h) for n, h in bad if not h.ok]
        return SinkHealth(not bad, "; ".join(f"{n}: {h.detail}" for n, h in bad))

    def set_ready(self, ready: bool) -> None:
        self._each("set_ready", ready)

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


__all__ = ["SinkBase", "SinkGroup", "build_sink", "build_sinks", "check_health", "SINK_CLASSES"]
