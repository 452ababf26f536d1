"""The heat-map overlay shared by the recorder, the live view, the demo and the evaluation grids."""

import numpy as np

from edgead.runtime.overlay import heatmap_overlay


def test_heatmap_overlay_shape_dtype_and_colours() -> None:
    img = np.full((60, 80, 3), 128, np.uint8)
    amap = np.zeros((15, 20), np.float32)
    amap[:, 10:] = 1.0
    out = heatmap_overlay(img, amap, vmin=0.0, vmax=1.0, alpha=0.5)
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    # JET: low -> blue, high -> red (RGB order)
    assert out[30, 5, 2] > out[30, 5, 0]
    assert out[30, 75, 0] > out[30, 75, 2]
    full = heatmap_overlay(img, amap, 0.0, 1.0, alpha=1.0)
    assert tuple(full[30, 75]) == (128, 0, 0)  # pure JET red, no image left
    assert np.array_equal(heatmap_overlay(img, amap, 0.0, 1.0, alpha=0.0), img)
    gray = heatmap_overlay(img[:, :, 0], amap, 0.0, 0.0)  # grayscale, degenerate range
    assert gray.shape == (60, 80, 3) and gray.dtype == np.uint8
