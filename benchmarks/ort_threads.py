"""ONNX Runtime thread pools: spin-waiting vs not, 2 threads vs 1, on an engine's two graphs.

    python benchmarks/ort_threads.py --engine bench-out/speed/engine --batch 1

The teacher and student graphs run in two sessions with a thread pool each (as OrtDetector does);
interleaved rounds, medians. Explains edgead's session options (no spinning, every core).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort


def pair(engine: Path, threads: int, spin: bool, x: np.ndarray) -> Callable[[], object]:
    sessions = []
    for role in ("teacher", "student"):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        sessions.append(ort.InferenceSession(str(engine / f"{role}.onnx"), so, providers=["CPUExecutionProvider"]))
    teacher, student = sessions
    names = [i.name for i in student.get_inputs()[1:]]

    def infer() -> object:
        feats = teacher.run(None, {"image": x})
        return student.run(None, {"image": x, **dict(zip(names, feats))})
    return infer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    engine = Path(args.engine)
    shape = json.loads((engine / "manifest.json").read_text())["input"]["shape"][1:]
    x = np.random.default_rng(0).normal(0, 1, (args.batch, *shape)).astype(np.float32)
    variants = {"2 threads, spinning (ONNX Runtime's default)": pair(engine, 2, True, x),
                "2 threads, no spinning (edgead's default)": pair(engine, 2, False, x),
                "1 thread": pair(engine, 1, False, x)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for f in variants.values():
        f()
        f()
    calls = 10 if args.batch == 1 else 3
    for _ in range(args.rounds):
        for name, f in variants.items():
            for _ in range(calls):
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
    print(f"| ONNX Runtime sessions (batch {args.batch}) | median ms | p90 ms |\n| --- | --- | --- |")
    for name, t in times.items():
        print(f"| {name} | {1000 * np.median(t):.1f} | {1000 * np.percentile(t, 90):.1f} |")


if __name__ == "__main__":
    main()
