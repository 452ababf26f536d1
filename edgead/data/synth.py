"""Synthetic products in the MVTec AD layout, so demos and tests need no downloaded data set.

Three categories: `brick` (a photographed texture from scikit-image, randomly
cropped, mirrored and re-lit per image), `brushed_metal` (procedural, new grain
every image) and `washer` (a rendered part with small pose and lighting changes).
Defects are small and local (a few hundred pixels): plain pixel statistics such
as mean/std/max deviation from the mean good image cannot separate them, a
patch-feature detector can. Masks are exact: a mask pixel is one the defect
changed (after optics blur, before sensor noise); every other pixel is
bit-identical to the defect-free render of the same image.

Everything is drawn from numpy Generators seeded by (seed, category, split,
defect type, index), so a seed reproduces the same PNG bytes, and changing one
count does not change the other images. Edge path: numpy + OpenCV only; the brick photo
comes from scikit-image (the train extra), imported only when a brick is rendered.
"""

from __future__ import annotations

import functools
import os
import re
import zlib
from pathlib import Path
from typing import Callable, NamedTuple, Tuple

import cv2
import numpy as np

from edgead.errors import EdgeADError
from edgead.io import png_bytes

CATEGORIES: tuple[str, ...] = ("brick", "brushed_metal", "washer")
DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "brick": ("crack", "missing_material", "color_stain"),
    "brushed_metal": ("scratch", "spot", "foreign_object"),
    "washer": ("missing_material", "scratch", "color_stain", "foreign_object"),
}
MIN_SIZE = 64
_CHANGE_LEVEL = 1.5  # grey levels; smaller changes are dropped so the mask is exact

Image = np.ndarray  # float32 HxWx3 scene in 0..255


class Rendered(NamedTuple):
    """One synthetic image: `clean` is the same image without the defect (equal to `image` for goods)."""

    image: np.ndarray  # uint8 HxWx3 RGB
    mask: np.ndarray  # uint8 HxW, 1 where the defect changed the image
    clean: np.ndarray  # uint8 HxWx3 RGB


# ----------------------------------------------------------------------------- drawing helpers


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def _blob(rng: np.random.Generator, h: int, w: int, cx: float, cy: float, r: float,
          irregular: float = 0.35, soft: float = 1.0) -> np.ndarray:
    """Irregular filled blob, anti-aliased, float32 0..1: stains, chips, spots."""
    n = 48
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = np.ones(n)
    for k in range(2, 6):
        rad += rng.uniform(-irregular, irregular) / k * np.cos(k * th + rng.uniform(0, 2 * np.pi))
    rad = r * np.clip(rad, 0.4, None)
    pts = np.stack([cx + rad * np.cos(th), cy + rad * np.sin(th)], axis=1)
    canvas = np.zeros((h, w), np.uint8)
    cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    a = canvas.astype(np.float32) / 255.0
    if soft > 0:
        a = cv2.GaussianBlur(a, (0, 0), soft)
    return a


def _path(rng: np.random.Generator, x: float, y: float, angle: float, length: float,
          jitter: float, bend: float, step: float = 2.0) -> np.ndarray:
    """Random polyline: `jitter` makes it jagged (cracks), `bend` makes it wander (fibres)."""
    pts = [(x, y)]
    heading, turn = angle, 0.0
    for _ in range(max(2, int(length / step))):
        turn = 0.7 * turn + rng.normal(0, bend)
        heading += turn
        a = heading + rng.normal(0, jitter)
        x, y = x + step * np.cos(a), y + step * np.sin(a)
        pts.append((x, y))
    return np.asarray(pts)


def _lines(h: int, w: int, paths: list[np.ndarray], thickness: int = 1) -> np.ndarray:
    """Anti-aliased polylines -> float32 0..1 coverage."""
    canvas = np.zeros((h, w), np.uint8)
    for p in paths:
        cv2.polylines(canvas, [np.round(p * 16).astype(np.int32)], False, 255, thickness, cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move `a` by (dy, dx) pixels, zero-filled (np.roll would wrap a shadow to the far edge)."""
    out = np.zeros_like(a)
    h, w = a.shape[:2]
    src = a[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = src
    return out


def _mix(img: Image, target: Image | float, alpha: np.ndarray) -> Image:
    a = alpha[..., None] if alpha.ndim == 2 else alpha
    return img * (1 - a) + np.asarray(target, np.float32) * a


def _smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std blurry noise: roughness, belt texture, stain mottling."""
    n = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma)
    return n / (n.std() + 1e-6)


def _point_in(rng: np.random.Generator, h: int, w: int, margin: float) -> tuple[float, float]:
    return rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)


# ----------------------------------------------------------------------------- brick (texture)


@functools.lru_cache(maxsize=1)
def _brick_source() -> np.ndarray:
    from skimage import data  # bundled with scikit-image, no download

    return data.brick().astype(np.float32)


def _brick(rng: np.random.Generator, h: int, w: int) -> tuple[Image, dict]:
    src = _brick_source()
    need = max(h, w) * 1.15
    if min(src.shape) < need:  # large outputs: enlarge the wall, keep cropping
        f = need / min(src.shape)
        src = cv2.resize(src, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR)
    y0 = int(rng.integers(0, src.shape[0] - h + 1))
    x0 = int(rng.integers(0, src.shape[1] - w + 1))
    g = src[y0:y0 + h, x0:x0 + w]
    if rng.random() < 0.5:
        g = g[:, ::-1]
    mortar = np.clip((g - 125.0) / 45.0, 0, 1)[..., None]
    brick_tint = np.array([1.22, 0.80, 0.64], np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    mortar_tint = np.array([1.0, 0.98, 0.93], np.float32)
    gain, contrast = rng.uniform(0.88, 1.12), rng.uniform(0.9, 1.1)
    lum = (g - 111.0) * contrast + 111.0 * gain
    yy, xx = _grid(h, w)
    ang = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.0, 0.08) * ((xx / w - 0.5) * np.cos(ang) + (yy / h - 0.5) * np.sin(ang))
    img = (lum * light)[..., None] * (brick_tint * (1 - mortar) + mortar_tint * mortar)
    return img.astype(np.float32), {}


def _brick_crack(rng: np.random.Generator, img: Image, ctx: dict) -> Image:
    h, w = img.shape[:2]
    m = min(h, w)
    x, y = _point_in(rng, h, w, 0.15 * m)
    main = _path(rng, x, y, rng.uniform(0, 2 * np.pi), rng.uniform(0.12, 0.25) * m, 0.5, 0.03, step=3.0)
    paths = [main]
    if rng.random() < 0.7:
        k = int(rng.integers(len(main) // 3, 2 * len(main) // 3))
        paths.append(_path(rng, *main[k], rng.uniform(0, 2 * np.pi), rng.uniform(0.04, 0.08) * m, 0.5, 0.03, step=3.0))
    a = _lines(h, w, paths, thickness=1 if rng.random() < 0.6 else 2) * rng.uniform(0.75, 1.0)
    return _mix(img, img * rng.uniform(0.35, 0.55), a)


def _brick_missing(rng: np.random.Generator, img: Image, ctx: dict) -> Image:
    """A spalled chip: the face broke away, leaving a rough, darker recess with a lit rim."""
    h, w = img.shape[:2]
    m = min(h, w)
    x, y = _point_in(rng, h, w, 0.1 * m)
    r = rng.uniform(0.025, 0.05) * m
    a = _blob(rng, h, w, x, y, r, irregular=0.5, soft=0.7)
    rough = _smooth_noise(rng, h, w, 0.8)
    gy, gx = np.gradient(a)
    ang = rng.uniform(0, 2 * np.pi)
    rim = (gx * np.cos(ang) + gy * np.sin(ang)) * 40
    inside = img * (0.68 + 0.1 * rough)[..., None]
    return _mix(img, inside, np.clip(a, 0, 1)) + rim[..., None]


def _brick_stain(rng: np.random.Generator, img: Image, ctx: dict) -> Image:
    """Moss, oil or salt bloom: a soft, mottled change of colour, texture still visible."""
    h, w = img.shape[:2]
    m = min(h, w)
    x, y = _point_in(rng, h, w, 0.1 * m)
    a = _blob(rng, h, w, x, y, rng.uniform(0.05, 0.1) * m, irregular=0.5, soft=rng.uniform(1.5, 3.0))
    a *= np.clip(1 + 0.3 * _smooth_noise(rng, h, w, 2.0), 0, None) * rng.uniform(0.45, 0.7)
    kind = rng.integers(3)
    if kind == 0:  # moss: green
        target = img * np.array([0.55, 0.95, 0.55], np.float32)
    elif kind == 1:  # oil: dark, slightly blue
        target = img * np.array([0.55, 0.58, 0.68], np.float32)
    else:  # efflorescence: pale grey-white
        target = 0.5 * img + np.float32(95.0)
    return _mix(img, target, np.clip(a, 0, 1))


# ----------------------------------------------------------------------------- brushed metal (procedural)


def _metal(rng: np.random.Generator, h: int, w: int) -> tuple[Image, dict]:
    pad = 48
    coarse = cv2.blur(rng.standard_normal((h, w + 2 * pad)).astype(np.float32), (41, 1))
    fine = cv2.blur(rng.standard_normal((h, w + 2 * pad)).astype(np.float32), (9, 1))
    grain = coarse[:, pad:-pad] / coarse.std() + 0.6 * fine[:, pad:-pad] / fine.std()
    yy, xx = _grid(h, w)
    ang = rng.uniform(0, 2 * np.pi)
    grad = rng.uniform(8, 20) * ((xx / w - 0.5) * np.cos(ang) + (yy / h - 0.5) * np.sin(ang)) * 2
    v = rng.uniform(140, 165) + 10 * grain + grad
    tint = np.array([0.97, 0.99, 1.03], np.float32)
    return (v[..., None] * tint).astype(np.float32), {}


def _metal_scratch(rng: np.random.Generator, img: Image, ctx: dict) -> Image:
    """A scratch across the grain: its direction, not its brightness, gives it away."""
    h, w = img.shape[:2]
    m = min(h, w)
    x, y = _point_in(rng, h, w, 0.2 * m)
    ang = rng.uniform(np.radians(25), np.radians(155)) + (np.pi if rng.random() < 0.5 else 0)
    paths = [_path(rng, x, y, ang, rng.uniform(0.15, 0.35) * m, jitter=0.02, bend=0.01)]
    a = _lines(h, w, paths, thickness=1)
    sign = 1.0 if rng.random() < 0.7 else -1.0
    out = img + (sign * rng.uniform(25, 45) * a)[..., None]
    # the groove's other flank catches no light: a faint shadow one pixel over
    shade = _shift(a, 1, 0) * (1 - a)
    return out - (sign * rng.uniform(5, 12) * shade)[..., None]


def _metal_spot(rng: np.random.Generator, img: Image, ctx: dict) -> Image:
    """A dent or pit: shaded like a small crater under the work light."""
    h, w = img.shape[:2]
    m = min(h, w)
    x, y = _point_in(rng, h, w, 0.1 * m)
    s = rng.uniform(0.012, 0.025) * m
    yy, xx = _grid(h, w)
    bump = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
    gy, gx = np.gradient(bump)
    ang = rng.uniform(0, 2 * np.pi)
    shading = (gx * np.cos(ang) + gy * np.sin(ang)) * s
    delta = rng.uniform(35, 60) * shading - rng.uniform(10, 25) * bump
    return img + delta[..., None]


def _metal_foreign(rng: np.random.Generator, img: Image, ctx: dict) -> Image:
    h, w = img.shape[:2]
    return _foreign(rng, img, np.ones((h, w), np.float32), min(h, w))


def _foreign(rng: np.random.Generator, img: Image, where: np.ndarray, m: int) -> Image:
    """A fibre/hair or a small particle lying on the surface, where `where` > 0.5."""
    h, w = img.shape[:2]
    ys, xs = np.nonzero(where > 0.5)
    i = int(rng.integers(len(ys)))
    x, y = float(xs[i]), float(ys[i])
    if rng.random() < 0.6:  # fibre
        p = _path(rng, x, y, rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.22) * m, jitter=0.1, bend=0.08)
        a = _lines(h, w, [p], thickness=1) * rng.uniform(0.7, 0.95)
        color = np.array(rng.uniform(30, 80), np.float32) * rng.uniform(0.8, 1.2, 3).astype(np.float32)
        return _mix(img, color, a)
    a = _blob(rng, h, w, x, y, rng.uniform(0.014, 0.025) * m, irregular=0.6, soft=0.6)
    colors = np.array([[60, 60, 70], [70, 90, 160], [200, 190, 120], [150, 70, 50]], np.float32)
    color = colors[rng.integers(len(colors))] * rng.uniform(0.85, 1.15)
    shadow = _shift(a, 2, 1) * (1 - a)
    out = img * (1 - 0.35 * shadow)[..., None]
    return _mix(out, color, a * rng.uniform(0.85, 1.0))


# ----------------------------------------------------------------------------- washer (rendered part)


def _washer(rng: np.random.Generator, h: int, w: int) -> tuple[Image, dict]:
    m = min(h, w)
    yy, xx = _grid(h, w)
    cx = w / 2 + rng.uniform(-0.025, 0.025) * m
    cy = h / 2 + rng.uniform(-0.025, 0.025) * m
    R, r = 0.36 * m * rng.uniform(0.99, 1.01), 0.16 * m
    rot = rng.uniform(-0.15, 0.15) - np.pi / 4  # tab at upper right, +-9 degrees
    dx, dy = xx - cx, yy - cy
    d = np.hypot(dx, dy)
    th = np.arctan2(dy, dx)
    ring = np.clip(R - d + 0.5, 0, 1) * np.clip(d - r + 0.5, 0, 1)
    u = dx * np.cos(rot) + dy * np.sin(rot)
    v = -dx * np.sin(rot) + dy * np.cos(rot)
    tab_len, tab_half = 0.09 * m, 0.04 * m
    tab = np.clip(np.minimum(np.minimum(u - (R - 3), R + tab_len - u), tab_half - np.abs(v)) + 0.5, 0, 1)
    cov = np.maximum(ring, tab)

    gain = rng.uniform(0.9, 1.1)
    light = rng.uniform(0, 2 * np.pi)
    belt = (rng.uniform(55, 70) + 3 * _smooth_noise(rng, h, w, 1.0) + 4 * _smooth_noise(rng, h, w, 8.0)) * gain
    sh = cv2.GaussianBlur(_shift(cov, 3, 3), (0, 0), 3)
    bg = (belt * (1 - 0.45 * sh))[..., None] * np.array([0.96, 1.0, 1.04], np.float32)
    lathe = 4 * np.sin(d * (2 * np.pi / 3.0) + rng.uniform(0, 2 * np.pi))
    bevel = 25 * (np.exp(-((R - d) ** 2) / 4.5) + np.exp(-((d - r) ** 2) / 4.5)) * np.cos(th - light)
    metal_v = (rng.uniform(150, 170) * (1 + 0.12 * np.cos(th - light)) + lathe + bevel
               + 3 * _smooth_noise(rng, h, w, 2.0)) * gain
    metal = metal_v[..., None] * np.array([1.0, 0.99, 0.96], np.float32)
    img = bg * (1 - cov[..., None]) + metal * cov[..., None]
    return img.astype(np.float32), {"cov": cov, "ring": ring, "bg": bg, "metal": metal,
                                    "cx": cx, "cy": cy, "R": R, "r": r, "rot": rot, "m": m}


def _face_point(rng: np.random.Generator, ctx: dict, margin: float) -> tuple[float, float]:
    rad = rng.uniform(ctx["r"] + margin, ctx["R"] - margin)
    t = rng.uniform(0, 2 * np.pi)
    return ctx["cx"] + rad * np.cos(t), ctx["cy"] + rad * np.sin(t)


def _washer_missing(rng: np.random.Generator, img: Image, ctx: dict) -> Image:
    """A chip broken out of the outer or inner edge: belt shows through."""
    h, w = img.shape[:2]
    m = ctx["m"]
    while True:  # keep the tab intact so the chip is not just "a different tab"
        t = rng.uniform(0, 2 * np.pi)
        if abs(np.angle(np.exp(1j * (t - ctx["rot"])))) > 0.5:
            break
    rad = ctx["R"] if rng.random() < 0.7 else ctx["r"]
    x, y = ctx["cx"] + rad * np.cos(t), ctx["cy"] + rad * np.sin(t)
    bite = _blob(rng, h, w, x, y, rng.uniform(0.025, 0.045) * m, irregular=0.5, soft=0.5)
    cov = ctx["cov"] * (1 - bite)
    return ctx["bg"] * (1 - cov[..., None]) + ctx["metal"] * cov[..., None]


def _washer_scratch(rng: np.random.Generator, img: Image, ctx: dict) -> Image:
    """A handling scratch across the face, roughly along the ring so most of it lies on metal."""
    h, w = img.shape[:2]
    mid, half = (ctx["r"] + ctx["R"]) / 2, (ctx["R"] - ctx["r"]) / 2
    t = rng.uniform(0, 2 * np.pi)
    rad = mid + rng.uniform(-0.3, 0.3) * half
    x, y = ctx["cx"] + rad * np.cos(t), ctx["cy"] + rad * np.sin(t)
    heading = t + np.pi / 2 + rng.normal(0, 0.35) + (np.pi if rng.random() < 0.5 else 0)
    p = _path(rng, x, y, heading, rng.uniform(0.1, 0.2) * ctx["m"], jitter=0.02, bend=0.015)
    a = _lines(h, w, [p], thickness=1) * ctx["ring"]
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return img + (sign * rng.uniform(45, 75) * a)[..., None]


def _washer_stain(rng: np.random.Generator, img: Image, ctx: dict) -> Image:
    """Rust: orange-brown, mottled, only on the metal."""
    h, w = img.shape[:2]
    x, y = _face_point(rng, ctx, 3)
    a = _blob(rng, h, w, x, y, rng.uniform(0.02, 0.045) * ctx["m"], irregular=0.6, soft=1.2)
    a *= np.clip(1 + 0.4 * _smooth_noise(rng, h, w, 1.5), 0, None) * rng.uniform(0.45, 0.75)
    rust = img * np.array([0.95, 0.6, 0.38], np.float32)
    return _mix(img, rust, np.clip(a * ctx["cov"], 0, 1))


def _washer_foreign(rng: np.random.Generator, img: Image, ctx: dict) -> Image:
    return _foreign(rng, img, ctx["ring"], ctx["m"])


# typing.Tuple, not tuple[...]: an alias is evaluated at import, on Python 3.8 too.
_Renderer = Callable[[np.random.Generator, int, int], Tuple[Image, dict]]
_Defect = Callable[[np.random.Generator, Image, dict], Image]
_RENDER: dict[str, _Renderer] = {"brick": _brick, "brushed_metal": _metal, "washer": _washer}
_DEFECTS: dict[str, dict[str, _Defect]] = {
    "brick": {"crack": _brick_crack, "missing_material": _brick_missing, "color_stain": _brick_stain},
    "brushed_metal": {"scratch": _metal_scratch, "spot": _metal_spot, "foreign_object": _metal_foreign},
    "washer": {"missing_material": _washer_missing, "scratch": _washer_scratch,
               "color_stain": _washer_stain, "foreign_object": _washer_foreign},
}

# ----------------------------------------------------------------------------- rendering + writing


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise EdgeADError(f"unknown synthetic category '{category}'", f"choose one of: {', '.join(CATEGORIES)}")


def sample_rng(seed: int, category: str, split: str, defect_type: str, index: int) -> np.random.Generator:
    """The generator for one image; independent of every count, so images are stable."""
    key = [zlib.crc32(s.encode()) for s in (category, split, defect_type)]
    return np.random.default_rng([int(seed), *key, int(index)])


def render(category: str, rng: np.random.Generator, size: tuple[int, int] = (256, 256),
           defect: str | None = None) -> Rendered:
    """Render one image of `category` (size is height, width), with `defect` or defect-free."""
    _check_category(category)
    h, w = size
    scene, ctx = _RENDER[category](rng, h, w)
    blur_sigma = rng.uniform(0.5, 0.8)  # camera optics
    noise = rng.normal(0, 2.0, scene.shape).astype(np.float32)  # sensor noise
    clean = cv2.GaussianBlur(scene, (0, 0), blur_sigma)
    mask = np.zeros((h, w), np.uint8)
    final = clean
    if defect is not None:
        if defect not in _DEFECTS[category]:
            raise EdgeADError(f"unknown defect '{defect}' for {category}",
                              f"choose one of: {', '.join(DEFECT_TYPES[category])}")
        hurt = cv2.GaussianBlur(_DEFECTS[category][defect](rng, scene, ctx).astype(np.float32), (0, 0), blur_sigma)
        changed = np.abs(hurt - clean).max(axis=2) >= _CHANGE_LEVEL
        final = np.where(changed[..., None], hurt, clean)
        mask = changed.astype(np.uint8)

    def q(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(x + noise), 0, 255).astype(np.uint8)

    image = q(final)
    return Rendered(image, mask, image if defect is None else q(clean))


def _write_png(path: Path, rgb_or_gray: np.ndarray) -> None:
    try:
        data = png_bytes(rgb_or_gray, compression=1)
    except OSError as e:
        raise EdgeADError(f"cannot encode {path}: {e}", "this is a bug; please report it") from e
    try:
        path.write_bytes(data)
    except OSError as e:
        raise EdgeADError(f"cannot write {path}: {e.strerror or e}", "check free disk space and permissions") from e


_OURS = re.compile(r"^\d{3,}(_mask)?\.png$")


def _fresh_dir(d: Path) -> None:
    """Create `d` and remove our own numbered PNGs from an earlier run, so counts can shrink."""
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeADError(f"cannot create folder {d}: {e.strerror or e}", "choose another --out folder") from e
    for p in d.iterdir():
        if p.is_file() and _OURS.match(p.name):
            p.unlink()


def generate_product(out_dir: str | os.PathLike, category: str, seed: int, n_train: int = 60,
                     n_test_good: int = 20, n_test_defect: int = 30,
                     size: tuple[int, int] = (256, 256)) -> Path:
    """Write `out_dir/category/` in MVTec layout and return that folder.

    Defect images are spread evenly over the category's defect types. `size` is (height, width).
    """
    _check_category(category)
    for name, n in (("n_train", n_train), ("n_test_good", n_test_good), ("n_test_defect", n_test_defect)):
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise EdgeADError(f"{name} must be a whole number >= 0, got {n!r}", "pass a smaller or positive count")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise EdgeADError(f"seed must be a whole number >= 0, got {seed!r}", "pass e.g. --seed 0")
    h, w = (int(v) for v in size)
    if h < MIN_SIZE or w < MIN_SIZE:
        raise EdgeADError(f"image size {h}x{w} is too small", f"use at least {MIN_SIZE}x{MIN_SIZE}")

    root = Path(out_dir) / category
    width = max(3, len(str(max(n_train, n_test_good, n_test_defect, 1) - 1)))
    good_dirs = {"train": root / "train" / "good", "test": root / "test" / "good"}
    for split, n in (("train", n_train), ("test", n_test_good)):
        _fresh_dir(good_dirs[split])
        for i in range(n):
            r = render(category, sample_rng(seed, category, split, "good", i), (h, w))
            _write_png(good_dirs[split] / f"{i:0{width}d}.png", r.image)

    types = DEFECT_TYPES[category]
    counts = [n_test_defect // len(types) + (k < n_test_defect % len(types)) for k in range(len(types))]
    for defect, n in zip(types, counts):
        img_dir, gt_dir = root / "test" / defect, root / "ground_truth" / defect
        _fresh_dir(img_dir)
        _fresh_dir(gt_dir)
        for i in range(n):
            r = render(category, sample_rng(seed, category, "test", defect, i), (h, w), defect)
            _write_png(img_dir / f"{i:0{width}d}.png", r.image)
            _write_png(gt_dir / f"{i:0{width}d}_mask.png", r.mask * np.uint8(255))
    return root


def generate_all(out_dir: str | os.PathLike, seed: int, **kw) -> list[Path]:
    """Every category in CATEGORIES under `out_dir`; keyword arguments go to generate_product."""
    return [generate_product(out_dir, c, seed, **kw) for c in CATEGORIES]
