"""Files: the checks every path a user gives passes before work starts, atomic writes (a crash never
leaves half a file behind), strict JSON, and the one PNG encoder every writer of images uses."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

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


def check_input(path: str | Path, *, kind: str, what: str, hint: str = "check the path") -> Path:
    """An existing file or folder (`kind` "file" or "dir") that can be read, or an EdgeADError naming `what`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise EdgeADError(f"{what} {p} does not exist", hint)
    if kind == "dir" and not p.is_dir():
        raise EdgeADError(f"{what} {p} is a file, but a folder is needed", hint)
    if kind == "file" and not p.is_file():
        raise EdgeADError(f"{what} {p} is a folder, but a file is needed", hint)
    if not os.access(p, os.R_OK | (os.X_OK if kind == "dir" else 0)):
        raise EdgeADError(f"{what} {p} cannot be read (permission denied)", "check its permissions")
    return p


def check_output(path: str | Path, *, kind: str, what: str, overwrite: bool = False,
                 min_free_mb: float = MIN_FREE_MB) -> Path:
    """The place `path` will be written (`kind` "file" or "dir") is usable, before any work starts.

    Refused, each with one message naming `what` (the flag): a parent that is a file, a folder where
    a file is wanted or the other way round, something already there (unless `overwrite`; an empty
    folder is fine), a read-only or unwritable location, less than `min_free_mb` free.
    """
    p = Path(path).expanduser()
    base = nearest_existing(p)          # p itself when it exists
    if not p.exists() and not base.is_dir():
        raise EdgeADError(f"{what} {p}: {base} is a file, so nothing can be written under it",
                          f"choose a {'folder' if kind == 'dir' else 'file'} path outside it")
    if p.exists():
        if kind == "dir" and not p.is_dir():
            raise EdgeADError(f"{what} {p} is a file, but an output folder is needed", "choose another path")
        if kind == "file" and p.is_dir():
            raise EdgeADError(f"{what} {p} is a folder, but a file path is needed", "name a file, e.g. NAME.yaml")
        if not overwrite and (kind == "file" or any(p.iterdir())):
            raise EdgeADError(f"{what} {p} already exists", "choose another path, or pass --overwrite to replace it")
    folder = p if p.is_dir() else p.parent if p.exists() else base
    if _read_only(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise EdgeADError(f"{what} {p}: {folder} is read-only or not writable",
                          "choose a writable location (check the mount and the permissions)")
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < min_free_mb:
        raise EdgeADError(f"{what} {p}: only {free_mb:.1f} MB free on {folder}, {min_free_mb:g} MB needed",
                          "free some space or choose another disk")
    return p


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
