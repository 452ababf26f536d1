"""INT8 graphs for CPU boxes: static QDQ quantisation of the teacher and student, calibrated on good parts.

The FP32 ONNX pair is quantised with ONNX Runtime's static quantiser (QDQ format: QuantizeLinear /
DequantizeLinear pairs around each quantised op), which ONNX Runtime runs with its INT8 kernels,
OpenVINO reads as its own INT8, and TensorRT 10+ builds with explicit quantisation. Activations are
unsigned 8-bit, weights signed 8-bit per output channel (the combination x86's VNNI kernels run).

The scoring head stays FP32: it subtracts two feature maps that agree to a few percent on a good
part, and an 8-bit step there would be the whole signal. Every node from the head's first op on is
left out of the quantisation; the students' and teachers' backbones are quantised whole.

The activation ranges come from good parts only (min/max over the images), the same images the user
calibrates the reject threshold with: defects are what the ranges must not be fitted to.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from edgead.errors import EdgeADError
from edgead.preprocess import PreprocessSpec

HEAD_PREFIX = "/head/"        # torch.onnx scope names of DualKD.head's ops in the student graph
MAX_IMAGES = 200              # more adds build time, not accuracy: min/max settles within ~50 good parts
MIN_IMAGES = 8
BATCH = 8
INT8_SUFFIX = ".int8"
# How activation ranges are read from the good parts (onnxruntime.quantization.CalibrationMethod).
# MinMax: chosen on held-out good parts (benchmarks/int8_calibration.py, docs/benchmarks.md).
CALIBRATION = "MinMax"


def calibration_images(folder: str | Path, spec: PreprocessSpec, log: Callable[[str], None]) -> np.ndarray:
    """Up to MAX_IMAGES good parts from `folder` (a folder, or an MVTec root's train/good), evenly
    spread over the folder, preprocessed like the engine's input, in whole batches of BATCH (MIN_IMAGES
    >= BATCH keeps one); unreadable ones are skipped and named."""
    from edgead.data.images import load_batch
    from edgead.decide.calibrate import good_paths

    paths, source, _ = good_paths(folder)
    if len(paths) > MAX_IMAGES:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, MAX_IMAGES).round().astype(int)]
    images, kept, bad = load_batch(paths, spec, skip_bad=True)
    for p in bad:
        log(f"INT8 calibration: skipped unreadable image {p}")
    if len(kept) < MIN_IMAGES:
        raise EdgeADError(f"--calib-images {folder}: {len(kept)} readable good images in {source}, INT8 "
                          f"calibration needs at least {MIN_IMAGES}",
                          "give a folder of good parts from the line (the ones you calibrate the threshold with)")
    # whole batches only: the histogram calibrators stack the batches' outputs, a shorter last one breaks them
    return images[:len(images) - len(images) % BATCH]


def head_nodes(graph: Any) -> list[str]:
    """Names of the head's nodes and of every node downstream of them (the map resize, the score):
    what stays FP32. Found from the graph's own edges, so a head op torch names outside /head/ is kept too."""
    tainted: set[str] = set()
    names: list[str] = []
    for node in graph.node:                      # ONNX graphs are topologically sorted
        if node.name.startswith(HEAD_PREFIX) or any(i in tainted for i in node.input if i):
            tainted.update(node.output)
            names.append(node.name)
    return names


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader: batches of the graph's inputs."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]]) -> None:
        self._batches = batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _teacher_batches(images: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
    for i in range(0, len(images), BATCH):
        yield {"image": images[i:i + BATCH]}


def _student_batches(images: np.ndarray, teacher: Any, names: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """The student graph's inputs: the image and the FP32 teacher's features of it (what it sees at run time
    from the FP32 teacher; the INT8 teacher's features differ by less than their range's 8-bit step)."""
    for i in range(0, len(images), BATCH):
        x = images[i:i + BATCH]
        yield {"image": x, **dict(zip(names, teacher.run(names, {"image": x})))}


def _quantize(source: Path, target: Path, reader: _Reader, exclude: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quant_log = logging.getLogger()               # the quantiser advises pre-processing on the root logger
    level = quant_log.level
    quant_log.setLevel(logging.ERROR)
    try:
        quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=getattr(CalibrationMethod, CALIBRATION), nodes_to_exclude=exclude,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    finally:
        quant_log.setLevel(level)


def quantize_pair(out_dir: Path, files: dict[str, str], feature_names: list[str],
                  images: np.ndarray) -> dict[str, str]:
    """Write teacher.int8.onnx and student.int8.onnx beside the FP32 pair `files`; returns their names."""
    import onnx
    import onnxruntime as ort

    from edgead.backends.onnxruntime import session_options

    out = {role: Path(name).stem + INT8_SUFFIX + ".onnx" for role, name in files.items()}
    teacher = ort.InferenceSession(str(out_dir / files["teacher"]), session_options(),
                                   providers=["CPUExecutionProvider"])
    _quantize(out_dir / files["teacher"], out_dir / out["teacher"], _Reader(_teacher_batches(images)), [])
    student = onnx.load(str(out_dir / files["student"]))
    _quantize(out_dir / files["student"], out_dir / out["student"],
              _Reader(_student_batches(images, teacher, feature_names)), head_nodes(student.graph))
    for name in out.values():
        graph = onnx.load(str(out_dir / name))
        props = {p.key: p.value for p in graph.metadata_props}
        if props.get("precision") != "int8":           # the FP32 graph's metadata, carried over: say what it is now
            onnx.helper.set_model_props(graph, {**props, "precision": "int8"})
            onnx.save(graph, str(out_dir / name))
        onnx.checker.check_model(str(out_dir / name))
    return out
