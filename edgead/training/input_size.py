"""The model's input size from the training images: their aspect ratio kept, at a pixel budget.

A fixed square input squashes long parts (a 500x1250 commutator loses 60 % of its length's detail)
and distorts every defect's shape the same way for nothing. `edgead train` without --size keeps the
median aspect ratio of the good images at the pixel count of the preset (or --config) input, so the
model costs about the same per image as at the preset's size; `--size H W` fixes it.
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Callable, Sequence

from edgead.data.mvtec import good_images
from edgead.io import check_input
from edgead.model.config import ModelConfig

SIZE_MULTIPLE = 32        # the backbones' largest stride: every feature map tiles the input exactly
ASPECT_SAMPLE = 64        # images whose size is read (headers only); enough for a median
MAX_TILES = 16            # a tiled model's default input: native size, scaled down past this many tiles' area


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header where possible (no full decode)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            return h, w
    except Exception:         # no PIL, or a format it does not know: decode (the loader will say if it is bad)
        from edgead.data.images import read_image

        img = read_image(path)
        return img.shape[0], img.shape[1]


def _sizes(paths: Sequence[Path], sample: int, seed: int) -> list[tuple[int, int]]:
    chosen = list(paths) if len(paths) <= sample else random.Random(seed).sample(list(paths), sample)
    return [(h, w) for h, w in (image_size(p) for p in chosen) if h > 0 and w > 0]


def median_aspect(paths: Sequence[Path], sample: int = ASPECT_SAMPLE, seed: int = 0) -> float:
    """Median width / height over a seeded sample of the images."""
    ratios = sorted(w / h for h, w in _sizes(paths, sample, seed))
    if not ratios:
        return 1.0
    mid = len(ratios) // 2
    return ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2


def auto_size(aspect: float, pixels: int, smallest: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """(height, width): width / height close to `aspect`, height x width close to `pixels`, both multiples
    of `multiple` and at least `smallest` (the model's minimum input side)."""
    floor = max(multiple, math.ceil(smallest / multiple) * multiple)

    def snap(v: float) -> int:
        return max(floor, int(round(v / multiple)) * multiple)

    h_raw, w_raw = math.sqrt(pixels / aspect), math.sqrt(pixels * aspect)
    if h_raw < floor:              # a very long part: the short side at the minimum, the long one follows it
        return floor, snap(floor * aspect)
    if w_raw < floor:
        return snap(floor / aspect), floor
    return snap(h_raw), snap(w_raw)


def keep_aspect(cfg: ModelConfig, data: str | Path, log: Callable[[str], None] = print) -> ModelConfig:
    """`cfg` with its input re-shaped to the training images' median aspect, at its own pixel count."""
    from edgead.training.train import DATA_HINT

    check_input(data, kind="dir", what="--data", hint=DATA_HINT)
    aspect = median_aspect(good_images(data))
    pixels = cfg.input.height * cfg.input.width
    h, w = auto_size(aspect, pixels, cfg.min_input_size()[0])
    if (h, w) != (cfg.input.height, cfg.input.width):
        log(f"input {h}x{w}: the training images' median aspect {aspect:.2f} at about {pixels} pixels "
            "(--size H W fixes it)")
    return dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, height=h, width=w))


def native_size(cfg: ModelConfig, data: str | Path, log: Callable[[str], None] = print) -> ModelConfig:
    """A tiled model's input: the images' median native size (multiples of 32, at least one tile), scaled
    down, aspect kept, where it would take more than MAX_TILES tiles' worth of pixels."""
    from edgead.training.train import DATA_HINT

    assert cfg.tile is not None
    check_input(data, kind="dir", what="--data", hint=DATA_HINT)
    sizes = _sizes(good_images(data), ASPECT_SAMPLE, 0)
    heights, widths = sorted(h for h, _ in sizes), sorted(w for _, w in sizes)
    h_med, w_med = (heights[len(heights) // 2], widths[len(widths) // 2]) if sizes else cfg.net_hw
    th, tw = cfg.tile.height, cfg.tile.width
    scale = min(1.0, math.sqrt(MAX_TILES * th * tw / (h_med * w_med)))
    h = max(th, int(round(h_med * scale / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    w = max(tw, int(round(w_med * scale / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    log(f"input {h}x{w} in tiles of {th}x{tw}: the training images' median size {h_med}x{w_med}"
        + (f" scaled by {scale:.2f} to at most {MAX_TILES} tiles' pixels" if scale < 1 else "")
        + " (--size H W fixes it)")
    tiled = dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, height=h, width=w))
    tiled.validate()
    return tiled
