"""Dual-model knowledge distillation (Thomine & Snoussi 2024; MixedTeacher).

Two frozen ImageNet teachers (one for shallow, one for deep features) each have a student trained on
good images only to reproduce the teacher's channel-normalised features. At inference the per-pixel
discrepancy of each pair is the anomaly map: students never saw defects, so they fail to imitate
the teacher there.
"""

from __future__ import annotations

import math
from typing import Any, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgead.model.config import ModelConfig, PairSpec, blur_radius
from edgead.errors import EdgeADError
from edgead.model.backbones import FeatureExtractor, build_feature_extractor
from edgead.model.tiling import Tiler

Features = List[List[Tensor]]   # [pair][layer] -> N x C x h x w


def normalise(feature: Tensor) -> Tensor:
    """Channel-wise L2 normalisation n(f) of the paper (eps keeps an all-zero vector finite)."""
    return feature / feature.pow(2).sum(dim=1, keepdim=True).add(1e-12).sqrt()


def discrepancy(teacher: Tensor, student: Tensor) -> Tensor:
    """0.5 * ||n(f_t) - n(f_s)||^2 summed over channels: N x 1 x h x w, in [0, 2]."""
    return 0.5 * (normalise(teacher) - normalise(student)).pow(2).sum(dim=1, keepdim=True)


def hard_loss(teacher: Tensor, student: Tensor, fraction: float) -> Tensor:
    """EfficientAD's hard-feature loss: the mean of the largest `fraction` of the elementwise squared
    differences of the normalised features, so training spends itself where the student is still
    wrong instead of on the many positions it already imitates."""
    d = 0.5 * (normalise(teacher) - normalise(student)).pow(2)
    k = max(1, int(d.numel() * fraction))
    return d.flatten().topk(k, sorted=False).values.mean()


def kd_loss(teacher: Features, student: Features, hard_fraction: float | None = None) -> Tensor:
    """Sum over pairs of the discrepancy averaged over positions and layers (with hard_fraction: of
    each layer's hard-feature loss instead)."""
    total = teacher[0][0].new_zeros(())
    for t_layers, s_layers in zip(teacher, student):
        losses = [discrepancy(t, s).mean() if hard_fraction is None else hard_loss(t, s, hard_fraction)
                  for t, s in zip(t_layers, s_layers)]
        total = total + sum(losses) / len(t_layers)
    return total


def gaussian_kernel1d(sigma: float) -> Tensor:
    radius = blur_radius(sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class ScoringHead(nn.Module):
    """Teacher and student features -> (anomaly map N x 1 x H x W, image score N).

    Per pair: discrepancy per layer, upsampled to the output size, averaged over layers, then
    normalised with statistics of held-out good images (stored in the buffers). The pair maps are
    fused (`fusion`: "multiplicative" as in the reference, "additive" or "max"; see `fuse`),
    optionally z-scored per position, blurred with a Gaussian per image (separable, reflect
    padding), and the image score is the map's maximum. Written with plain tensor ops so it
    exports to ONNX and stays in FP32 where FP16 would underflow.
    """

    def __init__(self, out_hw: tuple[int, int], fusion: str, blur_sigma: float, n_pairs: int = 2,
                 position_norm: bool = False, whole_hw: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))           # each pair map's size (a tile's, when tiled)
        self.whole_hw = tuple(int(v) for v in whole_hw) if whole_hw else self.out_hw   # the map that is finished
        self.fusion = fusion
        self.blur_sigma = float(blur_sigma)
        self.position_norm = False
        self.register_buffer("norm_low", torch.zeros(n_pairs))
        self.register_buffer("norm_high", torch.ones(n_pairs))
        if position_norm:
            self.add_position_norm()
        kernel = gaussian_kernel1d(blur_sigma) if blur_sigma > 0 else torch.ones(1)
        self.register_buffer("kernel", kernel, persistent=False)

    def add_position_norm(self) -> None:
        """Per-pixel level and spread of the fused map over the good training images (smoothed, set
        by `DualKD.set_position_statistics`): positions where good parts vary (image borders, part
        edges) count less."""
        self.register_buffer("position_mean", torch.zeros(1, 1, *self.whole_hw))
        self.register_buffer("position_std", torch.ones(1, 1, *self.whole_hw))
        self.position_norm = True

    def pair_maps(self, teacher: Features, student: Features) -> list[Tensor]:
        maps = []
        for t_layers, s_layers in zip(teacher, student):
            per_layer = [F.interpolate(discrepancy(t.float(), s.float()), size=self.out_hw,
                                       mode="bilinear", align_corners=False)
                         for t, s in zip(t_layers, s_layers)]
            maps.append(torch.stack(per_layer, dim=0).mean(dim=0))
        return maps

    def fuse(self, maps: list[Tensor]) -> Tensor:
        if self.fusion == "multiplicative":
            # Scale each pair by its good-image level: the product stays >= 0 and ~1 on good parts.
            fused = maps[0] / self.norm_high[0]
            for i in range(1, len(maps)):
                fused = fused * (maps[i] / self.norm_high[i])
            return fused
        # EfficientAD-style quantile normalisation of each pair, then their mean ("additive") or,
        # so that a defect only one pair sees is not halved, their per-pixel maximum ("max").
        normed = [(m - self.norm_low[i]) / (self.norm_high[i] - self.norm_low[i]) for i, m in enumerate(maps)]
        fused = normed[0]
        for m in normed[1:]:
            fused = torch.maximum(fused, m) if self.fusion == "max" else fused + m
        return fused if self.fusion == "max" else fused / len(maps)

    def blur(self, amap: Tensor) -> Tensor:
        k = self.kernel
        r = (k.numel() - 1) // 2
        if r == 0:
            return amap
        x = F.pad(amap, (r, r, 0, 0), mode="reflect")
        x = F.conv2d(x, k.view(1, 1, 1, -1))
        x = F.pad(x, (0, 0, r, r), mode="reflect")
        return F.conv2d(x, k.view(1, 1, -1, 1))

    def fused(self, teacher: Features, student: Features, tiler: Tiler | None = None) -> Tensor:
        """The pairs' normalised maps fused; a tiled model's tile maps stitched into each input's map."""
        fused = self.fuse(self.pair_maps(teacher, student))
        return tiler.stitch(fused) if tiler is not None else fused

    def finish(self, fused: Tensor) -> tuple[Tensor, Tensor]:
        """A whole input's fused map -> its anomaly map (z-scored per position, blurred) and score."""
        if self.position_norm:
            fused = (fused - self.position_mean) / self.position_std
        amap = self.blur(fused)
        score = amap.flatten(1).amax(dim=1)
        return amap, score

    def forward(self, teacher: Features, student: Features, tiler: Tiler | None = None) -> tuple[Tensor, Tensor]:
        """Called as the module (so every op of it, stitching included, is exported in the head's scope,
        which the FP32 pinning and the INT8 quantiser find by name)."""
        return self.finish(self.fused(teacher, student, tiler))


class Pair(nn.Module):
    """One teacher, its student, and the projections that give the student the teacher's channels."""

    def __init__(self, spec: PairSpec, teacher_weights: bool, input_mean: tuple[float, ...],
                 input_std: tuple[float, ...]) -> None:
        super().__init__()
        self.spec = spec
        weights = spec.teacher.weights if teacher_weights else None
        self.teacher: FeatureExtractor = build_feature_extractor(spec.teacher.arch, spec.teacher.layers, weights)
        self.student: FeatureExtractor = build_feature_extractor(spec.student.arch, spec.student.layers, None)
        if spec.student.init == "teacher":
            self.student.load_state_dict(self.teacher.state_dict())
        # Lite's TF-ported BatchNorm uses momentum 0.01: over a few hundred steps the student's running
        # statistics would stay near ImageNet's while its weights adapt to batch statistics, and the
        # student would disagree with itself between training and inference.
        for m in self.student.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
        if list(self.teacher.strides) != list(self.student.strides):
            raise EdgeADError(f"pair '{spec.name}': student strides {self.student.strides} differ from the "
                              f"teacher's {self.teacher.strides}",
                              "choose student layers with the same strides as the teacher layers")
        self.projections = nn.ModuleList(
            nn.Identity() if cs == ct else nn.Conv2d(cs, ct, kernel_size=1)
            for cs, ct in zip(self.student.channels, self.teacher.channels))
        self.pool = nn.AvgPool2d(spec.teacher.pool) if spec.teacher.pool > 1 else nn.Identity()
        # The image arrives normalised with the input spec's mean/std; a teacher trained with another
        # normalisation (Lite's TF-style 127/128 vs ImageNet's) gets it re-expressed by an affine map.
        m_in, s_in = torch.tensor(input_mean), torch.tensor(input_std)
        m_t, s_t = torch.tensor(self.teacher.input_mean), torch.tensor(self.teacher.input_std)
        self.renorm = not (torch.allclose(m_in, m_t) and torch.allclose(s_in, s_t))
        self.register_buffer("renorm_scale", (s_in / s_t).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("renorm_shift", ((m_in - m_t) / s_t).view(1, 3, 1, 1), persistent=False)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> "Pair":
        super().train(mode)
        self.teacher.eval()           # the teacher is frozen: its BatchNorm statistics never move
        return self

    def teacher_input(self, x: Tensor) -> Tensor:
        """The image in the normalisation the teacher's weights expect."""
        return x * self.renorm_scale + self.renorm_shift if self.renorm else x

    def teacher_features(self, x: Tensor) -> list[Tensor]:
        return [self.pool(f) for f in self.teacher(self.teacher_input(x))]

    def student_features(self, x: Tensor) -> list[Tensor]:
        return [self.pool(proj(f)) for proj, f in zip(self.projections, self.student(x))]


class DualKD(nn.Module):
    """The whole detector: forward(images) -> (maps N x 1 x H x W, scores N)."""

    def __init__(self, cfg: ModelConfig, teacher_weights: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.pairs = nn.ModuleList(Pair(spec, teacher_weights, cfg.input.mean, cfg.input.std) for spec in cfg.pairs)
        self.head = ScoringHead(cfg.net_hw, cfg.fusion, cfg.blur_sigma, len(cfg.pairs),
                                cfg.position_norm, whole_hw=(cfg.input.height, cfg.input.width))
        self._teacher_groups: list[list[int]] | None = None   # filled by the first teacher_groups()
        self.tiler = Tiler(cfg.tile, cfg.input.height, cfg.input.width) if cfg.tile else None

    def tiles(self, x: Tensor) -> Tensor:
        """What the networks see of a batch of whole inputs: its tiles (image-major), or the batch itself."""
        return self.tiler.cut(x) if self.tiler is not None else x

    def whole_fused(self, teacher: Features, student: Features) -> Tensor:
        """Each input's fused map (N x 1 x H x W) from the features of what the networks saw: a tiled
        model's tile maps stitched, overlaps averaged, so that per-position statistics and the blur act
        on the whole input."""
        return self.head.fused(teacher, student, self.tiler)

    def score(self, teacher: Features, student: Features) -> tuple[Tensor, Tensor]:
        """Features of `tiles(x)` -> each input's anomaly map and score."""
        return self.head(teacher, student, self.tiler)

    def teacher_features(self, x: Tensor) -> Features:
        """Every pair's teacher features; pairs whose teachers are one network share one pass."""
        with torch.no_grad():
            out: list[list[Tensor]] = [[] for _ in self.pairs]
            for group in self.teacher_groups():
                if len(group) == 1:
                    out[group[0]] = self.pairs[group[0]].teacher_features(x)
                    continue
                runner = self.pairs[group[-1]]
                found = runner.teacher.stages(runner.teacher_input(x),
                                              [name for i in group for name in self.pairs[i].teacher.layers])
                for i in group:
                    out[i] = [self.pairs[i].pool(found[name]) for name in self.pairs[i].teacher.layers]
            return out

    def teacher_groups(self) -> list[list[int]]:
        """Pairs whose teachers are the same network (same backbone and input normalisation, one a
        truncation of the other, equal weights), deepest last: the edge preset's two pairs both read
        EfficientNet-Lite0, so its stem and early stages (the costly high-resolution part) run once
        instead of twice. The numbers are exactly those of separate passes."""
        if self._teacher_groups is not None:
            return self._teacher_groups
        groups: list[list[int]] = []
        for i, pair in enumerate(self.pairs):
            for group in groups:
                if _same_network(self.pairs[group[0]], pair):
                    group.append(i)
                    break
            else:
                groups.append([i])
        for group in groups:
            group.sort(key=lambda i: len(self.pairs[i].teacher.state_dict()))
        self._teacher_groups = groups
        return groups

    def student_features(self, x: Tensor) -> Features:
        return [p.student_features(x) for p in self.pairs]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Whole inputs -> their maps and scores (tiled models score each tile and stitch the maps)."""
        x = self.tiles(x)
        return self.score(self.teacher_features(x), self.student_features(x))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def student_state(self) -> dict[str, Tensor]:
        """What the artifact stores: everything but the (public, frozen) teachers."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items() if ".teacher." not in k}

    def load_student_state(self, state: dict[str, Tensor]) -> None:
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as exc:           # same names, other shapes: weights of another config
            first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), "")
            raise EdgeADError(f"the model's student weights do not fit its config ({first[:200] or 'shape mismatch'})",
                              "retrain the model, or use the config.yaml it was trained with") from None
        missing = [k for k in missing if ".teacher." not in k]
        if missing or unexpected:
            raise EdgeADError("the model's student weights do not match its config "
                              f"(missing {missing[:3]}, unexpected {list(unexpected)[:3]})",
                              "retrain the model, or use the config.yaml it was trained with")

    def set_normalisation(self, low: list[float], high: list[float]) -> None:
        if any(not math.isfinite(h) or h <= lo for lo, h in zip(low, high)):
            raise EdgeADError(f"map normalisation statistics are degenerate (low {low}, high {high})",
                              "the students reproduce the teacher exactly on good images: train longer "
                              "or check that the good images are not all identical")
        self.head.norm_low.copy_(torch.tensor(low))
        self.head.norm_high.copy_(torch.tensor(high))

    def set_position_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Per-pixel mean and spread (1 x 1 x H x W) of the fused map over good images: both are
        smoothed with the head's blur, and the spread is floored at a tenth of its median so that
        a position where every good part looked the same does not amplify noise without bound."""
        head = self.head
        mean, std = head.blur(mean.float()), head.blur(std.float())
        floor = 0.1 * float(std.median())
        if not math.isfinite(floor) or floor <= 0:
            raise EdgeADError("per-position statistics are degenerate (the fused map does not vary over the good images)",
                              "check that the good images are not all identical, or set position_norm: false")
        head.position_mean.copy_(mean)
        head.position_std.copy_(std.clamp_min(floor))


def _same_network(a: Pair, b: Pair) -> bool:
    ta, tb = a.teacher, b.teacher
    if ta.arch != tb.arch or a.renorm != b.renorm:
        return False
    if a.renorm and not (torch.equal(a.renorm_scale, b.renorm_scale) and torch.equal(a.renorm_shift, b.renorm_shift)):
        return False
    sa, sb = ta.state_dict(), tb.state_dict()
    small, big = (sa, sb) if len(sa) <= len(sb) else (sb, sa)
    return all(k in big and big[k].shape == v.shape and torch.equal(big[k], v) for k, v in small.items())


def pair_map_quantiles(maps: list[Tensor], q_low: float, q_high: float) -> tuple[list[float], list[float]]:
    """Quantiles of each pair's map over all pixels of held-out good images (sub-sampled for memory)."""
    low, high = [], []
    for m in maps:
        flat = m.flatten().float()
        if flat.numel() > 4_000_000:
            idx = torch.linspace(0, flat.numel() - 1, 4_000_000).long()
            flat = flat.sort().values[idx]
        low.append(float(torch.quantile(flat, q_low)))
        high.append(float(torch.quantile(flat, q_high)))
    return low, high


def describe(model: DualKD) -> dict[str, Any]:
    """Parameter counts per part, for the training metadata."""
    return {p.spec.name: {"teacher_params": sum(x.numel() for x in p.teacher.parameters()),
                          "student_params": sum(x.numel() for x in p.student.parameters())
                          + sum(x.numel() for x in p.projections.parameters())}
            for p in model.pairs}


def with_half_backbones(model: DualKD) -> DualKD:
    """A copy whose teachers, students and projections run in FP16; the scoring head stays FP32.

    This is what an FP16 engine computes; feed it `x.half()` and cast the features back to float.
    """
    import copy

    half = copy.deepcopy(model).float().cpu().eval()
    for pair in half.pairs:
        pair.teacher.half()
        pair.student.half()
        pair.projections.half()
        pair.renorm_scale.data = pair.renorm_scale.half()
        pair.renorm_shift.data = pair.renorm_shift.half()
    return half
