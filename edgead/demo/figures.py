"""The demo report's own figures, as PNG bytes: scores along the belt, the belt's ROC curve with the
threshold's operating point, and the heatmaps' colour bar in score units.

They are drawn from the report data (the run loop's scores per part), not from files, so the page
and report.json always show the same numbers. matplotlib is used through its object API (Figure +
Agg canvas) and imported inside the functions: no pyplot state, no display needed.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import cv2
import numpy as np

from edgead.demo.rates import REJECTED, scored

GOOD_COLOR = "#2a9d8f"
DEFECT_COLORS = ("#e76f51", "#7b2cbf", "#e9c46a", "#264653", "#d62828", "#f4a261", "#3a86ff", "#8d6e63")
THRESHOLD_COLOR = "#c1121f"


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def truth_colors(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """One colour per truth: good in the report's good colour, each defect type its own."""
    types = sorted({r["truth"] for r in rows if r["label"] == 1})
    colors = {"good": GOOD_COLOR}
    colors.update({t: DEFECT_COLORS[i % len(DEFECT_COLORS)] for i, t in enumerate(types)})
    return colors


def belt_scores_png(rows: Sequence[dict[str, Any]], threshold: float) -> bytes:
    """Score against belt position: colour = truth, filled cross = rejected, circle = passed; the threshold
    line and the reject side shaded. Parts without a score sit on the bottom edge as ticks of their colour."""
    from matplotlib.lines import Line2D

    colors = truth_colors(rows)
    fig = _figure((9.0, 3.9))
    ax = fig.add_subplot()
    have = [r for r in rows if r["score"] is not None]
    for truth, color in colors.items():
        for rejected, marker, size in ((False, "o", 28), (True, "X", 60)):
            pts = [r for r in have if r["truth"] == truth and (r["decision"] in REJECTED) == rejected]
            if pts:
                ax.scatter([r["seq"] for r in pts], [r["score"] for r in pts], c=color, marker=marker, s=size,
                           edgecolors="black" if rejected else color, linewidths=0.5, alpha=0.9, zorder=3)
    ax.axhline(threshold, color=THRESHOLD_COLOR, ls="--", lw=1.5, zorder=2)
    ax.axhspan(threshold, max([threshold] + [r["score"] for r in have]) * 1.05 + 1e-9, color=THRESHOLD_COLOR,
               alpha=0.06, zorder=1)
    missing = [r for r in rows if r["score"] is None]
    if missing:     # on the bottom edge, in axes units whatever the scores' range
        ax.scatter([r["seq"] for r in missing], [0.04] * len(missing), c=[colors[r["truth"]] for r in missing],
                   marker="|", s=160, linewidths=2.5, transform=ax.get_xaxis_transform(), zorder=4)
    handles = [Line2D([], [], ls="", marker="s", color=c, label=t) for t, c in colors.items()
               if any(r["truth"] == t for r in rows)]
    handles += [Line2D([], [], ls="", marker="o", color="0.5", label="passed"),
                Line2D([], [], ls="", marker="X", color="0.5", markeredgecolor="black", label="rejected"),
                Line2D([], [], ls="--", color=THRESHOLD_COLOR, label=f"threshold {threshold:.4g}")]
    if missing:
        handles.append(Line2D([], [], ls="", marker="|", color="0.3", markeredgewidth=2.5,
                              label="no score (safe action\nor no decision)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    ax.set(xlabel="part on the belt (trigger order)", ylabel="anomaly score",
           title="Every part's score in belt order (rejected: score above the threshold)")
    ax.grid(alpha=0.3)
    return _png(fig)


def roc_png(rows: Sequence[dict[str, Any]], point: dict[str, Any]) -> bytes:
    """The ROC curve of the belt's scores with the calibrated threshold's (FPR, TPR) marked."""
    from edgead.training.metrics import roc_curve

    labels, scores = scored(rows)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fig = _figure((5.2, 4.6))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="chance")
    ax.plot(fpr, tpr, lw=2, color=DEFECT_COLORS[0], label=f"AUROC {point['auroc']:.3f}")
    ax.plot([point["fpr"]], [point["tpr"]], marker="*", ms=16, color=THRESHOLD_COLOR, markeredgecolor="black",
            ls="", zorder=5, clip_on=False, label=f"threshold {point['threshold']:.4g}")
    ax.annotate(f"FPR {100 * point['fpr']:.1f} %, TPR {100 * point['tpr']:.1f} %", (point["fpr"], point["tpr"]),
                xytext=(25, -45 if point["tpr"] > 0.3 else 30), textcoords="offset points", fontsize=9,
                arrowprops={"arrowstyle": "->", "color": "0.3"})
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate (good parts rejected)",
           ylabel="true positive rate (defects caught)",
           title=f"Belt ROC: {point['n_good']} good, {point['n_defective']} defective")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    return _png(fig)


def colorbar_png(lo: float, hi: float, threshold: float) -> bytes:
    """The overlays' JET scale (OpenCV's own colours) from lo to hi in score units, the threshold marked."""
    ramp = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[None, :], cv2.COLORMAP_JET)
    rgb = cv2.cvtColor(ramp, cv2.COLOR_BGR2RGB)
    fig = _figure((7.5, 1.25))
    ax = fig.add_subplot()
    ax.imshow(rgb, extent=(lo, hi, 0.0, 1.0), aspect="auto", interpolation="nearest")
    ax.axvline(threshold, color="black", lw=2.5)
    ax.axvline(threshold, color="white", lw=1, ls="--")
    ax.text(threshold, 1.08, f"threshold {threshold:.4g}", ha="center", va="bottom", fontsize=9,
            transform=ax.get_xaxis_transform())
    ax.set_yticks([])
    ax.set_xlim(lo, hi)
    ax.set_xlabel("anomaly-map value, in score units (below the left end: blue, above the right end: red)",
                  fontsize=9)
    ax.tick_params(labelsize=8)
    return _png(fig)
