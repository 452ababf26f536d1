"""The belt's numbers an engineer judges a threshold by: catch rate per defect type, false-reject
rate, each with a 95 % interval, and the operating point on the ROC curve.

A belt of a few dozen parts says little on its own: 11 of 12 caught is anything from 65 % to 99 %.
The Wilson score interval says how much, and stays inside [0, 1] with 0 or n successes, where the
textbook normal interval collapses to a point. Plain numpy and math, no SciPy.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from edgead.demo.conveyor import Part

Z95 = 1.959963984540054        # the two-sided 95 % quantile of the standard normal
REJECTED = ("reject", "safe_reject")


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (95 % with the default z)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    p, z2 = k / n, z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)


def rate(k: int, n: int) -> dict[str, Any]:
    """k of n as a rate with its 95 % Wilson interval; rate and interval are None when n is 0."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci95": None}
    lo, hi = wilson_interval(k, n)
    return {"k": int(k), "n": int(n), "rate": k / n, "ci95": [lo, hi]}


def belt_rows(parts: Sequence[Part], events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per part in belt order: its truth and what the run loop decided (None: no decision)."""
    by_seq = {int(e["seq"]): e for e in events if "seq" in e}
    rows = []
    for p in parts:
        e = by_seq.get(p.frame, {})
        score = e.get("score")
        rows.append({"seq": p.frame, "truth": p.defect_type, "label": p.label,
                     "score": None if score is None else float(score), "decision": e.get("decision")})
    return rows


def catch_rates(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Share of defective parts rejected, per defect type and in all, and share of good parts rejected.

    Counted from the run loop's decisions, as the belt tiles are: a safe action rejects (it counts as
    caught, or as a false reject); a part with no decision was not rejected.
    """
    def rejected(r: dict[str, Any]) -> bool:
        return r["decision"] in REJECTED

    bad = [r for r in rows if r["label"] == 1]
    good = [r for r in rows if r["label"] == 0]
    by_type = {t: rate(sum(rejected(r) for r in bad if r["truth"] == t), sum(r["truth"] == t for r in bad))
               for t in sorted({r["truth"] for r in bad})}
    return {"by_type": by_type, "all_defective": rate(sum(rejected(r) for r in bad), len(bad)),
            "good_rejected": rate(sum(rejected(r) for r in good), len(good))}


def scored(rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of the parts that have a score (a safe action without inference has none)."""
    kept = [r for r in rows if r["score"] is not None and math.isfinite(r["score"])]
    return np.array([r["label"] for r in kept], dtype=np.int64), np.array([r["score"] for r in kept], np.float64)


def operating_point(rows: Sequence[dict[str, Any]], threshold: float) -> dict[str, Any] | None:
    """Where the threshold sits on the belt's ROC curve: the line's rule (reject when score > threshold)
    applied to the scored parts. None when the belt lacks good or defective scored parts."""
    from edgead.training.metrics import auroc

    labels, scores = scored(rows)
    good, bad = scores[labels == 0], scores[labels == 1]
    if good.size == 0 or bad.size == 0:
        return None
    return {"threshold": float(threshold), "fpr": float((good > threshold).mean()),
            "tpr": float((bad > threshold).mean()), "n_good": int(good.size), "n_defective": int(bad.size),
            "auroc": float(auroc(labels, scores))}
