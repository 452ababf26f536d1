"""What a run leaves on disk: the event log, reject images, sampled good frames and a ring buffer.

Nothing here may slow the inspection path. The loop only ever calls methods that append to bounded
in-memory queues (`put_nowait`); one writer thread does the encoding and the disk work. When the
disk is slower than the line, records are dropped and counted (edgead_records_dropped_total),
parts never are. Layout of one run, `<dir>/<UTC start time>/`:

    events.jsonl     one JSON line per part: id, seq, wall_time, decision, score, threshold, reason,
                     latency_ms {queue, preprocess, infer, decide, total}, images
    run.json         how the run was started (engine, calibration, config), rewritten with the summary at exit
    rejects/         <id>-seq<seq>-raw.png (the camera frame) and -overlay.png (heatmap over the model's view)
    good/            every Nth good frame (record.save_good_every)
    ring/            recent good frames, kept in memory and written when an alarm is raised and at exit

The disk quota covers the whole `<dir>` (older runs too): the oldest files are deleted first; the
current run's events.jsonl and run.json are never deleted.
"""

from __future__ import annotations

import collections
import os
import queue
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgead.runtime.overlay import heatmap_overlay
from edgead.io import atomic_write_bytes, atomic_write_json, json_line, png_bytes
from edgead.preprocess import PreprocessSpec, to_display
from edgead.protocols import InspectionEvent
from edgead.runtime.config import RecordConfig
from edgead.runtime.telemetry import RunMetrics

EVENT_BUFFER = 4096        # event lines waiting for the disk (a line is ~300 bytes)
CLOSE_TIMEOUT_S = 15.0     # at exit, how long queued images may take before they are given up


def event_line(pid: int, event: InspectionEvent, images: list[str]) -> str:
    """One strict-JSON line (NaN scores become null)."""
    d = {"id": pid, **event.to_dict(), "images": images}
    return json_line(d) + "\n"


def new_run_dir(root: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path, i = root / stamp, 1
    while path.exists():
        i += 1
        path = root / f"{stamp}-{i}"
    path.mkdir(parents=True)
    return path


class Quota:
    """Bytes under a folder, oldest files deleted first when over the limit (protected files kept)."""

    def __init__(self, root: Path, limit_bytes: int, protected: set[Path]) -> None:
        self.root, self.limit, self.protected = root, limit_bytes, protected
        files = []
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = Path(dirpath) / n
                try:
                    st = p.stat()
                except OSError:
                    continue
                files.append((st.st_mtime, p, st.st_size))
        files.sort()
        self.files: collections.deque[tuple[Path, int]] = collections.deque((p, s) for _, p, s in files)
        self.total = sum(s for _, _, s in files)

    def added(self, path: Path, size: int) -> None:
        self.files.append((path, size))
        self.total += size

    def grew(self, size: int) -> None:
        self.total += size

    def enforce(self) -> int:
        """Delete oldest unprotected files until under the limit; returns how many were deleted."""
        deleted, skipped = 0, []
        while self.total > self.limit and self.files:
            path, size = self.files.popleft()
            if path in self.protected:
                skipped.append((path, size))
                continue
            try:
                path.unlink()
                deleted += 1
            except FileNotFoundError:
                pass
            except OSError:
                skipped.append((path, size))
                continue
            self.total -= size
        self.files.extendleft(reversed(skipped))
        return deleted


class Recorder:
    """Event log + images on a writer thread with bounded queues; every public method returns at once."""

    def __init__(self, cfg: RecordConfig, spec: PreprocessSpec, vrange: tuple[float, float],
                 metrics: RunMetrics, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> None:
        assert cfg.dir is not None
        self.cfg, self.spec, self.vrange, self.metrics, self._log = cfg, spec, vrange, metrics, log
        self.root = Path(cfg.dir)
        self.dir = new_run_dir(self.root)
        self.events_path = self.dir / "events.jsonl"
        self.run_json = self.dir / "run.json"
        self.quota = Quota(self.root, int(cfg.quota_mb * 1024 * 1024), {self.events_path, self.run_json})
        self._lines: collections.deque[str] = collections.deque()
        self._lines_lock = threading.Lock()
        self._file_lock = threading.Lock()     # close() may flush while a stuck writer thread holds a job
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue(maxsize=cfg.queue)
        self._ring: collections.deque[tuple[int, int, np.ndarray]] = collections.deque(maxlen=max(cfg.ring_size, 1))
        self._ring_dumped = -1              # highest part id already written to ring/
        self._good_count = 0
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._errors = 0
        self.closed = False
        self.started = False
        self._file = open(self.events_path, "a", encoding="utf-8")
        self.quota.added(self.events_path, 0)
        self._thread = threading.Thread(target=self._run, name="edgead-recorder", daemon=True)

    # ------------------------------------------------------------ called by the loop (never blocks)

    def start(self, run_info: dict[str, Any]) -> None:
        atomic_write_json(self.run_json, run_info)
        self._thread.start()
        self.started = True

    def event(self, pid: int, event: InspectionEvent, images: list[str] | None = None) -> None:
        line = event_line(pid, event, images or [])
        with self._lines_lock:
            if len(self._lines) >= EVENT_BUFFER:
                self.metrics.records_dropped.inc(kind="event")
                return
            self._lines.append(line)
        self._wake.set()

    def reject_images(self, pid: int, event: InspectionEvent, image: np.ndarray, amap: np.ndarray | None) -> list[str]:
        """Queue the raw frame and (when scored) its overlay; returns the names they will have."""
        if not self.cfg.save_rejects:
            return []
        stem = f"rejects/{pid:08d}-seq{event.seq}"
        names = [f"{stem}-raw.png"] + ([f"{stem}-overlay.png"] if amap is not None else [])
        if not self._submit(lambda: self._write_reject(stem, image, amap), "reject_image"):
            return []
        return names

    def good(self, pid: int, event: InspectionEvent, image: np.ndarray) -> list[str]:
        """Keep a passed frame in the ring; every save_good_every-th is also written to good/."""
        if self.cfg.ring_size > 0:
            self._ring.append((pid, event.seq, image))
        self._good_count += 1
        n = self.cfg.save_good_every
        if n and self._good_count % n == 0:
            name = f"good/{pid:08d}-seq{event.seq}.png"
            if self._submit(lambda: self._write(name, png_bytes(image)), "good_image"):
                return [name]
        return []

    def dump_ring(self) -> None:
        """Write the ring's frames not yet on disk (on alarm; again at exit)."""
        items = [it for it in list(self._ring) if it[0] > self._ring_dumped]
        if not items:
            return
        self._ring_dumped = max(it[0] for it in items)

        def write_all() -> None:
            for pid, seq, img in items:
                self._write(f"ring/{pid:08d}-seq{seq}.png", png_bytes(img))

        self._submit(write_all, "ring")

    # ------------------------------------------------------------ shutdown

    def close(self, run_info: dict[str, Any]) -> None:
        """Flush every event line, write what images time allows, rewrite run.json with the summary."""
        if self.closed:
            return
        self.closed = True
        self.dump_ring()
        self._closing.set()
        self._wake.set()
        if self.started:
            self._thread.join(CLOSE_TIMEOUT_S)
        if self._thread.is_alive():
            self._log(f"WARNING: the disk under {self.dir} is too slow: giving up on {self._jobs.qsize()} queued "
                      "images")
        self._flush_lines()  # lines are cheap: always written, even past the timeout
        with self._file_lock:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError:
                pass
            self._file.close()
        try:
            atomic_write_json(self.run_json, run_info)
        except OSError as e:
            self._log(f"WARNING: could not write {self.run_json}: {e}")

    # ------------------------------------------------------------ writer thread

    def _submit(self, job: Callable[[], Any], kind: str) -> bool:
        try:
            self._jobs.put_nowait(job)
            self._wake.set()
            return True
        except queue.Full:
            self.metrics.records_dropped.inc(kind=kind)
            return False

    def _run(self) -> None:
        while True:
            self._flush_lines()
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                if self._closing.is_set():
                    self._flush_lines()
                    return
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            try:
                job()
            except Exception as e:  # a full or failing disk loses records, never the run
                self.metrics.records_dropped.inc(kind="error")
                self._error(e)

    def _flush_lines(self) -> None:
        with self._lines_lock:
            if not self._lines:
                return
            lines = "".join(self._lines)
            self._lines.clear()
        try:
            with self._file_lock:
                self._file.write(lines)
                self._file.flush()
            self.quota.grew(len(lines.encode()))
        except (OSError, ValueError) as e:
            self.metrics.records_dropped.inc(lines.count("\n"), kind="event")
            self._error(e)

    def _write(self, name: str, data: bytes) -> None:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        os.chmod(path, 0o644)
        self.quota.added(path, len(data))
        deleted = self.quota.enforce()
        if deleted:
            self.metrics.records_deleted.inc(deleted)

    def _write_reject(self, stem: str, image: np.ndarray, amap: np.ndarray | None) -> None:
        self._write(f"{stem}-raw.png", png_bytes(image))
        if amap is not None:
            view = to_display(image, self.spec)
            self._write(f"{stem}-overlay.png", png_bytes(heatmap_overlay(view, amap, *self.vrange)))

    def _error(self, e: BaseException) -> None:
        self._errors += 1
        if self._errors <= 3 or self._errors % 1000 == 0:
            self._log(f"WARNING: recording failed ({self._errors} so far): {e}")
        time.sleep(0.01)
