"""What a run leaves on disk: the event log first, then reject images, sampled good frames and a ring buffer.

Nothing here may slow the inspection path. The loop only ever calls methods that append to bounded
in-memory queues (`put_nowait`); one writer thread does the encoding and the disk work. When the
disk is slower than the line, records are dropped and counted (edgead_records_dropped_total),
parts never are. Layout of one run, `<dir>/<UTC start time>/`:

    events.jsonl     one JSON line per part: id, seq, wall_time, decision, score, threshold, reason,
                     latency_ms {queue, preprocess, infer, decide, total}, images
    run.json         how the run was started (engine, calibration, config), rewritten with the summary
                     and what the recorder could not write at exit
    rejects/         <id>-seq<seq>-raw.png (the camera frame) and -overlay.png (heatmap over the model's view)
    good/            every Nth good frame (record.save_good_every)
    ring/            recent good frames, kept in memory and written when an alarm is raised and at exit

The event log is the audit trail, so it comes first:
- a part's line is written before its images (the writer flushes the lines before each image job);
- whole lines only: each line is one append, and a failed or short write is truncated back to the
  last whole line, so a reader never meets a torn line; the log is fsync'd at most every
  FSYNC_INTERVAL_S and at close;
- images give way to the log: an image is not written when it would leave less than `reserve`
  bytes free; the oldest images (of any run) are deleted first to make room, and when a log write
  hits a full disk images are deleted and the line is tried once more;
- every write failure (a line, an image, run.json) is counted (edgead_record_write_errors_total)
  and is an ALARM through `on_alarm(key, reason)`, cleared through `on_clear(key)` when a later
  write of the same kind succeeds (keys record_failure:events and record_failure:images);
- `close()` never raises: it returns (and puts in run.json) what it could not write.
At start the record folder must be a writable folder with at least min(quota, MIN_FREE_BYTES) free
(old records are deleted first when that makes enough room), or the run does not start.

The disk quota covers the whole `<dir>` (older runs too): the oldest files are deleted first; the
current run's events.jsonl and run.json are never deleted.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import queue
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgead.errors import EdgeADError
from edgead.io import LineLog, check_output, json_line, png_bytes, write_all, write_reason
from edgead.preprocess import PreprocessSpec, to_display
from edgead.protocols import InspectionEvent
from edgead.runtime.config import RECORD_FLAG, RecordConfig
from edgead.runtime.overlay import heatmap_overlay
from edgead.runtime.telemetry import RunMetrics

EVENT_BUFFER = 4096        # event lines waiting for the disk (a line is ~300 bytes)
CLOSE_TIMEOUT_S = 15.0     # at exit, how long queued images may take before they are given up
FSYNC_INTERVAL_S = 1.0     # the event log reaches the disk at least this often
MB = 1024 * 1024
MIN_FREE_BYTES = 64 * MB   # at start: at least min(quota, this) free under the record folder
LOG_RESERVE_BYTES = 8 * MB  # images stop at min(quota / 4, this) free: that room is the event log's
LOG_ALARM = "record_failure:events"
IMAGE_ALARM = "record_failure:images"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

AlarmHook = Callable[[str, str], None]   # (key, reason)
ClearHook = Callable[[str], object]      # (key)


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


def _why(err: BaseException) -> str:
    if isinstance(err, OSError) and err.errno is not None:
        return f"{errno.errorcode.get(err.errno, err.errno)}: {err.strerror or os.strerror(err.errno)}"
    return repr(err)


def _mb(n: float) -> str:
    return f"{n / MB:.1f} MB"


def write_file_atomic(path: Path, data: bytes, fsync: bool = False) -> None:
    """`data` into a temporary file beside `path`, renamed into place; on failure no temporary is left."""
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.fchmod(fd, 0o644)
            write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def json_bytes(obj: Any) -> bytes:
    """Strict, indented JSON (NaN and infinity as null, like edgead.io.atomic_write_json)."""
    return (json.dumps(json.loads(json_line(obj)), indent=2) + "\n").encode()


def prepare_record_dir(root: Path) -> None:
    """The record folder is usable (`edgead.io.check_output`, naming --record and record.dir), then made."""
    check_output(root, kind="dir", what=RECORD_FLAG, overwrite=True, min_free_mb=0)  # room: _check_free_space
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeADError(f"{RECORD_FLAG} {root} cannot be created: {write_reason(e)}",
                          f"give {RECORD_FLAG} a writable folder (it is made if it does not exist)") from e


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
        return self._delete_oldest(lambda: self.total > self.limit, images_only=False)

    def evict(self, nbytes: int) -> tuple[int, int]:
        """Free `nbytes`: the oldest images first, then the oldest other unprotected files; (deleted, freed)."""
        total0, deleted = self.total, 0
        for images_only in (True, False):
            deleted += self._delete_oldest(lambda: total0 - self.total < nbytes, images_only)
            if total0 - self.total >= nbytes:
                break
        return deleted, total0 - self.total

    def _delete_oldest(self, more: Callable[[], bool], images_only: bool) -> int:
        deleted = 0
        kept: collections.deque[tuple[Path, int]] = collections.deque()
        while more() and self.files:
            path, size = self.files.popleft()
            if path in self.protected or (images_only and path.suffix != ".png"):
                kept.append((path, size))
                continue
            try:
                path.unlink()
                deleted += 1
            except FileNotFoundError:
                pass
            except OSError:
                kept.append((path, size))
                continue
            self.total -= size
        kept.extend(self.files)
        self.files = kept
        return deleted


class Recorder:
    """Event log + images on a writer thread with bounded queues; every public method returns at once.

    on_alarm(key, reason) / on_clear(key): a write failure and its recovery (the run loop sets them to
    its alarm board); without them a failure is logged as an ALARM line.
    """

    def __init__(self, cfg: RecordConfig, spec: PreprocessSpec, vrange: tuple[float, float],
                 metrics: RunMetrics, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
                 on_alarm: AlarmHook | None = None, on_clear: ClearHook | None = None) -> None:
        assert cfg.dir is not None
        self.cfg, self.spec, self.vrange, self.metrics, self._log = cfg, spec, vrange, metrics, log
        self.on_alarm, self.on_clear = on_alarm, on_clear
        self.root = Path(cfg.dir)
        quota = int(cfg.quota_mb * MB)
        self.min_free, self.reserve = min(quota, MIN_FREE_BYTES), min(quota // 4, LOG_RESERVE_BYTES)
        prepare_record_dir(self.root)
        try:
            self.dir = new_run_dir(self.root)
        except OSError as e:
            raise EdgeADError(f"cannot create a run folder under {self.root}: {_why(e)}",
                              "check the record folder (--record / record.dir)") from e
        self.events_path = self.dir / "events.jsonl"
        self.run_json = self.dir / "run.json"
        self.quota = Quota(self.root, quota, {self.events_path, self.run_json})
        self._check_free_space()
        try:
            self._events = LineLog(self.events_path, FSYNC_INTERVAL_S)
        except OSError as e:
            raise EdgeADError(f"cannot create {self.events_path}: {_why(e)}",
                              "check the record folder (--record / record.dir)") from e
        self.quota.added(self.events_path, 0)
        self._lines: collections.deque[bytes] = collections.deque()
        self._lines_lock = threading.Lock()
        self._file_lock = threading.Lock()     # close() may flush while a stuck writer thread holds a job
        self._submit_lock = threading.Lock()   # a line and its images enter the queues together
        self._stats_lock = threading.Lock()
        self.stats: collections.Counter[str] = collections.Counter()
        self._jobs: queue.Queue[Callable[[], object]] = queue.Queue(maxsize=cfg.queue)
        self._ring: collections.deque[tuple[int, int, np.ndarray]] = collections.deque(maxlen=max(cfg.ring_size, 1))
        self._ring_dumped = -1              # highest part id already written to ring/
        self._good_count = 0
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._errors = 0
        self._failing: set[str] = set()
        self._warned_full = False
        self.last_error: str | None = None
        self.run_json_written: bool | None = None
        self.closed = False
        self.started = False
        self._thread = threading.Thread(target=self._run, name="edgead-recorder", daemon=True)

    def _check_free_space(self) -> None:
        free = self._free()
        if free < self.min_free:  # old records make room first
            deleted = self.quota.evict(self.min_free - free)[0]
            if deleted:
                self.metrics.records_deleted.inc(deleted)
                self._log(f"deleted {deleted} old record files under {self.root} to make room for this run")
            free = self._free()
        if free < self.min_free:
            try:
                self.dir.rmdir()
            except OSError:
                pass
            raise EdgeADError(f"the record folder {self.root} has only {_mb(free)} free; recording needs at least "
                              f"{_mb(self.min_free)} (the smaller of record.quota_mb and {MIN_FREE_BYTES // MB} MB)",
                              "free space on that disk, lower record.quota_mb, or record to another disk with "
                              "--record DIR")

    def _free(self) -> int:
        try:
            return int(shutil.disk_usage(self.dir).free)
        except OSError:
            return sys.maxsize  # unknown: the writes themselves will tell

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    # ------------------------------------------------------------ called by the loop (never blocks)

    def start(self, run_info: dict[str, Any]) -> None:
        try:
            write_file_atomic(self.run_json, json_bytes(run_info))
        except OSError as e:
            raise EdgeADError(f"cannot write {self.run_json}: {_why(e)}",
                              "check the disk under the record folder (--record / record.dir)") from e
        self._thread.start()
        self.started = True

    def event(self, pid: int, event: InspectionEvent, images: list[str] | None = None) -> bool:
        """Queue the part's line alone; False when it was dropped (counted, and an alarm)."""
        with self._submit_lock:
            ok = self._queue_line(event_line(pid, event, images or []))
        if not ok:
            self._line_dropped()
        return ok

    def record(self, pid: int, event: InspectionEvent, image: np.ndarray | None = None,
               amap: np.ndarray | None = None) -> list[str]:
        """The part's line, then its images (a reject's frame and overlay, every Nth good frame); returns
        the image names its line lists. The line always goes to the disk before the images."""
        names, job, kind = self._plan(pid, event, image, amap)
        with self._submit_lock:
            if job is not None and self._jobs.full():
                self.metrics.records_dropped.inc(kind=kind)
                self._count("images_dropped", len(names))
                names, job = [], None
            ok = self._queue_line(event_line(pid, event, names))
            if ok and job is not None:
                self._jobs.put_nowait(job)  # cannot be full: only holders of _submit_lock put
        if not ok:
            self._line_dropped()
            if job is not None:  # images of a part whose line is lost are not written either
                self.metrics.records_dropped.inc(kind=kind)
                self._count("images_dropped", len(names))
            return []
        self._wake.set()
        return names

    def _plan(self, pid: int, event: InspectionEvent, image: np.ndarray | None,
              amap: np.ndarray | None) -> tuple[list[str], Callable[[], object] | None, str]:
        """(image names, the job writing them, its kind for the drop counter); passed frames feed the ring."""
        if image is None:
            return [], None, ""
        if event.rejected:
            if not self.cfg.save_rejects:
                return [], None, ""
            stem = f"rejects/{pid:08d}-seq{event.seq}"
            names = [f"{stem}-raw.png"] + ([f"{stem}-overlay.png"] if amap is not None else [])
            return names, lambda: self._write_reject(stem, image, amap), "reject_image"
        if self.cfg.ring_size > 0:
            self._ring.append((pid, event.seq, image))
        self._good_count += 1
        n = self.cfg.save_good_every
        if n and self._good_count % n == 0:
            name = f"good/{pid:08d}-seq{event.seq}.png"
            return [name], lambda: self._write(name, png_bytes(image)), "good_image"
        return [], None, ""

    def _queue_line(self, line: str) -> bool:
        with self._lines_lock:
            if len(self._lines) >= EVENT_BUFFER:
                self.metrics.records_dropped.inc(kind="event")
                self._count("events_dropped")
                return False
            self._lines.append(line.encode())
        return True

    def _line_dropped(self) -> None:
        self._failed(LOG_ALARM, f"the disk under {self.dir} is too slow: {EVENT_BUFFER} event lines are waiting, "
                                f"new ones are dropped ({self.stats['events_dropped']} so far)")

    def dump_ring(self) -> None:
        """Write the ring's frames not yet on disk (on alarm; again at exit)."""
        items = [it for it in list(self._ring) if it[0] > self._ring_dumped]
        if not items:
            return
        self._ring_dumped = max(it[0] for it in items)

        def write_all_ring() -> None:
            for pid, seq, img in items:
                self._write(f"ring/{pid:08d}-seq{seq}.png", png_bytes(img))

        with self._submit_lock:
            try:
                self._jobs.put_nowait(write_all_ring)
            except queue.Full:
                self.metrics.records_dropped.inc(kind="ring")
                self._count("images_dropped", len(items))
                return
        self._wake.set()

    # ------------------------------------------------------------ shutdown

    def close(self, run_info: dict[str, Any]) -> dict[str, Any]:
        """Flush every event line, write what images time allows, rewrite run.json with the summary and
        `report()`. Never raises: what could not be written is in the returned report (and an alarm)."""
        if self.closed:
            return self.report()
        self.closed = True
        try:
            self._close(run_info)
        except Exception as e:  # noqa: BLE001 - the summary must still be printed
            self.last_error = f"closing the recorder failed: {e!r}"
            self._log(f"ERROR: {self.last_error}")
        return self.report()

    def _close(self, run_info: dict[str, Any]) -> None:
        self.dump_ring()
        self._closing.set()
        self._wake.set()
        if self.started:
            self._thread.join(CLOSE_TIMEOUT_S)
        if self._thread.is_alive():
            left = self._jobs.qsize()
            self.metrics.records_dropped.inc(left, kind="close_timeout")
            self._count("image_jobs_abandoned", left)
            self._log(f"WARNING: the disk under {self.dir} is too slow: giving up on {left} queued image jobs")
        self._flush_lines(wait_s=CLOSE_TIMEOUT_S)  # lines are cheap: always tried, even past the timeout
        if self._file_lock.acquire(timeout=CLOSE_TIMEOUT_S):
            try:
                err = self._events.close()
            finally:
                self._file_lock.release()
            if err is not None:
                self.metrics.record_write_errors.inc(kind="event")
                self._failed(LOG_ALARM, f"the event log {self.events_path} could not be synced at exit ({_why(err)})")
        with self._lines_lock:  # lines the disk never took (it did not return within the timeout)
            stuck = len(self._lines)
            self._lines.clear()
        if stuck:
            self._count("events_not_written", stuck)
            self.metrics.record_write_errors.inc(stuck, kind="event")
            self._failed(LOG_ALARM, f"the disk under {self.dir} does not return: {stuck} event line(s) not written")
        report = {k: v for k, v in self.report().items() if k != "run_json_written"}
        self._write_run_json({**run_info, "record": report})

    def _write_run_json(self, obj: dict[str, Any]) -> None:
        data = json_bytes(obj)
        for attempt in (1, 2):
            try:
                write_file_atomic(self.run_json, data, fsync=True)
                self.run_json_written = True
                return
            except OSError as e:
                err = e
                if attempt == 1 and e.errno in _NO_SPACE and self._evict(2 * len(data) + 65536):
                    continue
                break
        self.run_json_written = False
        self.metrics.record_write_errors.inc(kind="run_json")
        self._failed("record_failure:run_json", f"could not write {self.run_json} at exit ({_why(err)}): the "
                                                "summary is only in the output of the run")

    def report(self) -> dict[str, Any]:
        """What was and was not written: every line is written, not_written, dropped (the buffer was full)
        or, until the writer gets to it, pending."""
        with self._stats_lock:
            s = dict(self.stats)
        with self._lines_lock:
            pending = len(self._lines)
        events = {"written": s.get("events_written", 0), "not_written": s.get("events_not_written", 0),
                  "dropped": s.get("events_dropped", 0)}
        if pending:   # still waiting for the disk (after close: the disk never returned)
            events["pending"] = pending
        images = {"written": s.get("images_written", 0), "not_written": s.get("images_not_written", 0),
                  "dropped": s.get("images_dropped", 0), "jobs_abandoned": s.get("image_jobs_abandoned", 0)}
        return {"dir": str(self.dir), "events": events, "images": images, "run_json_written": self.run_json_written,
                "complete": (events["not_written"] == events["dropped"] == pending == 0
                             and self.run_json_written is not False),
                "last_error": self.last_error}

    # ------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            try:
                job: Callable[[], object] | None = self._jobs.get_nowait()
            except queue.Empty:
                job = None
            self._flush_lines()  # after taking a job: the lines queued with its images go first
            if job is None:
                if self._closing.is_set():
                    return
                self._sync()
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            try:
                job()
            except Exception as e:  # a failing encoder or disk loses records, never the run
                self._count("images_not_written")
                self.metrics.record_write_errors.inc(kind="image")
                self._failed(IMAGE_ALARM, f"recording images under {self.dir} failed: {_why(e)}")

    def _flush_lines(self, wait_s: float = -1) -> None:
        with self._lines_lock:
            if not self._lines:
                return
            lines = list(self._lines)
            self._lines.clear()
        if not self._file_lock.acquire(timeout=wait_s):
            with self._lines_lock:  # the disk does not return: the lines stay pending (reported)
                self._lines.extendleft(reversed(lines))
            return
        try:
            written, err = self._append_lines(lines)
        finally:
            self._file_lock.release()
        self._count("events_written", written)
        lost = len(lines) - written
        if err is None:
            self._recovered(LOG_ALARM)
            return
        self._count("events_not_written", lost)
        self.metrics.record_write_errors.inc(max(lost, 1), kind="event")
        what = f"{lost} event line(s) not written" if lost else "the written lines may not be on the disk"
        self._failed(LOG_ALARM, f"the event log {self.events_path} failed ({_why(err)}): {what}")

    def _append_lines(self, lines: list[bytes]) -> tuple[int, OSError | None]:
        """(lines written, the error that stopped them); images are deleted to make room for a line."""
        for i, data in enumerate(lines):
            err = self._events.append(data)
            if err is not None and err.errno in _NO_SPACE and self._evict(len(data) + self.reserve):
                err = self._events.append(data)
            if err is not None:
                return i, err
            self.quota.grew(len(data))
        return len(lines), self._events.sync()

    def _sync(self) -> None:
        if self._file_lock.acquire(blocking=False):
            try:
                err = self._events.sync()
            finally:
                self._file_lock.release()
            if err is not None:
                self.metrics.record_write_errors.inc(kind="event")
                self._failed(LOG_ALARM, f"the event log {self.events_path} could not be synced ({_why(err)})")

    def _evict(self, nbytes: int) -> int:
        """Delete the oldest images (then other old records) to free `nbytes`; returns the bytes freed."""
        deleted, freed = self.quota.evict(nbytes)
        if deleted:
            self.metrics.records_deleted.inc(deleted)
        return freed

    def _write(self, name: str, data: bytes) -> bool:
        """One image, only when it leaves `reserve` bytes free for the event log (old images make room)."""
        need = len(data) + self.reserve
        short = need - self._free()
        if short > 0 and not self._warned_full:
            self._warned_full = True
            self._log(f"WARNING: the disk under {self.root} is full before record.quota_mb ({self.cfg.quota_mb:g} MB) "
                      "is reached: the oldest images are deleted to make room")
        if short > 0 and (self._evict(short) < short and self._free() < need):
            self._count("images_dropped")
            self.metrics.records_dropped.inc(kind="no_space")
            self._failed(IMAGE_ALARM, f"the disk under {self.dir} is nearly full ({_mb(self._free())} free): images "
                                      f"are not written, the room left is kept for the event log")
            return False
        path = self.dir / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_file_atomic(path, data)
        except OSError as e:
            self._count("images_not_written")
            self.metrics.record_write_errors.inc(kind="image")
            self._failed(IMAGE_ALARM, f"writing {name} under {self.dir} failed ({_why(e)}): images are lost, the "
                                      "event log is kept")
            return False
        self._count("images_written")
        self.quota.added(path, len(data))
        deleted = self.quota.enforce()
        if deleted:
            self.metrics.records_deleted.inc(deleted)
        self._recovered(IMAGE_ALARM)
        return True

    def _write_reject(self, stem: str, image: np.ndarray, amap: np.ndarray | None) -> None:
        self._write(f"{stem}-raw.png", png_bytes(image))
        if amap is not None:
            view = to_display(image, self.spec)
            self._write(f"{stem}-overlay.png", png_bytes(heatmap_overlay(view, amap, *self.vrange)))

    # ------------------------------------------------------------ alarms

    def _failed(self, key: str, reason: str) -> None:
        """A write failure: an ALARM, through on_alarm when the loop gave one, else as a log line."""
        self.last_error = reason
        self._failing.add(key)
        hook = self.on_alarm
        if hook is not None:
            try:
                hook(key, reason)
                return
            except Exception as e:  # noqa: BLE001 - the alarm still reaches the log below
                reason = f"{reason} (the alarm callback failed: {e!r})"
        self._errors += 1
        if self._errors <= 3 or self._errors % 1000 == 0:
            self._log(f"ALARM: {reason}")

    def _recovered(self, key: str) -> None:
        if key not in self._failing:
            return
        self._failing.discard(key)
        hook = self.on_clear
        try:
            if hook is not None:
                hook(key)
            else:
                self._log(f"recording works again: {key} cleared")
        except Exception as e:  # noqa: BLE001
            self._log(f"WARNING: clearing the alarm {key} failed: {e!r}")
