"""What a trained model learns from good images after its last epoch: the map normalisation (held-out
images), the per-position statistics (all good images) and the good-score statistics kept in its metadata."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edgead.model.config import ModelConfig
from edgead.model.kd import DualKD, Features, pair_map_quantiles
from edgead.training.batches import batches, take


@torch.no_grad()
def position_statistics(model: DualKD, sets: list[tuple[torch.Tensor, Features]], batch_size: int,
                         device: torch.device) -> None:
    """Per-pixel mean and spread of the fused map over every good image (training and held-out; a tiled
    model's maps stitched whole first, so the statistics see the image's borders, not the tiles'):
    sixty images give a usable per-pixel estimate where the few held-out ones would not; the
    students fit their training images a little better, which lowers the level everywhere alike."""
    total = total_sq = None
    n = 0
    per = model.tiler.count if model.tiler is not None else 1       # a tiled model's inputs: `per` rows each
    for images, cache in sets:
        for whole in batches(len(images) // per, max(1, batch_size // per), None):
            idx = (whole[:, None] * per + np.arange(per)[None, :]).reshape(-1)
            fused = model.whole_fused(take(cache, idx, device),
                                      model.student_features(images[idx].to(device))).double().cpu()
            total = fused.sum(0, keepdim=True) + (0 if total is None else total)
            total_sq = fused.pow(2).sum(0, keepdim=True) + (0 if total_sq is None else total_sq)
            n += len(whole)
    assert total is not None and total_sq is not None
    mean = total / n
    std = (total_sq / n - mean.pow(2)).clamp_min(0).sqrt()
    model.set_position_statistics(mean.to(device), std.to(device))


@torch.no_grad()
def fit_statistics(model: DualKD, images: torch.Tensor, cache: Features, cfg: ModelConfig,
                   device: torch.device, train_images: torch.Tensor, train_cache: Features,
                   val_whole: torch.Tensor | None = None) -> dict[str, Any]:
    """Map normalisation from held-out good images, the per-position statistics from all good
    images, then the good-image score statistics (held-out images; a tiled model scores `val_whole`,
    the held-out inputs whole, since its `images` are tiles)."""
    model.eval()
    pair_maps: list[list[torch.Tensor]] = [[] for _ in cfg.pairs]
    for idx in batches(len(images), cfg.train.batch_size, None):
        maps = model.head.pair_maps(take(cache, idx, device), model.student_features(images[idx].to(device)))
        for i, m in enumerate(maps):
            pair_maps[i].append(m.cpu())
    low, high = pair_map_quantiles([torch.cat(m) for m in pair_maps],
                                   cfg.train.norm_quantile_low, cfg.train.norm_quantile_high)
    model.set_normalisation(low, high)
    if cfg.position_norm:
        position_statistics(model, [(train_images, train_cache), (images, cache)], cfg.train.batch_size, device)
    scores = []
    if model.tiler is not None and val_whole is not None:
        for idx in batches(len(val_whole), max(1, cfg.train.batch_size // model.tiler.count), None):
            scores.append(model(val_whole[idx].to(device))[1].cpu())
    else:
        for idx in batches(len(images), cfg.train.batch_size, None):
            _, s = model.head(take(cache, idx, device), model.student_features(images[idx].to(device)))
            scores.append(s.cpu())
    sc = torch.cat(scores).numpy().astype(np.float64)
    return {
        "normalisation": {"low": low, "high": high,
                          "quantiles": [cfg.train.norm_quantile_low, cfg.train.norm_quantile_high]},
        "val_good_scores": {"n": int(sc.size), "mean": float(sc.mean()), "std": float(sc.std()),
                            "min": float(sc.min()), "max": float(sc.max()),
                            "p50": float(np.quantile(sc, 0.5)), "p95": float(np.quantile(sc, 0.95)),
                            "p99": float(np.quantile(sc, 0.99))},
    }
