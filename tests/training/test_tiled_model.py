"""A tiled model end to end through the CLI: trained on the images' native size in tiles, evaluated on
whole-input maps, exported to engines that take the whole image and match Torch, calibrated, and run
on the line, where every part's decision is the engine's score against the threshold."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from edgead.cli import main

SIZE = (96, 160)


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgead.data.synth import generate_product

    root = tmp_path_factory.mktemp("tiled")
    product = generate_product(root / "data", "washer", seed=4, n_train=16, n_test_good=4, n_test_defect=4, size=SIZE)
    assert main(["train", "--data", str(product), "--out", str(root / "model"), "--tile", "64", "64", "--epochs", "1",
                 "--batch-size", "8", "--no-progress"]) == 0
    assert main(["build-engine", "--model", str(root / "model"), "--out", str(root / "engine")]) == 0
    return {"root": root, "product": product, "model": root / "model", "engine": root / "engine"}


def test_training_takes_the_native_size_in_tiles_and_eval_scores_whole_inputs(tiled, tmp_path, capsys):
    from edgead.model.artifact import load_model

    model, _ = load_model(tiled["model"])
    assert (model.cfg.input.height, model.cfg.input.width) == SIZE and model.cfg.net_hw == (64, 64)
    assert model.tiler is not None and model.tiler.count == 8
    # The edge preset's per-position statistics are of the whole input (its borders), not of a tile.
    assert model.head.position_norm and model.head.position_mean.shape == (1, 1, *SIZE)
    meta = json.loads((tiled["model"] / "metadata.json").read_text())
    assert meta["data"]["n_train"] + meta["data"]["n_val"] == 16        # images, not tiles
    assert main(["eval", "--model", str(tiled["model"]), "--data", str(tiled["product"]), "--out", str(tmp_path)]) == 0
    assert "pixel AUROC" in capsys.readouterr().out


def test_every_engine_takes_the_whole_image_and_matches_torch(tiled):
    from edgead.backends import load_detector
    from edgead.data.images import load_batch
    from edgead.model.artifact import load_model

    manifest = json.loads((tiled["engine"] / "manifest.json").read_text())
    assert manifest["input"]["shape"] == ["batch", 3, *SIZE] and manifest["map_size"] == list(SIZE)
    model, _ = load_model(tiled["model"])
    x, _, _ = load_batch(sorted(tiled["product"].glob("test/*/*.png")), model.cfg.input)
    with torch.no_grad():
        amap, score = model(torch.from_numpy(x))
    for backend, precision, tol in (("onnxruntime", "fp32", 1e-4), ("openvino", "fp32", 1e-4),
                                    ("onnxruntime", "fp16", 0.05)):
        scores, maps = load_detector(tiled["engine"], backend=backend, precision=precision).infer(x)
        assert maps.shape == (len(x), *SIZE)
        assert np.allclose(scores, score.numpy(), atol=tol * max(1.0, float(score.abs().max()))), backend
    from edgead.backends.reference import TorchDetector

    scores, maps = TorchDetector(tiled["model"], precision="fp16").infer(x)     # the FP16 reference, tiled too
    assert maps.shape == (len(x), *SIZE) and np.allclose(scores, score.numpy(), atol=0.05 * float(score.abs().max()))


def test_calibrate_and_run_on_the_line_decide_by_the_engines_score(tiled, tmp_path):
    from edgead.backends import load_detector
    from edgead.data.synth import render, sample_rng
    from edgead.decide.record import decide, read_calibration
    from edgead.preprocess import preprocess
    from edgead.backends.manifest import engine_preprocessing

    good = tmp_path / "good"
    good.mkdir()
    for i in range(50):
        img = render("washer", sample_rng(4, "washer", "calibration", "good", i), SIZE).image
        cv2.imwrite(str(good / f"{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    record = tmp_path / "tiled.yaml"
    assert main(["calibrate", "--engine", str(tiled["engine"]), "--good", str(good), "--target-frr", "0.1",
                 "--out", str(record)]) == 0
    rule = read_calibration(record)

    parts = sorted(tiled["product"].glob("test/*/*.png"))
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, p in enumerate(parts):
        (frames / f"{i:03d}.png").write_bytes(p.read_bytes())
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump({"engine": str(tiled["engine"]), "calibration": str(record),
                                        "camera": str(frames), "deadline_ms": 5000,
                                        "outputs": [{"type": "log", "path": str(tmp_path / "out.jsonl")}]}))
    assert main(["run", "--config", str(run_yaml)]) == 0
    events = sorted((json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines() if '"seq"' in x),
                    key=lambda d: d["seq"])
    assert len(events) == len(parts)
    det, spec = load_detector(tiled["engine"]), engine_preprocessing(tiled["engine"])
    for event, path in zip(events, parts):
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        scores, maps = det.infer(preprocess(image, spec)[None])
        assert event["score"] == pytest.approx(float(scores[0]), rel=1e-4, abs=1e-4)
        assert event["decision"] == ("reject" if decide(float(scores[0]), maps[0], rule) else "pass")
