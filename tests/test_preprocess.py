"""The one preprocessing: shapes, values, ROI, colour handling and the spec's config round trip."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from edgead.errors import EdgeADError
from edgead.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessSpec,
    preprocess,
    preprocess_batch,
    preprocess_mask,
    to_display,
)

MEAN = np.array(IMAGENET_MEAN, np.float32)[:, None, None]
STD = np.array(IMAGENET_STD, np.float32)[:, None, None]


def _rgb(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _unnorm(x: np.ndarray) -> np.ndarray:
    """Back to 0..255 so tests can compare with plain uint8 operations."""
    return (x * STD + MEAN) * 255.0


def test_shape_dtype_and_contiguity():
    out = preprocess(_rgb(300, 400), PreprocessSpec())
    assert out.shape == (3, 256, 256)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]


def test_non_square_size():
    out = preprocess(_rgb(300, 400), PreprocessSpec(height=128, width=320))
    assert out.shape == (3, 128, 320)


def test_normalisation_values():
    img = np.empty((10, 10, 3), np.uint8)
    img[...] = (255, 128, 0)
    out = preprocess(img, PreprocessSpec(height=10, width=10))
    expected = (np.array([255, 128, 0]) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=1e-5)
    assert np.all(out == out[:, :1, :1])


def test_custom_mean_std():
    img = np.full((4, 4, 3), 51, np.uint8)  # 0.2
    out = preprocess(img, PreprocessSpec(height=4, width=4, mean=(0.0, 0.0, 0.0), std=(1.0, 0.5, 0.1)))
    np.testing.assert_allclose(out[:, 0, 0], [0.2, 0.4, 2.0], rtol=1e-5)


def test_roi_crop_is_exact():
    img = _rgb(100, 120)
    spec = PreprocessSpec(height=20, width=30, roi=(10, 5, 30, 20))  # no resize: crop only
    out = preprocess(img, spec)
    np.testing.assert_allclose(_unnorm(out), img[5:25, 10:40].transpose(2, 0, 1), atol=1e-3)


def test_roi_applied_before_resize():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 100:] = 255  # right half white
    out = _unnorm(preprocess(img, PreprocessSpec(height=32, width=32, roi=(100, 0, 100, 100))))
    assert np.all(out > 254)


def test_roi_outside_image_raises():
    spec = PreprocessSpec(height=32, width=32, roi=(100, 50, 80, 80))
    with pytest.raises(EdgeADError) as e:
        preprocess(_rgb(120, 160), spec)
    assert "outside" in e.value.message and "160x120" in e.value.message
    assert "roi" in e.value.hint


def test_gray_input_replicated_to_three_channels():
    gray = _rgb()[:, :, 0].copy()
    out = _unnorm(preprocess(gray, PreprocessSpec(height=120, width=160)))
    np.testing.assert_allclose(out[0], gray, atol=1e-3)
    np.testing.assert_allclose(out[1], out[0], atol=1e-3)
    np.testing.assert_allclose(out[2], out[0], atol=1e-3)
    assert preprocess(gray[:, :, None], PreprocessSpec()).shape == (3, 256, 256)


def test_color_gray_converts_rgb():
    img = _rgb()
    out = _unnorm(preprocess(img, PreprocessSpec(height=120, width=160, color="gray")))
    expected = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    for c in range(3):
        np.testing.assert_allclose(out[c], expected, atol=1e-3)


def test_uint16_scaled_to_8_bit():
    img8 = _rgb()
    img16 = img8.astype(np.uint16) * 257
    spec = PreprocessSpec(height=64, width=96)
    np.testing.assert_array_equal(preprocess(img16, spec), preprocess(img8, spec))


def test_rgba_alpha_dropped():
    img = _rgb()
    rgba = np.dstack([img, np.full(img.shape[:2], 7, np.uint8)])
    spec = PreprocessSpec(height=60, width=80)
    np.testing.assert_array_equal(preprocess(rgba, spec), preprocess(img, spec))


def test_unsupported_dtype_raises():
    with pytest.raises(EdgeADError, match="pixel type"):
        preprocess(np.zeros((8, 8, 3), np.float32), PreprocessSpec())


def test_interpolation_area_when_shrinking_linear_when_enlarging():
    img = _rgb(120, 160)
    small = _unnorm(preprocess(img, PreprocessSpec(height=30, width=40)))
    ref = cv2.resize(img, (40, 30), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
    np.testing.assert_allclose(small, ref, atol=1e-3)
    big = _unnorm(preprocess(img, PreprocessSpec(height=240, width=320)))
    ref = cv2.resize(img, (320, 240), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_allclose(big, ref, atol=1e-3)


def test_batch():
    spec = PreprocessSpec(height=64, width=48)
    imgs = [_rgb(seed=i) for i in range(3)]
    batch = preprocess_batch(imgs, spec)
    assert batch.shape == (3, 3, 64, 48) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], preprocess(imgs[1], spec))
    assert preprocess_batch([], spec).shape == (0, 3, 64, 48)


def test_mask_roi_nearest_binary():
    mask = np.zeros((100, 120), np.uint8)
    mask[40:60, 50:70] = 255
    spec = PreprocessSpec(height=25, width=30, roi=(20, 10, 60, 50))
    m = preprocess_mask(mask, spec)
    assert m.shape == (25, 30) and m.dtype == np.float32
    assert set(np.unique(m)) == {0.0, 1.0}
    # ROI crop: rows 30..50, cols 30..50 of the 50x60 crop, then halved
    expected = np.zeros((50, 60), np.float32)
    expected[30:50, 30:50] = 1
    np.testing.assert_array_equal(m, cv2.resize(expected, (30, 25), interpolation=cv2.INTER_NEAREST))


def test_to_display():
    img = _rgb(120, 160)
    spec = PreprocessSpec(height=60, width=40, roi=(0, 0, 80, 120), color="gray")
    d = to_display(img, spec)
    assert d.shape == (60, 40, 3) and d.dtype == np.uint8
    np.testing.assert_array_equal(d, cv2.resize(img[:, :80], (40, 60), interpolation=cv2.INTER_AREA))
    assert to_display(img[:, :, 0], spec).shape == (60, 40, 3)


def test_spec_round_trip_through_yaml():
    spec = PreprocessSpec(height=224, width=320, roi=(1, 2, 300, 200), color="gray", mean=(0.5, 0.5, 0.5))
    d = yaml.safe_load(yaml.safe_dump(spec.to_dict()))
    assert PreprocessSpec.from_dict(d) == spec
    assert PreprocessSpec.from_dict({}) == PreprocessSpec()
    assert PreprocessSpec.from_dict(PreprocessSpec().to_dict()) == PreprocessSpec()


def test_spec_unknown_key_names_it():
    with pytest.raises(EdgeADError) as e:
        PreprocessSpec.from_dict({"height": 256, "resize": 128})
    assert "'resize'" in e.value.message
    assert "height" in e.value.hint


@pytest.mark.parametrize(
    "key, value",
    [("height", 0), ("width", "256"), ("roi", [1, 2, 3]), ("roi", [0, 0, -5, 10]), ("color", "bgr"),
     ("std", [0.2, 0.0, 0.2]), ("mean", [0.5, 0.5])],
)
def test_spec_bad_value_names_key(key, value):
    with pytest.raises(EdgeADError) as e:
        PreprocessSpec.from_dict({key: value})
    assert f"'{key}'" in e.value.message


def test_spec_not_a_mapping():
    with pytest.raises(EdgeADError, match="mapping"):
        PreprocessSpec.from_dict([256, 256])  # type: ignore[arg-type]


def test_edge_path_has_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, edgead.preprocess, edgead.data.images, edgead.data.mvtec, edgead.data.synth;"
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
