"""ONNX rewrites: a zero Pad before a Conv moves into the Conv's pads, with identical numbers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgead.export.onnx_passes import fold_pads_into_convs, prune_dead_nodes


def _graph(pad_mode: str = "constant", pad_value: float = 0.0, second_user: str = "") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    # the pads come from a chain of constant ops, as torch's exporter writes them
    nodes = [
        helper.make_node("Constant", [], ["p_head"], value=numpy_helper.from_array(np.array([0, 0, 0, 0], np.int64))),
        helper.make_node("Constant", [], ["p_tail"], value=numpy_helper.from_array(np.array([0, 0, 1, 1], np.int64))),
        helper.make_node("Concat", ["p_head", "p_tail"], ["pads"], axis=0),
        helper.make_node("Constant", [], ["v"], value=numpy_helper.from_array(np.array(pad_value, np.float32))),
        helper.make_node("Pad", ["x", "pads", "v"], ["xp"], mode=pad_mode),
        helper.make_node("Conv", ["xp", "w"], ["y"], strides=[2, 2]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 4, 4])]
    if second_user == "relu":
        nodes.append(helper.make_node("Relu", ["xp"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["n", 3, 9, 9]))
    elif second_user == "conv":
        nodes.append(helper.make_node("Conv", ["xp", "w"], ["r"], strides=[2, 2], pads=[1, 1, 1, 1]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["n", 4, 5, 5]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                          outputs, [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_constant_zero_pad_is_folded_into_the_conv_with_identical_output():
    m = _graph()
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    before = _run(m, x)
    assert fold_pads_into_convs(m) == 1
    assert prune_dead_nodes(m) == 4                      # the constant chain that built the pads
    assert [n.op_type for n in m.graph.node] == ["Conv"]
    conv = m.graph.node[0]
    assert list(conv.input)[0] == "x" and list(next(a for a in conv.attribute if a.name == "pads").ints) == [0, 0, 1, 1]
    onnx.checker.check_model(m)
    np.testing.assert_array_equal(_run(m, x), before)


def test_a_pad_feeding_two_convs_moves_into_both():
    m = _graph(second_user="conv")
    x = np.random.default_rng(2).normal(size=(1, 3, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    before = sess.run(None, {"x": x})
    assert fold_pads_into_convs(m) == 1 and not any(n.op_type == "Pad" for n in m.graph.node)
    pads = [list(next(a for a in n.attribute if a.name == "pads").ints) for n in m.graph.node if n.op_type == "Conv"]
    assert pads == [[0, 0, 1, 1], [1, 1, 2, 2]]
    after = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)


def test_pads_that_are_not_plain_zero_padding_are_left_alone():
    for m in (_graph(pad_mode="reflect"), _graph(pad_value=1.0), _graph(second_user="relu")):
        assert fold_pads_into_convs(m) == 0
        assert any(n.op_type == "Pad" for n in m.graph.node)


def test_exported_lite_graphs_have_no_pad_left(tiny_model, tmp_path):
    """The Lite teacher's strided convs (TF SAME padding) carry their pads themselves after export."""
    from edgead.export.build import build_engine

    build_engine(tiny_model, tmp_path / "e", max_batch=2, log=lambda s: None)
    for name in ("teacher.onnx", "student.onnx", "teacher.fp16.onnx", "student.fp16.onnx"):
        m = onnx.load(str(tmp_path / "e" / name))
        pads = [n for n in m.graph.node if n.op_type == "Pad"   # the head's blur pads by reflection: kept
                and all(a.s in (b"", b"constant") for a in n.attribute if a.name == "mode")]
        convs = [n for n in m.graph.node if n.op_type == "Conv" and any(a.name == "pads" and list(a.ints)[:2] == [0, 0]
                                                                          and list(a.ints)[2:] == [1, 1] for a in n.attribute)]
        assert not [p for p in pads if any(c.op_type == "Conv" for c in m.graph.node if p.output[0] in c.input)], name
        assert convs, name        # the asymmetric SAME pads now live in the convs
