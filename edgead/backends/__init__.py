"""Detector backends: one per runtime. `load_detector` picks one for an engine folder.

Each backend implements edgead.protocols.Detector: `infer(batch) -> (scores, maps)` on a
preprocessed NCHW float32 batch. Edge path: importing this package imports no torch and no TensorRT.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgead.errors import EdgeADError
from edgead.protocols import Detector

_log = logging.getLogger("edgead.engine")


def load_detector(engine_dir: str | Path, backend: str = "auto", precision: str | None = None,
                  threads: int | None = None) -> Detector:
    """Open an engine folder with the best usable backend (TensorRT, else ONNX Runtime; OpenVINO when asked).

    auto falls back to ONNX Runtime, with a warning saying why, where TensorRT cannot run or open its plans.

    threads: ONNX Runtime's or OpenVINO's CPU threads (None: every core); TensorRT runs on the GPU and ignores it.
    """
    from edgead.backends.manifest import read_manifest, select_engine

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
