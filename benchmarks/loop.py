"""Run-loop overhead benchmark: the whole `edgead run` loop from a video file against the engine alone.

    python benchmarks/loop.py --engine engines/NAME --data DIR_OF_GOOD_IMAGES --out bench-out/loop
    python benchmarks/loop.py --model models/NAME --data DIR --out bench-out/loop     # builds the engine first
    python benchmarks/loop.py --tiny --out bench-out/loop-tiny     # the tests' 64x64 synthetic model, built here

Throughput: frames per second of the loop (video decode, preprocessing, batching, inference, decision,
outputs) at the engine's max batch, against `detector.infer` alone on preprocessed batches of the same
size; interleaved rounds, medians. Target: the loop keeps >= 90 % of the engine's throughput.
Latency: capture-to-decision p50/p99 of the loop at batch 1 with the video paced at half the engine's
batch-1 rate (no queueing), against the engine's own batch-1 latency measured at the same pace (an
idle-then-busy duty cycle is faster than back-to-back calls on a shared CPU). Target: p99 within 5 ms.
Prints a markdown table; writes results.json and table.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from edgead.backends import load_detector
from edgead.decide.record import build_record, write_record
from edgead.decide.scoring import Scored, engine_info
from edgead.demo import conveyor
from edgead.data.images import list_images, read_image
from edgead.preprocess import preprocess
from edgead.runtime.run import run
from edgead.runtime.config import from_dict


def write_video(path: Path, images: list[np.ndarray], n: int, codec: str = "MJPG") -> Path:
    """MJPG is what USB and IP cameras stream (0.16 ms to decode a 256x256 frame here); FFV1, a lossless
    archive codec, costs 2.1 ms per frame, as much CPU as a sixth of the engine's batch-8 frame time."""
    conveyor.write_video([images[i % len(images)] for i in range(n)], path, 30, prefer=codec)
    return path


def calibration(engine: Path, detector, images: list[np.ndarray], out: Path) -> Path:
    """A valid record for this engine (the threshold only decides pass/reject; it does not change the speed)."""
    spec, info = engine_info(engine, detector)
    scores, _ = detector.infer(np.stack([preprocess(i, spec) for i in images[:16]]))
    fake = np.random.default_rng(0).normal(float(scores.mean()), float(scores.std()) + 1e-6, 2000)
    record = build_record(Scored(fake, None, []), None, 0.01, "quantile", info, ("bench", None), refits=5)
    return write_record(record, out / "calibration.yaml", fake)


def engine_throughput(detector, batch: np.ndarray, calls: int) -> float:
    detector.infer(batch)
    t0 = time.perf_counter()
    for _ in range(calls):
        detector.infer(batch)
    return calls * len(batch) / (time.perf_counter() - t0)


def engine_latency(detector, x: np.ndarray, calls: int, pace: float | None = None) -> tuple[float, float]:
    detector.infer(x)
    times = []
    start = time.perf_counter()
    for i in range(calls):
        if pace:
            time.sleep(max(0.0, start + i / pace - time.perf_counter()))
        t0 = time.perf_counter()
        detector.infer(x)
        times.append(time.perf_counter() - t0)
    p50, p99 = np.percentile(np.array(times) * 1000, [50, 99])
    return float(p50), float(p99)


def loop_run(engine: Path, cal: Path, video: Path, detector, max_batch: int, fps: float | None) -> dict:
    camera = {"source": str(video), **({"frame_rate": fps} if fps else {})}
    cfg = from_dict({"engine": str(engine), "calibration": str(cal), "camera": camera, "deadline_ms": 60000,
                     "max_batch": max_batch})
    return run(cfg, detector=detector, out=lambda s: None, log=lambda s: None)


def tiny_model(out: Path) -> tuple[str, str]:
    """What tests/conftest.py builds: a 96x96 synthetic washer, 2 epochs at 64x64 (needs the training extra)."""
    from edgead.model.config import load_config
    from edgead.data.synth import generate_product
    from edgead.training.train import train

    product = generate_product(out / "synth", "washer", seed=3, n_train=16, n_test_good=6, n_test_defect=8,
                               size=(96, 96))
    cfg = load_config("edge", overrides={"input": {"height": 64, "width": 64},
                                         "train": {"epochs": 2, "batch_size": 4, "val_fraction": 0.2}})
    model = out / "model"
    if not (model / "students.pt").exists():
        train(product / "train" / "good", model, cfg, progress=False, log=lambda s: None)
    return str(model), str(product / "train" / "good")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--engine", help="engine folder")
    src.add_argument("--model", help="model folder: build its engine into --out first")
    src.add_argument("--tiny", action="store_true", help="build the tests' tiny synthetic product, model and engine")
    ap.add_argument("--data", help="folder of images to make the video from (with --tiny: its training images)")
    ap.add_argument("--out", default="bench-out/loop")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--batch", type=int, help="batch size (default: the engine's max batch)")
    ap.add_argument("--frames", type=int, default=300, help="frames per throughput run")
    ap.add_argument("--latency-frames", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--codec", default="MJPG", choices=["MJPG", "FFV1"], help="video codec of the test clip")
    ap.add_argument("--ort-threads", type=int, help="ONNX Runtime intra-op threads (default: the backend's, all cores)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        args.model, args.data = tiny_model(out)
    if not args.data:
        ap.error("--data is required with --engine and --model")
    if args.model:
        from edgead.export.build import build_engine

        engine = out / "engine"
        if not (args.tiny and (engine / "manifest.json").exists()):  # --tiny: reuse what an earlier run built
            build_engine(args.model, engine, max_batch=args.batch or (4 if args.tiny else 8), log=lambda s: None,
                         overwrite=True)
    else:
        engine = Path(args.engine)
    detector = load_detector(engine, args.backend)
    if args.ort_threads:  # experiment: ONNX Runtime with fewer intra-op threads than cores (room for capture)
        from edgead.backends.manifest import read_manifest, select_engine
        from edgead.backends.onnxruntime import OrtDetector

        manifest = read_manifest(engine)
        entry = select_engine(manifest, "onnxruntime", detector.precision, engine)
        detector = OrtDetector(engine, manifest, entry, threads=args.ort_threads)
    batch_size = args.batch or int(detector.max_batch)
    images = [read_image(p) for p in list_images(args.data)]
    cal = calibration(engine, detector, images, out)
    video = write_video(out / "parts.avi", images, args.frames, args.codec)
    spec, _ = engine_info(engine, detector)
    x = np.stack([preprocess(images[i % len(images)], spec) for i in range(batch_size)])

    calls = max(1, args.frames // batch_size)
    eng_fps, loop_fps, loop_safe = [], [], 0
    for _ in range(args.rounds):  # interleaved: a load change on the machine hits both alike
        eng_fps.append(engine_throughput(detector, x, calls))
        s = loop_run(engine, cal, video, detector, batch_size, None)
        loop_fps.append(s["parts"] / s["elapsed_s"])
        loop_safe += s["safe_actions"]
    pace = 0.5 * 1000.0 / engine_latency(detector, x[:1], 30)[0]
    e50, e99 = engine_latency(detector, x[:1], args.latency_frames, pace)
    lat_video = write_video(out / "latency.avi", images, args.latency_frames, args.codec)
    s1 = loop_run(engine, cal, lat_video, detector, 1, pace)
    l50, l99 = s1["latency_ms"]["p50"], s1["latency_ms"]["p99"]
    ef, lf = float(np.median(eng_fps)), float(np.median(loop_fps))
    h, w = images[0].shape[:2]
    threads = f", {args.ort_threads} ORT threads" if args.ort_threads else ""
    head = (f"engine {engine.name} ({detector.backend}/{detector.precision}{threads}, input {spec.height}x{spec.width}, "
            f"video {w}x{h} {args.codec}), {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"{args.rounds} rounds of {args.frames} frames, latency run {args.latency_frames} frames at {pace:.0f} fps")
    rows = [
        ("| measure | engine alone | run loop | loop vs engine | target | met |", None),
        ("|---|---|---|---|---|---|", None),
        (f"| throughput, batch {batch_size} (frames/s) | {ef:.1f} | {lf:.1f} | {100 * lf / ef:.1f} % | >= 90 % | "
         f"{'yes' if lf >= 0.9 * ef else 'NO'} |", None),
        (f"| latency p50, batch 1 (ms) | {e50:.2f} | {l50:.2f} | {l50 - e50:+.2f} ms | | |", None),
        (f"| latency p99, batch 1 (ms) | {e99:.2f} | {l99:.2f} | {l99 - e99:+.2f} ms | <= +5 ms | "
         f"{'yes' if l99 <= e99 + 5 else 'NO'} |", None),
    ]
    table = head + "\n\n" + "\n".join(r for r, _ in rows) + "\n"
    table += (f"\nper round, frames/s: engine {', '.join(f'{v:.0f}' for v in eng_fps)}; "
              f"loop {', '.join(f'{v:.0f}' for v in loop_fps)}\n")
    if loop_safe or s1["safe_actions"]:
        table += f"\n(safe actions during the runs: {loop_safe + s1['safe_actions']})\n"
    print(table)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps({
        "engine": str(engine), "backend": detector.backend, "precision": detector.precision, "batch": batch_size,
        "engine_fps": eng_fps, "loop_fps": loop_fps, "engine_latency_ms": {"p50": e50, "p99": e99},
        "loop_latency_ms": s1["latency_ms"], "latency_pace_fps": pace, "loop_summary_batch1": s1}, indent=2))


if __name__ == "__main__":
    main()
