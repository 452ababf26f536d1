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


# --- the checks every user-given path passes before work starts ------------------------------------

from edgead import io as edgead_io  # noqa: E402
from edgead.errors import EdgeADError  # noqa: E402
from edgead.io import check_input, check_output  # noqa: E402


@pytest.mark.parametrize("make, path, kind, needle", [
    (lambda d: (d / "afile").write_text("x"), "afile/x.yaml", "file", "afile is a file, so nothing can be written"),
    (lambda d: (d / "adir.yaml").mkdir(), "adir.yaml", "file", "is a folder, but a file path is needed"),
    (lambda d: (d / "afile").write_text("x"), "afile", "dir", "is a file, but an output folder is needed"),
    (lambda d: (d / "engine").mkdir() or (d / "engine" / "manifest.json").write_text("{}"), "engine", "dir",
     "already exists"),
    (lambda d: (d / "r.yaml").write_text("x"), "r.yaml", "file", "already exists"),
])
def test_check_output_refuses_each_kind_of_bad_path_before_anything_is_written(tmp_path, make, path, kind, needle):
    make(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(EdgeADError) as e:
        check_output(tmp_path / path, kind=kind, what="--out")
    assert needle in e.value.message and e.value.message.startswith("--out ") and e.value.hint
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_check_output_accepts_new_and_empty_places_and_overwrite(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "old.yaml").write_text("x")
    assert check_output(tmp_path / "new" / "deeper", kind="dir", what="--out") == tmp_path / "new" / "deeper"
    assert check_output(tmp_path / "empty", kind="dir", what="--out") == tmp_path / "empty"
    assert check_output(tmp_path / "old.yaml", kind="file", what="--out", overwrite=True) == tmp_path / "old.yaml"
    assert not (tmp_path / "new").exists()          # checking creates nothing


def test_check_output_read_only_and_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(edgead_io, "_read_only", lambda folder: True)
    with pytest.raises(EdgeADError, match="read-only or not writable"):
        check_output(tmp_path / "x", kind="dir", what="--record")
    monkeypatch.setattr(edgead_io, "_read_only", lambda folder: False)
    usage = edgead_io.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(edgead_io.shutil, "disk_usage", lambda p: usage._replace(free=2**20))
    with pytest.raises(EdgeADError, match=r"only 1\.0 MB free"):
        check_output(tmp_path / "x", kind="dir", what="--record", min_free_mb=16)


def test_check_input(tmp_path):
    (tmp_path / "f").write_text("x")
    assert check_input(tmp_path / "f", kind="file", what="--config") == tmp_path / "f"
    for path, kind, needle in ((tmp_path / "nope", "dir", "does not exist"), (tmp_path / "f", "dir", "is a file"),
                               (tmp_path, "file", "is a folder")):
        with pytest.raises(EdgeADError, match=needle):
            check_input(path, kind=kind, what="--data")
