"""What tiling costs on the line: batch-1 latency of engines of tiled and untiled models, side by side.

    python benchmarks/tiling_latency.py --models M1 M2 ... --out bench-out/tiling-latency

Each model folder gets an engine (build-engine, kept in --out/engines on a rerun); every engine's ONNX
Runtime FP32 detector is timed at batch 1 on its own preprocessed input, in rounds (each engine once per
round, the order rotating), so that the machine's load moves all of them alike. Medians and p99 of the
engine call (preprocessing not included), the input size and the number of tiles. Writes results.json
and table.md to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from edgead.backends import load_detector
from edgead.backends.manifest import engine_preprocessing
from edgead.export.build import build_engine
from edgead.model.artifact import load_config_from_model
from edgead.model.tile_grid import offsets


def _tiles(model_dir: Path) -> tuple[str, int]:
    cfg = load_config_from_model(model_dir)
    if cfg.tile is None:
        return f"{cfg.input.height}x{cfg.input.width}", 1
    t = cfg.tile
    n = len(offsets(cfg.input.height, t.height, t.overlap)) * len(offsets(cfg.input.width, t.width, t.overlap))
    return f"{cfg.input.height}x{cfg.input.width} in {t.height}x{t.width} tiles", n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", required=True, help="trained model folders (tiled or not)")
    ap.add_argument("--out", default="bench-out/tiling-latency")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows, dets, inputs, times = [], {}, {}, {}
    for i, model in enumerate(Path(m) for m in args.models):
        name = f"{i}:{model.name}"
        engine = out / "engines" / f"{i}-{model.name}"
        if not (engine / "manifest.json").is_file():
            build_engine(model, engine, max_batch=1, overwrite=True, log=lambda s: None)
        spec = engine_preprocessing(engine)
        rng = np.random.default_rng(i)
        inputs[name] = rng.standard_normal((1, 3, spec.height, spec.width)).astype(np.float32)
        dets[name] = load_detector(engine, "onnxruntime", "fp32")
        times[name] = []
        rows.append({"name": name, "model": str(model), "input": _tiles(model)[0], "tiles": _tiles(model)[1]})
    names = list(dets)
    for r in range(args.warmup + args.rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            dets[name].infer(inputs[name])
            if r >= args.warmup:
                times[name].append(1000 * (time.perf_counter() - t0))
    for row in rows:
        t = np.array(times[row["name"]])
        row.update(p50_ms=float(np.median(t)), p99_ms=float(np.percentile(t, 99)))
    head = (f"ONNX Runtime FP32, batch 1, {args.rounds} rounds interleaved, {platform.processor() or platform.machine()}"
            f", medians")
    lines = [f"{head}", "", "| model | input | tiles | p50 ms | p99 ms | ms per tile |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {Path(row['model']).parent.parent.name}/{Path(row['model']).name} | {row['input']} | {row['tiles']} "
                     f"| {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['p50_ms'] / row['tiles']:.1f} |")
    table = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"head": head, "rows": rows}, indent=2))
    (out / "table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
