"""Reject thresholds from good-part scores, their uncertainty, and the drift test.

Convention everywhere: a part is rejected when ``score > threshold``; the false-reject rate
(FRR) is the share of good parts rejected, the escape rate the share of defective parts passed.

Two ways to turn good scores into a threshold for a target FRR `a`:
- `quantile`: the empirical (1 - a) quantile, ``np.quantile(s, 1 - a, method="inverted_cdf")``,
  so at most floor(n * a) calibration images score above it. Needs n >= 10 / a, i.e. at least
  10 good images beyond the threshold: with fewer, the quantile is a guess. Interval:
  Clopper-Pearson on the calibration rejects.
- `evt`: peaks over threshold. A generalised Pareto law (floc=0) is fitted to the excesses over
  a high empirical quantile (the top 10 % of scores, at least 20 and at most 1000 of them) and
  the tail is extrapolated to `a`. Needs n >= 50 and a >= 1 / (100 n): no more than 100x
  beyond what the sample can resolve. Interval: percentiles of bootstrap refits.

The EVT guard (`evt_problem`): a fit is not used when its shape is below -0.5 (the tail looks
bounded at about the sample maximum: the maximum-likelihood fit is not regular there and cannot
extrapolate past the sample), when the GPD does not fit the excesses (Anderson-Darling A^2 > 2.5),
when more calibration images lie above the threshold than the fitted tail allows, or when the
threshold is implausible against the good-score statistics (`implausible`). Then the empirical
quantile is used if its expected false-reject rate, (k + 1) / (n + 1) for the order statistic with
k = floor(n * a) images above it, is at most 2x the target; else calibration is refused with the
number of images needed. Settings chosen on synthetic draws: `benchmarks/calibration.py --evt-guard`.

Edge path: numpy and scipy only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgead.decide.text import pct
from edgead.errors import EdgeADError

METHODS = ("auto", "quantile", "evt")
CONFIDENCE = 0.95
MAX_TARGET = 0.5
QUANTILE_MIN_REJECTS = 10      # quantile: n * target >= 10 calibration images above the threshold
EVT_MIN_IMAGES = 50
EVT_MAX_EXTRAPOLATION = 100    # evt: target >= 1 / (100 n)
EVT_TAIL_FRACTION = 0.10
EVT_MIN_TAIL, EVT_MAX_TAIL = 20, 1000
_EPS = 1e-9                    # float slack for n * target (e.g. 1000 * 0.001)
# The EVT guard (`benchmarks/calibration.py --evt-guard`). At 10x extrapolation, fits with a shape below
# -0.5 (normal, gamma, exponential, bounded and clustered scores, 50..1000 images) put the threshold's true
# false-reject rate at a median 7-50x the target, against 1.3-4.5x for the fits kept. On true GPD draws
# (shape -0.5..1, 20..1000 tail points) an in-range fit has A^2 above 2.5 in under 0.5 % of draws (99th
# percentile 1.0-1.7); a cluster among the top scores (3 % of parts 5 sd up, n = 1000) exceeds it in most.
EVT_MIN_SHAPE = -0.5
EVT_MAX_AD = 2.5
FALLBACK_MAX_EXCESS = 2.0      # quantile fallback: expected FRR (k + 1) / (n + 1) at most 2x the target
# Plausibility against the good-score statistics; a spread is (largest - median) good score. Honest EVT
# fits land below 2 spreads above the largest score for light tails, 10-300 for shapes near 1/3 and up to
# about 10^4 for shape 1 at 100x extrapolation: beyond 1000 the threshold passes practically every part.
HEAVY_TAIL_SPREADS = 1.0       # warn: an EVT threshold this far above the largest good score, heavy tail
MAX_SPREADS = 1000.0           # refuse: a threshold this far above the largest good score


@dataclass(frozen=True)
class ThresholdResult:
    """A calibrated threshold and what it promises, as stored in the calibration record."""

    threshold: float
    method: str
    method_reason: str
    target_frr: float
    expected_frr: float
    expected_frr_interval: tuple[float, float]
    interval_method: str
    rejects: int               # calibration images scoring above the threshold
    n: int
    evt: dict[str, Any] | None  # tail_threshold, tail_points, shape, scale, anderson_darling, bootstrap_refits
    notes: tuple[str, ...] = ()  # warnings for the record (an EVT fit not used, a heavy tail)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["expected_frr_interval"] = [float(v) for v in self.expected_frr_interval]
        d.pop("n")
        d.pop("notes")
        return d


# ---------------------------------------------------------------- requirements and method choice


def check_target(target: float) -> float:
    if not isinstance(target, (int, float)) or not math.isfinite(target) or not 0.0 < target <= MAX_TARGET:
        raise EdgeADError(f"target false-reject rate must be a number in (0, {MAX_TARGET}], got {target!r}",
                          "e.g. --target-frr 0.001 for one good part in a thousand rejected")
    return float(target)


def quantile_needed(target: float) -> int:
    """Good images the quantile method needs: enough that >= 10 of them lie above the threshold."""
    return math.ceil(QUANTILE_MIN_REJECTS / target - _EPS)


def evt_needed(target: float) -> int:
    """Good images the EVT method needs: 50, and target no more than 100x below 1/n."""
    return max(EVT_MIN_IMAGES, math.ceil(1.0 / (EVT_MAX_EXTRAPOLATION * target) - _EPS))


def choose_method(n: int, target: float, method: str = "auto") -> tuple[str, str]:
    """(method, why) for n good images and a target FRR; too few images is an error saying how many."""
    target = check_target(target)
    if method not in METHODS:
        raise EdgeADError(f"unknown threshold method {method!r}", f"use one of: {', '.join(METHODS)}")
    nq, ne = quantile_needed(target), evt_needed(target)
    if method in ("auto", "quantile") and n >= nq:
        why = (f"{n} good images >= {nq} (10 / target): at least {QUANTILE_MIN_REJECTS} lie above the "
               "threshold, so the empirical quantile resolves the target")
        return "quantile", why if method == "auto" else f"requested; {why}"
    if method == "quantile":
        raise EdgeADError(f"the quantile method needs at least {nq} good images for a target false-reject "
                          f"rate of {target:g} (10 / target), got {n}",
                          f"add good images, raise --target-frr, or use --method evt (needs {ne})")
    if n >= ne:
        why = (f"{n} good images < {nq} (10 / target) but >= {ne}: the target lies beyond the sample's "
               "resolution, so a generalised Pareto tail fitted to the top scores extrapolates to it")
        if method == "evt":
            why = f"requested; {n} good images >= {ne}, the EVT minimum for this target"
        return "evt", why
    need = ne if method == "evt" else min(nq, ne)
    raise EdgeADError(
        f"too few good images for a target false-reject rate of {target:g}: got {n}, need at least {need} "
        f"(EVT needs {EVT_MIN_IMAGES} and no more than {EVT_MAX_EXTRAPOLATION}x extrapolation beyond 1/n: "
        f"{ne}; the plain quantile needs 10 / target = {nq})",
        f"add good images (at least {need}), or raise --target-frr")


# ---------------------------------------------------------------- the two methods


def _scores(scores: Any) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise EdgeADError("no good-part scores to calibrate on", "pass a folder of good images")
    if not np.isfinite(s).all():
        raise EdgeADError("good-part scores contain NaN or inf", "check the engine: rebuild it and recalibrate")
    return s


def allowed_rejects(n: int, target: float) -> int:
    return int(math.floor(n * target + _EPS))


def quantile_threshold(scores: Any, target: float) -> float:
    """The (1 - target) empirical quantile, inverted-CDF convention: floor(n * target) images lie above."""
    s = np.sort(_scores(scores))
    return float(s[s.size - allowed_rejects(s.size, target) - 1])


def anderson_darling(excess: np.ndarray, shape: float, scale: float) -> float:
    """A^2 of the excesses against the fitted GPD: weighs the top of the tail, where the threshold lies."""
    from scipy.stats import genpareto

    x = np.sort(np.asarray(excess, dtype=np.float64))
    f = np.clip(genpareto.cdf(x, shape, 0, scale), 1e-12, 1 - 1e-12)
    i = np.arange(1, x.size + 1)
    return float(-x.size - np.mean((2 * i - 1) * (np.log(f) + np.log1p(-f[::-1]))))


def evt_fit(scores: Any) -> dict[str, Any]:
    """Generalised Pareto fit (loc 0) to the excesses over the top-10 % score (20..1000 tail points)."""
    from scipy.stats import genpareto

    s = np.sort(_scores(scores))
    n_tail = int(min(max(math.ceil(EVT_TAIL_FRACTION * s.size), EVT_MIN_TAIL), EVT_MAX_TAIL, s.size // 2))
    u = float(s[s.size - n_tail - 1])
    excess = s[s > u] - u
    if excess.size < 10 or np.unique(excess).size < 5:
        raise EdgeADError(f"only {excess.size} good scores ({np.unique(excess).size} distinct) lie above the "
                          "EVT tail threshold: the tail cannot be fitted",
                          "the engine gives (nearly) constant scores; check the engine and the images")
    shape, _, scale = genpareto.fit(excess, floc=0)
    return {"tail_threshold": u, "tail_points": int(excess.size), "tail_rate": excess.size / s.size,
            "shape": float(shape), "scale": float(scale),
            "anderson_darling": anderson_darling(excess, float(shape), float(scale))}


def evt_threshold(fit: dict[str, Any], target: float) -> float:
    from scipy.stats import genpareto

    if target >= fit["tail_rate"]:
        raise EdgeADError(f"target {target:g} is not in the fitted tail (top {fit['tail_rate']:.1%} of scores)",
                          "use --method quantile for a target the sample resolves")
    return float(fit["tail_threshold"] + genpareto.isf(target / fit["tail_rate"], fit["shape"], 0, fit["scale"]))


def evt_rate(fit: dict[str, Any], threshold: float) -> float:
    """Model FRR at `threshold`: P(score > threshold) of the fitted tail."""
    from scipy.stats import genpareto

    excess = threshold - fit["tail_threshold"]
    return float(fit["tail_rate"] * genpareto.sf(excess, fit["shape"], 0, fit["scale"]))


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact binomial interval for k events in n trials (as scipy's binomtest(...).proportion_ci())."""
    from scipy.stats import beta

    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k} n={n}")
    a = 1.0 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def _bootstrap_interval(s: np.ndarray, threshold: float, refits: int, seed: int) -> tuple[float, float]:
    """Percentile interval of the model FRR at `threshold` over refits on resampled scores."""
    rng = np.random.default_rng(seed)
    rates = []
    for _ in range(refits):
        b = rng.choice(s, size=s.size, replace=True)
        try:
            rate = evt_rate(evt_fit(b), threshold)
        except EdgeADError:
            continue
        if math.isfinite(rate):
            rates.append(rate)
    if not rates or len(rates) < refits // 2:
        return float("nan"), float("nan")
    a = 1.0 - CONFIDENCE
    lo, hi = np.quantile(rates, [a / 2, 1 - a / 2])
    return float(lo), float(hi)


def calibrate_threshold(scores: Any, target: float, method: str = "auto", refits: int = 200,
                        seed: int = 0) -> ThresholdResult:
    """Threshold for a target FRR from good-part scores only, with its expected FRR and interval.

    An EVT fit the guard does not accept (`evt_problem`) falls back to the quantile with a note, or is
    refused when the quantile cannot meet the target either (`quantile_fallback`).
    """
    s = _scores(scores)
    chosen, why = choose_method(s.size, target, method)
    if chosen == "quantile":
        return _quantile_result(s, target, why)
    fit = evt_fit(s)
    t = evt_threshold(fit, target)
    problem = evt_problem(s, fit, t, target)
    if problem is not None:
        return quantile_fallback(s, target, problem, requested=method == "evt")
    k = int((s > t).sum())
    interval = _bootstrap_interval(s, t, refits, seed)
    fit = {**fit, "bootstrap_refits": refits}
    notes = tuple(w for w in [heavy_tail_note(s, fit, t, target)] if w)
    return ThresholdResult(t, chosen, why, float(target), evt_rate(fit, t), interval,
                           f"{CONFIDENCE:.0%} percentile interval of {refits} bootstrap refits", k, s.size, fit, notes)


def _quantile_result(s: np.ndarray, target: float, why: str, notes: tuple[str, ...] = ()) -> ThresholdResult:
    t = quantile_threshold(s, target)
    k = int((s > t).sum())
    return ThresholdResult(t, "quantile", why, float(target), k / s.size, clopper_pearson(k, s.size),
                           f"Clopper-Pearson {CONFIDENCE:.0%} on the calibration rejects", k, s.size, None, notes)


# ---------------------------------------------------------------- the EVT guard


def evt_problem(s: np.ndarray, fit: dict[str, Any], t: float, target: float) -> str | None:
    """Why this EVT fit must not set the threshold (None: it may). See the module docstring."""
    if fit["shape"] < EVT_MIN_SHAPE:
        return (f"the fitted tail shape is {fit['shape']:.3g}, below {EVT_MIN_SHAPE}: the tail looks bounded at "
                "about the largest good score, where the fit is unreliable and cannot extrapolate past the sample")
    if fit["anderson_darling"] > EVT_MAX_AD:
        return (f"the generalised Pareto law does not fit the top {fit['tail_points']} scores (Anderson-Darling "
                f"A^2 = {fit['anderson_darling']:.3g} > {EVT_MAX_AD}): the highest good scores do not follow one "
                "smooth tail (a cluster or a gap among them?)")
    k = int((s > t).sum())
    lo = clopper_pearson(k, s.size)[0]
    if lo > target:
        return (f"{k} of the {s.size} good images score above the EVT threshold {t:.6g} ({pct(k / s.size)}), "
                f"more than a target of {pct(target)} allows (binomial 95% lower bound {pct(lo)})")
    found = implausible(t, score_stats(s) or {}, target, evt_rate(fit, t), (target, target))
    return found[0] if found else None


def fallback_needed(target: float) -> int:
    """Good images the quantile needs for an expected FRR (k + 1) / (n + 1) within 2x the target."""
    n = max(1, math.ceil(1.0 / (FALLBACK_MAX_EXCESS * target) - 1.0 - _EPS))
    while (allowed_rejects(n, target) + 1) / (n + 1) > FALLBACK_MAX_EXCESS * target + _EPS:
        n += 1
    return n


def quantile_fallback(s: np.ndarray, target: float, problem: str, requested: bool = False) -> ThresholdResult:
    """The quantile in place of an unusable EVT fit, with a note; refused when it cannot meet the target."""
    n, k = s.size, allowed_rejects(s.size, target)
    expected = (k + 1) / (n + 1)
    nq = quantile_needed(target)
    if expected > FALLBACK_MAX_EXCESS * target + _EPS:
        need = fallback_needed(target)
        raise EdgeADError(
            f"the EVT tail fit cannot be used: {problem}; and the quantile cannot meet a target false-reject rate of "
            f"{target:g} with {n} good images: its threshold, the largest good score, would reject about "
            f"{pct(expected)} of good parts (1 / (n + 1))",
            f"add good images: at least {need} for about the target, {nq} (10 / target) for a reliable threshold; "
            f"or raise --target-frr to at least {1.0 / (FALLBACK_MAX_EXCESS * (n + 1)):.3g}")
    note = (f"the EVT tail fit is not used: {problem}. The threshold is the empirical quantile instead: {k} of the "
            f"{n} good images may score above it, an expected false-reject rate of about {pct(expected)} "
            f"((k + 1) / (n + 1)) for a target of {pct(target)}; {nq} good images (10 / target) give a reliable "
            "threshold: add good images and recalibrate")
    why = (f"{'requested evt; ' if requested else ''}EVT tail fit unusable ({problem.split(':')[0]}), fell back to "
           f"the empirical quantile: {n} good images < {nq} (10 / target), so it only roughly resolves the target")
    return _quantile_result(s, target, why, (note,))


def heavy_tail_note(s: np.ndarray, fit: dict[str, Any], t: float, target: float) -> str | None:
    """A warning when a heavy-tailed EVT threshold lands far above the largest good score."""
    top, spread = float(s.max()), _spread(score_stats(s) or {})
    if fit["shape"] <= 0 or t - top <= HEAVY_TAIL_SPREADS * spread:
        return None
    return (f"the EVT threshold {t:.6g} lies {(t - top) / spread:.3g} spreads (largest minus median good score, "
            f"{spread:.3g}) above the largest good score {top:.6g}: the fitted tail is heavy (shape "
            f"{fit['shape']:.3g}) and the target {target:g} lies {1.0 / (s.size * target):.3g}x beyond what "
            f"{s.size} images resolve, so the threshold rests on the extrapolation and a defective part scoring "
            f"between {top:.6g} and {t:.6g} passes; add good images ({quantile_needed(target)} = 10 / target for "
            "the quantile method) or raise --target-frr")


# ---------------------------------------------------------------- plausibility against the score statistics

_PERCENTILES = (("min", 0.0), ("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def _spread(stats: dict[str, Any]) -> float:
    top = float(stats.get("max", 0.0))
    return max(top - float(stats.get("p50", top)), float(stats.get("std", 0.0)) * 1e-3, 1e-12 * max(1.0, abs(top)))


def implausible(t: float, stats: dict[str, Any], target: float, expected: float,
                interval: tuple[float, float] | list[float]) -> list[str]:
    """What makes threshold t implausible against the good-score statistics it was calibrated on (none: []).

    Below the median (for a target under 0.5); more good images provably above t than the promised rate's
    upper bound (a score above a percentile is above t); more than MAX_SPREADS spreads above the largest.
    """
    if not stats:
        return []
    n = int(stats["n"])
    found = []
    if target < MAX_TARGET and t < stats["p50"]:
        found.append(f"the threshold {t:.6g} is below the median good score {stats['p50']:.6g} (of {n} good "
                     f"images): it rejects more than half the good parts, for a target of {pct(target)}")
    hi = float(interval[1]) if math.isfinite(float(interval[1])) else 0.0
    upper = max(float(target), float(expected), hi)
    below = [(key, q) for key, q in _PERCENTILES if t < stats[key]]
    if below:
        key, q = below[0]
        k_lb = n - math.ceil((n - 1) * q / 100.0 - _EPS) if q > 0 else n
        if k_lb / n > upper:
            found.append(f"the threshold {t:.6g} is below the good scores' {key} {stats[key]:.6g}, so at least "
                         f"{k_lb} of the {n} good images score above it ({pct(k_lb / n)}), more than the "
                         f"{pct(upper)} the record promises")
    spread = _spread(stats)
    if t > stats["max"] + MAX_SPREADS * spread:
        found.append(f"the threshold {t:.6g} lies {(t - stats['max']) / spread:.3g} spreads (largest minus median "
                     f"good score, {spread:.3g}) above the largest good score {stats['max']:.6g}, more than "
                     f"{MAX_SPREADS:g}: it passes practically every part")
    return found


# ---------------------------------------------------------------- area rule


def area_scores(maps: np.ndarray, min_area: int) -> np.ndarray:
    """Per map, its `min_area`-th largest value: "at least A pixels > p" equals "area score > p"."""
    m = np.asarray(maps)
    flat = m.reshape(m.shape[0], -1) if m.ndim == 3 else m.reshape(1, -1)
    if not 1 <= min_area <= flat.shape[1]:
        raise EdgeADError(f"min defect area of {min_area} map pixels does not fit the {flat.shape[1]}-pixel map",
                          "use a smaller --min-defect-area")
    k = flat.shape[1] - min_area
    return np.partition(flat, k, axis=1)[:, k].astype(np.float64)


def map_area(area: float, source_hw: tuple[int, int], map_hw: tuple[int, int], mm_per_px: float | None = None) -> int:
    """A minimum area (source pixels, or mm^2 when mm_per_px is given) in anomaly-map pixels (>= 1)."""
    source_px = area / (mm_per_px * mm_per_px) if mm_per_px else area
    ratio = (map_hw[0] * map_hw[1]) / (source_hw[0] * source_hw[1])
    return max(1, int(round(source_px * ratio)))


# ---------------------------------------------------------------- defects: the trade-off


def trade_off(good: Any, defects: Any) -> list[dict[str, float]]:
    """Every useful threshold (ascending): FRR (good > t), escape rate (defect <= t) and F1.

    Candidates: just below the lowest score (reject all), then every distinct score.
    """
    g, d = np.sort(_scores(good)), np.sort(np.asarray(defects, dtype=np.float64).reshape(-1))
    values = np.unique(np.r_[g, d])
    thr = np.r_[np.nextafter(values[0], -np.inf), values]
    fp = g.size - np.asarray(np.searchsorted(g, thr, side="right"))
    fn = np.asarray(np.searchsorted(d, thr, side="right"))
    tp = d.size - fn
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    esc: np.ndarray = fn / d.size if d.size else np.full(thr.shape, np.nan)
    return [{"threshold": float(t), "false_reject_rate": float(a / g.size), "escape_rate": float(e),
             "f1": float(f)} for t, a, e, f in zip(thr, fp, esc, f1)]


def f1_optimal(table: list[dict[str, float]]) -> tuple[float, float]:
    """(threshold, F1) of the best row; among ties the lowest threshold (fewest escapes)."""
    best = max(r["f1"] for r in table)
    row = next(r for r in table if r["f1"] == best)
    return row["threshold"], row["f1"]


# ---------------------------------------------------------------- statistics and drift


def score_stats(scores: Any) -> dict[str, float] | None:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size == 0:
        return None
    p = np.percentile(s, [50, 90, 99, 99.9])
    return {"n": int(s.size), "min": float(s.min()), "mean": float(s.mean()), "std": float(s.std()),
            "p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2]), "p99.9": float(p[3]), "max": float(s.max())}


def drift_test(rejects: int, n: int, expected: float, interval: tuple[float, float]) -> dict[str, Any]:
    """Is k rejects of n fresh good parts consistent with a calibrated FRR and its interval?

    Drift when the observed Clopper-Pearson interval lies wholly above (or below) the calibrated
    interval. `detectable_rate` is the lowest observed rate this many images would flag (None: none).
    """
    from scipy.stats import binomtest

    lo, hi = clopper_pearson(rejects, n)
    c_lo, c_hi = float(interval[0]), float(interval[1])
    if not (math.isfinite(c_lo) and math.isfinite(c_hi)):  # no interval (failed bootstrap): the point value
        c_lo = c_hi = float(expected)
    p = float(binomtest(rejects, n, expected).pvalue) if 0.0 < expected < 1.0 else float("nan")
    verdict = "consistent"
    if lo > c_hi:
        verdict = "drift: more good parts rejected than calibrated"
    elif hi < c_lo:
        verdict = "drift: fewer good parts rejected than calibrated (scores fell)"
    detectable = None
    if clopper_pearson(n, n)[0] > c_hi:  # the lower bound grows with k: bisect for the first flagged k
        a, b = 0, n
        while a < b:
            mid = (a + b) // 2
            a, b = (mid + 1, b) if clopper_pearson(mid, n)[0] <= c_hi else (a, mid)
        detectable = a / n
    return {"rejects": int(rejects), "n": int(n), "observed_frr": rejects / n, "observed_interval": [lo, hi],
            "expected_frr": float(expected), "expected_frr_interval": [c_lo, c_hi], "binomial_p": p,
            "drift": verdict != "consistent", "verdict": verdict, "detectable_rate": detectable}
