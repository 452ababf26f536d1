"""Mini-batches over cached teacher features: the teachers are frozen and there is no augmentation,
so their features are computed once per image and sliced per batch: an epoch runs only the students."""

from __future__ import annotations

import numpy as np
import torch

from edgead.model.kd import DualKD, Features


def batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def cache_teacher(model: DualKD, images: torch.Tensor, batch_size: int, device: torch.device) -> Features:
    """Teacher features of every image, kept on the CPU: [pair][layer] -> N x C x h x w."""
    chunks: list[Features] = []
    for idx in batches(len(images), batch_size * 2, None):
        feats = model.teacher_features(images[idx].to(device))
        chunks.append([[f.cpu() for f in layers] for layers in feats])
    return [[torch.cat([c[p][l] for c in chunks]) for l in range(len(chunks[0][p]))]
            for p in range(len(chunks[0]))]


def take(cache: Features, idx: np.ndarray, device: torch.device) -> Features:
    return [[f[idx].to(device) for f in layers] for layers in cache]
