"""The alarm board: which alarms are active now, and how often each was raised since the run started.

An alarm is either a condition or an event:
- a condition (camera lost, an output failing, the record disk failing) stays active while it holds
  and clears itself when the code that watches it sees it gone (`clear(key)`: camera back, output
  recovered, a record written again);
- an event (a safe action, a sequence jump) has nothing that could "come back": it stays active for
  `event_hold_s` after its latest occurrence (default 60 s, long enough for a person looking at the
  live view or /health to see it, short enough that one incident does not leave the line in alarm
  all shift), then clears itself.
Either kind also clears when the operator acknowledges it (`ack`). Counts are never reset: they are
what happened since the start, for /health, /metrics and the summary.

Thread-safe (one lock); `on_empty` is called, outside the lock, whenever the last active alarm goes
(cleared, acknowledged or expired), so the owner can set the alarm outputs back to ok.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

EVENT_HOLD_S = 60.0


def _utc(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


@dataclass
class _Active:
    reason: str
    since: float          # wall time the alarm became active
    last: float           # monotonic time of the latest raise (events expire from it)
    event: bool


class AlarmBoard:
    """Active alarms by key, with counts since start; see the module docstring for the lifecycle."""

    def __init__(self, event_hold_s: float = EVENT_HOLD_S, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, on_empty: Callable[[], None] | None = None) -> None:
        self.event_hold_s, self._clock, self._wall, self.on_empty = event_hold_s, clock, wall, on_empty
        self._lock = threading.Lock()
        self._active: dict[str, _Active] = {}
        self._counts: dict[str, int] = {}

    def raise_(self, key: str, reason: str, event: bool = False) -> bool:
        """Count the alarm and make it active (again); True when it was not active before."""
        now = self._clock()
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            cur = self._active.get(key)
            if cur is None:
                self._active[key] = _Active(reason, self._wall(), now, event)
                return True
            cur.reason, cur.last, cur.event = reason, now, cur.event and event
            return False

    def clear(self, key: str) -> bool:
        """The condition is gone; True when the alarm was active."""
        with self._lock:
            found = self._active.pop(key, None) is not None
            empty = found and not self._active
        if empty:
            self._emptied()
        return found

    def ack(self, key: str | None = None) -> list[str]:
        """The operator acknowledged `key` (None: every active alarm); returns the keys cleared."""
        self.expire()
        return self._remove(lambda active: sorted(active) if key is None else [key] if key in active else [])

    def expire(self) -> list[str]:
        """Clear the events older than event_hold_s; returns their keys."""
        now = self._clock()
        return self._remove(lambda active: sorted(k for k, a in active.items()
                                                  if a.event and now - a.last >= self.event_hold_s))

    def _remove(self, pick: Callable[[dict[str, Any]], list[str]]) -> list[str]:
        """Clear the alarms `pick` chooses (under the lock); the last one going calls on_empty."""
        with self._lock:
            keys = pick(self._active)
            for k in keys:
                del self._active[k]
            empty = bool(keys) and not self._active
        if empty:
            self._emptied()
        return keys

    def active(self) -> list[dict[str, Any]]:
        """[{key, reason, since (UTC), count (since start), kind (condition | event)}], oldest first."""
        self.expire()
        with self._lock:
            items = sorted(self._active.items(), key=lambda kv: (kv[1].since, kv[0]))
            return [{"key": k, "reason": a.reason, "since": _utc(a.since), "count": self._counts.get(k, 0),
                     "kind": "event" if a.event else "condition"} for k, a in items]

    def is_active(self, key: str | None = None) -> bool:
        self.expire()
        with self._lock:
            return bool(self._active) if key is None else key in self._active

    def counts(self) -> dict[str, int]:
        """Times each key was raised since the start (cleared ones included)."""
        with self._lock:
            return dict(sorted(self._counts.items()))

    def _emptied(self) -> None:
        if self.on_empty is not None:
            try:
                self.on_empty()
            except Exception:  # noqa: BLE001 - an alarm output failing to reset must not break the caller
                pass
