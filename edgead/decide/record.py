"""The calibration record `calibration/<engine>.yaml`: building it, writing it, reading it back, applying it.

It carries the engine's fingerprint: scores from another engine (other weights, precision, backend
or preprocessing) do not match its threshold, so `load_calibration` refuses it. It carries a digest
of its own fields (`integrity`): an edited record is refused, as is a threshold its own score
statistics make implausible; `force` uses either anyway, with a WARNING, and says why in
`forced_reason`. The histogram figure (.png) and, with defect images, the threshold trade-off
table (.csv) are written beside it, all three or none. `decide` is the run loop's pass/reject step.
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
from edgead.decide.integrity import implausible, record_digest
from edgead.decide.scoring import Scored
from edgead.decide.text import pct
from edgead.errors import EdgeADError
from edgead.io import atomic_write, check_input, check_output, write_failed
from edgead.schema import safe_load

KIND = "edgead-calibration"
FORMAT = 2                      # 2: the digest, evt.anderson_darling; 1 (no digest) is read only with force
_RECALIBRATE = "recalibrate with `edgead calibrate --engine engines/NAME --good DIR`"
_FORCE = "; --force uses it anyway (warned, and recorded as forced with the reason)"

_RESULT = ("method", "method_reason", "expected_frr", "expected_frr_interval", "interval_method", "rejects", "evt")
_SCHEMA: dict[str, tuple[str, ...]] = {
    "": ("kind", "format", "created", "edgead_version", "engine", "rule", "threshold", "target_frr", *_RESULT,
         "area", "good", "defects", "files", "warnings", "digest"),
    "engine": ("path", "name", "fingerprint", "backend", "precision", "map_size"),
    "area": ("min_area_px", "min_area", "min_area_unit", "mm_per_px", "source_size", "map_size", "pixel_threshold",
             *_RESULT),
    "evt": ("tail_threshold", "tail_points", "tail_rate", "shape", "scale", "anderson_darling", "bootstrap_refits"),
    "good": ("folder", "n", "skipped", "scores", "area_scores"),
    "defects": ("folder", "n", "skipped", "scores", "area_scores", "escapes", "escape_rate", "f1_threshold", "f1",
                "f1_below_threshold", "trade_off"),
    "files": ("figure", "table"),
    "scores": ("n", "min", "mean", "std", "p50", "p90", "p99", "p99.9", "max"),
}
_SCHEMA["area_scores"] = _SCHEMA["scores"]
_NEW_IN_2 = ("digest", "anderson_darling")
_SCHEMA_1 = {block: tuple(k for k in keys if k not in _NEW_IN_2) for block, keys in _SCHEMA.items()}


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
    warnings += image.notes if area is None else [f"image threshold (for reference): {w}" for w in image.notes]
    record: dict[str, Any] = {
        "kind": KIND, "format": FORMAT,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "edgead_version": __version__, "engine": engine, "rule": "image" if area is None else "area",
        **image.to_dict(), "area": None,
    }
    if area is not None:
        assert good.area_scores is not None
        decision = T.calibrate_threshold(good.area_scores, target, method, refits=refits)
        warnings += [f"area rule: {w}" for w in decision.notes]
        d = decision.to_dict()
        record["area"] = {**area, "pixel_threshold": d.pop("threshold"),
                          **{k: v for k, v in d.items() if k != "target_frr"}}
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


def record_files(out: Path) -> tuple[Path, Path, Path]:
    """The record, its figure and its trade-off table."""
    return out, out.with_suffix(".png"), out.with_suffix(".csv")


def check_out(out: str | Path, overwrite: bool = False) -> Path:
    """Can the record (and its figure and table) be written at `out`? One EdgeADError naming --out, else the path.

    The record's own rule (a .yaml name) here; the rest is `edgead.io.check_output`, with the figure
    and the table as companions: an existing record, figure or table is replaced only with `overwrite`.
    """
    out = yaml_path(out)
    return check_output(out, kind="file", what="--out", overwrite=overwrite, companions=record_files(out)[1:])


def _table_csv(record: dict[str, Any]) -> bytes:
    rows = ["threshold,false_reject_rate,escape_rate,f1"]
    rows += [f"{r['threshold']!r},{r['false_reject_rate']!r},{r['escape_rate']!r},{r['f1']!r}"
             for r in record["defects"]["trade_off"]]
    return ("\n".join(rows) + "\n").encode()


def _dump(record: dict[str, Any]) -> str:
    return yaml.safe_dump(record, sort_keys=False, default_flow_style=None, width=120, allow_unicode=True)


def _write_all(files: list[tuple[Path, bytes]]) -> None:
    """Every file's bytes to a temporary file first, then the renames, the first file's last: all or none."""
    (path, data), rest = files[0], files[1:]

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)
        if rest:
            _write_all(rest)

    atomic_write(path, write)


def write_record(record: dict[str, Any], out: str | Path, good: np.ndarray,
                 defects: np.ndarray | None = None, overwrite: bool = True) -> Path:
    """The record, its figure (of these decision scores) and table, all or none; the record's digest is set here.

    A threshold the record's own statistics make implausible is refused (the line would refuse the record).
    """
    out = check_out(out, overwrite)
    record["format"] = FORMAT
    record["files"] = {"figure": out.with_suffix(".png").name,
                       "table": out.with_suffix(".csv").name if record["defects"] is not None else None}
    found = implausible(record)
    if found:
        raise EdgeADError(f"calibration record not written to {out}: {found[0]}",
                          "this threshold would be refused by `edgead run`: recalibrate on more good images")
    files = [(out.with_suffix(".png"), figure_png(record, good, defects))]
    if record["defects"] is not None:
        files.append((out.with_suffix(".csv"), _table_csv(record)))
    record.pop("digest", None)
    record["digest"] = record_digest(yaml.safe_load(_dump(record)))  # over exactly what will be read back
    try:
        _write_all([(out, _dump(record).encode()), *files])
        if record["defects"] is None:
            out.with_suffix(".csv").unlink(missing_ok=True)  # an earlier record's table: this one has none
    except OSError as e:
        raise write_failed(out, e, "--out", "no part of the record was written: calibrate again") from None
    return out


# ---------------------------------------------------------------- reading it back


def _check_keys(d: Any, where: str, path: Path, schema: dict[str, tuple[str, ...]] = _SCHEMA) -> None:
    name = where.rsplit(".", 1)[-1]
    if not isinstance(d, dict):
        raise EdgeADError(f"calibration record {path}: '{where}' must be a mapping, got {type(d).__name__}",
                          f"the file was edited or is damaged: {_RECALIBRATE}")
    want = schema[name]
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
    """The parsed file: a missing, unreadable or invalid-YAML file (or a key given twice) says which."""
    check_input(p, kind="file", what="calibration record",
                hint="calibrate first: edgead calibrate --engine engines/NAME --good DIR")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeADError(f"cannot read calibration record {p}: {getattr(e, 'strerror', None) or e}",
                          "check the path and the file's permissions") from e
    try:
        return safe_load(text, f"calibration record {p}")
    except EdgeADError as e:
        raise EdgeADError(f"{e.message} (the record is corrupt or was edited)", _RECALIBRATE) from None


def _check_structure(rec: dict[str, Any], p: Path, schema: dict[str, tuple[str, ...]]) -> None:
    """Every block holds exactly its keys; the fingerprint is text; `rule` agrees with `area`."""
    _check_keys(rec, "", p, schema)
    for name in ("engine", "good", "files"):
        _check_keys(rec[name], name, p, schema)
    for name in ("area", "defects"):
        if rec[name] is not None:
            _check_keys(rec[name], name, p, schema)
    for block, where in ((rec, "evt"), (rec["area"] or {}, "area.evt")):
        if block.get("evt") is not None:
            _check_keys(block["evt"], where, p, schema)
    if not isinstance(rec["engine"]["fingerprint"], str):
        raise EdgeADError(f"calibration record {p}: 'engine.fingerprint' must be text", _RECALIBRATE)
    if rec["rule"] != ("area" if rec["area"] is not None else "image"):
        raise EdgeADError(f"calibration record {p}: 'rule' is {rec['rule']!r} but 'area' is "
                          f"{'set' if rec['area'] is not None else 'null'}", _RECALIBRATE)
    for name in ("scores", "area_scores"):
        stats = rec["good"][name]
        if stats is None and (name == "scores" or rec["area"] is not None):
            raise EdgeADError(f"calibration record {p}: 'good.{name}' is missing", _RECALIBRATE)
        if stats is not None:
            _check_keys(stats, f"good.{name}", p, schema)
            for k, v in stats.items():
                _check_number(v, f"good.{name}.{k}", p, integer=k == "n")


def _check_numbers(rec: dict[str, Any], p: Path) -> None:
    """The numbers `decide`, the checks and the drift test use are numbers; the minimum area is >= 1 pixel."""
    _check_number(rec["threshold"], "threshold", p)
    _check_number(rec["target_frr"], "target_frr", p)
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


def _trust(rec: dict[str, Any], p: Path) -> list[tuple[str, str, str]]:
    """(reason, message, hint) for each thing that makes the record untrustworthy: what --force lets through."""
    found = []
    if rec["format"] == 1:
        found.append(("unverified record (format 1)",
                      f"calibration record {p} is format 1, written before records carried a digest: an edit to "
                      "it cannot be detected", f"{_RECALIBRATE}{_FORCE}"))
    elif rec["digest"] != record_digest(rec):
        name = "area.pixel_threshold" if rec["area"] is not None else "threshold"
        value = rec["area"]["pixel_threshold"] if rec["area"] is not None else rec["threshold"]
        found.append(("edited record",
                      f"calibration record {p} was edited after calibration: its digest does not match its "
                      f"contents (now '{name}: {value!r}', rule {rec['rule']}, method {rec['method']})",
                      f"a record decides every part and must not be changed by hand: {_RECALIBRATE}{_FORCE}"))
    for msg in implausible(rec):
        found.append(("implausible threshold", f"calibration record {p}: {msg}", f"{_RECALIBRATE}{_FORCE}"))
    return found


def force_through(rec: dict[str, Any], found: list[tuple[str, str, str]], force: bool) -> None:
    """Refuse with the first problem, or (force) print a WARNING for each and record why in `forced_reason`."""
    if not found:
        return
    if not force:
        raise EdgeADError(found[0][1], found[0][2])
    for _, msg, _ in found:
        print(f"WARNING: {msg}. Using it anyway because of --force: the false-reject and escape rates it "
              "promises may not hold", file=sys.stderr)
    reasons = [r for r in (rec.get("forced_reason") or "").split("; ") if r] + [r for r, _, _ in found]
    rec["forced"] = True
    rec["forced_reason"] = "; ".join(dict.fromkeys(reasons))


def read_calibration(path: str | Path, force: bool = False) -> dict[str, Any]:
    """A validated, verified record (no engine check). Missing, corrupt, unknown or missing keys are errors;
    an edited, unverifiable (format 1) or implausible one too, unless `force` (then WARNING, `forced_reason`)."""
    p = Path(path)
    rec = _load_yaml(p)
    if not isinstance(rec, dict) or rec.get("kind") != KIND:
        raise EdgeADError(f"{p} is not an edgead calibration record (no 'kind: {KIND}')",
                          f"pass a file written by `edgead calibrate`, or {_RECALIBRATE}")
    if rec.get("format") not in (1, FORMAT) or isinstance(rec.get("format"), bool):
        raise EdgeADError(f"calibration record {p} has format {rec.get('format')!r}, this edgead reads format {FORMAT}",
                          _RECALIBRATE)
    _check_structure(rec, p, _SCHEMA_1 if rec["format"] == 1 else _SCHEMA)
    _check_numbers(rec, p)
    found = _trust(rec, p)
    rec["forced"], rec["forced_reason"] = False, None
    force_through(rec, found, force)
    return rec


def check_engine(rec: dict[str, Any], path: str | Path, detector: Detector, force: bool = False) -> dict[str, Any]:
    """The record, refused when another engine made it (force: used, with a WARNING and the reason)."""
    eng = rec["engine"]
    if eng["fingerprint"] != detector.fingerprint:
        msg = (f"calibration record {path} was made with another engine (fingerprint {eng['fingerprint'][:12]}..., "
               f"{eng['backend']}/{eng['precision']} from {eng['path']}); the loaded engine is "
               f"{str(detector.fingerprint)[:12]}... ({detector.backend}/{detector.precision})")
        hint = ("its threshold does not apply to this engine's scores: recalibrate with "
                "`edgead calibrate --engine <this engine> --good DIR` (--force uses it anyway)")
        force_through(rec, [("engine mismatch", msg, hint)], force)
    return rec


def load_calibration(path: str | Path, detector: Detector, force: bool = False) -> dict[str, Any]:
    """The verified record for this detector: `read_calibration` then `check_engine`, both with `force`."""
    return check_engine(read_calibration(path, force), path, detector, force)


# ---------------------------------------------------------------- applying it


def decision_value(score: float, amap: np.ndarray | None, calibration: dict[str, Any]) -> tuple[float, float]:
    """(what is compared, the threshold it is compared with): the image score and the threshold, or with
    the area rule the map's min_area_px-th largest pixel and the pixel threshold."""
    area = calibration["area"]
    if area is None:
        return float(score), float(calibration["threshold"])
    if amap is None:
        raise EdgeADError("this calibration uses the area rule, which needs the anomaly map",
                          "pass the map returned by the detector")
    flat = np.asarray(amap).reshape(-1)
    k = flat.size - int(area["min_area_px"])
    if k < 0:
        raise EdgeADError(f"the anomaly map has {flat.size} pixels, fewer than the record's minimum area "
                          f"{area['min_area_px']}", _RECALIBRATE)
    return float(np.partition(flat, k)[k]), float(area["pixel_threshold"])


def decide(score: float, amap: np.ndarray | None, calibration: dict[str, Any]) -> bool:
    """True = reject. The area rule when the record has one, else score > threshold; NaN rejects (fail safe)."""
    value, threshold = decision_value(score, amap, calibration)
    return not value <= threshold
