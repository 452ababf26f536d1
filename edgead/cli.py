"""The `edgead` command: one function per verb; EdgeADError becomes a short message and exit code 2."""

from __future__ import annotations

import argparse
import logging
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TextIO

from edgead import __version__
from edgead.backends.manifest import BACKENDS, PRECISIONS
from edgead.decide import progress
from edgead.errors import EdgeADError, RedactingFilter
from edgead.io import check_input, json_line

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# Training and export (torch) need Python 3.10+; the edge path also runs on 3.8 (JetPack 5).
WORKSTATION_PYTHON = (3, 10)

if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction["_VerbParser"]


class _Say:
    """Where a verb's words go, the one place -q and --json are applied: step messages (`info`, not with
    -q), the verb's human result (`result`), warnings (`warn`, always on stderr), and with --json the one
    JSON document on stdout (`document`), the human text then going to stderr."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.json = bool(getattr(args, "json", False))

    def _human(self) -> TextIO:
        return sys.stderr if self.json else sys.stdout

    def info(self, line: str) -> None:
        if not progress.is_quiet():
            progress.say(line, self._human())

    def result(self, line: str) -> None:
        if not (self.json and progress.is_quiet()):
            progress.say(line, self._human())

    def warn(self, line: str) -> None:
        progress.warn(line)

    def document(self, obj: Any) -> None:
        if self.json:
            progress.say(json_line(obj), sys.stdout)


def _needs_workstation(what: str) -> None:
    """Refuse a torch verb on an edge-only Python with one message, before any import can fail."""
    if sys.version_info < WORKSTATION_PYTHON:
        raise EdgeADError(f"{what} needs Python {'.'.join(map(str, WORKSTATION_PYTHON))} or newer with torch (this is "
                          f"Python {platform.python_version()}, which runs the edge path only)",
                          "train and export on a workstation with Python 3.10+ (pip install \"edgead[train]\"), copy "
                          "the engine folder here, then use build-engine --engine, calibrate, run and bench")


def _overrides(args: argparse.Namespace) -> dict:
    """`edgead train` flags as config overrides; a flag left out keeps the preset's value."""
    over: dict = {}
    train = {k: v for k, v in (("epochs", args.epochs), ("steps", args.steps), ("batch_size", args.batch_size),
                               ("seed", args.seed)) if v is not None}
    if train:
        over["train"] = train
    size = _fixed_size(args.size)
    if size:
        over["input"] = {"height": size[0], "width": size[1]}
    if args.fusion:
        over["fusion"] = args.fusion
    if args.tile:
        over["tile"] = {"height": args.tile[0], "width": args.tile[1],
                        **({"overlap": args.tile_overlap} if args.tile_overlap is not None else {})}
        if not size:               # the images' native size replaces it before training (input_size.native_size)
            over["input"] = {"height": args.tile[0], "width": args.tile[1]}
    elif args.tile_overlap is not None:
        raise EdgeADError("--tile-overlap needs --tile H W", "add --tile 256 256 (the tile size), or drop --tile-overlap")
    return over


def _tile_placeholder(args: argparse.Namespace) -> dict:
    """A `tile:` from the --config file, with no size given: the input starts as the tile (so that the tile
    fits it) until the images' native size replaces it, as with --tile."""
    if args.tile or _fixed_size(args.size) or not args.config:
        return {}
    from edgead.schema import read_yaml

    user = read_yaml(args.config, "config file", "check the path given to --config") or {}
    tile = user.get("tile") if isinstance(user, dict) else None
    given = user.get("input") if isinstance(user, dict) else None
    if isinstance(given, dict) and ("height" in given or "width" in given):
        return {}
    if not isinstance(tile, dict) or not all(isinstance(tile.get(k), int) for k in ("height", "width")):
        return {}
    return {"input": {"height": tile["height"], "width": tile["width"]}}


def _fixed_size(size: list[str] | None) -> tuple[int, int] | None:
    """`--size H W` as two whole numbers; None for `--size auto` or no --size (the images' aspect)."""
    if not size or size == ["auto"]:
        return None
    if len(size) == 2 and all(v.isdigit() for v in size):
        return int(size[0]), int(size[1])
    raise EdgeADError(f"--size {' '.join(size)}: expected two whole numbers H W, or auto",
                      "e.g. --size 256 640, or --size auto (the training images' aspect at the preset's pixel count)")


def cmd_synth(args: argparse.Namespace) -> int:
    from edgead.data.synth import CATEGORIES, generate_all, generate_product

    cats = args.category or list(CATEGORIES)
    bad = [c for c in cats if c not in CATEGORIES]
    if bad:
        raise EdgeADError(f"unknown synthetic category {bad[0]!r}", f"use one of: {', '.join(CATEGORIES)}")
    if args.category:
        paths = [generate_product(Path(args.out), c, args.seed) for c in cats]
    else:
        paths = generate_all(Path(args.out), args.seed)
    for p in paths:
        print(p)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    _needs_workstation("train")
    from edgead.model.config import load_config
    import yaml

    if args.config:
        check_input(args.config, kind="file", what="--config", hint="give a YAML file whose keys override the preset")
    cfg = load_config(args.preset, args.config, {**_overrides(args), **_tile_placeholder(args)})
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if not args.data or not args.out:
        raise EdgeADError("train needs --data DIR and --out models/NAME", "see `edgead train --help`")
    say = _Say(args)
    if _fixed_size(args.size) is None:
        from edgead.training.input_size import keep_aspect, native_size

        cfg = native_size(cfg, args.data, log=say.info) if cfg.tile else keep_aspect(cfg, args.data, log=say.info)
    from edgead.training.train import train

    result = train(args.data, args.out, cfg, skip_bad=args.skip_bad, resume=args.resume,
                   overwrite=args.overwrite, device=args.device, progress=not args.no_progress, log=say.info)
    t = result.metadata["training"]
    say.result(f"model written to {result.out}: best epoch {result.best_epoch}/{t['epochs_planned']}, "
               f"val loss {result.best_val_loss:.4f}, {t['seconds']:.0f} s ({t['seconds_per_epoch']:.1f} s/epoch)")
    if result.interrupted:
        say.warn("training was interrupted: the model above is usable; continue with --resume")
        return EXIT_INTERRUPTED
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    _needs_workstation("eval")
    from edgead.training.evaluate import evaluate

    say = _Say(args)
    out = args.out or str(Path(args.model) / "eval")
    result = evaluate(args.model, args.data, out, batch_size=args.batch_size, device=args.device,
                      skip_bad=args.skip_bad, log=say.info)
    print_metrics(result, say.result)
    say.document(result)
    return 0


def print_metrics(result: dict, out: Callable[[str], None] = print) -> None:
    out(f"image AUROC {result['image_auroc']:.4f}  pixel AUROC {result['pixel_auroc']:.4f}  "
        f"AUPRO@30% {result['aupro']:.4f}  F1-max {result['f1_max']:.4f}  "
        f"({result['n_good']} good, {result['n_defect']} defective, {result['ms_per_image']} ms/image)")
    for name, m in sorted(result.get("per_type", {}).items()):
        out(f"  {name:<18} image AUROC {m['image_auroc']:.4f}  pixel AUROC {m['pixel_auroc']:.4f}  "
            f"AUPRO {m['aupro']:.4f}  n={m['n']}")


def cmd_demo(args: argparse.Namespace) -> int:
    _needs_workstation("demo")
    from edgead.demo.demo import run_demo, summary_lines

    say = _Say(args)
    if args.data:
        check_input(args.data, kind="dir", what="--data", hint="give an MVTec-layout category root")
    data = run_demo(Path(args.out), quick=args.quick, data=args.data, epochs=args.epochs, seed=args.seed,
                    report_dir=Path(args.report), size=tuple(args.size) if args.size else None, log=say.info)
    if progress.is_quiet():          # its step messages were left out, its five-line summary is the result
        for line in summary_lines(data, Path(args.report) / "index.html"):
            say.result(line)
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    say = _Say(args)
    if args.triton_repo:
        return _triton_repository(args, say)
    if args.name or args.triton_device:
        raise EdgeADError("--name and --triton-device belong to --triton-repo", "add --triton-repo DIR, or drop them")
    precision = args.precision or "fp16"
    if args.engine:
        from edgead.export.build import add_openvino, rebuild_tensorrt

        if args.out or args.map_size or args.overwrite or args.calib_images or args.backend == "onnxruntime":
            raise EdgeADError("--engine builds TensorRT (or adds OpenVINO) engines in that folder; --out, --map-size, "
                              "--overwrite, --calib-images and --backend onnxruntime belong to --model",
                              "drop them, or export again with --model")
        if args.backend == "openvino":
            add_openvino(args.engine, log=say.result)
            return 0
        rebuild_tensorrt(args.engine, precision=precision, max_batch=args.max_batch_given,
                         workspace_mib=args.workspace, dla_core=args.dla, log=say.result)
        return 0
    _needs_workstation("build-engine --model (the ONNX export)")
    from edgead.export.build import build_engine

    build_engine(args.model, args.out, backend=args.backend, precision=precision,
                 max_batch=8 if args.max_batch_given is None else args.max_batch_given,
                 workspace_mib=args.workspace, dla_core=args.dla,
                 map_size=tuple(args.map_size) if args.map_size else None, overwrite=args.overwrite,
                 calib_images=args.calib_images, log=say.result)
    return 0


def _triton_repository(args: argparse.Namespace, say: _Say) -> int:
    """`build-engine --engine E --triton-repo DIR`: the engine folder as a Triton Inference Server model repository."""
    from edgead.export.triton_repo import write_triton_repository

    if not args.engine:
        raise EdgeADError("--triton-repo writes a repository from an engine folder", "use --engine engines/NAME "
                          "(build it first with `edgead build-engine --model ...`)")
    if args.backend == "openvino" or args.out or args.map_size or args.calib_images:
        raise EdgeADError("--triton-repo serves the folder's ONNX Runtime graphs or TensorRT plans; --backend "
                          "openvino, --out, --map-size and --calib-images do not apply", "drop them")
    write_triton_repository(args.engine, args.triton_repo, name=args.name, precision=args.precision,
                            device=args.triton_device or "gpu", backend=args.backend, overwrite=args.overwrite,
                            log=say.result)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from edgead.backends.bench import bench
    from edgead.backends.triton import is_triton_url

    if not is_triton_url(args.engine):            # a served model (triton://host:port/model) is timed as served
        check_input(args.engine, kind="dir", what="--engine", hint="give an engine folder written by "
                    "`edgead build-engine`, or a served model as triton://HOST:PORT/MODEL")
    if args.data:
        check_input(args.data, kind="dir", what="--data", hint="give an MVTec-layout category root (test/good, "
                    "test/<defect type>)")
    say = _Say(args)
    result = bench(args.engine, batches=args.batch, iters=args.iters, warmup=args.warmup,
                   with_torch=not args.no_torch, backends=args.backend, out=args.out, data=args.data,
                   threads=args.threads, log=say.result)
    say.document(result)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from edgead.decide.calibrate import calibrate, check_inputs
    from edgead.decide.drift import EXIT_DRIFT, check_drift

    say = _Say(args)
    if args.check:
        given = [f"--{k}" for k, v in (("defects", args.defects), ("target-frr", args.target_frr),
                                       ("method", args.method), ("out", args.out),
                                       ("min-defect-area", args.min_defect_area), ("mm-per-px", args.mm_per_px))
                 if v is not None]
        if given:
            raise EdgeADError(f"{given[0]} cannot be used with --check",
                              "--check re-scores good parts against an existing record; drop that option")
        check_input(args.check, kind="file", what="--check", hint="give a calibration record written by "
                    "`edgead calibrate` (calibration/NAME.yaml)")
        check_inputs(args.engine, args.good)
        report = check_drift(args.check, args.good, engine=args.engine, backend=args.backend,
                             precision=args.precision, skip_bad=args.skip_bad, force=args.force, log=say.result,
                             warn=say.warn)
        say.document({**report, "exit_code": EXIT_DRIFT if report["drift"] else 0})
        return EXIT_DRIFT if report["drift"] else 0
    if not args.engine:
        raise EdgeADError("calibrate needs --engine engines/NAME", "see `edgead calibrate --help`")
    if args.force:
        raise EdgeADError("--force only applies to --check", "drop --force")
    record, path = calibrate(args.engine, args.good, args.defects,
                             0.001 if args.target_frr is None else args.target_frr, args.method or "auto", args.out,
                             args.backend or "auto", args.precision, args.skip_bad, args.min_defect_area,
                             args.mm_per_px, log=say.info, warn=say.warn, overwrite=args.overwrite, result=say.result)
    say.document({"record_path": str(path), **record, "exit_code": 0})
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from edgead.decide.predict import EXIT_UNREADABLE, predict

    summary = predict(args.engine, args.calibration, args.data, args.out, backend=args.backend or "auto",
                      precision=args.precision, skip_bad=args.skip_bad, force=args.force, overwrite=args.overwrite,
                      log=_Say(args).result)
    return EXIT_UNREADABLE if summary["unreadable"] else 0


def cmd_run(args: argparse.Namespace) -> int:
    from edgead.runtime.run import run
    from edgead.runtime.config import load_run_config
    from edgead.runtime.station import is_station, run_station_file

    over: dict = {k: v for k, v in (("engine", args.engine), ("calibration", args.calibration),
                                    ("backend", args.backend), ("precision", args.precision),
                                    ("threads", args.threads), ("deadline_ms", args.deadline_ms),
                                    ("max_frames", args.max_frames)) if v is not None}
    if args.camera is not None:
        over["camera"] = {"source": args.camera}
    if args.trigger:
        over.update(trigger=True, every_nth=None)
    if args.every_nth is not None:
        over.update(trigger=None, every_nth=args.every_nth)
    if args.roi:
        over["roi"] = list(args.roi)
    if args.record:
        over["record"] = {"dir": args.record}
    if args.http:
        over["http"] = {"listen": args.http}
    if args.allow_degraded:
        over["allow_degraded"] = True
    say = _Say(args)
    if is_station(args.config):   # a `cameras:` list: several cameras on one box (edgead.runtime.station)
        summary = run_station_file(args.config, over, force=args.force, out=say.result, log=_run_log)
    else:
        summary = run(load_run_config(args.config, over), force=args.force, out=say.result, log=_run_log)
    say.document(summary)
    return int(summary["exit_code"])


RUN_FAULT_LINES = ("WARNING", "ERROR", "ALARM")


def _run_log(line: str) -> None:
    """The run's messages on stderr; with -q only its warnings, errors and alarms (a camera's name may lead)."""
    from edgead.errors import redact_text

    bare = line[line.index("] ") + 2:] if line.startswith("[") and "] " in line else line
    if not progress.is_quiet() or bare.startswith(RUN_FAULT_LINES):
        progress.say(redact_text(line), sys.stderr)


def cmd_signals_test(args: argparse.Namespace) -> int:
    from edgead.signals.wiring_check import signals_test

    say = _Say(args)
    check_input(args.config, kind="file", what="--config", hint="give the run YAML with an `outputs:` list")
    results: list = []
    code = signals_test(args.config, out=say.result, results=results)
    say.document({"outputs": results, "ok": sum(r["ok"] for r in results),
                  "failed": sum(not r["ok"] for r in results), "exit_code": code})
    return code


def _outbox_sources(args: argparse.Namespace) -> list[tuple[str, Any, str | None]]:
    """(label, outputs, outbox folder) per camera: one for a run YAML, one per camera of a station's
    (`cameras:`, each camera's outbox in its own sub-folder); --outbox-dir alone: that folder, no outputs."""
    from edgead.runtime.config import load_run_config
    from edgead.runtime.station_config import is_station, load_station_config

    if args.config and is_station(args.config):
        if args.outbox_dir:
            raise EdgeADError("--outbox-dir names one folder, but this run config has a `cameras:` list",
                              "leave --outbox-dir out: each camera's outbox is read from the config")
        return [(f"[{cam.name}] ", cam.cfg.outputs, cam.cfg.outbox_dir)
                for cam in load_station_config(args.config).cameras]
    cfg = load_run_config(args.config) if args.config else None
    folder = args.outbox_dir or (cfg.outbox_dir if cfg else None)
    return [("", (cfg.outputs if cfg else None), folder)]


def _outbox_status(label: str, folder: str | None) -> bool:
    from edgead.signals import outbox_admin

    rows = outbox_admin.status(folder)
    for r in rows:
        print(f"{label}{r['output']:<16} {r['pending']:>7} pending  {r['bytes'] / 2**20:8.2f} MB  oldest "
              f"{r['oldest_id'] or '-'} {r['oldest_time'] or ''}  {r['folder']}{'  (in use by a run)' if r['in_use'] else ''}")
    if not rows:
        print(f"{label}no outbox: nothing waits")
    return any(r["pending"] for r in rows)


def _outbox_flush(label: str, outputs: Any, folder: str | None, timeout_s: float) -> bool:
    from edgead.signals import outbox_admin

    if outputs is None:
        raise EdgeADError("outbox flush needs --config run.yaml", "its outputs: say where the events go")
    result = outbox_admin.flush(outputs, folder, timeout_s=timeout_s)
    for name, r in result.items():
        print(f"{label}{name}: {r['delivered']} delivered, {r['left']} left in {r['where']}"
              + (f" ({r['error']})" if r.get("error") else ""))
    return any(r["left"] for r in result.values())


def cmd_outbox(args: argparse.Namespace) -> int:
    """status / flush / drop of the outboxes of a run YAML (every camera's, for a station)."""
    from edgead.signals import outbox_admin

    sources = _outbox_sources(args)
    if args.outbox_verb == "status":
        waiting = [_outbox_status(label, folder) for label, _, folder in sources]
        return 4 if any(waiting) else 0
    if args.outbox_verb == "flush":
        left = [_outbox_flush(label, outputs, folder, args.timeout) for label, outputs, folder in sources]
        return 4 if any(left) else 0
    if not args.yes:
        answer = input(f"drop the undelivered events of {args.output or 'every output'}? they are lost [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing dropped")
            return 1
    for label, _, folder in sources:
        print(f"{label}dropped {outbox_admin.drop(folder, args.output)} events")
    return 0


def cmd_alarm_ack(args: argparse.Namespace) -> int:
    from edgead.runtime.http import ack_alarms

    acked = ack_alarms(args.url, args.key, args.token)
    print(f"acknowledged: {', '.join(acked)}" if acked else "no active alarm to acknowledge")
    return 0


def _add_verbosity(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="only warnings, errors and the result: no progress bars or step messages")
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="also the debug messages of edgead's loggers")


class _VerbParser(argparse.ArgumentParser):
    """Every verb's (and action's) parser takes -q/-v as well, so they work before or after the verb;
    SUPPRESS keeps a flag given before the verb from being reset by the verb's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _add_verbosity(self, argparse.SUPPRESS)


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON document on stdout (the human text goes to stderr)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each verb's options live in its own `_add_<verb>`."""
    parser = argparse.ArgumentParser(prog="edgead", description="Anomaly detection for factory cameras: "
                                     "train on good parts, inspect every part in milliseconds.")
    parser.add_argument("--version", action="version", version=f"edgead {__version__}")
    _add_verbosity(parser, False)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_VerbParser)
    for add in (_add_synth, _add_train, _add_eval, _add_build_engine, _add_bench, _add_calibrate, _add_predict,
                _add_run, _add_signals, _add_outbox, _add_alarm, _add_demo, _add_completion):
        add(sub)
    return parser


def _add_synth(sub: _Subparsers) -> None:
    p = sub.add_parser("synth", help="generate synthetic products (MVTec layout) for tests and demos")
    p.add_argument("--out", required=True, help="folder to write the categories into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--category", action="append", help="only this category (repeatable)")
    p.set_defaults(func=cmd_synth)


def _add_train(sub: _Subparsers) -> None:
    p = sub.add_parser("train", help="train the students on good images")
    p.add_argument("--data", help="folder of good images, or an MVTec category root (uses train/good)")
    p.add_argument("--out", help="model folder to write, e.g. models/NAME")
    p.add_argument("--preset", choices=["edge", "paper"], default=None, help="default: edge")
    p.add_argument("--config", help="YAML file whose keys override the preset")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, help="a training budget in optimiser steps instead of epochs (the same "
                   "number of updates on 50 good images or 5000)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--size", nargs="+", metavar="H W | auto",
                   help="input height and width; default auto: the training images' median aspect ratio at the "
                        "preset's pixel count (256x256), in multiples of 32")
    p.add_argument("--fusion", choices=["multiplicative", "additive", "max"])
    p.add_argument("--tile", type=int, nargs=2, metavar=("H", "W"),
                   help="score large images as overlapping tiles of H x W pixels (maps stitched, one score); "
                        "without --size the input is then the images' native size, scaled down past 16 tiles' pixels")
    p.add_argument("--tile-overlap", type=int, metavar="PX", help="least overlap of neighbouring tiles (default 32)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--skip-bad", action="store_true", help="skip and count unreadable images instead of stopping")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=cmd_train)


def _add_eval(sub: _Subparsers) -> None:
    p = sub.add_parser("eval", help="image/pixel AUROC, AUPRO and F1 on an MVTec-layout test split")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="MVTec category root (uses test/ and ground_truth/)")
    p.add_argument("--out", help="report folder (default: MODEL/eval)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-bad", action="store_true")
    _add_json(p)
    p.set_defaults(func=cmd_eval)


def _add_build_engine(sub: _Subparsers) -> None:
    p = sub.add_parser("build-engine", help="export ONNX and build the engines that run on the line")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model folder written by `edgead train` (export ONNX, then build)")
    src.add_argument("--engine", help="engine folder exported elsewhere: build its TensorRT engines on this device "
                     "(a Jetson), no torch needed")
    p.add_argument("--out", help="engine folder (default: engines/<model name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing engine folder in --out (or the "
                   "repository in --triton-repo)")
    p.add_argument("--backend", choices=["auto", *BACKENDS], default="auto",
                   help="auto: TensorRT where usable, plus ONNX Runtime (and OpenVINO where installed) always; "
                        "with --engine: tensorrt (default) or openvino")
    p.add_argument("--precision", choices=list(PRECISIONS), default=None,
                   help="TensorRT precision, default fp16 (int8 needs --calib-images); with --triton-repo: the "
                        "engine to serve (default: the TensorRT plan on a GPU, else the CPU default)")
    p.add_argument("--calib-images", metavar="DIR", help="good parts (50-200, the ones you calibrate the threshold "
                   "with): adds INT8 engines quantised on them, the fastest on a CPU")
    p.add_argument("--max-batch", type=int, dest="max_batch_given", metavar="N", help="largest batch (default 8; with --engine: "
                   "the folder's)")
    p.add_argument("--workspace", type=int, default=1024, help="TensorRT workspace limit in MiB")
    p.add_argument("--dla", type=int, help="Jetson DLA core (GPU fallback for unsupported layers)")
    p.add_argument("--map-size", type=int, nargs=2, metavar=("H", "W"),
                   help="anomaly map resolution returned by the engine (default: the input size)")
    p.add_argument("--triton-repo", metavar="DIR", help="with --engine: write a Triton Inference Server model "
                   "repository to DIR (teacher, student and their ensemble, edgead's manifest in its config) "
                   "instead of building")
    p.add_argument("--name", help="with --triton-repo: the served model's name (default: the engine folder's name)")
    p.add_argument("--triton-device", choices=["gpu", "cpu"], default=None,
                   help="with --triton-repo: where the server runs the models (KIND_GPU, the default, or KIND_CPU)")
    p.set_defaults(func=cmd_build_engine)


def _add_bench(sub: _Subparsers) -> None:
    p = sub.add_parser("bench", help="latency and throughput of every backend that runs here")
    p.add_argument("--engine", required=True)
    p.add_argument("--batch", type=int, action="append", help="batch size (repeatable; default 1 and max batch)")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--backend", action="append", help="only this backend (repeatable), e.g. onnxruntime/fp32")
    p.add_argument("--no-torch", action="store_true", help="skip the Torch reference backend")
    p.add_argument("--data", metavar="DIR", help="MVTec-layout category root: also score its test split with every "
                   "engine (image AUROC, its change against onnxruntime/fp32, score drift)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads of ONNX Runtime and OpenVINO (default: all)")
    p.add_argument("--out", help="write the results as JSON here")
    _add_json(p)
    p.set_defaults(func=cmd_bench)


def _add_calibrate(sub: _Subparsers) -> None:
    p = sub.add_parser("calibrate", help="choose the reject threshold from good-part scores; --check tests for drift",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="exit codes: 0 calibrated / no drift, 2 user error (message on stderr), "
                              "3 drift detected by --check")
    p.add_argument("--engine", help="engine folder (with --check: default the record's engine)")
    p.add_argument("--good", required=True, help="good images (prefer held-out ones), or an MVTec root (train/good)")
    p.add_argument("--defects", help="defective images, or an MVTec root (all test/<type != good>): escape rate, "
                                     "F1-optimal threshold and the trade-off table")
    p.add_argument("--target-frr", type=float, help="target false-reject rate of good parts (default 0.001)")
    p.add_argument("--method", choices=["auto", "quantile", "evt"],
                   help="auto (default): quantile with >= 10/target good images, else EVT tail fit")
    p.add_argument("--out", help="record to write (default: calibration/<engine folder name>.yaml)")
    p.add_argument("--backend", choices=["auto", *sorted(BACKENDS)])   # calibrate's --help lists them alphabetically
    p.add_argument("--precision", choices=list(PRECISIONS))
    p.add_argument("--skip-bad", action="store_true", help="skip and count unreadable images instead of stopping")
    p.add_argument("--min-defect-area", type=float, metavar="N", help="area rule: reject only when at least N "
                   "source-image pixels (mm^2 with --mm-per-px) of the anomaly map exceed a calibrated pixel threshold")
    p.add_argument("--mm-per-px", type=float, metavar="X", help="size of one source-image pixel in mm")
    p.add_argument("--check", metavar="RECORD", help="drift check: re-score --good against this record; exit 3 on drift")
    p.add_argument("--force", action="store_true",
                   help="--check with a record from another engine, or an edited or unverifiable one (unsafe, warned)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing record at --out")
    _add_json(p)
    p.set_defaults(func=cmd_calibrate)


def _add_predict(sub: _Subparsers) -> None:
    p = sub.add_parser("predict", help="score a folder of images offline: predictions.csv and overlays of the rejects",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="exit codes: 0 every image scored, 2 user error (message on stderr), 6 some images were "
                              "unreadable (with --skip-bad: rows with decision `unreadable`)")
    p.add_argument("--engine", required=True, help="engine folder (engines/NAME)")
    p.add_argument("--calibration", required=True, help="calibration record of that engine (calibration/NAME.yaml)")
    p.add_argument("--data", required=True, help="folder of images (subfolders are read too)")
    p.add_argument("--out", required=True, help="results folder: predictions.csv, summary.json, rejects/")
    p.add_argument("--overwrite", action="store_true", help="replace the results in an existing --out")
    p.add_argument("--skip-bad", action="store_true", help="record unreadable images as `unreadable` instead of stopping")
    p.add_argument("--force", action="store_true", help="use a calibration made with another engine (unsafe, warned)")
    p.add_argument("--backend", choices=["auto", *BACKENDS])
    p.add_argument("--precision", choices=list(PRECISIONS))
    p.set_defaults(func=cmd_predict)


def _add_run(sub: _Subparsers) -> None:
    p = sub.add_parser("run", help="inspect parts from a camera: reject above the calibrated threshold, fail safe",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="a part not decided within --deadline-ms (engine error, slow engine, lost frame) gets "
                              "the safe action: reject + alarm.\nexit codes: 0 stopped normally (end of source, "
                              "--max-frames, SIGINT/SIGTERM), 2 start-up or fatal error (message on stderr), "
                              "3 stopped by safe_action: stop or on_sink_failure: stop")
    p.add_argument("--engine", help="engine folder (engines/NAME)")
    p.add_argument("--calibration", help="calibration record of that engine (calibration/NAME.yaml)")
    p.add_argument("--camera", help="0 | video file | URL | gst:PIPELINE | image folder | gige:ID | genicam:CTI[:SERIAL]")
    p.add_argument("--config", help="run YAML (every key documented in edgead/runtime/config.py); flags override it")
    p.add_argument("--deadline-ms", type=float, help="per-part deadline from capture to decision (default 200)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--trigger", action="store_true", help="each frame is one part (the default)")
    mode.add_argument("--every-nth", type=int, metavar="N", help="free-running camera: inspect every Nth frame")
    p.add_argument("--roi", type=int, nargs=4, metavar=("X", "Y", "W", "H"),
                   help="must equal the engine's ROI; a same-size shift is allowed with a warning")
    p.add_argument("--record", metavar="DIR", help="write the event log and reject images under DIR/<start time>/")
    p.add_argument("--http", metavar="[HOST:]PORT", help="live view, /health and /metrics (a bare port binds 127.0.0.1)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--force", action="store_true",
                   help="use a calibration made with another engine, or an edited or unverifiable one (unsafe, warned, "
                        "recorded in run.json)")
    p.add_argument("--allow-degraded", action="store_true", help="start even when an output is unreachable")
    p.add_argument("--backend", choices=["auto", *BACKENDS])
    p.add_argument("--precision", choices=list(PRECISIONS))
    p.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime CPU threads (default: the backend's)")
    _add_json(p)
    p.set_defaults(func=cmd_run)


def _add_signals(sub: _Subparsers) -> None:
    p = sub.add_parser("signals", help="reject outputs: `edgead signals test --config run.yaml`")
    signals_sub = p.add_subparsers(dest="signals_verb", metavar="ACTION", required=True)
    q = signals_sub.add_parser("test", help="fire one test pulse on every configured output (wiring check); "
                               "exit 0 only when every output answered")
    q.add_argument("--config", required=True, help="run YAML with an `outputs:` list")
    _add_json(q)
    q.set_defaults(func=cmd_signals_test)


def _add_outbox(sub: _Subparsers) -> None:
    p = sub.add_parser("outbox", help="events waiting for an output's peer: `edgead outbox status --config run.yaml`")
    outbox_sub = p.add_subparsers(dest="outbox_verb", metavar="ACTION", required=True)
    for name, text in (("status", "how many events wait, per output, and since when (exit 4 when any)"),
                       ("flush", "deliver them now to the outputs of --config (exit 4 when some are left)"),
                       ("drop", "throw them away (asks first)")):
        q = outbox_sub.add_parser(name, help=text)
        q.add_argument("--config", help="run YAML: its outputs and outbox_dir")
        q.add_argument("--outbox-dir", help="the outbox folder (default: the config's outbox_dir, else "
                       "$EDGEAD_STATE_DIR/outbox)")
        if name == "flush":
            q.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the peers (default 30)")
        if name == "drop":
            q.add_argument("--output", help="only this output (default: every output)")
            q.add_argument("--yes", action="store_true", help="do not ask")
        q.set_defaults(func=cmd_outbox)


def _add_alarm(sub: _Subparsers) -> None:
    p = sub.add_parser("alarm", help="the running line's alarms: `edgead alarm ack --url 127.0.0.1:8080`")
    alarm_sub = p.add_subparsers(dest="alarm_verb", metavar="ACTION", required=True)
    q = alarm_sub.add_parser("ack", help="acknowledge active alarms on a running `edgead run --http ...`")
    q.add_argument("--url", required=True, help="the run's live view: HOST:PORT or http://HOST:PORT")
    q.add_argument("--key", help="only this alarm (as listed by /health); default: all")
    q.add_argument("--token", help="http.token of the run config (needed from another machine)")
    q.set_defaults(func=cmd_alarm_ack)


def _add_demo(sub: _Subparsers) -> None:
    p = sub.add_parser("demo", help="the whole line on a synthetic product (train, engines, calibration, a conveyor "
                       "run) with an HTML report; no camera or GPU needed")
    p.add_argument("--out", default="demo-out", help="working folder (default: demo-out)")
    p.add_argument("--report", default="demo-report", help="report folder (default: demo-report)")
    p.add_argument("--quick", action="store_true", help="smaller and faster (about a minute), for smoke tests")
    p.add_argument("--data", help="run on your own MVTec-layout category instead of a synthetic one")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="model input size (default 256 256; "
                   "long parts: keep their aspect ratio, e.g. 256 640)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)


SHELLS = ("bash", "zsh", "tcsh")


def _add_completion(sub: _Subparsers) -> None:
    p = sub.add_parser("completion", help="print a shell completion script: "
                       "`edgead completion bash > /etc/bash_completion.d/edgead`",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="bash: save it under /etc/bash_completion.d/ (or source it from ~/.bashrc); zsh: save it "
                              "as _edgead in a folder of $fpath; tcsh: source it from ~/.tcshrc")
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(func=cmd_completion)


# Options that name a folder or a file: the completion offers those (the others: nothing, or their choices).
_DIR_OPTIONS = {"--data", "--out", "--engine", "--model", "--good", "--defects", "--record", "--report",
                "--calib-images", "--outbox-dir"}
_FILE_OPTIONS = {"--config", "--calibration", "--check"}


def _mark_paths(parser: argparse.ArgumentParser, shtab: Any) -> None:
    """Tell shtab which options take a folder or a file (the attribute it reads on each action)."""
    for action in parser._actions:
        names = set(action.option_strings)
        if names & _DIR_OPTIONS:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
        elif names & _FILE_OPTIONS:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _mark_paths(child, shtab)


def cmd_completion(args: argparse.Namespace) -> int:
    """A static script (no Python runs at each Tab): regenerate it after an upgrade."""
    try:
        import shtab
    except ImportError:
        raise EdgeADError("shell completion needs the shtab package", 'pip install "shtab>=1.7" (edgead installs it; '
                          "a partial install may lack it)") from None
    parser = build_parser()
    _mark_paths(parser, shtab)
    print(shtab.complete(parser, shell=args.shell), end="")
    return 0


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time of the line (as logging's last-resort handler does)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _log_to_stderr() -> None:
    """Warnings of every module (ours and the libraries') as plain lines on stderr, each redacted."""
    root = logging.getLogger()
    if not any(isinstance(h, _Stderr) for h in root.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
        if root.level == logging.NOTSET or root.level > logging.WARNING:
            root.setLevel(logging.WARNING)


def _verbosity(args: argparse.Namespace) -> int:
    """-q / -v as the progress module's level; the `edgead` loggers log DEBUG with -v."""
    if args.quiet and args.verbose:
        raise EdgeADError("-q and -v cannot be used together", "choose one: -q says less, -v more")
    if args.verbose:
        logging.getLogger("edgead").setLevel(logging.DEBUG)
    return progress.QUIET if args.quiet else progress.VERBOSE if args.verbose else progress.NORMAL


def _failed(args: argparse.Namespace, code: int, message: str, hint: str | None = None, what: str = "error: ",
            summary: dict[str, Any] | None = None) -> int:
    """The error on stderr; with --json also as the one JSON document (a script reads why it failed)."""
    progress.clear_line()
    print(f"edgead {args.verb}: {what}{message}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)
    if getattr(args, "json", False):
        doc = {"error": message, "hint": hint, "exit_code": code}
        if summary is not None:
            doc["summary"] = summary
        print(json_line(doc), flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    _log_to_stderr()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:                 # every verb sets func; `signals` requires its ACTION
        parser.print_help()
        return EXIT_USER_ERROR
    func: Callable[[argparse.Namespace], int] = args.func
    before = progress.verbosity()
    try:
        progress.set_verbosity(_verbosity(args))
        return func(args)
    except EdgeADError as err:
        return _failed(args, EXIT_USER_ERROR, err.message, err.hint, summary=getattr(err, "summary", None))
    except KeyboardInterrupt:
        return _failed(args, EXIT_INTERRUPTED, "interrupted", what="")
    finally:                                  # main() called again in the same process starts afresh
        progress.set_verbosity(before)
        logging.getLogger("edgead").setLevel(logging.NOTSET)


if __name__ == "__main__":
    sys.exit(main())
