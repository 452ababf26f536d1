"""Calibration on train/good only, checked on the test split: the thresholds chosen for a target
false-reject rate of 1 % and 0.1 %, and the false-reject and escape rates they really give.

    python benchmarks/calibration.py --models bench-out/acc-synth100/models --data bench-out/acc-synth100/data
    python benchmarks/calibration.py --models bench-out/acc-bs/models --data ../shared/data

`--evt-guard` is the synthetic study behind the EVT guard's settings (thresholds.EVT_MIN_SHAPE,
EVT_MAX_AD): per law and sample size, how often the guard flags the EVT fit and why, what the EVT
threshold's true false-reject rate is against the target for kept and for flagged fits, and the
share of false alarms of the A^2 bound on true generalised Pareto draws:

    python benchmarks/calibration.py --evt-guard --reps 100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgead.decide import thresholds as T
from edgead.backends import load_detector
from edgead.export.build import build_engine
from edgead.decide.scoring import engine_info, score_images
from edgead.data.images import list_images
from edgead.data.mvtec import test_samples


class _Mixture:
    """Good parts with a cluster of high scorers: no single smooth tail."""

    def __init__(self, parts: list[tuple[float, Any]]) -> None:
        self.parts = parts

    def rvs(self, size: int, random_state: np.random.Generator) -> np.ndarray:
        k = random_state.choice(len(self.parts), size=size, p=[w for w, _ in self.parts])
        out = np.empty(size)
        for i, (_, law) in enumerate(self.parts):
            out[k == i] = law.rvs(size=int((k == i).sum()), random_state=random_state)
        return out

    def sf(self, x: float) -> float:
        return float(sum(w * law.sf(x) for w, law in self.parts))


def _guard_laws() -> dict[str, Any]:
    from scipy import stats

    return {"normal": stats.norm(), "gamma(2)": stats.gamma(2), "exponential": stats.expon(),
            "lomax(3)": stats.lomax(3), "t(3)": stats.t(3), "lomax(1)": stats.lomax(1.0),
            "uniform": stats.uniform(), "beta(5,1)": stats.beta(5, 1),
            "normal+3%@5": _Mixture([(0.97, stats.norm()), (0.03, stats.norm(5, 0.3))]),
            "normal+7%@3.5": _Mixture([(0.93, stats.norm()), (0.07, stats.norm(3.5, 0.2))])}


def _gpd_null(reps: int) -> None:
    """A^2 of fits on true GPD draws (shape in [-0.5, 1]) whose fitted shape is in range: the false alarms."""
    from scipy.stats import genpareto

    print("\nA^2 under the null (GPD draws, fitted shape >= -0.5): share above EVT_MAX_AD, 99th percentile")
    print("| tail points | " + " | ".join(f"shape {x:+.2f}" for x in (-0.5, -0.25, 0.0, 0.25, 0.5, 1.0)) + " |")
    print("| --- " * 7 + "|")
    for m in (20, 50, 200, 1000):
        cells = []
        for xi in (-0.5, -0.25, 0.0, 0.25, 0.5, 1.0):
            a2 = []
            for r in range(reps):
                x = genpareto.rvs(xi, scale=1.0, size=m, random_state=np.random.default_rng(r))
                c, _, sc = genpareto.fit(x, floc=0)
                if c >= T.EVT_MIN_SHAPE:
                    a2.append(T.anderson_darling(x, float(c), float(sc)))
            cells.append(f"{np.mean(np.array(a2) > T.EVT_MAX_AD):.1%}, {np.quantile(a2, 0.99):.2f}")
        print(f"| {m} | " + " | ".join(cells) + " |", flush=True)


def evt_guard_study(reps: int, sizes: tuple[int, ...] = (50, 100, 300, 1000), extrapolation: float = 10.0) -> None:
    """The guard on synthetic draws at target 1 / (extrapolation * n): what it flags, and what EVT would have
    given there (true FRR / target at the EVT threshold, flagged fits against kept ones)."""
    print(f"target 1 / ({extrapolation:g} n); true/target: the law's survival at the EVT threshold / target")
    print("| law | n | shape < -0.5 | A^2 > 2.5 | other | EVT kept: true/target median [90%] | "
          "flagged: true/target median [90%] |")
    print("| --- " * 7 + "|")
    for name, law in _guard_laws().items():
        for n in sizes:
            target = 1.0 / (extrapolation * n)
            why: dict[str, int] = {"shape": 0, "A^2": 0, "other": 0}
            kept, flagged = [], []
            for r in range(reps):
                s = law.rvs(size=n, random_state=np.random.default_rng(r))
                fit = T.evt_fit(s)
                t = T.evt_threshold(fit, target)
                problem = T.evt_problem(s, fit, t, target)
                (kept if problem is None else flagged).append(law.sf(t) / target)
                if problem is not None:
                    why["shape" if "tail shape" in problem else "A^2" if "Anderson" in problem else "other"] += 1
            cell = lambda v: f"{np.median(v):.2f} [{np.quantile(v, 0.9):.2f}]" if v else "-"  # noqa: E731
            print(f"| {name} | {n} | " + " | ".join(f"{why[k] / reps:.0%}" for k in why)
                  + f" | {cell(kept)} | {cell(flagged)} |", flush=True)
    _gpd_null(reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="folder of models named <dataset>-<preset>")
    ap.add_argument("--data", help="folder holding the MVTec-layout datasets")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.01, 0.001])
    ap.add_argument("--out", default="bench-out/calibration")
    ap.add_argument("--evt-guard", action="store_true", help="the EVT guard's synthetic study instead")
    ap.add_argument("--reps", type=int, default=100, help="--evt-guard: draws per law and size")
    args = ap.parse_args()
    if args.evt_guard:
        evt_guard_study(args.reps)
        return
    if not (args.models and args.data):
        ap.error("--models and --data are required (or --evt-guard)")
    rows = []
    for model_dir in sorted(Path(args.models).iterdir()):
        dataset = model_dir.name.rsplit("-", 1)[0]
        root = Path(args.data) / dataset
        if not (model_dir / "metadata.json").is_file() or not root.is_dir():
            continue
        engine = Path(args.out) / "engines" / model_dir.name
        build_engine(model_dir, engine, max_batch=8, log=lambda s: None, overwrite=True)
        det = load_detector(engine, "onnxruntime", "fp32")
        spec, _ = engine_info(engine, det)
        train = score_images(det, spec, list_images(root / "train" / "good")).scores
        samples = test_samples(root)
        test = score_images(det, spec, [s.path for s in samples]).scores
        labels = np.array([s.label for s in samples])
        for target in args.targets:
            r = T.calibrate_threshold(train, target, "auto")
            t = r.threshold
            frr = float((test[labels == 0] > t).mean())
            esc = float((test[labels == 1] <= t).mean())
            rows.append({"dataset": dataset, "n_calib": int(train.size), "target": target, "method": r.method,
                         "threshold": t, "expected_frr": r.expected_frr,
                         "interval": list(r.expected_frr_interval), "test_frr": frr,
                         "test_good": int((labels == 0).sum()), "escape": esc, "test_defects": int((labels == 1).sum())})
            print(json.dumps(rows[-1]), flush=True)
    lines = ["| dataset | calibration images (train/good) | target FRR | method | threshold | expected FRR [95% interval] | "
             "test FRR (good rejected) | test escape rate (defects passed) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['n_calib']} | {r['target']:.1%} | {r['method']} | {r['threshold']:.4g} | "
                     f"{r['expected_frr']:.2%} [{r['interval'][0]:.2%}, {r['interval'][1]:.2%}] | "
                     f"{r['test_frr']:.1%} of {r['test_good']} | {r['escape']:.1%} of {r['test_defects']} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
