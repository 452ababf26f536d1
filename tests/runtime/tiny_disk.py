"""A small file system without root: a folder whose writes fail with ENOSPC once the files under it
hold `capacity` bytes.

A tmpfs or a loop-mounted image needs root; this simulates the same thing in process. `os.write` on
a file under the folder writes only what still fits (a short write, as Linux does when a disk fills
up) and raises OSError(ENOSPC) when nothing fits; `shutil.disk_usage` under the folder reports the
capacity and what is left. Deleting files frees space, like on a real disk. Everything else (other
files, pipes, sockets) goes to the real calls. The recorder writes its event log, images and
run.json through `os.write`, so every byte it writes is accounted.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest


class TinyDisk:
    def __init__(self, root: Path, capacity: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.capacity = Path(root).resolve(), capacity
        self.refused = 0          # os.write calls that raised ENOSPC
        self.short = 0            # os.write calls cut short
        self.root.mkdir(parents=True, exist_ok=True)
        real_write, real_usage = os.write, shutil.disk_usage

        def write(fd: int, data) -> int:  # noqa: ANN001 - os.write's own signature
            if not self._mine(fd):
                return real_write(fd, data)
            data = bytes(data)
            room = self.capacity - self.used()
            if room <= 0:
                self.refused += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if room < len(data):
                self.short += 1
                data = data[:room]
            return real_write(fd, data)

        def disk_usage(path):  # noqa: ANN001
            if self._under(Path(path)):
                used = self.used()
                free = max(0, self.capacity - used)
                return shutil._ntuple_diskusage(self.capacity, used, free)  # type: ignore[attr-defined]
            return real_usage(path)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(shutil, "disk_usage", disk_usage)

    def used(self) -> int:
        total = 0
        for dirpath, _, names in os.walk(self.root):
            for n in names:
                try:
                    total += os.lstat(os.path.join(dirpath, n)).st_size
                except OSError:
                    pass
        return total

    def free(self) -> int:
        return max(0, self.capacity - self.used())

    def fill(self, leave: int = 0) -> Path:
        """Another program fills the disk up to `leave` free bytes (a file the recorder does not own)."""
        path = self.root / f"filler-{self.used()}.bin"
        path.write_bytes(b"\0" * max(0, self.free() - leave))  # FileIO, not os.write: not refused
        return path

    def _under(self, path: Path) -> bool:
        try:
            return path.resolve().is_relative_to(self.root)
        except OSError:
            return False

    def _mine(self, fd: int) -> bool:
        try:
            return self._under(Path(os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:
            return False
