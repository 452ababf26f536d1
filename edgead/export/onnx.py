"""ONNX export of the detector as two graphs: teacher (image -> features) and student+head.

Split this way so that on a GPU the teacher's feature maps go straight from one engine's output
buffers into the next engine's inputs (they never return to the host), and only the anomaly map and
the score come back. The scoring head (normalised squared difference, upsampling, fusion, blur,
max) sits at the end of the student graph, in FP32.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights

from edgead.errors import EdgeADError
from edgead.model.kd import DualKD, with_half_backbones

OPSET = 17
IMAGE = "image"
MAP = "map"
SCORE = "score"


def feature_names(model: DualKD) -> list[str]:
    """Names of the teacher feature tensors, e.g. ['t0_0', 't0_1', 't1_0', 't1_1'] ([pair]_[layer])."""
    return [f"t{p}_{l}" for p, pair in enumerate(model.pairs) for l in range(len(pair.spec.teacher.layers))]


class TeacherGraph(nn.Module):
    def __init__(self, model: DualKD) -> None:
        super().__init__()
        self.model = model
        # Inference only. A new nn.Module starts in training mode, and torch.onnx.export restores the
        # exported module's mode after tracing: left in training mode, the model's next forward pass
        # (the shape probe in _export_graphs) would update the students' BatchNorm running statistics
        # with the random probe batch, and every later export (the FP16 graph) would carry them.
        self.eval()

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        feats = [f for layers in self.model.teacher_features(self.model.tiles(image)) for f in layers]
        tiler = self.model.tiler
        return tuple(tiler.fold(f) for f in feats) if tiler is not None else tuple(feats)


class HalfTeacherGraph(TeacherGraph):
    """FP16 backbone with FP32 interface: the image is cast in, the features cast out."""

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        return tuple(f.float() for f in super().forward(image.half()))


class StudentGraph(nn.Module):
    """image + teacher features -> (map N x 1 x h x w, score N). The score is the full-resolution map's max
    (of the whole input: a tiled model's tile maps are stitched first)."""

    def __init__(self, model: DualKD, map_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.model = model
        self.map_size = map_size
        self.eval()        # inference only: see TeacherGraph

    def student_features(self, image: Tensor) -> list[list[Tensor]]:
        return [pair.student_features(image) for pair in self.model.pairs]

    def forward(self, image: Tensor, *teacher_flat: Tensor) -> tuple[Tensor, Tensor]:
        tiler = self.model.tiler
        if tiler is not None:           # the features arrive one image per row (TeacherGraph folds them)
            image, teacher_flat = tiler.cut(image), tuple(tiler.unfold(f) for f in teacher_flat)
        teacher, i = [], 0
        for pair in self.model.pairs:
            n = len(pair.spec.teacher.layers)
            teacher.append(list(teacher_flat[i:i + n]))
            i += n
        student = self.student_features(image)
        amap, score = self.model.score(teacher, student)
        if self.map_size is not None and tuple(self.map_size) != tuple(amap.shape[-2:]):
            amap = F.adaptive_max_pool2d(amap, self.map_size)   # keeps small hot spots visible
        return amap, score


class HalfStudentGraph(StudentGraph):
    """FP16 student backbone; the scoring head (normalised squared differences, blur) stays FP32."""

    def student_features(self, image: Tensor) -> list[list[Tensor]]:
        return [[f.float() for f in pair.student_features(image.half())] for pair in self.model.pairs]


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, input_names: list[str],
            outputs: dict[str, tuple[int, ...]], metadata: dict[str, str]) -> None:
    """One graph: batch dynamic, every other dim as `outputs` (name -> per-image shape) says, and
    `metadata` in the file's metadata_props."""
    dynamic = {name: {0: "batch"} for name in [*input_names, *outputs]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(tmp), input_names=input_names, output_names=list(outputs),
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    _finish(tmp, outputs, metadata)
    tmp.replace(path)


def _finish(path: Path, outputs: dict[str, tuple[int, ...]], metadata: dict[str, str]) -> None:
    """Graph rewrites ONNX Runtime does not do itself (edgead.export.onnx_passes; the numbers stay
    identical), the outputs' shapes named right, and the metadata other tools read.

    torch.onnx names the output dims it cannot prove static after a symbol it happened to meet
    (a feature map's height came out as `batch`): Netron, Triton and the engine builders read those
    names, so every output is written as batch x its concrete per-image shape."""
    import onnx

    from edgead.export.onnx_passes import fold_pads_into_convs, prune_dead_nodes

    model = onnx.load(str(path))
    if fold_pads_into_convs(model):
        prune_dead_nodes(model)
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        dims.add().dim_param = "batch"
        for size in outputs[value.name]:
            dims.add().dim_value = int(size)
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))


def check_onnx(path: Path) -> dict[str, Any]:
    """onnx.checker plus shape inference; returns the graph's inputs and outputs with their shapes."""
    import onnx

    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # onnx raises several exception types; all mean a broken export
        raise EdgeADError(f"exported ONNX graph {path.name} failed the checker: {exc}".splitlines()[0],
                          "this is a bug in edgead's export; please report it with the model config") from exc

    def dims(v: Any) -> list[int | str]:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]

    return {"inputs": {v.name: dims(v) for v in inferred.graph.input},
            "outputs": {v.name: dims(v) for v in inferred.graph.output}}


def graph_metadata(model: DualKD, role: str, precision: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """What a graph carries for tools that read only the .onnx file: what it is, its input, its preprocessing."""
    import json

    from edgead import __version__

    spec = model.cfg.input
    return {"producer": "edgead", "edgead_version": __version__, "role": role, "precision": precision,
            "preset": str(model.cfg.preset), "input_size": f"{spec.height}x{spec.width}",
            "preprocess": json.dumps(spec.to_dict(), sort_keys=True), "feature_names": ",".join(feature_names(model)),
            **(extra or {})}


def _export_graphs(teacher: TeacherGraph, student: StudentGraph, out_dir: Path, suffix: str,
                   metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Export one teacher/student pair of graphs, check them, return their signatures and shapes."""
    model = teacher.model
    image = torch.randn(2, 3, model.cfg.input.height, model.cfg.input.width)
    names = feature_names(model)
    precision = "fp16" if suffix else "fp32"
    teacher_path, student_path = out_dir / f"teacher{suffix}.onnx", out_dir / f"student{suffix}.onnx"
    feats = teacher(image)
    _export(teacher, (image,), teacher_path, [IMAGE], {n: tuple(f.shape[1:]) for n, f in zip(names, feats)},
            graph_metadata(model, "teacher", precision, metadata))
    amap, _ = student(image, *feats)
    _export(student, (image, *feats), student_path, [IMAGE, *names], {MAP: tuple(amap.shape[1:]), SCORE: ()},
            graph_metadata(model, "student", precision, metadata))
    return {"teacher": {"file": teacher_path.name, **check_onnx(teacher_path)},
            "student": {"file": student_path.name, **check_onnx(student_path)},
            "feature_names": names,
            # Concrete per-image shapes (shape inference leaves resized dims symbolic).
            "feature_shapes": {n: list(f.shape[1:]) for n, f in zip(names, feats)},
            "map_shape": list(amap.shape[1:])}


@torch.no_grad()
def export_onnx(model: DualKD, out_dir: Path, map_size: tuple[int, int] | None = None,
                metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Write teacher.onnx and student.onnx (FP32) into out_dir; `metadata` joins graph_metadata's."""
    model = model.float().cpu().eval()
    return _export_graphs(TeacherGraph(model), StudentGraph(model, map_size), out_dir, "", metadata)


@torch.no_grad()
def fold_batchnorm(module: nn.Module, example: Tensor) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d into that convolution, in place, in the
    module's own precision (FP64 for the export); returns how many were folded.

    The pairs are found by running `example` through the module (a BatchNorm whose input is the very
    tensor a Conv2d returned), so no architecture is hard-coded; the output is then checked unchanged.
    Why: exported as is, an FP16 module has its BatchNorm folded by torch.onnx's constant folding in
    FP16 arithmetic, which put up to 10x Torch FP16's error into the deepest student features of the
    trained synthetic-product models (their BatchNorm variances go down to 1e-6; the scores moved
    little). Folded in FP32 first, each folded weight is rounded to FP16 once.
    """
    module.eval()
    produced: dict[int, tuple[nn.Module, Tensor]] = {}
    pairs: list[tuple[nn.Module, nn.Module]] = []

    def after_conv(conv: nn.Module, _inputs: Any, out: Tensor) -> None:
        produced[id(out)] = (conv, out)          # the tensor is kept alive, so its id stays unique

    def before_bn(bn: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        hit = produced.get(id(inputs[0]))
        if hit is not None and hit[1] is inputs[0]:
            pairs.append((hit[0], bn))

    hooks = [m.register_forward_hook(after_conv) if isinstance(m, nn.Conv2d) else m.register_forward_pre_hook(before_bn)
             for m in module.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    try:
        reference = module(example)
    finally:
        for h in hooks:
            h.remove()
    parents = {id(child): (parent, name) for parent in module.modules() for name, child in parent.named_children()}
    for conv, bn in pairs:
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        assert bn.running_mean is not None and bn.running_var is not None
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                      bn.eps, bn.weight, bn.bias)
        parent, name = parents[id(bn)]
        setattr(parent, name, nn.Identity())
    folded = module(example)
    for a, b in zip(folded if isinstance(folded, (list, tuple)) else [folded],
                    reference if isinstance(reference, (list, tuple)) else [reference]):
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max())):
            # A convolution whose output is also used elsewhere than by its BatchNorm cannot be folded.
            raise EdgeADError("folding BatchNorm into the convolutions changed the backbone's output",
                              "this is a bug in edgead's export; please report it with the model config")
    return len(pairs)


def _with_folded_batchnorm(model: DualKD) -> DualKD:
    """A copy of the model (FP32, eval) whose teachers and students have their BatchNorm folded.

    Folded and checked in FP64: on a random example a trained student can amplify FP32 rounding to
    10 % of its output (BatchNorm variances near 1e-6), which failed the check on an exact fold."""
    folded = copy.deepcopy(model).double().cpu().eval()
    example = torch.randn(1, 3, *model.cfg.net_hw, dtype=torch.float64)
    for pair in folded.pairs:
        fold_batchnorm(pair.teacher, example)
        fold_batchnorm(pair.student, example)
    return folded.float()


@torch.no_grad()
def export_onnx_fp16(model: DualKD, out_dir: Path, map_size: tuple[int, int] | None = None,
                     metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Write teacher.fp16.onnx and student.fp16.onnx: FP16 weights and convolutions, FP32 inputs,
    outputs and scoring head. This is a strongly-typed graph: each op's precision is in the file.
    BatchNorm is folded into the convolutions in FP32 before the backbones are cast to FP16."""
    half = with_half_backbones(_with_folded_batchnorm(model))
    return _export_graphs(HalfTeacherGraph(half), HalfStudentGraph(half, map_size), out_dir, ".fp16", metadata)
