"""From the run YAML's `outputs:` list to open outputs, and the start-up check that they are reachable.

An output's module is imported only when that output is configured, so its optional library
(pymodbus, paho-mqtt, gpiod, pyserial, python-snap7, pylogix, asyncua) is needed only where it is
used. The outputs whose events go to a peer (OUTBOX_TYPES) keep them in a durable outbox under `outbox_dir` (None:
`$EDGEAD_STATE_DIR/outbox`, the state folder defaulting to ~/.local/state/edgead).
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from edgead.errors import EdgeADError
from edgead.protocols import RejectSink
from edgead.signals.base import SinkBase
from edgead.signals.config import SinkConfig, parse_outputs, parse_sink

_logger = logging.getLogger("edgead.signals")

SINK_CLASSES = {
    "gpio": "edgead.signals.gpio:GpioSink",
    "modbus": "edgead.signals.modbus:ModbusSink",
    "mqtt": "edgead.signals.mqtt:MqttSink",
    "webhook": "edgead.signals.webhook:WebhookSink",
    "serial": "edgead.signals.serial:SerialSink",
    "log": "edgead.signals.log:LogSink",
    "s7": "edgead.signals.s7:S7Sink",
    "enip": "edgead.signals.enip:EnipSink",
    "opcua": "edgead.signals.opcua:OpcUaSink",
}
OUTBOX_TYPES = ("mqtt", "webhook")     # events to a peer: through a durable outbox (the timed ones must not be late)


def build_sink(cfg: SinkConfig | dict[str, Any], index: int = 0, outbox_dir: str | Path | None = None) -> SinkBase:
    """One sink from its config (a typed config or the raw YAML mapping); mqtt and webhook open their outbox
    folder under outbox_dir (None: the default, see the module docstring)."""
    if isinstance(cfg, dict):
        cfg = parse_sink(cfg, index)
    module, cls = SINK_CLASSES[cfg.type].split(":")
    factory = getattr(importlib.import_module(module), cls)
    sink: SinkBase = factory(cfg, outbox_dir=outbox_dir) if cfg.type in OUTBOX_TYPES else factory(cfg)
    return sink


def build_sinks(config_list: Sequence[SinkConfig | dict[str, Any]] | None,
                outbox_dir: str | Path | None = None) -> list[RejectSink]:
    """All sinks of an `outputs:` list. Configs are checked first, so a typo opens nothing."""
    raw = list(config_list or [])
    if all(isinstance(c, dict) for c in raw):
        configs: list[SinkConfig] = parse_outputs({"outputs": raw}).sinks
    else:
        configs = [c if isinstance(c, SinkConfig) else parse_sink(c, i) for i, c in enumerate(raw)]
    sinks: list[RejectSink] = []
    try:
        for i, cfg in enumerate(configs):
            sinks.append(build_sink(cfg, i, outbox_dir=outbox_dir))
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
