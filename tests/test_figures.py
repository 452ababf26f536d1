"""Figures: valid PNGs of sane size, atomic writes, overlay shape/dtype."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgead import figures as F


def _png(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} is not a readable image"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return img


def _no_temp_files(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_import_does_not_load_matplotlib() -> None:
    import subprocess

    code = "import sys, edgead.figures; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plot_roc_writes_png_and_creates_dirs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    scores = rng.random(50) + labels
    out = F.plot_roc(labels, scores, tmp_path / "a" / "b" / "roc.png", title="bottle")
    assert out == tmp_path / "a" / "b" / "roc.png"
    img = _png(out)
    assert 200 < img.shape[0] < 2000 and 200 < img.shape[1] < 2000
    _no_temp_files(out.parent)
    # one-class data still renders (with a note), and overwriting works
    F.plot_roc(np.zeros(5), rng.random(5), out)
    _png(out)


def test_plot_score_histograms(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    out = F.plot_score_histograms(rng.normal(0, 1, 80), rng.normal(3, 1, 20), tmp_path / "h.png",
                                  threshold=1.5, title="scores")
    img = _png(out)
    assert 150 < img.shape[0] < 2000 and 200 < img.shape[1] < 2000
    # degenerate inputs: no defects, constant scores, no threshold
    _png(F.plot_score_histograms(np.full(4, 0.2), [], tmp_path / "h2.png"))
    _png(F.plot_score_histograms([], [], tmp_path / "h3.png", threshold=0.5))
    _no_temp_files(tmp_path)


def test_heatmap_overlay_shape_dtype_and_colours() -> None:
    img = np.full((60, 80, 3), 128, np.uint8)
    amap = np.zeros((15, 20), np.float32)
    amap[:, 10:] = 1.0
    out = F.heatmap_overlay(img, amap, vmin=0.0, vmax=1.0, alpha=0.5)
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    # JET: low -> blue, high -> red (RGB order)
    assert out[30, 5, 2] > out[30, 5, 0]
    assert out[30, 75, 0] > out[30, 75, 2]
    full = F.heatmap_overlay(img, amap, 0.0, 1.0, alpha=1.0)
    assert tuple(full[30, 75]) == (128, 0, 0)  # pure JET red, no image left
    assert np.array_equal(F.heatmap_overlay(img, amap, 0.0, 1.0, alpha=0.0), img)
    gray = F.heatmap_overlay(img[:, :, 0], amap, 0.0, 0.0)  # grayscale, degenerate range
    assert gray.shape == (60, 80, 3) and gray.dtype == np.uint8


def test_heatmap_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    images.append(rng.integers(0, 255, (48, 96, 3), dtype=np.uint8))  # other aspect ratio
    maps = [rng.random((16, 16)) for _ in range(6)]
    masks: list[np.ndarray | None] = [None] * 6
    masks[1] = np.zeros((64, 64), np.uint8)
    masks[1][10:30, 20:40] = 1
    titles = [f"score {s:.3f} | scratch" for s in rng.random(6)]
    titles[0] = "a very long title that certainly does not fit in one tile " * 3
    out = F.heatmap_grid(images, maps, titles, tmp_path / "grid" / "g.png", 0.0, 1.0,
                         cols=4, masks=masks, tile=96)
    img = _png(out)
    assert img.shape[0] > 2 * 96 and img.shape[1] > 4 * 2 * 96  # 2 rows of 4 image|overlay tiles
    assert img.shape[0] < 1000 and img.shape[1] < 2000
    _no_temp_files(out.parent)
    single = F.heatmap_grid(images[:1], maps[:1], ["x"], tmp_path / "one.png", 0.0, 1.0)
    assert _png(single).shape[0] > 224


def test_heatmap_grid_rejects_mismatched_lists(tmp_path: Path) -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError):
        F.heatmap_grid([img, img], [np.zeros((8, 8))], ["a", "b"], tmp_path / "x.png", 0, 1)
    with pytest.raises(ValueError):
        F.heatmap_grid([], [], [], tmp_path / "x.png", 0, 1)
    assert not (tmp_path / "x.png").exists()


def test_failed_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.png"
    target.write_bytes(b"old")

    def boom(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        F._atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    _no_temp_files(tmp_path)
