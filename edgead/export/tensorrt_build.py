"""TensorRT builder: the teacher and student plans of an engine folder, from its ONNX graphs.

A plan only runs on the GPU model and TensorRT version that built it, so the builder runs on the
device that will run the plans (by `build-engine --model` where TensorRT is usable, by
`build-engine --engine` on a Jetson) and records both in the manifest entry it returns. It needs
no torch; TensorRT is imported lazily. Supports TensorRT 8.6, 10.x and 11.x.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgead.backends.manifest import PRECISIONS
from edgead.backends.tensorrt import INSTALL, ROLES, gpu_identity, last_error, make_logger, require
from edgead.errors import EdgeADError
from edgead.io import atomic_write_bytes

if TYPE_CHECKING:
    import tensorrt as trt

TIMING_CACHE = "timing.cache"
_log = logging.getLogger("edgead.tensorrt")


@dataclass(frozen=True)
class _Settings:
    """What the teacher's and the student's builds share."""

    version: str
    precision: str
    strongly_typed: bool                   # FP16 types taken from the FP16 ONNX graphs (TensorRT 11)
    max_batch: int
    min_batch: int                         # max_batch for DLA: it needs static shapes (min = opt = max)
    workspace_mib: int
    dla_core: int | None
    shapes: dict[str, tuple[int, ...]]     # input name -> per-image shape, for dims the graph leaves dynamic


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2])


def _keep_head_fp32(network: trt.INetworkDefinition) -> int:
    """Pin the scoring head to FP32: its squared feature differences overflow or vanish in FP16.

    torch names the head's ONNX nodes /head/... (/model/head/... when nested one level deeper).
    Layers with integer (shape) inputs only get FP32 outputs; integer-valued layers are left alone.
    """
    import tensorrt as trt

    floats, forced = (trt.float32, trt.float16), 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not (layer.name.startswith("/head/") or "/model/head/" in layer.name):
            continue
        if not all(layer.get_output(j).dtype in floats for j in range(layer.num_outputs)):
            continue
        inputs: list[trt.ITensor | None] = [layer.get_input(j) for j in range(layer.num_inputs)]
        if all(t is None or t.dtype in floats for t in inputs):
            layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        forced += 1
    return forced


def _load_timing_cache(config: trt.IBuilderConfig, path: Path) -> trt.ITimingCache:
    """Reuse earlier tactic timings; a cache from another GPU or TensorRT is replaced, not an error."""
    blob = path.read_bytes() if path.is_file() else b""
    cache: trt.ITimingCache | None = config.create_timing_cache(blob)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        _log.warning("ignoring %s: it was made on another device or TensorRT version", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache



def _settings(version: str, precision: str, max_batch: int, input_hw: tuple[int, int],
              feature_shapes: dict[str, tuple[int, ...]], workspace_mib: int, dla_core: int | None,
              strongly_typed_fp16_onnx: dict[str, str] | None) -> _Settings:
    """Check a build request against this TensorRT; refuse what it cannot build."""
    import tensorrt as trt

    if _major_minor(version) < (8, 6):
        raise EdgeADError(f"TensorRT {version} is too old: edgead needs TensorRT 8.6 or newer", INSTALL)
    if precision not in PRECISIONS or max_batch < 1 or workspace_mib < 1:
        raise EdgeADError(f"cannot build {precision!r} with max batch {max_batch} and {workspace_mib} MiB workspace",
                          f"use --precision {' or '.join(PRECISIONS)} and a positive --max-batch and --workspace")
    strongly_typed = precision == "fp16" and not hasattr(trt.BuilderFlag, "FP16")
    if strongly_typed and not strongly_typed_fp16_onnx:
        raise EdgeADError(f"TensorRT {version} builds FP16 only from FP16 ONNX graphs (strong typing), none given",
                          "export the FP16 ONNX graphs, or build with --precision fp32")
    if dla_core is not None and precision != "fp16":
        raise EdgeADError("DLA runs FP16 (or INT8) engines only", "build for DLA with --precision fp16")
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


def _build_role(builder: trt.Builder, logger: trt.ILogger, errors: list[str], engine_dir: Path, role: str,
                source: str, flags: int, settings: _Settings,
                cache: trt.ITimingCache | None) -> tuple[bytes, trt.ITimingCache]:
    """Parse one role's ONNX graph and build its serialized plan; returns it and the timing cache."""
    import tensorrt as trt

    path, version = engine_dir / source, settings.version
    if not path.is_file():
        raise EdgeADError(f"ONNX graph {path} not found", "export the model again with `edgead build-engine`")
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)                    # owns the weights: alive until built
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
                  strongly_typed_fp16_onnx: dict[str, str] | None = None) -> dict[str, Any]:
    """Build `<role>.<precision>.plan` for teacher and student in engine_dir; return the manifest entry.

    onnx_files (and strongly_typed_fp16_onnx) map role -> ONNX file name in engine_dir. TensorRT 11
    has no FP16 builder flag: there FP16 means a strongly typed network from the FP16 ONNX graphs,
    whose own types must keep the head and the engine inputs and outputs in FP32.
    The profile's opt batch is max_batch: the batch a user builds for is the batch they run (longer
    inputs are split into max_batch chunks), and a single-camera max_batch 1 gets opt 1.
    feature_shapes (name -> (C, h, w)) and input_hw are only used where the ONNX graph leaves a
    non-batch input dim dynamic (edgead's export does not: its student inputs are static).
    """
    require()
    import tensorrt as trt

    engine_dir, version = Path(engine_dir), str(trt.__version__)
    settings = _settings(version, precision, max_batch, input_hw, feature_shapes, workspace_mib, dla_core,
                         strongly_typed_fp16_onnx)
    sources = strongly_typed_fp16_onnx if settings.strongly_typed and strongly_typed_fp16_onnx else onnx_files

    identity = gpu_identity()
    logger, errors = make_logger()
    builder = trt.Builder(logger)
    if dla_core is not None and not 0 <= dla_core < builder.num_DLA_cores:
        raise EdgeADError(f"DLA core {dla_core} does not exist: this device has {builder.num_DLA_cores}",
                          "leave --dla-core out to build for the GPU")
    flags = _network_flags(settings)
    cache: trt.ITimingCache | None = None
    plans: dict[str, bytes] = {}
    for role in ROLES:
        plans[role], cache = _build_role(builder, logger, errors, engine_dir, role, sources[role], flags, settings,
                                         cache)
    files = {role: f"{role}.{precision}.plan" for role in ROLES}
    for role in ROLES:
        atomic_write_bytes(engine_dir / files[role], plans[role])
    if cache is not None:
        atomic_write_bytes(engine_dir / TIMING_CACHE, bytes(memoryview(cache.serialize())))
    return {"backend": "tensorrt", "precision": precision, "files": files, "max_batch": max_batch,
            "device": {**identity, "tensorrt": version, "dla_core": dla_core}}
