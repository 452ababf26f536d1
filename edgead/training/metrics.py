"""Detection metrics (AUROC, pixel AUROC, AUPRO, F1) in plain numpy.

Numpy-only on purpose (SciPy only inside `aupro`): `training.figures` uses it and the
run loop imports that on the edge path, so nothing here may need scikit-learn or torch.
Reject thresholds for the line come from `edgead.decide.thresholds`; `threshold_table`
and `f1_max` describe the trade-off on a labelled test set. Results match
`sklearn.metrics` (ties included); the tests check that.

Conventions:
- label 1 / mask pixel > 0 means defective; a higher score means more anomalous;
- "defective" is predicted when ``score >= threshold`` (same as sklearn);
- where a metric is undefined (one class only, no defect regions) it returns
  ``float('nan')`` instead of raising, so one odd category cannot abort a report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence, Union

import numpy as np

from edgead.errors import EdgeADError

__all__ = [
    "EvalReport",
    "MetricInputError",
    "aupro",
    "auroc",
    "evaluate_predictions",
    "f1_max",
    "pixel_auroc",
    "roc_curve",
    "threshold_table",
]

NAN = float("nan")

MaskStack = Union[np.ndarray, Sequence[np.ndarray]]


class MetricInputError(EdgeADError, ValueError):
    """Bad metric input; an EdgeADError for the CLI and a ValueError for callers."""


# ---------------------------------------------------------------- input checks


def _labels_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate per-image labels/scores; returns (bool labels, float64 scores)."""
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise MetricInputError(
            f"{y.size} labels but {s.size} scores",
            hint="pass one label and one score per image",
        )
    if y.dtype != bool:
        if y.size and not np.isin(y, (0, 1)).all():
            raise MetricInputError(
                "labels must be 0 (good) or 1 (defective)",
                hint="map every defect type to 1 and 'good' to 0",
            )
        y = y.astype(bool)
    if not np.isfinite(s).all():
        raise MetricInputError("scores contain NaN or inf", hint="check the model output")
    return y, s


def _as_stack(arrs: MaskStack, name: str) -> list[np.ndarray] | np.ndarray:
    """NxHxW array stays as is (fast path); a sequence becomes a list of 2-D arrays."""
    if isinstance(arrs, np.ndarray):
        if arrs.ndim == 2:
            arrs = arrs[None]
        if arrs.ndim != 3:
            raise MetricInputError(f"{name} must be NxHxW, got shape {arrs.shape}")
        return arrs
    out = [np.asarray(a) for a in arrs]
    for a in out:
        if a.ndim != 2:
            raise MetricInputError(f"each of {name} must be HxW, got shape {a.shape}")
    return out


def _pixel_pairs(masks: MaskStack, maps: MaskStack) -> tuple[list | np.ndarray, list | np.ndarray]:
    """Check masks/maps agree in count and per-image shape; maps must be finite."""
    mk = _as_stack(masks, "masks")
    mp = _as_stack(maps, "maps")
    if len(mk) != len(mp):
        raise MetricInputError(f"{len(mk)} masks but {len(mp)} anomaly maps")
    for m, a in zip(mk, mp):
        if m.shape != a.shape:
            raise MetricInputError(
                f"mask shape {m.shape} differs from anomaly map shape {a.shape}",
                hint="resize anomaly maps to the ground-truth mask size before evaluating",
            )
    for a in mp:
        if not np.isfinite(a).all():
            raise MetricInputError("anomaly maps contain NaN or inf", hint="check the model output")
    return mk, mp


def _gather(mk: list | np.ndarray, mp: list | np.ndarray, defect: bool) -> np.ndarray:
    """Scores of defect (or normal) pixels of all images in one preallocated copy."""
    if isinstance(mk, np.ndarray) and isinstance(mp, np.ndarray):
        return mp[mk > 0] if defect else mp[mk <= 0]
    if len(mp) == 0:
        return np.empty(0)
    sel = [(m > 0) if defect else (m <= 0) for m in mk]
    out = np.empty(sum(int(b.sum()) for b in sel), dtype=np.result_type(*mp))
    at = 0
    for b, a in zip(sel, mp):
        n = int(b.sum())
        out[at : at + n] = a[b]
        at += n
    return out


# ---------------------------------------------------------------- ROC / AUROC


def roc_curve(
    labels: np.ndarray, scores: np.ndarray, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) exactly as `sklearn.metrics.roc_curve`.

    thresholds[0] is +inf (the (0, 0) corner). With one class only, the undefined
    axis is all NaN (sklearn does the same, with a warning; we stay silent).
    """
    y, s = _labels_scores(labels, scores)
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y, dtype=np.float64)[last_of_value]
    fps = 1.0 + last_of_value - tps
    thr = s[last_of_value]
    if drop_intermediate and fps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    thr = np.r_[np.inf, thr]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thr


def _auc_split(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + P(pos == neg) / 2, exact (Mann-Whitney), by sort + searchsorted.

    Sorts both inputs IN PLACE (callers pass throwaway copies).
    Only the larger class is sorted and the smaller one searched into it, so memory
    is one copy of the pixels and no O(N) index array; equals the trapezoid ROC area.
    """
    n_pos, n_neg = pos.size, neg.size
    if n_pos == 0 or n_neg == 0:
        return NAN
    if n_pos <= n_neg:
        ref, query = neg, pos
        ref.sort()  # callers pass fresh copies; in place keeps memory at one copy
        query.sort()  # sorted queries make searchsorted walk the reference in order (cache-friendly)
        lo = np.searchsorted(ref, query, side="left")  # negatives strictly below each positive
        hi = np.searchsorted(ref, query, side="right")
        twice = 2 * int(lo.sum(dtype=np.int64)) + int((hi - lo).sum(dtype=np.int64))
    else:
        ref, query = pos, neg
        ref.sort()
        query.sort()
        lo = np.searchsorted(ref, query, side="left")
        hi = np.searchsorted(ref, query, side="right")  # positives above = n_pos - hi
        twice = 2 * int((n_pos - hi).sum(dtype=np.int64)) + int((hi - lo).sum(dtype=np.int64))
    return twice / (2.0 * n_pos * n_neg)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Image AUROC; equals sklearn's roc_auc_score incl. ties.

    One-class labels return NaN (sklearn raises): a category without good or
    without defective test images has no AUROC, and the report should say so.
    """
    y, s = _labels_scores(labels, scores)
    return _auc_split(s[y], s[~y])


def pixel_auroc(masks: MaskStack, maps: MaskStack) -> float:
    """Pixel AUROC over all pixels of all images; equals roc_auc_score on flattened arrays.

    masks: NxHxW (pixel > 0 = defect) or a list of HxW; maps: same shapes. Memory is
    about one extra copy of the maps (e.g. ~130 MB for 500x256x256 float32).
    NaN when no defect pixel or no normal pixel exists.
    """
    mk, mp = _pixel_pairs(masks, maps)
    return _auc_split(_gather(mk, mp, True), _gather(mk, mp, False))


# ---------------------------------------------------------------- AUPRO


def _label_regions(masks: list | np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """8-connected GT components: per image, the global region id and flat index of
    each defect pixel; plus the total region count (regions never span images)."""
    from scipy import ndimage  # scipy only when AUPRO is asked for

    eight = np.ones((3, 3), dtype=bool)
    region_ids, flat_idx, n_regions = [], [], 0
    for m in masks:
        lab, n = ndimage.label(m > 0, structure=eight)
        idx = np.flatnonzero(lab)
        region_ids.append(lab.reshape(-1)[idx].astype(np.int64) - 1 + n_regions)
        flat_idx.append(idx)
        n_regions += n
    return region_ids, flat_idx, n_regions


def _pro_thresholds(normal_sorted: np.ndarray, max_fpr: float, num_thresholds: int) -> np.ndarray:
    """Ascending thresholds whose (FPR, PRO) points trace the curve on [0, max_fpr].

    Levels are the distinct normal scores with FPR <= max_fpr (plus the first one
    past it); when there are more than num_thresholds of them, num_thresholds
    levels evenly spaced in FPR are used instead. Per level we take its score
    (bottom of the vertical PRO step) and a value just above the next lower normal
    score (top of the step: same FPR, highest PRO). So the curve is exact whenever
    normal pixels take <= num_thresholds distinct values there, and a fine,
    linearly interpolated sample of it otherwise.
    """
    n, ft = normal_sorted.size, normal_sorted.dtype.type  # stay in the maps' float dtype:
    k_end = min(n, int(np.floor(max_fpr * n)) + 1)  # a float64 query would copy the pixels
    tail = normal_sorted[n - k_end :]
    changes = tail[1:] != tail[:-1]
    if np.count_nonzero(changes) < num_thresholds:
        bottom = tail[np.r_[0, np.flatnonzero(changes) + 1]]
    else:
        fprs = np.linspace(0.0, max_fpr, num_thresholds)
        k = np.unique(np.r_[np.clip(np.round(fprs * n).astype(np.int64), 1, n), k_end])
        bottom = normal_sorted[n - k]
    first = np.searchsorted(normal_sorted, bottom, side="left")
    below = normal_sorted[np.maximum(first - 1, 0)]
    top = np.where(first > 0, np.nextafter(below, ft(np.inf)), ft(-np.inf))
    above_all = np.nextafter(normal_sorted[-1:], ft(np.inf))  # FPR 0, highest PRO at FPR 0
    extremes = np.array([np.inf, -np.inf], dtype=ft)
    return np.unique(np.concatenate([bottom, top.astype(ft), above_all, extremes]))


def aupro(masks: MaskStack, maps: MaskStack, max_fpr: float = 0.3, num_thresholds: int = 200) -> float:
    """Normalised area under the per-region-overlap curve up to max_fpr (MVTec AD "PRO").

    PRO(t) = mean over 8-connected GT regions (of all images) of the share of the
    region's pixels scoring >= t; FPR(t) = share of normal pixels (all images)
    scoring >= t. The curve is integrated by trapezoid over FPR in [0, max_fpr],
    the endpoint linearly interpolated, and divided by max_fpr, so a perfect map
    gives 1.0 and an uninformative (constant) one gives max_fpr / 2.

    num_thresholds caps the FPR levels evaluated inside [0, max_fpr]; the curve is
    exact when normal pixels take no more distinct values there (`_pro_thresholds`).
    NaN when there is no defect region or no normal pixel.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise MetricInputError(f"max_fpr must be in (0, 1], got {max_fpr}")
    if num_thresholds < 2:
        raise MetricInputError(f"num_thresholds must be >= 2, got {num_thresholds}")
    mk, mp = _pixel_pairs(masks, maps)
    region_ids, flat_idx, n_regions = _label_regions(mk)
    if n_regions == 0:
        return NAN
    normal = _gather(mk, mp, False)
    if normal.size == 0:
        return NAN
    ft = np.result_type(normal.dtype, np.float32)  # float thresholds; ints/float16 -> float32
    normal = normal.astype(ft, copy=False)
    normal.sort()
    thr = _pro_thresholds(normal, max_fpr, num_thresholds)  # ascending

    # PRO(t) = (1/R) * sum over defect pixels >= t of 1/|own region|: one weighted
    # histogram of "how many thresholds each pixel clears", no region x threshold table.
    ids = np.concatenate(region_ids)
    weight = 1.0 / np.bincount(ids, minlength=n_regions)[ids]
    cleared = np.concatenate(
        [np.searchsorted(thr, a.reshape(-1)[idx], side="right") for a, idx in zip(mp, flat_idx)]
    )
    hist = np.bincount(cleared, weights=weight, minlength=thr.size + 1)
    pro = np.cumsum(hist[::-1])[::-1][1:] / n_regions  # pro[j]: thresholds >= thr[j]
    fpr = (normal.size - np.searchsorted(normal, thr, side="left")) / normal.size

    # Descending thresholds -> FPR and PRO non-decreasing.
    fpr, pro = fpr[::-1], pro[::-1]
    inside = int(np.searchsorted(fpr, max_fpr, side="right"))
    x, y = fpr[:inside], pro[:inside]
    if x[-1] < max_fpr:  # a point beyond exists: thr = -inf has FPR 1
        x0, y0, x1, y1 = fpr[inside - 1], pro[inside - 1], fpr[inside], pro[inside]
        x = np.r_[x, max_fpr]
        y = np.r_[y, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)]
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
    return area / max_fpr


# ---------------------------------------------------------------- thresholds / F1


def _counts_by_threshold(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores ascending, with TP and FP counts when predicting score >= t."""
    thr, inverse = np.unique(s, return_inverse=True)
    pos_at = np.bincount(inverse, weights=y.astype(np.float64), minlength=thr.size)
    all_at = np.bincount(inverse, minlength=thr.size)
    tp = np.cumsum(pos_at[::-1])[::-1]
    fp = np.cumsum((all_at - pos_at)[::-1])[::-1]
    return thr, tp, fp


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(best F1, threshold), defective when score >= threshold.

    Among equally good thresholds the lowest is returned (fewest escapes at the same
    F1). (NaN, NaN) when there are no defective images (F1 is undefined).
    """
    y, s = _labels_scores(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return NAN, NAN
    thr, tp, fp = _counts_by_threshold(y, s)
    f1 = 2.0 * tp / (tp + fp + n_pos)
    best = int(np.flatnonzero(f1 == f1.max())[0])
    return float(f1[best]), float(thr[best])


def threshold_table(labels: np.ndarray, scores: np.ndarray) -> list[dict]:
    """One row per candidate threshold (ascending): what rejecting at score >= t costs.

    Candidates are the distinct scores plus one value just above the maximum, so
    "reject nothing" (false_reject_rate 0) is always available to calibration.
    Rows: threshold, false_reject_rate (good scored >= t), escape_rate (defective
    scored < t), f1. A rate or f1 is NaN when its class has no images.
    """
    y, s = _labels_scores(labels, scores)
    if s.size == 0:
        return []
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    thr, tp, fp = _counts_by_threshold(y, s)
    thr = np.r_[thr, np.nextafter(thr[-1], np.inf)]
    tp, fp = np.r_[tp, 0.0], np.r_[fp, 0.0]
    frr = fp / n_neg if n_neg else np.full(thr.shape, np.nan)
    esc = (n_pos - tp) / n_pos if n_pos else np.full(thr.shape, np.nan)
    f1 = 2.0 * tp / (tp + fp + n_pos) if n_pos else np.full(thr.shape, np.nan)
    return [
        {"threshold": float(t), "false_reject_rate": float(r), "escape_rate": float(e), "f1": float(f)}
        for t, r, e, f in zip(thr, frr, esc, f1)
    ]


# ---------------------------------------------------------------- report


@dataclass
class EvalReport:
    """All test-set metrics of one model on one category; NaN = not measurable."""

    image_auroc: float
    pixel_auroc: float
    aupro: float
    f1_max: float
    f1_threshold: float
    per_type: dict[str, dict[str, float]] = field(default_factory=dict)
    n_good: int = 0
    n_defect: int = 0

    def to_dict(self) -> dict:
        """Plain dict (floats stay floats, NaN included; json.dumps writes it as NaN)."""
        return asdict(self)


def _known_pixels(
    labels: np.ndarray, maps: MaskStack | None, masks: Sequence[np.ndarray | None] | np.ndarray | None
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Masks/maps of images whose mask is known, and their image indices.

    A good image's mask is all-zero by definition, so None there counts as known;
    a defective image with mask None (not annotated) is left out of pixel metrics.
    """
    if maps is None or masks is None:
        return [], [], np.empty(0, dtype=np.int64)
    mp = list(_as_stack(maps, "maps"))
    mk = list(masks) if not isinstance(masks, np.ndarray) else list(_as_stack(masks, "masks"))
    if len(mp) != labels.size or len(mk) != labels.size:
        raise MetricInputError(
            f"{labels.size} images but {len(mp)} anomaly maps and {len(mk)} masks",
            hint="pass one map and one mask (or None) per image",
        )
    keep_masks, keep_maps, keep_idx = [], [], []
    for i, (m, a, bad) in enumerate(zip(mk, mp, labels)):
        if m is None:
            if bad:
                continue
            m = np.zeros(np.shape(a), dtype=bool)
        keep_masks.append(np.asarray(m))
        keep_maps.append(np.asarray(a))
        keep_idx.append(i)
    return keep_masks, keep_maps, np.asarray(keep_idx, dtype=np.int64)


def _pixel_metrics(masks: list[np.ndarray], maps: list[np.ndarray]) -> tuple[float, float]:
    """(pixel AUROC, AUPRO); NaN both when no image has a known mask."""
    if not masks:
        return NAN, NAN
    return pixel_auroc(masks, maps), aupro(masks, maps)


def evaluate_predictions(
    labels: np.ndarray,
    defect_types: list[str],
    scores: np.ndarray,
    maps: MaskStack | None = None,
    masks: Sequence[np.ndarray | None] | np.ndarray | None = None,
) -> EvalReport:
    """Image and pixel metrics, overall and per defect type (each type vs all good images).

    masks: one per image, None where unknown (see `_known_pixels`); pixel metrics use
    only images with a known mask and are NaN when maps/masks are missing.
    """
    y, s = _labels_scores(labels, scores)
    types = list(defect_types)
    if len(types) != y.size:
        raise MetricInputError(f"{y.size} labels but {len(types)} defect types")
    kmasks, kmaps, kidx = _known_pixels(y, maps, masks)
    pix_auc, pro = _pixel_metrics(kmasks, kmaps)
    best_f1, best_thr = f1_max(y, s)

    per_type: dict[str, dict[str, float]] = {}
    type_arr = np.asarray(types, dtype=object)
    for t in sorted({types[i] for i in np.flatnonzero(y)}):
        sel = ~y | (type_arr == t)
        sel_known = [j for j, i in enumerate(kidx) if sel[i]]
        t_pix, t_pro = _pixel_metrics([kmasks[j] for j in sel_known], [kmaps[j] for j in sel_known])
        per_type[t] = {
            "image_auroc": auroc(y[sel], s[sel]),
            "pixel_auroc": t_pix,
            "aupro": t_pro,
            "n": int((y & (type_arr == t)).sum()),
        }
    return EvalReport(
        image_auroc=auroc(y, s),
        pixel_auroc=pix_auc,
        aupro=pro,
        f1_max=best_f1,
        f1_threshold=best_thr,
        per_type=per_type,
        n_good=int((~y).sum()),
        n_defect=int(y.sum()),
    )
