"""Shared fixtures: one tiny synthetic product and one tiny trained model per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = {"height": 64, "width": 64}


@pytest.fixture(scope="session")
def tiny_product(tmp_path_factory) -> Path:
    from edgead.data.synth import generate_product

    root = tmp_path_factory.mktemp("synth")
    return generate_product(root, "washer", seed=3, n_train=16, n_test_good=6, n_test_defect=8, size=(96, 96))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_product) -> Path:
    from edgead.config import load_config
    from edgead.train import train

    out = tmp_path_factory.mktemp("models") / "tiny"
    cfg = load_config("edge", overrides={"input": TINY, "train": {"epochs": 2, "batch_size": 4, "val_fraction": 0.2}})
    train(tiny_product / "train" / "good", out, cfg, progress=False, log=lambda s: None)
    return out
