"""Model config limits: an input smaller than the network can see, non-finite and out-of-range numbers
are refused when the config is loaded, naming the key (and --size), before anything is trained."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from edgead.cli import main
from edgead.errors import EdgeADError
from edgead.model.config import PRESETS, ModelConfig, TrainSpec, load_config
from edgead.model.kd import DualKD


def _with(preset: str, h: int, w: int, **top) -> dict:
    data = copy.deepcopy(PRESETS[preset])
    data["input"].update(height=h, width=w)
    data.update(top)
    return data


def _pool8() -> dict:
    data = _with("edge", 256, 256)
    data["pairs"][0]["teacher"]["pool"] = 8
    return data


@pytest.mark.parametrize("data, smallest, why", [
    (_with("edge", 256, 256), 32, "layer stage7 of pairs[1].teacher (efficientnet_lite0) has stride 32"),
    (_with("paper", 256, 256), 32, "layer stage7 of pairs[1].teacher (efficientnet_b0) has stride 32"),
    (_with("edge", 256, 256, blur_sigma=10.0), 41, "blur_sigma 10 blurs over 40 pixels"),
    (_pool8(), 57, "pairs[0].teacher.pool 8 averages the stride-8 map of layer stage3"),
])
def test_smallest_input_comes_from_the_networks_and_runs(data, smallest, why):
    cfg = ModelConfig.from_dict(data)
    assert cfg.min_input_size() == (smallest, why)
    for h, w in ((smallest, smallest), (smallest + 7, smallest + 1)):      # also sizes no stride divides
        sized = copy.deepcopy(data)
        sized["input"].update(height=h, width=w)
        model = DualKD(ModelConfig.from_dict(sized), teacher_weights=False).eval()
        with torch.no_grad():
            amap, score = model(torch.zeros(2, 3, h, w))
        assert amap.shape == (2, 1, h, w) and score.shape == (2,)
    too_small = copy.deepcopy(data)
    too_small["input"].update(height=smallest - 1, width=256)
    with pytest.raises(EdgeADError) as err:
        ModelConfig.from_dict(too_small)
    assert f"'input.height' must be at least {smallest}" in err.value.message
    assert "'input.width'" not in err.value.message and why in err.value.hint


@pytest.mark.parametrize("size, named", [((1, 1), "'input.height' and 'input.width'"), ((64, 16), "'input.width'"),
                                         ((31, 31), "'input.height' and 'input.width'")])
def test_too_small_size_names_the_flag_and_the_keys(size, named):
    with pytest.raises(EdgeADError) as err:
        load_config("edge", overrides={"input": {"height": size[0], "width": size[1]}})
    msg = err.value.message
    assert f"input size {size[0]}x{size[1]} (train --size H W)" in msg and f"{named} must be at least 32" in msg
    assert f"--size {max(size[0], 32)} {max(size[1], 32)}" in err.value.hint


def _cli(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and all(line.startswith(("edgead ", "  hint: ")) for line in err.splitlines())
    return err


def test_train_size_1_1_is_refused_before_anything_is_built(tmp_path, capsys, monkeypatch):
    import edgead.training.train as tr

    monkeypatch.setattr(tr, "train", lambda *a, **k: pytest.fail("training started"))
    err = _cli(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--size", "1", "1"], capsys)
    assert "error: config: input size 1x1 (train --size H W) is too small" in err and "--size 32 32" in err
    assert not (tmp_path / "m").exists()


FLOATS = [f.name for f in dataclasses.fields(TrainSpec) if f.type in (float, "float")]


def test_every_float_of_the_train_section_is_checked():
    assert set(FLOATS) == {"lr", "weight_decay", "val_fraction", "norm_quantile_low", "norm_quantile_high",
                           "bn_frozen_fraction"}


@pytest.mark.parametrize("key", FLOATS)
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_train_floats_are_refused_naming_the_key(tmp_path, key, value):
    f = tmp_path / "c.yaml"
    f.write_text(f"train: {{{key}: {value}}}\n")
    with pytest.raises(EdgeADError) as err:
        load_config("edge", f)
    assert f"'train.{key}' has a bad value" in err.value.message


@pytest.mark.parametrize("text, needle", [
    ("trian: {epochs: 3}\n", "unknown key 'config.trian'"),
    ("train: {epoch: 3}\n", "unknown key 'train.epoch'"),
    ("train: {epochs: many}\n", "'train.epochs' has a bad value"),
    ("fusion: sum\n", "'fusion' has a bad value"),
    ("train: {bn_frozen_fraction: 1.0}\n", "'train.bn_frozen_fraction' has a bad value"),
    ("position_norm: 1\n", "'position_norm' has a bad value"),
    ("input: {heigth: 100}\n", "heigth"),
    ("train: {lr: 0}\n", "'train.lr' has a bad value 0"),
    ("train: {lr: -0.1}\n", "'train.lr' has a bad value -0.1"),
    ("train: {weight_decay: -1e-5}\n", "'train.weight_decay' has a bad value"),
    ("train: {epochs: 0}\n", "'train.epochs' has a bad value 0"),
    ("train: {batch_size: 0}\n", "'train.batch_size' has a bad value 0"),
    ("train: {val_fraction: 0.5}\n", "'train.val_fraction' has a bad value 0.5"),
    ("train: {seed: -1}\n", "'train.seed' has a bad value -1"),
    ("train: {norm_quantile_high: 1.5}\n", "'train.norm_quantile_high' has a bad value 1.5"),
    ("train: {norm_quantile_low: -0.1}\n", "'train.norm_quantile_low' has a bad value"),
    ("train: {norm_quantile_low: 0.995, norm_quantile_high: 0.9}\n",
     "'train.norm_quantile_low' (0.995) must be below 'train.norm_quantile_high' (0.9)"),
    ("blur_sigma: .nan\n", "'blur_sigma' has a bad value nan"),
    ("blur_sigma: .inf\n", "'blur_sigma' has a bad value inf"),
    ("blur_sigma: -1\n", "'blur_sigma' has a bad value -1"),
    ("input: {std: [.nan, 0.5, 0.5]}\n", "'input.std' has a bad value [nan, 0.5, 0.5]"),
    ("input: {mean: [0.5, .inf, 0.5]}\n", "'input.mean' has a bad value [0.5, inf, 0.5]"),
    ("fusion: [additive]\n", "'fusion' has a bad value"),
])
def test_bad_keys_and_out_of_range_values_are_refused_naming_the_key(tmp_path, text, needle):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(EdgeADError) as err:
        load_config("edge", f)
    assert needle in err.value.message, err.value.message
    assert err.value.hint


def test_lr_nan_via_cli_is_one_message(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("train: {lr: .nan}\n")
    err = _cli(["train", "--config", str(f), "--data", str(tmp_path), "--out", str(tmp_path / "m")], capsys)
    assert "error: config: 'train.lr' has a bad value nan" in err and not (tmp_path / "m").exists()


def test_unknown_layer_and_stride_mismatch_are_named_at_load():
    data = copy.deepcopy(PRESETS["edge"])
    data["pairs"][1]["teacher"]["layers"] = ["stage5", "stage9"]
    with pytest.raises(EdgeADError, match=r"'pairs\[1\].teacher': unknown layer 'stage9'"):
        ModelConfig.from_dict(data)
    data = copy.deepcopy(PRESETS["edge"])
    data["pairs"][0]["teacher"]["layers"] = ["stage2", "stage4"]
    with pytest.raises(EdgeADError, match=r"pairs\[0\]: the student layers .* have strides \[4, 8\] but the teacher "
                                          r"layers .* have \[4, 16\]"):
        ModelConfig.from_dict(data)
