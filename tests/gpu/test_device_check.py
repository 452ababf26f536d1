"""The GPU check's CPU dry run (DEVICE=cpu): the same script as on a GPU, at 64x64 and a few calls,
so it is known to work before a GPU machine runs it. Needs torch, not TensorRT or a GPU."""

from __future__ import annotations

import json
from pathlib import Path

NEEDS_TENSORRT = False


def test_dry_run_writes_the_report(tmp_path: Path) -> None:
    from device_check import main           # tests/gpu is on sys.path, as for any test module here

    out = tmp_path / "check" / "device_check.json"
    assert main(["--device", "cpu", "--out", str(out), "--budget", "0.01"]) == 0
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["input"] == [3, 64, 64] and report["failures"] == []
    timed = {(r["variant"], r["batch"]): r for r in report["rows"]}
    assert {("fp32-eager", 1), ("fp32-eager", 8), ("fp16-eager", 1), ("fp16-eager", 8)} <= set(timed)
    for row in timed.values():
        assert row["calls"] >= 3 and 0 < row["p50_ms"] <= row["p99_ms"]
        assert abs(row["images_per_s"] - row["batch"] / (row["p50_ms"] / 1e3)) <= 0.1
    assert set(report["best"]) == {"1", "8"}
    assert report["notes"]["fp16-graph"] == "CUDA graphs need CUDA"       # graphs are timed on a GPU only
    drift = report["checks"]["fp16_vs_fp32"]
    assert 0 < drift["score"] < 1 and 0 < drift["map"] < 1                # FP16 differs, but not wildly
