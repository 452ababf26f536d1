"""How INT8 activation ranges are read from good parts: chosen on good parts the quantiser never saw.

For each model, its good training images are split in two: the first half calibrates the INT8 graphs
(each ONNX Runtime calibration method in turn), the second half is scored by the FP32 and the INT8
engine. The method whose scores move least from FP32 on those held-out good parts (largest and
median change, as a share of the FP32 scores' spread) is the default: no defect and no test image
takes part in the choice.

    python benchmarks/int8_calibration.py --models bench-out/real-quick/models --out bench-out/int8-calibration
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from edgead.backends import load_detector
from edgead.backends.manifest import preprocess_spec, read_manifest
from edgead.data.images import list_images, load_batch
from edgead.export import quantize
from edgead.export.build import build_engine
from edgead.io import atomic_write_json

METHODS = ("MinMax", "Percentile", "Entropy")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    args = ap.parse_args(argv)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for model in sorted(p for p in args.models.iterdir() if (p / "metadata.json").is_file()):
        good = Path(json.loads((model / "metadata.json").read_text())["data"]["path"])
        paths = list_images(good)
        if len(paths) // 2 < quantize.MIN_IMAGES:
            print(f"{model.name}: {len(paths)} good training images, too few to hold half out; skipped", flush=True)
            continue
        calib, held = args.out / "calib" / model.name, paths[len(paths) // 2:]
        calib.mkdir(parents=True, exist_ok=True)
        for p in paths[:len(paths) // 2]:
            if not (calib / p.name).exists():
                shutil.copy(p, calib / p.name)
        results[model.name] = {}
        for method in args.methods:
            folder = args.out / "engines" / f"{model.name}-{method}"
            default, quantize.CALIBRATION = quantize.CALIBRATION, method
            try:
                build_engine(model, folder, calib_images=calib, overwrite=True, log=lambda s: None)
            finally:
                quantize.CALIBRATION = default
            spec = preprocess_spec(read_manifest(folder))
            x, _, _ = load_batch(held, spec)
            s32 = load_detector(folder, "onnxruntime", "fp32").infer(x)[0]
            s8 = load_detector(folder, "onnxruntime", "int8").infer(x)[0]
            change = np.abs(s8 - s32) / float(np.ptp(s32) or 1.0)
            results[model.name][method] = {"max_drift": float(change.max()), "median_drift": float(np.median(change)),
                                           "corr": float(np.corrcoef(s8, s32)[0, 1])}
            print(model.name, method, results[model.name][method], flush=True)
            shutil.rmtree(folder)
        atomic_write_json(args.out / "results.json", {"command": " ".join(sys.argv), "results": results})
    for method in args.methods:
        drifts = [r[method]["max_drift"] for r in results.values()]
        print(f"{method:<12} mean max drift {np.mean(drifts):.4f}  worst {max(drifts):.4f}  "
              f"mean median drift {np.mean([r[method]['median_drift'] for r in results.values()]):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
