"""How to spend the demo's 5 minutes: training images x epochs, one full demo per setting.

    python benchmarks/demo_budget.py --out bench-out/demo-budget --runs 110x16 110x24

Each run is `edgead demo` with the synthetic train split sized to N + 50 (50 are held back for
calibration) and E epochs; prints training seconds, image AUROC and the belt's false rejects and
escapes. Runs one after another: never beside anything else on a small box.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import edgead.demo.demo as demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-out/demo-budget")
    ap.add_argument("--runs", nargs="+", default=["110x16", "110x24"], help="TRAINxEPOCHS, e.g. 60x30")
    args = ap.parse_args()
    print("| training images x epochs | training s | image AUROC | good rejected | defective passed |")
    print("| --- | --- | --- | --- | --- |")
    for run in args.runs:
        n, epochs = (int(v) for v in run.split("x"))
        demo.FULL_COUNTS = {**demo.FULL_COUNTS, "n_train": n + demo.CALIB_MIN}
        demo.FULL_EPOCHS = epochs
        out = Path(args.out) / run
        r = demo.run_demo(out, report_dir=out / "report", log=lambda s: None)
        c = r["conveyor"]
        print(f"| {n} x {epochs} | {r['steps_s']['training']:.0f} | {r['evaluation']['image_auroc']:.3f} | "
              f"{c['false_rejects']} / {c['good']} | {c['escapes']} / {c['defective']} |", flush=True)


if __name__ == "__main__":
    main()
