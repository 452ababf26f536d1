"""Tiling's grid and stitching: every pixel in a tile, the asked overlap kept, a map cut and stitched
back unchanged, features folded one image per row; bad tile settings are one message naming the key."""

from __future__ import annotations

import pytest
import torch

from edgead.errors import EdgeADError
from edgead.model.config import load_config
from edgead.model.tile_grid import TileSpec, offsets
from edgead.model.tiling import Tiler


@pytest.mark.parametrize("size, tile, overlap", [(96, 64, 32), (160, 64, 32), (4096, 256, 32), (64, 64, 0),
                                                  (700, 256, 0), (257, 256, 32)])
def test_tiles_cover_the_side_with_at_least_the_asked_overlap(size, tile, overlap):
    starts = offsets(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] == size - tile
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))       # overlap >= asked, no gap
    assert len(starts) == 1 or all(b > a for a, b in zip(starts, starts[1:]))


def test_a_map_cut_into_tiles_and_stitched_is_unchanged_and_features_fold_per_image():
    tiler = Tiler(TileSpec(64, 64, 32), 96, 160)
    assert (tiler.ys, tiler.xs, tiler.count) == ([0, 32], [0, 32, 64, 96], 8)
    whole = torch.randn(3, 1, 96, 160)
    tiles = tiler.cut(whole)
    assert tiles.shape == (24, 1, 64, 64)
    assert torch.equal(tiles[8 + 5], whole[1, :, 32:96, 32:96])                 # image 1, row 1, column 1
    assert torch.allclose(tiler.stitch(tiles), whole, atol=1e-6)
    feats = torch.randn(24, 5, 2, 2)
    folded = tiler.fold(feats)
    assert folded.shape == (3, 40, 2, 2) and torch.equal(folded[1, 5:10], feats[9])
    assert torch.equal(tiler.unfold(folded), feats)


def test_overlapping_tile_maps_are_averaged():
    tiler = Tiler(TileSpec(64, 64, 32), 64, 96)                 # two tiles, columns 32-63 shared
    maps = torch.cat([torch.zeros(1, 1, 64, 64), torch.ones(1, 1, 64, 64)])
    out = tiler.stitch(maps)[0, 0]
    assert float(out[:, :32].max()) == 0 and float(out[:, 64:].min()) == 1
    assert torch.allclose(out[:, 32:64], torch.full((64, 32), 0.5))


@pytest.mark.parametrize("tile, want", [
    ({"height": 128, "width": 64}, "larger than the input"),
    ({"height": 16, "width": 64}, "too small for this model"),
    ({"height": 64, "width": 64, "overlap": 64}, "not smaller than the tile"),
    ({"height": 64, "width": "64"}, "'tile.width' has a bad value"),
    ({"height": 64}, "must be null or a mapping"),
    ({"height": 64, "width": 64, "stride": 8}, "must be null or a mapping"),
])
def test_bad_tile_settings_name_the_problem(tile, want):
    with pytest.raises(EdgeADError, match=want):
        load_config("edge", overrides={"input": {"height": 96, "width": 160}, "tile": tile})


def test_an_untiled_config_writes_no_tile_key_and_a_tiled_one_reads_back():
    assert "tile" not in load_config("edge").to_dict()
    cfg = load_config("edge", overrides={"input": {"height": 96, "width": 160}, "tile": {"height": 64, "width": 64}})
    assert cfg.to_dict()["tile"] == {"height": 64, "width": 64, "overlap": 32} and cfg.net_hw == (64, 64)
    assert type(cfg).from_dict(cfg.to_dict()).tile == cfg.tile


def test_a_tiled_models_default_input_is_the_native_size_capped_at_sixteen_tiles(tmp_path):
    import cv2
    import numpy as np

    from edgead.training.input_size import MAX_TILES, native_size

    tile = {"height": 64, "width": 64}
    cfg = load_config("edge", overrides={"input": tile, "tile": tile})
    for name, (h, w) in {"small": (100, 300), "large": (300, 2000)}.items():
        folder = tmp_path / name
        folder.mkdir()
        for i in range(10):
            cv2.imwrite(str(folder / f"{i}.png"), np.full((h, w, 3), 128, np.uint8))
    small = native_size(cfg, tmp_path / "small", log=lambda s: None)
    assert (small.input.height, small.input.width) == (96, 288)                  # native, in multiples of 32
    large = native_size(cfg, tmp_path / "large", log=lambda s: None)
    h, w = large.input.height, large.input.width
    assert h * w <= MAX_TILES * 64 * 64 * 1.1 and abs(w / h - 2000 / 300) < 0.5     # scaled down, aspect kept


def test_a_tile_set_in_the_config_file_needs_no_size(tmp_path, capsys):
    """A tile larger than the preset's input, from --config: the input starts as the tile, not an error."""
    import yaml

    from edgead.cli import main

    path = tmp_path / "tiled.yaml"
    path.write_text(yaml.safe_dump({"tile": {"height": 320, "width": 320}}))
    assert main(["train", "--config", str(path), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["tile"]["height"] == 320 and printed["input"]["height"] == 320


def test_a_tile_overlap_without_a_tile_is_one_message(capsys):
    from edgead.cli import main

    assert main(["train", "--tile-overlap", "8", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "--tile-overlap needs --tile H W" in err and "Traceback" not in err
