"""The three small protocols that carry the run loop (ARCHITECTURE.md rule 3), and the records they pass.

A new camera is one new FrameSource; a new output is one new RejectSink; a new runtime is one new
Detector (see edgead.backends). Each declares every attribute the loop reads, so nothing is probed. Times: `t_capture` is `time.monotonic()` seconds (for deadlines
and reject timing, immune to clock changes); `wall_time` is ISO-8601 UTC, for logs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class Frame:
    image: np.ndarray            # HxW (mono) or HxWx3 RGB, uint8 or uint16
    seq: int                     # per-source sequence number, increasing; a gap means lost frames
    t_capture: float             # time.monotonic() when the frame was captured (or received)
    wall_time: str               # ISO-8601 UTC of the capture
    source: str                  # e.g. "opencv:0", "gige:Fake_1", "replay:/data/parts"
    meta: dict[str, Any] = field(default_factory=dict)   # camera timestamp, trigger id, file name...


@runtime_checkable
class FrameSource(Protocol):
    name: str                    # shown in logs and alarms, e.g. "opencv:0"

    @property
    def live(self) -> bool:
        """A camera or stream (True), or a recording replayed (video file, image folder)."""

    @property
    def finished(self) -> bool:
        """A recording that has ended; always False for a live camera."""

    def open(self) -> None:
        """Connect to the camera; raise EdgeADError with what to check when it cannot."""

    def read(self, timeout_s: float) -> Frame | None:
        """Next frame, or None when none arrived within timeout_s. Raises EdgeADError when the camera is gone."""

    def close(self) -> None: ...

    def accounting(self) -> dict[str, Any] | None:
        """A recording's frames: {"expected", "read", "unreadable", "skipped", "ended_early", "passes"}; None when live."""


@runtime_checkable
class Detector(Protocol):
    """One runtime's engine (edgead.backends): scores and anomaly maps for a preprocessed batch."""

    backend: str                 # one of edgead.backends.manifest.BACKENDS (or "torch" for the reference)
    precision: str               # one of edgead.backends.manifest.PRECISIONS
    fingerprint: str             # identifies the engine that produced the scores (calibration checks it)
    max_batch: int

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """NCHW float32 preprocessed images -> (scores N float32, maps N x h x w float32)."""
        ...


@dataclass
class InspectionEvent:
    """What the run loop decided about one part; every sink sees the same record."""

    seq: int
    t_capture: float             # monotonic seconds, as in Frame
    wall_time: str
    decision: str                # "pass", "reject", or "safe_reject" (not inspected in time: fail-safe)
    score: float | None          # None when the part could not be scored
    threshold: float | None
    reason: str = ""             # for safe_reject: "deadline", "engine error: ...", "sink down", ...
    source: str = ""
    latency_ms: dict[str, float] = field(default_factory=dict)   # capture->queue, preprocess, infer, decide
    extra: dict[str, Any] = field(default_factory=dict)
    event_id: str = ""           # "<run id>-<n>", n the part number: the same in every output and on replay

    @property
    def rejected(self) -> bool:
        return self.decision in ("reject", "safe_reject")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SinkHealth:
    ok: bool
    detail: str = ""


@runtime_checkable
class RejectSink(Protocol):
    name: str

    def reject(self, event: InspectionEvent) -> None:
        """Fire the reject output for this part (timed by the sink's scheduler). Must not block long."""

    def health(self) -> SinkHealth: ...

    def close(self) -> None: ...
