"""Every engine build-engine writes, side by side: speed on this machine and the accuracy each keeps.

Why: a plant picks an engine by milliseconds per part and by what it costs in missed defects. For
every trained model in --models, this builds its engine folder with INT8 calibrated on the model's
own good training images (`build-engine --calib-images`, as a user would with the parts at hand),
scores the category's test split with every engine (image AUROC, its change against ONNX Runtime
FP32, the largest score change as a share of the FP32 score spread), and times the engines of the
--speed models interleaved in one run (`edgead.backends.bench`), at batch 1 and 8, preprocessing
excluded.

    python benchmarks/engines.py --models bench-out/real-quick/models --out bench-out/engines
    python benchmarks/engines.py --models bench-out/real-quick/models --out bench-out/engines \\
        --speed washer-synth256x256-60-20-30-seed0-train100-test120-seed0-edge --iters 60

Each model's data is the category root its training metadata names (train/good's grandparent).
results.json and table.md are written in --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgead.backends.bench import REFERENCE, accuracy, available_detectors, time_interleaved
from edgead.backends.manifest import preprocess_spec, read_manifest
from edgead.export.build import build_engine
from edgead.io import atomic_write_json


def category_root(model: Path) -> Path:
    meta = json.loads((model / "metadata.json").read_text())
    return Path(meta["data"]["path"]).parents[1]


def engines_of(model: Path, out: Path) -> Path:
    """The model's engine folder with INT8, built once (reused when already there)."""
    folder = out / "engines" / model.name
    if not (folder / "manifest.json").is_file():
        build_engine(model, folder, calib_images=category_root(model) / "train" / "good", overwrite=True)
    return folder


def detectors(folder: Path, threads: int | None) -> dict[str, Any]:
    """Every engine of the folder this machine runs (what `edgead bench` times), without the Torch reference."""
    factories = available_detectors(folder, read_manifest(folder), with_torch=False, threads=threads)
    return {name: factory() for name, factory in factories.items()}


def speed(folder: Path, batches: list[int], iters: int, warmup: int, threads: int | None) -> list[dict[str, Any]]:
    dets = detectors(folder, threads)
    spec = preprocess_spec(read_manifest(folder))
    rows = []
    for b in batches:
        for name, stats in time_interleaved(dets, spec, b, iters, warmup, (spec.height * 2, spec.width * 2),
                                            False).items():
            rows.append({"engine": name, "batch": b, **stats})
    return rows


def table(result: dict[str, Any]) -> str:
    acc = result["accuracy"]
    names = sorted({n for a in acc.values() for n in a}, key=lambda n: (n != REFERENCE, n))
    lines = []
    for model, rows in result["speed"].items():
        lines += [f"Speed: {model} (input {rows[0]['input']}), {result['iters']} interleaved rounds, "
                  "preprocessing excluded", "",
                  "| engine | batch | p50 ms | p99 ms | images/s | x ONNX Runtime FP32 | mean AUROC change | "
                  "worst AUROC change | mean score drift |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        base = {r["batch"]: r["p50_ms"] for r in rows if r["engine"] == REFERENCE}
        for r in rows:
            changes = [a[r["engine"]]["auroc_change"] for a in acc.values() if r["engine"] in a]
            drifts = [a[r["engine"]]["score_drift"] for a in acc.values() if r["engine"] in a]
            lines.append(f"| {r['engine']} | {r['batch']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['images_per_s']:.1f} | {base[r['batch']] / r['p50_ms']:.2f} | "
                         f"{np.mean(changes):+.4f} | {min(changes):+.4f} | {np.mean(drifts):.3f} |")
        lines.append("")
    lines += ["Accuracy: image AUROC per category and engine (change against ONNX Runtime FP32; score drift)", "",
              "| category | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for model, a in acc.items():
        cells = [f"{a[n]['image_auroc']:.4f}" if n == REFERENCE else
                 f"{a[n]['auroc_change']:+.4f} ({a[n]['score_drift']:.3f})" if n in a else "n/a" for n in names]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, type=Path, help="folder of model folders written by edgead train")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--speed", action="append", help="model name(s) to time (default: the first with a 256x256 input)")
    ap.add_argument("--batch", type=int, action="append", help="batch sizes to time (default 1 and 8)")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, help="CPU threads (default: all)")
    args = ap.parse_args(argv)
    models = sorted(p for p in args.models.iterdir() if (p / "metadata.json").is_file())
    result: dict[str, Any] = {"host": platform.node(), "iters": args.iters, "command": " ".join(sys.argv),
                              "accuracy": {}, "speed": {}}
    square = [m for m in models if read_input(m) == [256, 256]]
    for model in models:
        folder = engines_of(model, args.out)
        dets = detectors(folder, args.threads)
        result["accuracy"][model.name] = accuracy(dets, category_root(model), preprocess_spec(read_manifest(folder)))
        print(model.name, {n: round(a["auroc_change"], 4) for n, a in result["accuracy"][model.name].items()}, flush=True)
        del dets
    for name in args.speed or [square[0].name if square else models[0].name]:
        folder = engines_of(args.models / name, args.out)
        rows = speed(folder, args.batch or [1, 8], args.iters, args.warmup, args.threads)
        for r in rows:
            r["input"] = read_input(args.models / name)
        result["speed"][name] = rows
    atomic_write_json(args.out / "results.json", result)
    (args.out / "table.md").write_text(table(result))
    print(table(result))
    return 0


def read_input(model: Path) -> list[int]:
    import yaml

    cfg = yaml.safe_load((model / "config.yaml").read_text())
    return [int(cfg["input"]["height"]), int(cfg["input"]["width"])]


if __name__ == "__main__":
    raise SystemExit(main())
