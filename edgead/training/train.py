"""Training loop: both students learn to imitate their teachers on good images only.

Teachers are frozen and there is no augmentation, so their features are computed once and cached:
on a 2-core CPU that halves the cost of every epoch. The best epoch (lowest validation loss on held-out
good images) is kept; `checkpoint/last.pt` is written after every epoch so Ctrl-C or a crash leaves a
resumable run, and a usable model from the best epoch so far.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from edgead import __version__
from edgead.model.config import ModelConfig
from edgead.data.images import load_batch
from edgead.data.mvtec import good_images
from edgead.training.device import pick_device
from edgead.errors import EdgeADError
from edgead.io import atomic_write_bytes, sha256_file
from edgead.model.artifact import CONFIG_FILE, METADATA_FILE, save_model
from edgead.model.kd import DualKD, Features, describe, kd_loss, pair_map_quantiles
from edgead.model.weights import resolve_weights

CHECKPOINT = Path("checkpoint") / "last.pt"


@dataclass
class TrainResult:
    out: Path
    epochs_done: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    interrupted: bool
    metadata: dict[str, Any]


def data_fingerprint(paths: list[Path]) -> str:
    """sha256 over the names and contents of the images used, so a model says what it saw."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.name):
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n_val = max(2, int(round(val_fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _cache_teacher(model: DualKD, images: torch.Tensor, batch_size: int, device: torch.device) -> Features:
    """Teacher features of every image, kept on the CPU: [pair][layer] -> N x C x h x w."""
    chunks: list[Features] = []
    for idx in _batches(len(images), batch_size * 2, None):
        feats = model.teacher_features(images[idx].to(device))
        chunks.append([[f.cpu() for f in layers] for layers in feats])
    return [[torch.cat([c[p][l] for c in chunks]) for l in range(len(chunks[0][p]))]
            for p in range(len(chunks[0]))]


def _take(cache: Features, idx: np.ndarray, device: torch.device) -> Features:
    return [[f[idx].to(device) for f in layers] for layers in cache]


@torch.no_grad()
def _val_loss(model: DualKD, images: torch.Tensor, cache: Features, batch_size: int, device: torch.device) -> float:
    model.eval()
    total, count = 0.0, 0
    for idx in _batches(len(images), batch_size, None):
        loss = kd_loss(_take(cache, idx, device), model.student_features(images[idx].to(device)))
        total += float(loss) * len(idx)
        count += len(idx)
    return total / count


@torch.no_grad()
def recalibrate_batchnorm(model: DualKD, images: torch.Tensor, batch_size: int, device: torch.device) -> None:
    """Recompute the students' BatchNorm statistics as an exact average over all training images.

    Training normalises with batch statistics; inference uses running statistics. Re-estimating them
    with the final weights makes inference see what training saw.
    """
    bns = _student_batchnorms(model)
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None          # cumulative moving average over the pass
    model.train()
    for idx in _batches(len(images), batch_size, None):
        model.student_features(images[idx].to(device))
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.eval()


def freeze_batchnorm(model: DualKD) -> None:
    """Students' BatchNorm layers normalise with their running statistics and stop updating them
    (their scale and shift still learn); call after `model.train()`."""
    for m in _student_batchnorms(model):
        m.eval()


def _student_batchnorms(model: DualKD) -> list[torch.nn.BatchNorm2d]:
    return [m for p in model.pairs for m in p.student.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def bn_frozen_from(cfg: ModelConfig) -> int:
    """First (0-based) epoch trained with frozen BatchNorm; `epochs` when none is."""
    return cfg.train.epochs - int(round(cfg.train.bn_frozen_fraction * cfg.train.epochs))


@torch.no_grad()
def _position_statistics(model: DualKD, sets: list[tuple[torch.Tensor, Features]], batch_size: int,
                         device: torch.device) -> None:
    """Per-pixel mean and spread of the fused map over every good image (training and held-out):
    sixty images give a usable per-pixel estimate where the few held-out ones would not; the
    students fit their training images a little better, which lowers the level everywhere alike."""
    total = total_sq = None
    n = 0
    for images, cache in sets:
        for idx in _batches(len(images), batch_size, None):
            maps = model.head.pair_maps(_take(cache, idx, device), model.student_features(images[idx].to(device)))
            fused = model.head.fuse(maps).double().cpu()
            total = fused.sum(0, keepdim=True) + (0 if total is None else total)
            total_sq = fused.pow(2).sum(0, keepdim=True) + (0 if total_sq is None else total_sq)
            n += len(idx)
    assert total is not None and total_sq is not None
    mean = total / n
    std = (total_sq / n - mean.pow(2)).clamp_min(0).sqrt()
    model.set_position_statistics(mean.to(device), std.to(device))


@torch.no_grad()
def _finalise_statistics(model: DualKD, images: torch.Tensor, cache: Features, cfg: ModelConfig,
                         device: torch.device, train_images: torch.Tensor, train_cache: Features) -> dict[str, Any]:
    """Map normalisation from held-out good images, the per-position statistics from all good
    images, then the good-image score statistics (held-out images)."""
    model.eval()
    pair_maps: list[list[torch.Tensor]] = [[] for _ in cfg.pairs]
    for idx in _batches(len(images), cfg.train.batch_size, None):
        maps = model.head.pair_maps(_take(cache, idx, device), model.student_features(images[idx].to(device)))
        for i, m in enumerate(maps):
            pair_maps[i].append(m.cpu())
    low, high = pair_map_quantiles([torch.cat(m) for m in pair_maps],
                                   cfg.train.norm_quantile_low, cfg.train.norm_quantile_high)
    model.set_normalisation(low, high)
    if cfg.position_norm:
        _position_statistics(model, [(train_images, train_cache), (images, cache)], cfg.train.batch_size, device)
    scores = []
    for idx in _batches(len(images), cfg.train.batch_size, None):
        _, s = model.head(_take(cache, idx, device), model.student_features(images[idx].to(device)))
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


def _save_checkpoint(out: Path, model: DualKD, best_state: dict, optimizer: torch.optim.Optimizer,
                     scheduler: Any, epoch: int, best_epoch: int, best_val: float, history: list[dict],
                     cfg: ModelConfig, fingerprint: str) -> None:
    buf = io.BytesIO()
    torch.save({"model": model.student_state(), "best": best_state, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "best_epoch": best_epoch,
                "best_val": best_val, "history": history, "config": cfg.to_dict(), "data_fingerprint": fingerprint,
                "torch_rng": torch.get_rng_state()}, buf)
    atomic_write_bytes(out / CHECKPOINT, buf.getvalue())


def train(data: str | Path, out: str | Path, cfg: ModelConfig, *, skip_bad: bool = False, resume: bool = False,
          overwrite: bool = False, device: str | None = None, progress: bool = True,
          log: Callable[[str], None] = print) -> TrainResult:
    out = Path(out)
    if (out / METADATA_FILE).exists() and not (resume or overwrite):
        raise EdgeADError(f"{out} already holds a trained model",
                          "choose another --out, or pass --overwrite to replace it (--resume to continue it)")
    dev = pick_device(device)
    torch.manual_seed(cfg.train.seed)
    start = time.perf_counter()

    paths = good_images(Path(data))
    images_np, kept, bad = load_batch(paths, cfg.input, skip_bad=skip_bad)
    if bad:
        log(f"skipped {len(bad)} unreadable image(s): {', '.join(p.name for p in bad[:5])}")
    if len(kept) < 10:
        raise EdgeADError(f"only {len(kept)} readable good images in {data}", "training needs at least 10 good images")
    fingerprint = data_fingerprint(kept)
    train_idx, val_idx = split_train_val(len(kept), cfg.train.val_fraction, cfg.train.seed)
    images = torch.from_numpy(images_np)
    train_images, val_images = images[train_idx], images[val_idx]
    log(f"{len(kept)} good images ({len(train_idx)} train, {len(val_idx)} validation), "
        f"input {cfg.input.height}x{cfg.input.width}, preset {cfg.preset}, device {dev}")

    model = DualKD(cfg).to(dev)
    train_cache = _cache_teacher(model, train_images, cfg.train.batch_size, dev)
    val_cache = _cache_teacher(model, val_images, cfg.train.batch_size, dev)

    steps_per_epoch = len(_batches(len(train_images), cfg.train.batch_size, None))
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.train.lr,
                                                    total_steps=cfg.train.epochs * steps_per_epoch)
    first_epoch, best_epoch, best_val, history = 0, -1, float("inf"), []
    best_state = model.student_state()
    if resume:
        ckpt_path = out / CHECKPOINT
        if not ckpt_path.is_file():
            raise EdgeADError(f"nothing to resume: {ckpt_path} does not exist", "start a new run without --resume")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt.get("data_fingerprint") != fingerprint:
            raise EdgeADError(f"the checkpoint in {out} was trained on other images than {data}",
                              "resume with the same images, or start a new run")
        if ckpt["config"] != cfg.to_dict():
            raise EdgeADError(f"the checkpoint in {out} was trained with another config",
                              "resume with the same --preset/--config/--epochs, or start a new run")
        model.load_student_state(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        first_epoch, best_epoch, best_val = ckpt["epoch"] + 1, ckpt["best_epoch"], ckpt["best_val"]
        history, best_state = ckpt["history"], ckpt["best"]
        log(f"resuming after epoch {first_epoch} of {cfg.train.epochs}")

    rng = np.random.default_rng(cfg.train.seed + first_epoch)
    frozen_from = bn_frozen_from(cfg)
    interrupted = False
    epoch = first_epoch - 1
    loop_start = time.perf_counter()
    bar = tqdm(total=cfg.train.epochs * steps_per_epoch, initial=first_epoch * steps_per_epoch,
               disable=not progress, unit="step", dynamic_ncols=True)
    try:
        for epoch in range(first_epoch, cfg.train.epochs):
            if epoch == frozen_from:
                recalibrate_batchnorm(model, train_images, cfg.train.batch_size, dev)
            model.train()
            if epoch >= frozen_from:
                freeze_batchnorm(model)
            running = 0.0
            for idx in _batches(len(train_images), cfg.train.batch_size, rng):
                loss = kd_loss(_take(train_cache, idx, dev), model.student_features(train_images[idx].to(dev)))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                running += float(loss.detach())
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch + 1}/{cfg.train.epochs}", loss=f"{float(loss.detach()):.4f}")
            val = _val_loss(model, val_images, val_cache, cfg.train.batch_size, dev)
            history.append({"epoch": epoch + 1, "train_loss": running / steps_per_epoch, "val_loss": val})
            if val < best_val:
                best_val, best_epoch, best_state = val, epoch + 1, model.student_state()
            _save_checkpoint(out, model, best_state, optimizer, scheduler, epoch, best_epoch, best_val, history, cfg,
                             fingerprint)
    except KeyboardInterrupt:
        interrupted = True
        log(f"\ninterrupted during epoch {epoch + 1}: the checkpoint after epoch {len(history)} is kept; "
            f"continue with --resume")
    finally:
        bar.close()
    if not history:
        raise EdgeADError("training stopped before the first epoch finished", "run it again (nothing was written)")

    loop_seconds = time.perf_counter() - loop_start
    epochs_this_run = max(1, len(history) - first_epoch)
    model.load_student_state(best_state)
    if best_epoch <= frozen_from:
        # Trained on batch statistics: give inference the exact averages of the final weights. (Weights
        # from a frozen epoch keep the statistics they were trained with.)
        recalibrate_batchnorm(model, train_images, cfg.train.batch_size, dev)
    stats = _finalise_statistics(model, val_images, val_cache, cfg, dev, train_images, train_cache)
    seconds = time.perf_counter() - start
    metadata = {
        "edgead_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": {"path": str(Path(data).resolve()), "fingerprint": fingerprint,
                 "n_images": len(kept), "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
                 "skipped": [str(p) for p in bad]},
        "teacher_weights": {p.name: {"arch": p.teacher.arch, "sha256": _teacher_sha(p.teacher.arch, p.teacher.weights)}
                            for p in cfg.pairs},
        "training": {"epochs_planned": cfg.train.epochs, "epochs_done": len(history), "best_epoch": best_epoch,
                     "best_val_loss": best_val, "final_train_loss": history[-1]["train_loss"],
                     "seconds": round(seconds, 1), "seconds_per_epoch": round(loop_seconds / epochs_this_run, 2),
                     "device": str(dev), "interrupted": interrupted, "history": history},
        "parameters": describe(model),
        **stats,
    }
    save_model(out, model, metadata)
    return TrainResult(out, len(history), best_epoch, best_val, seconds, interrupted, metadata)


def _teacher_sha(arch: str, weights: str) -> str | None:
    try:
        return sha256_file(resolve_weights(arch, None if weights == "imagenet" else weights))
    except EdgeADError:
        return None


__all__ = ["train", "TrainResult", "CONFIG_FILE"]
