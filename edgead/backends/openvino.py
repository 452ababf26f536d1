"""OpenVINO backend: Intel's CPU runtime, the one most industrial PCs on a line can run best.

It reads the engine folder's own ONNX graphs (FP32, or the INT8 QDQ pair, which its CPU plugin runs
with INT8 kernels) and compiles them when the detector opens; there is no separate file to build, so
an OpenVINO entry names the same files as the ONNX Runtime entry of its precision. It still has its
own entry and fingerprint: its scores differ from ONNX Runtime's in the last digits, so a threshold
is calibrated for it.
Edge path: imported only when an OpenVINO engine is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgead.backends.batches import checked_batch, infer_in_chunks
from edgead.errors import EdgeADError

INSTALL = 'pip install "edgead[openvino]"'


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise EdgeADError("OpenVINO is not installed", f"{INSTALL}, or use --backend onnxruntime") from exc
    return openvino


def usable() -> bool:
    """OpenVINO imports and has a CPU device."""
    try:
        return "CPU" in _import_openvino().Core().available_devices
    except Exception:  # a broken install raises its own types; either way it cannot run here
        return False


def version() -> str:
    return str(_import_openvino().__version__)


def compile_config(threads: int | None) -> dict[str, Any]:
    """Latency first (one part at a time on the line), and FP32 arithmetic where the graph is FP32:
    on CPUs with bfloat16 units the plugin would otherwise run the FP32 graph in bf16 (0.2 % score shifts)."""
    from edgead.backends.onnxruntime import default_threads

    return {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads or default_threads()),
            "INFERENCE_PRECISION_HINT": "f32"}


class OpenVINODetector:
    """Detector protocol over the teacher and student ONNX graphs, compiled by OpenVINO's CPU plugin."""

    backend = "openvino"

    def __init__(self, engine_dir: Path, manifest: dict[str, Any], entry: dict[str, Any],
                 threads: int | None = None) -> None:
        ov = _import_openvino()
        self.precision = entry["precision"]
        self.fingerprint = entry["fingerprint"]
        self.max_batch = int(entry["max_batch"])
        self.input_shape = tuple(manifest["input"]["shape"][1:])
        self.feature_names: list[str] = manifest["feature_names"]
        self.on_gpu = False
        core = ov.Core()
        config = compile_config(threads)
        try:
            self._teacher = core.compile_model(str(engine_dir / entry["files"]["teacher"]), "CPU", config)
            self._student = core.compile_model(str(engine_dir / entry["files"]["student"]), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own for unloadable graphs
            raise EdgeADError(f"OpenVINO could not load the engine in {engine_dir}: {exc}".splitlines()[0],
                              "rebuild with `edgead build-engine`, or use --backend onnxruntime") from exc
        self._teacher_request = self._teacher.create_infer_request()
        self._student_request = self._student.create_infer_request()
        self._features = [self._teacher.output(n) for n in self.feature_names]
        self._map, self._score = self._student.output("map"), self._student.output("score")

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feats = self._teacher_request.infer({"image": batch})
        inputs = {"image": batch, **{n: feats[port] for n, port in zip(self.feature_names, self._features)}}
        out = self._student_request.infer(inputs)
        # The request's output buffers are reused by the next call: copy them out.
        return np.array(out[self._score], np.float32), np.array(out[self._map], np.float32)

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return infer_in_chunks(self._run, checked_batch(batch, self.input_shape), self.max_batch)
