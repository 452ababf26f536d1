"""Real-data benchmark: edgead and a PatchCore-style baseline in the same run, one table.

Why: a detector's first test is a user's own parts, and its numbers only mean something beside a
strong method that needs no training, measured on the same images, at the same input size, with the
same preprocessing and timed the same way. For every category, edgead is trained with the chosen
preset (`benchmarks/accuracy.run_one`: `edgead.training.train.train`, then `score_samples` and
`evaluate_predictions`), then the baseline (`benchmarks/patchcore.py`, on the preset's own frozen
teacher) is fitted on the same train/good images and scored on the same test split.

    python benchmarks/real_accuracy.py --out bench-out/real                      # every real category
    python benchmarks/real_accuracy.py --out bench-out/real --synthetic          # + the synthetic products
    python benchmarks/real_accuracy.py --categories bsdata_ball_screw --size-of bsdata_ball_screw=256x640
    python benchmarks/real_accuracy.py --out bench-out/real-quick --max-train 60 --max-test 80 --epochs 5

Categories: every folder of --data-root with train/good (MVTec layout), and synthetic product names
(`edgead.data.synth.CATEGORIES`, generated under --out/data). Defects without a mask (AITEX, ELPV)
count for image AUROC only; pixel AUROC and AUPRO are n/a where no defect has a mask.

Measured the same way for both: train s is the wall time from building the model (teacher weights
loaded) to a usable detector, image reading included (edgead: its training metadata; it trains on
90 % of the good images and keeps 10 % for validation and normalisation, the baseline stores all of
them); ms/image is `score_samples` over the test split, batch 8, on the CPU, image reading included.

results.json gets a row per category and method as soon as it is measured (an interrupted run keeps
what it finished; a rerun skips rows measured with the same settings); table.md is rewritten after
each row.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import run_one  # noqa: E402
from patchcore import DEFAULT_LAYERS, PatchCore, PatchCoreSettings  # noqa: E402

from edgead.data.images import load_batch  # noqa: E402
from edgead.data.mvtec import Sample, good_images, is_mvtec_root, test_samples  # noqa: E402
from edgead.data.synth import CATEGORIES, generate_product  # noqa: E402
from edgead.errors import EdgeADError  # noqa: E402
from edgead.io import atomic_write_json, atomic_write_text  # noqa: E402
from edgead.model.config import DEFAULT_PRESET, ModelConfig, load_config  # noqa: E402
from edgead.training.device import pick_device  # noqa: E402
from edgead.training.evaluate import load_masks, score_samples  # noqa: E402
from edgead.training.metrics import evaluate_predictions  # noqa: E402
from edgead.training.train import split_train_val  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BATCH = 8                       # score_samples' batch for both methods (run_one scores with 8)
METHODS = ("edgead", "baseline")
SHOWN = ("image_auroc", "pixel_auroc", "aupro", "train_s", "ms_per_image")


def real_categories(data_root: Path) -> list[str]:
    """Every MVTec-layout folder (train/good inside) directly under data_root, sorted."""
    if not data_root.is_dir():
        return []
    return sorted(p.name for p in data_root.iterdir() if is_mvtec_root(p))


def stratified(samples: list[Sample], n: int, rng: np.random.Generator) -> list[Sample]:
    """At most n samples, each defect type (good included) keeping its share (largest remainder, at
    least one each when n allows), so a capped test split still has goods and every defect."""
    if n >= len(samples):
        return list(samples)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.defect_type, []).append(i)
    quota = {t: int(n * len(ix) / len(samples)) for t, ix in groups.items()}
    if n >= len(groups):
        quota = {t: max(1, q) for t, q in quota.items()}
        while sum(quota.values()) > n:            # the ones added are taken from the largest share
            quota[max(quota, key=lambda t: quota[t])] -= 1
    rest = sorted(groups, key=lambda t: n * len(groups[t]) / len(samples) - quota[t], reverse=True)
    while sum(quota.values()) < n:
        for t in rest:
            if sum(quota.values()) < n and quota[t] < len(groups[t]):
                quota[t] += 1
    chosen = [i for t, ix in groups.items() for i in rng.choice(ix, size=quota[t], replace=False)]
    return [samples[i] for i in sorted(chosen)]


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(src.resolve())


def subset(root: Path, dest: Path, max_train: int | None, max_test: int | None, seed: int) -> Path:
    """A category folder of symbolic links to a seeded subsample of `root` (train/good capped at
    max_train, the test split stratified down to max_test, masks alongside), so both methods read
    exactly the same files."""
    rng = np.random.default_rng(seed)
    train = good_images(root, min_count=1)
    if max_train is not None and max_train < len(train):
        train = [train[i] for i in sorted(rng.choice(len(train), size=max_train, replace=False))]
    tests = test_samples(root)
    if max_test is not None:
        tests = stratified(tests, max_test, rng)
    if dest.exists():
        shutil.rmtree(dest)
    for p in train:
        _link(p, dest / "train" / "good" / p.name)
    for s in tests:
        _link(s.path, dest / "test" / s.defect_type / s.path.name)
        if s.mask_path is not None:
            _link(s.mask_path, dest / "ground_truth" / s.defect_type / s.mask_path.name)
    return dest


def prepare(name: str, args: argparse.Namespace, out: Path) -> tuple[str, Path, str]:
    """(run name, category root, kind) for a category: a real folder or a generated synthetic one;
    capped by --max-train/--max-test through a linked subset. The run name says which images."""
    if name in CATEGORIES:
        (h, w), counts = args.synth_size, args.synth_counts
        tag = f"synth{h}x{w}-{'-'.join(map(str, counts))}-seed{args.seed}"
        root = generate_product(out / "data" / tag, name, args.seed, n_train=counts[0], n_test_good=counts[1],
                                n_test_defect=counts[2], size=(h, w))
        run_name, kind = f"{name}-{tag}", "synthetic"
    else:
        root = Path(args.data_root) / name
        if not is_mvtec_root(root):
            raise EdgeADError(f"{root} is not an MVTec-layout category (no train/good/)",
                              f"real categories there: {', '.join(real_categories(Path(args.data_root))) or 'none'}; "
                              f"synthetic: {', '.join(CATEGORIES)}")
        run_name, kind = name, "real"
    if args.max_train is not None or args.max_test is not None:
        run_name += f"-train{args.max_train or 'all'}-test{args.max_test or 'all'}-seed{args.seed}"
        root = subset(root, out / "data" / "subsets" / run_name, args.max_train, args.max_test, args.seed)
    return run_name, root, kind


def size_of(text: str) -> tuple[str, tuple[int, int]]:
    """--size-of CATEGORY=HxW -> (category, (H, W))."""
    name, _, hw = text.partition("=")
    h, _, w = hw.lower().partition("x")
    if not (name and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
        raise argparse.ArgumentTypeError(f"expected CATEGORY=HxW (e.g. bsdata_ball_screw=256x640), got {text!r}")
    return name, (int(h), int(w))


def input_size(name: str, args: argparse.Namespace, root: Path | None = None) -> tuple[int, int] | None:
    """--size-of NAME=HxW for this category, else --size, else with --tile the images' native size (what
    `edgead train --tile` does without --size), else with --auto-size the training images' aspect at the
    preset's pixel count (what `edgead train` does without --size), else the preset's (None)."""
    sizes = dict(args.size_of or [])
    if name in sizes:
        return sizes[name]
    if args.size:
        return args.size[0], args.size[1]
    if getattr(args, "tile", None) and root is not None:
        from edgead.training.input_size import native_size

        cfg = load_config(args.preset, args.config, overrides=tile_overrides(args))
        tiled = native_size(cfg, root, log=lambda s: None)
        return tiled.input.height, tiled.input.width
    if getattr(args, "auto_size", False) and root is not None:
        from edgead.training.input_size import auto_size, median_aspect

        cfg = load_config(args.preset, args.config)
        return auto_size(median_aspect(good_images(root, min_count=1)), cfg.input.height * cfg.input.width,
                         cfg.min_input_size()[0])
    return None


def tile_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--tile H W as config overrides (the input the tile's size until the native size replaces it)."""
    if not getattr(args, "tile", None):
        return {}
    th, tw = args.tile
    return {"tile": {"height": th, "width": tw}, "input": {"height": th, "width": tw}}


def steps_per_epoch(n_good: int, cfg: ModelConfig) -> int:
    """Optimiser steps of one epoch on this many good images (after the validation split, at the config's
    batch size; a tiled model's batches are of tiles)."""
    n_train = len(split_train_val(n_good, cfg.train.val_fraction, cfg.train.seed)[0])
    tiles = 1
    if cfg.tile is not None:
        from edgead.model.tile_grid import offsets

        tiles = (len(offsets(cfg.input.height, cfg.tile.height, cfg.tile.overlap))
                 * len(offsets(cfg.input.width, cfg.tile.width, cfg.tile.overlap)))
    return math.ceil(n_train * tiles / cfg.train.batch_size)


def epochs_for_steps(steps: int, n_good: int, cfg: ModelConfig) -> int:
    """Epochs that give at least `steps` optimiser steps on this many good images."""
    return max(1, math.ceil(steps / steps_per_epoch(n_good, cfg)))


def overrides_for(name: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The training overrides of one category: seed, input size, epochs (or steps turned into epochs)."""
    overrides: dict[str, Any] = {"train": {"seed": args.seed}, **tile_overrides(args)}
    size = input_size(name, args, root)
    if size:
        overrides["input"] = {"height": size[0], "width": size[1]}
    if args.epochs:
        overrides["train"]["epochs"] = args.epochs
    elif args.steps:
        cfg = load_config(args.preset, args.config, overrides=overrides)
        overrides["train"]["epochs"] = epochs_for_steps(args.steps, len(good_images(root, min_count=1)), cfg)
    return overrides


def settings_from(args: argparse.Namespace) -> PatchCoreSettings:
    return PatchCoreSettings(layers=tuple(args.layers), bank_size=args.bank_size, coreset=args.coreset,
                             project_dim=args.project_dim, seed=args.seed)


def edgead_row(run_name: str, root: Path, args: argparse.Namespace, out: Path,
               overrides: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate edgead through accuracy.run_one (which keeps a finished model on a rerun)."""
    cfg = load_config(args.preset, args.config, overrides=overrides)
    row = run_one(run_name, root, args.preset, [cfg.fusion], out, overrides, args.config)[0]
    row = {k: v for k, v in row.items() if k not in ("dataset", "preset")}
    if "skipped" not in row:
        row["steps"] = steps_per_epoch(len(good_images(root, min_count=1)), cfg) * cfg.train.epochs
    return row


def baseline_row(root: Path, cfg: ModelConfig, settings: PatchCoreSettings) -> dict[str, Any]:
    """Fit the memory bank on the same train/good images at the same input, score the same test split."""
    start = time.perf_counter()
    try:
        model = PatchCore(cfg, settings, pick_device(None))
        images, _, _ = load_batch(good_images(root), cfg.input, min_side=cfg.min_input_size()[0])
        model.fit(images)
    except EdgeADError as err:
        return {"skipped": str(err)}
    train_s = time.perf_counter() - start
    del images
    model.to("cpu")
    t0 = time.perf_counter()
    kept, scores, maps, _ = score_samples(model, test_samples(root), BATCH, torch.device("cpu"))   # type: ignore[arg-type]
    infer_s = time.perf_counter() - t0
    masks = load_masks(kept, cfg.input)
    report = evaluate_predictions(np.array([s.label for s in kept]), [s.defect_type for s in kept],
                                  scores, maps, masks).to_dict()
    return {"train_s": round(train_s, 1), "ms_per_image": round(1000 * infer_s / len(kept), 1),
            "bank": int(len(model.bank)) if model.bank is not None else 0, **report}


def setup_of(method: str, root: Path, cfg: ModelConfig, args: argparse.Namespace) -> dict[str, Any]:
    """What a row was measured with: a rerun reuses a row only when this is unchanged."""
    tile = f" in {cfg.tile.height}x{cfg.tile.width} tiles" if cfg.tile is not None and method == "edgead" else ""
    setup: dict[str, Any] = {"input": f"{cfg.input.height}x{cfg.input.width}{tile}", "preset": args.preset,
                             "config": args.config, "seed": args.seed,
                             "n_train_good": len(good_images(root, min_count=1)), "n_test": len(test_samples(root))}
    if method == "edgead":
        setup["epochs"] = cfg.train.epochs
    else:
        s = settings_from(args)
        setup.update(layers=list(s.layers), bank_size=s.bank_size, coreset=s.coreset, project_dim=s.project_dim)
    return setup


class Results:
    """results.json as a list of rows, keyed by (category, method, input); saved after every row."""

    def __init__(self, out: Path) -> None:
        self.path = out / "results.json"
        self.rows: list[dict[str, Any]] = json.loads(self.path.read_text()) if self.path.is_file() else []

    def find(self, category: str, method: str, setup: dict[str, Any]) -> dict[str, Any] | None:
        for r in self.rows:
            if r["category"] == category and r["method"] == method and r["setup"] == setup:
                return r
        return None

    def put(self, row: dict[str, Any]) -> None:
        key = (row["category"], row["method"], row["setup"]["input"])
        self.rows = [r for r in self.rows if (r["category"], r["method"], r["setup"]["input"]) != key] + [row]
        atomic_write_json(self.path, self.rows)


def _fmt(v: Any, key: str) -> str:
    """A metric with 3 decimals, a time with 1 (whole seconds from 100 s on); n/a where undefined."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if key == "train_s":
        return f"{v:.0f}" if v >= 100 else f"{v:.1f}"
    return f"{v:.1f}" if key == "ms_per_image" else f"{v:.3f}"


def _diff(edgead: float, baseline: float, key: str) -> str:
    """Metrics: edgead - baseline; times: edgead / baseline."""
    if key in ("train_s", "ms_per_image"):
        return f"x{edgead / baseline:.2f}" if baseline else "n/a"
    return f"{edgead - baseline:+.3f}"


def pairs(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(edgead row, baseline row, shared facts) per category and input, in the order they landed."""
    found: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:        # a tiled edgead row ("448x1120 in 256x256 tiles") sits beside the baseline at 448x1120
        found.setdefault((r["category"], r["setup"]["input"].split(" in ")[0]), {})[r["method"]] = r
    return [(m.get("edgead", {}), m.get("baseline", {}), m.get("edgead", next(iter(m.values()))))
            for m in found.values()]


def mean_lines(rows: list[dict[str, Any]], kind: str) -> list[str]:
    """The mean of each column over the categories of one kind where both methods measured it, and
    the difference edgead - baseline."""
    both = [(e, b) for e, b, f in pairs(rows) if f.get("kind") == kind and "skipped" not in e and "skipped" not in b
            and e and b]
    if not both:
        return []
    cells_mean, cells_diff = [], []
    for key in SHOWN:
        vals = [(e.get(key), b.get(key)) for e, b in both]
        vals = [(x, y) for x, y in vals if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
        if not vals:
            cells_mean.append("n/a")
            cells_diff.append("n/a")
            continue
        me, mb = float(np.mean([x for x, _ in vals])), float(np.mean([y for _, y in vals]))
        cells_mean.append(f"{_fmt(me, key)} / {_fmt(mb, key)} ({len(vals)})")
        cells_diff.append(_diff(me, mb, key))
    return [f"| **mean, {kind}** (n categories) | | | {' | '.join(cells_mean)} |",
            f"| **edgead - baseline** (time: ratio) | | | {' | '.join(cells_diff)} |"]


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    """table.md: per category, edgead / baseline in each cell; the means over real and synthetic ones."""
    lines = [f"Command: `{command}`", "",
             f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}. Each cell: edgead / baseline (PatchCore-style memory bank on the same "
             "teacher). Times: train s = model built to detector ready; ms/image = scoring the test split, "
             "batch 8, CPU, image reading included.", "",
             "| category | input | train / test images | image AUROC | pixel AUROC | AUPRO | train s | ms/image |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e, b, f in pairs(rows):
        setup = f["setup"]
        cells = []
        for key in SHOWN:
            cells.append(" / ".join(f"skipped ({r['skipped'].splitlines()[0][:60]})" if "skipped" in r
                                    else _fmt(r.get(key), key) if r else "-" for r in (e, b)))
        lines.append(f"| {f['category']} | {setup['input']} | {setup['n_train_good']} / {setup['n_test']} | "
                     f"{' | '.join(cells)} |")
    for kind in ("real", "synthetic"):
        lines += mean_lines(rows, kind)
    lines += ["", "Per defect type, image AUROC (edgead / baseline):", "", "| category | defect type | n | image AUROC |",
              "| --- | --- | --- | --- |"]
    for e, b, f in pairs(rows):
        for t in sorted(set(e.get("per_type", {})) | set(b.get("per_type", {}))):
            pe, pb = e.get("per_type", {}).get(t, {}), b.get("per_type", {}).get(t, {})
            n = pe.get("n", pb.get("n", ""))
            lines.append(f"| {f['category']} | {t} | {n} | {_fmt(pe.get('image_auroc'), 'x')} / "
                         f"{_fmt(pb.get('image_auroc'), 'x')} |")
    return "\n".join(lines) + "\n"


def run_category(name: str, args: argparse.Namespace, out: Path, results: Results, command: str) -> None:
    """Both methods on one category; each row saved (and the table rewritten) as soon as it lands."""
    run_name, root, kind = prepare(name, args, out)
    overrides = overrides_for(name, root, args)
    cfg = load_config(args.preset, args.config, overrides=overrides)
    for method in METHODS:
        setup = setup_of(method, root, cfg, args)
        if results.find(run_name, method, setup) is not None:
            print(json.dumps({"category": run_name, "method": method, "kept": "already in results.json"}), flush=True)
            continue
        print(f"{run_name}: {method}, input {setup['input']}, {setup['n_train_good']} good training images"
              + (f", {cfg.train.epochs} epochs" if method == "edgead" else "") + " ...", file=sys.stderr, flush=True)
        row = (edgead_row(run_name, root, args, out, overrides) if method == "edgead"
               else baseline_row(root, cfg, settings_from(args)))
        row = {"category": run_name, "source": name, "kind": kind, "method": method, "setup": setup, **row}
        results.put(row)
        atomic_write_text(out / "table.md", markdown(results.rows, command))
        shown = {"skipped": row["skipped"]} if "skipped" in row else {k: row.get(k) for k in SHOWN}
        print(json.dumps({"category": run_name, "method": method, "input": setup["input"], **shown}), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-out/real-accuracy")
    ap.add_argument("--data-root", default=str(DEFAULT_DATA), help="folder of MVTec-layout real categories")
    ap.add_argument("--categories", nargs="+", help="real folder names and/or synthetic product names "
                    "(default: every real category under --data-root)")
    ap.add_argument("--synthetic", action="store_true", help=f"add the synthetic products ({', '.join(CATEGORIES)})")
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--config", help="YAML overriding the preset (for variants)")
    ap.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: the preset's)")
    ap.add_argument("--auto-size", action="store_true", help="each category at its training images' aspect "
                    "(the preset's pixel count), as `edgead train` does without --size")
    ap.add_argument("--tile", type=int, nargs=2, metavar=("H", "W"),
                    help="edgead in tiles of H x W on the images' native size (the baseline at that size, whole)")
    ap.add_argument("--size-of", action="append", type=size_of, metavar="CATEGORY=HxW",
                    help="input size of one category (repeat for several)")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int)
    budget.add_argument("--steps", type=int, help="training steps, turned into epochs per category")
    ap.add_argument("--max-train", type=int, help="cap the good training images (seeded subsample)")
    ap.add_argument("--max-test", type=int, help="cap the test images (seeded, stratified by defect type)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bank-size", type=int, default=20000)
    ap.add_argument("--coreset", action="store_true", help="greedy k-center bank instead of a random subsample")
    ap.add_argument("--layers", nargs=2, default=list(DEFAULT_LAYERS), help="the baseline's two teacher stages")
    ap.add_argument("--project-dim", type=int, help="random projection of the baseline's features")
    ap.add_argument("--synth-size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    ap.add_argument("--synth-counts", type=int, nargs=3, default=[60, 20, 30], metavar=("TRAIN", "GOOD", "DEFECT"),
                    help="synthetic good training, good test and defective test images")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(args.categories or real_categories(Path(args.data_root)))
    if args.synthetic:
        names += [c for c in CATEGORIES if c not in names]
    if not names:
        print(f"no category: {args.data_root} holds no MVTec-layout folder; pass --categories or --synthetic",
              file=sys.stderr)
        return 2
    command = "python " + " ".join(["benchmarks/real_accuracy.py", *(sys.argv[1:] if argv is None else argv)])
    results = Results(out)
    for name in names:
        try:
            run_category(name, args, out, results, command)
        except EdgeADError as err:
            print(f"{name}: {err.message} ({err.hint})", file=sys.stderr)
    atomic_write_text(out / "table.md", markdown(results.rows, command))
    print(markdown(results.rows, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
