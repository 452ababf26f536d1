"""`edgead bench`: every engine of a folder side by side, in one run: latency percentiles, throughput,
and (with `--data`) the accuracy each one keeps on the user's own labelled parts.

The engines are timed interleaved: every round runs each of them once, in an order that rotates from
round to round, so a noisy neighbour or a CPU clock change costs all of them alike and their ratios
hold even where the absolute numbers wander. Timings are wall-clock after warm-up; this is a
measurement tool, never a test assertion.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgead.backends.manifest import preprocess_spec, read_manifest
from edgead.errors import EdgeADError
from edgead.io import atomic_write_json
from edgead.preprocess import PreprocessSpec, preprocess
from edgead.protocols import Detector

REFERENCE = "onnxruntime/fp32"      # what the accuracy change is measured against


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    a = np.asarray(samples_s) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def _frames(spec: PreprocessSpec, batch: int, frame_hw: tuple[int, int], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*frame_hw, 3), dtype=np.uint8) for _ in range(batch)]


def time_interleaved(dets: dict[str, Detector], spec: PreprocessSpec, batch: int, iters: int, warmup: int,
                     frame_hw: tuple[int, int], include_preprocess: bool, seed: int = 0) -> dict[str, dict[str, float]]:
    """Latency percentiles and images/s of each detector on the same random frames, timed in rounds."""
    frames = _frames(spec, batch, frame_hw, seed)
    x = np.stack([preprocess(f, spec) for f in frames])
    names = list(dets)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + iters):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            batch_in = np.stack([preprocess(f, spec) for f in frames]) if include_preprocess else x
            dets[name].infer(batch_in)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    out = {}
    for name, samples in times.items():
        stats = _percentiles(samples)
        stats["images_per_s"] = batch / float(np.median(samples))
        out[name] = stats
    return out


def time_detector(det: Detector, spec: PreprocessSpec, batch: int, iters: int, warmup: int,
                  frame_hw: tuple[int, int], include_preprocess: bool, seed: int = 0) -> dict[str, float]:
    """Latency percentiles and images/s of one detector, with or without preprocessing."""
    return time_interleaved({"one": det}, spec, batch, iters, warmup, frame_hw, include_preprocess, seed)["one"]


def available_detectors(engine_dir: Path, manifest: dict[str, Any], with_torch: bool,
                        threads: int | None = None) -> dict[str, Callable[[], Detector]]:
    """Name -> factory for every backend/precision that can run here (CPU ones on `threads` threads)."""
    from edgead.backends import load_detector
    from edgead.backends.manifest import tensorrt_usable
    from edgead.backends.openvino import usable as openvino_usable

    out: dict[str, Callable[[], Detector]] = {}
    for e in manifest["engines"]:
        if (e["backend"] == "tensorrt" and not tensorrt_usable()) or (e["backend"] == "openvino" and not openvino_usable()):
            continue
        out[f"{e['backend']}/{e['precision']}"] = partial(load_detector, engine_dir, e["backend"], e["precision"],
                                                                threads=threads)
    model_dir = Path(manifest["model"]["path"])
    if with_torch and model_dir.is_dir():
        try:
            from edgead.backends.reference import TorchDetector
        except ImportError:
            return out
        batch = max(int(e["max_batch"]) for e in manifest["engines"])
        out["torch/fp32"] = lambda: TorchDetector(model_dir, max_batch=batch)
    return out


def accuracy(dets: dict[str, Detector], data: Path, spec: PreprocessSpec, batch: int = 8) -> dict[str, dict[str, float]]:
    """Image AUROC of each detector on an MVTec-layout test split, and how far its scores move from the
    reference's: the largest change over the images, as a share of the reference's score spread."""
    from edgead.data.images import load_batch
    from edgead.data.mvtec import test_samples
    from edgead.training.metrics import auroc

    samples = test_samples(data)
    labels = np.array([s.label for s in samples])
    scores: dict[str, list[np.ndarray]] = {n: [] for n in dets}
    for i in range(0, len(samples), batch):
        x, _, _ = load_batch([s.path for s in samples[i:i + batch]], spec)
        for name, det in dets.items():
            scores[name].append(det.infer(x)[0])
    joined = {n: np.concatenate(s) for n, s in scores.items()}
    ref = joined.get(REFERENCE, next(iter(joined.values())))
    spread = float(ref.max() - ref.min()) or 1.0
    aurocs = {n: auroc(labels, s) for n, s in joined.items()}
    ref_auroc = auroc(labels, ref)
    return {n: {"image_auroc": aurocs[n], "auroc_change": aurocs[n] - ref_auroc,
                "score_drift": float(np.abs(s - ref).max()) / spread} for n, s in joined.items()}


def _factories(engine: str | Path, with_torch: bool,
               threads: int | None) -> tuple[dict[str, Any], dict[str, Callable[[], Detector]]]:
    """The manifest and a factory per engine to time: a folder's engines, or the one served model of a
    triton:// URL (its manifest read from the server)."""
    from edgead.backends import engine_manifest, load_detector
    from edgead.backends.triton import is_triton_url

    if is_triton_url(engine):
        served = load_detector(str(engine))
        return engine_manifest(str(engine), served), {f"triton/{served.precision}": lambda: served}
    manifest = read_manifest(Path(engine))
    return manifest, available_detectors(Path(engine), manifest, with_torch, threads)


def bench(engine_dir: str | Path, *, batches: list[int] | None = None, iters: int = 30, warmup: int = 5,
          with_torch: bool = True, backends: list[str] | None = None, out: str | Path | None = None,
          data: str | Path | None = None, threads: int | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time every engine that can run here at each batch size, side by side; with `data` (an MVTec-layout
    category root), also score its test split with each. Prints the table, optionally writes JSON."""
    manifest, factories = _factories(engine_dir, with_torch, threads)
    spec = preprocess_spec(manifest)
    frame_hw = (spec.height * 2, spec.width * 2)       # a camera frame larger than the model input
    if backends:
        everything = dict(factories)
        factories = {k: v for k, v in factories.items() if k.split("/")[0] in backends or k in backends}
        if not factories:
            raise EdgeADError(f"none of the backends {backends} can run here", f"available: {', '.join(everything)}")
    dets = {name: factory() for name, factory in factories.items()}
    rows = []
    max_batch = max(int(d.max_batch) for d in dets.values())
    for b in batches or sorted({1, max_batch}):
        for pre in (False, True):
            for name, stats in time_interleaved(dets, spec, b, iters, warmup, frame_hw, pre).items():
                rows.append({"backend": name, "batch": b, "preprocess": pre, **stats})
    result: dict[str, Any] = {"engine": str(engine_dir), "input": [spec.height, spec.width], "iters": iters,
                              "warmup": warmup, "rows": rows}
    if data is not None:
        result["accuracy"] = accuracy(dets, Path(data), spec)
        result["data"] = str(data)
    if out:
        atomic_write_json(Path(out), result)
    log(format_table(rows, result.get("accuracy")))
    return result


def format_table(rows: list[dict[str, Any]], acc: dict[str, dict[str, float]] | None = None) -> str:
    """One line per engine and batch; the speed-up against the reference at the same batch; accuracy if measured."""
    base = {(r["batch"], r["preprocess"]): r["p50_ms"] for r in rows if r["backend"] == REFERENCE}
    head = f"{'backend':<20}{'batch':>6}{'preproc':>9}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'img/s':>10}{'x ref':>7}"
    if acc:
        head += f"{'AUROC':>8}{'change':>9}{'drift':>8}"
    lines = [head]
    for r in rows:
        ref = base.get((r["batch"], r["preprocess"]))
        line = (f"{r['backend']:<20}{r['batch']:>6}{'yes' if r['preprocess'] else 'no':>9}"
                f"{r['p50_ms']:>10.2f}{r['p90_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['images_per_s']:>10.1f}"
                + (f"{ref / r['p50_ms']:>7.2f}" if ref else f"{'':>7}"))
        if acc and r["backend"] in acc:
            a = acc[r["backend"]]
            line += f"{a['image_auroc']:>8.4f}{a['auroc_change']:>+9.4f}{a['score_drift']:>8.3f}"
        lines.append(line)
    if acc:
        lines.append(f"x ref: speed-up against {REFERENCE} at the same batch; change: image AUROC minus its; "
                     "drift: the largest score change over the test images, as a share of its score spread")
    return "\n".join(lines)
