"""Training and evaluation end to end on a tiny synthetic product, and their error messages."""

import json
import shutil

import numpy as np
import pytest
import torch

from edgead.cli import main
from edgead.model.config import load_config
from edgead.errors import EdgeADError
from edgead.model.artifact import load_model
from edgead.training.train import train
from tests.conftest import TINY


def test_model_artifact_is_complete(tiny_model):
    meta = json.loads((tiny_model / "metadata.json").read_text())
    assert (tiny_model / "config.yaml").is_file() and (tiny_model / "students.pt").is_file()
    assert len(meta["data"]["fingerprint"]) == 64 and meta["data"]["n_images"] == 16
    assert meta["training"]["epochs_done"] == 2 and 1 <= meta["training"]["best_epoch"] <= 2
    low, high = meta["normalisation"]["low"], meta["normalisation"]["high"]
    assert all(h > lo for lo, h in zip(low, high))
    assert meta["val_good_scores"]["n"] >= 2
    # Students load with weights_only and reproduce the stored normalisation.
    model, _ = load_model(tiny_model)
    assert torch.allclose(model.head.norm_high, torch.tensor(high))
    assert not (tiny_model / "checkpoint" / "last.pt").stat().st_size == 0
    # The edge preset z-scores the fused map per pixel with statistics of the good images.
    assert model.head.position_norm and model.head.position_mean.shape == (1, 1, *model.head.out_hw)
    assert float(model.head.position_std.min()) > 0 and float(model.head.position_mean.abs().max()) > 0


def test_training_is_seeded(tiny_product, tmp_path):
    cfg = load_config("edge", overrides={"input": TINY, "train": {"epochs": 1, "batch_size": 4}})
    runs = []
    for name in ("a", "b"):
        train(tiny_product / "train" / "good", tmp_path / name, cfg, progress=False, log=lambda s: None)
        runs.append(json.loads((tmp_path / name / "metadata.json").read_text()))
    assert runs[0]["training"]["history"] == runs[1]["training"]["history"]


def _interrupt_at_second_validation(monkeypatch):
    import edgead.training.train as tr

    calls = {"n": 0}
    real = tr._val_loss

    def val_then_interrupt(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tr, "_val_loss", val_then_interrupt)


def test_interrupt_then_resume(tiny_product, tmp_path, monkeypatch):
    good = tiny_product / "train" / "good"
    cfg = load_config("edge", overrides={"input": TINY, "train": {"epochs": 2, "batch_size": 4}})
    out = tmp_path / "m"
    with monkeypatch.context() as m:
        _interrupt_at_second_validation(m)
        result = train(good, out, cfg, progress=False, log=lambda s: None)
    # Ctrl-C during epoch 2: a usable model from epoch 1 and a checkpoint to resume from.
    assert result.interrupted and result.epochs_done == 1
    model, meta = load_model(out)
    assert meta["training"]["interrupted"] is True
    with pytest.raises(EdgeADError, match="already holds a trained model"):
        train(good, out, cfg, progress=False, log=lambda s: None)
    other = load_config("edge", overrides={"input": TINY, "train": {"epochs": 3, "batch_size": 4}})
    with pytest.raises(EdgeADError, match="another config"):
        train(good, out, other, resume=True, progress=False, log=lambda s: None)
    result = train(good, out, cfg, resume=True, progress=False, log=lambda s: None)
    assert result.epochs_done == 2 and not result.interrupted
    assert [h["epoch"] for h in result.metadata["training"]["history"]] == [1, 2]


def test_last_epochs_train_with_frozen_batchnorm(tiny_product, tmp_path, monkeypatch):
    """Epochs 2 and 3 of 3 normalise with statistics re-estimated once before epoch 2: the students'
    weights still learn, their BatchNorm statistics stay put, and the model keeps those statistics."""
    import edgead.training.train as tr

    cfg = load_config("edge", overrides={"input": TINY, "train": {"epochs": 3, "batch_size": 4,
                                                                   "bn_frozen_fraction": 0.67}})
    assert tr.bn_frozen_from(cfg) == 1
    seen = []
    real = tr._val_loss

    def snapshot(model, *a, **k):
        bn = next(m for m in model.pairs[1].student.modules() if isinstance(m, torch.nn.BatchNorm2d))
        conv = next(m for m in model.pairs[1].student.modules() if isinstance(m, torch.nn.Conv2d))
        seen.append((bn.running_mean.clone(), conv.weight.detach().clone()))
        return real(model, *a, **k)

    monkeypatch.setattr(tr, "_val_loss", snapshot)
    result = train(tiny_product / "train" / "good", tmp_path / "m", cfg, progress=False, log=lambda s: None)
    (stats1, w1), (stats2, w2), (stats3, w3) = seen
    assert not torch.equal(stats1, stats2)             # re-estimated when freezing
    assert torch.equal(stats2, stats3)                 # frozen during epochs 2-3
    assert not torch.equal(w2, w3)                     # while the weights kept learning
    model, _ = load_model(tmp_path / "m")
    final = next(m for m in model.pairs[1].student.modules() if isinstance(m, torch.nn.BatchNorm2d))
    if result.best_epoch >= 2:
        assert torch.equal(final.running_mean, stats3)


def test_eval_reports_metrics_and_figures(tiny_model, tiny_product, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_model), "--data", str(tiny_product), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= report[key] <= 1.0
    assert report["n_good"] == 6 and report["n_defect"] == 8
    assert set(report["per_type"]) and "good" not in report["per_type"]
    for fig in ("roc.png", "scores.png", "heatmaps.png"):
        assert (tmp_path / fig).stat().st_size > 1000
    assert "image AUROC" in capsys.readouterr().out


def _cli_error(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    return err


def test_train_errors_are_one_clear_message(tmp_path, capsys, tiny_product):
    err = _cli_error(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m")], capsys)
    assert "missing" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _cli_error(["train", "--data", str(empty), "--out", str(tmp_path / "m")], capsys)
    assert "hint:" in err
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted((tiny_product / "train" / "good").iterdir())[:5]:
        shutil.copy(p, few / p.name)
    err = _cli_error(["train", "--data", str(few), "--out", str(tmp_path / "m")], capsys)
    assert f"error: only 5 images found in {few}, need at least 10\n" in err and "hint:" in err


def test_corrupt_image_is_named_and_skip_bad_counts_it(tmp_path, capsys, tiny_product):
    good = tmp_path / "good"
    shutil.copytree(tiny_product / "train" / "good", good)
    (good / "zz_broken.png").write_bytes(b"not a png at all")
    err = _cli_error(["train", "--data", str(good), "--out", str(tmp_path / "m"), "--size", "64", "64",
                      "--epochs", "1", "--no-progress"], capsys)
    assert "zz_broken.png" in err and "--skip-bad" in err
    code = main(["train", "--data", str(good), "--out", str(tmp_path / "m"), "--size", "64", "64",
                 "--epochs", "1", "--batch-size", "4", "--no-progress", "--skip-bad"])
    assert code == 0
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["data"]["n_images"] == 16 and meta["data"]["skipped"][0].endswith("zz_broken.png")


def test_config_typo_via_cli(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("train: {epohcs: 3}\n")
    err = _cli_error(["train", "--config", str(f), "--print-config"], capsys)
    assert "train.epohcs" in err


def test_eval_on_missing_model(tmp_path, capsys, tiny_product):
    err = _cli_error(["eval", "--model", str(tmp_path / "nomodel"), "--data", str(tiny_product)], capsys)
    assert f"error: --model {tmp_path / 'nomodel'} does not exist" in err


def test_help_lists_verbs(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for verb in ("synth", "train", "eval", "demo"):
        assert verb in out


def test_print_config_shows_the_resolved_config_and_trains_nothing(tmp_path, capsys):
    import yaml

    f = tmp_path / "c.yaml"
    f.write_text("train: {epochs: 7}\n")
    assert main(["train", "--config", str(f), "--size", "48", "80", "--fusion", "max", "--batch-size", "3",
                 "--print-config", "--out", str(tmp_path / "m")]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["preset"] == "edge" and cfg["fusion"] == "max" and cfg["position_norm"] is True
    assert (cfg["input"]["height"], cfg["input"]["width"]) == (48, 80)
    assert cfg["train"]["epochs"] == 7 and cfg["train"]["batch_size"] == 3
    assert [p["teacher"]["arch"] for p in cfg["pairs"]] == ["efficientnet_lite0", "efficientnet_lite0"]
    assert not (tmp_path / "m").exists()
    assert main(["train", "--preset", "paper", "--print-config"]) == 0
    paper = yaml.safe_load(capsys.readouterr().out)
    assert paper["fusion"] == "multiplicative" and paper["pairs"][0]["teacher"]["arch"] == "resnet18"
