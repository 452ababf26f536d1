"""`engines/<name>/manifest.json`: what was built, from what, for which device, with every file's hash.

Loading verifies the hashes of the files it is about to run and, for TensorRT, that this is the GPU
and TensorRT version the engine was built for: a mismatch is refused with a message to rebuild.
No torch here (edge path).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from edgead.errors import EdgeADError
from edgead.io import atomic_write_json, sha256_file
from edgead.preprocess import PreprocessSpec

MANIFEST = "manifest.json"
FORMAT = 1
BACKENDS = ("tensorrt", "onnxruntime")
PRECISIONS = ("fp16", "fp32")


def entry_fingerprint(manifest: dict[str, Any], entry: dict[str, Any]) -> str:
    """sha256 of what determines the scores: backend, precision, the engine files, the preprocessing."""
    files = {role: manifest["sha256"][name] for role, name in sorted(entry["files"].items())}
    payload = {"backend": entry["backend"], "precision": entry["precision"], "files": files,
               "preprocess": manifest["preprocess"], "map_size": manifest["map_size"],
               "device": entry.get("device")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def write_manifest(engine_dir: Path, manifest: dict[str, Any]) -> Path:
    """Hash every file the engines name, add each engine's fingerprint, write atomically."""
    names = sorted({n for e in manifest["engines"] for n in e["files"].values()})
    manifest["sha256"] = {n: sha256_file(engine_dir / n) for n in names}
    for entry in manifest["engines"]:
        entry["fingerprint"] = entry_fingerprint(manifest, entry)
    return atomic_write_json(engine_dir / MANIFEST, manifest)


def read_manifest(engine_dir: Path) -> dict[str, Any]:
    path = engine_dir / MANIFEST
    if not engine_dir.is_dir():
        raise EdgeADError(f"engine folder not found: {engine_dir}",
                          "build one with `edgead build-engine --model models/NAME`")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgeADError(f"{engine_dir} holds no {MANIFEST}: not an edgead engine folder",
                          "point --engine at the folder written by `edgead build-engine`") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgeADError(f"{path} is unreadable or corrupt", "rebuild with `edgead build-engine`") from exc
    if manifest.get("format") != FORMAT:
        raise EdgeADError(f"{path} has format {manifest.get('format')!r}, this edgead reads format {FORMAT}",
                          "rebuild the engine with this edgead version")
    return manifest


def preprocess_spec(manifest: dict[str, Any]) -> PreprocessSpec:
    """The preprocessing the engines of a manifest were built with (what run, calibrate and bench feed them)."""
    return PreprocessSpec.from_dict(manifest["preprocess"])


def engine_preprocessing(engine_dir: str | Path) -> PreprocessSpec:
    """The preprocessing of an engine folder, read from its checked manifest."""
    return preprocess_spec(read_manifest(Path(engine_dir)))


def verify_files(engine_dir: Path, manifest: dict[str, Any], entry: dict[str, Any]) -> None:
    for name in entry["files"].values():
        path = engine_dir / name
        if not path.is_file():
            raise EdgeADError(f"engine file {path} is missing", "rebuild with `edgead build-engine`")
        actual = sha256_file(path)
        if actual != manifest["sha256"].get(name):
            raise EdgeADError(f"engine file {path} does not match its manifest (sha256 {actual[:12]}..., "
                              f"expected {str(manifest['sha256'].get(name))[:12]}...): modified or corrupt",
                              "rebuild with `edgead build-engine`; never edit engine files by hand")
    if entry.get("fingerprint") != entry_fingerprint(manifest, entry):
        raise EdgeADError(f"{engine_dir / MANIFEST} was edited: its fingerprint does not match its contents",
                          "rebuild with `edgead build-engine`")


def tensorrt_usable() -> bool:
    """TensorRT and cuda-python importable (checked without touching a GPU)."""
    from edgead.backends.tensorrt import usable

    return usable()


def select_engine(manifest: dict[str, Any], backend: str = "auto", precision: str | None = None,
                  engine_dir: Path | None = None) -> dict[str, Any]:
    """Pick the engine entry to run: TensorRT where built and usable here, else ONNX Runtime."""
    if backend not in ("auto", *BACKENDS):
        raise EdgeADError(f"unknown backend {backend!r}", f"use auto, {', '.join(BACKENDS)}")
    if precision not in (None, *PRECISIONS):
        raise EdgeADError(f"unknown precision {precision!r}", f"use {' or '.join(PRECISIONS)}")
    entries = manifest["engines"]
    if backend == "auto":
        backend = "tensorrt" if tensorrt_usable() and any(e["backend"] == "tensorrt" for e in entries) else "onnxruntime"
    candidates = [e for e in entries if e["backend"] == backend]
    if not candidates:
        built = ", ".join(f"{e['backend']}/{e['precision']}" for e in entries)
        raise EdgeADError(f"this engine folder has no {backend} engine (it has: {built})",
                          f"rebuild with `edgead build-engine --backend {backend}` on this device")
    if precision is None:
        # TensorRT runs FP16 as built; on a CPU, ONNX Runtime's FP32 graph is the faster and exact one.
        precision = "fp16" if backend == "tensorrt" else "fp32"
        if not any(e["precision"] == precision for e in candidates):
            precision = candidates[0]["precision"]
    chosen = [e for e in candidates if e["precision"] == precision]
    if not chosen:
        raise EdgeADError(f"no {backend} engine in {precision} in this folder",
                          f"available: {', '.join(e['precision'] for e in candidates)}; or rebuild with --precision {precision}")
    entry = chosen[0]
    if engine_dir is not None:
        verify_files(engine_dir, manifest, entry)
    return entry
