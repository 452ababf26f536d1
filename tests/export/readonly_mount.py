"""A read-only mount without root: `os.statvfs` reports ST_RDONLY for a folder and everything under
it, and `os.access` refuses writing there, as the kernel does on a filesystem mounted `ro` (a real
mount needs root; as root, a folder's mode bits alone do not stop a write)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def mount_read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(folder).resolve()
    real_statvfs, real_access = os.statvfs, os.access

    def under(path: os.PathLike[str] | str) -> bool:
        p = Path(path).resolve()
        return p == root or root in p.parents

    class _ReadOnly:
        def __init__(self, result: os.statvfs_result) -> None:
            self._result = result
            self.f_flag = result.f_flag | os.ST_RDONLY

        def __getattr__(self, name: str) -> object:
            return getattr(self._result, name)

    def statvfs(path: os.PathLike[str] | str) -> object:
        result = real_statvfs(path)
        return _ReadOnly(result) if under(path) else result

    def access(path: os.PathLike[str] | str, mode: int, **kwargs: object) -> bool:
        if mode & os.W_OK and under(path):
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "statvfs", statvfs)
    monkeypatch.setattr(os, "access", access)
