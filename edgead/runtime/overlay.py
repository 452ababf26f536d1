"""The heat-map overlay an operator looks at: the anomaly map in JET colours over the part's image.

The recorder's reject images, the live view, the demo's cards and the evaluation grids all draw it
with this one function, on a colour scale fixed by the caller so that images compare. Edge path:
numpy and OpenCV only.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from edgead.preprocess import as_rgb_uint8


def as_display_rgb(image: np.ndarray) -> np.ndarray:
    """Like preprocess.as_rgb_uint8, and also float images in [0, 1] (maps and matplotlib images)."""
    img = np.asarray(image)
    if img.dtype not in (np.uint8, np.uint16):
        scale = 255.0 if img.size and float(np.nanmax(img)) <= 1.0 else 1.0
        img = np.clip(np.nan_to_num(img.astype(np.float64)) * scale, 0, 255).astype(np.uint8)
    return as_rgb_uint8(img)


def heatmap_overlay(
    image_rgb_uint8: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, alpha: float = 0.5
) -> np.ndarray:
    """Blend a JET-coloured anomaly map over the image; returns uint8 RGB at image size.

    vmin/vmax are fixed by the caller (not per image) so colours compare across
    images; the map is resized to the image (bilinear) before colouring.
    """
    img = as_display_rgb(image_rgb_uint8)
    h, w = img.shape[:2]
    amap = np.nan_to_num(np.asarray(amap, dtype=np.float32).squeeze())
    if amap.ndim != 2:
        raise ValueError(f"anomaly map must be HxW, got shape {amap.shape}")
    if amap.shape != (h, w):
        amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
    span = float(vmax) - float(vmin)
    norm = (amap - float(vmin)) / (span if span > 0 else 1.0)
    u8 = np.clip(norm * 255.0 + 0.5, 0, 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    a = float(np.clip(alpha, 0.0, 1.0))
    return cv2.addWeighted(img, 1.0 - a, heat, a, 0.0)


def heat_range(calibration: dict[str, Any]) -> tuple[float, float]:
    """Fixed heatmap colour scale: a typical good part's peak at the bottom, the threshold near the top (red)."""
    area = calibration.get("area")
    t = float(area["pixel_threshold"] if area else calibration["threshold"])
    stats = (calibration.get("good") or {}).get("area_scores" if area else "scores") or {}
    lo = float(stats.get("p50", t - 1.0))
    lo = min(lo, t - 1e-6)
    return lo, t + 0.25 * (t - lo)
