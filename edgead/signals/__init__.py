"""Reject outputs: the signals that get a defective part off the belt, and the line told when they fail.

Edge path: nothing in this package imports torch, so it runs on the inspection box as installed.

`build_sinks(config_list)` turns the run YAML's `outputs:` list into RejectSinks (gpio, modbus,
mqtt, webhook, serial, log); `check_health` refuses to start with an unreachable output unless the
run is allowed to be degraded; `SinkGroup` fans every event out to all of them and turns a failing
output into an alarm (and, with `on_sink_failure: stop`, into a stop request). The outputs whose
events go to a peer (mqtt, webhook) keep them in a durable outbox on disk until the peer
acknowledged them (`outbox`, `outbox_sink`; `SinkGroup.undelivered()` says what was left and
where; `outbox_admin` is `edgead outbox status|flush|drop`). `ack_input` reads the operator's
alarm acknowledge button from the PLC. This file only names that API; the code lives in the submodules.
"""

from __future__ import annotations

from edgead.signals.base import Listener, SinkBase
from edgead.signals.factory import SINK_CLASSES, build_sink, build_sinks, check_health
from edgead.signals.group import AlarmCallback, RecoveredCallback, SinkGroup

__all__ = ["SinkBase", "SinkGroup", "build_sink", "build_sinks", "check_health", "SINK_CLASSES",
           "Listener", "AlarmCallback", "RecoveredCallback"]
