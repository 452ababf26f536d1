"""The TensorRT backend where there is no TensorRT: it type-checks against TensorRT's API (mypy with
tensorrt-stubs), imports without TensorRT, and says how to install it when asked to do TensorRT work.
The GPU tests are in tests/gpu."""

from __future__ import annotations

import ast
import ctypes
import enum
import importlib
import importlib.metadata
import logging
import re
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from edgead.errors import EdgeADError

ROOT = Path(__file__).resolve().parents[2]
MODULES = [ROOT / "edgead" / "backends" / "tensorrt.py", ROOT / "edgead" / "export" / "tensorrt_build.py"]
INSTALL = 'pip install "edgead[trt]"'


def _repair_stub(text: str) -> str:
    """tensorrt-stubs (10.x) has a few signatures that are not Python (a parameter named `in`, a
    required parameter after defaulted ones). mypy stops at a syntax error in any file it reads, so
    those few signatures are loosened to (*args: Any, **kwargs: Any); everything else is kept."""
    lines = text.splitlines()
    for _ in range(200):
        try:
            ast.parse("\n".join(lines))
            return "\n".join(lines) + "\n"
        except SyntaxError as err:
            i = (err.lineno or 1) - 1
            m = re.match(r"^(\s*def \w+\()(.*)\)((?: -> .*)?):\s*$", lines[i])
            if not m:
                raise
            first = m.group(2).split(",")[0].split(":")[0].strip()
            keep = f"{first}, " if first in ("self", "this") else ""
            lines[i] = f"{m.group(1)}{keep}*args: typing.Any, **kwargs: typing.Any){m.group(3)}:"
    raise AssertionError("tensorrt-stubs has too many broken signatures to repair")


@pytest.fixture(scope="module")
def stub_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repaired copy of the installed tensorrt-stubs, for MYPYPATH (which mypy searches first)."""
    pytest.importorskip("mypy.api")
    try:
        files = [f for f in importlib.metadata.files("tensorrt-stubs") or [] if f.suffix == ".pyi"]
    except importlib.metadata.PackageNotFoundError:
        files = []
    if not files:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs==10.13.0.35.1)")
    out = tmp_path_factory.mktemp("trt-stubs")
    for f in files:
        target = out / f.as_posix()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_repair_stub(Path(str(f.locate())).read_text()))
    return out


def _mypy(paths: list[Path], stub_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, int]:
    from mypy import api

    monkeypatch.setenv("MYPYPATH", str(stub_path))
    monkeypatch.chdir(ROOT)
    out, err, code = api.run(["--config-file", str(ROOT / "mypy.ini"), "--cache-dir", str(cache),
                              *map(str, paths)])
    return out + err, code


def test_tensorrt_backend_type_checks(stub_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    report, code = _mypy(MODULES, stub_path, tmp_path_factory.mktemp("mypy-cache"), monkeypatch)
    assert code == 0, report


def test_type_check_sees_the_tensorrt_api(stub_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: with the stubs in place a misuse of TensorRT's API is an error (TensorRT is not Any)."""
    bad = tmp_path / "misuse_trt.py"
    bad.write_text("import tensorrt as trt\n\n\ndef f(config: trt.IBuilderConfig) -> None:\n"
                   "    config.set_memory_pool_limit('workspace', 1 << 20)\n")
    report, code = _mypy([bad], stub_path, tmp_path / "cache", monkeypatch)
    assert code == 1 and "set_memory_pool_limit" in report, report


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """edgead.backends.tensorrt imported afresh where neither TensorRT nor cuda-python can be imported."""
    for name in ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    import edgead.backends
    import edgead.backends.tensorrt

    # the package attribute is put back too, so later tests patch the module that later imports get
    monkeypatch.setattr(edgead.backends, "tensorrt", edgead.backends.tensorrt)
    monkeypatch.delitem(sys.modules, "edgead.backends.tensorrt", raising=False)
    return importlib.import_module("edgead.backends.tensorrt")


def test_import_needs_no_tensorrt(no_tensorrt: types.ModuleType) -> None:
    assert no_tensorrt.trt_version() is None


def test_build_without_tensorrt_says_how_to_install(no_tensorrt: types.ModuleType, tmp_path: Path) -> None:
    from edgead.export.tensorrt_build import build_engines

    with pytest.raises(EdgeADError) as err:
        build_engines(tmp_path, {"teacher": "teacher.onnx", "student": "student.onnx"}, "fp16", 4,
                      (64, 64), {"t0_0": (16, 16, 16)}, 256, None, None)
    assert INSTALL in err.value.message


def test_detector_without_tensorrt_says_how_to_install(no_tensorrt: types.ModuleType, tmp_path: Path) -> None:
    with pytest.raises(EdgeADError) as err:
        no_tensorrt.TensorRTDetector(tmp_path, {}, {})
    assert INSTALL in err.value.message


def test_gpu_identity_without_cuda_python(no_tensorrt: types.ModuleType) -> None:
    with pytest.raises(EdgeADError) as err:
        no_tensorrt.gpu_identity()
    assert "cuda-python" in err.value.message and INSTALL in err.value.message


def test_tensorrt_stubs_alone_are_not_tensorrt(no_tensorrt: types.ModuleType, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """tensorrt-stubs leaves an importable namespace package `tensorrt` with nothing in it."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    assert no_tensorrt.trt_version() is None
    with pytest.raises(EdgeADError, match="type stubs") as err:
        no_tensorrt.TensorRTDetector(tmp_path, {}, {})
    assert INSTALL in err.value.message


class _Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


def test_cuda_errors_are_named(no_tensorrt: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda-python returns (error, value) tuples; a failure becomes an EdgeADError naming the error."""
    monkeypatch.setattr(no_tensorrt, "_CUDART", types.SimpleNamespace(cudaError_t=_Err))
    assert no_tensorrt._ck((_Err.cudaSuccess, 1234), "cudaMalloc") == 1234
    with pytest.raises(EdgeADError, match="cudaMalloc failed: cudaErrorMemoryAllocation"):
        no_tensorrt._ck((_Err.cudaErrorMemoryAllocation, None), "cudaMalloc")


def test_engine_for_another_device_is_refused(no_tensorrt: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    here: dict[str, Any] = {"gpu": "Orin (nvgpu)", "compute_capability": "8.7"}
    monkeypatch.setattr(no_tensorrt, "gpu_identity", lambda: dict(here))
    monkeypatch.setattr(no_tensorrt, "trt_version", lambda: "10.3.0")
    entry = {"device": {**here, "tensorrt": "10.3.0", "dla_core": None}}
    no_tensorrt.check_device(entry, {"model": {"path": "models/washer"}})
    entry["device"]["gpu"] = "NVIDIA GeForce RTX 3060"
    with pytest.raises(EdgeADError) as err:
        no_tensorrt.check_device(entry, {"model": {"path": "models/washer"}})
    assert err.value.message.startswith("engine built for NVIDIA GeForce RTX 3060")
    assert "but this is Orin (nvgpu)" in err.value.message
    assert err.value.hint == "rebuild on this device: edgead build-engine --model models/washer"


# A fake TensorRT + cuda-python in numpy, to run TensorRTDetector's control flow on the CPU: buffers
# allocated once and bound by name, the student reading the teacher's output buffers, splitting,
# padding for a static (DLA) profile, closing. The API names themselves are mypy's job (above).

class _FakeCuda:
    cudaError_t = _Err
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self) -> None:
        self.mem: dict[int, Any] = {}
        self.current = threading.local()              # cudaSetDevice is per thread, as in CUDA
        self.set_device: list[tuple[str, int]] = []

    def _alloc(self, size: int) -> tuple[_Err, int]:
        buf = ctypes.create_string_buffer(size)
        self.mem[ctypes.addressof(buf)] = buf
        return _Err.cudaSuccess, ctypes.addressof(buf)

    def _free(self, ptr: int) -> tuple[_Err]:
        return (_Err.cudaSuccess if self.mem.pop(ptr, None) is not None else _Err.cudaErrorMemoryAllocation,)

    cudaMalloc = cudaMallocHost = _alloc
    cudaFree = cudaFreeHost = _free

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: int, stream: int) -> tuple[_Err]:
        ctypes.memmove(dst, src, count)
        return (_Err.cudaSuccess,)

    def cudaStreamCreate(self) -> tuple[_Err, int]:
        return _Err.cudaSuccess, 7

    def cudaStreamSynchronize(self, stream: int) -> tuple[_Err]:
        return (_Err.cudaSuccess,)

    cudaStreamDestroy = cudaStreamSynchronize

    def cudaGetDevice(self) -> tuple[_Err, int]:
        return _Err.cudaSuccess, getattr(self.current, "device", 0)

    def cudaSetDevice(self, device: int) -> tuple[_Err]:
        self.current.device = device
        self.set_device.append((threading.current_thread().name, device))
        return (_Err.cudaSuccess,)

    def cudaGetDeviceProperties(self, device: int) -> tuple[_Err, Any]:
        return _Err.cudaSuccess, types.SimpleNamespace(name=b"Fake GPU\0\0", major=8, minor=7)


SHAPES = {"image": (3, 16, 16), "t0_0": (4, 4, 4), "t1_0": (8, 2, 2), "map": (1, 8, 8), "score": ()}


def _array(ptr: int, shape: tuple[int, ...]) -> Any:
    import numpy as np

    return np.frombuffer(memoryview((ctypes.c_float * int(np.prod(shape))).from_address(ptr)), np.float32).reshape(shape)


class _FakeContext:
    """Teacher: every feature = the image's mean. Student: map = t0_0 + image crop, score = map max."""

    def __init__(self, engine: _FakeEngine) -> None:
        self.engine, self.batch = engine, 0
        self.addr: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        assert tuple(shape[1:]) == SHAPES[name]
        self.batch = shape[0]
        return self.engine.low <= shape[0] <= self.engine.high

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (self.batch, *SHAPES[name])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addr[name] = ptr
        return True

    def get_tensor_address(self, name: str) -> int:
        return self.addr[name]

    def execute_async_v3(self, stream: int) -> bool:
        assert type(stream) is int and stream == 7, stream     # the stream's address, as TensorRT takes it
        time.sleep(0.0002)              # the GPU's time: another thread may run meanwhile (the GIL is free)
        a = {n: _array(p, (self.batch, *SHAPES[n])) for n, p in self.addr.items()}
        if self.engine.role == "teacher":
            for name in ("t0_0", "t1_0"):
                a[name][:] = a["image"].mean(axis=(1, 2, 3)).reshape(-1, 1, 1, 1)
        else:
            a["map"][:] = a["t0_0"][:, :1, :1, :1] + a["image"][:, :1, :8, :8]
            a["score"][:] = a["map"].reshape(self.batch, -1).max(axis=1)
        return True


class _FakeEngine:
    def __init__(self, role: str, low: int, high: int) -> None:
        self.role, self.low, self.high = role, low, high
        self.io = {"image": True, "t0_0": role == "student", "t1_0": role == "student"}
        if role == "student":
            self.io.update(map=False, score=False)
        self.num_io_tensors = len(self.io)

    def get_tensor_name(self, i: int) -> str:
        return list(self.io)[i]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if self.io[name] else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> Any:
        return types.SimpleNamespace(name="FLOAT")

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int]]:
        return [(self.low,), (self.high,), (self.high,)]

    def create_execution_context(self) -> _FakeContext:
        return _FakeContext(self)


@pytest.fixture
def fake_runtime(no_tensorrt: types.ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    import json

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.DLA_core = -1

        def deserialize_cuda_engine(self, blob: bytes) -> _FakeEngine:
            return _FakeEngine(**json.loads(blob))

    class ILogger:
        ERROR, WARNING = 1, 2
        Severity = int

        def __init__(self) -> None:
            pass

    trt = types.ModuleType("tensorrt")
    trt.__dict__.update(__version__="10.3.0", Builder=object, Runtime=Runtime, ILogger=ILogger,
                        TensorIOMode=types.SimpleNamespace(INPUT="INPUT"))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cuda = _FakeCuda()
    monkeypatch.setattr(no_tensorrt, "_CUDART", cuda)

    def open_detector(low: int) -> Any:
        for role in ("teacher", "student"):
            (tmp_path / f"{role}.fp16.plan").write_text(json.dumps({"role": role, "low": low, "high": 4}))
        manifest = {"feature_names": ["t0_0", "t1_0"], "input": {"shape": ["batch", 3, 16, 16]}}
        entry = {"precision": "fp16", "fingerprint": "f", "files": {r: f"{r}.fp16.plan" for r in ("teacher", "student")},
                 "max_batch": 4,
                 "device": {"gpu": "Fake GPU", "compute_capability": "8.7", "tensorrt": "10.3.0", "dla_core": None}}
        return no_tensorrt.TensorRTDetector(tmp_path, manifest, entry)

    return cuda, open_detector


@pytest.mark.parametrize("low", [1, 4], ids=["dynamic-profile", "static-profile"])
def test_detector_flow_on_a_fake_runtime(fake_runtime: Any, low: int) -> None:
    import numpy as np

    from edgead.protocols import Detector

    cuda, open_detector = fake_runtime
    det = open_detector(low)
    follows_protocol = isinstance(det, Detector)
    assert follows_protocol and det.max_batch == 4 and len(cuda.mem) == 5 + 3   # 5 device, 3 pinned
    bound = det.bound_addresses()
    assert bound["teacher"]["t0_0"] == bound["student"]["t0_0"] and bound["teacher"]["image"] == bound["student"]["image"]
    x = np.random.default_rng(0).normal(size=(11, 3, 16, 16)).astype(np.float32)
    want_map = x.mean(axis=(1, 2, 3)).reshape(-1, 1, 1) + x[:, 0, :8, :8]
    scores, maps = det.infer(x)                                   # 4 + 4 + 3
    assert scores.dtype == maps.dtype == np.float32 and scores.shape == (11,) and maps.shape == (11, 8, 8)
    np.testing.assert_allclose(maps, want_map, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, want_map.reshape(11, -1).max(axis=1), rtol=1e-5)
    np.testing.assert_allclose(det.infer(x[:1])[0], scores[:1], rtol=1e-6)
    assert det.infer(x[:0])[1].shape == (0, 8, 8)
    assert det.bound_addresses() == bound and len(cuda.mem) == 8
    det.close()
    det.close()
    assert cuda.mem == {}
    with pytest.raises(EdgeADError, match="closed"):
        det.infer(x)


def test_detector_runs_from_other_threads(fake_runtime: Any) -> None:
    """Opened on one thread (on device 1), run from others: each call makes the detector's device
    current in its own thread, and concurrent calls take turns on the one set of buffers."""
    import numpy as np

    cuda, open_detector = fake_runtime
    cuda.cudaSetDevice(1)
    det = open_detector(1)
    x = np.random.default_rng(1).normal(size=(6, 3, 16, 16)).astype(np.float32)
    want_scores, want_maps = det.infer(x)
    results: dict[int, Any] = {}

    def work(k: int) -> None:
        for _ in range(20):
            results[k] = det.infer(x[k % 3:k % 3 + 3 + k])
    threads = [threading.Thread(target=work, args=(k,), name=f"worker{k}") for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, (scores, maps) in results.items():
        np.testing.assert_array_equal(scores, want_scores[k % 3:k % 3 + 3 + k])
        np.testing.assert_array_equal(maps, want_maps[k % 3:k % 3 + 3 + k])
    assert {(f"worker{k}", 1) for k in range(3)} <= set(cuda.set_device)
    det.close()


def _probe_cuda(**calls: Any) -> Any:
    fake = types.SimpleNamespace(cudaError_t=_Err, count_calls=0)

    def count() -> Any:
        fake.count_calls += 1
        return calls["count"]
    fake.cudaGetDeviceCount = count
    fake.cudaDriverGetVersion = lambda: (_Err.cudaSuccess, calls.get("driver", 12060))
    fake.cudaRuntimeGetVersion = lambda: (_Err.cudaSuccess, calls.get("runtime", 12060))
    return fake


@pytest.fixture
def importable_trt(no_tensorrt: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """TensorRT and cuda-python import (fakes); what CUDA answers is up to each test."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(Builder=object, __version__="10.3.0"))
    return no_tensorrt


@pytest.mark.parametrize("answer, driver, runtime, expected", [
    ((_Err.cudaSuccess, 1), 12060, 12060, None),
    ((_Err.cudaSuccess, 0), 12060, 12060, "CUDA does not work here (no CUDA device"),
    ((_Err.cudaErrorNoDevice, 0), 12060, 12060, "CUDA does not work here (cudaErrorNoDevice"),
    ((_Err.cudaErrorInsufficientDriver, 0), 12060, 13000,
     'the driver runs CUDA 12.6 but cuda-python is built for CUDA 13.0: pip install "edgead[trt]"'),
    ((_Err.cudaErrorInsufficientDriver, 0), 11040, 12060, 'pip install "edgead[trt-cuda11]"'),
    ((_Err.cudaErrorInsufficientDriver, 0), 0, 12060, "no NVIDIA driver found"),
], ids=["gpu", "zero-devices", "no-device", "driver-too-old-for-13", "jetpack5-driver", "no-driver"])
def test_usable_probes_the_device(importable_trt: types.ModuleType, monkeypatch: pytest.MonkeyPatch,
                                  answer: Any, driver: int, runtime: int, expected: str | None) -> None:
    """TensorRT importing is not enough: where CUDA fails, auto must fall back to ONNX Runtime and say why."""
    fake = _probe_cuda(count=answer, driver=driver, runtime=runtime)
    monkeypatch.setattr(importable_trt, "_CUDART", fake)
    reason = importable_trt.why_unusable()
    assert importable_trt.usable() is (expected is None)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason, reason
    importable_trt.why_unusable()
    assert fake.count_calls == 1                   # probed once per process


def test_usable_when_cuda_python_cannot_load_the_driver(importable_trt: types.ModuleType,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> Any:
        raise RuntimeError("Failed to dlopen libcuda.so.1")
    monkeypatch.setattr(importable_trt, "_CUDART", types.SimpleNamespace(cudaError_t=_Err, cudaGetDeviceCount=boom))
    assert importable_trt.why_unusable() == "CUDA does not work here (RuntimeError: Failed to dlopen libcuda.so.1)"
    assert not importable_trt.usable()


def test_usable_without_tensorrt_says_what_to_install(no_tensorrt: types.ModuleType) -> None:
    reason = no_tensorrt.why_unusable()
    assert reason is not None and reason.startswith("TensorRT is not installed") and INSTALL in reason


@pytest.fixture
def fake_logger_trt(no_tensorrt: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    class ILogger:
        INTERNAL_ERROR, ERROR, WARNING, INFO = 0, 1, 2, 3
        Severity = int

        def __init__(self) -> None:
            pass
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(ILogger=ILogger))
    return no_tensorrt


def test_one_logger_per_process_with_scoped_error_lists(fake_logger_trt: types.ModuleType,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """TensorRT keeps the first logger it is given: every build and load shares one, and each
    captures only the errors logged while it runs."""
    trt_logger = fake_logger_trt.logger()
    assert fake_logger_trt.logger() is trt_logger
    trt_logger.log(1, "before anyone listens")
    with fake_logger_trt.capture_errors() as outer:
        trt_logger.log(1, "parse   failed:\n  node /head/Div")
        with fake_logger_trt.capture_errors() as inner:
            trt_logger.log(0, "out of memory")
            trt_logger.log(3, "built in 2 s")                 # info: kept by neither
        trt_logger.log(1, "after inner")
    trt_logger.log(1, "after both")
    assert outer == ["parse failed: node /head/Div", "out of memory", "after inner"]
    assert inner == ["out of memory"]
    assert fake_logger_trt.last_error(inner) == ": out of memory"
    with caplog.at_level(logging.WARNING, logger="edgead.tensorrt"):
        trt_logger.log(2, "tactic skipped")
    assert "TensorRT: tactic skipped" in caplog.text


def test_logger_from_threads(fake_logger_trt: types.ModuleType) -> None:
    """TensorRT logs from its own threads: every error reaches the capture, none is lost."""
    trt_logger = fake_logger_trt.logger()
    with fake_logger_trt.capture_errors() as errors:
        threads = [threading.Thread(target=lambda k=k: [trt_logger.log(1, f"e{k}.{i}") for i in range(200)])
                   for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(errors) == sorted(f"e{k}.{i}" for k in range(4) for i in range(200))


def test_stream_handle(no_tensorrt: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT takes the stream's address as an int; cuda-bindings 12.9.1+ gives it without the
    deprecated int(stream), older cuda-python only by int()."""

    class Stream:
        def __int__(self) -> int:
            return 4096
    assert no_tensorrt.stream_handle(Stream()) == 4096          # no cuda.bindings.utils: int()
    utils = types.ModuleType("cuda.bindings.utils")
    seen: list[Any] = []

    def get_cuda_native_handle(obj: Any) -> int:
        seen.append(obj)
        if not isinstance(obj, Stream):
            raise TypeError("Unknown type")
        return 8192
    utils.get_cuda_native_handle = get_cuda_native_handle  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", utils)
    stream = Stream()
    assert no_tensorrt.stream_handle(stream) == 8192 and seen == [stream]
    assert no_tensorrt.stream_handle(7) == 7                    # already an address
