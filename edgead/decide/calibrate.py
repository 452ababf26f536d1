"""`edgead calibrate`: score good (and defective) parts with an engine, choose the reject threshold,
write the calibration record; `decide` applies it; `check_drift` tests it on fresh good parts.

The record is `calibration/<engine>.yaml` with a histogram figure (.png) and, with defect images,
the threshold trade-off table (.csv) beside it. It carries the engine's fingerprint: scores from
another engine (other weights, precision, backend or preprocessing) do not match its threshold,
so `load_calibration` refuses it. The maths is in `edgead.decide.thresholds`.
Edge path: numpy, scipy, OpenCV and PyYAML only (no torch, no matplotlib).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import yaml

from edgead import __version__
from edgead.decide import thresholds as T
from edgead.data.images import good_images, list_images, read_image
from edgead.data.mvtec import is_mvtec_root, test_samples
from edgead.errors import EdgeADError
from edgead.io import atomic_write_bytes, png_bytes
from edgead.preprocess import PreprocessSpec, preprocess

KIND = "edgead-calibration"
FORMAT = 1
EXIT_DRIFT = 3
CHECK_MIN_IMAGES = 10
_CHUNK = 32  # images preprocessed and scored at a time: maps never pile up in memory

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _pct(rate: float) -> str:
    return "n/a" if rate is None or not math.isfinite(rate) else f"{rate * 100:.3g}%"


# ---------------------------------------------------------------- image folders and scoring


def good_paths(folder: str | Path) -> tuple[list[Path], Path, list[str]]:
    """Good images (a folder, or an MVTec root's train/good), their folder, and notes to warn about."""
    root = Path(folder)
    paths = good_images(root, min_count=1)
    if is_mvtec_root(root):
        src = root / "train" / "good"
        return paths, src, [f"calibrating on {src}, the images the model was trained on: their scores run lower "
                            "than fresh parts', so more good parts may be rejected than the target; prefer a "
                            "held-out folder of good parts (e.g. new production images)"]
    return paths, root, []


def defect_paths(folder: str | Path) -> list[Path]:
    """Defective images: a folder of them, or every test/<type != good> image of an MVTec root."""
    root = Path(folder)
    if is_mvtec_root(root):
        paths = [s.path for s in test_samples(root) if s.label == 1]
    else:
        paths = list_images(root)
    if not paths:
        raise EdgeADError(f"no defective images found in {root}",
                          "pass a folder of defective images, or an MVTec category root with test/<defect_type>/")
    return paths


@dataclass
class Scored:
    """Image scores (and area scores when the area rule is on) of the images that could be read."""

    scores: np.ndarray
    area_scores: np.ndarray | None
    paths: list[Path]
    bad: list[Path] = field(default_factory=list)
    sizes: set[tuple[int, int]] = field(default_factory=set)  # source (height, width) after the ROI

    @property
    def decision(self) -> np.ndarray:
        return self.scores if self.area_scores is None else self.area_scores


def source_hw(image: np.ndarray, spec: PreprocessSpec) -> tuple[int, int]:
    """(height, width) of the part of a source image the model sees: the ROI, else the whole image."""
    if spec.roi is not None:
        return spec.roi[3], spec.roi[2]
    return int(image.shape[0]), int(image.shape[1])


def score_images(detector: Any, spec: PreprocessSpec, paths: Sequence[Path], min_area_px: int | None = None,
                 skip_bad: bool = False, warn: Log = _stderr) -> Scored:
    """Read, preprocess and score images in chunks; unreadable ones raise, or are skipped with skip_bad."""
    scores: list[np.ndarray] = []
    areas: list[np.ndarray] = []
    out = Scored(np.empty(0), None, [])
    batch: list[np.ndarray] = []

    def flush() -> None:
        s, maps = detector.infer(np.stack(batch))
        scores.append(np.asarray(s, np.float64).reshape(-1))
        if min_area_px is not None:
            areas.append(T.area_scores(maps, min_area_px))
        batch.clear()

    for p in paths:
        try:
            image = read_image(p)
            hw = source_hw(image, spec)
            x = preprocess(image, spec)
        except EdgeADError as e:
            if not skip_bad:
                msg = e.message if str(p) in e.message else f"{p}: {e.message}"
                raise EdgeADError(msg, "fix or remove it, or pass --skip-bad") from e
            warn(f"WARNING: skipping {p}: {e.message}")
            out.bad.append(Path(p))
            continue
        out.sizes.add(hw)
        out.paths.append(Path(p))
        batch.append(x)
        if len(batch) == _CHUNK:
            flush()
    if batch:
        flush()
    out.scores = np.concatenate(scores) if scores else np.empty(0)
    out.area_scores = (np.concatenate(areas) if areas else np.empty(0)) if min_area_px is not None else None
    if not np.isfinite(out.decision).all():
        raise EdgeADError("the engine returned NaN or inf scores", "rebuild the engine; if it persists, retrain")
    return out


def engine_info(engine_dir: str | Path, detector: Any) -> tuple[PreprocessSpec, dict[str, Any]]:
    """The engine's preprocessing and what the record says about the engine."""
    from edgead.backends.manifest import read_manifest

    manifest = read_manifest(Path(engine_dir))
    info = {"path": str(Path(engine_dir).resolve()), "name": Path(engine_dir).resolve().name,
            "fingerprint": detector.fingerprint, "backend": detector.backend, "precision": detector.precision,
            "map_size": [int(v) for v in manifest["map_size"]]}
    return PreprocessSpec.from_dict(manifest["preprocess"]), info


# ---------------------------------------------------------------- the record


def _area_config(min_defect_area: float | None, mm_per_px: float | None) -> None:
    if mm_per_px is not None and min_defect_area is None:
        raise EdgeADError("--mm-per-px only makes sense with --min-defect-area",
                          "add --min-defect-area N (mm^2 with --mm-per-px), or drop --mm-per-px")
    if mm_per_px is not None and not (math.isfinite(mm_per_px) and mm_per_px > 0):
        raise EdgeADError(f"--mm-per-px must be a positive number, got {mm_per_px}",
                          "give the size of one source-image pixel in mm, e.g. --mm-per-px 0.05")
    if min_defect_area is not None and not (math.isfinite(min_defect_area) and min_defect_area > 0):
        raise EdgeADError(f"--min-defect-area must be a positive number, got {min_defect_area}",
                          "give the smallest defect area to reject, in source pixels (or mm^2 with --mm-per-px)")


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
                            f"({_pct(decision.rejects / decision.n)}), far more than the target {_pct(target)}: "
                            "the tail fit is poor; add good images and recalibrate")
    record["good"] = {"folder": folders[0], "n": int(good.scores.size), "skipped": len(good.bad),
                      "scores": T.score_stats(good.scores),
                      "area_scores": None if good.area_scores is None else T.score_stats(good.area_scores)}
    record["defects"] = None
    if defects is not None:
        t = decision.threshold
        table = T.trade_off(good.decision, defects.decision)
        f1_t, f1 = T.f1_optimal(table)
        escapes = int((defects.decision <= t).sum())
        record["defects"] = {
            "folder": folders[1], "n": int(defects.scores.size), "skipped": len(defects.bad),
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
                f"({_pct(escapes / defects.scores.size)}); at {f1_t:.6g} the escape rate would be "
                f"{_pct(row['escape_rate'])} but good parts would be rejected at {_pct(row['false_reject_rate'])} "
                f"(target {_pct(target)}). The good-part threshold is kept: review the trade-off table and, "
                "to accept more false rejects, recalibrate with a higher --target-frr")
    record["files"] = {"figure": None, "table": None}
    record["warnings"] = warnings
    return record


def _yaml_path(out: str | Path) -> Path:
    if Path(out).suffix.lower() not in (".yaml", ".yml"):
        raise EdgeADError(f"--out {out} must be a .yaml file", "e.g. --out calibration/NAME.yaml")
    return Path(out)


def write_record(record: dict[str, Any], out: str | Path, good: np.ndarray,
                 defects: np.ndarray | None = None) -> Path:
    """Figure (of these decision scores) and table first, the YAML last: it never names missing files."""
    out = _yaml_path(out)
    record["files"]["figure"] = out.with_suffix(".png").name
    atomic_write_bytes(out.with_suffix(".png"), _figure_png(draw_figure(record, good, defects)))
    if record["defects"] is not None:
        record["files"]["table"] = out.with_suffix(".csv").name
        rows = ["threshold,false_reject_rate,escape_rate,f1"]
        rows += [f"{r['threshold']!r},{r['false_reject_rate']!r},{r['escape_rate']!r},{r['f1']!r}"
                 for r in record["defects"]["trade_off"]]
        atomic_write_bytes(out.with_suffix(".csv"), ("\n".join(rows) + "\n").encode())
    text = yaml.safe_dump(record, sort_keys=False, default_flow_style=None, width=120, allow_unicode=True)
    return atomic_write_bytes(out, text.encode())


def calibrate(engine: str | Path, good: str | Path, defects: str | Path | None = None, target_frr: float = 0.001,
              method: str = "auto", out: str | Path | None = None, backend: str = "auto",
              precision: str | None = None, skip_bad: bool = False, min_defect_area: float | None = None,
              mm_per_px: float | None = None, refits: int = 200, log: Log = print,
              warn: Log = _stderr) -> tuple[dict[str, Any], Path]:
    """Score the folders with the engine, calibrate, write the record and its files; (record, yaml path)."""
    from edgead.backends import load_detector

    target = T.check_target(target_frr)
    _area_config(min_defect_area, mm_per_px)
    good_list, good_dir, notes = good_paths(good)
    T.choose_method(len(good_list), target, method)  # too few images: fail before loading the engine
    bad_list = defect_paths(defects) if defects is not None else []
    out = _yaml_path(out if out is not None else Path("calibration") / f"{Path(engine).resolve().name}.yaml")
    detector = load_detector(engine, backend, precision)
    spec, info = engine_info(engine, detector)

    area = None
    if min_defect_area is not None:
        hw = source_hw(read_image(good_list[0]), spec)
        area = {"min_area_px": T.map_area(min_defect_area, hw, tuple(info["map_size"]), mm_per_px),
                "min_area": float(min_defect_area), "min_area_unit": "mm2" if mm_per_px else "source px",
                "mm_per_px": mm_per_px, "source_size": list(hw), "map_size": info["map_size"]}
    min_px = area["min_area_px"] if area else None
    log(f"scoring {len(good_list)} good images with {info['name']} ({detector.backend}/{detector.precision})")
    g = score_images(detector, spec, good_list, min_px, skip_bad, warn)
    d = None
    if bad_list:
        log(f"scoring {len(bad_list)} defective images")
        d = score_images(detector, spec, bad_list, min_px, skip_bad, warn)
        if not d.paths:
            raise EdgeADError(f"none of the {len(bad_list)} defective images could be read", "fix or remove them")
    if area is not None:
        sizes = g.sizes | (d.sizes if d else set())
        if len(sizes) > 1:
            raise EdgeADError(f"the images have different sizes ({', '.join(f'{w}x{h}' for h, w in sorted(sizes))}): "
                              "a minimum defect area means a different physical size in each",
                              "calibrate the area rule on images from one camera setting (or set a preprocess roi)")
    folders = (str(good_dir), str(defects) if defects is not None else None)
    record = build_record(g, d, target, method, info, folders, area, notes, refits)
    path = write_record(record, out, g.decision, d.decision if d else None)
    for w in record["warnings"]:
        warn(f"WARNING: {w}")
    log(summary(record, path))
    return record, path


def summary(record: dict[str, Any], path: Path) -> str:
    """What an engineer reads after calibrating."""
    area = record["area"]
    r = area or record
    t = area["pixel_threshold"] if area else record["threshold"]
    lo, hi = r["expected_frr_interval"]
    lines = [f"calibration written to {path} (figure {record['files']['figure']}"
             + (f", trade-off table {record['files']['table']})" if record["files"]["table"] else ")")]
    if area:
        lines.append(f"  rule: reject when at least {area['min_area_px']} anomaly-map pixels exceed {t:.6g} "
                     f"(image threshold {record['threshold']:.6g} for reference)")
    else:
        lines.append(f"  rule: reject when the score exceeds {t:.6g}")
    lines.append(f"  method: {r['method']} ({r['method_reason']})")
    lines.append(f"  false-reject rate: target {_pct(record['target_frr'])}, expected {_pct(r['expected_frr'])} "
                 f"[{_pct(lo)}, {_pct(hi)}] on {record['good']['n']} good images")
    dfx = record["defects"]
    if dfx:
        lines.append(f"  defects: {dfx['escapes']} of {dfx['n']} pass ({_pct(dfx['escape_rate'])} escape rate); "
                     f"F1-optimal threshold {dfx['f1_threshold']:.6g} (F1 {dfx['f1']:.3f})")
    return "\n".join(lines)


# ---------------------------------------------------------------- the figure (OpenCV)

_GOOD_BGR = (143, 157, 42)
_DEFECT_BGR = (81, 111, 231)
_RED = (40, 40, 200)
_F1_BGR = (150, 60, 120)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(img: np.ndarray, s: str, x: int, y: int, scale: float = 0.5, color: tuple[int, int, int] = (30, 30, 30),
          thick: int = 1, anchor: str = "left") -> None:
    (w, _), _ = cv2.getTextSize(s, _FONT, scale, thick)
    x = x - w if anchor == "right" else x - w // 2 if anchor == "center" else x
    cv2.putText(img, s, (int(x), int(y)), _FONT, scale, color, thick, cv2.LINE_AA)


def _figure_png(img: np.ndarray) -> bytes:
    try:
        return png_bytes(img, channels="bgr")
    except OSError as e:
        raise EdgeADError("PNG encoding of the calibration figure failed", "this is a bug; please report it") from e


def draw_figure(record: dict[str, Any], good_scores: np.ndarray, defect_scores: np.ndarray | None) -> np.ndarray:
    """Histograms (share of images per bin) of good and defect decision scores, threshold and target marked."""
    area = record["area"]
    t = area["pixel_threshold"] if area else record["threshold"]
    r = area or record
    good = np.asarray(good_scores, np.float64).reshape(-1)
    bad = np.asarray(defect_scores if defect_scores is not None else [], np.float64).reshape(-1)
    f1_t = record["defects"]["f1_threshold"] if record["defects"] else None

    W, H, L, R, TOP, B = 1000, 580, 80, 30, 110, 70
    x0, x1, y0, y1 = L, W - R, TOP, H - B
    img: np.ndarray = np.full((H, W, 3), 255, np.uint8)
    marks = [t] + ([f1_t] if f1_t is not None else [])
    vals = np.r_[good, bad, marks]
    lo, hi = float(vals.min()), float(vals.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    hi = max(hi, t + 0.12 * span)  # room for the reject side and its label
    edges = np.linspace(lo - 0.04 * span, hi + 0.04 * span, 41)

    def X(v: float) -> int:
        return int(round(x0 + (v - edges[0]) / (edges[-1] - edges[0]) * (x1 - x0)))

    hg = np.histogram(good, edges)[0] / max(good.size, 1)
    hd = np.histogram(bad, edges)[0] / max(bad.size, 1)
    ymax = max(float(hg.max(initial=0)), float(hd.max(initial=0)), 1e-9) * 1.12

    def Y(f: float) -> int:
        return int(round(y1 - f / ymax * (y1 - y0)))

    cv2.rectangle(img, (X(t), y0), (x1, y1), (232, 232, 250), -1)  # the reject side
    for hist, color in ((hg, _GOOD_BGR), (hd, _DEFECT_BGR)):
        layer = img.copy()
        for i, h in enumerate(hist):
            if h > 0:
                cv2.rectangle(layer, (X(edges[i]), Y(h)), (X(edges[i + 1]) - 1, y1), color, -1)
        img = cv2.addWeighted(layer, 0.6, img, 0.4, 0)
    cv2.rectangle(img, (x0, y0), (x1, y1), (60, 60, 60), 1)
    for v, label in _ticks(edges[0], edges[-1], 7):
        cv2.line(img, (X(v), y1), (X(v), y1 + 5), (60, 60, 60), 1)
        _text(img, label, X(v), y1 + 22, 0.45, anchor="center")
    for f, label in _ticks(0.0, ymax * 100, 5):
        cv2.line(img, (x0 - 5, Y(f / 100)), (x0, Y(f / 100)), (60, 60, 60), 1)
        _text(img, f"{label}%", x0 - 8, Y(f / 100) + 5, 0.45, anchor="right")
    _text(img, "share of images", x0, y0 - 8, 0.45)
    _text(img, f"area score (the {_ordinal(area['min_area_px'])} largest anomaly-map value)" if area
          else "image score", (x0 + x1) // 2, H - 20, 0.55, anchor="center")

    cv2.line(img, (X(t), y0), (X(t), y1), _RED, 2)
    side, dx = ("right", -8) if X(t) > x1 - 220 else ("left", 8)  # labels where there is room
    _text(img, f"threshold {t:.4g}", X(t) + dx, y0 + 20, 0.5, _RED, 1, anchor=side)
    _text(img, f"(target false-reject rate {_pct(record['target_frr'])})", X(t) + dx, y0 + 40, 0.45, _RED,
          anchor=side)
    _text(img, "<- PASS", X(t) - 8, y1 - 12, 0.5, _GOOD_BGR, 2, anchor="right")
    _text(img, "REJECT ->", X(t) + 8, y1 - 12, 0.5, _RED, 2)
    if f1_t is not None:
        for yy in range(y0, y1, 12):
            cv2.line(img, (X(f1_t), yy), (X(f1_t), min(yy + 6, y1)), _F1_BGR, 2)
        fside, fdx = ("right", -6) if X(f1_t) > x1 - 200 else ("left", 6)
        _text(img, f"F1-optimal {f1_t:.4g}", X(f1_t) + fdx, y0 + 64, 0.45, _F1_BGR, anchor=fside)

    lo_i, hi_i = r["expected_frr_interval"]
    _text(img, f"edgead calibration: {record['engine']['name']} ({record['engine']['backend']}/"
          f"{record['engine']['precision']})", L, 30, 0.7, thick=2)
    _text(img, f"target false-reject rate {_pct(record['target_frr'])}  ->  expected {_pct(r['expected_frr'])} "
          f"[{_pct(lo_i)}, {_pct(hi_i)}]  ({r['method']})", L, 58, 0.55)
    dfx = record["defects"]
    line3 = f"{record['good']['n']} good images"
    if dfx:
        line3 += f", {dfx['n']} defective: {dfx['escapes']} pass at the threshold ({_pct(dfx['escape_rate'])})"
    _text(img, line3, L, 84, 0.55)

    lx = x1 - 400
    for name, color, n in (("good", _GOOD_BGR, good.size), ("defective", _DEFECT_BGR, bad.size)):
        if n:
            cv2.rectangle(img, (lx, y0 - 20), (lx + 22, y0 - 6), color, -1)
            _text(img, f"{name} (n={n})", lx + 30, y0 - 7, 0.5)
            lx += 200
    return img


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _ticks(lo: float, hi: float, n: int) -> list[tuple[float, str]]:
    """About n round tick values (1, 2 or 5 times a power of ten) in [lo, hi], with labels."""
    raw = (hi - lo) / n if hi > lo else 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= 0.75 * raw)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    first = math.ceil(lo / step - 1e-9) * step
    values = [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]
    return [(v, f"{v + 0.0:.{decimals}f}") for v in values]


# ---------------------------------------------------------------- reading a record back

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
_RECALIBRATE = "recalibrate with `edgead calibrate --engine engines/NAME --good DIR`"


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


def read_calibration(path: str | Path) -> dict[str, Any]:
    """A validated record (no engine check): missing, corrupt, unknown or missing keys are errors."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgeADError(f"calibration record not found: {p}",
                          "calibrate first: edgead calibrate --engine engines/NAME --good DIR") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeADError(f"cannot read calibration record {p}: {getattr(e, 'strerror', None) or e}",
                          "check the path and the file's permissions") from e
    try:
        rec = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EdgeADError(f"calibration record {p} is corrupt (not valid YAML: {first})", _RECALIBRATE) from e
    if not isinstance(rec, dict) or rec.get("kind") != KIND:
        raise EdgeADError(f"{p} is not an edgead calibration record (no 'kind: {KIND}')",
                          f"pass a file written by `edgead calibrate`, or {_RECALIBRATE}")
    if rec.get("format") != FORMAT:
        raise EdgeADError(f"calibration record {p} has format {rec.get('format')!r}, this edgead reads format {FORMAT}",
                          _RECALIBRATE)
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
    return rec


def load_calibration(path: str | Path, detector: Any, force: bool = False) -> dict[str, Any]:
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


# ---------------------------------------------------------------- drift check


def check_drift(record_path: str | Path, good: str | Path, engine: str | Path | None = None,
                backend: str | None = None, precision: str | None = None, skip_bad: bool = False,
                force: bool = False, log: Log = print, warn: Log = _stderr) -> dict[str, Any]:
    """Re-score fresh good parts; is their false-reject rate still the calibrated one? (report['drift'])"""
    from edgead.backends import load_detector

    eng = read_calibration(record_path)["engine"]
    engine_dir = Path(engine) if engine is not None else Path(eng["path"])
    if engine is None and not engine_dir.is_dir():
        raise EdgeADError(f"the record's engine folder {engine_dir} is not found",
                          "pass --engine engines/NAME (the engine the record was calibrated with)")
    paths = good_images(good, min_count=CHECK_MIN_IMAGES)
    detector = load_detector(engine_dir, backend or eng["backend"], precision or eng["precision"])
    rec = load_calibration(record_path, detector, force)
    spec, _ = engine_info(engine_dir, detector)
    area = rec["area"]
    scored = score_images(detector, spec, paths, area["min_area_px"] if area else None, skip_bad, warn)
    n = len(scored.paths)
    if n < CHECK_MIN_IMAGES:
        raise EdgeADError(f"only {n} readable good images, the check needs at least {CHECK_MIN_IMAGES}",
                          "add good images to the folder")
    r, t = (area, area["pixel_threshold"]) if area else (rec, rec["threshold"])
    rejects = int((~(scored.decision <= t)).sum())
    report = T.drift_test(rejects, n, r["expected_frr"], r["expected_frr_interval"])
    report.update(record=str(record_path), folder=str(good), forced=rec["forced"],
                  median_score=float(np.median(scored.scores)), calibration_median=rec["good"]["scores"]["p50"])
    if area and scored.sizes and scored.sizes != {tuple(area["source_size"])}:
        warn(f"WARNING: these images are {', '.join(f'{w}x{h}' for h, w in sorted(scored.sizes))}, the calibration "
             f"used {area['source_size'][1]}x{area['source_size'][0]}: the minimum defect area now means another size")
    lo, hi = report["expected_frr_interval"]
    olo, ohi = report["observed_interval"]
    lines = [f"drift check of {record_path} on {n} good images from {good}",
             f"  calibrated: false-reject rate {_pct(r['expected_frr'])} [{_pct(lo)}, {_pct(hi)}] "
             f"({r['method']}, {rec['good']['n']} good images)",
             f"  observed:   {rejects} of {n} good parts rejected = {_pct(report['observed_frr'])} "
             f"[{_pct(olo)}, {_pct(ohi)}] (Clopper-Pearson 95%), binomial p = {report['binomial_p']:.3g}",
             f"  good-part median score {report['median_score']:.6g} (at calibration {report['calibration_median']:.6g})"]
    if report["drift"]:
        report["verdict"] += (": check the lighting, the camera (position, focus, lens, exposure) and the parts; "
                              "if the change is intended, recalibrate on fresh good parts with `edgead calibrate "
                              f"--engine {engine_dir} --good DIR`")
    lines.append(f"  verdict: {report['verdict']}")
    if report["detectable_rate"] is None:
        lines.append(f"  note: {n} images are too few for this check to flag any rate; use more good images")
    else:
        lines.append(f"  (with {n} images this check flags an observed rate of {_pct(report['detectable_rate'])} "
                     "or more)")
    log("\n".join(lines))
    return report
