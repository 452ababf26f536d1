"""TimedSink: the base of the outputs that physically kick the part (gpio, modbus, serial).

reject() only queues a pulse; the Scheduler's thread drives the output `delay` after the capture
(in time, or in belt counts with an `encoder:`), so the run loop never waits for output I/O.
"""

from __future__ import annotations

import time
from typing import Callable

from edgead.protocols import InspectionEvent
from edgead.signals.base import SinkBase
from edgead.signals.config import TimedConfig
from edgead.signals.encoder import EncoderTracker
from edgead.signals.encoder_sources import build_encoder
from edgead.signals.scheduler import Clock, Scheduler, Wait, real_wait


class TimedSink(SinkBase):
    """A sink that physically kicks the part: reject() queues a pulse; the scheduler's thread drives it.

    Subclasses implement `_start(events)` / `_end()` (the I/O, on the scheduler's thread) and may
    pass width=0 and no `_end` for outputs that send one message per part (serial, modbus set mode).
    """

    def __init__(self, name: str, target: str, cfg: TimedConfig, *, width_override: float | None = None,
                 has_end: bool = True, clock: Clock | None = None, wait: Wait | None = None,
                 start: bool = True) -> None:
        super().__init__(name, target)
        self.cfg = cfg
        self.encoder: EncoderTracker | None = None
        self._close_encoder: Callable[[], None] | None = None
        position: Callable[[InspectionEvent], float] | None = None
        if cfg.encoder is not None:
            enc = cfg.encoder
            self.encoder, self._close_encoder = build_encoder(enc, lambda err: self._fail(f"encoder: {err}"))
            tracker = self.encoder
            tracker.on_ok = self._ok
            poll = enc.poll_ms / 1000
            clock = tracker.position
            wait = lambda cond, timeout: cond.wait(None if timeout is None else poll)  # noqa: E731
            position = lambda e: tracker.count_at(e.t_capture)  # noqa: E731
            delay, width, late = float(enc.delay_counts), float(enc.pulse_counts), float(enc.late_counts)
        else:
            late_ms = cfg.late_ms if cfg.late_ms is not None else max(10.0, cfg.pulse_ms / 2)
            delay, width, late = cfg.delay_ms / 1000, cfg.pulse_ms / 1000, late_ms / 1000
        if width_override is not None:
            width = width_override
        self.scheduler = Scheduler(self._start_guarded, self._end_guarded if has_end else None,
                                   delay=delay, width=width, late=late, on_extend=self._extend_guarded,
                                   on_missed=self._on_missed, on_error=lambda e: self._fail(str(e)),
                                   clock=clock or time.monotonic, wait=wait or real_wait, position=position,
                                   name=name, start=start)

    def _opened(self) -> None:
        """The output is open: healthy, unless the encoder cannot be read."""
        if self.encoder is not None and self.encoder.error is not None:
            self._fail(f"encoder: {self.encoder.error}")
        else:
            self._ok()

    def reject(self, event: InspectionEvent) -> None:
        if event.rejected:
            self.stats["queued"] += 1
            self.scheduler.submit(event)

    def _on_missed(self, event: InspectionEvent, late: float) -> None:
        self.stats["missed"] += 1
        unit = "counts" if self.encoder is not None else "ms"
        late_txt = "output closed first" if late != late else (
            f"{late:.0f} counts late" if unit == "counts" else f"{late * 1000:.1f} ms late")
        self._notify("missed", f"part {event.seq} not kicked: its reject window had passed ({late_txt})")

    def _start_guarded(self, events: list[InspectionEvent]) -> None:
        try:
            self._start(events)
        except Exception:            # the output did not take the pulse: these parts were not kicked
            self.stats["not_fired"] += len(events)
            raise
        self.stats["pulses"] += 1
        self._delivered(len(events))
        self._ok()

    def undelivered(self) -> dict[str, object] | None:
        """Rejects this output did not kick (it failed, or their window had passed): counted, alarmed;
        the parts themselves are in the record as rejects, for someone to take off by hand."""
        n = self.stats["not_fired"] + self.stats["missed"]
        if not n:
            return None
        return {"count": n, "where": None, "what": "rejects not kicked", "why": self.health().detail or
                "their reject window had passed", "not_fired": self.stats["not_fired"], "late": self.stats["missed"]}

    def _extend_guarded(self, event: InspectionEvent) -> None:
        self.stats["merged"] += 1
        self._extend(event)

    def _end_guarded(self) -> None:
        self._end()
        self._ok()

    def _start(self, events: list[InspectionEvent]) -> None:
        raise NotImplementedError

    def _extend(self, event: InspectionEvent) -> None:
        """Another part inside the running pulse: nothing to do for a level output."""

    def _end(self) -> None:
        raise NotImplementedError

    def close_timing(self) -> None:
        """Finish queued pulses that are due soon, switch the output off, stop the encoder."""
        drain = 0.0 if self.encoder is not None else self.cfg.delay_ms / 1000 + self.cfg.pulse_ms / 1000 + 0.2
        self.scheduler.close(drain_s=min(drain, 5.0))
        if self.encoder is not None:
            self.encoder.close()
        if self._close_encoder is not None:
            self._close_encoder()
