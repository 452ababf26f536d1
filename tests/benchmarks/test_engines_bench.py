"""benchmarks/engines.py and benchmarks/int8_calibration.py end to end on the session's tiny model:
every engine of the folder is scored and timed, the table says so; the calibration methods are
compared on held-out good parts only."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import engines  # noqa: E402
import int8_calibration  # noqa: E402

pytest.importorskip("openvino")


def _models(tiny_model: Path, tmp_path: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(tiny_model, models / "tiny")
    return models


def test_every_engine_is_scored_and_timed(tiny_model, tiny_product, tmp_path, capsys):
    out = tmp_path / "out"
    assert engines.main(["--models", str(_models(tiny_model, tmp_path)), "--out", str(out), "--iters", "2",
                         "--warmup", "1", "--batch", "1", "--threads", "1"]) == 0
    result = json.loads((out / "results.json").read_text())
    acc = result["accuracy"]["tiny"]
    assert set(acc) == {"onnxruntime/fp32", "onnxruntime/fp16", "onnxruntime/int8", "openvino/fp32", "openvino/int8"}
    assert acc["onnxruntime/fp32"]["auroc_change"] == 0.0
    assert engines.category_root(tiny_model) == tiny_product
    rows = result["speed"]["tiny"]
    assert {r["engine"] for r in rows} == set(acc) and all(r["batch"] == 1 and r["p50_ms"] > 0 for r in rows)
    table = (out / "table.md").read_text()
    assert "| onnxruntime/int8 | 1 |" in table and "| tiny |" in table
    # a second run reuses the engine folder it built
    built = (out / "engines" / "tiny" / "manifest.json").stat().st_mtime_ns
    assert engines.main(["--models", str(out.parent / "models"), "--out", str(out), "--iters", "1",
                         "--warmup", "0", "--batch", "1"]) == 0
    assert (out / "engines" / "tiny" / "manifest.json").stat().st_mtime_ns == built


def test_calibration_methods_are_compared_on_held_out_good_parts(tiny_model, tmp_path, capsys):
    out = tmp_path / "calib"
    assert int8_calibration.main(["--models", str(_models(tiny_model, tmp_path)), "--out", str(out),
                                  "--methods", "Percentile"]) == 0     # one method: each is one engine build
    results = json.loads((out / "results.json").read_text())["results"]["tiny"]
    assert set(results) == {"Percentile"}
    from edgead.export import quantize

    assert quantize.CALIBRATION == "MinMax"                            # the default is put back
    assert all(r["max_drift"] >= r["median_drift"] >= 0 for r in results.values())
    assert len(list((out / "calib" / "tiny").iterdir())) == 8       # the first half of 16 good images
    assert "mean max drift" in capsys.readouterr().out
