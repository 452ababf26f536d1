"""Which pair finds which defect: image AUROC of each pair's map alone and of several fusion rules,
on trained models (no retraining; the maps come from the stored students and normalisation).

    python benchmarks/pair_maps.py --models bench-out/acc-pool1/models --data bench-out/acc-pool1/data

Rules: shallow or deep pair alone (normalised like the head does), the head's additive mean, the
maximum of the normalised maps, the multiplicative product; and each shallow layer alone. Then the
model's own head as trained ("head"), and the same head with and without the per-position
normalisation (`position_norm`): for a model trained without it, its statistics are computed here
from the product's train/good images, as training would have. Before each product's rows: the share
of good and defective test images whose map peaks within 8 px of the image border.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgead.data.images import read_image
from edgead.data.mvtec import test_samples
from edgead.training.evaluate import score_samples
from edgead.training.metrics import auroc
from edgead.model.artifact import load_model
from edgead.model.kd import discrepancy
from edgead.preprocess import preprocess

RULES = ("shallow", "deep", "additive", "max", "multiplicative", "shallow layer 1", "shallow layer 2",
         "head", "head, position_norm off", "head, position_norm on")


def image_scores(model_dir: Path, root: Path) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    model, _ = load_model(model_dir, "cpu")
    if model.tiler is not None:
        raise SystemExit(f"{model_dir} is a tiled model: this study reads the pair maps of whole-input models only")
    model.eval()
    head = model.head
    samples = test_samples(root)
    out: dict[str, list[float]] = {r: [] for r in RULES}

    def peak(m: torch.Tensor) -> list[float]:
        return head.blur(m).flatten(1).amax(1).tolist()

    with torch.no_grad():
        for i in range(0, len(samples), 8):
            x = torch.from_numpy(np.stack([preprocess(read_image(s.path), model.cfg.input) for s in samples[i:i + 8]]))
            t, s = model.teacher_features(x), model.student_features(x)
            maps = head.pair_maps(t, s)
            norm = [(m - head.norm_low[j]) / (head.norm_high[j] - head.norm_low[j]) for j, m in enumerate(maps)]
            out["shallow"] += peak(norm[0])
            out["deep"] += peak(norm[1])
            out["additive"] += peak((norm[0] + norm[1]) / 2)
            out["max"] += peak(torch.maximum(norm[0], norm[1]))
            out["multiplicative"] += peak(maps[0] / head.norm_high[0] * maps[1] / head.norm_high[1])
            for k in range(2):
                layer = F.interpolate(discrepancy(t[0][k], s[0][k]), size=head.out_hw, mode="bilinear",
                                      align_corners=False)
                out[f"shallow layer {k + 1}"] += peak(layer)
    trained_with = head.position_norm
    out["head"] = _head_scores(model, samples)
    head.position_norm = False
    near_border: list[bool] = []
    out["head, position_norm off"] = _head_scores(model, samples, near_border)
    if not trained_with:
        _add_position_statistics(model, root / "train" / "good")
    head.position_norm = True
    out["head, position_norm on"] = _head_scores(model, samples)
    labels = np.array([s.label for s in samples])
    near = np.array(near_border)
    print(f"{root.name}: map peak within {BORDER_PX} px of the border (position_norm off): "
          f"{near[labels == 0].mean():.0%} of good, {near[labels == 1].mean():.0%} of defective test images", flush=True)
    return labels, [s.defect_type for s in samples], {r: np.array(v) for r, v in out.items()}


BORDER_PX = 8


def _head_scores(model, samples, near_border: list[bool] | None = None) -> list[float]:
    """The head's image scores; `near_border` (if given) collects whether each map's peak lies
    within BORDER_PX of the image border."""
    _, scores, maps, _ = score_samples(model, samples, 8, torch.device("cpu"))
    if near_border is not None:
        h, w = maps.shape[-2:]
        y, x = np.unravel_index(maps.reshape(len(maps), -1).argmax(1), (h, w))
        near_border += ((y < BORDER_PX) | (y >= h - BORDER_PX) | (x < BORDER_PX) | (x >= w - BORDER_PX)).tolist()
    return scores.tolist()


def _add_position_statistics(model, good_dir: Path) -> None:
    """What training does for `position_norm: true`, for a model trained without it."""
    from edgead.data.images import load_batch
    from edgead.data.mvtec import good_images
    from edgead.training.batches import cache_teacher
    from edgead.training.statistics import position_statistics

    images = torch.from_numpy(load_batch(good_images(good_dir), model.cfg.input)[0])
    model.head.add_position_norm()
    cache = cache_teacher(model, images, 8, torch.device("cpu"))
    with torch.no_grad():
        position_statistics(model, [(images, cache)], 8, torch.device("cpu"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="folder of models named <category>-<preset>")
    ap.add_argument("--data", required=True, help="folder of MVTec-layout categories")
    args = ap.parse_args()
    print("| product | rule | image AUROC | per defect type |\n| --- | --- | --- | --- |")
    for model_dir in sorted(Path(args.models).iterdir()):
        category = model_dir.name.rsplit("-", 1)[0]
        root = Path(args.data) / category
        if not (model_dir / "metadata.json").is_file() or not root.is_dir():
            continue
        labels, types, scores = image_scores(model_dir, root)
        for rule, v in scores.items():
            per = []
            for kind in sorted(set(types) - {"good"}):
                keep = np.array([t in ("good", kind) for t in types])
                per.append(f"{kind} {auroc(labels[keep], v[keep]):.3f}")
            print(f"| {category} | {rule} | {auroc(labels, v):.4f} | {', '.join(per)} |", flush=True)


if __name__ == "__main__":
    main()
