"""`edgead calibrate`: score good (and defective) parts with an engine, choose the reject threshold
for a target false-reject rate, write the calibration record and print what it promises.

The folders are found here; scoring is `edgead.decide.scoring`, the record `edgead.decide.record`,
the maths `edgead.decide.thresholds`. `--check` is `edgead.decide.drift`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgead.backends.triton import is_triton_url, parse_url
from edgead.data.images import list_images, read_image
from edgead.data.mvtec import good_images, is_mvtec_root, test_samples
from edgead.decide import thresholds as T
from edgead.decide.progress import info
from edgead.decide.record import build_record, check_out, write_record
from edgead.decide.scoring import Scored, engine_info, score_images, source_hw
from edgead.decide.text import Log, pct, stderr
from edgead.errors import EdgeADError
from edgead.io import check_input
from edgead.preprocess import PreprocessSpec


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


ENGINE_HINT = "give an engine folder written by `edgead build-engine` (e.g. --engine engines/NAME)"


def check_inputs(engine: str | Path | None, good: str | Path, defects: str | Path | None = None) -> None:
    """--engine, --good and --defects exist and can be read (a folder each), before any image is scored."""
    if engine is not None and not is_triton_url(engine):     # a served model is checked when it is opened
        check_input(engine, kind="dir", what="--engine", hint=ENGINE_HINT)
    check_input(good, kind="dir", what="--good", hint="give a folder of good images, or an MVTec category root")
    if defects is not None:
        check_input(defects, kind="dir", what="--defects",
                    hint="give a folder of defective images, or an MVTec category root with test/<defect_type>/")


def _check_area_options(min_defect_area: float | None, mm_per_px: float | None) -> None:
    if mm_per_px is not None and min_defect_area is None:
        raise EdgeADError("--mm-per-px only makes sense with --min-defect-area",
                          "add --min-defect-area N (mm^2 with --mm-per-px), or drop --mm-per-px")
    if mm_per_px is not None and not (math.isfinite(mm_per_px) and mm_per_px > 0):
        raise EdgeADError(f"--mm-per-px must be a positive number, got {mm_per_px}",
                          "give the size of one source-image pixel in mm, e.g. --mm-per-px 0.05")
    if min_defect_area is not None and not (math.isfinite(min_defect_area) and min_defect_area > 0):
        raise EdgeADError(f"--min-defect-area must be a positive number, got {min_defect_area}",
                          "give the smallest defect area to reject, in source pixels (or mm^2 with --mm-per-px)")


def _area_rule(min_defect_area: float, mm_per_px: float | None, first_good: Path, spec: PreprocessSpec,
               map_size: list[int]) -> dict[str, Any]:
    """The record's `area` block (without its threshold): the minimum defect area in map pixels."""
    hw = source_hw(read_image(first_good), spec)
    return {"min_area_px": T.map_area(min_defect_area, hw, (map_size[0], map_size[1]), mm_per_px),
            "min_area": float(min_defect_area), "min_area_unit": "mm2" if mm_per_px else "source px",
            "mm_per_px": mm_per_px, "source_size": list(hw), "map_size": map_size}


def _one_image_size(good: Scored, defects: Scored | None) -> None:
    """The area rule needs one source size: a minimum area in pixels means another size in each."""
    sizes = good.sizes | (defects.sizes if defects else set())
    if len(sizes) > 1:
        raise EdgeADError(f"the images have different sizes ({', '.join(f'{w}x{h}' for h, w in sorted(sizes))}): "
                          "a minimum defect area means a different physical size in each",
                          "calibrate the area rule on images from one camera setting (or set a preprocess roi)")


def _engine_name(engine: str | Path) -> str:
    """The default record name: the engine folder's name, or a served model's name (not its URL options)."""
    return parse_url(str(engine)).model if is_triton_url(engine) else Path(engine).resolve().name


def calibrate(engine: str | Path, good: str | Path, defects: str | Path | None = None, target_frr: float = 0.001,
              method: str = "auto", out: str | Path | None = None, backend: str = "auto",
              precision: str | None = None, skip_bad: bool = False, min_defect_area: float | None = None,
              mm_per_px: float | None = None, refits: int = 200, log: Log = info,
              warn: Log = stderr, overwrite: bool = False, result: Log | None = None) -> tuple[dict[str, Any], Path]:
    """Score the folders with the engine, calibrate, write the record and its files; (record, yaml path).

    `log` gets the step messages, `result` (default: `log`) the summary printed at the end.

    An existing record (or its figure or table) at `out` is replaced only with `overwrite`; a path that
    cannot be written is refused before any image is scored.
    """
    from edgead.backends import load_detector  # at call time: a patched edgead.backends.load_detector is used

    target = T.check_target(target_frr)
    _check_area_options(min_defect_area, mm_per_px)
    check_inputs(engine, good, defects)
    good_list, good_dir, notes = good_paths(good)
    T.choose_method(len(good_list), target, method)  # too few images: fail before loading the engine
    bad_list = defect_paths(defects) if defects is not None else []
    out = check_out(out if out is not None else Path("calibration") / f"{_engine_name(engine)}.yaml", overwrite)
    detector = load_detector(engine, backend, precision)
    spec, info = engine_info(engine, detector)

    area = None
    if min_defect_area is not None:
        area = _area_rule(min_defect_area, mm_per_px, good_list[0], spec, info["map_size"])
    min_px = area["min_area_px"] if area else None
    log(f"scoring {len(good_list)} good images with {info['name']} ({detector.backend}/{detector.precision})")
    g = score_images(detector, spec, good_list, min_px, skip_bad, warn, label="scoring good images")
    d = None
    if bad_list:
        log(f"scoring {len(bad_list)} defective images")
        d = score_images(detector, spec, bad_list, min_px, skip_bad, warn, label="scoring defective images")
        if not d.paths:
            raise EdgeADError(f"none of the {len(bad_list)} defective images could be read", "fix or remove them")
    if area is not None:
        _one_image_size(g, d)
    folders = (str(good_dir), str(defects) if defects is not None else None)
    record = build_record(g, d, target, method, info, folders, area, notes, refits)
    path = write_record(record, out, g.decision, d.decision if d else None, overwrite=overwrite)
    for w in record["warnings"]:
        warn(f"WARNING: {w}")
    (result or log)(summary(record, path))
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
    lines.append(f"  false-reject rate: target {pct(record['target_frr'])}, expected {pct(r['expected_frr'])} "
                 f"[{pct(lo)}, {pct(hi)}] on {record['good']['n']} good images")
    dfx = record["defects"]
    if dfx:
        lines.append(f"  defects: {dfx['escapes']} of {dfx['n']} pass ({pct(dfx['escape_rate'])} escape rate); "
                     f"F1-optimal threshold {dfx['f1_threshold']:.6g} (F1 {dfx['f1']:.3f})")
    return "\n".join(lines)
