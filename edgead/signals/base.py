"""The base of the built-in reject outputs: health, counters and the failure hook they share.

An output must never raise into the run loop for an I/O problem; it records the problem here and
reports it once per health transition to whoever listens (a SinkGroup), which raises the alarm.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Callable

from edgead.protocols import InspectionEvent, SinkHealth

_logger = logging.getLogger("edgead.signals")  # the package's one logger, whichever module logs

# (sink name, kind, detail); kind is "failure", "recovered", "missed" or "dropped".
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

    def reject(self, event: InspectionEvent) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def fire_test(self) -> str:
        """One test output now, for checking the wiring; returns what was done, raises when it failed."""
        raise NotImplementedError

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
