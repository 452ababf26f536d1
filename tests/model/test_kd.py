"""The KD maths: loss formula, per-image blur, fusion, and that a batch does not change a map."""

import numpy as np
import pytest
import torch

from edgead.model.config import load_config
from edgead.errors import EdgeADError
from edgead.model.kd import DualKD, ScoringHead, discrepancy, kd_loss, normalise


def test_discrepancy_matches_formula():
    t, s = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    nt = t / t.norm(dim=1, keepdim=True)
    ns = s / s.norm(dim=1, keepdim=True)
    expected = 0.5 * ((nt - ns) ** 2).sum(1, keepdim=True)
    assert torch.allclose(discrepancy(t, s), expected, atol=1e-6)
    assert torch.allclose(normalise(t).norm(dim=1), torch.ones(2, 3, 4), atol=1e-5)
    # Opposite features are maximally different (2), identical ones not at all.
    assert torch.allclose(discrepancy(t, -t), torch.full((2, 1, 3, 4), 2.0), atol=1e-5)
    assert float(discrepancy(t, 3 * t).abs().max()) < 1e-6


def test_loss_averages_positions_and_layers_and_sums_pairs():
    t = [[torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)], [torch.randn(2, 3, 2, 2)]]
    s = [[torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)], [torch.randn(2, 3, 2, 2)]]
    pair0 = (discrepancy(t[0][0], s[0][0]).mean() + discrepancy(t[0][1], s[0][1]).mean()) / 2
    pair1 = discrepancy(t[1][0], s[1][0]).mean()
    assert torch.allclose(kd_loss(t, s), pair0 + pair1)


def test_hard_loss_averages_only_the_largest_elements():
    """EfficientAD's top-q loss: the mean of the largest fraction of the elementwise squared
    differences; the whole fraction is the plain elementwise mean, and gradients reach only those."""
    from edgead.model.kd import hard_loss

    t, s = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8, requires_grad=True)
    elements = (0.5 * (normalise(t) - normalise(s)).pow(2)).flatten()
    top = elements.sort(descending=True).values
    assert torch.allclose(hard_loss(t, s, 0.01), top[:5].mean())            # 1 % of 512 elements: 5
    assert torch.allclose(hard_loss(t, s, 1.0), elements.mean())
    assert torch.allclose(kd_loss([[t]], [[s]], 1.0) * 4, kd_loss([[t]], [[s]]), rtol=1e-5)   # 4 channels summed
    hard_loss(t, s, 0.001).backward()                                          # one element: one position
    assert int((s.grad.abs().sum(1) > 0).sum()) == 1


def _head(fusion="multiplicative", sigma=4.0):
    return ScoringHead((32, 48), fusion, sigma)


def test_blur_is_a_2d_gaussian_per_image():
    head = _head()
    impulse = torch.zeros(3, 1, 80, 80)    # far enough from the borders that reflection adds nothing
    impulse[1, 0, 40, 40] = 1.0
    out = head.blur(impulse)
    assert float(out[0].abs().max()) == 0 and float(out[2].abs().max()) == 0   # no leak across the batch
    img = out[1, 0]
    assert abs(float(img.sum()) - 1.0) < 1e-4
    # Spread along rows AND columns, symmetric (the reference blurred per row at batch 1).
    assert torch.allclose(img[40, 40 - 5], img[40 - 5, 40], atol=1e-7)
    assert float(img[40 - 5, 40]) > 0.1 * float(img[40, 40])


def test_batch_does_not_change_the_map():
    head = _head()
    t = [[torch.rand(4, 8, 8, 12)], [torch.rand(4, 16, 2, 3)]]
    s = [[torch.rand(4, 8, 8, 12)], [torch.rand(4, 16, 2, 3)]]
    maps, scores = head(t, s)
    for i in range(4):
        m1, s1 = head([[t[0][0][i:i + 1]], [t[1][0][i:i + 1]]], [[s[0][0][i:i + 1]], [s[1][0][i:i + 1]]])
        assert torch.allclose(m1[0], maps[i], atol=1e-6)
        assert torch.allclose(s1[0], scores[i], atol=1e-6)
    assert maps.shape == (4, 1, 32, 48)
    assert torch.allclose(scores, maps.flatten(1).amax(1))


@pytest.mark.parametrize("fusion", ["multiplicative", "additive", "max"])
def test_fusion(fusion):
    head = _head(fusion, sigma=0)
    head.norm_low.copy_(torch.tensor([0.1, 0.2]))
    head.norm_high.copy_(torch.tensor([0.5, 1.0]))
    a, b = torch.rand(1, 1, 32, 48), torch.rand(1, 1, 32, 48)
    fused = head.fuse([a, b])
    if fusion == "multiplicative":
        expected = (a / 0.5) * (b / 1.0)
    elif fusion == "max":
        expected = torch.maximum((a - 0.1) / 0.4, (b - 0.2) / 0.8)
    else:
        expected = ((a - 0.1) / 0.4 + (b - 0.2) / 0.8) / 2
    assert torch.allclose(fused, expected, atol=1e-6)


def test_position_normalisation_z_scores_each_pixel_before_the_blur():
    head = ScoringHead((32, 48), "additive", 0.0, position_norm=True)
    mean, std = torch.rand(1, 1, 32, 48), torch.rand(1, 1, 32, 48) + 0.5
    head.position_mean.copy_(mean)
    head.position_std.copy_(std)
    t = [[torch.rand(2, 8, 8, 12)], [torch.rand(2, 16, 2, 3)]]
    s = [[torch.rand(2, 8, 8, 12)], [torch.rand(2, 16, 2, 3)]]
    amap, score = head(t, s)
    expected = (head.fuse(head.pair_maps(t, s)) - mean) / std
    assert torch.allclose(amap, expected, atol=1e-6)
    assert torch.allclose(score, expected.flatten(1).amax(1), atol=1e-6)


def test_position_statistics_are_smoothed_and_the_spread_floored():
    cfg = load_config("edge", overrides={"input": {"height": 64, "width": 96}})
    model = DualKD(cfg, teacher_weights=False)
    assert model.head.position_norm and model.head.position_std.shape == (1, 1, 64, 96)
    mean = torch.zeros(1, 1, 64, 96)
    mean[0, 0, 32, 48] = 1.0                      # an impulse comes out blurred
    std = torch.ones(1, 1, 64, 96)
    std[0, 0, :, :10] = 0.0                       # a band where every good image looked the same
    model.set_position_statistics(mean, std)
    assert torch.allclose(model.head.position_mean, model.head.blur(mean))
    assert float(model.head.position_mean.max()) < 0.5
    assert float(model.head.position_std.min()) >= 0.1 * float(model.head.blur(std).median()) - 1e-7
    with pytest.raises(EdgeADError, match="degenerate"):
        model.set_position_statistics(mean, torch.zeros(1, 1, 64, 96))


def test_dual_model_shapes_and_frozen_teachers():
    cfg = load_config("edge", overrides={"input": {"height": 64, "width": 96}})
    cfg.pairs[1].student.init = "teacher"          # as the paper's B0 student
    model = DualKD(cfg)
    # The deep student starts as an exact copy of its teacher.
    deep = model.pairs[1]
    for (k1, v1), (k2, v2) in zip(deep.teacher.state_dict().items(), deep.student.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    model.train()
    assert all(not p.teacher.training for p in model.pairs)
    assert all(not q.requires_grad for p in model.pairs for q in p.teacher.parameters())
    x = torch.randn(2, 3, 64, 96)
    t, s = model.teacher_features(x), model.student_features(x)
    for tl, sl in zip(t, s):
        for a, b in zip(tl, sl):
            assert a.shape == b.shape
    model.eval()
    maps, scores = model(x)
    assert maps.shape == (2, 1, 64, 96) and scores.shape == (2,)
    assert np.isfinite(scores.detach().numpy()).all()


def test_pairs_reading_one_teacher_network_share_its_pass_with_identical_features():
    cfg = load_config("edge", overrides={"input": {"height": 64, "width": 96}})
    model = DualKD(cfg).eval()
    assert model.teacher_groups() == [[0, 1]]          # both pairs read EfficientNet-Lite0: one pass
    x = torch.randn(2, 3, 64, 96)
    shared = model.teacher_features(x)
    separate = [p.teacher_features(x) for p in model.pairs]
    for a_layers, b_layers in zip(shared, separate):
        assert len(a_layers) == len(b_layers)
        for a, b in zip(a_layers, b_layers):
            assert torch.equal(a, b)
    # different weights (or another backbone) are never merged
    other = DualKD(cfg, teacher_weights=False)
    assert other.teacher_groups() == [[0], [1]]
