"""`edgead build-engine --engine engines/NAME`: TensorRT engines from an engine folder's ONNX graphs.

A TensorRT plan only runs on the GPU model and TensorRT version that built it, so the plans must be
built on the Jetson (or line PC) itself, while training and ONNX export happen on a workstation.
This path needs no torch: it checks the ONNX graphs against the manifest (so a half-copied folder is
refused), builds the plans beside them on this device, and rewrites the manifest with the new
TensorRT entry. The ONNX Runtime entries and their fingerprints are untouched, so their calibrations
stay valid; a TensorRT engine needs its own calibration (FP16 shifts scores).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from edgead.backends.manifest import read_manifest, tensorrt_usable, verify_files, write_manifest
from edgead.errors import EdgeADError


def _onnx_entry(manifest: dict[str, Any], precision: str) -> dict[str, Any] | None:
    return next((e for e in manifest["engines"] if e["backend"] == "onnxruntime" and e["precision"] == precision), None)


def rebuild_tensorrt(engine_dir: str | Path, *, precision: str = "fp16", max_batch: int | None = None,
                     workspace_mib: int = 1024, dla_core: int | None = None,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build (or replace) the TensorRT entry of an engine folder on this device; returns the manifest."""
    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    if precision not in ("fp16", "fp32"):
        raise EdgeADError(f"unknown precision {precision!r}", "use fp16 or fp32")
    if not tensorrt_usable():
        raise EdgeADError("TensorRT is not usable on this machine (tensorrt or cuda-python missing, or no GPU)",
                          'on a Jetson, TensorRT comes with JetPack; then pip install "edgead[trt]"')
    fp32 = _onnx_entry(manifest, "fp32")
    if fp32 is None:
        raise EdgeADError(f"{engine_dir} has no FP32 ONNX graphs to build TensorRT engines from",
                          "rebuild the folder with `edgead build-engine --model models/NAME` on the workstation")
    verify_files(engine_dir, manifest, fp32)   # a half-copied or edited folder must not become an engine
    fp16 = _onnx_entry(manifest, "fp16")
    if fp16 is not None:
        verify_files(engine_dir, manifest, fp16)
    shapes = manifest.get("feature_shapes")
    if not shapes:
        raise EdgeADError(f"{engine_dir}/manifest.json predates on-device builds (no feature shapes)",
                          "re-export it with `edgead build-engine --model models/NAME` on the workstation")
    batch = int(max_batch or manifest["max_batch"])
    if batch < 1:
        raise EdgeADError(f"--max-batch must be >= 1, got {batch}", "8 suits most lines")
    from edgead.backends.tensorrt import build_engines

    start = time.perf_counter()
    h, w = manifest["input"]["shape"][2:]
    entry = build_engines(engine_dir, dict(fp32["files"]), precision, batch, (int(h), int(w)),
                          {n: tuple(s) for n, s in shapes.items()}, workspace_mib, dla_core,
                          dict(fp16["files"]) if fp16 else None)
    manifest["engines"] = [entry] + [e for e in manifest["engines"] if e["backend"] != "tensorrt"]
    manifest["max_batch"] = batch           # ONNX Runtime's graphs take any batch; the plans' profile ends here
    write_manifest(engine_dir, manifest)
    log(f"TensorRT {entry['device'].get('tensorrt', '')} {precision} engines built in {engine_dir} in "
        f"{time.perf_counter() - start:.1f} s; calibrate them: `edgead calibrate --engine {engine_dir} --good ...`")
    return manifest
