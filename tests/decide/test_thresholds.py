"""Threshold maths against known distributions, numpy's quantiles and scipy's binomial intervals."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from edgead.decide import thresholds as T
from edgead.errors import EdgeADError


# ---------------------------------------------------------------- quantile method


@pytest.mark.parametrize("n,target", [(100, 0.1), (250, 0.04), (1000, 0.01), (1000, 0.001), (537, 0.05),
                                      (20000, 0.0005), (64, 0.25)])
def test_quantile_threshold_is_numpys_inverted_cdf(n, target):
    s = np.random.default_rng(n).gamma(2.0, size=n)
    t = T.quantile_threshold(s, target)
    assert t == np.quantile(s, 1 - target, method="inverted_cdf")
    # At most floor(n * target) good images score above it; the next lower score would allow one more.
    m = math.floor(n * target + 1e-9)
    assert (s > t).sum() == m
    assert (s > np.sort(s)[n - m - 2]).sum() == m + 1


def test_quantile_threshold_with_ties_never_exceeds_the_target():
    s = np.repeat(np.arange(20.0), 10)  # 200 scores, 10 of each value
    for target in (0.05, 0.07, 0.1, 0.5):
        t = T.quantile_threshold(s, target)
        assert (s > t).mean() <= target
        assert t == np.quantile(s, 1 - target, method="inverted_cdf")


@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (10, 10), (3, 137), (0, 5000), (12, 120), (499, 1000)])
def test_clopper_pearson_matches_scipy(k, n):
    lo, hi = T.clopper_pearson(k, n)
    ref = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)
    ref99 = stats.binomtest(k, n).proportion_ci(0.99, method="exact")
    assert T.clopper_pearson(k, n, 0.99) == pytest.approx((ref99.low, ref99.high), abs=1e-12)


def test_quantile_result_reports_observed_rate_and_interval():
    s = np.random.default_rng(0).normal(size=400)
    r = T.calibrate_threshold(s, 0.05)
    assert r.method == "quantile" and r.rejects == 20 and r.expected_frr == 20 / 400
    assert r.expected_frr_interval == pytest.approx(T.clopper_pearson(20, 400))
    assert r.evt is None and "400 good images >= 200" in r.method_reason


# ---------------------------------------------------------------- EVT


def test_evt_on_exponential_lands_near_the_true_quantile():
    x = np.random.default_rng(7).exponential(size=2000)
    r = T.calibrate_threshold(x, 1e-4, refits=100)
    true = math.log(1e4)  # isf(1e-4) of Exp(1)
    assert r.method == "evt" and abs(r.threshold / true - 1) < 0.25
    assert r.evt["shape"] == pytest.approx(0.0, abs=0.25)  # an exponential tail has shape 0
    assert r.expected_frr == pytest.approx(1e-4, rel=1e-6)
    lo, hi = r.expected_frr_interval
    assert lo < stats.expon.sf(r.threshold) < hi


def test_evt_on_lomax_lands_near_the_true_quantile():
    law = stats.lomax(3.0)  # Pareto II, tail index 3: GPD shape 1/3
    x = law.rvs(size=2000, random_state=np.random.default_rng(11))
    r = T.calibrate_threshold(x, 1e-4, refits=100)
    assert abs(r.threshold / law.isf(1e-4) - 1) < 0.35
    assert r.evt["shape"] == pytest.approx(1 / 3, abs=0.25)
    lo, hi = r.expected_frr_interval
    assert lo < law.sf(r.threshold) < hi


def test_evt_is_unbiased_over_seeds():
    """Median relative error over 15 seeds is small (one seed alone has ~20 % spread at 20x extrapolation)."""
    errs = [T.calibrate_threshold(np.random.default_rng(s).exponential(size=2000), 1e-4, refits=0).threshold
            / math.log(1e4) - 1 for s in range(15)]
    assert abs(float(np.median(errs))) < 0.08


def test_evt_tail_fit_size_and_excesses():
    x = np.random.default_rng(1).exponential(size=600)
    fit = T.evt_fit(x)
    assert fit["tail_points"] == 60 and fit["tail_rate"] == 0.1
    assert fit["tail_threshold"] == np.sort(x)[600 - 61]
    assert T.evt_rate(fit, T.evt_threshold(fit, 1e-3)) == pytest.approx(1e-3)


def test_constant_scores_cannot_be_tail_fitted():
    with pytest.raises(EdgeADError, match="tail cannot be fitted"):
        T.calibrate_threshold(np.ones(200), 1e-3)


# ---------------------------------------------------------------- the EVT guard (settings: benchmarks/calibration.py --evt-guard)


@pytest.mark.parametrize("law", [stats.expon(), stats.lomax(3), stats.gamma(2)], ids=["expon", "lomax3", "gamma2"])
def test_the_guard_keeps_evt_on_smooth_tails(law):
    """Light and heavy smooth tails, 1000 images, 100x beyond 1/n: every one of 10 draws keeps its EVT fit."""
    kept = [T.calibrate_threshold(law.rvs(size=1000, random_state=np.random.default_rng(s)), 1e-5, refits=0)
            for s in range(10)]
    assert [r.method for r in kept] == ["evt"] * 10
    assert all(r.evt["shape"] >= T.EVT_MIN_SHAPE and r.evt["anderson_darling"] <= T.EVT_MAX_AD for r in kept)


@pytest.mark.parametrize("law", [stats.uniform(), stats.beta(5, 1)], ids=["uniform", "beta5_1"])
def test_a_bounded_tail_falls_back_to_the_quantile_with_the_reason(law):
    s = law.rvs(size=50, random_state=np.random.default_rng(0))
    fit = T.evt_fit(s)
    assert fit["shape"] < -0.5
    r = T.calibrate_threshold(s, 0.01, refits=20)
    assert r.method == "quantile" and r.threshold == s.max() and r.rejects == 0 and r.evt is None
    assert r.expected_frr_interval == pytest.approx(T.clopper_pearson(0, 50))
    note, = r.notes
    assert f"the fitted tail shape is {fit['shape']:.3g}, below -0.5" in note
    assert "expected false-reject rate of about 1.96%" in note and "1000 good images (10 / target)" in note
    assert "fell back to the empirical quantile" in r.method_reason and "50 good images < 1000" in r.method_reason


def test_a_bounded_tail_is_refused_when_the_quantile_cannot_meet_the_target():
    s = np.random.default_rng(0).uniform(size=50)
    with pytest.raises(EdgeADError) as e:
        T.calibrate_threshold(s, 0.005, refits=20)
    assert "the EVT tail fit cannot be used: the fitted tail shape" in e.value.message
    assert "would reject about 1.96% of good parts" in e.value.message
    assert "at least 99 for about the target, 2000 (10 / target)" in e.value.hint
    assert T.fallback_needed(0.005) == 99 and T.fallback_needed(0.01) == 49 and T.fallback_needed(1e-3) == 499
    for n in (49, 99, 499):  # the first n whose quantile has an expected rate (k + 1) / (n + 1) within 2x
        a = {49: 0.01, 99: 0.005, 499: 1e-3}[n]
        assert (T.allowed_rejects(n, a) + 1) / (n + 1) <= 2 * a < (T.allowed_rejects(n - 1, a) + 1) / n


def test_a_tail_with_a_cluster_fails_the_goodness_of_fit():
    """3 % of the good parts form a cluster far above the rest: no smooth tail, the GPD does not fit."""
    rng = np.random.default_rng(1)
    s = np.r_[rng.normal(size=970), rng.normal(5, 0.3, 30)]
    fit = T.evt_fit(s)
    assert fit["shape"] > -0.5 and fit["anderson_darling"] > T.EVT_MAX_AD
    r = T.calibrate_threshold(s, 1e-3, refits=0)
    assert r.method == "quantile" and "Anderson-Darling A^2 = " in r.notes[0]
    assert r.rejects == 1 and r.threshold == np.sort(s)[-2]


def test_more_rejects_than_the_tail_allows_is_a_poor_fit():
    s = np.random.default_rng(1).exponential(size=1000)
    fit = T.evt_fit(s)
    assert T.evt_problem(s, fit, T.evt_threshold(fit, 1e-3), 1e-3) is None
    too_low = float(np.sort(s)[-10])  # 9 of 1000 above: the binomial lower bound 0.41 % exceeds 0.1 %
    assert "9 of the 1000 good images score above the EVT threshold" in T.evt_problem(s, fit, too_low, 1e-3)


def test_a_heavy_tail_far_above_the_largest_score_is_warned_about():
    s = stats.lomax(1.0).rvs(size=100, random_state=np.random.default_rng(0))
    r = T.calibrate_threshold(s, 1e-4, refits=0)
    assert r.method == "evt" and r.evt["shape"] > 0 and r.threshold > s.max()
    note, = r.notes
    spread = s.max() - np.median(s)
    assert f"lies {(r.threshold - s.max()) / spread:.3g} spreads" in note and f"shape {r.evt['shape']:.3g}" in note
    assert "100x beyond what 100 images resolve" in note and "100000 = 10 / target" in note
    light = T.calibrate_threshold(np.random.default_rng(0).normal(size=1000), 1e-4, refits=0)
    assert light.method == "evt" and light.notes == ()


# ---------------------------------------------------------------- method choice and its errors


def test_auto_chooses_by_sample_size():
    assert T.choose_method(1000, 0.01)[0] == "quantile"  # 1000 >= 10 / 0.01
    method, why = T.choose_method(999, 0.01)
    assert method == "evt" and "999 good images < 1000" in why
    assert T.choose_method(100, 1e-4)[0] == "evt"        # 100x extrapolation beyond 1/100
    assert T.choose_method(5000, 1e-3, "evt")[1].startswith("requested")
    assert T.choose_method(20000, 1e-3, "quantile")[1].startswith("requested")


@pytest.mark.parametrize("n,target,method,need", [
    (49, 0.01, "auto", 50),        # EVT minimum
    (99, 1e-4, "auto", 100),       # 1 / (100 * 1e-4)
    (500, 1e-6, "auto", 10000),    # too far below 1/n even for EVT
    (300, 1e-3, "quantile", 10000),
    (40, 0.01, "evt", 50),
])
def test_too_few_images_says_how_many_are_needed(n, target, method, need):
    with pytest.raises(EdgeADError) as e:
        T.choose_method(n, target, method)
    assert f"need at least {need}" in e.value.message or f"needs at least {need}" in e.value.message
    assert f"got {n}" in e.value.message and e.value.hint


def test_bad_target_and_method():
    for bad in (0, -0.1, 0.6, float("nan")):
        with pytest.raises(EdgeADError, match="target false-reject rate"):
            T.choose_method(100, bad)
    with pytest.raises(EdgeADError, match="unknown threshold method"):
        T.choose_method(100, 0.1, "median")
    with pytest.raises(EdgeADError, match="NaN"):
        T.calibrate_threshold([1.0, float("nan")] * 100, 0.1)


# ---------------------------------------------------------------- area rule


def test_area_score_equals_the_pixel_count_rule():
    rng = np.random.default_rng(3)
    maps = rng.random((50, 16, 16)) ** 4
    for area in (1, 5, 40):
        a = T.area_scores(maps, area)
        for p in np.linspace(0, 1, 21):
            assert np.array_equal((maps > p).reshape(50, -1).sum(1) >= area, a > p)
    assert np.array_equal(T.area_scores(maps, 1), maps.reshape(50, -1).max(1))  # area 1 = the image rule
    with pytest.raises(EdgeADError, match="does not fit"):
        T.area_scores(maps, 257)


def test_min_area_conversion_to_map_pixels():
    # 96x96 source, 64x64 map: one map pixel is 2.25 source pixels.
    assert T.map_area(45, (96, 96), (64, 64)) == 20
    # 0.5 mm^2 at 0.05 mm/px = 200 source px; ROI 200x400 -> map 100x200: 1/4 of the pixels.
    assert T.map_area(0.5, (200, 400), (100, 200), mm_per_px=0.05) == 50
    assert T.map_area(1, (1000, 1000), (64, 64)) == 1  # never below one map pixel


# ---------------------------------------------------------------- trade-off table


def test_trade_off_matches_brute_force():
    rng = np.random.default_rng(5)
    g, d = np.round(rng.normal(0, 1, 60), 1), np.round(rng.normal(1.5, 1, 25), 1)
    table = T.trade_off(g, d)
    assert table[0]["false_reject_rate"] == 1.0 and table[0]["escape_rate"] == 0.0
    assert table[-1]["false_reject_rate"] == 0.0 and table[-1]["escape_rate"] == 1.0
    for row in table:
        t = row["threshold"]
        assert row["false_reject_rate"] == (g > t).mean() and row["escape_rate"] == (d <= t).mean()
        tp, fp, fn = (d > t).sum(), (g > t).sum(), (d <= t).sum()
        assert row["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    t, f1 = T.f1_optimal(table)
    best = max(2 * (d > c).sum() / (2 * (d > c).sum() + (g > c).sum() + (d <= c).sum()) for c in np.r_[g, d, -9])
    assert f1 == pytest.approx(best)
    assert t == min(r["threshold"] for r in table if r["f1"] == f1)


# ---------------------------------------------------------------- drift test


def test_drift_test_verdicts():
    same = T.drift_test(12, 120, 0.1, T.clopper_pearson(12, 120))
    assert not same["drift"] and same["verdict"] == "consistent"
    assert same["observed_interval"] == list(T.clopper_pearson(12, 120))
    up = T.drift_test(60, 120, 0.1, T.clopper_pearson(12, 120))
    assert up["drift"] and "more good parts rejected" in up["verdict"] and up["binomial_p"] < 1e-6
    down = T.drift_test(0, 400, 0.1, T.clopper_pearson(12, 120))
    assert down["drift"] and "fewer" in down["verdict"]
    assert 0 < same["detectable_rate"] < 0.5
    lo = T.clopper_pearson(round(same["detectable_rate"] * 120), 120)[0]
    assert lo > same["expected_frr_interval"][1]
    assert T.drift_test(0, 3, 0.001, (0.0005, 0.002))["detectable_rate"] == pytest.approx(1 / 3)
    assert T.drift_test(0, 2, 0.4, (0.3, 0.95))["detectable_rate"] is None


def test_score_stats():
    s = T.score_stats(np.arange(1001.0))
    assert s["n"] == 1001 and s["min"] == 0 and s["max"] == 1000 and s["p50"] == 500
    assert s["p99.9"] == pytest.approx(999)
    assert T.score_stats([]) is None


def test_edge_path_imports_no_torch():
    code = ("import sys, edgead.decide, edgead.decide.thresholds, edgead.decide.calibrate, edgead.decide.drift; "
            "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
