"""`edgead demo`: the whole story on a synthetic product, on a CPU, offline.

Generates a product (good parts for training, good and defective parts for testing), trains the
default preset, evaluates it and prints the metrics with the time each step took.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgead.config import load_config
from edgead.errors import EdgeADError

DEMO_CATEGORY = "washer"


def _step(name: str, timings: dict[str, float], start: float) -> None:
    timings[name] = round(time.perf_counter() - start, 1)
    print(f"[demo] {name}: {timings[name]:.1f} s")


def run_demo(out: Path, quick: bool = False, data: str | None = None, epochs: int | None = None,
             seed: int = 0) -> dict[str, Any]:
    from edgead.cli import print_metrics
    from edgead.data.mvtec import is_mvtec_root
    from edgead.data.synth import generate_product
    from edgead.evaluate import evaluate
    from edgead.train import train

    out = Path(out)
    timings: dict[str, float] = {}
    if data is None:
        t0 = time.perf_counter()
        counts = dict(n_train=40, n_test_good=12, n_test_defect=18) if quick else {}
        size = (128, 128) if quick else (256, 256)
        root = generate_product(out / "data", DEMO_CATEGORY, seed, size=size, **counts)
        _step("synthetic product", timings, t0)
    else:
        root = Path(data)
        if not is_mvtec_root(root):
            raise EdgeADError(f"{root} is not an MVTec-layout category (train/good and test/ are needed)",
                              "see README: 'Your own images'")
    overrides: dict[str, Any] = {"train": {"epochs": epochs or (4 if quick else 30), "seed": seed}}
    if quick:
        overrides["input"] = {"height": 128, "width": 128}
    cfg = load_config(None, None, overrides)
    t0 = time.perf_counter()
    train(root / "train" / "good", out / "model", cfg, overwrite=True)
    _step("training", timings, t0)
    t0 = time.perf_counter()
    result = evaluate(out / "model", root, out / "eval")
    _step("evaluation", timings, t0)
    print_metrics(result)
    result["timings_s"] = timings
    return result
