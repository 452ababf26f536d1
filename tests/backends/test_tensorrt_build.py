"""The TensorRT builder's own rules, checked on the CPU with stand-ins for TensorRT's objects:
which layers of the student network are the scoring head (and get pinned to FP32 under FP16),
how the engine inspector's report is read, when a build is strongly typed, and what happens to a
timing cache that does not fit. The real builds are in tests/gpu."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from edgead.errors import EdgeADError

FP32, FP16, INT64 = "FP32", "FP16", "INT64"


class _Tensor:
    def __init__(self, name: str, dtype: str = FP32) -> None:
        self.name, self.dtype = name, dtype


class _Layer:
    """What _keep_head_fp32 reads and writes of a TensorRT ILayer."""

    def __init__(self, name: str, inputs: list[_Tensor | None], outputs: list[_Tensor]) -> None:
        self.name, self._inputs, self._outputs = name, inputs, outputs
        self.num_inputs, self.num_outputs = len(inputs), len(outputs)
        self.precision: str | None = None
        self.output_types: dict[int, str] = {}

    def get_input(self, j: int) -> _Tensor | None:
        return self._inputs[j]

    def get_output(self, j: int) -> _Tensor:
        return self._outputs[j]

    def set_output_type(self, j: int, dtype: str) -> None:
        self.output_types[j] = dtype


class _Network:
    """Layers in the order the ONNX parser adds them (graph order), tensors by name."""

    def __init__(self, inputs: list[str]) -> None:
        self.tensors = {name: _Tensor(name) for name in inputs}
        self._inputs = [self.tensors[n] for n in inputs]
        self.layers: list[_Layer] = []

    def add(self, name: str, inputs: list[str], outputs: list[str], dtype: str = FP32) -> _Layer:
        for out in outputs:
            self.tensors[out] = _Tensor(out, dtype)
        layer = _Layer(name, [self.tensors[n] if n else None for n in inputs], [self.tensors[n] for n in outputs])
        self.layers.append(layer)
        return layer

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_layer(self, i: int) -> _Layer:
        return self.layers[i]

    def get_input(self, i: int) -> _Tensor:
        return self._inputs[i]


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__dict__.update(float32=FP32, float16=FP16)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def _pinned(network: _Network) -> set[str]:
    return {layer.name for layer in network.layers if layer.output_types}


def test_head_constants_named_after_initializers_are_pinned(fake_trt: types.ModuleType) -> None:
    """onnx-tensorrt names a Constant layer after its initializer: model.head.norm_low, or
    onnx::Div_1457 once torch has folded norm_high[0]; neither has the /head/ scope, and both
    must be FP32 (under BuilderFlag.FP16 an unpinned constant is stored in FP16)."""
    from edgead.export.tensorrt_build import _keep_head_fp32, head_layers

    net = _Network(["image", "t0_0"])
    net.add("/student/conv/Conv", ["image"], ["s0"])
    low = net.add("model.head.norm_low", [], ["model.head.norm_low"])
    folded = net.add("onnx::Div_1457", [], ["onnx::Div_1457"])
    net.add("/head/Cast", ["t0_0"], ["a"])
    net.add("/head/Sub", ["a", "s0"], ["b"])
    net.add("/head/Div", ["b", "onnx::Div_1457"], ["c"])
    kernel = net.add("onnx::Conv_77", [], ["onnx::Conv_77"])             # the blur kernel, through an Identity
    identity = net.add("Identity_168", ["onnx::Conv_77"], ["k"])
    unnamed = net.add("(Unnamed Layer* 8) [Convolution]", ["c", "k"], ["d"])   # reads the features: head
    shape = net.add("/head/Shape", ["d"], ["shape"], dtype=INT64)
    net.add("/student/features.1/Constant", [], ["sc"])                 # a backbone constant
    net.add("/student/features.1/Mul", ["s0", "sc"], ["s1"])
    net.add("/head/Sub_2", ["d", "model.head.norm_low"], ["map"])

    heads = {net.layers[i].name for i in head_layers(net)}
    assert {low.name, folded.name, kernel.name, identity.name, unnamed.name, shape.name} <= heads
    assert not {n for n in heads if n.startswith("/student/")}
    forced = _keep_head_fp32(net)
    pinned = _pinned(net)
    assert pinned == heads - {shape.name} and forced == len(pinned)     # integer (shape) layers are left alone
    assert shape.precision is None and not shape.output_types
    for layer in net.layers:
        if layer.name in pinned:
            assert layer.precision == FP32 and set(layer.output_types.values()) == {FP32}, layer.name


def test_a_layer_with_integer_inputs_gets_only_fp32_outputs(fake_trt: types.ModuleType) -> None:
    from edgead.export.tensorrt_build import _keep_head_fp32

    net = _Network(["image", "t0_0"])
    net.add("/head/Shape", ["t0_0"], ["shape"], dtype=INT64)
    fill = net.add("/head/ConstantOfShape", ["shape"], ["zeros"])
    assert _keep_head_fp32(net) == 1
    assert fill.precision is None and fill.output_types == {0: FP32}


def _network_from_onnx(path: Path) -> _Network:
    """A stand-in for what onnx-tensorrt makes of an ONNX graph: one layer per node, named after
    it, and a Constant layer named after each initializer where a node first reads it."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    kinds = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    kinds.update({i.name: i.data_type for i in graph.initializer})

    def dtype(name: str) -> str:
        kind = kinds.get(name, onnx.TensorProto.FLOAT)
        return {onnx.TensorProto.FLOAT: FP32, onnx.TensorProto.FLOAT16: FP16}.get(kind, INT64)

    net = _Network([v.name for v in graph.input])
    pending = {i.name for i in graph.initializer}
    for node in graph.node:
        for name in node.input:
            if name in pending:
                net.add(name, [], [name], dtype(name))
                pending.discard(name)
        for out in node.output:
            net.tensors[out] = _Tensor(out, dtype(out))
        layer = _Layer(node.name, [net.tensors[n] if n else None for n in node.input],
                       [net.tensors[n] for n in node.output])
        net.layers.append(layer)
    return net


def test_every_head_layer_of_the_exported_student_is_pinned(fake_trt: types.ModuleType, tmp_path: Path) -> None:
    """On the student graph edgead exports (an untrained model: the graph is what matters), every
    float layer of the head is pinned, no constant reaches a pinned layer unpinned, and the
    student backbone is left to FP16."""
    from edgead.export.onnx import export_onnx
    from edgead.export.tensorrt_build import _keep_head_fp32
    from edgead.model.config import load_config
    from edgead.model.kd import DualKD

    cfg = load_config("edge", overrides={"input": {"height": 64, "width": 64}})
    assert cfg.position_norm                          # so that the head has its position statistics
    graphs = export_onnx(DualKD(cfg, teacher_weights=False).eval(), tmp_path)
    net = _network_from_onnx(tmp_path / graphs["student"]["file"])
    _keep_head_fp32(net)
    pinned = _pinned(net)
    by_name = {layer.name: layer for layer in net.layers}

    named_head = {n for n, layer in by_name.items() if "/head/" in n and layer.get_output(0).dtype == FP32}
    assert named_head and named_head <= pinned
    initializer_named = {n for n in pinned if n.startswith("model.head.")}
    assert initializer_named == {"model.head.position_mean", "model.head.position_std"}
    assert {n for n in pinned if "/head/" not in n and not n.startswith("model.head.")}, \
        "the folded constants (onnx::...) and the Identity layers over them are pinned too"

    producer = {t.name: layer for layer in net.layers for t in layer._outputs}
    from_image: set[str] = {"image"}                  # tensors the backbone computes from the image
    for layer in net.layers:
        if any(t is not None and t.name in from_image for t in layer._inputs):
            from_image.update(t.name for t in layer._outputs)
    for name in pinned:
        for t in by_name[name]._inputs:
            if t is None or t.dtype != FP32 or t.name in from_image or t.name not in producer:
                continue
            assert producer[t.name].name in pinned, f"{producer[t.name].name} feeds {name} unpinned"
    backbone = {n for n in by_name if n.startswith(("/student/", "/pool"))}
    assert backbone and not backbone & pinned


def test_inspector_report_of_the_head() -> None:
    """TensorRT's engine inspector (JSON, ProfilingVerbosity.DETAILED) names fused layers after
    their parts and gives each output's format; the head is every layer one of whose parts it is."""
    from edgead.export.tensorrt_build import head_layer_formats, is_reduced_float

    fp16 = "Channel major FP16 format where channel % 8 == 0"
    layers: list[dict[str, Any]] = [
        {"Name": "/student/features.0/Conv + /student/features.0/Clip", "Outputs": [{"Format/Datatype": fp16}]},
        {"Name": "Reformatting CopyNode for Input Tensor 0 to /head/Cast_1",
         "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "PWN(/head/Pow, /head/ReduceSum)", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "model.head.position_mean", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "{ForeignNode[onnx::Div_1457...Identity_168]}", "Metadata": "[ONNX Layer: /head/Div_8]",
         "Outputs": [{"Format/Datatype": "Row major linear Half"}]},
        {"Name": "/head/Shape", "Outputs": [{"Format/Datatype": "Row major linear Int64"}]},
        {"Name": "/conv_head/Conv", "Outputs": [{"Format/Datatype": fp16}]},        # not the scoring head
    ]
    formats = head_layer_formats(layers)
    assert set(formats) == {layers[i]["Name"] for i in range(1, 6)}
    reduced = sorted(n for n, fmts in formats.items() if any(is_reduced_float(f) for f in fmts))
    assert reduced == ["{ForeignNode[onnx::Div_1457...Identity_168]}"]
    assert is_reduced_float(fp16) and is_reduced_float("Row major linear BF16")
    assert not is_reduced_float("Row major linear FP32") and not is_reduced_float("Row major linear Int32")


def _settings_trt(monkeypatch: pytest.MonkeyPatch, fp16_flag: bool, strongly_typed_flag: bool) -> None:
    trt = types.ModuleType("tensorrt")
    # TensorRT 11 dropped the FP16 and INT8 builder flags together (strongly typed networks only).
    trt.__dict__.update(BuilderFlag=types.SimpleNamespace(**({"FP16": 1, "INT8": 3} if fp16_flag else {})),
                        NetworkDefinitionCreationFlag=types.SimpleNamespace(
                            **({"STRONGLY_TYPED": 2} if strongly_typed_flag else {})))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)


FP16_ONNX = {"teacher": "teacher.fp16.onnx", "student": "student.fp16.onnx"}


@pytest.mark.parametrize("version, fp16_flag, st_flag, asked, fp16_onnx, expected", [
    ("8.5.2", True, False, None, FP16_ONNX, False),                # JetPack 5
    ("8.4.1", True, False, None, FP16_ONNX, "too old: edgead needs TensorRT 8.5 or newer"),
    ("8.6.1", True, False, None, FP16_ONNX, False),
    ("10.3.0", True, True, None, FP16_ONNX, False),
    ("10.3.0", True, True, True, FP16_ONNX, True),
    ("11.0.0", False, True, None, FP16_ONNX, True),
    ("11.0.0", False, False, True, FP16_ONNX, True),       # strong typing implied, its flag gone
    ("8.6.1", True, False, True, FP16_ONNX, "has no strongly typed networks"),
    ("11.0.0", False, True, False, FP16_ONNX, "builds FP16 only strongly typed"),
    ("11.0.0", False, True, None, None, "from FP16 ONNX graphs: none given"),
    ("10.3.0", True, True, True, None, "from FP16 ONNX graphs: none given"),
], ids=["8.5", "8.4", "8.6", "10", "10-strong", "11", "11-no-flag", "8.6-strong", "11-weak", "11-no-graphs", "10-no-graphs"])
def test_when_fp16_is_strongly_typed(monkeypatch: pytest.MonkeyPatch, version: str, fp16_flag: bool, st_flag: bool,
                                     asked: bool | None, fp16_onnx: dict[str, str] | None, expected: Any) -> None:
    from edgead.export.tensorrt_build import _settings

    _settings_trt(monkeypatch, fp16_flag, st_flag)

    def build() -> Any:
        return _settings(version, "fp16", 4, (64, 64), {"t0_0": (16, 16, 16)}, 256, None, fp16_onnx, asked)
    if isinstance(expected, str):
        with pytest.raises(EdgeADError, match=expected):
            build()
    else:
        assert build().strongly_typed is expected


def test_strong_typing_is_for_fp16_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgead.export.tensorrt_build import _settings

    _settings_trt(monkeypatch, True, True)
    with pytest.raises(EdgeADError, match="strong typing is for FP16 builds, not fp32"):
        _settings("10.3.0", "fp32", 4, (64, 64), {}, 256, None, FP16_ONNX, True)
    assert _settings("10.3.0", "fp32", 4, (64, 64), {}, 256, None, FP16_ONNX, None).strongly_typed is False


@pytest.mark.parametrize("version, flags, typed", [("8.5.2", True, False), ("10.3.0", True, False),
                                                   ("11.0.0", False, True)])
def test_int8_is_explicit_quantisation_from_the_qdq_graphs(monkeypatch: pytest.MonkeyPatch, version: str,
                                                           flags: bool, typed: bool) -> None:
    """INT8 builds from the QDQ graphs: with the INT8 builder flag where TensorRT has it, strongly
    typed on 11; never from the FP16 graphs, never on DLA (edgead's DLA engines are FP16)."""
    from edgead.export.tensorrt_build import _settings

    _settings_trt(monkeypatch, flags, True)
    settings = _settings(version, "int8", 4, (64, 64), {}, 256, None, FP16_ONNX, None)
    assert settings.precision == "int8" and settings.strongly_typed is typed
    with pytest.raises(EdgeADError, match="DLA engines in FP16, not int8"):
        _settings(version, "int8", 4, (64, 64), {}, 256, 0, FP16_ONNX, None)


class _Config:
    """The timing-cache half of an IBuilderConfig: a cache made elsewhere does not fit."""

    def __init__(self, refuse: str) -> None:
        self.refuse = refuse
        self.caches: list[Any] = []

    def create_timing_cache(self, blob: bytes) -> Any:
        if blob == b"damaged" and self.refuse == "raise":
            raise RuntimeError("invalid timing cache")
        if blob == b"damaged":
            return None
        return ("cache", blob)

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False                   # a mismatch must be seen, not silently reused
        self.caches.append(cache)
        return cache[1] != b"other gpu"


@pytest.mark.parametrize("content, refuse, reused", [
    (None, "", True), (b"timings", "", True), (b"other gpu", "", False), (b"damaged", "none", False),
    (b"damaged", "raise", False)], ids=["none", "reused", "mismatch", "damaged", "damaged-raises"])
def test_timing_cache_reuse_and_mismatch(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                         content: bytes | None, refuse: str, reused: bool) -> None:
    from edgead.export.tensorrt_build import _load_timing_cache

    path = tmp_path / "timing.cache"
    if content is not None:
        path.write_bytes(content)
    config = _Config(refuse)
    with caplog.at_level(logging.WARNING, logger="edgead.tensorrt"):
        cache = _load_timing_cache(config, path)  # type: ignore[arg-type]
    assert config.caches[-1] is cache
    if reused:
        assert cache == ("cache", content or b"") and "ignoring" not in caplog.text
    else:
        assert cache == ("cache", b"") and f"ignoring {path}" in caplog.text
