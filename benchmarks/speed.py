"""Speed benchmark at the model's input size: Torch eager FP32 vs ONNX Runtime FP32 vs ONNX Runtime
FP16 graph, batch 1 and 8, measured side by side in one run (interleaved rounds, medians).

    python benchmarks/speed.py --model bench-out/acc-synth/models/washer-edge --out bench-out/speed

Also reports GFLOPs per frame and parameters per graph (teacher graph, student graph).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgead.backends import load_detector
from edgead.backends.onnxruntime import default_threads
from edgead.backends.reference import TorchDetector
from edgead.export.build import build_engine
from edgead.export.onnx import StudentGraph, TeacherGraph
from edgead.model.artifact import load_model


def graph_costs(model_dir: Path) -> dict[str, dict[str, float]]:
    model, _ = load_model(model_dir)
    h, w = model.cfg.input.height, model.cfg.input.width
    x = torch.randn(1, 3, h, w)
    teacher, student = TeacherGraph(model), StudentGraph(model)
    out = {}
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            feats = teacher(x)
        out["teacher"] = {"gflops": fc.get_total_flops() / 1e9,
                          "params_m": sum(p.numel() for pr in model.pairs for p in pr.teacher.parameters()) / 1e6}
        with FlopCounterMode(display=False) as fc:
            student(x, *feats)
        out["student+head"] = {"gflops": fc.get_total_flops() / 1e9,
                               "params_m": sum(p.numel() for pr in model.pairs
                                               for p in [*pr.student.parameters(), *pr.projections.parameters()]) / 1e6}
        # Where the scoring head runs: its own cost at batch 1 (it sits at the end of the student graph,
        # so it adds no engine launch and no feature round trip).
        t, i = [], 0
        tiler = model.tiler
        for pair in model.pairs:
            n = len(pair.spec.teacher.layers)
            t.append([tiler.unfold(f) if tiler is not None else f for f in feats[i:i + n]])   # per tile
            i += n
        s = student.student_features(model.tiles(x))
        for _ in range(3):
            model.score(t, s)
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            model.score(t, s)
            times.append(time.perf_counter() - t0)
        with FlopCounterMode(display=False) as fc:
            model.score(t, s)
        out["scoring head (inside student graph)"] = {"gflops": fc.get_total_flops() / 1e9, "params_m": 0.0,
                                                      "torch_ms_b1": float(np.median(times)) * 1000}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default="bench-out/speed")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each round times every backend")
    ap.add_argument("--iters", type=int, default=10, help="timed calls per backend per round")
    args = ap.parse_args()
    out = Path(args.out)
    engine = out / "engine"
    build_engine(args.model, engine, max_batch=max(args.batches), log=lambda s: None, overwrite=True)
    cores = len(os.sched_getaffinity(0))
    dets = {"torch eager fp32": TorchDetector(args.model, max_batch=max(args.batches)),
            f"onnxruntime fp32 ({default_threads()} threads, the default)": load_detector(engine, "onnxruntime", "fp32"),
            "onnxruntime fp16 graph": load_detector(engine, "onnxruntime", "fp16")}
    if cores > 1:   # what one core left free (run YAML `threads: 1` on a 2-core box) costs the engine
        dets["onnxruntime fp32 (1 thread)"] = load_detector(engine, "onnxruntime", "fp32", threads=1)
    manifest = json.loads((engine / "manifest.json").read_text())
    shape = manifest["input"]["shape"][1:]
    rng = np.random.default_rng(0)
    times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in dets for b in args.batches}
    for b in args.batches:
        x = rng.normal(size=(b, *shape)).astype(np.float32)
        for det in dets.values():
            for _ in range(2):
                det.infer(x)                        # warm-up
        for _ in range(args.rounds):
            for name, det in dets.items():          # interleaved: machine noise hits every backend alike
                for _ in range(args.iters):
                    t0 = time.perf_counter()
                    det.infer(x)
                    times[(name, b)].append(time.perf_counter() - t0)
    rows = []
    for b in args.batches:
        ref = float(np.median(times[("torch eager fp32", b)]))
        for name in dets:
            med = float(np.median(times[(name, b)]))
            rows.append({"backend": name, "batch": b, "median_ms": med * 1000, "p90_ms": float(np.percentile(times[(name, b)], 90)) * 1000,
                         "images_per_s": b / med, "speedup_vs_torch": ref / med})
    costs = graph_costs(Path(args.model))
    result = {"machine": f"{platform.processor() or platform.machine()}, {cores} cores, torch {torch.get_num_threads()} "
                         f"threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
              "input": shape, "rows": rows, "costs": costs}
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(result, indent=1))
    lines = ["| backend | batch | median ms | p90 ms | images/s | speed-up vs Torch |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['backend']} | {r['batch']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['images_per_s']:.1f} | {r['speedup_vs_torch']:.2f}x |" for r in rows]
    lines += ["", "| graph | GFLOPs per frame | parameters (M) | Torch ms (batch 1) |", "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {v['gflops']:.2f} | {v['params_m']:.2f} | {v.get('torch_ms_b1', float('nan')):.1f} |"
              for k, v in costs.items()]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
