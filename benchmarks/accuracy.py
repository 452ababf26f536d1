"""Accuracy benchmark: train each preset on each product, evaluate each fusion, write a table.

Fusion only changes the scoring head, not the students, so each trained model is evaluated with
both fusions (the normalisation statistics for both are stored at training time).

    python benchmarks/accuracy.py --out bench-out/accuracy            # three synthetic products
    python benchmarks/accuracy.py --bsdata ../shared/data/bsdata_ball_screw --size 256 640 --epochs 8
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgead.model.config import load_config
from edgead.data.mvtec import test_samples
from edgead.data.synth import CATEGORIES, generate_product
from edgead.errors import EdgeADError
from edgead.training.evaluate import load_masks, score_samples
from edgead.training.metrics import evaluate_predictions
from edgead.model.artifact import load_model
from edgead.training.train import train


def run_one(name: str, root: Path, preset: str, fusions: list[str], out: Path, overrides: dict,
            config_file: str | None = None) -> list[dict]:
    cfg = load_config(preset, config_file, overrides=overrides)
    model_dir = out / "models" / f"{name}-{preset}"
    try:
        if _finished_with(model_dir, cfg, root / "train" / "good"):
            pass                                     # rerun of an interrupted benchmark: keep the model
        else:
            resume = (model_dir / "checkpoint" / "last.pt").is_file() and not (model_dir / "metadata.json").is_file()
            train(root / "train" / "good", model_dir, cfg, overwrite=True, resume=resume, progress=False,
                  log=lambda s: None)
    except EdgeADError as err:
        return [{"dataset": name, "preset": preset, "fusion": f, "skipped": str(err)} for f in fusions]
    model, meta = load_model(model_dir)
    samples = test_samples(root)
    rows = []
    for fusion in fusions:
        model.head.fusion = fusion
        t0 = time.perf_counter()
        kept, scores, maps, _ = score_samples(model, samples, 8, torch.device("cpu"))
        infer_s = time.perf_counter() - t0
        masks = load_masks(kept, model.cfg.input)
        report = evaluate_predictions(np.array([s.label for s in kept]), [s.defect_type for s in kept],
                                      scores, maps, masks).to_dict()
        rows.append({"dataset": name, "preset": preset, "fusion": fusion,
                     "input": f"{cfg.input.height}x{cfg.input.width}", "epochs": cfg.train.epochs,
                     "train_s": meta["training"]["seconds"],
                     "s_per_epoch": meta["training"]["seconds_per_epoch"],
                     "ms_per_image": round(1000 * infer_s / len(kept), 1), **report})
        print(json.dumps({k: rows[-1][k] for k in ("dataset", "preset", "fusion", "image_auroc", "pixel_auroc",
                                                   "aupro", "f1_max", "train_s")}), flush=True)
    return rows


def _finished_with(model_dir: Path, cfg: Any, good: Path) -> bool:
    """A complete model trained with exactly this config on exactly these images (and not interrupted)
    is reused; another image set under the same name is trained again."""
    import yaml

    from edgead.data.images import list_images
    from edgead.training.train import data_fingerprint

    meta, config = model_dir / "metadata.json", model_dir / "config.yaml"
    if not (meta.is_file() and config.is_file()):
        return False
    metadata = json.loads(meta.read_text())
    if yaml.safe_load(config.read_text()) != cfg.to_dict() or metadata["training"]["interrupted"]:
        return False
    return metadata.get("data", {}).get("fingerprint") == data_fingerprint(list_images(good))


def markdown(rows: list[dict], command: str) -> str:
    lines = [f"Command: `{command}`", "",
             f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
             "", "| dataset | preset | fusion | input | epochs | train s | s/epoch | image AUROC | pixel AUROC | AUPRO@30% | F1-max | ms/image |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['dataset']} | {r['preset']} | {r['fusion']} | skipped: {r['skipped'].splitlines()[0]} |||||||||")
            continue
        lines.append(f"| {r['dataset']} | {r['preset']} | {r['fusion']} | {r['input']} | {r['epochs']} | {r['train_s']:.0f} | "
                     f"{r['s_per_epoch']:.1f} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {r['aupro']:.4f} | "
                     f"{r['f1_max']:.4f} | {r['ms_per_image']} |")
    per_type = [r for r in rows if "per_type" in r]
    if per_type:
        lines += ["", "Per defect type (image AUROC / pixel AUROC / AUPRO):", "",
                  "| dataset | preset | fusion | defect type | n | image AUROC | pixel AUROC | AUPRO |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in per_type:
            for t, m in sorted(r["per_type"].items()):
                lines.append(f"| {r['dataset']} | {r['preset']} | {r['fusion']} | {t} | {m['n']} | {m['image_auroc']:.4f} | "
                             f"{m['pixel_auroc']:.4f} | {m['aupro']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="bench-out/accuracy")
    ap.add_argument("--presets", nargs="+", default=["edge", "paper"])
    ap.add_argument("--fusions", nargs="+", default=["multiplicative", "additive"])
    ap.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    ap.add_argument("--bsdata", help="MVTec-layout real data (replaces the synthetic products)")
    ap.add_argument("--size", type=int, nargs=2, metavar=("H", "W"))
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", help="YAML overriding the preset (for variants)")
    ap.add_argument("--train-good", type=int, default=60, help="synthetic good training images per product "
                    "(10 %% of them are held out for validation and the map normalisation)")
    ap.add_argument("--test-good", type=int, default=20, help="synthetic good test images per product")
    ap.add_argument("--test-defect", type=int, default=30, help="synthetic defective test images per product "
                    "(more of both: a less noisy AUROC)")
    args = ap.parse_args()
    out = Path(args.out)
    overrides: dict[str, Any] = {"train": {"seed": args.seed}}
    if args.epochs:
        overrides["train"]["epochs"] = args.epochs
    if args.size:
        overrides["input"] = {"height": args.size[0], "width": args.size[1]}
    if args.bsdata:
        datasets = [(Path(args.bsdata).name, Path(args.bsdata))]
    else:
        datasets = [(c, generate_product(out / "data", c, args.seed, n_train=args.train_good, n_test_good=args.test_good,
                                         n_test_defect=args.test_defect)) for c in args.categories]
    rows = []
    for name, root in datasets:
        for preset in args.presets:
            rows += run_one(name, root, preset, args.fusions, out, overrides, args.config)
    command = "python " + " ".join(["benchmarks/accuracy.py", *sys.argv[1:]])
    (out / "results.json").write_text(json.dumps(rows, indent=1, default=float))
    (out / "table.md").write_text(markdown(rows, command))
    print(markdown(rows, command))


if __name__ == "__main__":
    main()
