"""`edgead build-engine`: model artifact -> ONNX graphs -> engines, with a manifest.

Always writes the FP32 ONNX graphs (the ONNX Runtime path, and TensorRT's input), an FP16 ONNX pair
(backbones in FP16, the scoring head kept in FP32: the strongly-typed input TensorRT 11 needs, and
ONNX Runtime's FP16 path), and, where TensorRT is usable, the TensorRT plan files.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Callable

from edgead import __version__
from edgead.backends.manifest import FORMAT, tensorrt_usable, write_manifest
from edgead.errors import EdgeADError


def build_engine(model_dir: str | Path, out: str | Path | None = None, *, backend: str = "auto",
                 precision: str = "fp16", max_batch: int = 8, workspace_mib: int = 1024, dla_core: int | None = None,
                 map_size: tuple[int, int] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    model_dir = Path(model_dir)
    out = Path(out) if out else Path("engines") / model_dir.name
    if backend not in ("auto", "tensorrt", "onnxruntime"):
        raise EdgeADError(f"unknown backend {backend!r}", "use auto, tensorrt or onnxruntime")
    if precision not in ("fp16", "fp32"):
        raise EdgeADError(f"unknown precision {precision!r}", "use fp16 or fp32")
    if max_batch < 1:
        raise EdgeADError(f"--max-batch must be >= 1, got {max_batch}", "8 suits most lines")
    if backend == "tensorrt" and not tensorrt_usable():
        raise EdgeADError("TensorRT is not usable on this machine (tensorrt or cuda-python missing, or no GPU)",
                          'install it with pip install "edgead[trt]" on the Jetson/GPU box, or use --backend onnxruntime')
    use_trt = backend == "tensorrt" or (backend == "auto" and tensorrt_usable())
    from edgead.export.onnx import export_onnx, export_onnx_fp16   # torch: the workstation side
    from edgead.model.artifact import load_model

    start = time.perf_counter()
    model, metadata = load_model(model_dir, "cpu")
    out.mkdir(parents=True, exist_ok=True)
    graphs = export_onnx(model, out, map_size)
    fp16 = export_onnx_fp16(model, out, map_size)
    import onnxruntime

    engines: list[dict[str, Any]] = [
        {"backend": "onnxruntime", "precision": "fp32", "runtime_version": onnxruntime.__version__,
         "files": {"teacher": graphs["teacher"]["file"], "student": graphs["student"]["file"]}},
        {"backend": "onnxruntime", "precision": "fp16", "runtime_version": onnxruntime.__version__,
         "files": {"teacher": fp16["teacher"]["file"], "student": fp16["student"]["file"]}},
    ]
    if use_trt:
        from edgead.backends.tensorrt import build_engines

        feature_shapes = {n: tuple(shape) for n, shape in graphs["feature_shapes"].items()}
        engines.insert(0, build_engines(
            out, {"teacher": graphs["teacher"]["file"], "student": graphs["student"]["file"]}, precision, max_batch,
            (model.cfg.input.height, model.cfg.input.width), feature_shapes, workspace_mib, dla_core,
            {"teacher": fp16["teacher"]["file"], "student": fp16["student"]["file"]}))
    map_shape = ["batch", *graphs["map_shape"]]
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "edgead_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "model": {"path": str(model_dir.resolve()), "preset": model.cfg.preset,
                  "data_fingerprint": metadata["data"]["fingerprint"], "fusion": model.cfg.fusion},
        "preprocess": model.cfg.input.to_dict(),
        "input": {"name": "image", "shape": ["batch", 3, model.cfg.input.height, model.cfg.input.width],
                  "dtype": "float32"},
        "feature_names": graphs["feature_names"],
        "feature_shapes": graphs["feature_shapes"],   # lets `build-engine --engine` build TensorRT plans on the device
        "outputs": {"map": map_shape, "score": ["batch"]},
        "map_size": [int(map_shape[2]), int(map_shape[3])],
        "max_batch": max_batch,
        "val_good_scores": metadata.get("val_good_scores"),
        "engines": engines,
    }
    write_manifest(out, manifest)
    built = ", ".join(f"{e['backend']}/{e['precision']}" for e in engines)
    log(f"engines written to {out} ({built}) in {time.perf_counter() - start:.1f} s"
        + ("" if use_trt else "; TensorRT not usable here, ONNX Runtime will run them"))
    return manifest
