"""Report figures: ROC curve, score histograms, heat-map overlays and grids (PNG).

matplotlib is imported inside the plotting functions and used through its
object API (Figure + Agg canvas), so importing this module is cheap and never
touches pyplot's global state or the user's backend. Every file is written
atomically (temp file in the same folder, then os.replace): a report never links
a half-written image, even if the process dies mid-save.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from edgead.io import atomic_write, atomic_write_bytes, png_bytes
from edgead.runtime.overlay import as_display_rgb, heatmap_overlay
from edgead.training.metrics import auroc, roc_curve

__all__ = ["heatmap_grid", "plot_roc", "plot_score_histograms"]

_GOOD_COLOR = "#2a9d8f"
_DEFECT_COLOR = "#e76f51"
_MASK_RGB = (255, 255, 255)


# ---------------------------------------------------------------- writing


def _save_figure(fig, path: Path | str) -> Path:  # noqa: ANN001 - matplotlib Figure
    """Render a matplotlib Figure to PNG atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def _new_figure(size: tuple[float, float]):  # noqa: ANN202 - matplotlib Figure
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")


# ---------------------------------------------------------------- plots


def plot_roc(labels: np.ndarray, scores: np.ndarray, path: Path | str, title: str = "") -> Path:
    """ROC curve with its AUROC; a one-class set gets a note instead of a curve."""
    labels = np.asarray(labels)
    fig = _new_figure((4.8, 4.4))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="chance")
    area = auroc(labels, scores)
    if np.isnan(area):
        ax.text(0.5, 0.5, "needs good and defective images", ha="center", va="center")
    else:
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, lw=2, color=_DEFECT_COLOR, label=f"AUROC {area:.4f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate (good rejected)",
           ylabel="true positive rate (defects caught)", title=title or "ROC")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save_figure(fig, path)


def plot_score_histograms(
    good_scores: np.ndarray,
    defect_scores: np.ndarray,
    path: Path | str,
    threshold: float | None = None,
    title: str = "",
) -> Path:
    """Overlaid good/defect score histograms on shared bins, with the threshold line."""
    good = np.asarray(good_scores, dtype=np.float64).ravel()
    bad = np.asarray(defect_scores, dtype=np.float64).ravel()
    both = np.r_[good, bad]
    both = both[np.isfinite(both)]
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    if threshold is not None and np.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, int(np.clip(np.sqrt(both.size) * 2, 10, 60)) + 1)

    fig = _new_figure((6.0, 3.6))
    ax = fig.add_subplot()
    for vals, color, name in ((good, _GOOD_COLOR, "good"), (bad, _DEFECT_COLOR, "defective")):
        vals = vals[np.isfinite(vals)]
        if vals.size:
            ax.hist(vals, bins=bins, alpha=0.55, color=color, label=f"{name} (n={vals.size})")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1.5, label=f"threshold {threshold:.4g}")
    ax.set(xlabel="anomaly score", ylabel="images", title=title or "Score distribution")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save_figure(fig, path)


# ---------------------------------------------------------------- heat maps


def _fit(img: np.ndarray, tile: int) -> np.ndarray:
    """Resize to height `tile`, keeping the aspect ratio."""
    h, w = img.shape[:2]
    new_w = max(1, round(w * tile / h))
    interp = cv2.INTER_AREA if h > tile else cv2.INTER_LINEAR
    return cv2.resize(img, (new_w, tile), interpolation=interp)


def _draw_mask(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Outline the ground-truth mask (resized nearest) on a copy of rgb."""
    h, w = rgb.shape[:2]
    m = (np.asarray(mask).squeeze() > 0).astype(np.uint8)
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = rgb.copy()
    cv2.drawContours(out, contours, -1, _MASK_RGB, thickness=max(1, h // 128))
    return out


def _put_title(strip: np.ndarray, text: str) -> None:
    """Write text into a white strip, shrunk/truncated so it fits."""
    font, h, w = cv2.FONT_HERSHEY_SIMPLEX, strip.shape[0], strip.shape[1]
    scale, th = h / 40.0, 0
    while text:
        (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
        if tw <= w - 8:
            break
        if scale > h / 70.0:
            scale *= 0.9
        else:
            text = text[:-4] + "..." if len(text) > 4 else ""
    if text:
        cv2.putText(strip, text, (4, (h + th) // 2), font, scale, (0, 0, 0), 1, cv2.LINE_AA)


def _colorbar(width: int, vmin: float, vmax: float, height: int = 36) -> np.ndarray:
    """Footer strip: the JET scale with the vmin/vmax used for every overlay."""
    bar = np.full((height, width, 3), 255, np.uint8)
    ramp = np.linspace(0, 255, max(1, width - 200)).astype(np.uint8)[None, :]
    colors = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    bar[8 : height - 8, 100 : 100 + colors.shape[1]] = colors
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(bar, f"{vmin:.3g}", (4, height // 2 + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(bar, f"{vmax:.3g}", (width - 96, height // 2 + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def heatmap_grid(
    images: list[np.ndarray],
    maps: list[np.ndarray],
    titles: list[str],
    path: Path | str,
    vmin: float,
    vmax: float,
    cols: int = 4,
    masks: Sequence[np.ndarray | None] | None = None,
    tile: int = 224,
) -> Path:
    """PNG grid; each tile = image | overlay (GT contour on both when known), title above.

    tile is the pixel height of each image; widths follow each image's aspect ratio.
    A colour bar at the bottom shows the shared vmin/vmax.
    """
    n = len(images)
    if n == 0:
        raise ValueError("heatmap_grid needs at least one image")
    if len(maps) != n or len(titles) != n or (masks is not None and len(masks) != n):
        raise ValueError(f"{n} images but {len(maps)} maps, {len(titles)} titles"
                         + ("" if masks is None else f", {len(masks)} masks"))
    tile = max(16, int(tile))
    title_h, gap = max(20, tile // 8), 6
    cells = []
    for i in range(n):
        img = as_display_rgb(images[i])
        over = heatmap_overlay(img, maps[i], vmin, vmax)
        left, right = _fit(img, tile), _fit(over, tile)
        mask = None if masks is None else masks[i]
        if mask is not None:
            left, right = _draw_mask(left, mask), _draw_mask(right, mask)
        sep = np.full((tile, 4, 3), 255, np.uint8)
        body = np.concatenate([left, sep, right], axis=1)
        strip = np.full((title_h, body.shape[1], 3), 255, np.uint8)
        _put_title(strip, str(titles[i]))
        cells.append(np.concatenate([strip, body], axis=0))

    cols = max(1, min(int(cols), n))
    rows = -(-n // cols)
    cell_w, cell_h = max(c.shape[1] for c in cells), title_h + tile
    width = max(cols * cell_w + (cols + 1) * gap, 320)
    canvas = np.full((rows * cell_h + (rows + 1) * gap, width, 3), 255, np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, cols)
        y, x = gap + r * (cell_h + gap), gap + c * (cell_w + gap)
        canvas[y : y + cell.shape[0], x : x + cell.shape[1]] = cell
    canvas = np.concatenate([canvas, _colorbar(width, float(vmin), float(vmax))], axis=0)
    return atomic_write_bytes(path, png_bytes(canvas))
