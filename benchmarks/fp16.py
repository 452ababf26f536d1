"""FP16 drift: how much do FP16 backbones move the scores and the AUROC against FP32?

TensorRT cannot run here, so FP16 is measured where it can run: Torch with FP16 backbones (head in
FP32, as the engines do) and ONNX Runtime with the FP16 graph, against ONNX Runtime FP32.

    python benchmarks/fp16.py --models bench-out/acc-synth/models --data bench-out/acc-synth/data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edgead.backends import load_detector
from edgead.backends.reference import TorchDetector
from edgead.export.build import build_engine
from edgead.data.images import read_image
from edgead.data.mvtec import test_samples
from edgead.training.metrics import auroc
from edgead.preprocess import PreprocessSpec, preprocess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", required=True, help="folder of models named <category>-<preset>")
    ap.add_argument("--data", required=True, help="folder of MVTec-layout categories")
    ap.add_argument("--out", default="bench-out/fp16")
    args = ap.parse_args()
    rows = []
    for model_dir in sorted(Path(args.models).iterdir()):
        category = model_dir.name.rsplit("-", 1)[0]
        root = Path(args.data) / category
        if not (model_dir / "metadata.json").is_file() or not root.is_dir():
            continue
        engine = Path(args.out) / "engines" / model_dir.name
        manifest = build_engine(model_dir, engine, max_batch=8, log=lambda s: None, overwrite=True)
        spec = PreprocessSpec.from_dict(manifest["preprocess"])
        samples = test_samples(root)
        x = np.stack([preprocess(read_image(s.path), spec) for s in samples])
        labels = np.array([s.label for s in samples])
        dets = {"onnxruntime fp32": load_detector(engine, "onnxruntime", "fp32"),
                "onnxruntime fp16 graph": load_detector(engine, "onnxruntime", "fp16"),
                "torch fp32": TorchDetector(model_dir),
                "torch fp16 backbones": TorchDetector(model_dir, precision="fp16")}
        ref, ref_maps = dets["onnxruntime fp32"].infer(x)
        for name, det in dets.items():
            s, m = det.infer(x)
            # Drift as a share of the FP32 score range: additive-fused scores sit near 0 on good parts,
            # so a drift relative to each score would be meaningless.
            rel = np.abs(s - ref) / float(np.ptp(ref))
            rows.append({"category": category, "backend": name, "image_auroc": auroc(labels, s),
                         "auroc_change": auroc(labels, s) - auroc(labels, ref),
                         "score_drift_median": float(np.median(rel)), "score_drift_max": float(rel.max()),
                         "map_max_abs_diff_of_range": float(np.abs(m - ref_maps).max() / (ref_maps.max() - ref_maps.min())),
                         "min_map_value": float(m.min())})
            print(json.dumps(rows[-1]), flush=True)
    lines = ["| category | backend | image AUROC | AUROC change | score drift median (of score range) | score drift max (of score range) | map max diff / range |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['category']} | {r['backend']} | {r['image_auroc']:.4f} | {r['auroc_change']:+.4f} | "
              f"{r['score_drift_median']:.2e} | {r['score_drift_max']:.2e} | {r['map_max_abs_diff_of_range']:.2e} |" for r in rows]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.md").write_text("\n".join(lines) + "\n")
    (Path(args.out) / "fp16.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
