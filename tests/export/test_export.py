"""ONNX export: it leaves the model as it found it; the FP16 graphs' types; BatchNorm folding."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgead.errors import EdgeADError
from edgead.export.onnx import export_onnx, export_onnx_fp16, fold_batchnorm
from edgead.model.artifact import load_model


def test_export_leaves_the_model_untouched(tiny_model, tmp_path):
    # The FP32 export once left the model in training mode and its shape probe then updated the
    # students' BatchNorm statistics with random noise; the FP16 graph, exported next, carried them
    # and lost up to 0.18 AUROC (docs/benchmarks.md).
    model, _ = load_model(tiny_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path)
    export_onnx_fp16(model, tmp_path)
    assert not any(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []


def test_fp16_graph_types(tiny_model, tmp_path):
    """FP16 weights and convolutions; FP32 inputs, outputs, normalisation and head; dynamic batch."""
    model, _ = load_model(tiny_model)
    sig = export_onnx_fp16(model, tmp_path)
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    for role in ("teacher", "student"):
        assert all(dims[0] == "batch" for dims in [*sig[role]["inputs"].values(), *sig[role]["outputs"].values()])
        g = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / sig[role]["file"]))).graph
        assert {v.type.tensor_type.elem_type for v in [*g.input, *g.output]} == {f32}
        types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
        types.update({i.name: i.data_type for i in g.initializer})
        ops = [n.op_type for n in g.node]
        assert "BatchNormalization" not in ops
        convs = [n for n in g.node if n.op_type == "Conv"]
        assert convs
        head_blur = [n for n in convs if types[n.input[1]] == f32]      # the head's Gaussian blur
        assert all(types[n.input[1]] == f16 for n in convs if n not in head_blur)
        assert len(head_blur) == (2 if role == "student" else 0)
        if role == "student":
            sensitive = [n for n in g.node if n.op_type in ("Pow", "ReduceSum", "Sqrt", "Resize", "ReduceMax")]
            assert sensitive and all(types[n.output[0]] == f32 for n in sensitive)


class _ConvBN(nn.Module):
    def __init__(self, reuse: bool) -> None:
        super().__init__()
        self.reuse = reuse
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        y = self.conv(x)
        out = self.block(self.bn(y))
        return out + y if self.reuse else out      # a conv output also used elsewhere cannot be folded


@pytest.mark.parametrize("reuse", [False, True])
def test_fold_batchnorm(reuse):
    torch.manual_seed(0)
    m = _ConvBN(reuse)
    for bn in (m.bn, m.block[1]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(1e-6, 1e-3)    # small variances, as in the trained deep student
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = m.eval()(x)
        if reuse:
            with pytest.raises(EdgeADError, match="changed the backbone's output"):
                fold_batchnorm(m, x)
            return
        assert fold_batchnorm(m, x) == 2
        assert not any(isinstance(s, nn.BatchNorm2d) for s in m.modules())
        assert torch.allclose(m(x), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_fold_batchnorm_keeps_the_backbones(tiny_model):
    model, _ = load_model(tiny_model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for pair in model.pairs:
            for net in (pair.teacher, pair.student):
                ref = net(x)
                assert fold_batchnorm(net, x) > 0
                assert not any(isinstance(s, nn.BatchNorm2d) for s in net.modules())
                for a, b in zip(net(x), ref):
                    assert np.allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_every_axis_is_named_right_and_the_graphs_carry_their_metadata(tiny_model, tmp_path):
    """Graph readers (Netron, Triton, the engine builders) see batch x the real per-image shape on every
    output, never a height named `batch`, and the file says what it is without the manifest."""
    import json

    from edgead import __version__

    model, _ = load_model(tiny_model)
    sig = export_onnx(model, tmp_path, metadata={"model_fingerprint": "abc"})
    h, w = model.cfg.input.height, model.cfg.input.width
    for role in ("teacher", "student"):
        g = onnx.load(str(tmp_path / sig[role]["file"]))
        shapes = {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
                  for v in [*g.graph.input, *g.graph.output]}
        for name, dims in shapes.items():
            assert dims[0] == "batch" and all(isinstance(d, int) and d > 0 for d in dims[1:]), (role, name, dims)
        props = {p.key: p.value for p in g.metadata_props}
        assert props["role"] == role and props["precision"] == "fp32" and props["edgead_version"] == __version__
        assert props["input_size"] == f"{h}x{w}" and props["model_fingerprint"] == "abc"
        assert json.loads(props["preprocess"]) == model.cfg.input.to_dict()
    teacher = onnx.load(str(tmp_path / sig["teacher"]["file"])).graph
    assert {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim][1:] for v in teacher.output} == \
        sig["feature_shapes"]
    student = onnx.load(str(tmp_path / sig["student"]["file"])).graph
    assert [d.dim_value for d in student.output[0].type.tensor_type.shape.dim][1:] == sig["map_shape"]
    assert len(student.output[1].type.tensor_type.shape.dim) == 1                  # score: one per image
