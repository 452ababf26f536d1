"""`train` and `eval` refuse a bad --out, a too-small image or a full disk with one message (exit 2, no
traceback) before any training, and a write that fails later leaves nothing half written."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import edgead.io as edgead_io
import edgead.training.train as tr
from mount_namespace import run_with_mounts

from edgead.cli import main
from edgead.errors import EdgeADError
from edgead.model.artifact import load_model

REPO = Path(__file__).resolve().parents[2]
TRAIN = ["--size", "64", "64", "--epochs", "1", "--batch-size", "4", "--no-progress"]


def _err(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and [line.split(":")[0] for line in err.splitlines()] == \
        [f"edgead {argv[0]}", "  hint"], err
    return err


@pytest.fixture()
def no_training(monkeypatch):
    """Fails the test if training gets as far as building the model."""
    monkeypatch.setattr(tr, "DualKD", lambda *a, **k: pytest.fail("training started"))


def _read_only(monkeypatch, root: Path) -> None:
    """mkstemp under `root` fails as on a read-only mount (see test_real_read_only_and_full_disks for the real one)."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):       # noqa: A002 - tempfile's own keyword
        if dir is not None and Path(dir).resolve().is_relative_to(root.resolve()):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(edgead_io.tempfile, "mkstemp", mkstemp)


def test_out_an_existing_file_is_refused_before_training(tmp_path, tiny_product, capsys, no_training):
    afile = tmp_path / "afile"
    afile.write_text("x")
    good = str(tiny_product / "train" / "good")
    err = _err(["train", "--data", good, "--out", str(afile), *TRAIN], capsys)
    assert f"error: --out {afile} is a file, but an output folder is needed" in err
    assert "hint: give --out a folder (it is made if it does not exist), or move the file away" in err
    err = _err(["train", "--data", good, "--out", str(afile / "m"), *TRAIN], capsys)
    assert f"error: --out {afile / 'm'}: {afile} is a file, so nothing can be written under it" in err
    assert afile.read_text() == "x"


def test_out_on_a_read_only_folder_is_refused_before_training(tmp_path, tiny_product, capsys, monkeypatch,
                                                              no_training):
    _read_only(monkeypatch, tmp_path / "ro")
    (tmp_path / "ro").mkdir()
    err = _err(["train", "--data", str(tiny_product / "train" / "good"), "--out", str(tmp_path / "ro" / "a" / "m"),
                *TRAIN], capsys)
    assert f"error: --out {tmp_path / 'ro' / 'a' / 'm'} cannot be written: it is on a read-only file system " \
        f"({tmp_path / 'ro'})" in err and "hint: choose a writable folder for --out" in err
    assert list((tmp_path / "ro").iterdir()) == []


def test_too_little_free_space_is_refused_with_the_numbers(tmp_path, tiny_product, capsys, monkeypatch):
    monkeypatch.setattr(edgead_io.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 2 * 2**20,
                                                                                            2 * 2**20))
    monkeypatch.setattr(tr, "cache_teacher", lambda *a, **k: pytest.fail("training started"))
    err = _err(["train", "--data", str(tiny_product / "train" / "good"), "--out", str(tmp_path / "m"), *TRAIN],
               capsys)
    assert f"error: --out {tmp_path / 'm'}: only 2.0 MB free on that disk ({tmp_path}), about " in err
    assert "MB needed" in err and "hint: free some space, or choose another disk for --out" in err
    assert not (tmp_path / "m").exists()


def _fail_writes(monkeypatch, name: str) -> list[str]:
    """Path.write_bytes of the temporary file of `name` fails with ENOSPC, as on a full disk; returns the tries."""
    real, tried = Path.write_bytes, []

    def write_bytes(self, data):
        if self.name.startswith(f".{name}.") and self.name.endswith(".tmp"):
            tried.append(self.name)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    return tried


def test_disk_full_at_the_checkpoint_is_one_message_and_leaves_no_file(tmp_path, tiny_product, capsys, monkeypatch):
    tried = _fail_writes(monkeypatch, "last.pt")
    out = tmp_path / "m"
    err = _err(["train", "--data", str(tiny_product / "train" / "good"), "--out", str(out), *TRAIN], capsys)
    assert f"error: cannot write {out / 'checkpoint' / 'last.pt'}: the disk is full" in err
    assert "no checkpoint was written" in err and len(tried) == 1
    assert list((out / "checkpoint").iterdir()) == [] and not (out / "metadata.json").exists()


def test_a_failed_model_write_keeps_no_old_metadata_and_resume_finishes_it(tmp_path, tiny_product, capsys,
                                                                           monkeypatch):
    good, out = str(tiny_product / "train" / "good"), tmp_path / "m"
    assert main(["train", "--data", good, "--out", str(out), *TRAIN]) == 0
    with monkeypatch.context() as m:
        tried = _fail_writes(m, "students.pt")
        err = _err(["train", "--data", good, "--out", str(out), "--overwrite", *TRAIN], capsys)
    assert f"error: cannot write {out}: the disk is full" in err and "--resume" in err and len(tried) == 1
    assert not (out / "metadata.json").exists()            # the old model's metadata went first
    with pytest.raises(EdgeADError, match="metadata"):
        load_model(out)
    monkeypatch.setattr(tr, "_val_loss", lambda *a, **k: pytest.fail("an epoch was trained again"))
    assert main(["train", "--data", good, "--out", str(out), "--resume", *TRAIN]) == 0
    assert "resuming after epoch 1 of 1" in capsys.readouterr().out
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["training"]["epochs_done"] == 1
    load_model(out)


def test_resume_from_a_foreign_checkpoint_is_one_message(tmp_path, tiny_product, capsys):
    out = tmp_path / "m"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "last.pt").write_bytes(_pickled_object())
    err = _err(["train", "--data", str(tiny_product / "train" / "good"), "--out", str(out), "--resume", *TRAIN],
               capsys)
    assert f"error: checkpoint {out / 'checkpoint' / 'last.pt'} is not a weights file" in err
    assert "weights_only" not in err and not (out / "metadata.json").exists()


def _pickled_object() -> bytes:
    buf = io.BytesIO()
    torch.save({"epoch": 1, "obj": os.environ.__class__}, buf)
    return buf.getvalue()


def _with_tiny_image(src: Path, dst: Path, where: str) -> Path:
    shutil.copytree(src, dst)
    tiny = dst / where / "zz_tiny.png" if where else dst / "zz_tiny.png"
    assert cv2.imwrite(str(tiny), np.full((1, 1, 3), 128, np.uint8))
    return tiny


def test_a_1x1_good_image_is_refused_or_skipped_and_counted(tmp_path, tiny_product, capsys, monkeypatch):
    tiny = _with_tiny_image(tiny_product / "train" / "good", tmp_path / "good", "")
    argv = ["train", "--data", str(tmp_path / "good"), "--out", str(tmp_path / "m"), *TRAIN]
    with monkeypatch.context() as m:
        m.setattr(tr, "cache_teacher", lambda *a, **k: pytest.fail("training started"))
        err = _err(argv, capsys)
    assert f"error: image {tiny} is 1x1 pixels, smaller than the 32x32 the model needs (its input is 64x64)" in err
    assert "--skip-bad" in err and not (tmp_path / "m").exists()
    assert main([*argv, "--skip-bad"]) == 0
    assert "skipped 1 unreadable or too small image(s): zz_tiny.png" in capsys.readouterr().out
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["data"]["n_images"] == 16 and [Path(p).name for p in meta["data"]["skipped"]] == ["zz_tiny.png"]


def test_eval_refuses_a_bad_out_and_batch_size_before_loading(tmp_path, tiny_model, tiny_product, capsys,
                                                              monkeypatch):
    import edgead.training.evaluate as ev

    monkeypatch.setattr(ev, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    base = ["eval", "--model", str(tiny_model), "--data", str(tiny_product)]
    assert f"error: --out {afile} is a file, but an output folder is needed" in _err([*base, "--out", str(afile)],
                                                                                     capsys)
    (tmp_path / "ro").mkdir()
    _read_only(monkeypatch, tmp_path / "ro")
    assert "read-only file system" in _err([*base, "--out", str(tmp_path / "ro" / "ev")], capsys)
    assert "--batch-size must be a whole number >= 1, got 0" in _err([*base, "--batch-size", "0",
                                                                      "--out", str(tmp_path / "ev")], capsys)


def test_eval_names_a_tiny_test_image_and_a_full_disk(tmp_path, tiny_model, tiny_product, capsys, monkeypatch):
    tiny = _with_tiny_image(tiny_product, tmp_path / "data", "test/good")
    base = ["eval", "-q", "--model", str(tiny_model), "--data", str(tmp_path / "data")]   # -q: no progress lines
    assert f"error: image {tiny} is 1x1 pixels" in _err([*base, "--out", str(tmp_path / "ev")], capsys)
    assert main([*base, "--out", str(tmp_path / "ev"), "--skip-bad"]) == 0
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert [Path(p).name for p in report["skipped"]] == ["zz_tiny.png"] and report["n_good"] == 6
    capsys.readouterr()
    _fail_writes(monkeypatch, "heatmaps.png")
    err = _err([*base, "--out", str(tmp_path / "ev"), "--skip-bad"], capsys)
    assert f"error: cannot write {tmp_path / 'ev'}: the disk is full" in err
    assert not (tmp_path / "ev" / "eval.json").exists()      # no report that looks complete


@pytest.mark.hardware   # a machine capability (mount namespaces), not an install step: may skip in CI
def test_real_read_only_and_full_disks(tmp_path, tiny_product):
    """A read-only tmpfs and a 2 MB tmpfs, mounted in a user namespace (no root needed)."""
    ro, small = tmp_path / "ro", tmp_path / "small"
    good = tiny_product / "train" / "good"
    cli = f"{sys.executable} -m edgead.cli train --data {good} {' '.join(TRAIN)}"
    run = run_with_mounts({ro: "ro", small: "size=2m"}, f"{cli} --out {ro}/m; echo rc=$?; {cli} --out {small}/m; "
                          "echo rc=$?", timeout=120, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert run.stdout.splitlines() == ["rc=2", "rc=2"], run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert f"edgead train: error: --out {ro}/m cannot be written: it is on a read-only file system ({ro})" \
        in run.stderr
    assert f"edgead train: error: --out {small}/m: only 2.0 MB free on that disk ({small}), about " in run.stderr
