"""What a trained model learns from good images after its last epoch: the map normalisation (held-out
images), the per-position statistics (all good images) and the good-score statistics kept in its metadata."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edgead.model.config import ModelConfig
from edgead.model.kd import DualKD, Features, pair_map_quantiles
from edgead.training.batches import batches, take


def whole_inputs(model: DualKD, rows: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batches of whole inputs over `rows` rows of what the networks saw: (input numbers, their rows); a
    tiled model's inputs are `tiler.count` consecutive rows each, an untiled model's one row."""
    per = model.tiler.count if model.tiler is not None else 1
    return [(whole, (whole[:, None] * per + np.arange(per)[None, :]).reshape(-1))
            for whole in batches(rows // per, max(1, batch_size // per), None)]


@torch.no_grad()
def position_statistics(model: DualKD, sets: list[tuple[torch.Tensor, Features]], batch_size: int,
                         device: torch.device) -> None:
    """Per-pixel mean and spread of the fused map over every good image (training and held-out; a tiled
    model's maps stitched whole first, so the statistics see the image's borders, not the tiles'):
    sixty images give a usable per-pixel estimate where the few held-out ones would not; the
    students fit their training images a little better, which lowers the level everywhere alike."""
    total = total_sq = None
    n = 0
    for images, cache in sets:
        for whole, idx in whole_inputs(model, len(images), batch_size):
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
                   device: torch.device, train_images: torch.Tensor, train_cache: Features) -> dict[str, Any]:
    """Map normalisation from held-out good images, the per-position statistics from all good
    images, then the good-image score statistics (held-out images; a tiled model's scored whole)."""
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
    for _, idx in whole_inputs(model, len(images), cfg.train.batch_size):
        _, s = model.score(take(cache, idx, device), model.student_features(images[idx].to(device)))
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
