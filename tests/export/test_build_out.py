"""`build-engine --model` and its --out: an existing engine folder is never replaced without
overwrite (and then only once the new one is complete), and every bad path or bad model artifact is
one EdgeADError before the export starts, never a traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import yaml

from edgead.backends.manifest import MANIFEST, read_manifest
from edgead.cli import main
from edgead.errors import EdgeADError


def _old_engine(folder: Path) -> dict[str, bytes]:
    """A folder standing for an earlier engine; returns its files' contents."""
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text('{"format": 2}')
    (folder / "teacher.onnx").write_bytes(b"earlier graph")
    return _contents(folder)


def _contents(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2, err   # one message, one hint
    return err


def test_an_existing_engine_folder_is_refused_without_overwrite(tiny_model, tmp_path, capsys):
    from edgead.export.build import build_engine

    out = tmp_path / "engines" / "tiny"
    before = _old_engine(out)
    err = _cli_error(capsys, ["build-engine", "--model", str(tiny_model), "--out", str(out)])
    assert f"--out {out} already exists" in err and "--overwrite" in err
    with pytest.raises(EdgeADError, match="already exists"):
        build_engine(tiny_model, out, log=lambda s: None)
    assert _contents(out) == before and _leftovers(out.parent) == []


def test_overwrite_replaces_the_folder_whole(tiny_model, tmp_path):
    from edgead.export.build import build_engine

    out = tmp_path / "engines" / "tiny"
    _old_engine(out)
    (out / "teacher.fp16.plan").write_bytes(b"a plan of the earlier engine")
    lines: list[str] = []
    manifest = build_engine(tiny_model, out, max_batch=2, overwrite=True, log=lines.append)
    assert read_manifest(out) == manifest and len(lines) == 1
    names = {n for e in manifest["engines"] for n in e["files"].values()}
    assert {f.name for f in out.iterdir()} == names | {MANIFEST}        # nothing of the earlier folder left
    assert _leftovers(out.parent) == [] and oct(out.stat().st_mode & 0o777) == "0o755"


def test_a_failed_overwrite_leaves_the_earlier_folder(tiny_model, tmp_path, monkeypatch):
    import edgead.export.onnx as onnx_export
    from edgead.export.build import build_engine

    out = tmp_path / "engines" / "tiny"
    before = _old_engine(out)
    written: list[Path] = []

    def disk_full(model, out_dir, map_size=None, metadata=None):    # the FP32 graphs are written, then the disk is full
        written.extend(Path(out_dir).iterdir())
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(out_dir) / "teacher.fp16.onnx"))

    monkeypatch.setattr(onnx_export, "export_onnx_fp16", disk_full)
    with pytest.raises(EdgeADError) as e:
        build_engine(tiny_model, out, overwrite=True, log=lambda s: None)
    assert e.value.message == f"--out {out}: writing the engines failed: the disk is full"
    assert "free some space" in e.value.hint
    assert len(written) >= 2 and not any(p.exists() for p in written)
    assert _contents(out) == before and _leftovers(out.parent) == []


@pytest.mark.parametrize("case", ["a file", "under a file", "read-only"])
def test_a_bad_out_is_refused_before_the_export(tiny_model, tmp_path, monkeypatch, capsys, case):
    import edgead.model.artifact as artifact

    monkeypatch.setattr(artifact, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "afile").write_text("not a folder")
    out = {"a file": tmp_path / "afile", "under a file": tmp_path / "afile" / "engine",
           "read-only": tmp_path / "ro" / "engines" / "tiny"}[case]
    if case == "read-only":
        from readonly_mount import mount_read_only

        (tmp_path / "ro").mkdir()
        mount_read_only(tmp_path / "ro", monkeypatch)
    err = _cli_error(capsys, ["build-engine", "--model", str(tiny_model), "--out", str(out)])
    assert {"a file": f"error: --out {out} is a file, but an output folder is needed",
            "under a file": f"error: --out {out}: {tmp_path / 'afile'} is a file, so nothing can be written under it",
            "read-only": f"error: --out {out} cannot be written: it is on a read-only file system ({tmp_path / 'ro'})",
            }[case] in err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["afile", "ro"] if case == "read-only" else ["afile"])
    assert (tmp_path / "afile").read_text() == "not a folder"


@pytest.mark.parametrize("damage", ["config not YAML", "config not a mapping", "weights text", "weights pickle"])
def test_a_damaged_model_artifact_is_one_error_and_writes_nothing(tiny_model, tmp_path, capsys, damage):
    import pickle
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    if damage == "config not YAML":
        (model / "config.yaml").write_text("input: [1, 2\nfusion: : :\n")
    elif damage == "config not a mapping":
        (model / "config.yaml").write_text(yaml.safe_dump(["a", "list"]))
    elif damage == "weights text":
        (model / "students.pt").write_text("these are not weights")
    else:
        (model / "students.pt").write_bytes(pickle.dumps(Path("/")))     # a pickle, not a state dict
    out = tmp_path / "engine"
    err = _cli_error(capsys, ["build-engine", "--model", str(model), "--out", str(out)])
    assert str(model) in err and "weights_only" not in err
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("failing", ["moving the earlier folder aside", "moving the new one in"])
def test_a_folder_that_cannot_be_swapped_stays_as_it_was(tmp_path, monkeypatch, failing):
    """The last step of an overwrite, on small folders: --out a mount point (EBUSY) or a rename that
    fails half-way leaves the earlier folder in place, and no staging or aside folder behind."""
    from edgead.export.build import _staging

    out = tmp_path / "engine"
    before = _old_engine(out)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(Path(src).name)
        if len(calls) == (1 if failing == "moving the earlier folder aside" else 2):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(EdgeADError) as e:
        with _staging(out) as stage:
            (stage / MANIFEST).write_text("{}")
    assert e.value.message == f"--out {out}: the new engine folder cannot take its place (Device or resource busy)"
    assert _contents(out) == before and _leftovers(tmp_path) == []
