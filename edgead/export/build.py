"""`edgead build-engine`: an engine folder, from a model artifact (--model) or on the device (--engine).

--model, on the workstation: model artifact -> ONNX graphs -> engines, with a manifest. Always
writes the FP32 ONNX graphs (the ONNX Runtime path, and TensorRT's input), an FP16 ONNX pair
(backbones in FP16, the scoring head kept in FP32: the strongly-typed input TensorRT 11 needs, and
ONNX Runtime's FP16 path), and, where TensorRT is usable, the TensorRT plan files.

--engine, on the Jetson (or line PC): a TensorRT plan only runs on the GPU model and TensorRT version
that built it, so the plans are built on the device itself from an engine folder exported elsewhere.
This path needs no torch: it checks the ONNX graphs against the manifest (so a half-copied folder is
refused), builds the plans beside them, and rewrites the manifest with the new TensorRT entry. The
ONNX Runtime entries and their fingerprints are untouched, so their calibrations stay valid; a
TensorRT engine needs its own calibration (FP16 shifts scores).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Callable

from edgead import __version__
from edgead.backends.manifest import (BACKENDS, FORMAT, PRECISIONS, read_manifest, tensorrt_usable, verify_files,
                                      write_manifest)
from edgead.errors import EdgeADError

NOT_USABLE = "TensorRT is not usable on this machine (tensorrt or cuda-python missing, or no GPU)"


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise EdgeADError(f"unknown precision {precision!r}", f"use {' or '.join(PRECISIONS)}")


def _check_max_batch(max_batch: int) -> None:
    if max_batch < 1:
        raise EdgeADError(f"--max-batch must be >= 1, got {max_batch}", "8 suits most lines")


def _check_tensorrt(hint: str) -> None:
    if not tensorrt_usable():
        raise EdgeADError(NOT_USABLE, hint)


def _onnx_entries(graphs: dict[str, Any], fp16: dict[str, Any]) -> list[dict[str, Any]]:
    """The ONNX Runtime entries: the FP32 graphs, then the FP16 ones."""
    import onnxruntime

    return [{"backend": "onnxruntime", "precision": precision, "runtime_version": onnxruntime.__version__,
             "files": {"teacher": pair["teacher"]["file"], "student": pair["student"]["file"]}}
            for precision, pair in {"fp32": graphs, "fp16": fp16}.items()]


def _manifest(model_dir: Path, model: Any, metadata: dict[str, Any], graphs: dict[str, Any], max_batch: int,
              engines: list[dict[str, Any]]) -> dict[str, Any]:
    map_shape = ["batch", *graphs["map_shape"]]
    return {
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


def build_engine(model_dir: str | Path, out: str | Path | None = None, *, backend: str = "auto",
                 precision: str = "fp16", max_batch: int = 8, workspace_mib: int = 1024, dla_core: int | None = None,
                 map_size: tuple[int, int] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`build-engine --model`: export the model's ONNX graphs and build the engines; returns the manifest."""
    model_dir = Path(model_dir)
    out = Path(out) if out else Path("engines") / model_dir.name
    if backend not in ("auto", *BACKENDS):
        raise EdgeADError(f"unknown backend {backend!r}", f"use auto, {' or '.join(BACKENDS)}")
    _check_precision(precision)
    _check_max_batch(max_batch)
    if backend == "tensorrt":
        _check_tensorrt('install it with pip install "edgead[trt]" on the Jetson/GPU box, or use --backend onnxruntime')
    use_trt = backend == "tensorrt" or (backend == "auto" and tensorrt_usable())
    from edgead.export.onnx import export_onnx, export_onnx_fp16   # torch: the workstation side
    from edgead.model.artifact import load_model

    start = time.perf_counter()
    model, metadata = load_model(model_dir, "cpu")
    out.mkdir(parents=True, exist_ok=True)
    graphs = export_onnx(model, out, map_size)
    fp16 = export_onnx_fp16(model, out, map_size)
    engines = _onnx_entries(graphs, fp16)
    if use_trt:
        from edgead.export.tensorrt_build import build_engines

        feature_shapes = {n: tuple(shape) for n, shape in graphs["feature_shapes"].items()}
        engines.insert(0, build_engines(
            out, {"teacher": graphs["teacher"]["file"], "student": graphs["student"]["file"]}, precision, max_batch,
            (model.cfg.input.height, model.cfg.input.width), feature_shapes, workspace_mib, dla_core,
            {"teacher": fp16["teacher"]["file"], "student": fp16["student"]["file"]}))
    manifest = _manifest(model_dir, model, metadata, graphs, max_batch, engines)
    write_manifest(out, manifest)
    built = ", ".join(f"{e['backend']}/{e['precision']}" for e in engines)
    log(f"engines written to {out} ({built}) in {time.perf_counter() - start:.1f} s"
        + ("" if use_trt else "; TensorRT not usable here, ONNX Runtime will run them"))
    return manifest


def _onnx_entry(manifest: dict[str, Any], precision: str) -> dict[str, Any] | None:
    return next((e for e in manifest["engines"] if e["backend"] == "onnxruntime" and e["precision"] == precision), None)


def rebuild_tensorrt(engine_dir: str | Path, *, precision: str = "fp16", max_batch: int | None = None,
                     workspace_mib: int = 1024, dla_core: int | None = None,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """`build-engine --engine`: build (or replace) the TensorRT entry of an engine folder on this device;
    returns the manifest."""
    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    _check_precision(precision)
    _check_tensorrt('on a Jetson, TensorRT comes with JetPack; then pip install "edgead[trt]"')
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
    _check_max_batch(batch)
    from edgead.export.tensorrt_build import build_engines

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
