"""OutboxSink: the base of the outputs whose events go to a peer (mqtt, webhook) through a durable outbox.

reject() appends the event to the outbox (on disk, before anything is sent) and returns; the
sink's sender thread takes the records in order and delivers them; a record leaves the outbox only
when the peer acknowledged it. So an output that stays down, or edgead stopping, costs no event:
what is left is counted (`undelivered()`) and sent first at the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from edgead.protocols import InspectionEvent
from edgead.signals.base import SinkBase
from edgead.signals.config import PeerConfig
from edgead.signals.outbox import Outbox, Record, output_folder

_logger = logging.getLogger("edgead.signals")


class OutboxSink(SinkBase):
    """Events through a durable outbox to a peer; subclasses implement `_send(record)` (and `_idle()`).

    `_send` returns once the record is handed over (it acks through `_acked(n)` when the peer
    says so, maybe later) or given up for this run (left pending: the next start sends it again);
    it waits with `self._stop_sending.wait(...)` so that close() can interrupt it.
    """

    def __init__(self, cfg: PeerConfig, target: str, outbox_dir: str | Path | None, readahead: int) -> None:
        super().__init__(cfg.name, target)
        self.outbox = Outbox(output_folder(outbox_dir, cfg.name), max_bytes=int(cfg.outbox_mb * 1e6),
                             fsync_every=cfg.outbox_fsync_every, fsync_ms=cfg.outbox_fsync_ms, readahead=readahead,
                             output=cfg.name, meta={"output": cfg.name, "type": cfg.type, "target": target},
                             on_error=self._outbox_problem)
        self.stats["replayed"] = self.outbox.replayed      # waiting from a past run: sent first
        self.stats["repaired"] = self.outbox.repaired      # torn lines cut off at open
        if self.outbox.replayed:
            _logger.info("output %s: %d events from a past run wait in %s: sent first", cfg.name,
                         self.outbox.replayed, self.outbox.folder)
        self._refusal_reported = False
        self._skipped = 0            # records the peer refused: left pending for the next start, not retried now
        self._stop_sending = threading.Event()
        self._sender = threading.Thread(target=self._send_loop, name=f"edgead-{cfg.name}-sender", daemon=True)

    def start_sender(self) -> None:
        self._sender.start()

    # ------------------------------------------------------------------ run loop side

    def _append(self, event: InspectionEvent, msg: dict[str, Any]) -> None:
        """Into the outbox; a refused event (outbox full, disk error) is counted and alarmed, once per episode."""
        n = self.outbox.append(event.event_id or f"seq-{event.seq}", msg)
        if n is not None:
            self.stats["queued"] += 1
            self._refusal_reported = False
            return
        self.stats["refused"] += 1
        if not self._refusal_reported:
            self._refusal_reported = True
            self.stats["errors"] += 1
            self._notify("dropped", f"{self.outbox.last_error}: events are not kept and are counted as undelivered")

    def _outbox_problem(self, detail: str) -> None:
        self._fail(detail)

    # ------------------------------------------------------------------ sender thread

    def _send_loop(self) -> None:
        while not self._stop_sending.is_set():
            rec = self.outbox.take(0.05)
            if rec is None:
                self._idle()
                continue
            try:
                self._send(rec)
            except Exception as err:            # a bug in a sender must not stop the others: counted, alarmed
                if not self._stop_sending.is_set():
                    _logger.exception("output %s: sending failed", self.name)
                    self._fail(f"sending event {rec.event_id} failed: {type(err).__name__}: {err}")

    def _send(self, rec: Record) -> None:
        raise NotImplementedError

    def _idle(self) -> None:
        """Called by the sender when nothing is waiting (e.g. to see whether a peer is back)."""

    def _acked(self, n: int) -> None:
        self.outbox.ack(n)
        self._delivered()

    def _skip(self, rec: Record) -> None:
        """Leave a record pending (the next start tries it again) and go on with the next one."""
        self._skipped += 1

    # ------------------------------------------------------------------ accounting and close

    def outbox_pending(self) -> int | None:
        return self.outbox.pending()

    def undelivered(self) -> dict[str, object] | None:
        pending, refused = self.outbox.pending(), self.outbox.refused
        if not pending and not refused:
            return None
        return {"count": pending + refused, "where": str(self.outbox.folder), "pending": pending, "refused": refused}

    def wait_delivered(self, timeout_s: float) -> bool:
        """Block until the outbox is empty (everything acknowledged), or timeout."""
        return self.outbox.wait_empty(timeout_s)

    def close(self, drain_s: float = 2.0) -> None:
        """Deliver for up to drain_s, then stop; what is left stays in the outbox (counted by undelivered())."""
        raise NotImplementedError

    def stop_sender(self, drain_s: float) -> None:
        """Let the sender deliver for up to drain_s, then stop it (what is left stays in the outbox)."""
        deadline = time.monotonic() + drain_s
        while self._sender.is_alive() and self.outbox.pending() > self._skipped and time.monotonic() < deadline:
            self.outbox.wait_empty(min(0.05, max(0.0, deadline - time.monotonic())))
        self._stop_sending.set()
        if self._sender.is_alive() and self._sender is not threading.current_thread():
            self._sender.join(timeout=5)

    def close_outbox(self) -> None:
        self.outbox.close()
        self.stats["unsent"] = self.outbox.pending()
        pending, refused = self.outbox.pending(), self.outbox.refused
        if pending or refused:
            _logger.warning("output %s: %d events undelivered: %d kept in %s (sent first at the next start), "
                            "%d not kept (%s)", self.name, pending + refused, pending, self.outbox.folder,
                            refused, self.outbox.last_error or "-")
