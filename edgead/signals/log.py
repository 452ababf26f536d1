"""JSONL log output: one JSON object per event (and per alarm), appended and flushed; always available.

Also home of the one JSON form of an event that the mqtt and webhook outputs send too, so a
consumer parses the same record whichever output it reads.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from edgead.io import LineLog, json_line
from edgead.protocols import InspectionEvent
from edgead.signals.base import SinkBase
from edgead.signals.config import LogConfig
from edgead.signals.worker import Worker


def event_json(event: InspectionEvent, **extra: Any) -> str:
    """Strict one-line JSON of the event (NaN -> null), with extra top-level fields (e.g. line)."""
    data = event.to_dict()
    data.update(extra)
    return json_line(data)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LogSink(SinkBase):
    """Appends events to a JSONL file from its own thread (a slow disk never stalls the run loop)."""

    def __init__(self, cfg: LogConfig, queue: int = 10000) -> None:
        super().__init__(cfg.name, cfg.path)
        self.cfg = cfg
        self._drop_reported = False
        self._file: LineLog | None = None
        try:
            path = Path(cfg.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = LineLog(path)    # fsync'd at least once a second
            self._ok()
        except OSError as err:
            self._fail(f"cannot open {cfg.path} for appending: {err}")
        self.worker: Worker[tuple[bool, str]] = Worker(self._write, maxlen=queue, name=f"{cfg.name}-writer",
                                          on_error=self._on_error, on_drop=self._on_drop)

    def reject(self, event: InspectionEvent) -> None:
        if self.wants(event, self.cfg.per_part):
            self.worker.put((True, event_json(event)))

    def alarm(self, sink_name: str, detail: str) -> None:
        self.worker.put((False, json.dumps({"alarm": detail, "sink": sink_name, "wall_time": utc_now()})))

    def clear_alarm(self) -> None:
        self.worker.put((False, json.dumps({"alarm_cleared": True, "wall_time": utc_now()})))

    def _write(self, item: tuple[bool, str]) -> None:
        line = item[1]
        if self._file is None:
            raise OSError(f"{self.cfg.path} is not open")
        err = self._file.append((line + "\n").encode()) or self._file.sync()
        if err is not None:
            raise err
        self.stats["written"] += 1
        self.stats["events_written"] += item[0]
        self._delivered(int(item[0]))
        self._drop_reported = False
        self._ok()

    def _on_error(self, item: tuple[bool, str], err: BaseException) -> None:
        self.stats["failed"] += 1
        self.stats["events_lost"] += item[0]
        self._fail(f"cannot write {self.cfg.path}: {err}")

    def _on_drop(self, item: tuple[bool, str]) -> None:
        self.stats["dropped"] += 1
        self.stats["events_lost"] += item[0]
        if not self._drop_reported:          # one alarm until the next successful write
            self._drop_reported = True
            self._notify("dropped", f"log queue full: events are not being written to {self.cfg.path}")

    def fire_test(self) -> str:
        """Write one test line and wait for it; raises when it could not be written."""
        before = self.stats["written"]
        self.worker.put((False, json.dumps({"test": "edgead signals test", "wall_time": utc_now()})))
        if not self.worker.wait_idle(2.0) or self.stats["written"] == before:
            raise OSError(self.health().detail or f"could not write {self.cfg.path} within 2 s")
        return f"wrote a test line to {self.cfg.path}"

    def close(self) -> None:
        """Write what is queued (up to 2 s), then close; a failure is reported, never raised."""
        for item in self.worker.close(drain_s=2.0):      # still queued: never written
            self._on_drop(item)
        if self._file is not None:
            err = self._file.close()
            self._file = None
            if err is not None:
                self._fail(f"cannot write {self.cfg.path}: {err}")
        self.stats["unsent"] = self.stats["events_lost"]

    def undelivered(self) -> dict[str, object] | None:
        """Events this log did not write (disk full, queue full, still queued at close): counted; they are
        in the record's events.jsonl when the run records, and nowhere else."""
        n = self.stats["events_lost"]
        return {"count": n, "where": None, "what": "events not written", "why": self.health().detail} if n else None
