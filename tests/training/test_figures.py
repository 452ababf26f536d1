"""Figures: valid PNGs of sane size whose pixels show the plot (the ROC curve where it runs, the bars in
the series colours, JET red where a map is high), atomic writes, overlay shape/dtype."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgead.training import figures as F


def _png(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} is not a readable image"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return img


def _no_temp_files(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def _rgb(path: Path) -> np.ndarray:
    """The PNG as RGB, checked not to be one flat colour (a blank canvas)."""
    img = _png(path)[:, :, ::-1]
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10, f"{path} is (nearly) one flat colour"
    return img


def _hex(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], np.int16)


def _like(img: np.ndarray, rgb: np.ndarray, tol: int) -> np.ndarray:
    """Pixels within tol (every channel) of an RGB colour."""
    return (np.abs(img.astype(np.int16) - rgb) <= tol).all(axis=2)


def _on_white(color: str, alpha: float) -> np.ndarray:
    """What matplotlib paints for `color` at `alpha` over the white axes."""
    return np.round(255 * (1 - alpha) + _hex(color) * alpha).astype(np.int16)


def _longest_runs(mask: np.ndarray) -> np.ndarray:
    """Per row: the longest run of consecutive True."""
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
    best = np.zeros(mask.shape[0], int)
    for r, row in enumerate(np.diff(padded, axis=1)):
        starts, ends = np.flatnonzero(row == 1), np.flatnonzero(row == -1)
        best[r] = (ends - starts).max() if starts.size else 0
    return best


def _axes_box(img: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixel of the axes frame: its black spines are the only long unbroken
    dark lines (the dashed threshold line, grid and text are not)."""
    dark = img.max(axis=2) < 100
    rows = np.flatnonzero(_longest_runs(dark) > 0.4 * img.shape[1])
    cols = np.flatnonzero(_longest_runs(dark.T) > 0.4 * img.shape[0])
    assert rows.size >= 2 and cols.size >= 2, "no axes frame drawn"
    left, top, right, bottom = int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())
    assert right - left > 0.5 * img.shape[1] and bottom - top > 0.5 * img.shape[0]
    return left, top, right, bottom


def test_import_does_not_load_matplotlib() -> None:
    import subprocess

    code = "import sys, edgead.training.figures; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plot_roc_writes_png_and_creates_dirs(tmp_path: Path) -> None:
    # ROC (0,0) -> (0,.5) -> (.5,.5) -> (.5,1) -> (1,1): two defects on top, two good, two defects, two good
    labels = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    out = F.plot_roc(labels, scores, tmp_path / "a" / "b" / "roc.png", title="bottle")
    assert out == tmp_path / "a" / "b" / "roc.png"
    img = _rgb(out)
    assert 200 < img.shape[0] < 2000 and 200 < img.shape[1] < 2000
    _no_temp_files(out.parent)

    left, top, right, bottom = _axes_box(img)

    def px(x: float, y: float) -> tuple[float, float]:  # data -> (col, row); plot_roc's limits -0.01 .. 1.01
        return left + (x + 0.01) / 1.02 * (right - left), bottom - (y + 0.01) / 1.02 * (bottom - top)

    # the curve (2 px line, antialiased core within 30 of the colour): where the ROC is, and nowhere else
    rows, cols = np.nonzero(_like(img, _hex(F._DEFECT_COLOR), 30))
    corners = [px(x, y) for x, y in ((0, 0), (0, 0.5), (0.5, 0.5), (0.5, 1), (1, 1))]
    dist = np.full(rows.shape, np.inf)
    for (c0, r0), (c1, r1) in zip(corners, corners[1:]):  # distance to each axis-parallel segment
        dc = np.maximum(np.maximum(min(c0, c1) - cols, cols - max(c0, c1)), 0)
        dr = np.maximum(np.maximum(min(r0, r1) - rows, rows - max(r0, r1)), 0)
        dist = np.minimum(dist, np.hypot(dc, dr))
    lx, ly = px(0.45, 0.3)
    legend = (cols > lx) & (rows > ly)  # the legend's sample line, lower right
    assert (dist[~legend] <= 4).all(), "curve-coloured pixels away from the ROC curve"
    for (c0, r0), (c1, r1) in zip(corners, corners[1:]):  # ... and the whole curve is drawn
        for t in np.linspace(0.1, 0.9, 9):
            c, r = c0 + t * (c1 - c0), r0 + t * (r1 - r0)
            assert (np.hypot(cols - c, rows - r) <= 3).any(), f"no curve near pixel ({c:.0f}, {r:.0f})"
    # the dashed grey chance diagonal (darker than the grid): at most of the points along it
    grey = (np.ptp(img.astype(np.int16), axis=2) <= 8) & (img.min(axis=2) > 90) & (img.max(axis=2) < 215)
    on_diagonal = [grey[int(r) - 2 : int(r) + 3, int(c) - 2 : int(c) + 3].any()
                   for c, r in (px(t, t) for t in np.linspace(0.05, 0.95, 19))]
    assert sum(on_diagonal) >= 12

    # one-class data still renders (with a note, no curve), and overwriting works
    F.plot_roc(np.zeros(5), np.random.default_rng(0).random(5), out)
    img = _rgb(out)
    left, top, right, bottom = _axes_box(img)
    assert not _like(img, _hex(F._DEFECT_COLOR), 30).any()
    cx, cy = (left + right) // 2, (top + bottom) // 2
    note = img[cy - 10 : cy + 10, cx - 120 : cx + 120].max(axis=2) < 100  # black text at the centre
    assert note.sum() > 100


def _threshold_cols(img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Columns inside the axes that hold a vertical dark line (the dashed threshold line)."""
    left, top, right, bottom = box
    dark = img[top + 3 : bottom - 3, left + 3 : right - 3].max(axis=2) < 100
    return left + 3 + np.flatnonzero(dark.mean(axis=0) > 0.3)


def test_plot_score_histograms(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    out = F.plot_score_histograms(rng.normal(0, 1, 80), rng.normal(3, 1, 20), tmp_path / "h.png",
                                  threshold=1.5, title="scores")
    img = _rgb(out)
    assert 150 < img.shape[0] < 2000 and 200 < img.shape[1] < 2000
    box = _axes_box(img)
    good = _like(img, _on_white(F._GOOD_COLOR, 0.55), 6)  # the bars: series colour at alpha 0.55
    bad = _like(img, _on_white(F._DEFECT_COLOR, 0.55), 6)
    # bars stand on the x axis: the row just above it, good ones left of the defective ones
    base = box[3] - 2
    good_x, bad_x = np.flatnonzero(good[base]), np.flatnonzero(bad[base])
    assert good_x.size > 50 and bad_x.size > 20
    thr = _threshold_cols(img, box)
    assert thr.size and good_x.mean() < thr.mean() < bad_x.mean()
    assert thr.max() - thr.min() < 4  # one line
    assert good.sum() > 2 * bad.sum()  # 80 good scores, 20 defective, same bins: 4x the bar area, less the overlap
    # degenerate inputs: no defects, constant scores, no threshold
    img = _rgb(F.plot_score_histograms(np.full(4, 0.2), [], tmp_path / "h2.png"))
    box = _axes_box(img)
    assert _like(img, _on_white(F._GOOD_COLOR, 0.55), 6)[box[3] - 2].sum() > 20
    assert not _like(img, _on_white(F._DEFECT_COLOR, 0.55), 6).any() and not _threshold_cols(img, box).size
    # nothing to plot but the threshold, which is then the middle of the 0 .. 1 default range
    img = _rgb(F.plot_score_histograms([], [], tmp_path / "h3.png", threshold=0.5))
    box = _axes_box(img)
    assert not _like(img, _on_white(F._GOOD_COLOR, 0.55), 6).any()
    thr = _threshold_cols(img, box)
    assert thr.size and abs(thr.mean() - (box[0] + box[2]) / 2) < 0.02 * (box[2] - box[0])
    _no_temp_files(tmp_path)


def test_heatmap_grid(tmp_path: Path) -> None:
    # flat grey images, a different grey each (so a tile in the wrong place shows), one of another
    # aspect ratio; every map is 0 on the left half and 1 on the right
    levels = [40, 70, 100, 130, 160, 190]
    images = [np.full((64, 64, 3), v, np.uint8) for v in levels[:5]]
    images.append(np.full((48, 96, 3), levels[5], np.uint8))  # other aspect ratio
    amap = np.zeros((16, 16))
    amap[:, 8:] = 1.0
    maps = [amap] * 6
    masks: list[np.ndarray | None] = [None] * 6
    masks[1] = np.zeros((64, 64), np.uint8)
    masks[1][10:30, 20:40] = 1
    titles = [f"score {s:.3f} | scratch" for s in np.random.default_rng(2).random(6)]
    titles[0] = "a very long title that certainly does not fit in one tile " * 3
    out = F.heatmap_grid(images, maps, titles, tmp_path / "grid" / "g.png", 0.0, 1.0,
                         cols=4, masks=masks, tile=96)
    img = _rgb(out)
    assert img.shape[0] > 2 * 96 and img.shape[1] > 4 * 2 * 96  # 2 rows of 4 image|overlay tiles
    assert img.shape[0] < 1000 and img.shape[1] < 2000
    _no_temp_files(out.parent)

    # heatmap_grid's layout at tile=96: title strip max(20, 96 // 8) = 20 px, 6 px gaps, a 4 px
    # separator; every cell as wide as the widest (the 48x96 image: 192 | 4 | 192)
    title_h, gap, tile, cell_w = 20, 6, 96, 2 * 192 + 4
    for i, level in enumerate(levels):
        r, c = divmod(i, 4)
        y, x = gap + r * (title_h + tile + gap), gap + c * (cell_w + gap)
        w = 192 if i == 5 else 96
        strip = img[y : y + title_h, x : x + 2 * w + 4]
        raw = img[y + title_h : y + title_h + tile, x : x + w]
        over = img[y + title_h : y + title_h + tile, x + w + 4 : x + 2 * w + 4]
        assert (strip.max(axis=2) < 100).sum() > 20, f"tile {i}: no title"
        # the image tile is the image; the overlay is half image, half JET: blue (0, 0, 128) where
        # the map is 0 (left), red (128, 0, 0) where it is 1 (right); the middle is the blend
        lo, hi = over[5:-5, 5 : w // 2 - 10], over[5:-5, w // 2 + 10 : -5]
        half = level / 2
        assert np.median(raw.reshape(-1, 3), axis=0) == pytest.approx([level] * 3, abs=1)
        assert np.median(lo.reshape(-1, 3), axis=0) == pytest.approx([half, half, half + 64], abs=2)
        assert np.median(hi.reshape(-1, 3), axis=0) == pytest.approx([half + 64, half, half], abs=2)
    # the ground-truth mask of image 1 (rows 10..29, cols 20..39 of 64 px; x1.5 in the tile):
    # a white outline on both its tiles, and no white anywhere else in them
    y, x = gap + title_h, gap + cell_w + gap
    for tile_x in (x, x + 96 + 4):
        rows, cols = np.nonzero((img[y : y + tile, tile_x : tile_x + 96] == 255).all(axis=2))
        assert rows.size > 80
        assert (rows.min(), rows.max(), cols.min(), cols.max()) == (15, 44, 30, 59)
    # the colour bar under the grid: JET from blue (vmin) to red (vmax), from x = 100 to width - 100
    bar = img[-36:]
    assert tuple(bar[18, 100]) == (0, 0, 128) and tuple(bar[18, img.shape[1] - 101]) == (128, 0, 0)
    assert (bar[:, :100].max(axis=2) < 100).any() and (bar[:, -100:].max(axis=2) < 100).any()  # 0 and 1

    single = F.heatmap_grid(images[:1], maps[:1], ["x"], tmp_path / "one.png", 0.0, 1.0)
    img = _rgb(single)
    assert img.shape[0] > 224
    right = img[gap + 28 : gap + 28 + 224, gap + 224 + 4 + 112 + 20 : gap + 2 * 224 + 4 - 5]  # title 224 // 8
    assert np.median(right.reshape(-1, 3), axis=0) == pytest.approx([20 + 64, 20, 20], abs=2)


def test_heatmap_grid_rejects_mismatched_lists(tmp_path: Path) -> None:
    img, amap = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8))
    with pytest.raises(ValueError, match=r"^2 images but 1 maps, 2 titles$"):
        F.heatmap_grid([img, img], [amap], ["a", "b"], tmp_path / "x.png", 0, 1)
    with pytest.raises(ValueError, match=r"^2 images but 2 maps, 2 titles, 1 masks$"):
        F.heatmap_grid([img, img], [amap, amap], ["a", "b"], tmp_path / "x.png", 0, 1, masks=[None])
    with pytest.raises(ValueError, match=r"^heatmap_grid needs at least one image$"):
        F.heatmap_grid([], [], [], tmp_path / "x.png", 0, 1)
    assert not (tmp_path / "x.png").exists()
