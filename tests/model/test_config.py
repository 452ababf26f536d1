"""Model config: presets resolve, user YAML merges, typos and bad values are named errors."""

import pytest

from edgead.model.config import PRESETS, ModelConfig, load_config
from edgead.errors import EdgeADError


def test_presets_resolve_and_round_trip():
    for name in PRESETS:
        cfg = load_config(name)
        assert cfg.preset == name
        assert len(cfg.pairs) == 2
        again = type(cfg).from_dict(cfg.to_dict())
        assert again.to_dict() == cfg.to_dict()


def test_default_preset_is_edge():
    assert load_config().preset == "edge"


def test_user_yaml_merges_nested_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("input: {height: 128, width: 320}\ntrain: {epochs: 3}\nfusion: additive\n")
    cfg = load_config("edge", f)
    assert (cfg.input.height, cfg.input.width) == (128, 320)
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 8
    assert cfg.fusion == "additive"


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(EdgeADError, match="config file .*nope.yaml does not exist"):
        load_config("edge", tmp_path / "nope.yaml")
    f = tmp_path / "bad.yaml"
    f.write_text("train: [epochs: 3\n")
    with pytest.raises(EdgeADError, match="not valid YAML"):
        load_config("edge", f)


def test_unknown_preset():
    with pytest.raises(EdgeADError, match="unknown preset 'fast'"):
        load_config("fast")


def test_student_init_from_teacher_needs_same_arch():
    with pytest.raises(EdgeADError, match="init' is 'teacher'"):
        load_config("edge", overrides={"pairs": [PRESETS["edge"]["pairs"][0], {
            "name": "deep", "teacher": {"arch": "efficientnet_lite0", "layers": ["stage5"]},
            "student": {"arch": "reduced_resnet18", "layers": ["layer3"], "init": "teacher"}}]})


def test_models_trained_before_position_norm_still_load_without_it():
    data = load_config("edge").to_dict()
    assert data.pop("position_norm") is True
    assert ModelConfig.from_dict(data).position_norm is False
    assert load_config("paper").position_norm is False      # the reference method as published
