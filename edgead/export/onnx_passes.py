"""Small ONNX graph rewrites that the runtimes do not do for us.

`fold_pads_into_convs`: EfficientNet-Lite's TF "SAME" padding is exported as a zero Pad before each
strided Conv. ONNX Conv takes asymmetric pads itself, but ONNX Runtime only fuses a Pad whose pads
are an initializer, and the exporter builds them from a chain of constant ops. Each unfused Pad is a
full copy of a large early feature map, and on the CPU it also breaks ONNX Runtime's blocked (NCHWc)
layout around it (a reorder out and back in). The pass evaluates the constant chain, moves the pads
into the Conv and drops the Pad, so the graph computes exactly the same numbers with fewer copies.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _constant_value(name: str, producers: dict[str, Any], inits: dict[str, np.ndarray]) -> np.ndarray | None:
    """The value of tensor `name` if it depends only on constants and initializers, else None."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    if name in inits:
        return inits[name]
    nodes, stack, seen, needed_inits = [], [name], set(), set()
    while stack:
        t = stack.pop()
        if t in seen or t == "":
            continue
        seen.add(t)
        if t in inits:
            needed_inits.add(t)
            continue
        node = producers.get(t)
        if node is None:          # a graph input: not a constant
            return None
        nodes.append(node)
        stack.extend(node.input)
    ordered, done = [], set()
    pending = list({id(n): n for n in reversed(nodes)}.values())
    while pending:                # topological order of the small subgraph
        progressed = False
        for n in list(pending):
            if all(i == "" or i in needed_inits or i in done for i in n.input):
                ordered.append(n)
                done.update(n.output)
                pending.remove(n)
                progressed = True
        if not progressed:
            return None
    graph = helper.make_graph(ordered, "const", [], [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)],
                              [numpy_helper.from_array(inits[i], i) for i in sorted(needed_inits)])
    try:
        return np.asarray(ReferenceEvaluator(helper.make_model(graph)).run(None, {})[0])
    except Exception:             # anything unusual: leave the Pad where it is
        return None


def fold_pads_into_convs(model: Any) -> int:
    """Fuse zero-constant Pads on H/W into the Convs they feed (only Convs) in place; returns how many."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}
    removed = []
    for pad in [n for n in g.node if n.op_type == "Pad"]:
        users = consumers.get(pad.output[0], [])
        if not users or any(u.op_type != "Conv" for u in users) or pad.output[0] in graph_outputs:
            continue
        mode = next((a.s.decode() for a in pad.attribute if a.name == "mode"), "constant")
        if mode != "constant" or len(pad.input) < 2:
            continue
        if len(pad.input) > 2 and pad.input[2]:
            value = _constant_value(pad.input[2], producers, inits)
            if value is None or np.any(value != 0):
                continue
        if len(pad.input) > 3 and pad.input[3]:   # explicit axes: not produced by our exporter
            continue
        pads = _constant_value(pad.input[1], producers, inits)
        if pads is None or pads.size != 8:
            continue
        pads = [int(v) for v in pads.reshape(-1)]
        if any(pads[i] != 0 for i in (0, 1, 4, 5)) or min(pads) < 0:   # batch/channel padding, or a crop
            continue
        if any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for u in users for a in u.attribute):
            continue
        for conv in users:          # one Pad can feed several Convs (the exporter merges identical Pads)
            attrs = {a.name: a for a in conv.attribute}
            old = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
            new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
            for a in list(conv.attribute):
                if a.name == "pads":
                    conv.attribute.remove(a)
            conv.attribute.append(helper.make_attribute("pads", new))
            conv.input[0] = pad.input[0]
        removed.append(pad)
    for pad in removed:
        g.node.remove(pad)
    return len(removed)


def prune_dead_nodes(model: Any) -> int:
    """Drop nodes none of whose outputs is used (left over by the rewrites above); returns how many."""
    g = model.graph
    outputs = {o.name for o in g.output}
    total = 0
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            return total
        for n in dead:
            g.node.remove(n)
        total += len(dead)
