"""The tiles of a batch and the stitching of their maps, for a model with `tile:` (see tile_grid)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from edgead.model.tile_grid import TileSpec, offsets


class Tiler:
    """Cuts NCHW inputs into tiles (image-major: image 0's tiles first) and stitches tile maps back."""

    def __init__(self, tile: TileSpec, height: int, width: int) -> None:
        self.tile = tile
        self.size = (height, width)
        self.ys = offsets(height, tile.height, tile.overlap)
        self.xs = offsets(width, tile.width, tile.overlap)
        self.count = len(self.ys) * len(self.xs)
        cover = torch.zeros(1, 1, height, width)
        for y in self.ys:
            for x in self.xs:
                cover[..., y:y + tile.height, x:x + tile.width] += 1
        self.inverse_cover = 1.0 / cover       # every pixel is in at least one tile

    def cut(self, x: Tensor) -> Tensor:
        """N x C x H x W -> (N * tiles) x C x th x tw."""
        th, tw = self.tile.height, self.tile.width
        parts = [x[:, :, y:y + th, x0:x0 + tw] for y in self.ys for x0 in self.xs]
        return torch.stack(parts, dim=1).reshape(-1, x.shape[1], th, tw)

    def stitch(self, maps: Tensor) -> Tensor:
        """(N * tiles) x 1 x th x tw -> N x 1 x H x W, overlaps averaged."""
        th, tw = self.tile.height, self.tile.width
        height, width = self.size
        per_image = maps.reshape(-1, self.count, 1, th, tw)
        out = None
        for i, (y, x) in enumerate((y, x) for y in self.ys for x in self.xs):
            placed = F.pad(per_image[:, i], (x, width - tw - x, y, height - th - y))
            out = placed if out is None else out + placed
        assert out is not None
        return out * self.inverse_cover.to(device=maps.device, dtype=maps.dtype)

    def fold(self, features: Tensor) -> Tensor:
        """(N * tiles) x C x h x w -> N x (tiles * C) x h x w: an engine's batch stays one image per row."""
        _, c, h, w = features.shape
        return features.reshape(-1, self.count * c, h, w)

    def unfold(self, features: Tensor) -> Tensor:
        """N x (tiles * C) x h x w -> (N * tiles) x C x h x w."""
        _, tc, h, w = features.shape
        return features.reshape(-1, tc // self.count, h, w)
