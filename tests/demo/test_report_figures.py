"""The demo report's engineer figures and numbers from synthetic report data (no training, no engine):
Wilson intervals, catch rate per defect type, the ROC operating point, and the page showing them."""

from __future__ import annotations

import base64
import json
import math
import re

import cv2
import numpy as np
import pytest

from edgead.demo.conveyor import Part
from edgead.demo.figures import belt_scores_png, colorbar_png, roc_png
from edgead.demo.rates import Z95, belt_rows, catch_rates, operating_point, rate, wilson_interval
from edgead.demo.report import _jsonable, figure_names, render, write_report
from edgead.decide.figure import figure_png
from edgead.training.metrics import roc_curve

THRESHOLD = 1.0


@pytest.mark.parametrize("k, n, lo, hi", [
    (0, 10, 0.0, 0.2775),        # the classic "0 of 10": still up to 28 %
    (5, 10, 0.2366, 0.7634),
    (1, 10, 0.0179, 0.4042),
    (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),   # Newcombe (1998), the 81 of 263 example
])
def test_wilson_interval_matches_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_bounds_solve_the_score_equation():
    """Each bound p solves |k/n - p| = z sqrt(p (1 - p) / n): the interval's definition, checked by root finding."""
    from scipy.optimize import brentq

    for k, n in ((3, 17), (12, 12), (40, 41), (0, 3)):
        p_hat = k / n
        lo, hi = wilson_interval(k, n)
        f = lambda p: (p_hat - p) ** 2 - Z95 ** 2 * p * (1 - p) / n  # noqa: E731
        if 0 < k:
            assert lo == pytest.approx(brentq(f, 1e-12, p_hat - 1e-12), abs=1e-9)
        if k < n:
            assert hi == pytest.approx(brentq(f, p_hat + 1e-12, 1 - 1e-12), abs=1e-9)


def test_wilson_refuses_impossible_counts():
    for k, n in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)
    assert rate(0, 0) == {"k": 0, "n": 0, "rate": None, "ci95": None}


def _belt() -> tuple[list[Part], list[dict]]:
    """10 parts: 4 good (one false reject), 3 scratches (2 caught), 2 dents (one by a safe action), 1 crack with no
    decision (a miss, never a pass)."""
    truth = ["good", "scratch", "good", "dent", "scratch", "good", "crack", "dent", "scratch", "good"]
    scores = [0.5, 1.8, 1.3, 2.2, 0.9, 0.2, None, None, 1.4, 0.7]
    decisions = ["pass", "reject", "reject", "reject", "pass", "pass", None, "safe_reject", "reject", "pass"]
    parts = [Part(i, int(t != "good"), t, f"p{i}.png", None) for i, t in enumerate(truth)]
    events = [{"seq": i, "score": s, "decision": d} for i, (s, d) in enumerate(zip(scores, decisions)) if d is not None]
    return parts, events


def test_catch_rate_per_defect_type_from_a_small_belt():
    rows = belt_rows(*_belt())
    assert rows[6] == {"seq": 6, "truth": "crack", "label": 1, "score": None, "decision": None}
    c = catch_rates(rows)
    assert list(c["by_type"]) == ["crack", "dent", "scratch"]
    assert (c["by_type"]["scratch"]["k"], c["by_type"]["scratch"]["n"]) == (2, 3)
    assert c["by_type"]["dent"]["rate"] == 1.0 and c["by_type"]["crack"]["rate"] == 0.0   # safe action catches
    assert c["by_type"]["scratch"]["ci95"] == pytest.approx(list(wilson_interval(2, 3)))
    assert (c["all_defective"]["k"], c["all_defective"]["n"]) == (4, 6)
    assert (c["good_rejected"]["k"], c["good_rejected"]["n"], c["good_rejected"]["rate"]) == (1, 4, 0.25)
    assert c["good_rejected"]["ci95"] == pytest.approx(list(wilson_interval(1, 4)))


def test_operating_point_is_the_thresholds_fpr_and_tpr_on_the_roc_curve():
    rows = belt_rows(*_belt())
    op = operating_point(rows, THRESHOLD)
    # scored parts only: good 0.5 1.3 0.2 0.7 (one above 1.0), defects 1.8 2.2 0.9 1.4 (three above)
    assert (op["fpr"], op["tpr"], op["n_good"], op["n_defective"]) == (0.25, 0.75, 4, 4)
    assert op["threshold"] == THRESHOLD
    labels = np.array([r["label"] for r in rows if r["score"] is not None])
    scores = np.array([r["score"] for r in rows if r["score"] is not None])
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert any(f == op["fpr"] and t == op["tpr"] for f, t in zip(fpr, tpr))      # a vertex of the curve
    assert op["auroc"] == pytest.approx(15 / 16)                                # 15 of 16 pairs ordered
    assert operating_point([r for r in rows if r["label"] == 1], THRESHOLD) is None  # one class: no ROC


def test_a_part_exactly_at_the_threshold_passes_as_on_the_line():
    rows = [{"seq": 0, "truth": "good", "label": 0, "score": 1.0, "decision": "pass"},
            {"seq": 1, "truth": "dent", "label": 1, "score": 1.0, "decision": "pass"}]
    op = operating_point(rows, 1.0)
    assert (op["fpr"], op["tpr"]) == (0.0, 0.0)


def _decode(png: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def test_figures_are_pngs_with_something_drawn():
    rows = belt_rows(*_belt())
    for png in (belt_scores_png(rows, THRESHOLD), roc_png(rows, operating_point(rows, THRESHOLD)),
                colorbar_png(0.4, 1.15, THRESHOLD)):
        img = _decode(png)
        assert img.shape[0] > 80 and img.shape[1] > 300 and img.std() > 10


def test_colour_bar_uses_the_overlays_own_colours():
    img = _decode(colorbar_png(0.0, 1.0, 0.8))
    jet = cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_JET)[0]   # BGR, as imdecode gives
    dist = lambda c: np.abs(img.reshape(-1, 3).astype(int) - c.astype(int)).sum(axis=1).min()  # noqa: E731
    assert dist(jet[0]) <= 6 and dist(jet[1]) <= 6             # the dark-blue and dark-red ends are both there


def _report_data(tmp_path, with_calibration_figure: bool = True) -> dict:
    parts, events = _belt()
    rows = belt_rows(parts, events)
    cal_fig = tmp_path / "demo.png"
    good = np.random.default_rng(0).normal(0.5, 0.15, 50)
    defects = np.array([r["score"] for r in rows if r["label"] == 1 and r["score"] is not None])
    if with_calibration_figure:
        record = {"area": None, "threshold": THRESHOLD, "target_frr": 0.01, "method": "quantile",
                  "expected_frr": 0.01, "expected_frr_interval": [0.002, 0.05],
                  "engine": {"name": "demo", "backend": "onnxruntime", "precision": "fp32"},
                  "good": {"n": 50}, "defects": {"n": 4, "escapes": 1, "escape_rate": 0.25, "f1_threshold": 0.8}}
        cal_fig.write_bytes(figure_png(record, good, defects))
    image = np.zeros((32, 32, 3), np.uint8)
    card = {"frame": 1, "truth": "scratch", "decision": "reject", "score": 1.8, "image": image}
    lat = {"p50": 5.0, "p90": 6.0, "p99": 7.0, "n": 9}
    return {
        "title": "edgead demo: test", "created": "2024-01-01T00:00:00+00:00", "machine": "x86_64", "product": "test",
        "quick": True, "images": {"train": 10, "calibration": 50, "test_good": 4, "test_defective": 6},
        "steps_s": {"training": 1.0}, "total_s": 2.0,
        "evaluation": {"image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": 0.7, "f1_max": 0.75, "per_type": {}},
        "engine": {"backend": "onnxruntime/fp32", "built": "onnxruntime", "precision": "fp32", "batch1_ms": 3.0},
        "calibration": {"threshold": THRESHOLD, "method": "quantile", "target_frr": 0.01, "n_good": 50,
                        "figure": str(cal_fig),
                        "defects": {"n": 4, "escapes": 1, "escape_rate": 0.25, "f1_threshold": 0.8}},
        "conveyor": {"parts": 10, "good": 4, "defective": 6, "decided": 9, "missing_decisions": [6],
                     "false_rejects": 1, "escapes": 2, "false_reject_rate": 0.25, "escape_rate": 2 / 6,
                     "safe_actions": 1, "escapes_by_type": {"crack": 1, "dent": 0, "scratch": 1}, "fps": 5.0,
                     "parts_per_s": 5.0, "kind": "video", "codec": "FFV1", "latency_ms": {"total": lat},
                     "run_summary": {"parts": 9, "passes": 4, "rejects": 4, "safe_actions": 1, "late_decisions": 0,
                                     "frames_lost": 0, "elapsed_s": 2.0}},
        "paths": {"work": str(tmp_path)},
        "rejected": [card], "escaped": [], "hardest_good": [dict(card, truth="good")],
        "roc_figure": str(tmp_path / "missing-roc.png"),
        "belt": rows, "catch_rates": catch_rates(rows), "operating_point": operating_point(rows, THRESHOLD),
        "heat_scale": {"lo": 0.5, "hi": 1.125, "threshold": THRESHOLD},
    }


def _imgs(page: str) -> list[tuple[str, str]]:
    return re.findall(r'<img class="[^"]*" alt="([^"]*)" src="([^"]+)"', page) + \
        re.findall(r'<img alt="([^"]*)" src="([^"]+)"', page)


def test_page_shows_every_new_figure_and_the_catch_table(tmp_path):
    d = _report_data(tmp_path)
    page = render(d)
    names = figure_names(d)
    assert names == ["calibration histogram", "belt scores", "ROC with operating point", "colour bar: rejected",
                     "colour bar: hardest_good"]                         # no bar under the empty escapes gallery
    alts = [alt for alt, _ in _imgs(page)]
    for alt in ("calibration histogram", "scores along the belt", "ROC curve with the operating point"):
        assert alts.count(alt) == 1, alt
    assert alts.count("heatmap colour scale") == 2
    assert len(_imgs(page)) == len(names) + 2                            # + the two cards
    for _, src in _imgs(page):
        assert src.startswith("data:image/png;base64,")
        assert _decode(base64.b64decode(src.split(",", 1)[1])).shape[0] > 10
    assert "threshold comes from the 50 held-back good parts only" in page
    assert "not used to set the threshold" in page
    assert "Catch rate per defect type at threshold 1.0000" in page
    lo, hi = wilson_interval(2, 3)
    assert f"<td>scratch</td><td>3</td><td>2</td><td>1</td><td>66.7 %</td><td>{100 * lo:.1f} % to {100 * hi:.1f} %</td>" \
        in page
    assert "<td>good</td><td>4</td><td>1</td><td>25.0 %</td>" in page
    assert "25.0 % of good parts rejected, 75.0 % of defects caught" in page   # the operating point, in words


def test_report_json_carries_the_new_numbers(tmp_path):
    d = _report_data(tmp_path)
    index = write_report(tmp_path / "report", d)
    r = json.loads((tmp_path / "report" / "report.json").read_text())
    assert r["figures"] == figure_names(d)
    assert r["catch_rates"]["by_type"]["scratch"]["ci95"] == pytest.approx(list(wilson_interval(2, 3)))
    assert r["operating_point"]["fpr"] == 0.25 and r["operating_point"]["tpr"] == 0.75
    assert r["calibration"]["defects"]["escapes"] == 1 and len(r["belt"]) == 10
    assert r["heat_scale"]["threshold"] == THRESHOLD
    assert "image" not in r["rejected"][0]
    page = index.read_text(encoding="utf-8")
    assert len(_imgs(page)) == len(r["figures"]) + len(r["rejected"]) + len(r["escaped"]) + len(r["hardest_good"])


def test_page_without_the_new_data_still_renders(tmp_path):
    """Report data from before these figures (or a belt of one class): the sections are left out, not broken."""
    d = _report_data(tmp_path, with_calibration_figure=False)
    for key in ("belt", "catch_rates", "operating_point", "heat_scale"):
        d.pop(key)
    d["calibration"].pop("defects")
    page = render(d)
    assert figure_names(d) == [] and _imgs(page) == [(a, s) for a, s in _imgs(page) if a.startswith("part #")]
    assert "Catch rate" not in page and "ROC of the belt" not in page
    assert math.isfinite(_jsonable(d)["total_s"])
