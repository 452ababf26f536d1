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

--model never replaces an engine folder by accident: an existing, non-empty --out is refused unless
overwrite is asked for, and even then the new folder is built beside it and only put in its place
once complete. The output path, its free space and the model artifact are checked before the export.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from edgead import __version__
from edgead.backends.manifest import (BACKENDS, FORMAT, PRECISIONS, read_manifest, tensorrt_usable, verify_files,
                                      write_manifest)
from edgead.errors import EdgeADError
from edgead.export.tensorrt_build import TIMING_CACHE
from edgead.io import MIN_FREE_MB, WRITE_ERRORS, check_input, check_output, write_reason

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


def _onnx_entries(graphs: dict[str, Any], fp16: dict[str, Any], max_batch: int) -> list[dict[str, Any]]:
    """The ONNX Runtime entries: the FP32 graphs, then the FP16 ones."""
    import onnxruntime

    return [{"backend": "onnxruntime", "precision": precision, "runtime_version": onnxruntime.__version__,
             "files": {"teacher": pair["teacher"]["file"], "student": pair["student"]["file"]},
             "max_batch": max_batch}
            for precision, pair in {"fp32": graphs, "fp16": fp16}.items()]


def _manifest(model_dir: Path, model: Any, metadata: dict[str, Any], graphs: dict[str, Any],
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
        "val_good_scores": metadata.get("val_good_scores"),
        "engines": engines,
    }


def _free_mb_needed(weights: Path) -> float:
    """What an export needs free, before it starts: the FP32 and FP16 graphs of teachers and students
    come to about three times the students' weights (measured 2.8), and TensorRT plans add about as much."""
    size_mb = weights.stat().st_size / 2**20 if weights.is_file() else 0.0
    return MIN_FREE_MB + 6.0 * size_mb


@contextmanager
def _staging(out: Path, carry: tuple[str, ...] = ()) -> Iterator[Path]:
    """A folder beside `out` to build in, put in `out`'s place only once complete: a failed or
    interrupted build leaves the engine folder that was there (with overwrite) as it was. `carry`:
    files of that folder the build reuses (TensorRT's timing cache)."""
    stage: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
        for name in carry:
            if (out / name).is_file():
                shutil.copy2(out / name, stage / name)
        yield stage
        os.chmod(stage, 0o755)                   # mkdtemp makes 0700; engine folders are shared
        _replace(stage, out)
    except OSError as exc:
        if exc.errno not in WRITE_ERRORS:
            raise
        raise EdgeADError(f"--out {out}: writing the engines failed: {write_reason(exc)}",
                          "free some space, or choose a writable --out (check the mount and the permissions)") from None
    finally:
        if stage is not None and stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _replace(stage: Path, out: Path) -> None:
    """Rename the finished `stage` to `out`, moving an existing `out` aside first (and back, should
    the second rename fail), and delete the earlier folder once the new one is in place."""
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent)) if out.is_dir() else None
    try:
        if aside is not None:
            os.replace(out, aside / out.name)
        try:
            os.replace(stage, out)
        except OSError:
            if aside is not None:
                os.replace(aside / out.name, out)       # the earlier folder back where it was
            raise
    except OSError as exc:
        kept = f"; the earlier folder is in {aside / out.name}" if aside and (aside / out.name).exists() else ""
        if aside is not None and not kept:
            aside.rmdir()
        if exc.errno in WRITE_ERRORS and not kept:
            raise
        raise EdgeADError(f"--out {out}: the new engine folder cannot take its place ({exc.strerror or exc}){kept}",
                          "choose an --out that is a plain folder (not a mount point)") from None
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def build_engine(model_dir: str | Path, out: str | Path | None = None, *, backend: str = "auto",
                 precision: str = "fp16", max_batch: int = 8, workspace_mib: int = 1024, dla_core: int | None = None,
                 map_size: tuple[int, int] | None = None, overwrite: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """`build-engine --model`: export the model's ONNX graphs and build the engines; returns the manifest.

    An existing, non-empty `out` is refused unless `overwrite`; then it is replaced only once the new
    folder is complete. Every path and the model artifact are checked before the export starts."""
    model_dir = check_input(model_dir, kind="dir", what="--model",
                            hint="give the model folder written by `edgead train --out`")
    out = Path(out) if out else Path("engines") / model_dir.name
    if backend not in ("auto", *BACKENDS):
        raise EdgeADError(f"unknown backend {backend!r}", f"use auto, {' or '.join(BACKENDS)}")
    _check_precision(precision)
    _check_max_batch(max_batch)
    if backend == "tensorrt":
        _check_tensorrt('install it with pip install "edgead[trt]" on the Jetson/GPU box, or use --backend onnxruntime')
    use_trt = backend == "tensorrt" or (backend == "auto" and tensorrt_usable())
    from edgead.export.onnx import export_onnx, export_onnx_fp16   # torch: the workstation side
    from edgead.model.artifact import WEIGHTS_FILE, load_model

    check_output(out, kind="dir", what="--out", overwrite=overwrite,
                 min_free_mb=_free_mb_needed(model_dir / WEIGHTS_FILE))

    start = time.perf_counter()
    model, metadata = load_model(model_dir, "cpu")       # a bad config or weights file stops here
    with _staging(out, (TIMING_CACHE,) if use_trt else ()) as stage:
        graphs = export_onnx(model, stage, map_size)
        fp16 = export_onnx_fp16(model, stage, map_size)
        engines = _onnx_entries(graphs, fp16, max_batch)
        if use_trt:
            from edgead.export.tensorrt_build import build_engines

            feature_shapes = {n: tuple(shape) for n, shape in graphs["feature_shapes"].items()}
            engines.insert(0, build_engines(
                stage, {"teacher": graphs["teacher"]["file"], "student": graphs["student"]["file"]}, precision,
                max_batch, (model.cfg.input.height, model.cfg.input.width), feature_shapes, workspace_mib, dla_core,
                {"teacher": fp16["teacher"]["file"], "student": fp16["student"]["file"]}))
        manifest = write_manifest(stage, _manifest(model_dir, model, metadata, graphs, engines))
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
    returns the manifest. Adding to the folder is what this does, so it needs no overwrite; the folder
    must be writable and have room for the plans, checked before the build."""
    engine_dir = check_input(engine_dir, kind="dir", what="--engine",
                             hint="give an engine folder exported with `edgead build-engine --model`")
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
    trt = next((e for e in manifest["engines"] if e["backend"] == "tensorrt"), None)
    batch = int(max_batch or (trt or fp32)["max_batch"])      # default: the folder's
    _check_max_batch(batch)
    plans_mb = sum((engine_dir / n).stat().st_size for n in fp32["files"].values()) / 2**20
    check_output(engine_dir, kind="dir", what="--engine", overwrite=True, min_free_mb=MIN_FREE_MB + plans_mb)
    from edgead.export.tensorrt_build import build_engines

    start = time.perf_counter()
    h, w = manifest["input"]["shape"][2:]
    entry = build_engines(engine_dir, dict(fp32["files"]), precision, batch, (int(h), int(w)),
                          {n: tuple(s) for n, s in manifest["feature_shapes"].items()}, workspace_mib, dla_core,
                          dict(fp16["files"]) if fp16 else None)
    manifest["engines"] = [entry] + [e for e in manifest["engines"] if e["backend"] != "tensorrt"]
    manifest = write_manifest(engine_dir, manifest)     # the ONNX Runtime entries and fingerprints unchanged
    log(f"TensorRT {entry['device'].get('tensorrt', '')} {precision} engines built in {engine_dir} in "
        f"{time.perf_counter() - start:.1f} s; calibrate them: `edgead calibrate --engine {engine_dir} --good ...`")
    return manifest
