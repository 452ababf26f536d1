"""Training loop: both students learn to imitate their teachers on good images only.

Teachers are frozen and there is no augmentation, so their features are computed once and cached
(training/batches.py): each epoch runs only the students. The best epoch (lowest validation loss on held-out
good images) is kept; `checkpoint/last.pt` is written after every epoch so Ctrl-C or a crash leaves a
resumable run, and a usable model from the best epoch so far.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgead import __version__
from edgead.model.config import ModelConfig
from edgead.data.images import load_batch
from edgead.data.mvtec import good_images
from edgead.decide.progress import Progress, duration, info
from edgead.training.device import pick_device
from edgead.errors import EdgeADError
from edgead.io import atomic_write_bytes, check_input, check_output, sha256_file, write_failed
from edgead.model.artifact import CONFIG_FILE, METADATA_FILE, save_model
from edgead.model.kd import DualKD, Features, describe, kd_loss
from edgead.training.batches import batches, cache_teacher, take
from edgead.training.statistics import fit_statistics
from edgead.model.weights import read_torch_file, resolve_weights

CHECKPOINT = Path("checkpoint") / "last.pt"
DATA_HINT = "give a folder of good images, or an MVTec category root (with train/good/)"
CHECKPOINT_KEYS = {"model", "best", "optimizer", "scheduler", "epoch", "best_epoch", "best_val", "history", "config",
                   "data_fingerprint", "torch_rng"}
PROBE_WARMUP = 1       # the first step (allocations, lazy initialisation, autotuning) is not timed ...
PROBE_STEPS = 3        # ... the next ones are: their mean times every step of the run
VAL_STEP_SHARE = 1 / 3  # a validation batch (forward only) costs about a third of a training step


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


@torch.no_grad()
def _val_loss(model: DualKD, images: torch.Tensor, cache: Features, batch_size: int, device: torch.device) -> float:
    model.eval()
    total, count = 0.0, 0
    for idx in batches(len(images), batch_size, None):
        loss = kd_loss(take(cache, idx, device), model.student_features(images[idx].to(device)))
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
    for idx in batches(len(images), batch_size, None):
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


def _save_checkpoint(out: Path, model: DualKD, best_state: dict, optimizer: torch.optim.Optimizer,
                     scheduler: Any, epoch: int, best_epoch: int, best_val: float, history: list[dict],
                     cfg: ModelConfig, fingerprint: str) -> None:
    buf = io.BytesIO()
    torch.save({"model": model.student_state(), "best": best_state, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "best_epoch": best_epoch,
                "best_val": best_val, "history": history, "config": cfg.to_dict(), "data_fingerprint": fingerprint,
                "torch_rng": torch.get_rng_state()}, buf)
    try:
        atomic_write_bytes(out / CHECKPOINT, buf.getvalue())
    except OSError as exc:
        kept = (f"the checkpoint after epoch {len(history) - 1} is intact: continue with --resume" if len(history) > 1
                else "no checkpoint was written: run the same command again")
        raise write_failed(out / CHECKPOINT, exc, "--out", kept) from None


@dataclass
class _Images:
    """The readable good images, split into training and validation, with their teacher features. `train`
    and `val` are what the networks see (a tiled model's tiles); `n_train` and `n_val` count images."""

    kept: list[Path]
    bad: list[Path]
    fingerprint: str
    train: torch.Tensor
    val: torch.Tensor
    train_cache: Features
    val_cache: Features
    n_train: int
    n_val: int


@dataclass
class _Progress:
    """Where training stands: what a checkpoint stores and --resume restores."""

    first_epoch: int = 0
    best_epoch: int = -1
    best_val: float = float("inf")
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    estimate: dict[str, Any] | None = None      # the probe's training-time estimate (not checkpointed)


class _Probe:
    """The training-time estimate, from the run's own first steps: one warm-up step untimed, then
    PROBE_STEPS timed, extrapolated to every step (and validation pass) of the run. The probe steps are
    real training steps and count toward training: nothing is repeated, discarded or reset."""

    def __init__(self, steps: int, epochs: int, val_batches: int, log: Callable[[str], None]) -> None:
        self.steps, self.epochs, self.val_batches, self.log = steps, epochs, val_batches, log
        self.seen = 0
        self.times: list[float] = []
        self.estimate: dict[str, Any] | None = None

    def step(self, seconds: float) -> None:
        if self.estimate is not None:
            return
        self.seen += 1
        if self.seen > PROBE_WARMUP:
            self.times.append(seconds)
        if len(self.times) == PROBE_STEPS or self.seen >= self.steps:
            self._report(self.times or [seconds])

    def _report(self, times: list[float]) -> None:
        per_step = sum(times) / len(times)
        total = per_step * (self.steps + self.epochs * self.val_batches * VAL_STEP_SHARE)
        self.estimate = {"seconds": round(total, 1), "step_ms": round(1000 * per_step, 1), "probe_steps": len(times),
                         "steps": self.steps, "probe_counted": True}
        self.log(f"estimated training time: ~{duration(total)} (from a {len(times)}-step probe: {self.steps} steps "
                 f"of {1000 * per_step:.0f} ms and {self.epochs} validation passes)")


def _load_images(data: str | Path, cfg: ModelConfig, model: DualKD, dev: torch.device, skip_bad: bool,
                 log: Callable[[str], None]) -> _Images:
    paths = good_images(Path(data))
    images_np, kept, bad = load_batch(paths, cfg.input, skip_bad=skip_bad, min_side=cfg.min_input_size()[0])
    if bad:
        log(f"skipped {len(bad)} unreadable or too small image(s): {', '.join(p.name for p in bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}")
    if len(kept) < 10:
        raise EdgeADError(f"only {len(kept)} readable good images in {data}", "training needs at least 10 good images")
    train_idx, val_idx = split_train_val(len(kept), cfg.train.val_fraction, cfg.train.seed)
    images = torch.from_numpy(images_np)
    train_images, val_images = model.tiles(images[train_idx]), model.tiles(images[val_idx])   # images apart, then tiles
    tiles = (f", {model.tiler.count} tiles of {cfg.net_hw[0]}x{cfg.net_hw[1]} each"
             if model.tiler is not None else "")
    log(f"{len(kept)} good images ({len(train_idx)} train, {len(val_idx)} validation), "
        f"input {cfg.input.height}x{cfg.input.width}{tiles}, preset {cfg.preset}, device {dev}")
    return _Images(kept, bad, data_fingerprint(kept), train_images, val_images,
                   cache_teacher(model, train_images, cfg.train.batch_size, dev),
                   cache_teacher(model, val_images, cfg.train.batch_size, dev), len(train_idx), len(val_idx))


def _resume(out: Path, data: str | Path, cfg: ModelConfig, fingerprint: str, model: DualKD,
            optimizer: torch.optim.Optimizer, scheduler: Any) -> _Progress:
    ckpt_path = out / CHECKPOINT
    if not ckpt_path.is_file():
        raise EdgeADError(f"nothing to resume: {ckpt_path} does not exist", "start a new run without --resume")
    ckpt = read_torch_file(ckpt_path, "checkpoint", "start a new run without --resume (or with --overwrite)")
    if not isinstance(ckpt, dict) or not CHECKPOINT_KEYS <= set(ckpt):
        raise EdgeADError(f"{ckpt_path} is not a checkpoint edgead wrote", "start a new run without --resume")
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
    return _Progress(ckpt["epoch"] + 1, ckpt["best_epoch"], ckpt["best_val"], ckpt["history"], ckpt["best"])


def _epochs(out: Path, cfg: ModelConfig, model: DualKD, im: _Images, dev: torch.device, optimizer: torch.optim.Optimizer,
            scheduler: Any, state: _Progress, progress: bool, log: Callable[[str], None]) -> None:
    """The epoch loop: a checkpoint after every epoch; Ctrl-C keeps the last one (continue with --resume)."""
    steps_per_epoch = len(batches(len(im.train), cfg.train.batch_size, None))
    rng = np.random.default_rng(cfg.train.seed + state.first_epoch)
    frozen_from = bn_frozen_from(cfg)
    epoch = state.first_epoch - 1
    epochs_left = cfg.train.epochs - state.first_epoch
    probe = _Probe(epochs_left * steps_per_epoch, epochs_left, len(batches(len(im.val), cfg.train.batch_size, None)),
                   log)
    bar = Progress("training", cfg.train.epochs * steps_per_epoch, "steps",
                   initial=state.first_epoch * steps_per_epoch, enabled=progress)
    failed = True
    try:
        for epoch in range(state.first_epoch, cfg.train.epochs):
            if epoch == frozen_from:
                recalibrate_batchnorm(model, im.train, cfg.train.batch_size, dev)
            model.train()
            if epoch >= frozen_from:
                freeze_batchnorm(model)
            running = 0.0
            for idx in batches(len(im.train), cfg.train.batch_size, rng):
                t0 = time.perf_counter()
                loss = kd_loss(take(im.train_cache, idx, dev), model.student_features(im.train[idx].to(dev)),
                               cfg.train.hard_fraction)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step_loss = float(loss.detach())          # waits for the device: the step's time is whole
                probe.step(time.perf_counter() - t0)
                running += step_loss
                bar.update(1, note=f"epoch {epoch + 1}/{cfg.train.epochs}, loss {step_loss:.4f}")
            val = _val_loss(model, im.val, im.val_cache, cfg.train.batch_size, dev)
            state.history.append({"epoch": epoch + 1, "train_loss": running / steps_per_epoch, "val_loss": val})
            if val < state.best_val:
                state.best_val, state.best_epoch, state.best_state = val, epoch + 1, model.student_state()
            _save_checkpoint(out, model, state.best_state, optimizer, scheduler, epoch, state.best_epoch,
                             state.best_val, state.history, cfg, im.fingerprint)
        failed = False
    except KeyboardInterrupt:
        bar.close(failed=True)
        state.interrupted = True
        log(f"interrupted during epoch {epoch + 1}: the checkpoint after epoch {len(state.history)} is kept; "
            f"continue with --resume")
    finally:
        bar.close(failed=failed)
        state.estimate = probe.estimate


def epochs_for_budget(cfg: ModelConfig, steps_per_epoch: int, log: Callable[[str], None]) -> ModelConfig:
    """With `train.steps`, the epochs that give at least that many optimiser steps on this data set (the
    same number of updates whether there are 50 good images or 5000); else the config unchanged."""
    steps = cfg.train.steps
    if not steps:
        return cfg
    epochs = max(1, math.ceil(steps / max(1, steps_per_epoch)))
    if epochs != cfg.train.epochs:
        log(f"train.steps {steps}: {epochs} epochs of {steps_per_epoch} steps")
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))


def train(data: str | Path, out: str | Path, cfg: ModelConfig, *, skip_bad: bool = False, resume: bool = False,
          overwrite: bool = False, device: str | None = None, progress: bool = True,
          log: Callable[[str], None] = info) -> TrainResult:
    """Train the students on the good images of `data` into `out`. Before the bulk of the work, `log`
    gets an estimate of the training time, timed on the first steps (metadata: training.estimate)."""
    check_input(data, kind="dir", what="--data", hint=DATA_HINT)
    out = check_output(out, kind="dir", what="--out", overwrite=True, min_free_mb=0)   # a model already there: below
    if (out / METADATA_FILE).exists() and not (resume or overwrite):
        raise EdgeADError(f"{out} already holds a trained model",
                          "choose another --out, or pass --overwrite to replace it (--resume to continue it)")
    dev = pick_device(device)
    torch.manual_seed(cfg.train.seed)
    start = time.perf_counter()
    model = DualKD(cfg).to(dev)
    check_output(out, kind="dir", what="--out", overwrite=True, min_free_mb=_bytes_to_write(model) / 2**20)
    im = _load_images(data, cfg, model, dev, skip_bad, log)
    steps_per_epoch = len(batches(len(im.train), cfg.train.batch_size, None))
    cfg = epochs_for_budget(cfg, steps_per_epoch, log)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.train.lr,
                                                    total_steps=cfg.train.epochs * steps_per_epoch)
    state = _Progress(best_state=model.student_state())
    if resume:
        state = _resume(out, data, cfg, im.fingerprint, model, optimizer, scheduler)
        log(f"resuming after epoch {state.first_epoch} of {cfg.train.epochs}")
    loop_start = time.perf_counter()
    _epochs(out, cfg, model, im, dev, optimizer, scheduler, state, progress, log)
    if not state.history:
        raise EdgeADError("training stopped before the first epoch finished", "run it again (nothing was written)")
    loop_seconds = time.perf_counter() - loop_start
    model.load_student_state(state.best_state)
    if state.best_epoch <= bn_frozen_from(cfg):
        # Trained on batch statistics: give inference the exact averages of the final weights. (Weights
        # from a frozen epoch keep the statistics they were trained with.)
        recalibrate_batchnorm(model, im.train, cfg.train.batch_size, dev)
    stats = fit_statistics(model, im.val, im.val_cache, cfg, dev, im.train, im.train_cache)
    seconds = time.perf_counter() - start
    metadata = _metadata(data, cfg, model, im, state, dev, seconds, loop_seconds, stats)
    try:
        save_model(out, model, metadata)
    except OSError as exc:
        raise write_failed(out, exc, "--out",
                           "the checkpoint is kept: run the same command with --resume to write the model "
                           "without training again") from None
    return TrainResult(out, len(state.history), state.best_epoch, state.best_val, seconds, state.interrupted, metadata)


def _bytes_to_write(model: DualKD) -> int:
    """The most training has on disk at once: two checkpoints (weights, best weights, Adam's two moments
    each) while the new one replaces the old, and the model's weights; plus a MB for the small files."""
    student = sum(t.numel() * t.element_size() for t in model.student_state().values())
    return 9 * student + (1 << 20)


def _metadata(data: str | Path, cfg: ModelConfig, model: DualKD, im: _Images, state: _Progress, dev: torch.device,
              seconds: float, loop_seconds: float, stats: dict[str, Any]) -> dict[str, Any]:
    """model.json: where the model came from (data, teacher weights) and how training went."""
    history = state.history
    epochs_this_run = max(1, len(history) - state.first_epoch)
    return {
        "edgead_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": {"path": str(Path(data).resolve()), "fingerprint": im.fingerprint,
                 "n_images": len(im.kept), "n_train": im.n_train, "n_val": im.n_val,
                 "skipped": [str(p) for p in im.bad]},
        "teacher_weights": {p.name: {"arch": p.teacher.arch, "sha256": _teacher_sha(p.teacher.arch, p.teacher.weights)}
                            for p in cfg.pairs},
        "training": {"epochs_planned": cfg.train.epochs, "epochs_done": len(history), "best_epoch": state.best_epoch,
                     "best_val_loss": state.best_val, "final_train_loss": history[-1]["train_loss"],
                     "seconds": round(seconds, 1), "seconds_per_epoch": round(loop_seconds / epochs_this_run, 2),
                     "device": str(dev), "interrupted": state.interrupted, "estimate": state.estimate,
                     "history": history},
        "parameters": describe(model),
        **stats,
    }


def _teacher_sha(arch: str, weights: str) -> str | None:
    try:
        return sha256_file(resolve_weights(arch, None if weights == "imagenet" else weights))
    except EdgeADError:
        return None


__all__ = ["train", "TrainResult", "CONFIG_FILE"]
