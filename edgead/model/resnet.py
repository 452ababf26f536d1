"""ResNet with BasicBlocks, key-for-key compatible with torchvision's resnet18.

Written in plain torch so the package does not need torchvision, but every
parameter name and shape matches torchvision, so its ImageNet checkpoint loads
with strict=True. `stop_at` builds only the layers a feature extractor needs:
a teacher that stops at layer3 carries no layer4 or fc weights at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from edgead.errors import EdgeADError
from edgead.model.weights import load_state_dict_truncated

__all__ = ["RESNET_STAGES", "BasicBlock", "ResNet", "load_state_dict_truncated", "reduced_resnet18", "resnet18"]

RESNET_STAGES: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus identity (or 1x1 projection) shortcut, as in torchvision."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-layout ResNet; `layers=[2,2,2,2]` is resnet18, `[1,1,1,1]` the reduced student.

    `stop_at=None` builds the classifier too (avgpool + fc); `stop_at="layerN"`
    builds nothing after layerN. `skipped_prefixes` lists the state_dict
    prefixes of the modules that were left out, so a full checkpoint can still
    be loaded strictly on what was built (see `load_state_dict_truncated`).
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        stop_at: str | None = None,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise EdgeADError(
                f"ResNet needs 4 positive block counts, got {list(layers)}",
                "use [2, 2, 2, 2] for resnet18 or [1, 1, 1, 1] for the reduced student",
            )
        if stop_at is not None and stop_at not in RESNET_STAGES:
            raise EdgeADError(
                f"unknown ResNet stop_at {stop_at!r}",
                f"valid values: {', '.join(RESNET_STAGES)} (or None for the full classifier)",
            )
        n_built = 4 if stop_at is None else RESNET_STAGES.index(stop_at) + 1
        self.stop_at = stop_at
        self.stage_names: tuple[str, ...] = RESNET_STAGES[:n_built]

        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for i in range(n_built):
            planes, stride = _WIDTHS[i], (1 if i == 0 else 2)
            blocks = [BasicBlock(inplanes, planes, stride)]
            blocks += [BasicBlock(planes, planes) for _ in range(int(layers[i]) - 1)]
            self.add_module(RESNET_STAGES[i], nn.Sequential(*blocks))
            inplanes = planes

        skipped = [f"{name}." for name in RESNET_STAGES[n_built:]]
        if stop_at is None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, num_classes)
        else:
            skipped.append("fc.")
        self.skipped_prefixes: tuple[str, ...] = tuple(skipped)
        self._init_weights()

    def _init_weights(self) -> None:
        # Same scheme as torchvision so an untrained student starts where torchvision's would.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_stages(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        """Yield (stage name, output) after each built layer; callers stop when satisfied."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
            yield name, x

    def forward(self, x: Tensor) -> Tensor:
        """Classifier logits for the full model, else the last built layer's feature map."""
        for _, x in self.forward_stages(x):
            pass
        if self.stop_at is not None:
            return x
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(stop_at: str | None = None) -> ResNet:
    """torchvision resnet18 layout (11,689,512 parameters when complete)."""
    return ResNet((2, 2, 2, 2), stop_at=stop_at)


def reduced_resnet18(stop_at: str | None = None) -> ResNet:
    """One BasicBlock per layer: the light student network."""
    return ResNet((1, 1, 1, 1), stop_at=stop_at)
