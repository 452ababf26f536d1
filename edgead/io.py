"""Files: the checks every path a user gives passes before work starts, atomic writes (a crash never
leaves half a file behind), strict JSON, and the one PNG encoder every writer of images uses."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from edgead.errors import EdgeADError

if TYPE_CHECKING:
    import numpy as np

MIN_FREE_MB = 16.0      # what a verb needs at least to write its small files (records, manifests, reports)


def nearest_existing(path: Path) -> Path:
    """`path` itself, or the closest folder above it that exists (where a new folder would be made)."""
    here = path.absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    return here


# A write refused by the system, in the words a user acts on: the write probe of `check_output` and
# every write that fails after it (`write_failed`) say the same thing for the same errno.
_REASONS = {errno.EROFS: "it is on a read-only file system", errno.EACCES: "there is no permission to write there",
            errno.EPERM: "there is no permission to write there", errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is used up"}
WRITE_ERRORS = frozenset(_REASONS)      # the errnos that mean "this place cannot take the write", not a bug


def write_reason(exc: OSError) -> str:
    """Why a write failed, in plain words (the errno's own text when it is not one of the usual ones)."""
    return _REASONS.get(exc.errno or 0, exc.strerror or type(exc).__name__)


def write_failed(path: str | Path, exc: OSError, flag: str, again: str) -> EdgeADError:
    """A write that failed after the checks (the disk filled, the mount went read-only) as one message."""
    return EdgeADError(f"cannot write {path}: {write_reason(exc)}",
                       f"free disk space or choose another {flag}; {again}")


def check_input(path: str | Path, *, kind: str, what: str, hint: str = "check the path") -> Path:
    """An existing file or folder (`kind` "file" or "dir") that can be read, or an EdgeADError naming `what`.

    Only existence, kind and permission: what the file must hold is for its reader to say next.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise EdgeADError(f"{what} {p} does not exist", hint)
    if kind == "dir" and not p.is_dir():
        raise EdgeADError(f"{what} {p} is {'a file' if p.is_file() else 'not a folder'}, but a folder is needed",
                          hint)
    if kind == "file" and not p.is_file():
        raise EdgeADError(f"{what} {p} is {'a folder' if p.is_dir() else 'not a regular file'}, but a file is needed",
                          hint)
    if not os.access(p, os.R_OK | (os.X_OK if kind == "dir" else 0)):
        raise EdgeADError(f"{what} {p} cannot be read: there is no permission to read it",
                          "check its permissions (ls -l), or run edgead as a user that may read it")
    return p


def check_output(path: str | Path, *, kind: str, what: str, overwrite: bool = False,
                 min_free_mb: float = MIN_FREE_MB, companions: Sequence[str | Path] = ()) -> Path:
    """The place `path` will be written (`kind` "file" or "dir") is usable, before any work starts.

    Refused, each with one message naming `what` (the flag): a parent that is a file, a folder where
    a file is wanted or the other way round, something already there (unless `overwrite`; an empty
    folder is fine), a place that cannot be written (a read-only mount, no permission, a full disk or
    quota: a probe file is made and removed there, so root on a read-only mount is caught too), less
    than `min_free_mb` free. `companions`: files written beside a file output (a record's figure and
    table), refused when a folder is in their way or, without `overwrite`, one is already there.
    """
    p = Path(path).expanduser()
    _check_place(p, kind, what, overwrite, [Path(c).expanduser() for c in companions])
    folder = p if p.is_dir() else p.parent if p.exists() else nearest_existing(p)
    reason = _unwritable(folder)
    if reason:
        raise EdgeADError(f"{what} {p} cannot be written: {reason} ({folder})",
                          f"choose a writable folder for {what}; check the mount and its permissions")
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < min_free_mb:
        raise EdgeADError(f"{what} {p}: only {free_mb:.1f} MB free on that disk ({folder}), about {min_free_mb:.1f} "
                          "MB needed", f"free some space, or choose another disk for {what}")
    return p


def _check_place(p: Path, kind: str, what: str, overwrite: bool, companions: list[Path]) -> None:
    """Nothing in the way of `p` (and its companions): no file above it, no wrong kind, nothing to replace."""
    base = nearest_existing(p)          # p itself when it exists
    if not p.exists() and not base.is_dir():
        raise EdgeADError(f"{what} {p}: {base} is a file, so nothing can be written under it",
                          f"choose a {'folder' if kind == 'dir' else 'file'} path outside {base}")
    if p.exists():
        if kind == "dir" and not p.is_dir():
            raise EdgeADError(f"{what} {p} is a file, but an output folder is needed",
                              f"give {what} a folder (it is made if it does not exist), or move the file away")
        if kind == "file" and p.is_dir():
            raise EdgeADError(f"{what} {p} is a folder, but a file path is needed",
                              f"name a file inside it, e.g. {what} {p / ('NAME' + p.suffix)}")
        if not overwrite and (kind == "file" or any(p.iterdir())):
            beside = f" (and {', '.join(c.name for c in companions)} beside it)" if companions else ""
            raise EdgeADError(f"{what} {p} already exists",
                              f"choose another {what}, or pass --overwrite to replace it{beside}")
    for c in companions:
        if c.is_dir():
            raise EdgeADError(f"{what} {p}: {c} is a folder, in the way of a file written beside it",
                              f"move the folder {c} away, or choose another {what}")
        if c.exists() and not overwrite:
            raise EdgeADError(f"{what} {p}: {c} already exists beside it (from an earlier run)",
                              f"pass --overwrite to replace it, or choose another {what}")


def _unwritable(folder: Path) -> str | None:
    """Why nothing can be made in `folder`, or None: the mount flag, the permission, then a real probe file."""
    if _read_only(folder):
        return _REASONS[errno.EROFS]
    if not os.access(folder, os.W_OK | os.X_OK):
        return _REASONS[errno.EACCES]
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgead-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return write_reason(exc)
    return None


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):      # no statvfs (Windows): the access check decides
        return False


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)        # mkstemp makes 0600; records and reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Strict JSON: NaN and infinity (an undefined metric) are written as null."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def json_line(obj: Any) -> str:
    """Strict one-line JSON (NaN and infinity become null) for event logs and messages."""
    return json.dumps(_finite(obj), default=_json_default, allow_nan=False, separators=(",", ":"))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return _finite(obj.item())
    return obj


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def png_bytes(image: "np.ndarray", channels: str = "rgb", compression: int | None = None) -> bytes:
    """Encode a grey or colour image as PNG. `channels` says the colour order of a 3-channel array
    ("rgb", as edgead passes images around, or "bgr", as OpenCV drawing makes them); an alpha channel
    is dropped. uint8 and uint16 keep their depth; other types are clipped to 0-255. Raises OSError."""
    import cv2
    import numpy as np

    img = np.asarray(image)
    if img.dtype not in (np.uint8, np.uint16):
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 3:
        img = np.ascontiguousarray(img[..., :3])
        if channels == "rgb":
            img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_PNG_COMPRESSION, int(compression)] if compression is not None else []
    ok, buf = cv2.imencode(".png", img, params)
    if not ok:
        raise OSError(f"PNG encoding failed for an image of shape {img.shape} and type {img.dtype}")
    return buf.tobytes()


def write_all(fd: int, data: bytes) -> None:
    """Every byte of `data` to `fd`, or OSError (a short write that makes no progress is ENOSPC)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


class LineLog:
    """A log of lines opened for appending (the recorder's events.jsonl, the log output): a line is written
    whole or not at all (a failed write is cut back before the next one), fsync'd at most every
    `fsync_interval_s`, so a full disk leaves no torn line and the file stays parseable to its end.

    Not thread-safe: its owner serialises the calls.
    """

    def __init__(self, path: Path, fsync_interval_s: float = 1.0) -> None:
        self.path = path
        self.fsync_interval_s = fsync_interval_s
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.size = os.fstat(self.fd).st_size   # the end of the last whole line
        self.torn = False                       # a failed write is not truncated yet: nothing is appended
        self.unsynced = False
        self.last_sync = time.monotonic()

    def append(self, data: bytes) -> OSError | None:
        """Append one whole line; on failure the file is cut back to its last whole line and the error returned."""
        if self.fd < 0:
            return OSError(errno.EBADF, f"{self.path} is closed")
        if self.torn and (err := self._truncate()) is not None:
            return err
        try:
            write_all(self.fd, data)
        except OSError as e:
            self.torn = True
            self._truncate()
            return e
        self.size += len(data)
        self.unsynced = True
        return None

    def _truncate(self) -> OSError | None:
        try:
            os.ftruncate(self.fd, self.size)
        except OSError as e:
            return e
        self.torn = False
        return None

    def sync(self, force: bool = False) -> OSError | None:
        """fsync when lines were appended and fsync_interval_s has passed (or force)."""
        now = time.monotonic()
        if self.fd < 0 or not self.unsynced or (not force and now - self.last_sync < self.fsync_interval_s):
            return None
        try:
            os.fsync(self.fd)
        except OSError as e:
            return e
        self.unsynced, self.last_sync = False, now
        return None

    def close(self) -> OSError | None:
        err = self.sync(force=True)
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError as e:
                err = err or e
            self.fd = -1
        return err
