"""`edgead eval`: score a model on an MVTec-layout test split; JSON report and PNG figures.

Scores depend only on the model artifact (its normalisation statistics come from training), never on
the test set, so the numbers here are what the line will see.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgead.data.images import load_image, read_image
from edgead.data.mvtec import Sample, test_samples
from edgead.decide.progress import Progress, info
from edgead.training.device import pick_device
from edgead.errors import EdgeADError
from edgead.io import atomic_write_json, check_input, check_output, write_failed
from edgead.training.metrics import evaluate_predictions
from edgead.schema import is_int
from edgead.model.artifact import load_model
from edgead.model.kd import DualKD
from edgead.preprocess import PreprocessSpec, preprocess_mask, to_display


@torch.no_grad()
def score_samples(model: DualKD, samples: list[Sample], batch_size: int, device: torch.device,
                  skip_bad: bool = False) -> tuple[list[Sample], np.ndarray, np.ndarray, list[Path]]:
    """Run the detector over samples: (kept samples, scores N, maps N x H x W float32, bad paths)."""
    spec = model.cfg.input
    kept: list[Sample] = []
    bad: list[Path] = []
    scores: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    batch_samples: list[Sample] = []
    bar = Progress("eval", len(samples), "images")

    def flush() -> None:
        if batch:
            amap, score = model(torch.from_numpy(np.stack(batch)).to(device))
            maps.append(amap[:, 0].float().cpu().numpy())
            scores.append(score.float().cpu().numpy())
            kept.extend(batch_samples)
            batch.clear()
            batch_samples.clear()
        bar.update(len(kept) + len(bad) - bar.done)

    min_side = model.cfg.min_input_size()[0]
    with bar:
        for sample in samples:
            try:
                batch.append(load_image(sample.path, spec, min_side))
            except EdgeADError:
                if not skip_bad:
                    raise
                bad.append(sample.path)
                continue
            batch_samples.append(sample)
            if len(batch) == batch_size:
                flush()
        flush()
    if not kept:
        raise EdgeADError("no readable test image", "check the test folder")
    return kept, np.concatenate(scores), np.concatenate(maps), bad


def load_masks(samples: list[Sample], spec: PreprocessSpec) -> list[np.ndarray | None]:
    """Ground-truth masks in the model's input geometry; None where a defect has no mask file."""
    masks: list[np.ndarray | None] = []
    for s in samples:
        if s.label == 0:
            masks.append(np.zeros((spec.height, spec.width), np.float32))
        elif s.mask_path is None:
            masks.append(None)
        else:
            masks.append(preprocess_mask(read_image(s.mask_path), spec))
    return masks


def evaluate(model_dir: str | Path, data: str | Path, out: str | Path | None = None, *, batch_size: int = 8,
             device: str | None = None, skip_bad: bool = False, figures: bool = True,
             log: Callable[[str], None] = info) -> dict[str, Any]:
    """Metrics of the model in `model_dir` on the test split of `data`; with `out`, also eval.json and
    the figures there, so a report can be read and compared without the model or a torch install."""
    if not is_int(batch_size) or batch_size < 1:
        raise EdgeADError(f"--batch-size must be a whole number >= 1, got {batch_size!r}", "8 is the default")
    check_input(model_dir, kind="dir", what="--model", hint="give the model folder written by `edgead train --out`")
    check_input(data, kind="dir", what="--data", hint="give an MVTec-layout category root (with test/ and "
                                                      "ground_truth/)")
    if out is not None:
        check_output(out, kind="dir", what="--out", overwrite=True)    # a report already there is replaced
    dev = pick_device(device)
    model, metadata = load_model(model_dir, dev)
    samples = test_samples(Path(data))
    start = time.perf_counter()
    kept, scores, maps, bad = score_samples(model, samples, batch_size, dev, skip_bad)
    seconds = time.perf_counter() - start
    masks = load_masks(kept, model.cfg.input)
    labels = np.array([s.label for s in kept])
    types = [s.defect_type for s in kept]
    mask_arr: Any = masks
    report = evaluate_predictions(labels, types, scores, maps, mask_arr)
    result: dict[str, Any] = {
        "model": str(model_dir), "data": str(data), **report.to_dict(),
        "n_images": len(kept), "skipped": [str(p) for p in bad],
        "seconds": round(seconds, 2), "ms_per_image": round(1000 * seconds / len(kept), 1),
        "good_scores": {"mean": float(scores[labels == 0].mean()) if (labels == 0).any() else None,
                        "max": float(scores[labels == 0].max()) if (labels == 0).any() else None},
        "trained_val_good_scores": metadata.get("val_good_scores"),
    }
    if out is not None:
        out = Path(out)
        try:
            (out / "eval.json").unlink(missing_ok=True)      # an older report never sits beside new figures
            if figures:
                write_figures(out, model, kept, scores, maps, masks)
            atomic_write_json(out / "eval.json", result)     # last: its presence means a complete report
        except OSError as exc:
            raise write_failed(out, exc, "--out", "the metrics were not saved: run eval again") from None
        log(f"report written to {out / 'eval.json'}")
    return result


def write_figures(out: Path, model: DualKD, samples: list[Sample], scores: np.ndarray, maps: np.ndarray,
                  masks: list[np.ndarray | None], n_tiles: int = 12) -> None:
    from edgead.training.figures import heatmap_grid, plot_roc, plot_score_histograms

    labels = np.array([s.label for s in samples])
    if 0 < labels.sum() < len(labels):
        plot_roc(labels, scores, out / "roc.png", title="image ROC")
    plot_score_histograms(scores[labels == 0], scores[labels == 1], out / "scores.png", title="image scores")
    # Most informative tiles: the highest-scored defects and the highest-scored good parts.
    order_def = [i for i in np.argsort(-scores) if labels[i] == 1][: n_tiles * 2 // 3]
    order_good = [i for i in np.argsort(-scores) if labels[i] == 0][: n_tiles - len(order_def)]
    chosen = order_def + order_good
    vmin, vmax = float(np.quantile(maps, 0.01)), float(np.quantile(maps, 0.999))
    heatmap_grid([to_display(read_image(samples[i].path), model.cfg.input) for i in chosen],
                 [maps[i] for i in chosen],
                 [f"{samples[i].defect_type} {scores[i]:.3g}" for i in chosen],
                 out / "heatmaps.png", vmin, vmax, masks=[masks[i] for i in chosen])
