"""The output folders of `train` and `eval`, checked before any work starts.

Training runs for minutes to hours; a path mistake (`--out` naming a file, a folder under a file, a
read-only mount, a full disk) must be one message before the first epoch, not a traceback after it.
The check writes nothing that stays: it only makes and removes a probe file in the nearest existing folder.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from edgead.errors import EdgeADError
from edgead.io import nearest_existing

_REASONS = {errno.EROFS: "it is on a read-only file system", errno.EACCES: "there is no permission to write there",
            errno.EPERM: "there is no permission to write there", errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is used up"}


def check_out_dir(out: Path, flag: str, what: str, need_bytes: int = 0) -> None:
    """`out` is, or can become, a writable folder with `need_bytes` free; else an EdgeADError naming `flag`."""
    if out.exists() and not out.is_dir():
        raise EdgeADError(f"{flag} {out} is a file, not a folder",
                          f"give {flag} a folder for the {what} (it is made if it does not exist)")
    base = nearest_existing(out)
    if not base.is_dir():
        raise EdgeADError(f"{flag} {out} cannot be made: {base} is a file", f"give {flag} a path whose folders "
                          "are folders")
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgead-write-check-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = _REASONS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
        raise EdgeADError(f"{flag} {out} cannot be written: {reason} ({base})",
                          f"choose a writable folder for {flag}") from None
    free = shutil.disk_usage(base).free
    if free < need_bytes:
        raise EdgeADError(f"{flag} {out}: only {free / 1e6:.1f} MB free on that disk, the {what} needs about "
                          f"{need_bytes / 1e6:.1f} MB", f"free disk space, or choose another folder for {flag}")


def write_failed(path: Path, exc: OSError, flag: str, again: str) -> EdgeADError:
    """A write that failed after the checks (the disk filled, the mount went read-only) as one message."""
    reason = _REASONS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    return EdgeADError(f"cannot write {path}: {reason}", f"free disk space or choose another {flag}; {again}")
