"""The one preprocessing used by training, evaluation, calibration and the run loop.

Every stage must turn a camera frame into the model's input in exactly the same
way, or the threshold calibrated offline means nothing on the line. So there is
one `PreprocessSpec`, saved with the model, and one `preprocess` function.
Edge path: numpy + OpenCV only (no torch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import cv2
import numpy as np

from edgead.errors import EdgeADError
from edgead.schema import Place, known_keys

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
COLORS = ("rgb", "gray")


def _spec_error(key: str, value: Any, want: str) -> EdgeADError:
    return EdgeADError(
        f"preprocess setting '{key}' is invalid: {value!r} (expected {want})",
        "fix that value in the preprocess section of your config",
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a source image becomes model input; stored next to the model so it travels with it."""

    height: int = 256
    width: int = 256
    roi: tuple[int, int, int, int] | None = None  # x, y, w, h in source pixels, cropped before resize
    color: str = "rgb"  # "rgb" or "gray" (gray is replicated to 3 channels)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        # Validate here so a bad spec fails when it is built, not deep in a batch loop.
        for key in ("height", "width"):
            v = getattr(self, key)
            if not _is_int(v) or v < 1:
                raise _spec_error(key, v, "a positive integer")
        if self.roi is not None:
            r = self.roi
            if (
                not isinstance(r, (tuple, list))
                or len(r) != 4
                or not all(_is_int(v) for v in r)
                or r[0] < 0
                or r[1] < 0
                or r[2] < 1
                or r[3] < 1
            ):
                raise _spec_error("roi", r, "null or [x, y, w, h] integers with x, y >= 0 and w, h >= 1")
            object.__setattr__(self, "roi", tuple(int(v) for v in r))
        if self.color not in COLORS:
            raise _spec_error("color", self.color, "'rgb' or 'gray'")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if not isinstance(v, (tuple, list)) or len(v) != 3 or not all(_is_num(x) for x in v):
                raise _spec_error(key, v, "three numbers, one per channel")
            if key == "std" and any(x <= 0 for x in v):
                raise _spec_error(key, v, "three positive numbers")
            object.__setattr__(self, key, tuple(float(x) for x in v))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "width", int(self.width))

    def to_dict(self) -> dict:
        """Plain YAML/JSON-safe dict (lists, not tuples)."""
        d = asdict(self)
        for key in ("roi", "mean", "std"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        """Build from a config/model-file dict; missing keys take defaults, unknown keys are errors."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise EdgeADError(
                f"preprocess settings must be a mapping, got {type(d).__name__}",
                "write them as 'key: value' lines (height, width, roi, color, mean, std)",
            )
        known_keys(d, {f.name for f in fields(cls)}, Place("preprocess settings"))
        kwargs = dict(d)
        for key in ("roi", "mean", "std"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        # Fixed full-range scaling (65535 -> 255) so every frame maps the same way.
        return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    raise EdgeADError(
        f"unsupported image pixel type {image.dtype}",
        "use 8-bit or 16-bit images",
    )


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """HxW / HxWx1 / HxWx3 / HxWx4, uint8 or uint16 -> contiguous uint8 HxWx3 RGB."""
    if not isinstance(image, np.ndarray):
        raise EdgeADError(f"expected an image array, got {type(image).__name__}", "pass a numpy image")
    img = to_uint8(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]  # drop alpha
    elif not (img.ndim == 3 and img.shape[2] == 3):
        raise EdgeADError(
            f"unsupported image shape {image.shape}",
            "use HxW gray or HxWx3 RGB images",
        )
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise EdgeADError(f"empty image of shape {image.shape}", "check the camera or file")
    return np.ascontiguousarray(img)


def _crop(image: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    if roi is None:
        return image
    x, y, w, h = roi
    H, W = image.shape[:2]
    if x + w > W or y + h > H:
        raise EdgeADError(
            f"ROI x={x} y={y} w={w} h={h} lies outside the {W}x{H} image",
            "set preprocess roi inside the camera frame (x + w <= width, y + h <= height)",
        )
    return image[y : y + h, x : x + w]


def _resize(image: np.ndarray, spec: PreprocessSpec, nearest: bool = False) -> np.ndarray:
    h, w = image.shape[:2]
    if (h, w) == (spec.height, spec.width):
        return image
    if nearest:
        interp = cv2.INTER_NEAREST
    elif spec.height <= h and spec.width <= w:
        interp = cv2.INTER_AREA  # shrinking: averages, no aliasing
    else:
        interp = cv2.INTER_LINEAR  # enlarging (on either axis)
    return cv2.resize(image, (spec.width, spec.height), interpolation=interp)


def to_display(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """ROI + resize only, uint8 HxWx3 RGB, pixel-aligned with the anomaly map for overlays.

    Colour is kept even for color='gray' specs: operators read overlays on the real colours.
    """
    return np.ascontiguousarray(_resize(_crop(as_rgb_uint8(image), spec.roi), spec))


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Source image (HxW gray or HxWx3 RGB, uint8/uint16) -> normalised float32 (3, height, width)."""
    img = _crop(as_rgb_uint8(image), spec.roi)
    if spec.color == "gray":
        g = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
        img = np.repeat(g[:, :, None], 3, axis=2)
    img = _resize(np.ascontiguousarray(img), spec)
    # (x / 255 - mean) / std as one scale and one offset per channel, on the CHW copy of the uint8
    # image: two float passes instead of four and a float transpose (0.09 vs 0.47 ms at 256x256,
    # which the run loop pays per frame on the same cores as the engine).
    std = np.asarray(spec.std, dtype=np.float64)
    scale = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
    offset = (-np.asarray(spec.mean, dtype=np.float64) / std).astype(np.float32)[:, None, None]
    chw = np.ascontiguousarray(img.transpose(2, 0, 1))
    x = np.empty(chw.shape, dtype=np.float32)
    np.multiply(chw, scale, out=x, dtype=np.float32)
    x += offset
    return x


def preprocess_batch(images: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Several images -> float32 NCHW (an empty sequence gives shape (0, 3, H, W))."""
    out = np.empty((len(images), 3, spec.height, spec.width), dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = preprocess(image, spec)
    return out


def preprocess_mask(mask: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Ground-truth mask (any nonzero = defect) -> float32 HxW in {0, 1}, aligned with `preprocess`."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m.any(axis=2)
    if m.ndim != 2:
        raise EdgeADError(f"unsupported mask shape {mask.shape}", "use an HxW mask image")
    m = _crop((m != 0).astype(np.uint8), spec.roi)
    m = _resize(np.ascontiguousarray(m), spec, nearest=True)
    return m.astype(np.float32)
