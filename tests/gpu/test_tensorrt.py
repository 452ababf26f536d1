"""TensorRT engines built from a small exported model, run against ONNX Runtime's FP32 graphs.

Runs only where TensorRT and an NVIDIA GPU are (tests/gpu/conftest.py skips it elsewhere).
FP16 engines are held to 2 % of the reference's spread, for the scores and the maps alike.
"""

from __future__ import annotations

import copy
import logging
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from edgead.errors import EdgeADError

MAX_BATCH = 4


def _entry(manifest: dict[str, Any], backend: str) -> dict[str, Any]:
    return next(e for e in manifest["engines"] if e["backend"] == backend)


@pytest.fixture(scope="module")
def exported(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ONNX graphs and manifest of `build-engine --model` (ONNX Runtime only): what a Jetson gets."""
    from edgead.export.build import build_engine

    out = tmp_path_factory.mktemp("exported") / "tiny"
    build_engine(tiny_model, out, backend="onnxruntime", max_batch=MAX_BATCH, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def engine_folder(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The TensorRT FP16 plans built on this GPU (build-engine --engine) beside the exported graphs: a
    manifest with both backends, as a user gets it. TensorRT 11 builds FP16 strongly typed, from the
    FP16 ONNX graphs; 8.x and 10 with the FP16 builder flag and the head pinned to FP32."""
    from edgead.backends.manifest import read_manifest
    from edgead.export.build import rebuild_tensorrt

    out = _copy_export(exported, tmp_path_factory.mktemp("engine"))
    rebuild_tensorrt(out, precision="fp16", max_batch=MAX_BATCH, workspace_mib=512, log=lambda s: None)
    return out, read_manifest(out)


def _copy_export(exported: Path, parent: Path) -> Path:
    """A folder of its own with the exported graphs (no plans, no timing cache)."""
    out = parent / "tiny"
    shutil.copytree(exported, out, ignore=shutil.ignore_patterns("*.plan", "timing.cache"))
    return out


def _build(folder: Path, precision: str = "fp16", max_batch: int = MAX_BATCH, dla_core: int | None = None,
           strongly_typed: bool | None = None) -> Any:
    """TensorRT plans built straight from build_engines (the options build-engine does not expose),
    opened as a detector on an entry of their own."""
    from edgead.backends.manifest import read_manifest
    from edgead.backends.tensorrt import TensorRTDetector
    from edgead.export.tensorrt_build import build_engines

    manifest = read_manifest(folder)
    onnx = {e["precision"]: dict(e["files"]) for e in manifest["engines"] if e["backend"] == "onnxruntime"}
    h, w = manifest["input"]["shape"][2:]
    entry = build_engines(folder, onnx["fp32"], precision, max_batch, (int(h), int(w)),
                          {n: tuple(s) for n, s in manifest["feature_shapes"].items()}, 512, dla_core,
                          onnx.get("fp16"), strongly_typed)
    return TensorRTDetector(folder, manifest, {**entry, "fingerprint": "built by the test"})


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


def _assert_matches(detector: Any, images: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> None:
    """Scores and maps within the tolerance of the reference's spread (not a multiple of its peak)."""
    ref_scores, ref_maps = reference
    scores, maps = detector.infer(images)
    assert scores.dtype == np.float32 and scores.shape == ref_scores.shape == (len(images),)
    assert maps.dtype == np.float32 and maps.shape == ref_maps.shape and maps.ndim == 3
    tol = _tolerance(detector)
    relative = np.abs(scores - ref_scores) / np.maximum(np.abs(ref_scores), 1e-6)
    assert relative.max() <= tol, (scores, ref_scores)
    assert np.abs(scores - ref_scores).max() <= tol * float(np.ptp(ref_scores)), (scores, ref_scores)
    assert np.abs(maps - ref_maps).max() <= tol * float(np.ptp(ref_maps)), np.abs(maps - ref_maps).max()


def _assert_head_in_fp32(detector: Any) -> None:
    """The engine inspector (the plans are built with ProfilingVerbosity.DETAILED) shows every layer
    of the scoring head writing FP32, while the backbones run in FP16."""
    from edgead.export.tensorrt_build import head_layer_formats, is_reduced_float

    layers = detector.layers()
    head = head_layer_formats(layers["student"])
    assert head, [layer.get("Name") for layer in layers["student"]]
    assert all(formats for formats in head.values()), "no tensor formats: not built with DETAILED verbosity"
    unknown = {name: f for name, f in head.items() if any(x.startswith("N/A") for x in f)}
    assert not unknown, unknown                  # "N/A due to dynamic shapes": inspected without a context
    reduced = {name: f for name, f in head.items() if any(is_reduced_float(x) for x in f)}
    assert not reduced, reduced
    backbone = [f.get("Format/Datatype", "") for layer in layers["teacher"] for f in layer.get("Outputs", [])]
    assert any(is_reduced_float(f) for f in backbone), "no FP16 layer in the teacher: the engine is not FP16"


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
    assert detector.precision == "fp16"
    _assert_matches(detector, images, reference)


def test_head_runs_in_fp32(detector: Any) -> None:
    _assert_head_in_fp32(detector)


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
    np.testing.assert_allclose(maps, np.concatenate([m for _, m in singles]), rtol=0,
                               atol=tol * float(np.ptp(maps)))


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


def test_strongly_typed_fp16(exported: Path, tmp_path: Path, images: np.ndarray,
                             reference: tuple[np.ndarray, np.ndarray]) -> None:
    """FP16 from the FP16 ONNX graphs' own types (TensorRT 11's only FP16, TensorRT 10's on request):
    float32 inputs and outputs (the detector checks them on open), the head in FP32, the numbers right."""
    import tensorrt as trt

    if hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        pytest.skip(f"TensorRT {trt.__version__} has no strongly typed networks")
    det = _build(_copy_export(exported, tmp_path), strongly_typed=True)
    try:
        _assert_head_in_fp32(det)
        _assert_matches(det, images, reference)
    finally:
        det.close()


def test_timing_cache_is_reused_and_a_foreign_one_replaced(exported: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    import tensorrt as trt

    from edgead.backends.tensorrt import logger

    folder = _copy_export(exported, tmp_path)
    cache = folder / "timing.cache"
    _build(folder, "fp32", max_batch=1).close()
    first = cache.read_bytes()
    assert first
    with caplog.at_level(logging.WARNING, logger="edgead.tensorrt"):
        _build(folder, "fp32", max_batch=1).close()
    assert "ignoring" not in caplog.text                       # this device's cache: reused
    assert len(cache.read_bytes()) >= len(first)
    cache.write_bytes(b"a timing cache from another GPU or TensorRT version" * 4)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgead.tensorrt"):
        det = _build(folder, "fp32", max_batch=1)
    det.close()
    assert f"ignoring {cache}" in caplog.text                  # replaced, not an error
    fresh = cache.read_bytes()
    assert fresh and not fresh.startswith(b"a timing cache")
    config = trt.Builder(logger()).create_builder_config()
    assert config.set_timing_cache(config.create_timing_cache(fresh), ignore_mismatch=False)


def test_infer_from_other_threads(detector: Any, images: np.ndarray) -> None:
    """The run loop may open the engine on one thread and infer on another; several threads take turns."""
    want_scores, want_maps = detector.infer(images)
    spread = float(np.ptp(want_maps))
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    failures: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(5):
                results[k] = detector.infer(images)
        except BaseException as exc:           # reported by the main thread
            failures.append(exc)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    for scores, maps in results.values():
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6 * spread)
        np.testing.assert_allclose(maps, want_maps, rtol=0, atol=1e-5 * spread)


def test_dla(exported: Path, tmp_path: Path, images: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> None:
    """A DLA engine (Jetson Xavier and Orin): FP16 with GPU fallback, a static batch run padded."""
    import tensorrt as trt

    from edgead.backends.tensorrt import logger

    if trt.Builder(logger()).num_DLA_cores == 0:
        pytest.skip("this GPU has no DLA core")
    det = _build(_copy_export(exported, tmp_path), "fp16", dla_core=0)
    try:
        assert det.max_batch == MAX_BATCH
        _assert_matches(det, images, reference)
        scores, _ = det.infer(images[:1])
        assert scores.shape == (1,)
    finally:
        det.close()


def test_int8_from_the_qdq_graphs(tiny_model: Path, tiny_product: Path, tmp_path: Path, images: np.ndarray) -> None:
    """`--precision int8`: TensorRT builds the QDQ graphs with explicit quantisation; its scores track
    ONNX Runtime's INT8 engine of the same graphs (both quantise where the QDQ nodes say), and the
    head, outside every QDQ pair, stays FP32."""
    from edgead.backends.manifest import read_manifest
    from edgead.backends.onnxruntime import OrtDetector
    from edgead.backends.tensorrt import TensorRTDetector
    from edgead.export.build import build_engine, rebuild_tensorrt
    from edgead.export.tensorrt_build import head_layer_formats, is_reduced_float

    folder = tmp_path / "int8"
    build_engine(tiny_model, folder, backend="onnxruntime", max_batch=MAX_BATCH,
                 calib_images=tiny_product / "train" / "good", log=lambda s: None)
    rebuild_tensorrt(folder, precision="int8", max_batch=MAX_BATCH, workspace_mib=512, log=lambda s: None)
    manifest = read_manifest(folder)
    entry = _entry(manifest, "tensorrt")
    assert entry["precision"] == "int8" and entry["files"]["student"] == "student.int8.plan"
    ort = OrtDetector(folder, manifest, next(e for e in manifest["engines"]
                                             if (e["backend"], e["precision"]) == ("onnxruntime", "int8")),
                      providers=["CPUExecutionProvider"])
    det = TensorRTDetector(folder, manifest, entry)
    try:
        s_trt, m_trt = det.infer(images)
        s_ort, m_ort = ort.infer(images)
        assert m_trt.shape == m_ort.shape and np.isfinite(m_trt).all()
        # INT8 kernels round differently on a GPU than on a CPU: 5 % of the spread, the ranking kept.
        assert float(np.abs(s_trt - s_ort).max()) <= 0.05 * float(np.ptp(s_ort))
        head = head_layer_formats(det.layers()["student"])
        assert head and not {n: f for n, f in head.items() if any(is_reduced_float(x) for x in f)}
    finally:
        det.close()
