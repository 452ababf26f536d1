"""Metrics agree with scikit-learn (ties included) and with hand/brute-force AUPRO."""

from __future__ import annotations

import math
import sys
import tracemalloc

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from edgead.training import metrics as M
from edgead.errors import EdgeADError


def _random_case(rng: np.random.Generator, n: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels with both classes and coarse (tie-heavy) scores."""
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.integers(0, levels, n) / (levels - 1) + 0.3 * y * rng.random(n)
    return y, np.round(s, 1)


# ---------------------------------------------------------------- image level


@pytest.mark.parametrize("seed", range(25))
def test_auroc_and_roc_curve_match_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, s = _random_case(rng, int(rng.integers(2, 80)), int(rng.integers(2, 8)))
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    for drop in (True, False):
        ours = M.roc_curve(y, s, drop_intermediate=drop)
        ref = sk_roc_curve(y, s, drop_intermediate=drop)
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(a, b)


def test_auroc_continuous_scores_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 1000)
    s = rng.normal(size=1000) + y
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_perfect_inverted_and_all_tied() -> None:
    y = np.array([0, 0, 0, 1, 1])
    assert M.auroc(y, np.array([0.1, 0.2, 0.3, 0.8, 0.9])) == 1.0
    assert M.auroc(y, np.array([0.9, 0.8, 0.7, 0.2, 0.1])) == 0.0
    assert M.auroc(y, np.full(5, 0.4)) == 0.5
    assert M.auroc(y.astype(bool), np.arange(5.0)) == 1.0


def test_one_class_labels_give_nan() -> None:
    s = np.array([0.1, 0.5, 0.9])
    assert math.isnan(M.auroc(np.zeros(3), s))
    assert math.isnan(M.auroc(np.ones(3), s))
    fpr, tpr, _ = M.roc_curve(np.zeros(3), s)
    assert np.isnan(tpr).all() and not np.isnan(fpr).any()
    assert all(math.isnan(v) for v in M.f1_max(np.zeros(3), s))
    masks = np.zeros((2, 4, 4))
    maps = np.random.default_rng(0).random((2, 4, 4))
    assert math.isnan(M.pixel_auroc(masks, maps))
    assert math.isnan(M.aupro(masks, maps))


def test_bad_input_raises_edgead_and_value_error() -> None:
    # each match is the whole message (str() adds "\n  hint: ..."): a check that fires for the wrong reason fails
    with pytest.raises(EdgeADError, match=r"^labels must be 0 \(good\) or 1 \(defective\)\n") as e:
        M.auroc(np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3]))
    assert isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match=r"^2 labels but 3 scores\n") as e:
        M.auroc(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))
    assert isinstance(e.value, EdgeADError)
    with pytest.raises(ValueError, match=r"^scores contain NaN or inf\n"):
        M.auroc(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(EdgeADError, match=r"^mask shape \(4, 4\) differs from anomaly map shape \(8, 8\)\n") as e:
        M.pixel_auroc(np.zeros((1, 4, 4)), np.zeros((1, 8, 8)))
    assert "resize" in e.value.hint
    with pytest.raises(ValueError, match=r"^max_fpr must be in \(0, 1\], got 0\.0$"):
        M.aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), max_fpr=0.0)


def test_sklearn_not_imported_by_metrics() -> None:
    """metrics runs on edge devices: importing it must not need sklearn/torch."""
    import subprocess

    code = "import sys, edgead.training.metrics; print('sklearn' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------- F1 / thresholds


def _sk_f1_max(y: np.ndarray, s: np.ndarray) -> float:
    p, r, _ = precision_recall_curve(y, s)
    p, r = p[:-1], r[:-1]
    f = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    return float(f.max())


@pytest.mark.parametrize("seed", range(20))
def test_f1_max_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    y, s = _random_case(rng, int(rng.integers(2, 80)), int(rng.integers(2, 8)))
    f1, thr = M.f1_max(y, s)
    assert f1 == pytest.approx(_sk_f1_max(y, s), abs=1e-12)
    pred = s >= thr
    tp = np.sum(pred & (y == 1))
    assert 2 * tp / (pred.sum() + y.sum()) == pytest.approx(f1)


def test_f1_max_perfect_separation_and_tie_break() -> None:
    y = np.array([0, 0, 1, 1])
    assert M.f1_max(y, np.array([0.1, 0.2, 0.7, 0.9])) == (1.0, 0.7)
    # F1 2/3 both at t=0.9 (tp=1, fp=0) and at t=0.1 (tp=2, fp=2): lowest threshold wins.
    f1, thr = M.f1_max(y, np.array([0.1, 0.5, 0.1, 0.9]))
    assert f1 == pytest.approx(2 / 3) and thr == 0.1


def test_threshold_table_consistent() -> None:
    rng = np.random.default_rng(7)
    y, s = _random_case(rng, 60, 6)
    rows = M.threshold_table(y, s)
    assert set(rows[0]) == {"threshold", "false_reject_rate", "escape_rate", "f1"}
    thr = np.array([r["threshold"] for r in rows])
    frr = np.array([r["false_reject_rate"] for r in rows])
    esc = np.array([r["escape_rate"] for r in rows])
    assert np.all(np.diff(thr) > 0)
    assert np.all(np.diff(frr) <= 0) and np.all(np.diff(esc) >= 0)
    assert frr[0] == 1.0 and esc[0] == 0.0  # lowest score: reject everything
    assert frr[-1] == 0.0 and esc[-1] == 1.0  # above the max: reject nothing
    for r in rows:  # every row recomputed from its definition
        t = r["threshold"]
        assert r["false_reject_rate"] == pytest.approx(np.mean(s[y == 0] >= t))
        assert r["escape_rate"] == pytest.approx(np.mean(s[y == 1] < t))
        tp = np.sum((s >= t) & (y == 1))
        assert r["f1"] == pytest.approx(2 * tp / (np.sum(s >= t) + y.sum()))
    best = max(rows, key=lambda r: r["f1"])
    assert best["f1"] == pytest.approx(M.f1_max(y, s)[0])


def test_threshold_table_only_good_images() -> None:
    rows = M.threshold_table(np.zeros(3), np.array([0.2, 0.4, 0.4]))
    assert [r["false_reject_rate"] for r in rows] == pytest.approx([1.0, 2 / 3, 0.0])
    assert all(math.isnan(r["escape_rate"]) and math.isnan(r["f1"]) for r in rows)
    assert M.threshold_table(np.zeros(0), np.zeros(0)) == []


# ---------------------------------------------------------------- pixel AUROC


@pytest.mark.parametrize("seed", range(5))
def test_pixel_auroc_matches_sklearn_flattened(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    masks = rng.random((6, 16, 20)) > 0.85
    maps = np.round(rng.random((6, 16, 20)) + 0.4 * masks, 2).astype(np.float32)
    ref = roc_auc_score(masks.ravel(), maps.ravel())
    assert M.pixel_auroc(masks, maps) == pytest.approx(ref, abs=1e-12)
    assert M.pixel_auroc(masks.astype(np.uint8) * 255, maps) == pytest.approx(ref, abs=1e-12)
    # list input with a different size per image
    ml = [masks[0], masks[1, :8, :10]]
    al = [maps[0], maps[1, :8, :10]]
    flat_m = np.concatenate([m.ravel() for m in ml])
    flat_a = np.concatenate([a.ravel() for a in al])
    assert M.pixel_auroc(ml, al) == pytest.approx(roc_auc_score(flat_m, flat_a), abs=1e-12)


def test_pixel_auroc_when_defect_pixels_outnumber_normal() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((3, 10, 10)) > 0.2
    maps = np.round(rng.random((3, 10, 10)) + 0.3 * masks, 1)
    assert M.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))


def test_pixel_auroc_memory_is_about_one_copy() -> None:
    rng = np.random.default_rng(4)
    maps = rng.random((60, 128, 128), dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[:, 40:60, 50:80] = True
    tracemalloc.start()
    try:
        M.pixel_auroc(masks, maps)
        M.aupro(masks, maps)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.0 * maps.nbytes  # one pixel copy + bool temporaries, no float64 upcast


# ---------------------------------------------------------------- AUPRO


def _aupro_bruteforce(masks: np.ndarray, maps: np.ndarray, max_fpr: float) -> float:
    """Exact PRO curve: every distinct score (and just above) as a threshold."""
    eight = np.ones((3, 3))
    regions = []
    for m, a in zip(masks, maps):
        lab, n = ndimage.label(m > 0, structure=eight)
        regions += [a[lab == i] for i in range(1, n + 1)]
    normal = maps[masks == 0]
    vals = np.unique(maps)
    thr = np.unique(np.r_[vals, np.nextafter(vals, np.inf), np.inf])[::-1]
    fpr = np.array([np.mean(normal >= t) for t in thr])
    pro = np.array([np.mean([np.mean(r >= t) for r in regions]) for t in thr])
    x = np.r_[fpr[fpr <= max_fpr], max_fpr]
    y = np.r_[pro[fpr <= max_fpr], np.interp(max_fpr, fpr, pro)]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / max_fpr)


def test_aupro_perfect_map_is_one() -> None:
    rng = np.random.default_rng(5)
    masks = np.zeros((4, 32, 32), dtype=np.uint8)
    masks[0, 3:9, 4:12] = 1
    masks[1, 20:30, 20:25] = 1
    masks[1, 2:4, 2:4] = 1
    maps = np.where(masks > 0, 0.6 + 0.4 * rng.random(masks.shape), 0.5 * rng.random(masks.shape))
    assert M.aupro(masks, maps) == pytest.approx(1.0)
    assert M.aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)
    assert M.aupro(masks, maps, max_fpr=1.0) == pytest.approx(1.0)


def test_aupro_constant_map_is_low() -> None:
    masks = np.zeros((2, 16, 16))
    masks[0, 4:8, 4:8] = 1
    value = M.aupro(masks, np.full(masks.shape, 0.3))
    assert value == pytest.approx(0.15)  # the chance diagonal: max_fpr / 2, normalised
    inverted = M.aupro(masks, 1.0 - masks)
    assert inverted == pytest.approx(0.0)


def test_aupro_hand_computed_two_regions() -> None:
    """Region A (6 px: 3 at 0.9, 3 at 0.3), region B (4 px at 0.6); 100 normal px,
    20 of them at 0.5. PRO curve vertices (fpr, pro):
    (0, .25) [t in (.6, .9]], (0, .75) [t in (.5, .6]], (.2, .75) [t in (.3, .5]],
    (.2, 1) [t in (0, .3]], (1, 1). Area on [0, .3] = .2*.75 + .1*1 = .25 -> .25/.3.
    """
    masks = np.zeros((1, 11, 10), dtype=np.uint8)
    masks[0, 0:2, 0:3] = 1
    masks[0, 9:11, 8:10] = 1
    maps = np.zeros(masks.shape)
    maps[0, 0, 0:3], maps[0, 1, 0:3] = 0.9, 0.3
    maps[0, 9:11, 8:10] = 0.6
    normal_px = np.argwhere(masks[0] == 0)
    assert len(normal_px) == 100
    maps[0, normal_px[:20, 0], normal_px[:20, 1]] = 0.5
    assert M.aupro(masks, maps) == pytest.approx(0.25 / 0.3)
    assert M.aupro(masks, maps.astype(np.float32)) == pytest.approx(0.25 / 0.3)
    # max_fpr = 0.1: area .1 * .75 -> .75
    assert M.aupro(masks, maps, max_fpr=0.1) == pytest.approx(0.75)


def test_aupro_uses_8_connectivity() -> None:
    """Two diagonal-touching pixels are ONE region: half detected -> PRO .5, not mean(1, 0)."""
    masks = np.zeros((1, 6, 6))
    masks[0, 1, 1] = masks[0, 2, 2] = 1
    masks[0, 4, 4] = 1  # a second, separate region, fully detected
    maps = np.zeros(masks.shape)
    maps[0, 1, 1] = maps[0, 4, 4] = 1.0
    # vertices (0, .75) and (1, 1); at fpr .3 PRO = .825 -> area .3 * (.75 + .825) / 2
    # (4-connectivity would give three regions and PRO 2/3 at FPR 0)
    assert M.aupro(masks, maps) == pytest.approx((0.75 + 0.825) / 2)
    assert M.aupro(masks, maps, max_fpr=1e-9) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", range(6))
def test_aupro_matches_bruteforce(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    masks = np.zeros((3, 20, 20), dtype=np.uint8)
    for i in range(3):
        for _ in range(2):
            r, c = rng.integers(0, 16, 2)
            masks[i, r : r + int(rng.integers(1, 5)), c : c + int(rng.integers(1, 5))] = 1
    maps = np.round(rng.random(masks.shape) * 0.8 + 0.4 * masks * rng.random(masks.shape), 2)
    # <= 200 distinct normal values in range: the sampled curve is exact
    for max_fpr in (0.3, 0.05, 1.0):
        assert M.aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(
            _aupro_bruteforce(masks, maps, max_fpr), abs=1e-12
        )
    cont = rng.random(masks.shape) + 0.5 * masks
    assert M.aupro(masks, cont, num_thresholds=400) == pytest.approx(
        _aupro_bruteforce(masks, cont, 0.3), abs=2e-3
    )


# ---------------------------------------------------------------- report


def test_evaluate_predictions_report() -> None:
    rng = np.random.default_rng(9)
    n = 12
    labels = np.array([0] * 6 + [1] * 6)
    types = ["good"] * 6 + ["scratch"] * 3 + ["dent"] * 3
    scores = np.r_[rng.random(6) * 0.5, 0.4 + rng.random(6) * 0.6]
    masks: list[np.ndarray | None] = []
    for i in range(n):
        m = np.zeros((16, 16), dtype=np.uint8)
        if labels[i]:
            m[4:8, 4 + i % 4 : 9 + i % 4] = 1
        masks.append(m)
    maps = np.stack([rng.random((16, 16)) * 0.5 + 0.5 * m for m in masks])
    masks[0] = None  # a good image without mask file: known all-zero
    masks[11] = None  # a defective image without annotation: left out of pixel metrics

    rep = M.evaluate_predictions(labels, types, scores, maps, masks)
    assert rep.n_good == 6 and rep.n_defect == 6
    assert rep.image_auroc == pytest.approx(roc_auc_score(labels, scores))
    f1, thr = M.f1_max(labels, scores)
    assert (rep.f1_max, rep.f1_threshold) == (f1, thr)
    keep = list(range(11))
    ref_masks = np.stack([np.zeros((16, 16)) if masks[i] is None else masks[i] for i in keep])
    assert rep.pixel_auroc == pytest.approx(roc_auc_score(ref_masks.ravel() > 0, maps[keep].ravel()))
    assert rep.aupro == pytest.approx(M.aupro(ref_masks, maps[keep]))
    assert set(rep.per_type) == {"scratch", "dent"}
    dent = rep.per_type["dent"]
    assert dent["n"] == 3
    sel = np.r_[0:6, 9:12]
    assert dent["image_auroc"] == pytest.approx(roc_auc_score(labels[sel], scores[sel]))
    sel_px = [i for i in sel if i != 11]
    dm = np.stack([np.zeros((16, 16)) if masks[i] is None else masks[i] for i in sel_px])
    assert dent["pixel_auroc"] == pytest.approx(roc_auc_score(dm.ravel() > 0, maps[sel_px].ravel()))
    d = rep.to_dict()
    assert d["per_type"]["scratch"]["n"] == 3 and d["n_defect"] == 6


def test_evaluate_predictions_without_pixel_info_gives_nan() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    types = ["good", "good", "crack", "crack"]
    rep = M.evaluate_predictions(labels, types, scores)
    assert rep.image_auroc == 1.0 and math.isnan(rep.pixel_auroc) and math.isnan(rep.aupro)
    maps = np.zeros((4, 8, 8))
    rep = M.evaluate_predictions(labels, types, scores, maps, [None] * 4)
    assert math.isnan(rep.pixel_auroc) and math.isnan(rep.per_type["crack"]["aupro"])
    only_good = M.evaluate_predictions(np.zeros(3), ["good"] * 3, np.array([0.1, 0.2, 0.3]))
    assert math.isnan(only_good.image_auroc) and only_good.per_type == {}
