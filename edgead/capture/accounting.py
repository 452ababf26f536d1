"""What a recording promised and what it delivered, so a replay cannot lose frames without saying so.

A video file knows its frame count (from the container) and an image folder its number of files; a
replay that hands out fewer frames (a truncated file, undecodable frames, images skipped with
camera.skip_bad) must show that in the summary, the metrics and run.json, and end the run with a
non-zero exit. Every recording keeps one FrameAccount and reports it through `accounting()`; a live
camera has nothing to account for against (its losses are counted from seq gaps) and reports None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FrameAccount:
    """Counts of one recording, updated as it is read.

    expected: frames the recording holds (one pass), None when the container does not say.
    read: frames handed out (all passes, with camera.loop). unreadable: frames that could not be
    decoded or read and were not skipped by choice. skipped: names of the images camera.skip_bad
    skipped, each once. passes: passes started (1 unless camera.loop). finished: the recording ended.
    """

    expected: int | None = None
    read: int = 0
    unreadable: int = 0
    skipped: list[str] = field(default_factory=list)
    skip_events: int = 0
    passes: int = 0
    finished: bool = False

    def skip(self, name: str) -> None:
        self.skip_events += 1
        if name not in self.skipped:
            self.skipped.append(name)

    @property
    def ended_early(self) -> bool:
        """A frame could not be read, or the recording finished before its expected last frame."""
        if self.unreadable > 0:
            return True
        return (self.finished and self.expected is not None
                and self.read + self.unreadable + len(self.skipped) < self.expected)

    def as_dict(self) -> dict[str, Any]:
        """What `FrameSource.accounting()` returns for a recording (plain JSON types)."""
        return {"expected": self.expected, "read": self.read, "unreadable": self.unreadable,
                "skipped": list(self.skipped), "ended_early": self.ended_early, "passes": self.passes}
