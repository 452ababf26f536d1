"""Reading images and folders, and MVTec-layout datasets: formats, bad files and clear errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgead.data import mvtec
from edgead.data.images import IMAGE_EXTENSIONS, list_images, load_batch, read_image
from edgead.data.mvtec import good_images
from edgead.errors import EdgeADError
from edgead.preprocess import PreprocessSpec

SPEC = PreprocessSpec(height=32, width=48)


def _rgb(h: int = 40, w: int = 60, seed: int = 0) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 200  # strongly red, so a BGR/RGB mix-up shows
    img[..., 2] = 30
    img[..., 1] = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    return img


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    assert cv2.imwrite(str(path), img)
    return path


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff", ".PNG"])
def test_read_lossless_formats_rgb(tmp_path, ext):
    img = _rgb()
    out = read_image(_write(tmp_path / f"a{ext}", img))
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("ext", [".jpg", ".jpeg"])
def test_read_jpeg(tmp_path, ext):
    img = np.zeros((40, 60, 3), np.uint8)
    img[...] = (200, 60, 30)
    out = read_image(_write(tmp_path / f"a{ext}", img))
    assert out.shape == (40, 60, 3)
    assert np.abs(out.astype(int) - img).max() < 8


def test_read_gray_16bit_and_rgba(tmp_path):
    gray = np.arange(40 * 60, dtype=np.uint32).reshape(40, 60) % 256
    out = read_image(_write(tmp_path / "g.png", gray.astype(np.uint8)))
    assert out.shape == (40, 60) and out.dtype == np.uint8

    g16 = (gray * 257).astype(np.uint16)
    out16 = read_image(_write(tmp_path / "g16.png", g16))
    assert out16.dtype == np.uint8
    np.testing.assert_array_equal(out16, gray.astype(np.uint8))

    rgba = np.dstack([_rgb(), np.full((40, 60), 99, np.uint8)])
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    np.testing.assert_array_equal(read_image(path), _rgb())


def test_read_corrupt_file_names_it(tmp_path):
    bad = tmp_path / "broken_007.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(EdgeADError) as e:
        read_image(bad)
    assert "broken_007.png" in e.value.message
    assert "corrupt" in e.value.message


def test_read_truncated_png(tmp_path):
    good = _write(tmp_path / "full.png", _rgb())
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(EdgeADError, match="cut.png"):
        read_image(cut)


def test_read_missing_file_and_folder(tmp_path):
    with pytest.raises(EdgeADError, match="not found.*nope.png"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(EdgeADError, match="folder"):
        read_image(tmp_path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(EdgeADError, match="empty.png"):
        read_image(empty)


def test_list_images_sorted_case_insensitive_flat(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.JpEg", "d.bmp", "e.tif", "f.TIFF"]:
        _write(tmp_path / name, _rgb())
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "._a.jpg").write_bytes(b"\x00\x05macos metadata")
    _write(tmp_path / "sub" / "z.png", _rgb())
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["a.jpg", "b.PNG", "c.JpEg", "d.bmp", "e.tif", "f.TIFF"]
    assert set(IMAGE_EXTENSIONS) == {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def test_list_images_bad_folder(tmp_path):
    with pytest.raises(EdgeADError, match="the image folder .*missing does not exist"):
        list_images(tmp_path / "missing")
    f = _write(tmp_path / "x.png", _rgb())
    with pytest.raises(EdgeADError, match="x.png is a file, but a folder is needed"):
        list_images(f)


def _folder(tmp_path: Path, n: int, bad: tuple[int, ...] = ()) -> list[Path]:
    paths = []
    for i in range(n):
        p = tmp_path / f"{i:03d}.png"
        if i in bad:
            p.write_bytes(b"garbage")
        else:
            _write(p, _rgb(seed=i))
        paths.append(p)
    return paths


def test_load_batch(tmp_path):
    paths = _folder(tmp_path, 4)
    batch, kept, bad = load_batch(paths, SPEC)
    assert batch.shape == (4, 3, 32, 48) and batch.dtype == np.float32
    assert kept == paths and bad == []


def test_load_batch_skip_bad_counts(tmp_path):
    paths = _folder(tmp_path, 5, bad=(1, 3))
    batch, kept, bad = load_batch(paths, SPEC, skip_bad=True)
    assert batch.shape == (3, 3, 32, 48)
    assert kept == [paths[0], paths[2], paths[4]]
    assert bad == [paths[1], paths[3]]


def test_load_batch_first_bad_raises_with_hint(tmp_path):
    paths = _folder(tmp_path, 5, bad=(1, 3))
    with pytest.raises(EdgeADError) as e:
        load_batch(paths, SPEC)
    assert "001.png" in e.value.message
    assert "--skip-bad" in e.value.hint


def test_load_batch_roi_error_names_file(tmp_path):
    paths = _folder(tmp_path, 2)
    with pytest.raises(EdgeADError) as e:
        load_batch(paths, PreprocessSpec(height=8, width=8, roi=(0, 0, 500, 500)))
    assert "000.png" in e.value.message and "outside" in e.value.message


def test_load_batch_all_bad_gives_empty_batch(tmp_path):
    paths = _folder(tmp_path, 2, bad=(0, 1))
    batch, kept, bad = load_batch(paths, SPEC, skip_bad=True)
    assert batch.shape == (0, 3, 32, 48) and kept == [] and len(bad) == 2


def test_good_images_empty_folder(tmp_path):
    with pytest.raises(EdgeADError) as e:
        good_images(tmp_path)
    assert "no images found" in e.value.message
    assert "found 0, need at least 10" in e.value.message


def test_good_images_too_few(tmp_path):
    _folder(tmp_path, 4)
    with pytest.raises(EdgeADError) as e:
        good_images(tmp_path)
    assert "only 4 images found" in e.value.message
    assert "need at least 10" in e.value.message
    assert len(good_images(tmp_path, min_count=4)) == 4


def test_good_images_plain_folder_and_mvtec_root(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    _folder(plain, 10)
    assert [p.name for p in good_images(plain)] == [f"{i:03d}.png" for i in range(10)]
    root = tmp_path / "cat"
    (root / "train" / "good").mkdir(parents=True)
    _folder(root / "train" / "good", 12)
    assert len(good_images(root)) == 12


# ----------------------------------------------------------------------------- MVTec layout


def _mvtec(tmp_path: Path) -> Path:
    root = tmp_path / "bottle"
    for i in range(3):
        _write(root / "train" / "good" / f"{i:03d}.png", _rgb(seed=i))
    _write(root / "test" / "good" / "000.png", _rgb(seed=10))
    for i in range(2):
        _write(root / "test" / "scratch" / f"{i:03d}.png", _rgb(seed=20 + i))
    _write(root / "test" / "broken_large" / "000.png", _rgb(seed=30))
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 5:25] = 255
    _write(root / "ground_truth" / "scratch" / "000_mask.png", mask)  # 001 has no mask
    _write(root / "ground_truth" / "broken_large" / "000_mask.png", mask)
    return root


def test_is_mvtec_root(tmp_path):
    root = _mvtec(tmp_path)
    assert mvtec.is_mvtec_root(root)
    assert not mvtec.is_mvtec_root(root / "train")
    assert not mvtec.is_mvtec_root(tmp_path / "missing")


def test_train_samples(tmp_path):
    s = mvtec.train_samples(_mvtec(tmp_path))
    assert [x.path.name for x in s] == ["000.png", "001.png", "002.png"]
    assert all(x.label == 0 and x.defect_type == "good" and x.mask_path is None for x in s)
    with pytest.raises(EdgeADError, match="train/good"):
        mvtec.train_samples(tmp_path)


def test_test_samples_with_masks(tmp_path):
    root = _mvtec(tmp_path)
    s = mvtec.test_samples(root)
    assert [(x.defect_type, x.path.name, x.label) for x in s] == [
        ("good", "000.png", 0),
        ("broken_large", "000.png", 1),
        ("scratch", "000.png", 1),
        ("scratch", "001.png", 1),
    ]
    assert s[0].mask_path is None and s[0].has_mask
    assert s[1].mask_path == root / "ground_truth" / "broken_large" / "000_mask.png"
    assert s[2].mask_path == root / "ground_truth" / "scratch" / "000_mask.png"
    assert s[3].mask_path is None and not s[3].has_mask  # unknown truth

    m = mvtec.read_mask(s[2], (40, 60, 3))
    assert m.dtype == np.uint8 and m.shape == (40, 60)
    assert set(np.unique(m)) == {0, 1} and m.sum() == 10 * 20
    assert m[10:20, 5:25].all()
    assert not mvtec.read_mask(s[0], (40, 60)).any()


def test_mask_size_mismatch_names_both(tmp_path):
    root = _mvtec(tmp_path)
    _write(root / "ground_truth" / "scratch" / "000_mask.png", np.zeros((20, 30), np.uint8))
    sample = mvtec.test_samples(root)[2]
    with pytest.raises(EdgeADError) as e:
        mvtec.read_mask(sample, read_image(sample.path).shape)
    assert "000_mask.png" in e.value.message and "30x20" in e.value.message
    assert str(sample.path) in e.value.message and "60x40" in e.value.message


def test_missing_test_folder(tmp_path):
    root = tmp_path / "cat"
    _write(root / "train" / "good" / "000.png", _rgb())
    with pytest.raises(EdgeADError) as e:
        mvtec.test_samples(root)
    assert "no test/ folder" in e.value.message and str(root) in e.value.message
