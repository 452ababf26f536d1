"""benchmarks/real_accuracy.py end to end on a tiny synthetic category (64x64, one epoch): both
methods are measured on the same capped split, results.json and table.md say so, and a rerun keeps
the rows it already has. About 10 s with OMP_NUM_THREADS=1."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import real_accuracy  # noqa: E402

from edgead.data.mvtec import Sample  # noqa: E402

ARGS = ["--categories", "washer", "--synth-size", "64", "64", "--synth-counts", "14", "6", "8", "--size", "64", "64",
        "--epochs", "1", "--max-train", "12", "--max-test", "10", "--bank-size", "400"]


def test_both_methods_land_in_one_table_and_a_rerun_keeps_them(tmp_path, capsys):
    out = tmp_path / "bench"
    assert real_accuracy.main([*ARGS, "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rows] == ["edgead", "baseline"]
    name = "washer-synth64x64-14-6-8-seed0-train12-test10-seed0"
    for r in rows:
        assert r["category"] == name and r["kind"] == "synthetic" and "skipped" not in r
        assert r["setup"]["input"] == "64x64"
        assert r["setup"]["n_train_good"] == 12 and r["setup"]["n_test"] == 10      # the caps hold for both
        assert 0 <= r["image_auroc"] <= 1 and 0 <= r["pixel_auroc"] <= 1 and math.isfinite(r["aupro"])
        assert r["train_s"] > 0 and r["ms_per_image"] > 0
        assert r["n_good"] + r["n_defect"] == 10 and r["n_good"] >= 1 and r["n_defect"] >= 1
    assert rows[0]["setup"]["epochs"] == 1 and rows[0]["steps"] == 2              # 12 images: 10 train, batch 8
    assert rows[1]["bank"] == 400
    table = (out / "table.md").read_text()
    line = next(l for l in table.splitlines() if l.startswith(f"| {name} |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == "64x64" and cells[2] == "12 / 10"
    assert all(c.count(" / ") == 1 and "-" not in c.split(" / ") for c in cells[3:8]), line   # edgead / baseline
    assert "**mean, synthetic**" in table and "**edgead - baseline**" in table
    assert len(list((out / "data" / "subsets" / name / "train" / "good").iterdir())) == 12

    capsys.readouterr()
    assert real_accuracy.main([*ARGS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("already in results.json") == 2
    assert json.loads((out / "results.json").read_text()) == rows


def test_a_capped_test_split_keeps_goods_and_every_defect_type():
    samples = [Sample(Path(f"{t}{i}.png"), int(t != "good"), t, None)
               for t, n in (("good", 200), ("crack", 3), ("hole", 90)) for i in range(n)]
    picked = real_accuracy.stratified(samples, 30, np.random.default_rng(0))
    counts = {t: sum(s.defect_type == t for s in picked) for t in ("good", "crack", "hole")}
    assert len(picked) == 30 and counts == {"good": 20, "crack": 1, "hole": 9}
    assert picked == sorted(picked, key=samples.index)                             # test order kept


def test_steps_become_epochs_on_the_training_split():
    cfg = real_accuracy.load_config("edge")
    # 100 good images: 90 train after the 10 % validation split, 12 steps an epoch at batch 8
    assert real_accuracy.epochs_for_steps(700, 100, cfg) == 59
    assert real_accuracy.epochs_for_steps(1, 100, cfg) == 1
