"""A measured GPU number without TensorRT: the Torch backend on CUDA, FP32 and FP16 (backbones in
FP16, the scoring head in FP32, as edgead.backends.reference.TorchDetector runs it), eager and
replayed as CUDA graphs, at batch 1 and 8, written as one JSON file.

Run by tests/gpu/device_check.sh (which also runs tests/gpu where TensorRT is). Every row is host
to host: a float32 NCHW batch in host memory in, the scores and maps back in host memory, as the
run loop calls a detector. The model is the edge preset at 256x256; with no --model its students
are untrained (the latency does not depend on the weights) and its teachers are the ImageNet
weights where this machine has them offline, else random. `--device cpu` is a dry run: the same
code at 64x64 with a few iterations, to check the script where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))                  # the checkout, installed or not

import numpy as np  # noqa: E402
import torch  # noqa: E402

Run = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]   # host batch -> (scores, maps)
BATCHES = (1, 8)


def build_model(model_dir: str | None, size: int) -> tuple[Any, dict[str, Any]]:
    """The detector to time: a trained artifact if given, else the edge preset built here."""
    from edgead.errors import EdgeADError
    from edgead.model.config import load_config
    from edgead.model.kd import DualKD

    if model_dir:
        from edgead.model.artifact import load_model

        model, _ = load_model(model_dir, "cpu")
        return model.eval(), {"model": str(model_dir), "students": "trained", "teachers": "imagenet"}
    cfg = load_config("edge", overrides={"input": {"height": size, "width": size}})
    try:
        model, teachers = DualKD(cfg), "imagenet"
    except EdgeADError as err:                    # no weights on this machine, and no network to fetch them
        model, teachers = DualKD(cfg, teacher_weights=False), f"random ({err.message})"
    return model.eval(), {"model": "edge preset", "students": "untrained", "teachers": teachers}


def sample_images(n: int, spec: Any) -> tuple[np.ndarray, str]:
    """n synthetic washers (half with a defect) preprocessed as the model's input spec says, or
    normal noise where OpenCV is missing."""
    size = (spec.height, spec.width)
    try:
        from edgead.data.synth import DEFECT_TYPES, render, sample_rng
        from edgead.preprocess import preprocess
    except ImportError as exc:
        rng = np.random.default_rng(0)
        return rng.normal(size=(n, 3, *size)).astype(np.float32), f"normal noise ({exc})"
    defects = DEFECT_TYPES["washer"]
    out = []
    for i in range(n):
        defect = defects[i % len(defects)] if i % 2 else None
        shot = render("washer", sample_rng(0, "washer", "test", defect or "good", i), size, defect)
        out.append(preprocess(shot.image, spec))
    return np.stack(out).astype(np.float32), "synthetic washers (edgead.data.synth)"


def _fp16_forward(model: Any) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """What TorchDetector(precision="fp16") computes: FP16 backbones, the head in FP32."""
    from edgead.model.kd import with_half_backbones

    device = next(model.parameters()).device
    half = with_half_backbones(model).to(device).eval()

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = [[f.float() for f in layers] for layers in half.teacher_features(x.half())]
        s = [[f.float() for f in layers] for layers in half.student_features(x.half())]
        amap, score = half.head(t, s)
        return amap, score
    return forward


def eager(forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> Run:
    @torch.no_grad()
    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        amap, score = forward(torch.from_numpy(batch).to(device, non_blocking=True))
        return score.float().cpu().numpy(), amap[:, 0].float().cpu().numpy()
    return run


def graphed(forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], device: torch.device,
            batch: int, shape: tuple[int, ...]) -> Run:
    """forward captured once as a CUDA graph for this batch size; a call copies in, replays, copies out.
    Small batches are launch-bound in eager mode, which is where a graph helps."""
    static_in = torch.zeros((batch, *shape), device=device)
    pinned = torch.zeros((batch, *shape)).pin_memory()
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):                 # warm-up off the capture stream (cuDNN picks its kernels)
            for _ in range(3):
                forward(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_map, static_score = forward(static_in)

    def run(host: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pinned.numpy()[...] = host
        static_in.copy_(pinned, non_blocking=True)
        graph.replay()
        return static_score.float().cpu().numpy(), static_map[:, 0].float().cpu().numpy()
    return run


def measure(run: Run, batch: np.ndarray, iters: int, budget_s: float, sync: Callable[[], None],
            warmup: int = 5) -> dict[str, Any]:
    """p50/p99 of host-to-host calls, after warm-up; at most `iters` calls or `budget_s` seconds (3 at least)."""
    for _ in range(warmup):
        run(batch)
    sync()
    times: list[float] = []
    stop = time.perf_counter() + budget_s
    while len(times) < iters and (len(times) < 3 or time.perf_counter() < stop):
        start = time.perf_counter()
        run(batch)
        sync()
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1e3
    p50, p99 = (float(v) for v in np.percentile(ms, [50, 99]))
    return {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "mean_ms": round(float(ms.mean()), 3),
            "images_per_s": round(len(batch) / (p50 / 1e3), 1), "calls": len(times)}


def _spread_error(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """The largest score and map differences, as fractions of the reference's spread."""
    return {k: float(np.abs(g - w).max() / max(float(np.ptp(w)), 1e-12))
            for k, g, w in (("score", got[0], want[0]), ("map", got[1], want[1]))}


def _torch_backend(model: Any, device: str) -> tuple[Any, str | None]:
    """edgead's Torch backend itself (TorchDetector, FP16), from the model saved as an artifact."""
    from edgead.backends.reference import TorchDetector
    from edgead.errors import EdgeADError
    from edgead.model.artifact import save_model

    folder = Path(tempfile.mkdtemp(prefix="edgead-device-check-"))
    try:
        save_model(folder, model, {"trained_by": "tests/gpu/device_check.py"})
        return TorchDetector(folder, device=device, precision="fp16", max_batch=max(BATCHES)), None
    except EdgeADError as err:                    # its teachers come from weights this machine lacks
        return None, err.message
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "host": platform.machine()}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device),
                   compute_capability=".".join(map(str, torch.cuda.get_device_capability(device))))
        try:
            query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=10)
            env["driver"] = query.stdout.strip().splitlines()[0] if query.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError):
            env["driver"] = None
    try:
        import tensorrt

        env["tensorrt"] = getattr(tensorrt, "__version__", None) if hasattr(tensorrt, "Builder") else None
    except ImportError:
        env["tensorrt"] = None
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the JSON file to write")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a quick dry run")
    ap.add_argument("--model", help="a trained model folder (models/NAME); default: the edge preset, untrained")
    ap.add_argument("--size", type=int, help="input height and width (default 256; 64 on the CPU)")
    ap.add_argument("--budget", type=float, help="seconds per measurement (default 6; 1 on the CPU)")
    args = ap.parse_args(argv)
    dry = args.device == "cpu"
    if not dry and not torch.cuda.is_available():
        print("device_check: torch sees no CUDA device (DEVICE=cpu runs the dry run)", file=sys.stderr)
        return 2
    size, budget = args.size or (64 if dry else 256), args.budget or (1.0 if dry else 6.0)
    iters = 5 if dry else 300
    if dry:
        torch.set_num_threads(1)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False           # fp32 means FP32 (the reference of the FP16 drift)
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    started = time.perf_counter()

    model, about = build_model(args.model, size)
    images, source = sample_images(max(BATCHES), model.cfg.input)
    backend, backend_note = _torch_backend(model, args.device)
    model = model.to(device)
    fp16 = _fp16_forward(model)
    variants: dict[str, Callable[[int], Run]] = {
        "fp32-eager": lambda b: eager(model, device),
        "fp16-eager": lambda b: eager(fp16, device),
    }
    graph_note = "CUDA graphs need CUDA" if dry else None
    if not dry:
        variants["fp16-graph"] = lambda b: graphed(fp16, device, b, tuple(images.shape[1:]))
    if backend is not None:
        variants["torch-backend-fp16"] = lambda b: backend.infer

    rows, outputs, failed = [], {}, []
    for name, make in variants.items():
        for b in BATCHES:
            batch = np.ascontiguousarray(images[:b])
            try:
                run = make(b)
                outputs[(name, b)] = run(batch)
                rows.append({"variant": name, "batch": b, **measure(run, batch, iters, budget, sync, 1 if dry else 5)})
            except Exception as exc:                  # one variant failing must not hide the others
                failed.append(f"{name}/b{b}: {type(exc).__name__}: {exc}")
                rows.append({"variant": name, "batch": b, "error": f"{type(exc).__name__}: {exc}"[:300]})

    checks: dict[str, Any] = {}
    if ("fp32-eager", 8) in outputs and ("fp16-eager", 8) in outputs:
        drift = _spread_error(outputs[("fp16-eager", 8)], outputs[("fp32-eager", 8)])
        checks["fp16_vs_fp32"] = {**drift, "within_2pct_of_spread": max(drift.values()) <= 0.02,
                                  "note": "reported, not enforced: untrained students" if not args.model else ""}
    if ("fp16-graph", 8) in outputs:
        same = _spread_error(outputs[("fp16-graph", 8)], outputs[("fp16-eager", 8)])
        checks["graph_vs_eager"] = {**same, "ok": max(same.values()) <= 1e-3}
        if not checks["graph_vs_eager"]["ok"]:
            failed.append(f"the CUDA graph's output differs from eager FP16: {same}")
    best = {}
    for b in BATCHES:
        timed = [r for r in rows if r["batch"] == b and "p50_ms" in r]
        if timed:
            fastest = min(timed, key=lambda r: r["p50_ms"])
            best[str(b)] = {"variant": fastest["variant"], "p50_ms": fastest["p50_ms"],
                            "images_per_s": fastest["images_per_s"]}
    report = {
        "what": "Torch backend host-to-host latency (no TensorRT)", "dry_run": dry,
        "device": args.device, "environment": _environment(device),
        "input": list(images.shape[1:]), "images": source, **about,
        "rows": rows, "best": best, "checks": checks, "failures": failed,
        "notes": {k: v for k, v in (("fp16-graph", graph_note), ("torch-backend-fp16", backend_note)) if v},
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for b, row in best.items():
        print(f"device_check: batch {b}: {row['variant']} p50 {row['p50_ms']} ms, {row['images_per_s']} images/s")
    for line in failed:
        print(f"device_check: FAILED {line}", file=sys.stderr)
    print(f"device_check: wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
