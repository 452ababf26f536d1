"""`edgead train` keeps the training images' aspect ratio at the preset's pixel count unless --size is given."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgead.cli import _fixed_size, main
from edgead.errors import EdgeADError
from edgead.training.input_size import auto_size, median_aspect


@pytest.mark.parametrize("aspect, expected", [(1.0, (256, 256)), (2.5, (160, 416)), (0.4, (416, 160)),
                                              (16.0, (64, 1024))])
def test_the_aspect_is_kept_at_the_pixel_budget_in_multiples_of_32(aspect, expected):
    h, w = auto_size(aspect, 256 * 256, smallest=32)
    assert (h, w) == expected and h % 32 == w % 32 == 0
    assert abs(h * w / 65536 - 1) < 0.1 and abs(w / h / aspect - 1) < 0.12


def test_the_short_side_never_falls_below_the_models_minimum():
    assert auto_size(40.0, 256 * 256, smallest=70) == (96, 3840)


def test_the_median_aspect_reads_the_images(tmp_path):
    for i, (h, w) in enumerate([(100, 250), (100, 260), (100, 240), (90, 400), (120, 100)]):
        cv2.imwrite(str(tmp_path / f"p{i}.png"), np.zeros((h, w, 3), np.uint8))
    assert median_aspect(sorted(tmp_path.iterdir())) == pytest.approx(2.5)


def test_size_flag_parsing():
    assert _fixed_size(None) is None and _fixed_size(["auto"]) is None
    assert _fixed_size(["256", "640"]) == (256, 640)
    for bad in (["256"], ["auto", "3"], ["a", "b"], ["1", "2", "3"]):
        with pytest.raises(EdgeADError, match="expected two whole numbers H W, or auto"):
            _fixed_size(bad)


def test_train_without_size_uses_the_images_aspect(tmp_path, capsys):
    data = tmp_path / "good"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        cv2.imwrite(str(data / f"p{i}.png"), rng.integers(0, 255, (64, 160, 3), dtype=np.uint8))
    (tmp_path / "small.yaml").write_text("input: {height: 64, width: 64}\n")
    args = ["train", "--data", str(data), "--out", str(tmp_path / "m"), "--config", str(tmp_path / "small.yaml"),
            "--epochs", "1", "--batch-size", "4", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "input 32x96: the training images' median aspect 2.50 at about 4096 pixels" in out, out
    import yaml

    cfg = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
    assert (cfg["input"]["height"], cfg["input"]["width"]) == (32, 96)


def test_a_step_budget_sets_the_epochs_for_the_data_set():
    from edgead.model.config import load_config
    from edgead.training.train import epochs_for_budget

    logs: list[str] = []
    cfg = load_config("edge", overrides={"train": {"steps": 700}})
    assert epochs_for_budget(cfg, 23, logs.append).train.epochs == 31          # 31 x 23 >= 700 > 30 x 23
    assert epochs_for_budget(cfg, 2000, logs.append).train.epochs == 1
    assert logs == ["train.steps 700: 31 epochs of 23 steps", "train.steps 700: 1 epochs of 2000 steps"]
    plain = load_config("edge")
    assert epochs_for_budget(plain, 23, logs.append) is plain
    with pytest.raises(EdgeADError, match="'train.steps'"):
        load_config("edge", overrides={"train": {"steps": 0}})
