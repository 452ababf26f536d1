"""TensorRT engines built from a small exported model, run against ONNX Runtime's FP32 graphs.

Runs only where TensorRT and an NVIDIA GPU are (tests/gpu/conftest.py skips it elsewhere).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from edgead.errors import EdgeADError

MAX_BATCH = 4


def _entry(manifest: dict[str, Any], backend: str) -> dict[str, Any]:
    return next(e for e in manifest["engines"] if e["backend"] == backend)


@pytest.fixture(scope="module")
def engine_folder(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Export the ONNX graphs (build-engine --model), then build the TensorRT plans on this GPU
    (build-engine --engine): a manifest with both backends, as a user gets it."""
    import tensorrt as trt

    from edgead.backends.manifest import read_manifest
    from edgead.export.build import build_engine, rebuild_tensorrt

    out = tmp_path_factory.mktemp("engine") / "tiny"
    build_engine(tiny_model, out, backend="onnxruntime", max_batch=MAX_BATCH, log=lambda s: None)
    precision = "fp16" if hasattr(trt.BuilderFlag, "FP16") else "fp32"   # TensorRT 11: FP16 needs FP16 ONNX
    rebuild_tensorrt(out, precision=precision, max_batch=MAX_BATCH, workspace_mib=512, log=lambda s: None)
    return out, read_manifest(out)


@pytest.fixture(scope="module")
def images(tiny_product: Path, tiny_model: Path) -> np.ndarray:
    """The synthetic product's test images (good and defective), preprocessed: 14 of them."""
    from edgead.data.images import read_image
    from edgead.data.mvtec import test_samples
    from edgead.model.artifact import load_config_from_model
    from edgead.preprocess import preprocess

    spec = load_config_from_model(tiny_model).input
    return np.stack([preprocess(read_image(s.path), spec) for s in test_samples(tiny_product)]).astype(np.float32)


@pytest.fixture(scope="module")
def detector(engine_folder: tuple[Path, dict[str, Any]]) -> Iterator[Any]:
    from edgead.backends.tensorrt import TensorRTDetector

    folder, manifest = engine_folder
    det = TensorRTDetector(folder, manifest, _entry(manifest, "tensorrt"))
    yield det
    det.close()


@pytest.fixture(scope="module")
def reference(engine_folder: tuple[Path, dict[str, Any]], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from edgead.backends.onnxruntime import OrtDetector

    folder, manifest = engine_folder
    ort = OrtDetector(folder, manifest, _entry(manifest, "onnxruntime"), providers=["CPUExecutionProvider"])
    return ort.infer(images)


def _tolerance(detector: Any) -> float:
    return 2e-2 if detector.precision == "fp16" else 1e-3


def test_entry_names_files_and_device(engine_folder: tuple[Path, dict[str, Any]]) -> None:
    from edgead.backends.tensorrt import gpu_identity, trt_version

    folder, manifest = engine_folder
    entry = _entry(manifest, "tensorrt")
    p = entry["precision"]
    assert entry["files"] == {"teacher": f"teacher.{p}.plan", "student": f"student.{p}.plan"}
    assert all((folder / name).is_file() for name in entry["files"].values())
    assert (folder / "timing.cache").is_file()
    assert entry["device"] == {**gpu_identity(), "tensorrt": trt_version(), "dla_core": None}
    assert re.fullmatch(r"\d+\.\d+", entry["device"]["compute_capability"])


def test_scores_and_maps_match_onnxruntime(detector: Any, reference: tuple[np.ndarray, np.ndarray],
                                           images: np.ndarray) -> None:
    ref_scores, ref_maps = reference
    scores, maps = detector.infer(images)
    assert scores.dtype == np.float32 and scores.shape == ref_scores.shape == (len(images),)
    assert maps.dtype == np.float32 and maps.shape == ref_maps.shape and maps.ndim == 3
    tol = _tolerance(detector)
    relative = np.abs(scores - ref_scores) / np.maximum(np.abs(ref_scores), 1e-6)
    assert relative.max() <= tol, (scores, ref_scores)
    # maps as tight as scores: within tol of the reference maps' spread (not a multiple of their peak)
    assert np.abs(maps - ref_maps).max() <= tol * float(np.ptp(ref_maps)), np.abs(maps - ref_maps).max()


def test_same_decisions_at_a_threshold_mid_scores(detector: Any, reference: tuple[np.ndarray, np.ndarray],
                                                  images: np.ndarray) -> None:
    ref_scores, _ = reference
    s = np.sort(ref_scores)
    lo, hi = len(s) // 4, 3 * len(s) // 4
    k = lo + int(np.argmax(np.diff(s[lo:hi + 1])))      # the widest gap in the middle half
    threshold = (s[k] + s[k + 1]) / 2
    scores, _ = detector.infer(images)
    assert np.array_equal(scores > threshold, ref_scores > threshold)
    assert 0 < int((scores > threshold).sum()) < len(scores)


def test_engine_for_another_device_is_refused(engine_folder: tuple[Path, dict[str, Any]]) -> None:
    from edgead.backends.tensorrt import TensorRTDetector

    folder, manifest = engine_folder
    for key, value in (("gpu", "Some Other GPU"), ("tensorrt", "7.0.0"), ("compute_capability", "5.3")):
        entry = copy.deepcopy(_entry(manifest, "tensorrt"))
        entry["device"][key] = value
        with pytest.raises(EdgeADError) as err:
            TensorRTDetector(folder, manifest, entry)
        assert err.value.message.startswith("engine built for ") and " but this is " in err.value.message
        assert value in err.value.message
        assert err.value.hint.startswith("rebuild on this device: edgead build-engine --model ")


def test_buffers_are_allocated_and_bound_once(detector: Any, images: np.ndarray) -> None:
    before = detector.bound_addresses()
    for n in (1, MAX_BATCH, len(images), 2):
        detector.infer(images[:n])
    assert detector.bound_addresses() == before
    teacher, student = before["teacher"], before["student"]
    assert teacher["image"] == student["image"] != 0
    for name in detector.feature_names:          # the student reads the teacher's outputs in place
        assert teacher[name] == student[name] != 0


def test_batches_larger_than_max_batch_are_split(detector: Any, images: np.ndarray) -> None:
    assert len(images) > MAX_BATCH and len(images) % MAX_BATCH != 0
    scores, maps = detector.infer(images)
    singles = [detector.infer(images[i:i + 1]) for i in range(len(images))]
    assert scores.shape == (len(images),) and maps.shape[0] == len(images)
    tol = _tolerance(detector)
    np.testing.assert_allclose(scores, np.concatenate([s for s, _ in singles]), rtol=tol, atol=1e-6)
    np.testing.assert_allclose(maps, np.concatenate([m for _, m in singles]), rtol=tol,
                               atol=tol * float(np.abs(maps).max()))


def test_empty_and_wrongly_shaped_batches(detector: Any, images: np.ndarray) -> None:
    scores, maps = detector.infer(images[:0])
    assert scores.shape == (0,) and maps.shape[0] == 0 and maps.ndim == 3
    with pytest.raises(EdgeADError, match="input batch has shape"):
        detector.infer(images[:, :, :8])


def test_close_frees_and_then_refuses(engine_folder: tuple[Path, dict[str, Any]], images: np.ndarray) -> None:
    from edgead.backends.tensorrt import TensorRTDetector

    folder, manifest = engine_folder
    with TensorRTDetector(folder, manifest, _entry(manifest, "tensorrt")) as det:
        det.infer(images[:2])
    det.close()                                    # a second close is a no-op
    with pytest.raises(EdgeADError, match="closed"):
        det.infer(images[:1])


def test_load_detector_opens_the_tensorrt_engine(engine_folder: tuple[Path, dict[str, Any]]) -> None:
    from edgead.backends import load_detector
    from edgead.backends.tensorrt import TensorRTDetector

    folder, manifest = engine_folder
    det = load_detector(folder, backend="tensorrt")
    assert isinstance(det, TensorRTDetector)
    assert det.fingerprint == _entry(manifest, "tensorrt")["fingerprint"]
    det.close()


def test_build_engine_on_the_device_from_an_exported_folder(tiny_model: Path, tmp_path: Path,
                                                             images: np.ndarray) -> None:
    """The Jetson path: `build-engine --model` on a workstation (here with TensorRT hidden), then
    `build-engine --engine` on the device; the TensorRT engine agrees with ONNX Runtime's FP32 graph."""
    import edgead.export.build as be
    from edgead.backends import load_detector
    from edgead.export.build import rebuild_tensorrt

    out = tmp_path / "exported"
    be.build_engine(tiny_model, out, backend="onnxruntime", max_batch=MAX_BATCH, log=lambda s: None)
    manifest = rebuild_tensorrt(out, max_batch=MAX_BATCH, log=lambda s: None)
    assert manifest["engines"][0]["backend"] == "tensorrt"
    trt_det = load_detector(out, backend="tensorrt")
    ort_det = load_detector(out, backend="onnxruntime", precision="fp32")
    s_trt, _ = trt_det.infer(images)
    s_ort, _ = ort_det.infer(images)
    assert float(np.abs(s_trt - s_ort).max()) <= _tolerance(trt_det) * float(np.ptp(s_ort)) + 1e-6
    trt_det.close()
