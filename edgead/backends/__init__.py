"""Detector backends: one per runtime. `load_detector` picks one for an engine folder, or opens a
model served by Triton for a `triton://host:8001/MODEL` URL (backends/triton.py).

Each backend implements edgead.protocols.Detector: `infer(batch) -> (scores, maps)` on a
preprocessed NCHW float32 batch. Edge path: importing this package imports no torch and no TensorRT.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

from edgead.errors import EdgeADError
from edgead.protocols import Detector

_log = logging.getLogger("edgead.engine")


def load_detector(engine_dir: str | Path, backend: str = "auto", precision: str | None = None,
                  threads: int | None = None) -> Detector:
    """Open an engine folder with the best usable backend (TensorRT, else ONNX Runtime; OpenVINO when asked).

    auto falls back to ONNX Runtime, with a warning saying why, where TensorRT cannot run or open its plans.

    threads: ONNX Runtime's or OpenVINO's CPU threads (None: every core); TensorRT runs on the GPU and ignores it.
    A `triton://` URL (a str) opens the served model; it runs what the server serves, so backend and
    precision may only name that (or be left to auto).
    """
    from edgead.backends.manifest import read_manifest, select_engine
    from edgead.backends.triton import is_triton_url

    if is_triton_url(engine_dir):
        return _served(str(engine_dir), backend, precision)

    manifest = read_manifest(Path(engine_dir))
    entry = select_engine(manifest, backend, precision, Path(engine_dir))
    if entry["backend"] == "tensorrt":
        from edgead.backends.tensorrt import TensorRTDetector

        try:
            return TensorRTDetector(Path(engine_dir), manifest, entry)
        except EdgeADError as exc:
            if backend != "auto":
                raise
            # auto: a plan this GPU cannot open (another GPU, out of memory) still leaves a working line
            _log.warning("the TensorRT engine could not be opened (%s); running ONNX Runtime", exc.message)
            entry = select_engine(manifest, "onnxruntime", precision, Path(engine_dir))
    if entry["backend"] == "openvino":
        from edgead.backends.openvino import OpenVINODetector

        return OpenVINODetector(Path(engine_dir), manifest, entry, threads=threads)
    from edgead.backends.onnxruntime import OrtDetector

    return OrtDetector(Path(engine_dir), manifest, entry, threads=threads)


def _served(url: str, backend: str, precision: str | None) -> Detector:
    from edgead.backends.triton import TritonDetector

    if backend not in ("auto", "triton"):
        raise EdgeADError(f"backend {backend!r} was asked for, but {url} is a model served by Triton",
                          "leave the backend to auto for a triton:// detector (the server runs its own)")
    detector = TritonDetector(url)
    if precision not in (None, detector.precision):
        detector.close()
        raise EdgeADError(f"precision {precision} was asked for, but {url} serves {detector.precision}",
                          "leave the precision out, or export and serve that precision "
                          "(`edgead build-engine --engine E --triton-repo DIR --precision P`)")
    return detector


def engine_manifest(engine: str | Path, detector: Detector | None = None) -> Dict[str, Any]:
    """The checked manifest of an engine: its folder's, or for a triton:// URL the one the server
    carries (read and checked when `detector` was opened)."""
    from edgead.backends.manifest import read_manifest
    from edgead.backends.triton import is_triton_url

    if not is_triton_url(engine):
        return read_manifest(Path(engine))
    manifest = getattr(detector, "manifest", None)
    if not isinstance(manifest, dict):
        raise EdgeADError(f"{engine} is a served model, and no Triton detector for it is open",
                          "open it with load_detector first")
    return manifest
