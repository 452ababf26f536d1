"""Atomic writes: the file appears whole, readable by others, and no temporary file is left."""

import json
import math
import stat
from pathlib import Path

import pytest

from edgead.io import atomic_write, atomic_write_bytes, atomic_write_json


def test_atomic_write_is_whole_and_shared_readable(tmp_path):
    path = atomic_write_bytes(tmp_path / "sub" / "record.yaml", b"threshold: 1.5\n")
    assert path.read_bytes() == b"threshold: 1.5\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["record.yaml"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write_bytes(tmp_path / "a.json", b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_json_reports_are_strict(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"auroc": math.nan, "n": 3})
    assert json.loads(path.read_text()) == {"auroc": None, "n": 3}


def test_failed_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.png"
    target.write_bytes(b"old")

    def boom(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match=r"^disk full$"):  # the writer's own error, not one from the clean-up
        atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
