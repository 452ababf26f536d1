"""The product's promise, end to end through the CLI: a model trained on good parts only tells good
parts from defective ones, `calibrate` sets a threshold on held-back good parts, and `run` decides
each part on a belt with exactly that threshold.

The product is the synthetic washer rendered at the model's input size (64x64), so no resize hides
the defect; defective parts carry an easy defect (a solid stain covering 2-6 % of the image), so a
few seconds of training separate them (8 epochs of 36 images: 4 epochs left 1 draw in 4 of the
images with an under-trained model). Every check is a statistical test against "the detector is
chance" (scores or decisions independent of the truth), required at p < 1e-4: a detector that
returns random scores passes it less than once in 10,000 runs. The floors beside them (AUROC, recall,
false rejects) are derived from the calibration's own promise, not tuned to pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from scipy import stats

from edgead.cli import main
from edgead.data.synth import render, sample_rng

SIZE = 64
# 200 held-back good parts at a 5 % target: the plain quantile method (10 / target), a stable threshold.
N_TRAIN, N_CALIB, N_BELT_GOOD, N_BELT_DEFECT = 40, 200, 20, 20
TARGET_FRR = 0.05
CHANCE_P = 1e-4


def stain(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A solid ellipse of a saturated colour, radius 5-9 px: paint or a foreign object on a grey part."""
    out = image.copy()
    mask = np.zeros(image.shape[:2], np.uint8)
    r = rng.uniform(5, 9)
    cx, cy = rng.uniform(r + 4, SIZE - r - 4, 2)
    cv2.ellipse(mask, (int(cx), int(cy)), (int(r), int(r * rng.uniform(0.6, 1.0))), rng.uniform(0, 180),
                0, 360, 1, -1)
    hsv = np.array([[[rng.integers(0, 180), 255, rng.integers(150, 256)]]], np.uint8)
    out[mask > 0] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return out


def _write(folder: Path, name: str, rgb: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _good(split: str, i: int) -> np.ndarray:
    return render("washer", sample_rng(7, "washer", split, "good", i), (SIZE, SIZE)).image


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Train, build-engine, calibrate and run, each through `edgead`'s CLI, as a line engineer would."""
    root = tmp_path_factory.mktemp("line")
    for i in range(N_TRAIN):
        _write(root / "train", f"{i:03d}.png", _good("train", i))
    for i in range(N_CALIB):
        _write(root / "calib", f"{i:03d}.png", _good("calib", i))
    rng = np.random.default_rng(11)
    truth = [0] * N_BELT_GOOD + [1] * N_BELT_DEFECT
    rng.shuffle(truth)
    for k, defective in enumerate(truth):          # the folder is read in name order: belt order = k
        img = _good("belt", k)
        _write(root / "belt", f"part_{k:03d}.png", stain(img, rng) if defective else img)

    assert main(["train", "--data", str(root / "train"), "--out", str(root / "model"), "--size", str(SIZE), str(SIZE),
                 "--epochs", "8", "--batch-size", "8", "--no-progress"]) == 0
    assert main(["build-engine", "--model", str(root / "model"), "--out", str(root / "engine"),
                 "--backend", "onnxruntime"]) == 0
    record = root / "calibration.yaml"
    assert main(["calibrate", "--engine", str(root / "engine"), "--good", str(root / "calib"),
                 "--target-frr", str(TARGET_FRR), "--out", str(record)]) == 0
    (root / "run.yaml").write_text("deadline_ms: 10000\n")   # a loaded CI box must not turn parts into safe actions
    runs = {}
    for name in ("belt", "calib"):     # the belt, then the held-back good parts calibrate chose from
        assert main(["run", "--engine", str(root / "engine"), "--calibration", str(record), "--camera",
                     str(root / name), "--config", str(root / "run.yaml"), "--record", str(root / f"runs-{name}")]) == 0
        run_dir, = (root / f"runs-{name}").iterdir()
        events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
        runs[name] = {"events": sorted(events, key=lambda e: e["seq"]),
                      "run": json.loads((run_dir / "run.json").read_text())}
    return {"truth": np.array(truth), "record": yaml.safe_load(record.read_text()), "runs": runs,
            "events": runs["belt"]["events"]}


def test_the_engine_ranks_defective_parts_above_good_ones(line: dict[str, Any]) -> None:
    """Scores from the built engine, read back from the belt's event log: AUROC and its chance p-value."""
    from sklearn.metrics import roc_auc_score

    truth = line["truth"]
    scores = np.array([e["score"] for e in line["events"]], dtype=float)
    assert len(scores) == len(truth) and np.isfinite(scores).all()
    auroc = roc_auc_score(truth, scores)
    p_chance = stats.mannwhitneyu(scores[truth == 1], scores[truth == 0], alternative="greater").pvalue
    # With 20 + 20 parts a chance detector's AUROC is 0.50 +- 0.09 (sd): 0.90 is 4.3 sd above it.
    assert auroc >= 0.90 and p_chance < CHANCE_P, (auroc, p_chance)


def test_belt_decisions_follow_the_truth(line: dict[str, Any]) -> None:
    truth = line["truth"]
    events = line["events"]
    assert [e["seq"] for e in events] == list(range(len(truth)))
    assert all(e["decision"] in ("pass", "reject") for e in events), "no part may end as a safe action here"
    rejected = np.array([e["decision"] == "reject" for e in events])
    caught, false_rejects = int(rejected[truth == 1].sum()), int(rejected[truth == 0].sum())
    table = [[caught, N_BELT_DEFECT - caught], [false_rejects, N_BELT_GOOD - false_rejects]]
    p_chance = stats.fisher_exact(table, alternative="greater")[1]
    assert p_chance < CHANCE_P, table
    # The calibration promises a false-reject rate within its interval: more false rejects on the
    # belt than that rate makes plausible (binomial, 1 in 1000) means calibrate and run disagree.
    upper = line["record"]["expected_frr_interval"][1]
    assert false_rejects <= stats.binom.ppf(0.999, N_BELT_GOOD, upper), (false_rejects, upper)
    assert caught >= 0.8 * N_BELT_DEFECT, table


def test_run_decides_with_the_calibrated_threshold(line: dict[str, Any]) -> None:
    """Every decision of `run` is `score > threshold` with the record's threshold, and on the very
    good parts calibrate chose it from, `run` sees the scores calibrate saw and rejects exactly the
    ones the record counts above it."""
    record = line["record"]
    threshold = record["threshold"]
    assert record["target_frr"] == TARGET_FRR and record["good"]["n"] == N_CALIB and record["rule"] == "image"
    for name, got in line["runs"].items():
        for e in got["events"]:
            assert (e["decision"] == "reject") == (e["score"] > threshold), (name, e)
        run = got["run"]
        assert run["calibration"]["threshold"] == threshold and run["calibration"]["forced"] is False
        summary = run["summary"]
        assert summary["parts"] == len(got["events"]) and summary["safe_actions"] == 0
        assert summary["rejects"] == sum(e["decision"] == "reject" for e in got["events"])
    calib = line["runs"]["calib"]["events"]
    scores = np.array([e["score"] for e in calib])
    assert len(calib) == N_CALIB and line["runs"]["calib"]["run"]["summary"]["rejects"] == record["rejects"]
    good = record["good"]["scores"]
    np.testing.assert_allclose([scores.min(), np.median(scores), scores.max()], [good["min"], good["p50"], good["max"]],
                               rtol=1e-5, atol=1e-6)
    # The threshold lies in the good parts' upper tail, where the target puts it: no more of them above
    # it than the record's own interval allows.
    assert good["p50"] < threshold and record["rejects"] <= np.ceil(record["expected_frr_interval"][1] * N_CALIB)
