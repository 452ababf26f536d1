"""One entry point for every backbone: build it truncated, load weights, return feature maps.

Teacher and student both go through `build_feature_extractor`, so they agree
on layer names, channel counts and strides, which are measured by a dry run
rather than copied from a table that could drift from the code.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edgead.errors import EdgeADError
from edgead.model import efficientnet as effnet
from edgead.model import resnet
from edgead.model.weights import known_checkpoint, load_pretrained, load_state_dict_truncated

_PROBE_SIZE = 64  # divisible by the largest stride (32), small enough to be instant

Backbone = resnet.ResNet | effnet.EfficientNet  # each yields (stage name, output) from forward_stages


@dataclass(frozen=True)
class _Arch:
    build: Callable[[str | None], Backbone]
    stages: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _effnet(name: str) -> _Arch:
    cfg = effnet.CONFIGS[name]
    def build(stop_at: str | None) -> Backbone:
        return effnet.EfficientNet(cfg, stop_at=stop_at)

    return _Arch(build, effnet.EFFICIENTNET_STAGES, cfg.mean, cfg.std)


ARCHS: dict[str, _Arch] = {
    "resnet18": _Arch(resnet.resnet18, resnet.RESNET_STAGES, effnet.IMAGENET_MEAN, effnet.IMAGENET_STD),
    "reduced_resnet18": _Arch(resnet.reduced_resnet18, resnet.RESNET_STAGES, effnet.IMAGENET_MEAN, effnet.IMAGENET_STD),
    **{name: _effnet(name) for name in effnet.CONFIGS},
}


def available_archs() -> list[str]:
    """Architecture names accepted by `build_feature_extractor`."""
    return list(ARCHS)


def _arch(arch: str) -> _Arch:
    try:
        return ARCHS[arch]
    except KeyError:
        raise EdgeADError(f"unknown backbone {arch!r}", f"valid backbones: {', '.join(ARCHS)}") from None


class FeatureExtractor(nn.Module):
    """Runs a truncated backbone and returns the requested layers' outputs, in the requested order.

    `channels[i]` and `strides[i]` describe `layers[i]`; `input_mean` and
    `input_std` are the normalisation (for 0..1 RGB input) the pretrained
    weights expect.
    """

    def __init__(
        self,
        arch: str,
        backbone: Backbone,
        layers: Sequence[str],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        self.arch = arch
        self.backbone: Backbone = backbone
        self.layers: list[str] = list(layers)
        self.input_mean = mean
        self.input_std = std
        self.channels, self.strides = self._probe()

    def forward(self, x: Tensor) -> list[Tensor]:
        found = self.stages(x, self.layers)
        return [found[name] for name in self.layers]

    def stages(self, x: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
        """The named stages' outputs of one pass, stopping after the last one needed."""
        wanted = set(names)
        found: dict[str, Tensor] = {}
        for name, out in self.backbone.forward_stages(x):
            if name in wanted:
                found[name] = out
                if len(found) == len(wanted):
                    break
        return found

    @torch.no_grad()
    def _probe(self) -> tuple[list[int], list[int]]:
        """Measure each layer's channels and stride with one tiny forward pass."""
        was_training = self.training
        self.eval()  # keep BN running stats untouched
        try:
            param = next(self.backbone.parameters())
            x = torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE, dtype=param.dtype, device=param.device)
            outs = self.forward(x)
        finally:
            self.train(was_training)
        return [int(o.shape[1]) for o in outs], [_PROBE_SIZE // int(o.shape[-1]) for o in outs]

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, layers={self.layers}, channels={self.channels}, strides={self.strides}"


def build_feature_extractor(
    arch: str,
    layers: Sequence[str],
    weights: str | os.PathLike[str] | None = None,
) -> FeatureExtractor:
    """Build `arch` up to its deepest requested layer and optionally load weights.

    `weights`: None for random init, "imagenet" for the known pretrained
    checkpoint (resolved by `edgead.model.weights`), or a path to a
    state_dict file (either EfficientNet naming scheme is accepted).
    """
    spec = _arch(arch)
    if isinstance(layers, str) or not layers:
        raise EdgeADError(
            f"layers must be a non-empty list of layer names, got {layers!r}",
            f"valid layers for {arch}: {', '.join(spec.stages)}",
        )
    for layer in layers:
        if layer not in spec.stages:
            raise EdgeADError(
                f"unknown layer {layer!r} for backbone {arch}", f"valid layers for {arch}: {', '.join(spec.stages)}"
            )
    if len(set(layers)) != len(layers):
        raise EdgeADError(f"layers {list(layers)} name a layer twice", "list each layer once")

    stop_at = max(layers, key=spec.stages.index)
    backbone = spec.build(stop_at)
    if weights is not None:
        _load_weights(arch, backbone, weights)
    return FeatureExtractor(arch, backbone, layers, spec.mean, spec.std)


@functools.lru_cache(maxsize=None)
def layer_strides(arch: str, layers: tuple[str, ...]) -> tuple[int, ...]:
    """Each layer's stride, measured by the dry run every extractor makes (random weights, cached), so a
    config can be checked against the network it describes before anything is trained."""
    return tuple(build_feature_extractor(arch, list(layers), None).strides)


def _load_weights(arch: str, backbone: Backbone, weights: str | os.PathLike[str]) -> None:
    if weights == "imagenet":
        scheme = known_checkpoint(arch).scheme
        state = load_pretrained(arch)
    else:
        scheme = "auto"
        state = load_pretrained(arch, weights)
    prefix = "backbone."  # a saved FeatureExtractor's state_dict
    if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items()}
    if isinstance(backbone, effnet.EfficientNet):
        effnet.load_efficientnet_state_dict(backbone, state, scheme)
    else:
        load_state_dict_truncated(backbone, state)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
