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
from edgead.backends.manifest import (BACKENDS, FORMAT, OPENVINO_PRECISIONS, PRECISIONS, ROLES, read_manifest,
                                      tensorrt_unusable_reason, verify_files, write_manifest)
from edgead.decide.progress import Progress, info
from edgead.errors import EdgeADError
from edgead.export.tensorrt_build import TIMING_CACHE
from edgead.io import MIN_FREE_MB, WRITE_ERRORS, check_input, check_output, sha256_file, write_reason
from edgead.preprocess import PreprocessSpec

NOT_USABLE = "TensorRT is not usable on this machine"


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise EdgeADError(f"unknown precision {precision!r}", f"use {' or '.join(PRECISIONS)}")


def _check_max_batch(max_batch: int) -> None:
    if max_batch < 1:
        raise EdgeADError(f"--max-batch must be >= 1, got {max_batch}", "8 suits most lines")


def _check_tensorrt(hint: str) -> None:
    reason = tensorrt_unusable_reason()
    if reason is not None:
        raise EdgeADError(f"{NOT_USABLE}: {reason}", hint)


def _onnx_entries(files: dict[str, dict[str, str]], max_batch: int) -> list[dict[str, Any]]:
    """The ONNX Runtime entries, one per precision -> {role: file} in `files`."""
    import onnxruntime

    return [{"backend": "onnxruntime", "precision": precision, "runtime_version": onnxruntime.__version__,
             "files": dict(pair), "max_batch": max_batch} for precision, pair in files.items()]


def openvino_entries(engine_dir: Path, files: dict[str, dict[str, str]], max_batch: int,
                     log: Callable[[str], None]) -> list[dict[str, Any]]:
    """OpenVINO entries for the precisions of `files` it runs (FP32, INT8), each graph compiled once
    here so that a graph OpenVINO cannot read is found at build time, not on the line. No entries where
    OpenVINO is not installed (then `build-engine --engine DIR --backend openvino` adds them on the box)."""
    from edgead.backends import openvino as ov_backend

    if not ov_backend.usable():
        return []
    import openvino

    core = openvino.Core()
    entries = []
    for precision in OPENVINO_PRECISIONS:
        if precision not in files:
            continue
        for name in files[precision].values():
            try:
                core.compile_model(str(engine_dir / name), "CPU", ov_backend.compile_config(1))
            except Exception as exc:  # OpenVINO's own RuntimeError subclasses
                log(f"OpenVINO cannot run {name} ({str(exc).splitlines()[0]}); no openvino/{precision} engine")
                break
        else:
            entries.append({"backend": "openvino", "precision": precision, "runtime_version": ov_backend.version(),
                            "files": dict(files[precision]), "max_batch": max_batch})
    return entries


def _check_calibration(precision: str, calib_images: str | Path | None) -> Path | None:
    if calib_images is None:
        if precision == "int8":
            raise EdgeADError("--precision int8 needs --calib-images: INT8 ranges are measured on good parts",
                              "add --calib-images DIR with 50-200 good parts from the line (the ones you calibrate "
                              "the threshold with)")
        return None
    return check_input(calib_images, kind="dir", what="--calib-images",
                       hint="give a folder of good parts from the line, or an MVTec category root")


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
                 calib_images: str | Path | None = None, log: Callable[[str], None] = info) -> dict[str, Any]:
    """`build-engine --model`: export the model's ONNX graphs and build the engines; returns the manifest.

    calib_images: good parts to quantise with; given, the folder gets INT8 engines too (and
    `precision="int8"` builds TensorRT's from the same QDQ graphs).
    An existing, non-empty `out` is refused unless `overwrite`; then it is replaced only once the new
    folder is complete. Every path and the model artifact are checked before the export starts."""
    model_dir = check_input(model_dir, kind="dir", what="--model",
                            hint="give the model folder written by `edgead train --out`")
    out = Path(out) if out else Path("engines") / model_dir.name
    if backend not in ("auto", *BACKENDS):
        raise EdgeADError(f"unknown backend {backend!r}", f"use auto, {' or '.join(BACKENDS)}")
    _check_precision(precision)
    _check_max_batch(max_batch)
    calib_dir = _check_calibration(precision, calib_images)
    if backend == "tensorrt":
        _check_tensorrt('install it with pip install "edgead[trt]" on the Jetson/GPU box, or use --backend onnxruntime')
    trt_reason = None if backend == "tensorrt" else tensorrt_unusable_reason() if backend == "auto" else "not asked for"
    use_trt = backend == "tensorrt" or trt_reason is None
    from edgead.export.onnx import export_onnx, export_onnx_fp16   # torch: the workstation side
    from edgead.model.artifact import WEIGHTS_FILE, load_model

    check_output(out, kind="dir", what="--out", overwrite=overwrite,
                 min_free_mb=_free_mb_needed(model_dir / WEIGHTS_FILE))

    start = time.perf_counter()
    model, metadata = load_model(model_dir, "cpu")       # a bad config or weights file stops here
    # The steps, each shown as it finishes: FP32 and FP16 export, INT8 calibration, OpenVINO's check, TensorRT.
    bar = Progress("build-engine", 3 + (calib_dir is not None) + use_trt, "steps")
    with bar, _staging(out, (TIMING_CACHE,) if use_trt else ()) as stage:
        provenance = {"model_fingerprint": sha256_file(model_dir / WEIGHTS_FILE),
                      "data_fingerprint": str(metadata["data"]["fingerprint"])}
        graphs = export_onnx(model, stage, map_size, provenance)
        bar.update(1, note="FP32 ONNX exported")
        fp16 = export_onnx_fp16(model, stage, map_size, provenance)
        bar.update(1, note="FP16 ONNX exported")
        files = {precision: {role: pair[role]["file"] for role in ROLES} for precision, pair in
                 (("fp32", graphs), ("fp16", fp16))}
        if calib_dir is not None:
            files["int8"] = _quantize(stage, files["fp32"], graphs["feature_names"], calib_dir,
                                      model.cfg.input, log)
            bar.update(1, note="INT8 graphs calibrated")
        engines = _onnx_entries(files, max_batch) + openvino_entries(stage, files, max_batch, log)
        bar.update(1, note="OpenVINO checked")
        if use_trt:
            from edgead.export.tensorrt_build import build_engines

            feature_shapes = {n: tuple(shape) for n, shape in graphs["feature_shapes"].items()}
            try:
                engines.insert(0, build_engines(
                    stage, files["int8" if precision == "int8" else "fp32"], precision, max_batch,
                    (model.cfg.input.height, model.cfg.input.width), feature_shapes, workspace_mib, dla_core,
                    files["fp16"]))
            except EdgeADError as exc:
                if backend == "tensorrt":
                    raise
                trt_reason = f"its build failed: {exc.message}"     # auto: the ONNX Runtime folder is still whole
            bar.update(1, note="TensorRT built" if trt_reason is None else "TensorRT failed")
        manifest = write_manifest(stage, _manifest(model_dir, model, metadata, graphs, engines))
    built = ", ".join(f"{e['backend']}/{e['precision']}" for e in engines)
    log(f"engines written to {out} ({built}) in {time.perf_counter() - start:.1f} s"
        + ("" if trt_reason is None or backend != "auto" else
           f"; TensorRT not usable here ({trt_reason}), ONNX Runtime will run them"))
    return manifest


def _quantize(stage: Path, fp32: dict[str, str], feature_names: list[str], calib_dir: Path, spec: PreprocessSpec,
              log: Callable[[str], None]) -> dict[str, str]:
    from edgead.export.quantize import calibration_images, quantize_pair

    start = time.perf_counter()
    images = calibration_images(calib_dir, spec, log)
    files = quantize_pair(stage, fp32, feature_names, images)
    log(f"INT8 graphs calibrated on {len(images)} good parts from {calib_dir} in {time.perf_counter() - start:.1f} s")
    return files


def _onnx_entry(manifest: dict[str, Any], precision: str) -> dict[str, Any] | None:
    return next((e for e in manifest["engines"] if e["backend"] == "onnxruntime" and e["precision"] == precision), None)


def rebuild_tensorrt(engine_dir: str | Path, *, precision: str = "fp16", max_batch: int | None = None,
                     workspace_mib: int = 1024, dla_core: int | None = None,
                     log: Callable[[str], None] = info) -> dict[str, Any]:
    """`build-engine --engine`: build (or replace) the TensorRT entry of an engine folder on this device;
    returns the manifest. Adding to the folder is what this does, so it needs no overwrite; the folder
    must be writable and have room for the plans, checked before the build."""
    engine_dir = check_input(engine_dir, kind="dir", what="--engine",
                             hint="give an engine folder exported with `edgead build-engine --model`")
    manifest = read_manifest(engine_dir)
    _check_precision(precision)
    _check_tensorrt('on a Jetson, TensorRT comes with JetPack; then pip install "edgead[trt]"')
    source = _onnx_entry(manifest, "int8" if precision == "int8" else "fp32")   # the graphs to build from
    if source is None:
        what = "INT8 (QDQ)" if precision == "int8" else "FP32"
        raise EdgeADError(f"{engine_dir} has no {what} ONNX graphs to build TensorRT engines from",
                          "export the folder again on the workstation: `edgead build-engine --model models/NAME"
                          + (" --calib-images DIR`" if precision == "int8" else "`"))
    verify_files(engine_dir, manifest, source)   # a half-copied or edited folder must not become an engine
    fp16 = _onnx_entry(manifest, "fp16")
    if fp16 is not None:
        verify_files(engine_dir, manifest, fp16)
    trt = next((e for e in manifest["engines"] if e["backend"] == "tensorrt"), None)
    batch = int(max_batch or (trt or source)["max_batch"])      # default: the folder's
    _check_max_batch(batch)
    plans_mb = sum((engine_dir / n).stat().st_size for n in source["files"].values()) / 2**20
    check_output(engine_dir, kind="dir", what="--engine", overwrite=True, min_free_mb=MIN_FREE_MB + plans_mb)
    from edgead.export.tensorrt_build import build_engines

    start = time.perf_counter()
    h, w = manifest["input"]["shape"][2:]
    entry = build_engines(engine_dir, dict(source["files"]), precision, batch, (int(h), int(w)),
                          {n: tuple(s) for n, s in manifest["feature_shapes"].items()}, workspace_mib, dla_core,
                          dict(fp16["files"]) if fp16 else None)
    manifest["engines"] = [entry] + [e for e in manifest["engines"] if e["backend"] != "tensorrt"]
    manifest = write_manifest(engine_dir, manifest)     # the ONNX Runtime entries and fingerprints unchanged
    log(f"TensorRT {entry['device'].get('tensorrt', '')} {precision} engines built in {engine_dir} in "
        f"{time.perf_counter() - start:.1f} s; calibrate them: `edgead calibrate --engine {engine_dir} --good ...`")
    return manifest


def add_openvino(engine_dir: str | Path, *, log: Callable[[str], None] = info) -> dict[str, Any]:
    """`build-engine --engine DIR --backend openvino`: add (or renew) the OpenVINO entries of a folder on the
    box that runs them, from its own FP32 and INT8 ONNX graphs; returns the manifest. No torch needed."""
    from edgead.backends import openvino as ov_backend

    engine_dir = check_input(engine_dir, kind="dir", what="--engine",
                             hint="give an engine folder exported with `edgead build-engine --model`")
    manifest = read_manifest(engine_dir)
    if not ov_backend.usable():
        raise EdgeADError("OpenVINO is not usable on this machine (not installed, or no CPU device)",
                          f"{ov_backend.INSTALL}, then run this again")
    onnx_entries = {p: e for p in OPENVINO_PRECISIONS if (e := _onnx_entry(manifest, p)) is not None}
    for entry in onnx_entries.values():
        verify_files(engine_dir, manifest, entry)
    check_output(engine_dir, kind="dir", what="--engine", overwrite=True, min_free_mb=MIN_FREE_MB)
    batch = max(int(e["max_batch"]) for e in onnx_entries.values())
    added = openvino_entries(engine_dir, {p: dict(e["files"]) for p, e in onnx_entries.items()}, batch, log)
    if not added:
        raise EdgeADError(f"OpenVINO could not read the graphs of {engine_dir}",
                          "export the folder again with this edgead version, or use --backend onnxruntime")
    manifest["engines"] = [e for e in manifest["engines"] if e["backend"] != "openvino"] + added
    manifest = write_manifest(engine_dir, manifest)
    log(f"OpenVINO {added[0]['runtime_version']} engines ({', '.join(e['precision'] for e in added)}) added to "
        f"{engine_dir}; calibrate them: `edgead calibrate --engine {engine_dir} --backend openvino --good ...`")
    return manifest
