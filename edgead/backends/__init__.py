"""Detector backends: one per runtime. `load_detector` picks one for an engine folder.

The Detector protocol (ARCHITECTURE.md rule 3): `infer(batch) -> (scores, maps)` on a preprocessed
NCHW float32 batch. Importing this package imports no torch and no TensorRT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Detector(Protocol):
    backend: str
    precision: str
    fingerprint: str           # identifies the engine that produced the scores (calibration checks it)
    max_batch: int

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """NCHW float32 preprocessed images -> (scores N float32, maps N x h x w float32)."""
        ...


def load_detector(engine_dir: str | Path, backend: str = "auto", precision: str | None = None,
                  threads: int | None = None) -> Detector:
    """Open an engine folder with the best usable backend (TensorRT, else ONNX Runtime).

    threads: ONNX Runtime's CPU threads (None: its default); TensorRT runs on the GPU and ignores it.
    """
    from edgead.backends.manifest import read_manifest, select_engine

    manifest = read_manifest(Path(engine_dir))
    entry = select_engine(manifest, backend, precision, Path(engine_dir))
    if entry["backend"] == "tensorrt":
        from edgead.backends.tensorrt import TensorRTDetector

        return TensorRTDetector(Path(engine_dir), manifest, entry)
    from edgead.backends.onnxruntime import OrtDetector

    return OrtDetector(Path(engine_dir), manifest, entry, threads=threads)
