"""The user mistakes that once ended in a traceback, each tried from the command line: one message that
names the flag or key and says what to do, exit 2, and no output left behind that looks complete."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from fault_line import REPO, Line, env, no_traceback, Result, edgead
from mount_namespace import run_with_mounts

TRAIN = ["--epochs", "1", "--batch-size", "4", "--size", "64", "64", "--no-progress"]
CAL = ["--target-frr", "0.2"]      # 60 good images are enough for it: the path is what is wrong


def _model_copy(line: Line, tmp: Path) -> Path:
    model = tmp / "model"
    shutil.copytree(line.model, model)
    return model


def _broken_yaml(line: Line, tmp: Path) -> list[str]:
    model = _model_copy(line, tmp)
    (model / "config.yaml").write_text("input: [64, 64\nlr: 0.1\n")
    return ["build-engine", "--model", str(model), "--out", str(tmp / "e"), "--backend", "onnxruntime"]


def _not_weights(line: Line, tmp: Path) -> list[str]:
    model = _model_copy(line, tmp)
    (model / "students.pt").write_bytes(b"this is not a weights file")
    return ["build-engine", "--model", str(model), "--out", str(tmp / "e"), "--backend", "onnxruntime"]


def _nan_lr(line: Line, tmp: Path) -> list[str]:
    (tmp / "cfg.yaml").write_text("train:\n  lr: .nan\n")
    return ["train", "--data", str(tmp / "good"), "--out", str(tmp / "m"), "--config", str(tmp / "cfg.yaml"), *TRAIN]


def _one_pixel_image(line: Line, tmp: Path) -> list[str]:
    cv2.imwrite(str(tmp / "good" / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    return ["train", "--data", str(tmp / "good"), "--out", str(tmp / "m"), *TRAIN]


def _file(tmp: Path, name: str) -> Path:
    (tmp / name).write_text("x")
    return tmp / name


CASES: dict[str, tuple[Callable[[Line, Path], list[str]], list[str]]] = {
    "train --size 1 1": (lambda ln, t: ["train", "--data", str(t / "good"), "--out", str(t / "m"), "--size", "1", "1"],
                         ["--size", "stride"]),
    "lr: .nan": (_nan_lr, ["lr", "finite"]),
    "train --out a file": (lambda ln, t: ["train", "--data", str(t / "good"), "--out", str(_file(t, "m")), *TRAIN],
                           ["--out", "is a file"]),
    "a 1x1 training image": (_one_pixel_image, ["tiny.png", "1x1"]),
    "calibrate --out under a file": (lambda ln, t: ["calibrate", "--engine", str(ln.engine), "--good", str(t / "good"),
                                                    "--out", str(_file(t, "afile") / "x.yaml"), *CAL], ["--out", "afile"]),
    "calibrate --out a folder": (lambda ln, t: ["calibrate", "--engine", str(ln.engine), "--good", str(t / "good"),
                                                "--out", str(t / "good"), *CAL], ["--out", ".yaml"]),
    "build-engine --out a file": (lambda ln, t: ["build-engine", "--model", str(ln.model), "--out",
                                                 str(_file(t, "afile")), "--backend", "onnxruntime"],
                                  ["--out", "is a file"]),
    "invalid YAML in a model's config.yaml": (_broken_yaml, ["config.yaml", "at line 2, column"]),
    "students.pt not a weights file": (_not_weights, ["students.pt", "train"]),
    "run --record a file": (lambda ln, t: [*map(str, ln.run_args(t / "good", "--record", str(_file(t, "afile"))))],
                            ["--record", "is a file"]),
    "run --engine missing": (lambda ln, t: ["run", "--engine", str(t / "nope"), "--calibration", str(ln.calibration),
                                            "--camera", str(t / "good")], ["--engine", "does not exist"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_message_exit_2_no_traceback(line: Line, tmp_path: Path, case: str) -> None:
    shutil.copytree(line.folder("folder60", 60), tmp_path / "good")
    make, expected = CASES[case]
    argv = make(line, tmp_path)
    res = edgead(*argv, timeout=120)
    assert res.rc == 2, res.text
    first = next(s for s in res.err.splitlines() if ": error: " in s)
    assert all(word in res.err for word in expected), res.err
    assert "hint:" in res.err and "weights_only" not in res.err, res.err
    assert first.startswith(f"edgead {argv[0]}: error: ")
    for leftover in ("m/students.pt", "e/manifest.json", "x.yaml"):
        assert not (tmp_path / leftover).exists()


@pytest.mark.hardware   # mount namespaces are a machine capability, not an install step
def test_every_verb_into_a_read_only_mount_is_one_message(line: Line, tmp_path: Path) -> None:
    """train, build-engine, calibrate and run --record with their output on a tmpfs mounted read-only."""
    ro = tmp_path / "ro"
    good = line.folder("folder60", 60)
    verbs = {"train": ["train", "--data", good, "--out", ro / "m", *TRAIN],
             "build-engine": ["build-engine", "--model", line.model, "--out", ro / "e", "--backend", "onnxruntime"],
             "calibrate": ["calibrate", "--engine", line.engine, "--good", good, "--out", ro / "c.yaml", *CAL],
             "run": line.run_args(good, "--record", ro / "rec")}
    cli = f"{shlex.quote(sys.executable)} -m edgead.cli"
    script = "; ".join(f"{cli} {' '.join(shlex.quote(str(a)) for a in argv)}; echo rc=$?" for argv in verbs.values())
    p = run_with_mounts({ro: "ro"}, script, timeout=240, env=env(), cwd=REPO)
    res = no_traceback(Result(p.returncode, p.stdout, p.stderr))
    assert [s for s in res.out.splitlines() if s.startswith("rc=")] == ["rc=2"] * 4, res.text
    for verb in verbs:
        assert any(s.startswith(f"edgead {verb}: error: ") and "read-only" in s for s in res.err.splitlines()), \
            (verb, res.err)
