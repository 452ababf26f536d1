"""Synthetic products: MVTec layout, bit-exact determinism, exact masks, and defects too subtle
for plain pixel statistics (so a passing model has to have learned something)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from edgead.data import mvtec, synth
from edgead.data.images import read_image
from edgead.errors import EdgeADError

SMALL = dict(n_train=2, n_test_good=1, n_test_defect=4, size=(96, 128))


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
    }


def test_categories_and_defect_kinds():
    assert len(synth.CATEGORIES) >= 3
    assert set(synth.DEFECT_TYPES) == set(synth.CATEGORIES)
    kinds = {k for types in synth.DEFECT_TYPES.values() for k in types}
    assert {"scratch", "spot", "crack", "missing_material", "color_stain", "foreign_object"} <= kinds


@pytest.mark.parametrize("category", synth.CATEGORIES)
def test_layout(tmp_path, category):
    root = synth.generate_product(tmp_path, category, seed=3, **SMALL)
    assert root == tmp_path / category
    assert mvtec.is_mvtec_root(root)
    assert [p.name for p in (root / "train" / "good").iterdir()] != []
    assert len(mvtec.train_samples(root)) == 2
    samples = mvtec.test_samples(root)
    assert sum(s.label == 0 for s in samples) == 1
    defects = [s for s in samples if s.label == 1]
    assert len(defects) == 4
    assert {s.defect_type for s in defects} <= set(synth.DEFECT_TYPES[category])
    for s in defects:
        assert s.mask_path is not None and s.mask_path.name == f"{s.path.stem}_mask.png"
        img = read_image(s.path)
        assert img.shape == (96, 128, 3)
        raw = cv2.imread(str(s.mask_path), cv2.IMREAD_UNCHANGED)
        assert raw.shape == (96, 128) and set(np.unique(raw)) == {0, 255}
        assert mvtec.read_mask(s, img.shape).sum() > 0


def test_defects_spread_over_types(tmp_path):
    root = synth.generate_product(tmp_path, "washer", seed=0, n_train=0, n_test_good=0, n_test_defect=6)
    counts = {t: len(list((root / "test" / t).glob("*.png"))) for t in synth.DEFECT_TYPES["washer"]}
    assert sorted(counts.values()) == [1, 1, 2, 2]


def test_deterministic_bytes(tmp_path):
    a = synth.generate_all(tmp_path / "a", seed=7, **SMALL)
    b = synth.generate_all(tmp_path / "b", seed=7, **SMALL)
    c = synth.generate_all(tmp_path / "c", seed=8, **SMALL)
    assert [p.name for p in a] == list(synth.CATEGORIES)
    ha, hb, hc = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert len(ha) == 3 * (2 + 1 + 4 + 4)
    assert ha == hb
    assert ha.keys() == hc.keys()
    images = [k for k in ha if "ground_truth" not in k]
    assert all(ha[k] != hc[k] for k in images)


def test_rerun_with_fewer_images_leaves_no_stale_files(tmp_path):
    synth.generate_product(tmp_path, "brick", seed=1, n_train=4, n_test_good=2, n_test_defect=6, size=(64, 64))
    before = _hashes(tmp_path)
    synth.generate_product(tmp_path, "brick", seed=1, n_train=2, n_test_good=2, n_test_defect=3, size=(64, 64))
    after = _hashes(tmp_path)
    assert len(after) == 2 + 2 + 3 + 3
    assert all(before[k] == v for k, v in after.items())  # an image does not depend on the counts


@pytest.mark.parametrize("category", synth.CATEGORIES)
def test_masks_are_exactly_the_changed_pixels(category):
    for defect in synth.DEFECT_TYPES[category]:
        for i in range(3):
            r = synth.render(category, synth.sample_rng(0, category, "test", defect, i), (256, 256), defect)
            changed = np.any(r.image != r.clean, axis=2)
            mask = r.mask.astype(bool)
            assert mask.sum() >= 10, (defect, i)
            assert not (changed & ~mask).any(), (defect, i)  # nothing changed outside the mask
            assert changed[mask].mean() > 0.9, (defect, i)  # and the mask is what changed
            assert mask.mean() < 0.05, (defect, i)  # small, local defects


def test_good_images_vary():
    for category in synth.CATEGORIES:
        a, b = (synth.render(category, synth.sample_rng(0, category, "train", "good", i)).image for i in (0, 1))
        assert np.abs(a.astype(int) - b).mean() > 3, category


def _baseline_scores(train: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    """Trivial detectors: how far an image is from the mean good image, pixel by pixel."""
    mean_good = train.mean(axis=0)
    dev = test - mean_good
    adev = np.abs(dev).max(axis=3)
    return {
        "mean_abs_dev": adev.mean(axis=(1, 2)),
        "std_dev": dev.std(axis=(1, 2, 3)),
        "max_abs_dev": adev.max(axis=(1, 2)),
        "image_mean": np.abs(test.mean(axis=(1, 2, 3)) - train.mean()),
        "image_std": np.abs(test.std(axis=(1, 2, 3)) - train.std(axis=(1, 2, 3)).mean()),
    }


@pytest.mark.parametrize("category", synth.CATEGORIES)
def test_pixel_statistics_baseline_cannot_separate(category):
    def imgs(split: str, defect: str, n: int) -> list[np.ndarray]:
        d = None if defect == "good" else defect
        return [synth.render(category, synth.sample_rng(0, category, split, defect, i), (256, 256), d).image
                for i in range(n)]

    train = np.stack(imgs("train", "good", 40)).astype(np.float32)
    test = imgs("test", "good", 20)
    for defect in synth.DEFECT_TYPES[category]:
        test += imgs("test", defect, 8)
    labels = np.r_[np.zeros(20), np.ones(len(test) - 20)]
    for name, score in _baseline_scores(train, np.stack(test).astype(np.float32)).items():
        auroc = roc_auc_score(labels, score)
        assert auroc < 1.0, (category, name, auroc)
        assert auroc < 0.9, (category, name, auroc)  # not even close


def test_default_category_is_fast(tmp_path):
    """A guard against a gross slow-down, not the speed figure. CPU seconds of this process, so other
    jobs on a shared machine do not count: the budget is 3 s (about 2 s on one core here), 6 is twice
    it. Wall time gets a 10x bound on top, for a slow-down that waits instead of computing."""
    import time

    cpu, wall = time.process_time(), time.perf_counter()
    root = synth.generate_product(tmp_path, "washer", seed=0)  # the slowest category, default counts
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert len(list(root.rglob("*.png"))) == 60 + 20 + 30 + 30  # the whole default set (and masks) was made
    assert cpu < 6.0, f"{cpu:.1f} CPU seconds"
    assert wall < 60.0, f"{wall:.1f} s"


def test_bad_arguments():
    with pytest.raises(EdgeADError, match="unknown synthetic category 'bottle'"):
        synth.generate_product(Path("/nonexistent"), "bottle", seed=0)
    with pytest.raises(EdgeADError, match="seed must be a whole number >= 0, got -1"):
        synth.generate_product(Path("/nonexistent"), "brick", seed=-1)
    with pytest.raises(EdgeADError, match="n_train must be a whole number >= 0, got -2"):
        synth.generate_product(Path("/nonexistent"), "brick", seed=0, n_train=-2)
    with pytest.raises(EdgeADError, match="image size 16x16 is too small"):
        synth.generate_product(Path("/nonexistent"), "brick", seed=0, size=(16, 16))
    with pytest.raises(EdgeADError, match="unknown defect 'scratch' for brick"):
        synth.render("brick", np.random.default_rng(0), (64, 64), "scratch")
