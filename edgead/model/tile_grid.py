"""Tiling's grid (no torch, the config reads it): a large input scored as overlapping tiles at the
model's own scale, the maps stitched back.

Squashing a 4096x256 line scan or a 1600x1200 frame into 256x256 throws away the detail a small defect
lives in. With `tile:` in the model config the input (`input.height` x `input.width`, e.g. the images'
native size) is cut into a fixed grid of overlapping tiles; the networks see tiles only (training,
statistics, engines), and the per-tile anomaly maps are averaged back into one map of the whole input,
whose maximum is the image score. The grid depends only on the sizes, so it is the same in training, in
the exported graphs and on the line: every engine still takes the whole preprocessed image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edgead.errors import EdgeADError

DEFAULT_OVERLAP = 32      # pixels shared by neighbouring tiles (one stride-32 cell): no seam at a defect


@dataclass(frozen=True)
class TileSpec:
    """Tile height and width in input pixels, and the least overlap between neighbours."""

    height: int
    width: int
    overlap: int = DEFAULT_OVERLAP

    def to_dict(self) -> dict[str, int]:
        return {"height": self.height, "width": self.width, "overlap": self.overlap}

    @classmethod
    def from_dict(cls, data: Any) -> "TileSpec | None":
        if data is None:
            return None
        if not isinstance(data, dict) or not {"height", "width"} <= set(data) \
                or not set(data) <= {"height", "width", "overlap"}:
            raise EdgeADError(f"config: 'tile' must be null or a mapping with height, width and overlap, got {data!r}",
                              "e.g. tile: {height: 256, width: 256, overlap: 32} (train --tile 256 256)")
        values = {k: data[k] for k in ("height", "width", "overlap") if k in data}
        for key, v in values.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or (key != "overlap" and v < 1):
                raise EdgeADError(f"config: 'tile.{key}' has a bad value {v!r}",
                                  "use whole pixels: height and width >= 1, overlap >= 0")
        return cls(**values)


def offsets(size: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles start along one side: as few as cover `size` with at least `overlap` shared pixels,
    spread evenly from 0 to size - tile (so the real overlap is at least the asked one)."""
    if tile >= size:
        return [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def check_tiles(tile: TileSpec, height: int, width: int, smallest: int, why: str) -> None:
    """The tile fits inside the input, is large enough for the model, and its overlap leaves it room to move."""
    if tile.height > height or tile.width > width:
        raise EdgeADError(f"config: tile {tile.height}x{tile.width} is larger than the input {height}x{width}",
                          "use a tile no larger than the input (train --tile H W with --size larger than it)")
    small = [k for k, v in (("height", tile.height), ("width", tile.width)) if v < smallest]
    if small:
        raise EdgeADError(f"config: tile {tile.height}x{tile.width} is too small for this model: "
                          f"{' and '.join(small)} must be at least {smallest}", f"use a larger tile ({why})")
    if tile.overlap >= min(tile.height, tile.width):
        raise EdgeADError(f"config: tile overlap {tile.overlap} is not smaller than the tile {tile.height}x{tile.width}",
                          f"use an overlap below {min(tile.height, tile.width)} pixels ({DEFAULT_OVERLAP} is the default)")
