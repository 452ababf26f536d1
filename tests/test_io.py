"""Atomic writes: the file appears whole, readable by others, and no temporary file is left."""

import errno
import json
import math
import os
import shlex
import stat
import sys
from pathlib import Path

import pytest
from mount_namespace import run_with_mounts

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
    with pytest.raises(EdgeADError) as e:
        check_output(tmp_path / "x", kind="dir", what="--record")
    assert e.value.message == f"--record {tmp_path / 'x'} cannot be written: it is on a read-only file system ({tmp_path})"
    assert "choose a writable folder for --record" in e.value.hint
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


def _readonly_mount():
    """tests/export/readonly_mount.py (a read-only mount without root), loaded by path: tests/export is
    not a package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readonly_mount", Path(__file__).parent / "export" / "readonly_mount.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.mount_read_only


@pytest.mark.parametrize("path, kind", [("ro/engines/tiny", "dir"), ("ro/cal.yaml", "file"), ("ro", "dir")])
def test_check_output_refuses_a_read_only_mount(tmp_path, monkeypatch, path, kind):
    (tmp_path / "ro").mkdir()
    _readonly_mount()(tmp_path / "ro", monkeypatch)
    with pytest.raises(EdgeADError) as e:
        check_output(tmp_path / path, kind=kind, what="--out")
    assert e.value.message == (f"--out {tmp_path / path} cannot be written: it is on a read-only file system "
                               f"({tmp_path / 'ro'})")
    assert list((tmp_path / "ro").iterdir()) == []


@pytest.mark.parametrize("err, reason", [(errno.EROFS, "it is on a read-only file system"),
                                         (errno.EACCES, "there is no permission to write there"),
                                         (errno.ENOSPC, "the disk is full"),
                                         (errno.EDQUOT, "the disk quota is used up")])
def test_the_write_probe_catches_what_the_mount_flags_and_permissions_do_not(tmp_path, monkeypatch, err, reason):
    """As root every folder looks writable to os.access: the probe file is what finds out (here it fails
    as the system would fail it)."""
    tried = []

    def mkstemp(*args, dir=None, **kwargs):   # noqa: A002 - tempfile's own keyword
        tried.append(Path(dir))
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(edgead_io.tempfile, "mkstemp", mkstemp)
    with pytest.raises(EdgeADError) as e:
        check_output(tmp_path / "new" / "model", kind="dir", what="--out")
    assert e.value.message == f"--out {tmp_path / 'new' / 'model'} cannot be written: {reason} ({tmp_path})"
    assert tried == [tmp_path] and list(tmp_path.iterdir()) == []


def test_the_write_probe_leaves_nothing_behind(tmp_path):
    (tmp_path / "m").mkdir()
    assert check_output(tmp_path / "m", kind="dir", what="--out") == tmp_path / "m"
    assert check_output(tmp_path / "cal.yaml", kind="file", what="--out") == tmp_path / "cal.yaml"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["m"]


@pytest.mark.hardware   # a machine capability (mount namespaces), not an install step: may skip in CI
def test_root_on_a_real_read_only_mount_is_refused(tmp_path):
    """A read-only tmpfs in a user namespace, where this process is root: one message, nothing written."""
    ro = tmp_path / "ro"
    code = ("import sys; from edgead.io import check_output; from edgead.errors import EdgeADError\n"
            "for kind, p in (('dir', sys.argv[1] + '/m'), ('file', sys.argv[1] + '/cal.yaml')):\n"
            "    try: check_output(p, kind=kind, what='--out'); print('accepted')\n"
            "    except EdgeADError as e: print(e.message)\n")
    run = run_with_mounts({ro: "ro"}, f"id -u && {shlex.quote(sys.executable)} -c {shlex.quote(code)} {ro}",
                          timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert run.stdout.splitlines() == ["0", f"--out {ro}/m cannot be written: it is on a read-only file system ({ro})",
                                       f"--out {ro}/cal.yaml cannot be written: it is on a read-only file system "
                                       f"({ro})"], run.stdout + run.stderr


def test_a_path_under_a_file_is_refused_at_any_depth(tmp_path):
    (tmp_path / "afile").write_text("x")
    for path, kind in (("afile/m", "dir"), ("afile/a/b/m", "dir"), ("afile/a/cal.yaml", "file")):
        with pytest.raises(EdgeADError) as e:
            check_output(tmp_path / path, kind=kind, what="--out")
        assert e.value.message == f"--out {tmp_path / path}: {tmp_path / 'afile'} is a file, so nothing can be written under it"
        assert e.value.hint == f"choose a {'folder' if kind == 'dir' else 'file'} path outside {tmp_path / 'afile'}"
    assert (tmp_path / "afile").read_text() == "x"


def test_companions_are_checked_beside_a_file_output(tmp_path):
    out, png, csv = tmp_path / "cal.yaml", tmp_path / "cal.png", tmp_path / "cal.csv"
    png.mkdir()
    with pytest.raises(EdgeADError) as e:
        check_output(out, kind="file", what="--out", overwrite=True, companions=(png, csv))
    assert e.value.message == f"--out {out}: {png} is a folder, in the way of a file written beside it"
    assert e.value.hint == f"move the folder {png} away, or choose another --out"
    png.rmdir()
    csv.write_text("old table")
    with pytest.raises(EdgeADError) as e:
        check_output(out, kind="file", what="--out", companions=(png, csv))
    assert e.value.message == f"--out {out}: {csv} already exists beside it (from an earlier run)"
    assert "--overwrite" in e.value.hint
    assert check_output(out, kind="file", what="--out", overwrite=True, companions=(png, csv)) == out
    out.write_text("old record")
    with pytest.raises(EdgeADError) as e:
        check_output(out, kind="file", what="--out", companions=(png, csv))
    assert e.value.message == f"--out {out} already exists"
    assert e.value.hint == "choose another --out, or pass --overwrite to replace it (and cal.png, cal.csv beside it)"
    assert csv.read_text() == "old table" and out.read_text() == "old record"


def test_check_input_names_the_flag_and_the_problem(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    os.mkfifo(tmp_path / "pipe")
    for path, kind, message in (
            ("nope", "dir", "does not exist"), ("f", "dir", "is a file, but a folder is needed"),
            (".", "file", "is a folder, but a file is needed"), ("pipe", "file", "is not a regular file, but a file is needed")):
        with pytest.raises(EdgeADError) as e:
            check_input(tmp_path / path, kind=kind, what="--data", hint="give a folder of good images")
        assert e.value.message == f"--data {tmp_path / path} {message}".replace(f"{tmp_path}/.", str(tmp_path))
        assert e.value.hint == "give a folder of good images"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        if os.geteuid() == 0:   # root reads anything: access() reports what an ordinary user would meet
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == locked else real(p, mode, **k))
        with pytest.raises(EdgeADError) as e:
            check_input(locked, kind="dir", what="--good")
        assert e.value.message == f"--good {locked} cannot be read: there is no permission to read it"
        assert "permissions" in e.value.hint
    finally:
        locked.chmod(0o755)


def test_write_failed_uses_the_same_words_as_the_probe(tmp_path):
    err = edgead_io.write_failed(tmp_path / "m", OSError(errno.ENOSPC, "No space left on device"), "--out",
                                 "run it again")
    assert err.message == f"cannot write {tmp_path / 'm'}: the disk is full"
    assert err.hint == "free disk space or choose another --out; run it again"
    odd = edgead_io.write_failed(tmp_path / "m", OSError(errno.EIO, "Input/output error"), "--out", "again")
    assert odd.message == f"cannot write {tmp_path / 'm'}: Input/output error"


# --- every verb: a missing input path is one message naming the flag, exit 2, before any work ------------------


def _verbs(tmp: Path) -> list[tuple[list[str], str]]:
    """(argv, the flag whose path is missing): one case per input flag of each verb family."""
    (tmp / "engine").mkdir()                   # only a folder: the path checks come before it is read
    (tmp / "good").mkdir()
    (tmp / "cal.yaml").write_text("kind: edgead-calibration\n")
    none, engine, good, cal = str(tmp / "none"), str(tmp / "engine"), str(tmp / "good"), str(tmp / "cal.yaml")
    return [
        (["train", "--data", none, "--out", str(tmp / "m")], "--data"),
        (["train", "--config", none, "--data", good, "--out", str(tmp / "m")], "--config"),
        (["eval", "--model", none, "--data", good], "--model"),
        (["eval", "--model", engine, "--data", none], "--data"),
        (["build-engine", "--model", none], "--model"),
        (["build-engine", "--engine", none], "--engine"),
        (["bench", "--engine", none], "--engine"),
        (["calibrate", "--engine", none, "--good", good], "--engine"),
        (["calibrate", "--engine", engine, "--good", none], "--good"),
        (["calibrate", "--engine", engine, "--good", good, "--defects", none], "--defects"),
        (["calibrate", "--check", none, "--good", good], "--check"),
        (["run", "--engine", none, "--calibration", cal, "--camera", "0"], "--engine"),
        (["run", "--engine", engine, "--calibration", none, "--camera", "0"], "--calibration"),
        (["run", "--config", none], "--config"),
        (["signals", "test", "--config", none], "--config"),
        (["demo", "--data", none, "--out", str(tmp / "demo")], "--data"),
    ]


def test_every_verb_refuses_a_missing_input_path_with_one_message(tmp_path, capsys):
    from edgead.cli import main

    for argv, flag in _verbs(tmp_path):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.splitlines()[0] == f"edgead {argv[0]}: error: {flag} {tmp_path / 'none'} does not exist", (argv, err)
        assert len(err.splitlines()) == 2 and err.splitlines()[1].startswith("  hint: ") and "Traceback" not in err
        assert sorted(p.name for p in tmp_path.rglob("*")) == before, argv   # nothing written


def test_run_refuses_a_bad_record_folder_and_an_unreadable_replay_before_opening_anything(tmp_path, capsys,
                                                                                            monkeypatch):
    from edgead.cli import main

    (tmp_path / "engine").mkdir()
    (tmp_path / "cal.yaml").write_text("kind: edgead-calibration\n")
    (tmp_path / "afile").write_text("x")
    frames = tmp_path / "frames"
    frames.mkdir()
    base = ["run", "--engine", str(tmp_path / "engine"), "--calibration", str(tmp_path / "cal.yaml")]
    assert main([*base, "--camera", "0", "--record", str(tmp_path / "afile" / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (f"edgead run: error: --record (record.dir) {tmp_path / 'afile' / 'runs'}: "
                                   f"{tmp_path / 'afile'} is a file, so nothing can be written under it")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == frames else real(p, mode, **k))
    assert main([*base, "--camera", str(frames)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"edgead run: error: --camera {frames} cannot be read: there is no permission to read it"
    assert "Traceback" not in err and (tmp_path / "afile").read_text() == "x"
