"""The base of the built-in reject outputs: health, counters and the failure hook they share.

An output must never raise into the run loop for an I/O problem; it records the problem here and
reports it once per health transition to whoever listens (a SinkGroup), which raises the alarm.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable

from edgead.protocols import InspectionEvent, SinkHealth

_logger = logging.getLogger("edgead.signals")  # the package's one logger, whichever module logs

# (sink name, kind, detail); kind is "failure" (the peer or output is gone: cleared by "recovered"),
# "recovered", "missed" (a part not kicked) or "dropped" (an event not kept): the last two stay
# until the operator acknowledges them.
Listener = Callable[[str, str, str], None]


class SinkBase:
    """Health, counters and the failure hook shared by the built-in sinks.

    A sink never raises into the run loop for an I/O problem: it records it here, and whoever
    listens (a SinkGroup) turns it into an alarm. Health changes are reported once per transition.
    Subclasses implement reject(), close() and fire_test().
    """

    def __init__(self, name: str, target: str) -> None:
        self.name = name
        self.target = target            # what it talks to, for messages: "127.0.0.1:502 coil 12"
        self.stats: Counter[str] = Counter()
        self.listener: Listener | None = None
        self._health = SinkHealth(False, "starting")
        self._health_lock = threading.Lock()
        self._failed = False            # a failure was reported and has not recovered yet
        self.last_delivery: float | None = None   # wall time of the last event or pulse the peer took

    def reject(self, event: InspectionEvent) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def fire_test(self) -> str:
        """One test output now, for checking the wiring; returns what was done, raises when it failed."""
        raise NotImplementedError

    def health(self) -> SinkHealth:
        return self._health

    def outbox_pending(self) -> int | None:
        """Events waiting in this output's durable outbox; None for an output without one."""
        return None

    def undelivered(self) -> dict[str, object] | None:
        """{"count": n, "where": outbox folder, ...} when events were not delivered; None when all were."""
        return None

    def _delivered(self, n: int = 1) -> None:
        """The peer took n events or a pulse: counted, and the time shown per output in /health."""
        self.stats["delivered"] += n
        self.last_delivery = time.time()

    def status(self) -> dict[str, object]:
        """This output on its own, for /health and the live view."""
        h = self.health()
        left = self.undelivered()
        return {"name": self.name, "type": type(self).__name__.replace("Sink", "").lower(), "target": self.target,
                "ok": bool(h.ok), "detail": h.detail, "last_delivery": self.last_delivery,
                "delivered": int(self.stats["delivered"]),
                "undelivered": int(left.get("count", 0) or 0) if left else 0, "pending": self.outbox_pending()}

    def _ok(self) -> None:
        with self._health_lock:
            was, self._health = self._health, SinkHealth(True)
            failed, self._failed = self._failed, False
        if failed:
            self._notify("recovered", f"{self.target}: back after: {was.detail}")

    def attach(self, listener: Listener) -> str | None:
        """Set the listener; returns the failure it has not heard of (the output failed before), if any.

        Atomic with _fail: a failure is reported either through the listener or by this return, once."""
        with self._health_lock:
            self.listener = listener
            return self._health.detail if self._failed else None

    def _fail(self, detail: str, every_time: bool = False) -> None:
        """Record an I/O failure; alarm on the ok -> failed transition only (no alarm storm), or on
        every call for a failure that matters each time (an event refused by the peer)."""
        self.stats["errors"] += 1
        with self._health_lock:
            self._health = SinkHealth(False, detail)
            first, self._failed = not self._failed, True
            listener = self.listener
        if first or every_time:
            self._notify("failure", detail, listener)

    def _notify(self, kind: str, detail: str, listener: Listener | None = None) -> None:
        (_logger.info if kind == "recovered" else _logger.warning)("output %s: %s: %s", self.name, kind, detail)
        listener = listener or self.listener
        if listener is not None:
            try:
                listener(self.name, kind, detail)
            except Exception:           # a broken listener must not take the output down with it
                _logger.exception("output %s: alarm listener failed", self.name)

    def wants(self, event: InspectionEvent, per_part: bool = False) -> bool:
        return per_part or event.rejected

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.target}>"
