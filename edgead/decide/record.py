"""The calibration record `calibration/<engine>.yaml`: building it, writing it, reading it back, applying it.

It carries the engine's fingerprint: scores from another engine (other weights, precision, backend
or preprocessing) do not match its threshold, so `load_calibration` refuses it. The histogram
figure (.png) and, with defect images, the threshold trade-off table (.csv) are written beside it.
`decide` is the run loop's pass/reject step.
"""

from __future__ import annotations

import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from edgead import __version__
from edgead.protocols import Detector
from edgead.decide import thresholds as T
from edgead.decide.figure import figure_png
from edgead.decide.scoring import Scored
from edgead.decide.text import pct
from edgead.errors import EdgeADError
from edgead.io import atomic_write_bytes

KIND = "edgead-calibration"
FORMAT = 1
_RECALIBRATE = "recalibrate with `edgead calibrate --engine engines/NAME --good DIR`"

_RESULT = ("method", "method_reason", "expected_frr", "expected_frr_interval", "interval_method", "rejects", "evt")
_SCHEMA: dict[str, tuple[str, ...]] = {
    "": ("kind", "format", "created", "edgead_version", "engine", "rule", "threshold", "target_frr", *_RESULT,
         "area", "good", "defects", "files", "warnings"),
    "engine": ("path", "name", "fingerprint", "backend", "precision", "map_size"),
    "area": ("min_area_px", "min_area", "min_area_unit", "mm_per_px", "source_size", "map_size", "pixel_threshold",
             *_RESULT),
    "evt": ("tail_threshold", "tail_points", "tail_rate", "shape", "scale", "bootstrap_refits"),
    "good": ("folder", "n", "skipped", "scores", "area_scores"),
    "defects": ("folder", "n", "skipped", "scores", "area_scores", "escapes", "escape_rate", "f1_threshold", "f1",
                "f1_below_threshold", "trade_off"),
    "files": ("figure", "table"),
}


# ---------------------------------------------------------------- building and writing


def build_record(good: Scored, defects: Scored | None, target: float, method: str, engine: dict[str, Any],
                 folders: tuple[str, str | None], area: dict[str, Any] | None = None,
                 notes: Sequence[str] = (), refits: int = 200) -> dict[str, Any]:
    """The calibration record from scores (no engine needed: this is the part the tests drive directly).

    `area` (min_area_px, min_area, min_area_unit, mm_per_px, source_size, map_size) turns the area rule on;
    the decision scores are then the area scores and `area.pixel_threshold` decides.
    """
    warnings = list(notes)
    image = T.calibrate_threshold(good.scores, target, method, refits=refits)
    decision = image
    record: dict[str, Any] = {
        "kind": KIND, "format": FORMAT,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "edgead_version": __version__, "engine": engine, "rule": "image" if area is None else "area",
        **image.to_dict(), "area": None,
    }
    if area is not None:
        assert good.area_scores is not None
        decision = T.calibrate_threshold(good.area_scores, target, method, refits=refits)
        d = decision.to_dict()
        record["area"] = {**area, "pixel_threshold": d.pop("threshold"),
                          **{k: v for k, v in d.items() if k != "target_frr"}}
    if decision.method == "evt":
        lo = T.clopper_pearson(decision.rejects, decision.n)[0]
        if lo > target:
            warnings.append(f"the EVT threshold rejects {decision.rejects} of the {decision.n} calibration images "
                            f"({pct(decision.rejects / decision.n)}), far more than the target {pct(target)}: "
                            "the tail fit is poor; add good images and recalibrate")
    record["good"] = {"folder": folders[0], "n": int(good.scores.size), "skipped": len(good.bad),
                      "scores": T.score_stats(good.scores),
                      "area_scores": None if good.area_scores is None else T.score_stats(good.area_scores)}
    record["defects"] = None
    if defects is not None:
        record["defects"] = _defects_block(good, defects, decision.threshold, folders[1], target, warnings)
    record["files"] = {"figure": None, "table": None}
    record["warnings"] = warnings
    return record


def _defects_block(good: Scored, defects: Scored, t: float, folder: str | None, target: float,
                   warnings: list[str]) -> dict[str, Any]:
    """The record's `defects`: escapes at threshold t, the trade-off table; warns if F1 wants a lower t."""
    table = T.trade_off(good.decision, defects.decision)
    f1_t, f1 = T.f1_optimal(table)
    escapes = int((defects.decision <= t).sum())
    block = {
        "folder": folder, "n": int(defects.scores.size), "skipped": len(defects.bad),
        "scores": T.score_stats(defects.scores),
        "area_scores": None if defects.area_scores is None else T.score_stats(defects.area_scores),
        "escapes": escapes, "escape_rate": escapes / defects.scores.size,
        "f1_threshold": f1_t, "f1": f1, "f1_below_threshold": bool(f1_t < t), "trade_off": table,
    }
    if f1_t < t:
        row = next(r for r in table if r["threshold"] == f1_t)
        warnings.append(
            f"the F1-optimal threshold {f1_t:.6g} (F1 {f1:.3f}) is BELOW the good-part threshold {t:.6g}: "
            f"at the good-part threshold {escapes} of {defects.scores.size} defective images pass "
            f"({pct(escapes / defects.scores.size)}); at {f1_t:.6g} the escape rate would be "
            f"{pct(row['escape_rate'])} but good parts would be rejected at {pct(row['false_reject_rate'])} "
            f"(target {pct(target)}). The good-part threshold is kept: review the trade-off table and, "
            "to accept more false rejects, recalibrate with a higher --target-frr")
    return block


def yaml_path(out: str | Path) -> Path:
    """The record's path, refused unless it is a .yaml (or .yml) file."""
    if Path(out).suffix.lower() not in (".yaml", ".yml"):
        raise EdgeADError(f"--out {out} must be a .yaml file", "e.g. --out calibration/NAME.yaml")
    return Path(out)


def write_record(record: dict[str, Any], out: str | Path, good: np.ndarray,
                 defects: np.ndarray | None = None) -> Path:
    """Figure (of these decision scores) and table first, the YAML last: it never names missing files."""
    out = yaml_path(out)
    record["files"]["figure"] = out.with_suffix(".png").name
    atomic_write_bytes(out.with_suffix(".png"), figure_png(record, good, defects))
    if record["defects"] is not None:
        record["files"]["table"] = out.with_suffix(".csv").name
        rows = ["threshold,false_reject_rate,escape_rate,f1"]
        rows += [f"{r['threshold']!r},{r['false_reject_rate']!r},{r['escape_rate']!r},{r['f1']!r}"
                 for r in record["defects"]["trade_off"]]
        atomic_write_bytes(out.with_suffix(".csv"), ("\n".join(rows) + "\n").encode())
    text = yaml.safe_dump(record, sort_keys=False, default_flow_style=None, width=120, allow_unicode=True)
    return atomic_write_bytes(out, text.encode())


# ---------------------------------------------------------------- reading it back


def _check_keys(d: Any, where: str, path: Path) -> None:
    name = where.rsplit(".", 1)[-1]
    if not isinstance(d, dict):
        raise EdgeADError(f"calibration record {path}: '{where}' must be a mapping, got {type(d).__name__}",
                          f"the file was edited or is damaged: {_RECALIBRATE}")
    want = _SCHEMA[name]
    prefix = f"{where}." if where else ""
    unknown = [str(k) for k in d if k not in want]
    if unknown:
        raise EdgeADError(f"calibration record {path} has an unknown key '{prefix}{unknown[0]}'",
                          f"edgead writes these records itself: remove the key, or {_RECALIBRATE}")
    missing = [k for k in want if k not in d]
    if missing:
        raise EdgeADError(f"calibration record {path} lacks the key '{prefix}{missing[0]}'",
                          f"the file is incomplete or was edited: {_RECALIBRATE}")


def _check_number(value: Any, where: str, path: Path, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(value, bool) or not ok:
        raise EdgeADError(f"calibration record {path}: '{where}' must be {'a whole' if integer else 'a finite'} "
                          f"number, got {value!r}", f"the file was edited or is damaged: {_RECALIBRATE}")


def _load_yaml(p: Path) -> Any:
    """The parsed file: a missing, unreadable or invalid-YAML file is an error that says which."""
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgeADError(f"calibration record not found: {p}",
                          "calibrate first: edgead calibrate --engine engines/NAME --good DIR") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeADError(f"cannot read calibration record {p}: {getattr(e, 'strerror', None) or e}",
                          "check the path and the file's permissions") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EdgeADError(f"calibration record {p} is corrupt (not valid YAML: {first})", _RECALIBRATE) from e


def _check_structure(rec: dict[str, Any], p: Path) -> None:
    """Every block holds exactly its keys; the fingerprint is text; `rule` agrees with `area`."""
    _check_keys(rec, "", p)
    for name in ("engine", "good", "files"):
        _check_keys(rec[name], name, p)
    for name in ("area", "defects"):
        if rec[name] is not None:
            _check_keys(rec[name], name, p)
    for block, where in ((rec, "evt"), (rec["area"] or {}, "area.evt")):
        if block.get("evt") is not None:
            _check_keys(block["evt"], where, p)
    if not isinstance(rec["engine"]["fingerprint"], str):
        raise EdgeADError(f"calibration record {p}: 'engine.fingerprint' must be text", _RECALIBRATE)
    if rec["rule"] != ("area" if rec["area"] is not None else "image"):
        raise EdgeADError(f"calibration record {p}: 'rule' is {rec['rule']!r} but 'area' is "
                          f"{'set' if rec['area'] is not None else 'null'}", _RECALIBRATE)


def _check_numbers(rec: dict[str, Any], p: Path) -> None:
    """The numbers `decide` and the drift check use are numbers, and the minimum area is >= 1 pixel."""
    _check_number(rec["threshold"], "threshold", p)
    for block, prefix in ((rec, ""), (rec["area"], "area.")):
        if block is None:
            continue
        _check_number(block["expected_frr"], f"{prefix}expected_frr", p)
        iv = block["expected_frr_interval"]
        if not (isinstance(iv, list) and len(iv) == 2 and all(isinstance(v, (int, float)) for v in iv)):
            raise EdgeADError(f"calibration record {p}: '{prefix}expected_frr_interval' must be [low, high]",
                              _RECALIBRATE)
    if rec["area"] is not None:
        _check_number(rec["area"]["pixel_threshold"], "area.pixel_threshold", p)
        _check_number(rec["area"]["min_area_px"], "area.min_area_px", p, integer=True)
        if rec["area"]["min_area_px"] < 1:
            raise EdgeADError(f"calibration record {p}: 'area.min_area_px' must be >= 1", _RECALIBRATE)


def read_calibration(path: str | Path) -> dict[str, Any]:
    """A validated record (no engine check): missing, corrupt, unknown or missing keys are errors."""
    p = Path(path)
    rec = _load_yaml(p)
    if not isinstance(rec, dict) or rec.get("kind") != KIND:
        raise EdgeADError(f"{p} is not an edgead calibration record (no 'kind: {KIND}')",
                          f"pass a file written by `edgead calibrate`, or {_RECALIBRATE}")
    if rec.get("format") != FORMAT:
        raise EdgeADError(f"calibration record {p} has format {rec.get('format')!r}, this edgead reads format {FORMAT}",
                          _RECALIBRATE)
    _check_structure(rec, p)
    _check_numbers(rec, p)
    return rec


def load_calibration(path: str | Path, detector: Detector, force: bool = False) -> dict[str, Any]:
    """The record for this detector; another engine's record is refused (force: used, with a WARNING)."""
    rec = read_calibration(path)
    rec["forced"] = False
    eng = rec["engine"]
    if eng["fingerprint"] != detector.fingerprint:
        msg = (f"calibration record {path} was made with another engine (fingerprint {eng['fingerprint'][:12]}..., "
               f"{eng['backend']}/{eng['precision']} from {eng['path']}); the loaded engine is "
               f"{str(detector.fingerprint)[:12]}... ({detector.backend}/{detector.precision})")
        if not force:
            raise EdgeADError(msg, "its threshold does not apply to this engine's scores: recalibrate with "
                                   "`edgead calibrate --engine <this engine> --good DIR` (--force uses it anyway)")
        print(f"WARNING: {msg}. Using it anyway because of --force: the false-reject and escape rates "
              "it promises do not hold for this engine", file=sys.stderr)
        rec["forced"] = True
    return rec


# ---------------------------------------------------------------- applying it


def decide(score: float, amap: np.ndarray | None, calibration: dict[str, Any]) -> bool:
    """True = reject. The area rule when the record has one, else score > threshold; NaN rejects (fail safe)."""
    area = calibration["area"]
    if area is None:
        return not float(score) <= calibration["threshold"]
    if amap is None:
        raise EdgeADError("this calibration uses the area rule, which needs the anomaly map",
                          "pass the map returned by the detector")
    flat = np.asarray(amap).reshape(-1)
    k = flat.size - int(area["min_area_px"])
    if k < 0:
        raise EdgeADError(f"the anomaly map has {flat.size} pixels, fewer than the record's minimum area "
                          f"{area['min_area_px']}", _RECALIBRATE)
    return not float(np.partition(flat, k)[k]) <= area["pixel_threshold"]
