"""Pick the torch device: CUDA when present, else CPU (training and eval only; the edge path has no torch)."""

from __future__ import annotations

import torch

from edgead.errors import EdgeADError


def pick_device(name: str | None = None) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EdgeADError(f"device {name!r} requested but this torch has no CUDA GPU",
                          "use --device cpu, or install a CUDA build of torch")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise EdgeADError(f"unknown device {name!r}", "use auto, cpu or cuda") from exc
