"""Shared fixtures: one tiny synthetic product and one tiny trained model per test session.

Strict peers: with EDGEAD_REQUIRE_PEERS=1 (set by .ci/run) a skipped test fails instead, so a
missing install step (broker, fake camera, browser, codec, stubs) can never hide behind a green
run. Only tests marked `hardware` (a GPU with TensorRT, a real GPIO chip: things CI cannot have)
may still skip there. On a user's machine a skip stays a skip and says what to install.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

TINY = {"height": 64, "width": 64}
REQUIRE_PEERS_ENV = "EDGEAD_REQUIRE_PEERS"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one compute thread each, or torch's spinning OpenMP threads starve the
    # other worker (10-25x slower); set before anything imports torch, and inherited by subprocesses.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def peers_required() -> bool:
    return os.environ.get(REQUIRE_PEERS_ENV, "") not in ("", "0")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hardware: needs hardware CI cannot have (GPU with TensorRT, a GPIO chip); "
                                       f"its skip stays a skip under {REQUIRE_PEERS_ENV}=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With pytest-xdist (`-n 2 --dist loadgroup`), the tests of the one fake GigE camera on the loopback
    GVCP port run on one worker, one after another."""
    for item in items:
        if "fake_gige_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("gige"))


def _skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
        return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason   # 3.8-safe
    return str(longrepr)


def _fail_the_skip(report: Any) -> None:
    report.outcome = "failed"
    report.longrepr = (f"skipped under {REQUIRE_PEERS_ENV}=1, where every peer must be installed: "
                       f"{_skip_reason(report)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if (peers_required() and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("hardware") is None):
        _fail_the_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    outcome = yield
    report = outcome.get_result()
    if peers_required() and report.skipped:      # a module-level skip or importorskip
        _fail_the_skip(report)


@pytest.fixture(scope="session")
def tiny_product(tmp_path_factory) -> Path:
    from edgead.data.synth import generate_product

    root = tmp_path_factory.mktemp("synth")
    return generate_product(root, "washer", seed=3, n_train=16, n_test_good=6, n_test_defect=8, size=(96, 96))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_product) -> Path:
    from edgead.model.config import load_config
    from edgead.training.train import train

    out = tmp_path_factory.mktemp("models") / "tiny"
    cfg = load_config("edge", overrides={"input": TINY, "train": {"epochs": 2, "batch_size": 4, "val_fraction": 0.2}})
    train(tiny_product / "train" / "good", out, cfg, progress=False, log=lambda s: None)
    return out


@pytest.fixture(scope="session")
def tiny_engine(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One engine folder of the tiny model for every module that only reads it (a test that edits an
    engine works on a copy: tests/backends/conftest.py `engine_copy`)."""
    from edgead.export.build import build_engine

    out = tmp_path_factory.mktemp("engines") / "tiny"
    build_engine(tiny_model, out, max_batch=4, log=lambda s: None)
    return out


@pytest.fixture(scope="session")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """110 good washers the tiny model never saw: what a user calibrates with."""
    import cv2

    from edgead.data.synth import render, sample_rng

    out = tmp_path_factory.mktemp("held_out") / "good"
    out.mkdir()
    for i in range(110):
        img = render("washer", sample_rng(3, "washer", "calibration", "good", i), (96, 96)).image
        cv2.imwrite(str(out / f"{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return out


@pytest.fixture(scope="session")
def calibrated(tiny_engine: Path, held_out: Path, tiny_product: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny engine calibrated through the CLI on held_out (target FRR 0.1), the test defects beside."""
    from edgead.cli import main

    out = tmp_path_factory.mktemp("calibration") / "tiny.yaml"
    code = main(["calibrate", "--engine", str(tiny_engine), "--good", str(held_out), "--defects", str(tiny_product),
                 "--target-frr", "0.1", "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outboxes and other state go to a temporary folder, never to the real ~/.local/state/edgead."""
    monkeypatch.setenv("EDGEAD_STATE_DIR", str(tmp_path_factory.mktemp("state")))
