"""`edgead bench`: latency percentiles and throughput per backend, preprocessing excluded and included.

Timings are wall-clock medians over repeated runs after warm-up; this is a measurement tool, never a
test assertion.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgead.protocols import Detector
from edgead.backends.manifest import preprocess_spec, read_manifest
from edgead.errors import EdgeADError
from edgead.io import atomic_write_json
from edgead.preprocess import PreprocessSpec, preprocess


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    a = np.asarray(samples_s) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def time_detector(det: Detector, spec: PreprocessSpec, batch: int, iters: int, warmup: int,
                  frame_hw: tuple[int, int], include_preprocess: bool, seed: int = 0) -> dict[str, float]:
    """Latency percentiles and images/s of one detector on random frames, with or without preprocessing."""
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (*frame_hw, 3), dtype=np.uint8) for _ in range(batch)]
    x = np.stack([preprocess(f, spec) for f in frames])
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        if include_preprocess:
            x = np.stack([preprocess(f, spec) for f in frames])
        det.infer(x)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    stats = _percentiles(times)
    stats["images_per_s"] = batch / float(np.median(times))
    return stats


def available_detectors(engine_dir: Path, manifest: dict[str, Any],
                        with_torch: bool) -> dict[str, Callable[[], Detector]]:
    """Name -> factory for every backend/precision that can run here."""
    from edgead.backends import load_detector
    from edgead.backends.manifest import tensorrt_usable

    out: dict[str, Callable[[], Detector]] = {}
    for e in manifest["engines"]:
        if e["backend"] == "tensorrt" and not tensorrt_usable():
            continue
        out[f"{e['backend']}/{e['precision']}"] = partial(load_detector, engine_dir, e["backend"], e["precision"])
    model_dir = Path(manifest["model"]["path"])
    if with_torch and model_dir.is_dir():
        try:
            from edgead.backends.reference import TorchDetector
        except ImportError:
            return out
        batch = max(int(e["max_batch"]) for e in manifest["engines"])
        out["torch/fp32"] = lambda: TorchDetector(model_dir, max_batch=batch)
    return out


def bench(engine_dir: str | Path, *, batches: list[int] | None = None, iters: int = 30, warmup: int = 5,
          with_torch: bool = True, backends: list[str] | None = None, out: str | Path | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time every backend that can run here at each batch size; print the table, optionally write JSON."""
    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    spec = preprocess_spec(manifest)
    frame_hw = (spec.height * 2, spec.width * 2)       # a camera frame larger than the model input
    dets = available_detectors(engine_dir, manifest, with_torch)
    if backends:
        dets = {k: v for k, v in dets.items() if k.split("/")[0] in backends or k in backends}
        if not dets:
            raise EdgeADError(f"none of the backends {backends} can run here",
                              f"available: {', '.join(available_detectors(engine_dir, manifest, with_torch))}")
    rows = []
    for name, factory in dets.items():
        det = factory()
        for b in batches or sorted({1, int(det.max_batch)}):
            for pre in (False, True):
                stats = time_detector(det, spec, b, iters, warmup, frame_hw, pre)
                rows.append({"backend": name, "batch": b, "preprocess": pre, **stats})
    result = {"engine": str(engine_dir), "input": [spec.height, spec.width], "iters": iters, "warmup": warmup,
              "rows": rows}
    if out:
        atomic_write_json(Path(out), result)
    log(format_table(rows))
    return result


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'backend':<18}{'batch':>6}{'preproc':>9}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'img/s':>10}"]
    for r in rows:
        lines.append(f"{r['backend']:<18}{r['batch']:>6}{'yes' if r['preprocess'] else 'no':>9}"
                     f"{r['p50_ms']:>10.2f}{r['p90_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['images_per_s']:>10.1f}")
    return "\n".join(lines)
