"""Detector backends: one per runtime. `load_detector` picks one for an engine folder.

Each backend implements edgead.protocols.Detector: `infer(batch) -> (scores, maps)` on a
preprocessed NCHW float32 batch. Edge path: importing this package imports no torch and no TensorRT.
"""

from __future__ import annotations

from pathlib import Path

from edgead.protocols import Detector


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
