"""The calibration figure: histograms of good and defect decision scores with the threshold marked.

Drawn with OpenCV, not matplotlib, so calibrating on an edge device needs nothing the run loop
does not already have. It shows an engineer, at a glance, where the threshold sits between the
two populations and what it promises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edgead.decide.text import pct
from edgead.errors import EdgeADError
from edgead.io import png_bytes

_GOOD_BGR = (143, 157, 42)
_DEFECT_BGR = (81, 111, 231)
_RED = (40, 40, 200)
_F1_BGR = (150, 60, 120)
_INK = (60, 60, 60)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 1000, 580, 80, 30, 110, 70  # canvas and margins, pixels
_BINS = 40


@dataclass(frozen=True)
class _Axes:
    """The plot area in pixels and what it maps: x = score over the bin edges, y = share of images."""

    x0: int
    x1: int
    y0: int
    y1: int
    edges: np.ndarray
    ymax: float

    def x(self, v: float) -> int:
        return int(round(self.x0 + (v - self.edges[0]) / (self.edges[-1] - self.edges[0]) * (self.x1 - self.x0)))

    def y(self, f: float) -> int:
        return int(round(self.y1 - f / self.ymax * (self.y1 - self.y0)))


def figure_png(record: dict[str, Any], good_scores: np.ndarray, defect_scores: np.ndarray | None) -> bytes:
    """The figure of a record and its decision scores, as PNG bytes."""
    try:
        return png_bytes(draw_figure(record, good_scores, defect_scores), channels="bgr")
    except OSError as e:
        raise EdgeADError("PNG encoding of the calibration figure failed", "this is a bug; please report it") from e


def draw_figure(record: dict[str, Any], good_scores: np.ndarray, defect_scores: np.ndarray | None) -> np.ndarray:
    """Histograms (share of images per bin) of good and defect decision scores, threshold and target marked."""
    area = record["area"]
    t = area["pixel_threshold"] if area else record["threshold"]
    good = np.asarray(good_scores, np.float64).reshape(-1)
    bad = np.asarray(defect_scores if defect_scores is not None else [], np.float64).reshape(-1)
    f1_t = record["defects"]["f1_threshold"] if record["defects"] else None

    edges = _bin_edges(np.r_[good, bad, [t] + ([f1_t] if f1_t is not None else [])], t)
    hg = np.histogram(good, edges)[0] / max(good.size, 1)
    hd = np.histogram(bad, edges)[0] / max(bad.size, 1)
    ymax = max(float(hg.max(initial=0)), float(hd.max(initial=0)), 1e-9) * 1.12
    ax = _Axes(_LEFT, _W - _RIGHT, _TOP, _H - _BOTTOM, edges, ymax)

    img: np.ndarray = np.full((_H, _W, 3), 255, np.uint8)
    img = _draw_bars(img, ax, t, hg, hd)
    _draw_scales(img, ax, area)
    _draw_threshold(img, ax, t, record["target_frr"], f1_t)
    _draw_header(img, record)
    _draw_legend(img, ax, good.size, bad.size)
    return img


def _bin_edges(values: np.ndarray, t: float) -> np.ndarray:
    """Edges of the bins over every score and mark, with room right of the threshold for the reject side."""
    lo, hi = float(values.min()), float(values.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    hi = max(hi, t + 0.12 * span)
    return np.linspace(lo - 0.04 * span, hi + 0.04 * span, _BINS + 1)


def _draw_bars(img: np.ndarray, ax: _Axes, t: float, hg: np.ndarray, hd: np.ndarray) -> np.ndarray:
    """The shaded reject side, the two translucent histograms and the frame (a new image)."""
    cv2.rectangle(img, (ax.x(t), ax.y0), (ax.x1, ax.y1), (232, 232, 250), -1)
    for hist, color in ((hg, _GOOD_BGR), (hd, _DEFECT_BGR)):
        layer = img.copy()
        for i, h in enumerate(hist):
            if h > 0:
                cv2.rectangle(layer, (ax.x(ax.edges[i]), ax.y(h)), (ax.x(ax.edges[i + 1]) - 1, ax.y1), color, -1)
        img = cv2.addWeighted(layer, 0.6, img, 0.4, 0)
    cv2.rectangle(img, (ax.x0, ax.y0), (ax.x1, ax.y1), _INK, 1)
    return img


def _draw_scales(img: np.ndarray, ax: _Axes, area: dict[str, Any] | None) -> None:
    """Ticks and titles of both axes; x names the score the rule decides on."""
    for v, label in _ticks(ax.edges[0], ax.edges[-1], 7):
        cv2.line(img, (ax.x(v), ax.y1), (ax.x(v), ax.y1 + 5), _INK, 1)
        _text(img, label, ax.x(v), ax.y1 + 22, 0.45, anchor="center")
    for f, label in _ticks(0.0, ax.ymax * 100, 5):
        cv2.line(img, (ax.x0 - 5, ax.y(f / 100)), (ax.x0, ax.y(f / 100)), _INK, 1)
        _text(img, f"{label}%", ax.x0 - 8, ax.y(f / 100) + 5, 0.45, anchor="right")
    _text(img, "share of images", ax.x0, ax.y0 - 8, 0.45)
    _text(img, f"area score (the {_ordinal(area['min_area_px'])} largest anomaly-map value)" if area
          else "image score", (ax.x0 + ax.x1) // 2, _H - 20, 0.55, anchor="center")


def _draw_threshold(img: np.ndarray, ax: _Axes, t: float, target: float, f1_t: float | None) -> None:
    """The threshold line with its target and the pass/reject sides; the F1-optimal threshold dashed."""
    xt = ax.x(t)
    cv2.line(img, (xt, ax.y0), (xt, ax.y1), _RED, 2)
    side, dx = ("right", -8) if xt > ax.x1 - 220 else ("left", 8)  # labels where there is room
    _text(img, f"threshold {t:.4g}", xt + dx, ax.y0 + 20, 0.5, _RED, 1, anchor=side)
    _text(img, f"(target false-reject rate {pct(target)})", xt + dx, ax.y0 + 40, 0.45, _RED, anchor=side)
    _text(img, "<- PASS", xt - 8, ax.y1 - 12, 0.5, _GOOD_BGR, 2, anchor="right")
    _text(img, "REJECT ->", xt + 8, ax.y1 - 12, 0.5, _RED, 2)
    if f1_t is not None:
        xf = ax.x(f1_t)
        for yy in range(ax.y0, ax.y1, 12):
            cv2.line(img, (xf, yy), (xf, min(yy + 6, ax.y1)), _F1_BGR, 2)
        fside, fdx = ("right", -6) if xf > ax.x1 - 200 else ("left", 6)
        _text(img, f"F1-optimal {f1_t:.4g}", xf + fdx, ax.y0 + 64, 0.45, _F1_BGR, anchor=fside)


def _draw_header(img: np.ndarray, record: dict[str, Any]) -> None:
    """Three lines: the engine, the target against the expected rate, the image counts and escapes."""
    r = record["area"] or record
    eng = record["engine"]
    lo, hi = r["expected_frr_interval"]
    _text(img, f"edgead calibration: {eng['name']} ({eng['backend']}/{eng['precision']})", _LEFT, 30, 0.7, thick=2)
    _text(img, f"target false-reject rate {pct(record['target_frr'])}  ->  expected {pct(r['expected_frr'])} "
          f"[{pct(lo)}, {pct(hi)}]  ({r['method']})", _LEFT, 58, 0.55)
    dfx = record["defects"]
    line3 = f"{record['good']['n']} good images"
    if dfx:
        line3 += f", {dfx['n']} defective: {dfx['escapes']} pass at the threshold ({pct(dfx['escape_rate'])})"
    _text(img, line3, _LEFT, 84, 0.55)


def _draw_legend(img: np.ndarray, ax: _Axes, n_good: int, n_bad: int) -> None:
    lx = ax.x1 - 400
    for name, color, n in (("good", _GOOD_BGR, n_good), ("defective", _DEFECT_BGR, n_bad)):
        if n:
            cv2.rectangle(img, (lx, ax.y0 - 20), (lx + 22, ax.y0 - 6), color, -1)
            _text(img, f"{name} (n={n})", lx + 30, ax.y0 - 7, 0.5)
            lx += 200


def _text(img: np.ndarray, s: str, x: int, y: int, scale: float = 0.5, color: tuple[int, int, int] = (30, 30, 30),
          thick: int = 1, anchor: str = "left") -> None:
    (w, _), _ = cv2.getTextSize(s, _FONT, scale, thick)
    x = x - w if anchor == "right" else x - w // 2 if anchor == "center" else x
    cv2.putText(img, s, (int(x), int(y)), _FONT, scale, color, thick, cv2.LINE_AA)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _ticks(lo: float, hi: float, n: int) -> list[tuple[float, str]]:
    """About n round tick values (1, 2 or 5 times a power of ten) in [lo, hi], with labels."""
    raw = (hi - lo) / n if hi > lo else 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= 0.75 * raw)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    first = math.ceil(lo / step - 1e-9) * step
    values = [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]
    return [(v, f"{v + 0.0:.{decimals}f}") for v in values]
