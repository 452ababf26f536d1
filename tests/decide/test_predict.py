"""`edgead predict`: a folder scored offline with the line's engine and rule, one CSV row per image,
an overlay per reject, and an unreadable image never passed."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgead.cli import main
from edgead.decide.predict import EXIT_UNREADABLE
from edgead.decide.record import decide, read_calibration


@pytest.fixture(scope="module")
def engine(tiny_engine: Path) -> Path:
    return tiny_engine



@pytest.fixture()
def folder(tiny_product: Path, tmp_path: Path) -> Path:
    """The synthetic product's test split, subfolders and all, as a user's batch of parts."""
    data = tmp_path / "batch"
    shutil.copytree(tiny_product / "test", data)
    return data


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_every_image_is_scored_and_decided_with_the_lines_rule(engine, calibrated, folder, tmp_path, capsys):
    from edgead.backends import load_detector
    from edgead.backends.manifest import engine_preprocessing
    from edgead.data.images import read_image
    from edgead.preprocess import preprocess

    # A part nothing like the good ones (noise over the whole frame): rejected by any trained model, so the
    # overlays are tested even where the tiny model catches none of the subtle defects (other thread counts)
    good = next((folder / "good").glob("*.png"))
    shape = cv2.imread(str(good)).shape
    noise = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    (folder / "zz_foreign").mkdir()
    assert cv2.imwrite(str(folder / "zz_foreign" / "noise.png"), noise)
    out = tmp_path / "results"
    assert main(["predict", "--engine", str(engine), "--calibration", str(calibrated), "--data", str(folder),
                 "--out", str(out)]) == 0
    rows = _rows(out)
    images = sorted(p.relative_to(folder) for p in folder.rglob("*.png"))
    assert [r["file"] for r in rows] == [str(p) for p in images]           # subfolders included, sorted
    record = read_calibration(calibrated)
    det, spec = load_detector(engine), engine_preprocessing(engine)
    for row in rows:
        score, amap = det.infer(preprocess(read_image(folder / row["file"]), spec)[None])
        assert float(row["score"]) == pytest.approx(float(score[0]), rel=1e-5)
        assert row["decision"] == ("reject" if decide(float(score[0]), amap[0], record) else "pass")
        assert float(row["margin"]) == pytest.approx(float(score[0]) - record["threshold"], rel=1e-4, abs=1e-5)
    rejects = [r for r in rows if r["decision"] == "reject"]
    assert "zz_foreign/noise.png" in [r["file"] for r in rejects]
    overlays = sorted(p.name for p in (out / "rejects").iterdir())
    assert overlays == sorted(r["file"].replace("/", "__")[:-4] + "-overlay.png" for r in rejects)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(rows) and summary["reject"] == len(rejects) and summary["unreadable"] == 0
    assert f"{len(rows)} images: {summary['pass']} passed, {len(rejects)} rejected" in capsys.readouterr().out


def test_an_unreadable_image_stops_or_is_recorded_never_passed(engine, calibrated, folder, tmp_path, capsys):
    (folder / "good" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "results"
    args = ["predict", "--engine", str(engine), "--calibration", str(calibrated), "--data", str(folder), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "--skip-bad" in err
    assert main([*args, "--skip-bad", "--overwrite"]) == EXIT_UNREADABLE
    row = next(r for r in _rows(out) if r["file"].endswith("broken.png"))
    assert row["decision"] == "unreadable" and row["score"] == ""
    captured = capsys.readouterr()
    assert "1 UNREADABLE (not passed)" in captured.out
    assert "WARNING: recording as unreadable (not passed):" in captured.err and "broken.png" in captured.err


def test_predict_refuses_what_a_user_can_get_wrong(engine, calibrated, folder, tmp_path, capsys):
    base = ["predict", "--engine", str(engine), "--calibration", str(calibrated)]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*base, "--data", str(empty), "--out", str(tmp_path / "r1")]) == 2
    assert "no images under" in capsys.readouterr().err
    out = tmp_path / "r2"
    assert main([*base, "--data", str(folder), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main([*base, "--data", str(folder), "--out", str(out)]) == 2            # results already there
    assert "--overwrite" in capsys.readouterr().err
    stale = out / "rejects" / "stale-overlay.png"
    stale.write_bytes(b"from an earlier job")
    assert main([*base, "--data", str(folder), "--out", str(out), "--overwrite"]) == 0
    assert not stale.exists()
    assert main([*base, "--data", str(folder), "--out", str(tmp_path / "r3"), "--backend", "openvino",
                 "--precision", "fp32"]) == 2                                       # another engine's record
    assert "another engine" in capsys.readouterr().err
