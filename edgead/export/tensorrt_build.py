"""TensorRT builder: the teacher and student plans of an engine folder, from its ONNX graphs.

A plan only runs on the GPU model and TensorRT version that built it, so the builder runs on the
device that will run the plans (by `build-engine --model` where TensorRT is usable, by
`build-engine --engine` on a Jetson) and records both in the manifest entry it returns. It needs
no torch; TensorRT is imported lazily. Supports TensorRT 8.5 (JetPack 5) to 11.x.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgead.backends.manifest import PRECISIONS
from edgead.backends.tensorrt import INSTALL, ROLES, capture_errors, gpu_identity, last_error, logger, require
from edgead.errors import EdgeADError
from edgead.io import atomic_write_bytes

if TYPE_CHECKING:
    import tensorrt as trt

TIMING_CACHE = "timing.cache"
IMAGE_INPUT = "image"                      # the one input of either graph that is not a teacher feature
# torch's scope of the scoring head in node names (/head/..., /model/head/...) and in initializer
# names (model.head.norm_low), which onnx-tensorrt gives the Constant layers it makes from them.
HEAD_NAME = re.compile(r"(?:^|[/.])head[/.]")
_log = logging.getLogger("edgead.tensorrt")


@dataclass(frozen=True)
class _Settings:
    """What the teacher's and the student's builds share."""

    version: str
    precision: str
    strongly_typed: bool                   # FP16 types taken from the FP16 ONNX graphs (TensorRT 10+)
    max_batch: int
    min_batch: int                         # max_batch for DLA: it needs static shapes (min = opt = max)
    workspace_mib: int
    dla_core: int | None
    shapes: dict[str, tuple[int, ...]]     # input name -> per-image shape, for dims the graph leaves dynamic


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2])


def head_layers(network: trt.INetworkDefinition) -> list[int]:
    """Indices of the student network's scoring-head layers, whatever onnx-tensorrt named them.

    Names alone miss some: a Constant layer made from an initializer is named after it
    (`model.head.position_mean`, or `onnx::Div_1457` once torch has folded `norm_high[0]`), which
    carries no /head/ scope. So a layer is in the head if its name says so, if it computes from a
    teacher-feature input (every input but the image: the student backbone reads the image only),
    or if it computes from no input at all (a constant, or a chain of them) and a head layer reads
    it. The parser adds layers in graph order, so one pass forward and one back find them all.
    """
    derived = {network.get_input(i).name for i in range(network.num_inputs)} - {IMAGE_INPUT}
    constant: set[str] = set()                                  # tensors computed from no network input
    head: set[int] = set()
    constant_layers: list[int] = []
    outputs: list[list[str]] = []
    readers: dict[str, set[int]] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        inputs: list[trt.ITensor | None] = [layer.get_input(j) for j in range(layer.num_inputs)]
        names = [t.name for t in inputs if t is not None]
        outputs.append([layer.get_output(j).name for j in range(layer.num_outputs)])
        for name in names:
            readers.setdefault(name, set()).add(i)
        if all(name in constant for name in names):
            constant.update(outputs[i])
            constant_layers.append(i)
        if HEAD_NAME.search(layer.name) or any(name in derived for name in names):
            head.add(i)
            derived.update(outputs[i])
    for i in reversed(constant_layers):
        if any(reader in head for name in outputs[i] for reader in readers.get(name, ())):
            head.add(i)
    return sorted(head)


def _keep_head_fp32(network: trt.INetworkDefinition) -> int:
    """Pin the scoring head to FP32: its squared feature differences overflow or vanish in FP16.

    Every head layer (head_layers), constants included: an unpinned constant is stored and read in
    FP16 under BuilderFlag.FP16 (the normalisation statistics lose their digits). Layers with
    integer (shape) inputs only get FP32 outputs; integer-valued layers are left alone.
    """
    import tensorrt as trt

    floats, forced = (trt.float32, trt.float16), 0
    for i in head_layers(network):
        layer = network.get_layer(i)
        if not all(layer.get_output(j).dtype in floats for j in range(layer.num_outputs)):
            continue
        inputs: list[trt.ITensor | None] = [layer.get_input(j) for j in range(layer.num_inputs)]
        if all(t is None or t.dtype in floats for t in inputs):
            layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        forced += 1
    return forced


def head_layer_formats(layers: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Inspector layers (edgead.backends.tensorrt.engine_layers) of the scoring head -> the
    "Format/Datatype" of each of their outputs, e.g. "Row major linear FP32".

    A layer belongs to the head when its name, or its ONNX origin in "Metadata", names the head;
    TensorRT's fused layers join their parts' names ("/head/Sub + /head/Pow"), so one head part is enough.
    """
    found: dict[str, list[str]] = {}
    for layer in layers:
        name = str(layer.get("Name", ""))
        if HEAD_NAME.search(name) or HEAD_NAME.search(str(layer.get("Metadata", ""))):
            found[name] = [str(t.get("Format/Datatype", "")) for t in layer.get("Outputs", []) if isinstance(t, dict)]
    return found


def is_reduced_float(fmt: str) -> bool:
    """A "Format/Datatype" string of a float type narrower than FP32 (FP16, BF16, FP8, INT8 quantised)."""
    return bool(re.search(r"\b(FP16|Half|BF16|FP8|FP4|Int8)\b", fmt, flags=re.IGNORECASE))


def _load_timing_cache(config: trt.IBuilderConfig, path: Path) -> trt.ITimingCache:
    """Reuse earlier tactic timings; a cache from another GPU or TensorRT, or a damaged one, is
    replaced by a new one (a warning, not an error)."""
    blob = path.read_bytes() if path.is_file() else b""
    try:
        cache: trt.ITimingCache | None = config.create_timing_cache(blob)
    except Exception:          # TensorRT versions differ in how they refuse a damaged blob
        cache = None
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        _log.warning("ignoring %s: it was made on another device or TensorRT version, or is damaged", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _settings(version: str, precision: str, max_batch: int, input_hw: tuple[int, int],
              feature_shapes: dict[str, tuple[int, ...]], workspace_mib: int, dla_core: int | None,
              strongly_typed_fp16_onnx: dict[str, str] | None, strongly_typed: bool | None = None) -> _Settings:
    """Check a build request against this TensorRT; refuse what it cannot build.

    strongly_typed None: FP16 from the builder flag where TensorRT has one (8.x, 10), else (11) from
    the FP16 ONNX graphs' own types. True asks for the latter on TensorRT 10 too.
    """
    import tensorrt as trt

    if _major_minor(version) < (8, 5):                         # 8.5: the tensor-name API (execute_async_v3)
        raise EdgeADError(f"TensorRT {version} is too old: edgead needs TensorRT 8.5 or newer", INSTALL)
    if precision not in PRECISIONS or max_batch < 1 or workspace_mib < 1:
        raise EdgeADError(f"cannot build {precision!r} with max batch {max_batch} and {workspace_mib} MiB workspace",
                          f"use --precision {' or '.join(PRECISIONS)} and a positive --max-batch and --workspace")
    has_flag = hasattr(trt.BuilderFlag, "FP16")
    if dla_core is not None and precision != "fp16":
        raise EdgeADError(f"edgead builds DLA engines in FP16, not {precision}", "build for DLA with --precision fp16")
    if strongly_typed and precision != "fp16":
        raise EdgeADError(f"strong typing is for FP16 builds, not {precision}",
                          "ask for a strongly typed build with --precision fp16 only")
    if strongly_typed and has_flag and not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        raise EdgeADError(f"TensorRT {version} has no strongly typed networks (TensorRT 10 and newer have)",
                          "build FP16 with the builder flag (the default), or update TensorRT")
    if strongly_typed is False and precision == "fp16" and not has_flag:
        raise EdgeADError(f"TensorRT {version} builds FP16 only strongly typed (it has no FP16 builder flag)",
                          "leave strong typing to edgead (the default)")
    if precision == "int8":
        # Explicit quantisation: the QDQ graphs say which layers run INT8; the rest, the head among
        # them, runs FP32. TensorRT 8.5-10 need the INT8 builder flag for it; 11 has no flag and
        # reads the QDQ graph strongly typed.
        return _Settings(version=version, precision=precision, strongly_typed=not hasattr(trt.BuilderFlag, "INT8"),
                         max_batch=max_batch, min_batch=1, workspace_mib=workspace_mib, dla_core=None,
                         shapes={"image": (3, *input_hw), **feature_shapes})
    strongly_typed = precision == "fp16" and (bool(strongly_typed) or not has_flag)
    if strongly_typed and not strongly_typed_fp16_onnx:
        raise EdgeADError(f"TensorRT {version} builds this FP16 engine strongly typed, from FP16 ONNX graphs: none given",
                          "export the FP16 ONNX graphs, or build with --precision fp32")
    return _Settings(version=version, precision=precision, strongly_typed=strongly_typed, max_batch=max_batch,
                     min_batch=max_batch if dla_core is not None else 1, workspace_mib=workspace_mib,
                     dla_core=dla_core, shapes={"image": (3, *input_hw), **feature_shapes})


def _network_flags(settings: _Settings) -> int:
    import tensorrt as trt

    flags = 0
    if _major_minor(settings.version)[0] < 10:                  # always explicit batch from TensorRT 10 on
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if settings.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)   # accepted (implied) on 11
    return flags


def _configure(builder: trt.Builder, network: trt.INetworkDefinition, role: str, path: Path,
               settings: _Settings, cache: trt.ITimingCache | None,
               cache_path: Path) -> tuple[trt.IBuilderConfig, trt.ITimingCache]:
    """The builder config of one role: workspace, shared timing cache, precision, DLA."""
    import tensorrt as trt

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    # Layer names, types and tensor formats in the plan: the engine inspector can then show that the
    # head runs in FP32 (tests/gpu does). It adds a few kB of text, nothing at run time.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if cache is None:
        cache = _load_timing_cache(config, cache_path)          # and set on this config
    else:
        config.set_timing_cache(cache, ignore_mismatch=False)
    if settings.precision == "fp16" and not settings.strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        if role == "student" and _keep_head_fp32(network) == 0:
            raise EdgeADError(f"no scoring-head layers (/head/...) in {path.name} to keep in FP32",
                              "export the model again with this edgead version")
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    elif settings.precision == "int8" and not settings.strongly_typed:
        config.set_flag(trt.BuilderFlag.INT8)                   # explicit quantisation from the QDQ graph
    elif settings.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)                 # fp32 means FP32, not TF32 convolutions
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    return config, cache


def _add_profile(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig, path: Path,
                 settings: _Settings, errors: list[str]) -> None:
    """One optimisation profile: batch min_batch..max_batch (opt max_batch), per-image dims as exported."""
    import tensorrt as trt

    low, high = settings.min_batch, settings.max_batch
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        chw = [int(tensor.shape[k]) for k in range(1, len(tensor.shape))]      # static in edgead's export
        if any(d < 0 for d in chw):
            if tensor.name not in settings.shapes:
                raise EdgeADError(f"{path.name} input {tensor.name!r} has no known shape", "export it again")
            chw = [int(d) for d in settings.shapes[tensor.name]]
        profile.set_shape(tensor.name, trt.Dims([low, *chw]), trt.Dims([high, *chw]), trt.Dims([high, *chw]))
    if config.add_optimization_profile(profile) < 0:
        raise EdgeADError(f"invalid optimisation profile for {path.name}{last_error(errors)}", "export it again")


def _build_role(builder: trt.Builder, errors: list[str], engine_dir: Path, role: str,
                source: str, flags: int, settings: _Settings,
                cache: trt.ITimingCache | None) -> tuple[bytes, trt.ITimingCache]:
    """Parse one role's ONNX graph and build its serialized plan; returns it and the timing cache."""
    import tensorrt as trt

    path, version = engine_dir / source, settings.version
    if not path.is_file():
        raise EdgeADError(f"ONNX graph {path} not found", "export the model again with `edgead build-engine`")
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger())                  # owns the weights: alive until built
    if not parser.parse_from_file(str(path)):
        found = "; ".join(" ".join(str(parser.get_error(i)).split()) for i in range(min(parser.num_errors, 3)))
        raise EdgeADError(f"TensorRT {version} could not parse {path.name}: {found or 'unknown error'}",
                          "update TensorRT, or report this with the model config")
    config, cache = _configure(builder, network, role, path, settings, cache, engine_dir / TIMING_CACHE)
    _add_profile(builder, network, config, path, settings, errors)
    plan: trt.IHostMemory | None = builder.build_serialized_network(network, config)
    if plan is None:
        raise EdgeADError(f"TensorRT {version} failed to build the {role} engine{last_error(errors)}",
                          "try a larger --workspace, a smaller --max-batch, or --precision fp32")
    blob = bytes(memoryview(plan))
    del parser, network
    return blob, cache


def build_engines(engine_dir: Path, onnx_files: dict[str, str], precision: str, max_batch: int,
                  input_hw: tuple[int, int], feature_shapes: dict[str, tuple[int, ...]],
                  workspace_mib: int = 1024, dla_core: int | None = None,
                  strongly_typed_fp16_onnx: dict[str, str] | None = None,
                  strongly_typed: bool | None = None) -> dict[str, Any]:
    """Build `<role>.<precision>.plan` for teacher and student in engine_dir; return the manifest entry.

    onnx_files (and strongly_typed_fp16_onnx) map role -> ONNX file name in engine_dir; for INT8 they
    are the QDQ graphs (edgead.export.quantize), built with explicit quantisation. TensorRT 11
    has no FP16 builder flag: there FP16 means a strongly typed network from the FP16 ONNX graphs,
    whose own types keep the head and the engine inputs and outputs in FP32 (strongly_typed=True
    asks for that on TensorRT 10 as well; None leaves the choice to the TensorRT version).
    The profile's opt batch is max_batch: the batch a user builds for is the batch they run (longer
    inputs are split into max_batch chunks), and a single-camera max_batch 1 gets opt 1.
    feature_shapes (name -> (C, h, w)) and input_hw are only used where the ONNX graph leaves a
    non-batch input dim dynamic (edgead's export does not: its student inputs are static).
    """
    require()
    import tensorrt as trt

    engine_dir, version = Path(engine_dir), str(trt.__version__)
    settings = _settings(version, precision, max_batch, input_hw, feature_shapes, workspace_mib, dla_core,
                         strongly_typed_fp16_onnx, strongly_typed)
    fp16_typed = settings.strongly_typed and precision == "fp16"
    sources = strongly_typed_fp16_onnx if fp16_typed and strongly_typed_fp16_onnx else onnx_files

    identity = gpu_identity()
    with capture_errors() as errors:
        builder = trt.Builder(logger())
        if dla_core is not None and not 0 <= dla_core < builder.num_DLA_cores:
            raise EdgeADError(f"DLA core {dla_core} does not exist: this device has {builder.num_DLA_cores}",
                              "leave --dla-core out to build for the GPU")
        flags = _network_flags(settings)
        cache: trt.ITimingCache | None = None
        plans: dict[str, bytes] = {}
        for role in ROLES:
            plans[role], cache = _build_role(builder, errors, engine_dir, role, sources[role], flags, settings, cache)
    files = {role: f"{role}.{precision}.plan" for role in ROLES}
    for role in ROLES:
        atomic_write_bytes(engine_dir / files[role], plans[role])
    if cache is not None:
        atomic_write_bytes(engine_dir / TIMING_CACHE, bytes(memoryview(cache.serialize())))
    return {"backend": "tensorrt", "precision": precision, "files": files, "max_batch": max_batch,
            "device": {**identity, "tensorrt": version, "dla_core": dla_core}}
