"""The PatchCore-style baseline of benchmarks/patchcore.py: it separates a tiny synthetic product's
defects from its goods, its bank keeps the size asked for and only real training patches, the greedy
coreset covers the patches better than a random pick, and chunked distances are the exact ones."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from patchcore import (PatchCore, PatchCoreSettings, covering_radius, greedy_coreset,  # noqa: E402
                       nearest_distances)

from edgead.data.images import load_batch  # noqa: E402
from edgead.data.mvtec import good_images, test_samples  # noqa: E402
from edgead.data.synth import generate_product  # noqa: E402
from edgead.model.config import load_config  # noqa: E402
from edgead.training.evaluate import load_masks  # noqa: E402
from edgead.training.metrics import auroc, pixel_auroc  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    """brushed_metal at 64x64 (seed 1): 16 good training images, 12 good and 18 defective test images."""
    root = generate_product(tmp_path_factory.mktemp("pc"), "brushed_metal", 1, n_train=16, n_test_good=12,
                            n_test_defect=18, size=(SIZE, SIZE))
    cfg = load_config("edge", overrides={"input": {"height": SIZE, "width": SIZE}})
    train, _, _ = load_batch(good_images(root), cfg.input)
    samples = test_samples(root)
    test, _, _ = load_batch([s.path for s in samples], cfg.input)
    return cfg, train, test, samples


def _all_rows_of(rows: torch.Tensor, pool: torch.Tensor) -> bool:
    """Every row of `rows` is, bit for bit, a row of `pool`."""
    return bool(((rows[:, None, :] == pool[None, :, :]).all(dim=-1)).any(dim=1).all())


@pytest.fixture(scope="module")
def fitted(product):
    cfg, train, _, _ = product
    return PatchCore(cfg, PatchCoreSettings(bank_size=20000)).fit(train)


def test_the_baseline_separates_defects_from_goods(product, fitted):
    cfg, _, test, samples = product
    scores, maps = fitted.score(test)
    labels = np.array([s.label for s in samples])
    assert maps.shape == (len(samples), SIZE, SIZE)
    np.testing.assert_allclose(scores, maps.reshape(len(maps), -1).max(axis=1), rtol=1e-6)   # image score = map max
    assert auroc(labels, scores) > 0.85                  # measured 0.940
    masks = [m for m in load_masks(samples, cfg.input)]
    assert pixel_auroc(masks, maps) > 0.75               # measured 0.810


def test_the_bank_keeps_bank_size_real_training_patches(product, fitted):
    cfg, train, _, _ = product
    everything = fitted.bank                            # 16 images x 8 x 8 patches: fewer than the default 20000
    assert everything.shape == (16 * 8 * 8, 152)        # stage3 (40) + stage5 (112) channels
    small = PatchCore(cfg, PatchCoreSettings(bank_size=100, seed=3)).fit(train)
    assert small.bank.shape == (100, 152)
    assert _all_rows_of(small.bank, everything)                          # each row is a training patch
    assert len(torch.unique(small.bank, dim=0)) == 100                   # drawn without replacement
    other = PatchCore(cfg, PatchCoreSettings(bank_size=100, seed=4)).fit(train)
    assert not torch.equal(other.bank, small.bank)                       # the seed chooses the patches
    projected = PatchCore(cfg, PatchCoreSettings(bank_size=100, project_dim=32)).fit(train)
    assert projected.bank.shape == (100, 32)


def test_the_coreset_picks_distinct_points_that_cover_better_than_random():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(40, 16, generator=gen) * 5
    sizes = torch.randint(5, 200, (40,), generator=gen)      # clusters of very different sizes
    points = torch.cat([c + 0.3 * torch.randn(int(n), 16, generator=gen) for c, n in zip(centres, sizes)])
    chosen = greedy_coreset(points, 60, seed=0)
    assert len(chosen) == 60 and len(set(chosen.tolist())) == 60
    random_pick = torch.from_numpy(np.random.default_rng(0).choice(len(points), 60, replace=False))
    greedy_r, random_r = covering_radius(points, chosen), covering_radius(points, random_pick)
    # measured 2.5 against 28: every cluster gets a point, a random pick misses the small ones
    assert greedy_r < 0.5 * random_r, (greedy_r, random_r)


def test_a_coreset_bank_has_bank_size_distinct_training_patches(product, fitted):
    cfg, train, _, _ = product
    core = PatchCore(cfg, PatchCoreSettings(bank_size=150, coreset=True)).fit(train)
    assert core.bank.shape == (150, 152)
    assert len(torch.unique(core.bank, dim=0)) == 150
    assert _all_rows_of(core.bank, fitted.bank)


@pytest.mark.parametrize("chunk_elements", [1, 50 * 7, 50 * 64, 1 << 24])
def test_chunked_distances_equal_the_unchunked_ones(chunk_elements):
    gen = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(301, 24, generator=gen), torch.randn(50, 24, generator=gen)
    exact = (queries[:, None, :] - bank[None, :, :]).pow(2).sum(-1).sqrt().min(dim=1).values
    got = nearest_distances(queries, bank, chunk_elements)
    assert got.shape == (301,)
    torch.testing.assert_close(got, exact, rtol=1e-4, atol=1e-4)
