"""An image far smaller than the model can use is refused naming the file and its size, or skipped and counted."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgead.data.images import load_batch, load_image
from edgead.errors import EdgeADError
from edgead.preprocess import PreprocessSpec

SPEC = PreprocessSpec(height=64, width=64)


def _write(path: Path, h: int, w: int) -> Path:
    assert cv2.imwrite(str(path), np.full((h, w, 3), 120, np.uint8))
    return path


def test_an_image_below_min_side_is_refused_naming_file_and_size(tmp_path):
    paths = [_write(tmp_path / "a.png", 80, 80), _write(tmp_path / "tiny.png", 1, 1)]
    with pytest.raises(EdgeADError) as err:
        load_batch(paths, SPEC, min_side=32)
    assert str(paths[1]) in err.value.message and "1x1 pixels" in err.value.message
    assert "32x32" in err.value.message and "--skip-bad" in err.value.hint


def test_skip_bad_leaves_small_images_out_and_counts_them(tmp_path):
    paths = [_write(tmp_path / f"{i}.png", *size) for i, size in enumerate([(80, 80), (1, 1), (31, 200), (32, 32)])]
    batch, kept, bad = load_batch(paths, SPEC, skip_bad=True, min_side=32)
    assert batch.shape == (2, 3, 64, 64)
    assert kept == [paths[0], paths[3]] and bad == [paths[1], paths[2]]
    assert len(kept) + len(bad) == len(paths)


def test_without_a_minimum_every_readable_size_is_accepted(tmp_path):
    batch, kept, bad = load_batch([_write(tmp_path / "tiny.png", 1, 1)], SPEC)
    assert batch.shape == (1, 3, 64, 64) and bad == []


def test_the_roi_is_what_is_measured(tmp_path):
    big = _write(tmp_path / "big.png", 200, 200)
    with pytest.raises(EdgeADError, match="16x100 pixels"):
        load_image(big, PreprocessSpec(height=64, width=64, roi=(0, 0, 16, 100)), min_side=32)
    assert load_image(big, PreprocessSpec(height=64, width=64, roi=(0, 0, 40, 40)), min_side=32).shape == (3, 64, 64)
