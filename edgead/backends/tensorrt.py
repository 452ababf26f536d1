"""TensorRT backend: loads and runs the teacher and student engines of an engine folder.

Engines only run on the GPU model and TensorRT version that built them, so the manifest entry
records both and a mismatch is refused with a message to rebuild. At run time the teacher's
feature outputs are the student's input buffers: the features never leave the GPU, and only the
image goes in and the map and score come back, through pinned host memory on one stream.

The engines are built by edgead.export.tensorrt_build, which reuses the import, device and logger
helpers here (export imports backends, never the other way round).
TensorRT and cuda-python are imported lazily (`pip install "edgead[trt]"`), so importing this
module needs neither. Supports TensorRT 8.5 (JetPack 5) to 11.x, and cuda-python 11.8 to 13.x.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import json
import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import numpy.typing as npt

from edgead.errors import EdgeADError

if TYPE_CHECKING:
    import tensorrt as trt

INSTALL = 'pip install "edgead[trt]"'
INSTALL_HINT = f"{INSTALL} on the device with the GPU (on Jetson, TensorRT comes with JetPack)"
ROLES = ("teacher", "student")
CUDA_HINT = "check the NVIDIA driver (nvidia-smi or tegrastats) and free GPU memory, or use --backend onnxruntime"
ITEMSIZE = {"FLOAT": 4, "HALF": 2, "BF16": 2, "INT32": 4, "INT64": 8, "INT8": 1, "UINT8": 1, "BOOL": 1, "FP8": 1}
_log = logging.getLogger("edgead.tensorrt")
_CUDART: Any = None
_LOGGER: Any = None                       # the process's one TensorRT logger (see logger())
_SINKS: list[list[str]] = []              # the error lists of the builds and loads under way
_LOGGER_LOCK = threading.Lock()


def require() -> None:
    """Import TensorRT and cuda-python or explain how to install them.

    A `tensorrt` without `Builder` is the namespace package left by `tensorrt-stubs` alone.
    """
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise EdgeADError(f"TensorRT is not installed: {INSTALL}", INSTALL_HINT) from exc
    if not hasattr(tensorrt, "Builder"):
        raise EdgeADError(f"TensorRT is not installed (only its type stubs are): {INSTALL}", INSTALL_HINT)
    _cudart()


def _cudart() -> Any:
    """cuda-python's runtime API: `cuda.bindings.runtime` (12.6+), else the older `cuda.cudart`."""
    global _CUDART
    if _CUDART is None:
        for name in ("cuda.bindings.runtime", "cuda.cudart"):
            try:
                _CUDART = importlib.import_module(name)
                break
            except ImportError:
                continue
        else:
            raise EdgeADError(f"cuda-python is not installed: {INSTALL}", INSTALL_HINT)
    return _CUDART


def _ck(result: Any, call: str) -> Any:
    """cuda-python returns (error, *values) instead of raising: turn a failure into an EdgeADError."""
    err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if err != _cudart().cudaError_t.cudaSuccess:
        raise EdgeADError(f"CUDA {call} failed: {getattr(err, 'name', err)}", CUDA_HINT)
    return values[0] if len(values) == 1 else values


@functools.lru_cache(maxsize=None)
def why_unusable() -> str | None:
    """Why TensorRT cannot run here (None where it can); probed once per process.

    Importing is not enough: TensorRT and cuda-python import fine where the driver is too old for
    the CUDA that cuda-python was built for (cuda-python 13 needs a driver >= 580) or there is no
    GPU, and then the first CUDA call fails. cudaGetDeviceCount is that first call, without
    creating a CUDA context (no GPU memory is taken by asking).
    """
    try:
        require()
        rt = _cudart()
        err, count = rt.cudaGetDeviceCount()
        if err == rt.cudaError_t.cudaSuccess and int(count) > 0:
            return None
        reason = "no CUDA device" if err == rt.cudaError_t.cudaSuccess else getattr(err, "name", str(err))
        return f"CUDA does not work here ({reason}{_cuda_versions(rt)})"
    except EdgeADError as err:
        return err.message
    except Exception as exc:  # cuda-python raises (not returns) where libcuda itself cannot be loaded
        return f"CUDA does not work here ({type(exc).__name__}: {exc})"


def _cuda_versions(rt: Any) -> str:
    """The driver's and cuda-python's CUDA versions, as the tail of why_unusable's reason; where the
    driver is the older one, the extra whose cuda-python it runs."""
    try:
        driver, runtime = int(rt.cudaDriverGetVersion()[1]), int(rt.cudaRuntimeGetVersion()[1])
    except Exception:         # a version query is only detail for the message
        return ""
    if driver == 0:
        return "; no NVIDIA driver found"

    def text(v: int) -> str:
        return f"{v // 1000}.{v % 1000 // 10}"

    if driver // 1000 < runtime // 1000:
        extra = {11: "trt-cuda11", 12: "trt"}.get(driver // 1000, "trt")
        return (f"; the driver runs CUDA {text(driver)} but cuda-python is built for CUDA {text(runtime)}: "
                f'pip install "edgead[{extra}]"')
    return f"; driver CUDA {text(driver)}, cuda-python CUDA {text(runtime)}"


def usable() -> bool:
    """TensorRT and cuda-python import and CUDA sees a GPU: what backend "auto" checks (see why_unusable)."""
    return why_unusable() is None


def trt_version() -> str | None:
    """The installed TensorRT version, or None where there is none."""
    try:
        import tensorrt
    except (ImportError, OSError):
        return None
    return str(tensorrt.__version__) if hasattr(tensorrt, "Builder") else None


def gpu_identity() -> dict[str, str]:
    """{"gpu": name, "compute_capability": "8.7"} of the current CUDA device."""
    rt = _cudart()
    device = int(_ck(rt.cudaGetDevice(), "cudaGetDevice"))
    props = _ck(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return {"gpu": str(name).strip(), "compute_capability": f"{int(props.major)}.{int(props.minor)}"}


def logger() -> trt.ILogger:
    """The one TensorRT logger of this process: it keeps errors for the EdgeADError messages of the
    builds and loads that capture them (capture_errors) and forwards warnings to logging.

    TensorRT keeps the first logger a process gives it and ignores later ones, so a logger per build
    or per engine would stay silent from the second on and its error messages lose their detail.
    """
    global _LOGGER
    import tensorrt as trt

    with _LOGGER_LOCK:
        if _LOGGER is None:

            class _Logger(trt.ILogger):  # type: ignore[misc, unused-ignore]  # Any where plain mypy has no stubs
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)

                def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
                    if int(severity) <= int(trt.ILogger.ERROR):
                        text = " ".join(msg.split())
                        with _LOGGER_LOCK:
                            for sink in _SINKS:
                                sink.append(text)
                    if int(severity) <= int(trt.ILogger.WARNING):
                        _log.warning("TensorRT: %s", msg)

            _LOGGER = _Logger()
        made: trt.ILogger = _LOGGER
    return made


@contextmanager
def capture_errors() -> Iterator[list[str]]:
    """The TensorRT errors logged while the block runs (by any thread: TensorRT logs from its own)."""
    errors: list[str] = []
    with _LOGGER_LOCK:
        _SINKS.append(errors)
    try:
        yield errors
    finally:
        with _LOGGER_LOCK:
            _SINKS[:] = [sink for sink in _SINKS if sink is not errors]


def last_error(errors: list[str]) -> str:
    """The last TensorRT error, as the tail of an EdgeADError message ("" when there is none)."""
    return f": {errors[-1][:300]}" if errors else ""


def check_device(entry: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Refuse an engine built on another GPU model or TensorRT version: it would not load, or be wrong."""
    built = entry.get("device") or {}
    here = {**gpu_identity(), "tensorrt": trt_version()}
    if any(str(built.get(k)) != str(here[k]) for k in ("gpu", "compute_capability", "tensorrt")):
        model = manifest.get("model")
        model = model.get("path") or model.get("name") if isinstance(model, dict) else model
        was, now = ({k: d.get(k) for k in ("gpu", "compute_capability", "tensorrt")} for d in (built, here))
        raise EdgeADError(
            f"engine built for {was['gpu']} (compute {was['compute_capability']}, TensorRT {was['tensorrt']}) "
            f"but this is {now['gpu']} (compute {now['compute_capability']}, TensorRT {now['tensorrt']})",
            f"rebuild on this device: edgead build-engine --model {model or 'models/NAME'}")


def stream_handle(stream: Any) -> int:
    """The cudaStream_t address TensorRT's execute_async_v3 takes (an int in every TensorRT version).

    cuda-python's own calls take the stream object itself; `int(stream)` is deprecated from
    cuda-bindings 12.9.1/13 on, which give the address by get_cuda_native_handle instead.
    """
    try:
        native = importlib.import_module("cuda.bindings.utils").get_cuda_native_handle
    except (ImportError, AttributeError):
        return int(stream)                                      # cuda-python 11.8 to 12.9.0
    try:
        return int(native(stream))
    except TypeError:                                           # not a cuda-python object: an address already
        return int(stream)


def engine_layers(engine: trt.ICudaEngine, context: trt.IExecutionContext | None = None) -> list[dict[str, Any]]:
    """The engine's layers as TensorRT's engine inspector reports them (its JSON format).

    Each is a dict with at least "Name"; an engine built with ProfilingVerbosity.DETAILED (as
    edgead builds them) also has "LayerType" and "Inputs"/"Outputs" with their "Format/Datatype".
    With a dynamic batch those formats are only known for a context whose input shapes are set.
    """
    import tensorrt as trt

    inspector = engine.create_engine_inspector()
    if context is not None:
        inspector.execution_context = context
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    return [layer if isinstance(layer, dict) else {"Name": str(layer)} for layer in layers]


def _host_array(ptr: int, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """A float32 numpy view of pinned host memory (valid until close())."""
    buf = (ctypes.c_float * int(np.prod(shape))).from_address(ptr)
    return np.frombuffer(memoryview(buf), dtype=np.float32).reshape(shape)


class TensorRTDetector:
    """Detector protocol over the teacher and student engines.

    Every buffer is allocated once, for max_batch, and bound by tensor name; a call only sets the
    input shapes (when the batch size changes), copies the image in and the map and score out.
    One stream and one set of buffers: calls from several threads take turns (a lock), and any
    thread may call (the CUDA device the detector was opened on is made current for the call).
    """

    backend = "tensorrt"

    def __init__(self, engine_dir: Path, manifest: dict[str, Any], entry: dict[str, Any]) -> None:
        self._rt: Any = None
        self._stream: Any = None
        self._dev: dict[str, int] = {}
        self._host: dict[str, int] = {}
        self._engines: dict[str, trt.ICudaEngine] = {}
        self._contexts: dict[str, trt.IExecutionContext] = {}
        self._runtime: trt.Runtime | None = None
        self._batch = 0
        self._lock = threading.Lock()
        require()
        self._rt = _cudart()
        self._device = int(_ck(self._rt.cudaGetDevice(), "cudaGetDevice"))
        self.precision = str(entry["precision"])
        self.fingerprint = str(entry["fingerprint"])
        self.feature_names = [str(n) for n in manifest["feature_names"]]
        self.input_shape = tuple(int(d) for d in manifest["input"]["shape"][1:])
        self._io = {"teacher": {"image": True, **{f: False for f in self.feature_names}},
                    "student": {"image": True, **{f: True for f in self.feature_names}, "map": False, "score": False}}
        check_device(entry, manifest)
        try:
            with capture_errors() as errors:
                self._open(Path(engine_dir), entry, int(entry["max_batch"]), errors)
        except BaseException:
            self.close()
            raise

    def _open(self, engine_dir: Path, entry: dict[str, Any], max_batch: int, errors: list[str]) -> None:
        import tensorrt as trt

        self._runtime = trt.Runtime(logger())                     # must outlive its engines
        if entry["device"].get("dla_core") is not None:
            self._runtime.DLA_core = int(entry["device"]["dla_core"])
        for role in ROLES:
            path = engine_dir / entry["files"][role]
            try:
                blob = path.read_bytes()
            except OSError as exc:
                raise EdgeADError(f"cannot read engine file {path}", "rebuild with `edgead build-engine`") from exc
            engine: trt.ICudaEngine | None = self._runtime.deserialize_cuda_engine(blob)
            if engine is None:
                raise EdgeADError(f"TensorRT could not load {path}{last_error(errors)}",
                                  "rebuild with `edgead build-engine`")
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            io = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
            if io != self._io[role]:
                raise EdgeADError(f"{path.name} has tensors {sorted(io)}, manifest.json expects {sorted(self._io[role])}",
                                  "rebuild with `edgead build-engine`")
            context: trt.IExecutionContext | None = engine.create_execution_context()
            if context is None:
                raise EdgeADError(f"TensorRT could not create a context for {path.name}{last_error(errors)}", CUDA_HINT)
            self._engines[role], self._contexts[role] = engine, context
        teacher, student = self._engines["teacher"], self._engines["student"]
        dtypes = {n: teacher.get_tensor_dtype(n).name for n in self._io["teacher"]}
        dtypes.update(map=student.get_tensor_dtype("map").name, score=student.get_tensor_dtype("score").name)
        if any(dtypes[n] != "FLOAT" for n in ("image", "map", "score")) or any(
                dtypes[n] != student.get_tensor_dtype(n).name or dtypes[n] not in ITEMSIZE for n in self.feature_names):
            raise EdgeADError(f"engine tensor types {dtypes} are not what edgead runs (float32 image, map and score)",
                              "rebuild both engines; an FP16 ONNX must keep float32 inputs and outputs")
        low, _, high = teacher.get_tensor_profile_shape("image", 0)
        self._min_batch, self.max_batch = int(low[0]), min(max_batch, int(high[0]))
        shapes = self._set_batch(self.max_batch)
        self._stream = _ck(self._rt.cudaStreamCreate(), "cudaStreamCreate")
        self._stream_ptr = stream_handle(self._stream)
        for name, shape in shapes.items():
            size = int(np.prod(shape)) * ITEMSIZE[dtypes[name]]
            self._dev[name] = int(_ck(self._rt.cudaMalloc(size), "cudaMalloc"))
            if name in ("image", "map", "score"):                  # pinned: async copies, no staging copy
                self._host[name] = int(_ck(self._rt.cudaMallocHost(size), "cudaMallocHost"))
        self._image, self._map, self._score = (_host_array(self._host[n], shapes[n]) for n in ("image", "map", "score"))
        self._item_bytes = {n: 4 * int(np.prod(shapes[n][1:])) for n in ("image", "map", "score")}
        for role, context in self._contexts.items():
            for name in self._io[role]:                            # the student reads the teacher's outputs
                if not context.set_tensor_address(name, self._dev[name]):
                    raise EdgeADError(f"TensorRT refused the {role} buffer for {name}{last_error(errors)}", CUDA_HINT)

    def _set_batch(self, n: int) -> dict[str, tuple[int, ...]]:
        """Set every input shape for batch n; return the shapes of all tensors."""
        teacher, student = self._contexts["teacher"], self._contexts["student"]
        shapes: dict[str, tuple[int, ...]] = {"image": (n, *self.input_shape)}
        ok = teacher.set_input_shape("image", shapes["image"]) and student.set_input_shape("image", shapes["image"])
        for name in [*self.feature_names, "map", "score"]:
            dims = (teacher if name in self.feature_names else student).get_tensor_shape(name)
            shapes[name] = tuple(int(dims[i]) for i in range(len(dims)))
            if name in self.feature_names:
                ok = ok and student.set_input_shape(name, shapes[name])
        if not ok or any(d < 0 for shape in shapes.values() for d in shape):
            raise EdgeADError(f"TensorRT rejected batch size {n} (engine range {self._min_batch}..{self.max_batch})",
                              "rebuild with a larger --max-batch")
        self._batch = n
        return shapes

    def _run(self, chunk: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        rt, n = self._rt, len(chunk)
        if int(_ck(rt.cudaGetDevice(), "cudaGetDevice")) != self._device:   # another thread, another device
            _ck(rt.cudaSetDevice(self._device), "cudaSetDevice")
        m = max(n, self._min_batch)                                # a static (DLA) profile runs padded
        if m != self._batch:
            self._set_batch(m)
        self._image[:n] = chunk
        self._image[n:m] = 0.0
        to_dev, to_host = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _ck(rt.cudaMemcpyAsync(self._dev["image"], self._host["image"], m * self._item_bytes["image"], to_dev,
                               self._stream), "cudaMemcpyAsync")
        with capture_errors() as errors:
            for role in ROLES:
                if not self._contexts[role].execute_async_v3(self._stream_ptr):
                    raise EdgeADError(f"TensorRT {role} engine failed to run{last_error(errors)}", CUDA_HINT)
        for name in ("map", "score"):
            _ck(rt.cudaMemcpyAsync(self._host[name], self._dev[name], n * self._item_bytes[name], to_host,
                                   self._stream), "cudaMemcpyAsync")
        _ck(rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return self._score[:n].reshape(-1).copy(), self._map[:n, 0].copy()

    def infer(self, batch: npt.NDArray[Any]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """NCHW float32 preprocessed images -> (scores N float32, maps N x h x w float32)."""
        with self._lock:
            return self._infer(batch)

    def _infer(self, batch: npt.NDArray[Any]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        if not self._contexts:
            raise EdgeADError("this TensorRT detector is closed", "open the engine again with load_detector")
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape:
            raise EdgeADError(f"input batch has shape {tuple(batch.shape)}, the engine expects N x {self.input_shape}",
                              "preprocess frames with the engine's preprocessing (manifest.json: preprocess)")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        parts = [self._run(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        if not parts:
            return np.zeros(0, np.float32), np.zeros((0, *self._map.shape[2:]), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def layers(self) -> dict[str, list[dict[str, Any]]]:
        """role -> the engine's layers as TensorRT's engine inspector reports them (engine_layers), at
        the batch size of the last call."""
        with self._lock:
            return {role: engine_layers(engine, self._contexts[role]) for role, engine in self._engines.items()}

    def bound_addresses(self) -> dict[str, dict[str, int]]:
        """role -> tensor -> the device address its context runs on (the same on every call)."""
        return {role: {n: int(c.get_tensor_address(n)) for n in self._io[role]} for role, c in self._contexts.items()}

    def close(self) -> None:
        """Free the device and pinned buffers and the stream; safe to call twice."""
        lock = getattr(self, "_lock", None)
        if lock is None:                                          # __init__ failed before the lock
            return
        with lock:
            self._close()

    def _close(self) -> None:
        rt = self._rt
        if rt is None:
            return
        codes = [rt.cudaStreamSynchronize(self._stream)[0]] if self._stream is not None else []
        self._contexts.clear()                                     # TensorRT objects go before their memory
        self._engines.clear()
        self._runtime = None
        self._image = self._map = self._score = np.zeros((0, 0, 0, 0), np.float32)
        codes += [rt.cudaFree(p)[0] for p in self._dev.values()] + [rt.cudaFreeHost(p)[0] for p in self._host.values()]
        if self._stream is not None:
            codes.append(rt.cudaStreamDestroy(self._stream)[0])
        self._dev, self._host, self._stream, self._rt = {}, {}, None, None
        bad = [c for c in codes if c != rt.cudaError_t.cudaSuccess]
        if bad:
            raise EdgeADError(f"CUDA reported {getattr(bad[0], 'name', bad[0])} freeing TensorRT buffers", CUDA_HINT)

    def __enter__(self) -> TensorRTDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:       # interpreter shutdown or a dead CUDA context: nothing left to free safely
            pass
