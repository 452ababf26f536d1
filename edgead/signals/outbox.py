"""The durable outbox of an output whose events go to a peer (mqtt, webhook): nothing lost while it is away.

An event is written here before it is sent, and leaves only when the peer acknowledged it, so a
broker or MES that stays down, or edgead itself stopping, costs no event: what was not
acknowledged is sent again, in order, at the next start (the event id lets a consumer drop a
duplicate). The outbox is bounded in bytes; a full one refuses the event, which the sink counts
as undelivered and raises as an alarm (never a silent drop).

One folder per output, `<outbox_dir>/<output name, sanitised>/`:

    seg-<first n, 12 digits>.jsonl   append-only segments, one whole record per line:
                                     {"n": 17, "id": "<event id>", "t": "<UTC appended>", "msg": {...}}
    acked.json                       {"acked_to": n, "acked": [n, ...]}: records up to acked_to, and
                                     those listed, were acknowledged (written atomically, in batches)
    meta.json                        {"output": ..., "type": ..., "target": ...}: whose folder it is
    lock                             flock'd while an edgead process has the outbox open

Records are written with one write() each and fsync'd in batches (every `fsync_every` records or
`fsync_ms`, whichever comes first) by the outbox's own thread, so the run loop never waits on the
disk's flush. At open, a torn last line (a crash mid-write) is cut off and counted; a segment whose
records are all acknowledged is deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgead.errors import EdgeADError
from edgead.io import atomic_write, atomic_write_json

try:
    import fcntl
except ImportError:              # not POSIX: no lock between processes
    fcntl = None  # type: ignore[assignment]

_logger = logging.getLogger("edgead.signals")

STATE_ENV = "EDGEAD_STATE_DIR"
SEGMENT_PREFIX, SEGMENT_SUFFIX = "seg-", ".jsonl"
ACK_FILE, META_FILE, LOCK_FILE = "acked.json", "meta.json", "lock"
DEFAULT_MB = 64.0
ACKED_LISTED_MAX = 10000         # out-of-order acks kept in acked.json; beyond that they are sent again
RECORD_MAX = 1 << 20             # bytes of one record line (the reader takes up to this much at once)
ACK_WRITE_S = 0.25               # acked.json is rewritten at most this often (a stale one only repeats events)


def default_outbox_dir() -> Path:
    """`$EDGEAD_STATE_DIR/outbox`, the state folder defaulting to ~/.local/state/edgead."""
    state = os.environ.get(STATE_ENV) or os.path.join(os.path.expanduser("~"), ".local", "state", "edgead")
    return Path(state).expanduser() / "outbox"


def resolve_outbox_dir(outbox_dir: str | Path | None) -> Path:
    return Path(outbox_dir).expanduser() if outbox_dir else default_outbox_dir()


def folder_name(output: str) -> str:
    """A file-system-safe folder name for an output; a changed name gets a short hash (mqtt#2, mqtt_2 differ)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", output).strip(".") or "output"
    return safe if safe == output else f"{safe}-{hashlib.sha1(output.encode()).hexdigest()[:6]}"


def output_folder(outbox_dir: str | Path | None, output: str) -> Path:
    return resolve_outbox_dir(outbox_dir) / folder_name(output)


@dataclass
class Record:
    n: int                       # the outbox's own number: the order of sending
    event_id: str
    t: str                       # UTC time it was appended
    msg: dict[str, Any]          # what the sink sends (topic and payload, or the POST body)


@dataclass
class SegmentScan:
    """What one segment file holds: each whole record's (n, start, end) and how much is not a record."""

    path: Path
    first: int
    entries: list[tuple[int, int, int]] = field(default_factory=list)
    good_end: int = 0            # end of the last whole record line: a torn tail starts here
    bad_lines: int = 0           # lines that are not whole records (torn tail, corruption)
    size: int = 0


def parse_record(line: bytes) -> Record | None:
    """A whole record line (without its newline), or None when it is not one."""
    try:
        d = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if (not isinstance(d, dict) or not isinstance(d.get("n"), int) or not isinstance(d.get("id"), str)
            or not isinstance(d.get("msg"), dict)):
        return None
    return Record(d["n"], d["id"], str(d.get("t", "")), d["msg"])


def segment_paths(folder: Path) -> list[tuple[int, Path]]:
    out = []
    for p in folder.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"):
        digits = p.name[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)]
        if digits.isdigit():
            out.append((int(digits), p))
    return sorted(out)


def scan_segment(path: Path, first: int, after: int) -> SegmentScan:
    """Every whole record of a segment whose n is above `after` (the numbers only ever grow).

    What follows the last whole record (a torn write) is what the caller cuts off; a bad line
    between whole records (corruption) is only skipped and counted.
    """
    data = path.read_bytes()
    scan = SegmentScan(path, first, size=len(data))
    pos, last = 0, after
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:                               # no newline: a torn last write
            scan.bad_lines += 1
            break
        rec = parse_record(data[pos:nl])
        if rec is None or rec.n <= last:
            scan.bad_lines += 1
        else:
            scan.entries.append((rec.n, pos, nl + 1))
            last = rec.n
            scan.good_end = nl + 1
        pos = nl + 1
    return scan


def load_acks(folder: Path) -> tuple[int, set[int]]:
    """(acked_to, the acks listed beyond it); an unreadable file means nothing acknowledged (replay all)."""
    path = folder / ACK_FILE
    if not path.exists():
        return 0, set()
    try:
        d = json.loads(path.read_text())
        return int(d.get("acked_to", 0)), {int(n) for n in d.get("acked", [])}
    except (OSError, ValueError, TypeError, AttributeError) as err:
        _logger.warning("outbox %s: %s unreadable (%s): every record in it is sent again", folder, ACK_FILE, err)
        return 0, set()


def _write_synced(tmp: Path, data: bytes) -> None:
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def lock_folder(folder: Path, output: str) -> int:
    """An exclusive lock on the folder for this process; EdgeADError when another edgead holds it."""
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise EdgeADError(f"output '{output}': its outbox {folder} is in use by another edgead process",
                          "stop the other run first, or give this one its own `outbox_dir:`") from None
    return fd


@dataclass
class _Segment:
    first: int
    path: Path
    size: int
    last: int                    # the last n in it (first - 1 while empty)


class Outbox:
    """The on-disk, append-only, bounded queue of one output (see the module docstring for the files).

    append() is called from the run loop (one write(), no fsync); take() and ack() from the sink's
    sender; a thread of its own fsyncs in batches, rewrites acked.json and deletes acknowledged
    segments. Thread-safe.
    """

    def __init__(self, folder: str | Path, *, max_bytes: int, fsync_every: int = 32, fsync_ms: float = 50.0,
                 readahead: int = 1000, output: str = "", meta: dict[str, Any] | None = None,
                 segment_bytes: int | None = None, on_error: Callable[[str], None] | None = None) -> None:
        self.folder = Path(folder)
        self.output = output or self.folder.name
        self.max_bytes = int(max_bytes)
        self.fsync_every, self.fsync_s = max(1, int(fsync_every)), max(0.001, fsync_ms / 1000)
        self.readahead = max(1, int(readahead))
        self.segment_bytes = segment_bytes or int(min(4 << 20, max(16 << 10, self.max_bytes // 8)))
        self.on_error = on_error
        self.repaired = 0        # torn / corrupt lines dropped at open
        self.refused = 0         # appends refused: outbox full, disk error, closed
        self.last_error = ""
        self.fsyncs = 0
        self._cond = threading.Condition()
        self._segments: list[_Segment] = []
        self._bytes = 0
        self._unacked: deque[int] = deque()      # live records not acknowledged, in order
        self._acked_out: set[int] = set()        # acknowledged out of order (above the prefix)
        self._gone: set[int] = set()             # acknowledged in a past run, above its acked_to
        self._buffer: deque[Record] = deque()    # read ahead from disk, not yet handed out
        self._taken_to = 0                       # the last n handed out (or read ahead)
        self._rpos = (0, 0)                      # (segment first n, byte offset) of the next read
        self._backlog = False                    # records on disk not read yet (else appends go straight to _buffer)
        self._fd: int | None = None
        self._retired: list[int] = []            # closed-off segments' fds, fsync'd then closed by the flusher
        self._dirty = 0
        self._dir_dirty = False
        self._acks_dirty = False
        self._acks_written = 0.0
        self._closed = False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise EdgeADError(f"output '{self.output}': cannot create its outbox {self.folder}: {err}",
                              "set `outbox_dir:` in the run config (or $EDGEAD_STATE_DIR) to a writable folder") from None
        self._lock_fd = lock_folder(self.folder, self.output)
        try:
            self._load()
            if meta is not None:
                atomic_write_json(self.folder / META_FILE, meta)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.replayed = self.pending()           # waiting from a past run
        self._thread = threading.Thread(target=self._flush_loop, name=f"edgead-{self.output}-outbox", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ open

    def _load(self) -> None:
        """Scan the segments (cutting a torn tail), rebuild what is pending, delete what is all acknowledged."""
        acked_to, listed = load_acks(self.folder)
        top = max([acked_to, *listed])
        last = 0
        for first, path in segment_paths(self.folder):
            scan = scan_segment(path, first, last)
            self.repaired += scan.bad_lines
            if scan.good_end < scan.size:
                _logger.warning("outbox %s: cut a torn tail of %d bytes off %s", self.folder,
                                scan.size - scan.good_end, path.name)
                os.truncate(path, scan.good_end)
            live = [n for n, _, _ in scan.entries if n > acked_to and n not in listed]
            if scan.entries:
                last = scan.entries[-1][0]
            if not live:
                path.unlink()
                continue
            self._gone.update(n for n, _, _ in scan.entries if n in listed)
            self._unacked.extend(live)
            self._segments.append(_Segment(first, path, scan.good_end, last))
            self._bytes += scan.good_end
        self._next_n = max(last, top) + 1
        if self._segments:
            self._rpos = (self._segments[0].first, 0)
            self._backlog = True

    # ------------------------------------------------------------------ the run loop's side

    def append(self, event_id: str, msg: dict[str, Any]) -> int | None:
        """Write one record (no fsync: the flusher does that in batches); its n, or None when refused."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._cond:
            n = self._next_n
            data = (json.dumps({"n": n, "id": event_id, "t": stamp, "msg": msg}, separators=(",", ":"))
                    + "\n").encode()
            if self._closed:
                return self._refuse("the outbox is closed")
            if len(data) > RECORD_MAX:
                return self._refuse(f"an event of {len(data)} bytes is larger than an outbox record may be")
            if self._bytes + len(data) > self.max_bytes:
                self._reclaim()
                if self._bytes + len(data) > self.max_bytes:
                    return self._refuse(f"outbox {self.folder} is full ({self.max_bytes / 1e6:g} MB)")
            try:
                seg, fd = self._writable()
                written = os.write(fd, data)
                if written != len(data):
                    os.ftruncate(fd, seg.size)
                    raise OSError(f"short write ({written} of {len(data)} bytes)")
            except OSError as err:
                self._retire()                   # the next record starts a fresh segment
                return self._refuse(f"cannot write the outbox {self.folder}: {err}")
            seg.size += len(data)
            seg.last = n
            self._bytes += len(data)
            self._unacked.append(n)
            self._hand_on(Record(n, event_id, stamp, msg), seg)
            self._next_n = n + 1
            self._dirty += 1
            self._cond.notify_all()
        return n

    def _hand_on(self, rec: Record, seg: _Segment) -> None:
        """The reader has read everything before this record: give it the record without a disk read."""
        if self._backlog or len(self._buffer) >= self.readahead:
            self._backlog = True                 # read from disk, in order, once the buffer has room
            return
        self._buffer.append(rec)
        self._taken_to = rec.n
        self._rpos = (seg.first, seg.size)

    def _refuse(self, why: str) -> int | None:
        """Count a refused append; returns None (append's "not kept")."""
        self.refused += 1
        self.last_error = why
        return None

    def _writable(self) -> tuple[_Segment, int]:
        """The segment being written (a new one past segment_bytes) and its fd."""
        seg = self._segments[-1] if self._segments else None
        if self._fd is not None and seg is not None and seg.size >= self.segment_bytes:
            self._retire()
        if self._fd is None or seg is None:
            path = self.folder / f"{SEGMENT_PREFIX}{self._next_n:012d}{SEGMENT_SUFFIX}"
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            seg = _Segment(self._next_n, path, os.fstat(self._fd).st_size, self._next_n - 1)
            self._segments.append(seg)
            self._bytes += seg.size
            self._dir_dirty = True
        return seg, self._fd

    def _retire(self) -> None:
        if self._fd is not None:
            self._retired.append(self._fd)
            self._fd = None
            self._dirty += 1

    # ------------------------------------------------------------------ the sender's side

    def take(self, timeout: float = 0.05) -> Record | None:
        """The next record not yet handed out, in order; None after timeout (or once closed)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if not self._buffer:
                    self._fill()
                if self._buffer:
                    return self._buffer.popleft()
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    return None
                self._cond.wait(left)

    def _fill(self) -> None:
        """Read ahead up to `readahead` records from the read position."""
        first, off = self._rpos
        for seg in self._segments:
            if seg.first < first:
                continue
            if seg.first > first:                # the segment read was deleted or finished: next one
                first, off = seg.first, 0
            if off >= seg.size:
                continue
            with open(seg.path, "rb") as f:
                f.seek(off)
                data = f.read(min(seg.size - off, RECORD_MAX))
            end = data.rfind(b"\n") + 1
            for line in data[:end].split(b"\n")[:-1]:
                rec = parse_record(line)
                if rec is not None and rec.n > self._taken_to and self._is_pending(rec.n):
                    self._buffer.append(rec)
                    self._taken_to = rec.n
                off += len(line) + 1
                if len(self._buffer) >= self.readahead:
                    break
            self._rpos = (first, off)
            if self._buffer:
                return
        self._rpos = (first, off)
        self._backlog = False                    # all read: new records are handed on as they are written

    def _is_pending(self, n: int) -> bool:
        head = self._unacked[0] if self._unacked else self._next_n
        return n >= head and n not in self._acked_out and n not in self._gone

    def ack(self, n: int) -> None:
        """The peer acknowledged record n."""
        with self._cond:
            if not self._unacked or n < self._unacked[0] or n in self._acked_out:
                return
            if n == self._unacked[0]:
                self._unacked.popleft()
                while self._unacked and self._unacked[0] in self._acked_out:
                    self._acked_out.discard(self._unacked.popleft())
            else:
                self._acked_out.add(n)
            self._acks_dirty = True
            self._cond.notify_all()

    def pending(self) -> int:
        """Records written and not acknowledged (from this run and the past ones)."""
        with self._cond:
            return len(self._unacked) - len(self._acked_out)

    def size_bytes(self) -> int:
        with self._cond:
            return self._bytes

    def wait_empty(self, timeout: float) -> bool:
        """Block until every record is acknowledged, or timeout; True when none is pending."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._unacked) > len(self._acked_out):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    # ------------------------------------------------------------------ flusher thread

    def _flush_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._dirty >= self.fsync_every, timeout=self.fsync_s)
                if self._closed:
                    return
            self.sync()

    def sync(self, force_acks: bool = False) -> None:
        """fsync what was written, rewrite acked.json when due, delete the segments all acknowledged."""
        with self._cond:
            fds = self._retired
            self._retired = []
            if self._dirty and self._fd is not None:
                fds = [*fds, os.dup(self._fd)]
            self._dirty = 0
            dir_dirty, self._dir_dirty = self._dir_dirty, False
            acks = None
            if self._acks_dirty and (force_acks or time.monotonic() - self._acks_written >= ACK_WRITE_S):
                acks = self._ack_state()
                self._acks_dirty = False
                self._acks_written = time.monotonic()
        for fd in fds:
            try:
                os.fsync(fd)
                self.fsyncs += 1
            except OSError as err:
                self._problem(f"fsync of the outbox {self.folder} failed: {err}")
            finally:
                os.close(fd)
        if dir_dirty:
            _fsync_dir(self.folder)
        if acks is not None:
            try:
                atomic_write(self.folder / ACK_FILE, lambda tmp: _write_synced(tmp, acks))
            except OSError as err:
                self._problem(f"cannot write {self.folder / ACK_FILE}: {err}")
            with self._cond:
                self._reclaim()                  # only once the acks that allow it are on disk

    def _ack_state(self) -> bytes:
        acked_to = (self._unacked[0] if self._unacked else self._next_n) - 1
        listed = sorted(self._acked_out)[:ACKED_LISTED_MAX]
        return (json.dumps({"acked_to": acked_to, "acked": listed}) + "\n").encode()

    def _reclaim(self) -> None:
        """Delete the segments whose records are all acknowledged (the one being written too)."""
        head = self._unacked[0] if self._unacked else self._next_n
        keep = []
        for seg in self._segments:
            writing = seg is self._segments[-1] and self._fd is not None
            if seg.last < head and (seg.size > 0 or not writing):
                if writing:
                    self._retire()
                try:
                    seg.path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as err:
                    self._problem(f"cannot delete {seg.path}: {err}")
                    keep.append(seg)
                    continue
                self._bytes -= seg.size
            else:
                keep.append(seg)
        self._segments = keep

    def _problem(self, detail: str) -> None:
        self.last_error = detail
        _logger.warning("%s", detail)
        if self.on_error is not None:
            try:
                self.on_error(detail)
            except Exception:
                _logger.exception("outbox %s: error listener failed", self.folder)

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        """Final fsync and acked.json; what is pending stays on disk for the next start."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        with self._cond:
            self._retire()
            self._acks_dirty = True
        self.sync(force_acks=True)
        os.close(self._lock_fd)

    @property
    def closed(self) -> bool:
        return self._closed
