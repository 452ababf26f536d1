"""`edgead demo`: the whole line on a CPU, offline, in one command, ending in a report.

1. a synthetic product (or `--data DIR`, the user's MVTec-layout category);
2. good training images split: most train the model, a held-back set (never seen in training)
   calibrates the threshold, as a line engineer would do with parts from the line;
3. training of the default preset, evaluation on the test split (image/pixel AUROC);
4. build-engine (TensorRT where usable, else ONNX Runtime), calibrate on the held-back good parts;
5. the real `edgead run` loop on a conveyor video of the test parts in a known order, with the log
   output, every decision scored against the truth;
6. demo-report/index.html: one self-contained page, plus report.json with the same numbers.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edgead.model.config import ModelConfig, load_config
from edgead.errors import EdgeADError

if TYPE_CHECKING:
    from edgead.demo.conveyor import Part

DEMO_CATEGORY = "washer"
TARGET_FRR = 0.01            # 1 % false rejects: the demo's calibration target
CALIB_MIN = 50               # held-back good parts for calibration (the EVT method's minimum)
CALIB_SHARE = 0.25
FIT_MIN = 10                 # training needs at least this many after the hold-back
DEADLINE_MS = 500            # generous for a shared 2-core CPU; the line default is 200 ms
N_SHOWN_GOOD = 4             # hardest good parts shown in the report
# Sized so that the full demo and --quick finish within their time targets on a 2-core CPU.
# Training images are the train split minus the CALIB_MIN held-back calibration parts; at a fixed
# time budget more distinct good images beat more epochs. Timings and the budget runs behind these
# counts: docs/benchmarks.md, "The demo: time per step and what the report shows".
FULL_COUNTS = dict(n_train=160, n_test_good=40, n_test_defect=30)
FULL_EPOCHS = 24
QUICK_COUNTS = dict(n_train=160, n_test_good=16, n_test_defect=12)
QUICK_EPOCHS = 20

Log = Callable[[str], None]


class Steps:
    """Times each step and prints it, so a user sees where the minutes go: a line when a step starts
    (which of the story's STAGES it is) and one when it ends; the long steps draw their own bars."""

    STAGES = ("synthetic product", "training", "evaluation", "build-engine", "calibration", "conveyor video",
              "run loop")

    def __init__(self, log: Log) -> None:
        self.log = log
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        from edgead.decide.progress import duration

        n = self.STAGES.index(name) + 1 if name in self.STAGES else len(self.seconds) + 1
        self.log(f"[demo] step {n}/{len(self.STAGES)}: {name} ...")
        t0 = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        self.log(f"[demo] {name}: {self.seconds[name]:.1f} s ({duration(time.perf_counter() - self.started)} "
                 "since the start)")
        return result


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def split_good(train_good: Path, out: Path, seed: int) -> tuple[Path, Path, int, int]:
    """Hold back good images for calibration: max(50, 25 %); the rest train. (fit_dir, calib_dir, n_fit, n_cal)."""
    from edgead.data.images import list_images

    paths = list_images(train_good)
    n_cal = max(CALIB_MIN, round(CALIB_SHARE * len(paths)))
    if len(paths) - n_cal < FIT_MIN:
        raise EdgeADError(f"{train_good} has {len(paths)} good images; the demo holds back {n_cal} to calibrate the "
                          f"threshold and needs {FIT_MIN} more to train",
                          f"add good images (at least {n_cal + FIT_MIN}), or use `edgead train` and `edgead calibrate` "
                          "on folders of your choice")
    order = np.random.default_rng(seed).permutation(len(paths))
    fit, cal = out / "fit" / "good", out / "calibration" / "good"
    for d in (fit, cal):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    for k, i in enumerate(order):
        _link_or_copy(paths[i], (cal if k < n_cal else fit) / paths[i].name)
    return fit, cal, len(paths) - n_cal, n_cal


def engine_latency_ms(engine: Path, n: int = 12) -> float:
    """Median batch-1 latency of the built engine (preprocessed input), to pace the conveyor below it."""
    from edgead.backends import load_detector
    from edgead.backends.bench import time_detector
    from edgead.backends.manifest import engine_preprocessing

    spec = engine_preprocessing(engine)
    stats = time_detector(load_detector(engine), spec, batch=1, iters=n, warmup=1,
                          frame_hw=(spec.height, spec.width), include_preprocess=False)
    return stats["p50_ms"]


def read_events(record_dir: Path) -> list[dict[str, Any]]:
    lines = (record_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def run_conveyor(engine: Path, calibration: Path, conveyor: dict[str, Any], out: Path, fps: float,
                 log: Log) -> tuple[dict[str, Any], list[dict[str, Any]], Path]:
    """The real `edgead run` on the recording, with the log output; (summary, events, record dir)."""
    from edgead.runtime.run import run
    from edgead.runtime.config import from_dict

    if out.exists():
        shutil.rmtree(out)
    cfg = from_dict({
        "engine": str(engine), "calibration": str(calibration),
        "camera": {"source": conveyor["source"], "frame_rate": fps},
        "trigger": True, "deadline_ms": DEADLINE_MS,
        "record": {"dir": str(out / "records"), "save_rejects": True},
        "outputs": [{"type": "log", "path": str(out / "decisions.jsonl")}],
    })
    summary = run(cfg, out=log, log=log)
    record_dir = Path(summary["record_dir"])
    return summary, read_events(record_dir), record_dir


def overlays(engine: Path, calibration: dict[str, Any], paths: list[str]) -> list[np.ndarray]:
    """Heatmap overlays of source images through the engine, on the run's fixed colour scale."""
    from edgead.backends import load_detector
    from edgead.data.images import read_image
    from edgead.runtime.overlay import heatmap_overlay
    from edgead.preprocess import preprocess, to_display
    from edgead.runtime.overlay import heat_range
    from edgead.backends.manifest import engine_preprocessing

    if not paths:
        return []
    det = load_detector(engine)
    spec = engine_preprocessing(engine)
    lo, hi = heat_range(calibration)
    result = []
    for p in paths:
        img = read_image(p)
        _, maps = det.infer(preprocess(img, spec)[None])
        result.append(heatmap_overlay(to_display(img, spec), maps[0], lo, hi))
    return result


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


@dataclass(frozen=True)
class _Line:
    """What training, build-engine and calibration left behind, for the belt and the report."""

    n_fit: int
    n_cal: int
    model_dir: Path
    engine_dir: Path
    cal_path: Path
    evaluation: dict[str, Any]
    manifest: dict[str, Any]
    record: dict[str, Any]


@dataclass(frozen=True)
class _Belt:
    """The conveyor run: the parts in belt order, its pace, and what the run loop decided."""

    parts: list[Part]
    latency_ms: float
    fps: float
    conveyor: dict[str, Any]
    summary: dict[str, Any]
    events: list[dict[str, Any]]
    record_dir: Path
    scored: dict[str, Any]


def run_demo(out: Path, quick: bool = False, data: str | None = None, epochs: int | None = None, seed: int = 0,
             report_dir: Path | None = None, size: tuple[int, int] | None = None,
             log: Log = print) -> dict[str, Any]:
    """Run the whole story; returns the report's data (also written as report.json beside index.html)."""
    from edgead.demo.report import write_report

    out = Path(out)
    report_dir = Path(report_dir) if report_dir is not None else Path("demo-report")
    started = time.perf_counter()
    steps = Steps(log)
    root, product = _product(steps, out, quick, data, seed)
    split = split_good(root / "train" / "good", out / "split", seed)
    _, _, n_fit, n_cal = split
    log(f"[demo] {n_fit} good images train the model, {n_cal} are held back to calibrate the threshold")
    line = _build_line(steps, out, root, split, _train_config(quick, epochs, seed, size), log)
    belt = _run_belt(steps, out, root, line, seed, log)
    cards = _cards(line, belt)
    data_out = _report_data(out, product, quick, steps, round(time.perf_counter() - started, 1), line, belt, cards)
    index = write_report(report_dir, data_out)
    for text in summary_lines(data_out, index):
        log(text)
    return data_out


def _product(steps: Steps, out: Path, quick: bool, data: str | None, seed: int) -> tuple[Path, str]:
    """The category the story runs on (root, name): a fresh synthetic one, or the user's checked folder."""
    from edgead.data.mvtec import is_mvtec_root
    from edgead.data.synth import generate_product

    if data is None:
        image_size = (128, 128) if quick else (256, 256)
        counts = QUICK_COUNTS if quick else FULL_COUNTS
        root = steps.run("synthetic product", lambda: generate_product(out / "data", DEMO_CATEGORY, seed, size=image_size,
                                                                        **counts))
        return root, f"synthetic {DEMO_CATEGORY} ({image_size[0]}x{image_size[1]})"
    root = Path(data)
    if not is_mvtec_root(root):
        raise EdgeADError(f"{root} is not an MVTec-layout category (train/good and test/ are needed)",
                          "see README: 'From your own images to a running line'")
    return root, str(root)


def _train_config(quick: bool, epochs: int | None, seed: int, size: tuple[int, int] | None) -> ModelConfig:
    """The default preset with the demo's epochs and seed; --quick and --size set the input size."""
    overrides: dict[str, Any] = {"train": {"epochs": epochs or (QUICK_EPOCHS if quick else FULL_EPOCHS), "seed": seed}}
    if size or quick:
        h, w = size or (128, 128)
        overrides["input"] = {"height": int(h), "width": int(w)}
    return load_config(None, None, overrides)


def _build_line(steps: Steps, out: Path, root: Path, split: tuple[Path, Path, int, int], cfg: ModelConfig,
                log: Log) -> _Line:
    """Train, evaluate, build the engines and calibrate: the commands a line engineer runs, in order."""
    from edgead.data.mvtec import test_samples
    from edgead.decide.calibrate import calibrate
    from edgead.export.build import build_engine
    from edgead.training.evaluate import evaluate
    from edgead.training.train import train

    fit_dir, cal_dir, n_fit, n_cal = split
    model_dir, engine_dir = out / "model", out / "engine"
    steps.run("training", lambda: train(fit_dir, model_dir, cfg, overwrite=True))
    ev = steps.run("evaluation", lambda: evaluate(model_dir, root, out / "eval", log=log))
    manifest = steps.run("build-engine", lambda: build_engine(model_dir, engine_dir, max_batch=4, log=log,
                                                                     overwrite=True))
    cal_path = out / "calibration" / "demo.yaml"
    # The threshold comes from the good parts only; the test defects are scored beside them so the
    # histogram shows where they fall (calibrate never uses them for the threshold).
    defects = root if any(s.label == 1 for s in test_samples(root)) else None
    record, _ = steps.run("calibration", lambda: calibrate(engine_dir, cal_dir, defects=defects, target_frr=TARGET_FRR,
                                                           out=cal_path, log=log, overwrite=True))
    return _Line(n_fit, n_cal, model_dir, engine_dir, cal_path, ev, manifest, record)


def _run_belt(steps: Steps, out: Path, root: Path, line: _Line, seed: int, log: Log) -> _Belt:
    """Pace the belt below the engine's speed, record the test parts on it, run the real loop."""
    from edgead.demo.conveyor import conveyor_parts, score_run, write_conveyor

    parts = conveyor_parts(root, seed)
    latency = engine_latency_ms(line.engine_dir)
    fps = round(min(20.0, 500.0 / max(latency, 1e-3)), 2)   # the belt runs at half the engine's batch-1 speed
    conveyor = steps.run("conveyor video", lambda: write_conveyor(parts, out / "conveyor", fps))
    log(f"[demo] conveyor: {len(parts)} parts at {fps:g} parts/s ({conveyor['kind']}"
        f"{', ' + conveyor['codec'] if conveyor['codec'] else ''}); the engine takes {latency:.1f} ms per part")
    summary, events, record_dir = steps.run(
        "run loop", lambda: run_conveyor(line.engine_dir, line.cal_path, conveyor, out / "run", fps, log))
    return _Belt(parts, latency, fps, conveyor, summary, events, record_dir, score_run(parts, events))


def _card(p: Part, by_seq: dict[int, dict[str, Any]], image: Any) -> dict[str, Any]:
    """One gallery entry: the part, its truth, what the run loop decided, and its picture."""
    e = by_seq.get(p.frame, {})
    return {"frame": p.frame, "truth": p.defect_type, "decision": e.get("decision"), "score": e.get("score"),
            "image": image}


def _rejected_cards(belt: _Belt, by_seq: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rejected part, shown with the overlay the run loop saved (else its source image)."""
    from edgead.data.images import read_image

    rejected = []
    for p in belt.parts:
        e = by_seq.get(p.frame)
        if e and e["decision"] in ("reject", "safe_reject"):
            files = [belt.record_dir / f for f in e.get("images") or [] if f.endswith("-overlay.png")]
            img = read_image(files[0]) if files and files[0].is_file() else read_image(p.path)
            rejected.append(_card(p, by_seq, img))
    return rejected


def _cards(line: _Line, belt: _Belt) -> dict[str, list[dict[str, Any]]]:
    """The report's galleries: rejected parts, defective parts that passed, the hardest good parts."""
    by_seq = {int(e["seq"]): e for e in belt.events}
    good_by_score = sorted((p for p in belt.parts if p.label == 0 and by_seq.get(p.frame, {}).get("score") is not None),
                           key=lambda p: -by_seq[p.frame]["score"])[:N_SHOWN_GOOD]
    escaped = [p for p in belt.parts if p.frame in belt.scored["escape_frames"]]
    shown = overlays(line.engine_dir, line.record, [p.path for p in good_by_score + escaped])
    return {
        "rejected": _rejected_cards(belt, by_seq),
        "escaped": [_card(p, by_seq, img) for p, img in zip(escaped, shown[len(good_by_score):])],
        "hardest_good": [_card(p, by_seq, img) for p, img in zip(good_by_score, shown[:len(good_by_score)])],
    }


def _report_data(out: Path, product: str, quick: bool, steps: Steps, total_s: float, line: _Line, belt: _Belt,
                 cards: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Everything the report shows, in report.json's key order."""
    from edgead.demo.conveyor import stage_latencies
    from edgead.demo.rates import belt_rows, catch_rates, operating_point
    from edgead.runtime.overlay import heat_range

    ev, record, summary = line.evaluation, line.record, belt.summary
    engine = next(iter(line.manifest["engines"]))
    rows = belt_rows(belt.parts, belt.events)
    lo, hi = heat_range(record)
    dfx = record.get("defects")
    shown_defects = {k: dfx[k] for k in ("n", "escapes", "escape_rate", "f1_threshold")} if dfx else None
    return {
        "title": f"edgead demo: {product}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(), "product": product, "quick": quick,
        "images": {"train": line.n_fit, "calibration": line.n_cal, "test_good": ev["n_good"],
                   "test_defective": ev["n_defect"]},
        "steps_s": dict(steps.seconds), "total_s": total_s,
        "evaluation": {**{k: ev[k] for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max")},
                       "per_type": ev.get("per_type", {})},
        "engine": {"backend": _run_backend(belt.record_dir), "built": engine["backend"],
                   "precision": engine["precision"], "batch1_ms": round(belt.latency_ms, 2)},
        "calibration": {"threshold": record["threshold"], "method": record.get("method"),
                        "target_frr": record.get("target_frr"), "n_good": line.n_cal,
                        "figure": str(line.cal_path.with_suffix(".png")),
                        "defects": shown_defects},
        "conveyor": {**belt.scored, "fps": belt.fps, "kind": belt.conveyor["kind"], "codec": belt.conveyor["codec"],
                     "parts_per_s": summary.get("parts_per_s"), "latency_ms": stage_latencies(belt.events),
                     "run_summary": {k: summary[k] for k in ("parts", "passes", "rejects", "safe_actions",
                                                             "late_decisions", "frames_lost", "elapsed_s")}},
        "paths": {"work": str(out), "model": str(line.model_dir), "engine": str(line.engine_dir),
                  "calibration": str(line.cal_path), "events": str(belt.record_dir / "events.jsonl"),
                  "decisions": str(out / "run" / "decisions.jsonl"), "conveyor": belt.conveyor["source"]},
        **cards,
        "roc_figure": str(out / "eval" / "roc.png"),
        "belt": rows, "catch_rates": catch_rates(rows),
        "operating_point": operating_point(rows, record["threshold"]),
        "heat_scale": {"lo": lo, "hi": hi,
                       "threshold": record["area"]["pixel_threshold"] if record["area"] else record["threshold"]},
    }


def _run_backend(record_dir: Path) -> str:
    run_json = json.loads((record_dir / "run.json").read_text())
    e = run_json.get("engine", {})
    return f"{e.get('backend')}/{e.get('precision')}"


def summary_lines(d: dict[str, Any], index: Path) -> list[str]:
    """The five lines printed at the end (the report has the rest)."""
    ev, c, cal = d["evaluation"], d["conveyor"], d["calibration"]
    lat = c["latency_ms"].get("total", {})
    return [
        f"report: {index}",
        f"model: image AUROC {ev['image_auroc']:.3f}, pixel AUROC {ev['pixel_auroc']:.3f} "
        f"({d['images']['train']} good images, {d['steps_s'].get('training', 0):.0f} s of training)",
        f"threshold {cal['threshold']:.4g} ({cal['method']}, target {100 * cal['target_frr']:g} % false rejects, "
        f"{cal['n_good']} held-back good parts)",
        f"conveyor: {c['parts']} parts, {c['false_rejects']} of {c['good']} good rejected, {c['escapes']} of "
        f"{c['defective']} defective passed, {c['safe_actions']} safe actions",
        f"speed: {d['engine']['backend']}, {lat.get('p50', float('nan')):.1f} ms p50 / {lat.get('p99', float('nan')):.1f}"
        f" ms p99 capture-to-decision; whole demo {d['total_s']:.0f} s",
    ]
