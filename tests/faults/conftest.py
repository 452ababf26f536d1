"""The cross-stage fault suite: `edgead` driven from its command line while real peers stop and
restart, disks fill up and files are cut or edited (helpers and what every test counts: fault_line.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fault_line import Line
from line_parts import good_and_defective


@pytest.fixture(scope="session")
def line(tiny_model: Path, tiny_product: Path, tmp_path_factory: pytest.TempPathFactory) -> Line:
    from edgead.backends import load_detector
    from edgead.decide.record import build_record, write_record
    from edgead.decide.scoring import Scored, engine_info
    from edgead.export.build import build_engine
    from edgead.preprocess import preprocess

    root = tmp_path_factory.mktemp("line")
    engine = root / "engine"
    build_engine(tiny_model, engine, max_batch=4, log=lambda s: None)
    detector = load_detector(engine, "onnxruntime", "fp32")
    images, labels = good_and_defective(tiny_product / "train" / "good")
    spec, info = engine_info(engine, detector)
    scores, _ = detector.infer(np.stack([preprocess(i, spec) for i in images]))
    good, bad = scores[np.array(labels) == 0], scores[np.array(labels) == 1]
    assert good.max() < bad.min(), "the fault suite's parts must separate for its reject counts to mean anything"
    # a real record, made from good scores spread like the line's; its threshold lies between good and bad
    fake_good = np.random.default_rng(0).normal(float(good.mean()), float(good.std()) + 1e-3, 2000)
    record = build_record(Scored(fake_good, None, []), None, 0.01, "quantile", info, ("faults", None), refits=5)
    assert good.max() < record["threshold"] < bad.min(), (good.max(), record["threshold"], bad.min())
    calibration = write_record(record, root / "calibration.yaml", fake_good)
    return Line(tiny_model, engine, calibration, images, labels, root)
