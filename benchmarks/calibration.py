"""Calibration on train/good only, checked on the test split: the thresholds chosen for a target
false-reject rate of 1 % and 0.1 %, and the false-reject and escape rates they really give.

    python benchmarks/calibration.py --models bench-out/acc-synth100/models --data bench-out/acc-synth100/data
    python benchmarks/calibration.py --models bench-out/acc-bs/models --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edgead.decide import thresholds as T
from edgead.backends import load_detector
from edgead.export.build import build_engine
from edgead.decide.scoring import engine_info, score_images
from edgead.data.images import list_images
from edgead.data.mvtec import test_samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", required=True, help="folder of models named <dataset>-<preset>")
    ap.add_argument("--data", required=True, help="folder holding the MVTec-layout datasets")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.01, 0.001])
    ap.add_argument("--out", default="bench-out/calibration")
    args = ap.parse_args()
    rows = []
    for model_dir in sorted(Path(args.models).iterdir()):
        dataset = model_dir.name.rsplit("-", 1)[0]
        root = Path(args.data) / dataset
        if not (model_dir / "metadata.json").is_file() or not root.is_dir():
            continue
        engine = Path(args.out) / "engines" / model_dir.name
        build_engine(model_dir, engine, max_batch=8, log=lambda s: None)
        det = load_detector(engine, "onnxruntime", "fp32")
        spec, _ = engine_info(engine, det)
        train = score_images(det, spec, list_images(root / "train" / "good")).scores
        samples = test_samples(root)
        test = score_images(det, spec, [s.path for s in samples]).scores
        labels = np.array([s.label for s in samples])
        for target in args.targets:
            r = T.calibrate_threshold(train, target, "auto")
            t = r.threshold
            frr = float((test[labels == 0] > t).mean())
            esc = float((test[labels == 1] <= t).mean())
            rows.append({"dataset": dataset, "n_calib": int(train.size), "target": target, "method": r.method,
                         "threshold": t, "expected_frr": r.expected_frr,
                         "interval": list(r.expected_frr_interval), "test_frr": frr,
                         "test_good": int((labels == 0).sum()), "escape": esc, "test_defects": int((labels == 1).sum())})
            print(json.dumps(rows[-1]), flush=True)
    lines = ["| dataset | calibration images (train/good) | target FRR | method | threshold | expected FRR [95% interval] | "
             "test FRR (good rejected) | test escape rate (defects passed) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['n_calib']} | {r['target']:.1%} | {r['method']} | {r['threshold']:.4g} | "
                     f"{r['expected_frr']:.2%} [{r['interval'][0]:.2%}, {r['interval'][1]:.2%}] | "
                     f"{r['test_frr']:.1%} of {r['test_good']} | {r['escape']:.1%} of {r['test_defects']} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
