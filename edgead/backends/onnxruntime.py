"""ONNX Runtime backend: the CPU path everywhere, CUDA/TensorRT execution providers where installed.

Two sessions, teacher then student+head. With the CUDA provider the teacher's features are bound as
device OrtValues and fed to the student without a host copy; on the CPU they are plain arrays.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgead.backends.batches import checked_batch, infer_in_chunks
from edgead.errors import EdgeADError

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise EdgeADError("ONNX Runtime is not installed", "pip install onnxruntime (or onnxruntime-gpu)") from exc
    return ort


def default_threads() -> int:
    """Every core this process may use (`threads` in the run YAML lowers it to leave a core free)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def session_options(threads: int | None = None) -> Any:
    """The teacher and student sessions each own a thread pool. With ONNX Runtime's default
    spin-waiting, the pool that just finished keeps its threads spinning on the cores the other
    session needs: on the 2-core CI box 2 spinning threads took 20-29 ms at batch 1, no better than
    1 thread (19-20 ms); without spinning 2 threads take 13 ms (benchmarks/ort_threads.py)."""
    ort = _import_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or default_threads()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def choose_providers(requested: list[str] | None = None) -> list[str]:
    ort = _import_ort()
    available = ort.get_available_providers()
    wanted = requested or list(PREFERRED_PROVIDERS)
    chosen = [p for p in wanted if p in available]
    if not chosen:
        raise EdgeADError(f"none of the ONNX Runtime providers {wanted} is available here (have {available})",
                          "install onnxruntime-gpu for CUDA, or leave the provider choice to edgead")
    return chosen


class OrtDetector:
    """Detector protocol over the teacher and student ONNX graphs of an engine folder."""

    backend = "onnxruntime"

    def __init__(self, engine_dir: Path, manifest: dict[str, Any], entry: dict[str, Any],
                 providers: list[str] | None = None, threads: int | None = None) -> None:
        ort = _import_ort()
        self.precision = entry["precision"]
        self.fingerprint = entry["fingerprint"]
        self.max_batch = int(entry["max_batch"])
        self.input_shape = tuple(manifest["input"]["shape"][1:])
        self.feature_names: list[str] = manifest["feature_names"]
        self.providers = choose_providers(providers)
        so = session_options(threads)
        try:
            self.teacher = ort.InferenceSession(str(engine_dir / entry["files"]["teacher"]), so, providers=self.providers)
            self.student = ort.InferenceSession(str(engine_dir / entry["files"]["student"]), so, providers=self.providers)
        except Exception as exc:  # ORT raises its own exception types for unloadable graphs
            raise EdgeADError(f"ONNX Runtime could not load the engine in {engine_dir}: {exc}".splitlines()[0],
                              "rebuild with `edgead build-engine`") from exc
        self.on_gpu = self.providers[0] in GPU_PROVIDERS

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.on_gpu:
            return self._run_bound(batch)
        feats = self.teacher.run(self.feature_names, {"image": batch})
        amap, score = self.student.run(["map", "score"], {"image": batch, **dict(zip(self.feature_names, feats))})
        return score, amap

    def _run_bound(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CUDA/TensorRT provider: the features stay on the GPU between the two sessions."""
        ort = _import_ort()
        image = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0)
        tb = self.teacher.io_binding()
        tb.bind_ortvalue_input("image", image)
        for name in self.feature_names:
            tb.bind_output(name, "cuda", 0)
        self.teacher.run_with_iobinding(tb)
        sb = self.student.io_binding()
        sb.bind_ortvalue_input("image", image)
        for name, value in zip(self.feature_names, tb.get_outputs()):
            sb.bind_ortvalue_input(name, value)
        sb.bind_output("map", "cpu")
        sb.bind_output("score", "cpu")
        self.student.run_with_iobinding(sb)
        amap, score = sb.copy_outputs_to_cpu()
        return score, amap

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return infer_in_chunks(self._run, checked_batch(batch, self.input_shape), self.max_batch)
