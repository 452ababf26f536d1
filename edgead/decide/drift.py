"""`edgead calibrate --check`: does a calibration still hold? Fresh good parts are re-scored and their
false-reject rate is tested against the one the record promises (binomial test, `thresholds.drift_test`).

A drift means the camera, the lighting or the parts changed since calibration; the verb then exits
with EXIT_DRIFT so a line controller can act on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgead.backends.triton import is_triton_url
from edgead.data.mvtec import good_images
from edgead.decide import thresholds as T
from edgead.decide.record import check_engine, read_calibration
from edgead.decide.scoring import engine_info, score_images
from edgead.decide.text import Log, pct, stderr
from edgead.errors import EdgeADError
from edgead.io import check_input

EXIT_DRIFT = 3
CHECK_MIN_IMAGES = 10


def check_drift(record_path: str | Path, good: str | Path, engine: str | Path | None = None,
                backend: str | None = None, precision: str | None = None, skip_bad: bool = False,
                force: bool = False, log: Log = print, warn: Log = stderr) -> dict[str, Any]:
    """Re-score fresh good parts; is their false-reject rate still the calibrated one? (report['drift'])"""
    from edgead.backends import load_detector  # at call time: a patched edgead.backends.load_detector is used

    rec = read_calibration(record_path, force)  # an edited or implausible record: refused, or forced loudly
    eng = rec["engine"]
    ref = str(engine) if engine is not None else str(eng["path"])
    engine_dir: str | Path = ref if is_triton_url(ref) else Path(ref)    # a served model stays a URL
    if engine is None and not is_triton_url(ref):
        check_input(engine_dir, kind="dir", what="the record's engine folder",
                    hint="pass --engine engines/NAME (the engine the record was calibrated with)")
    paths = good_images(good, min_count=CHECK_MIN_IMAGES)
    detector = load_detector(engine_dir, backend or eng["backend"], precision or eng["precision"])
    check_engine(rec, record_path, detector, force)
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
    report.update(record=str(record_path), folder=str(good), forced=rec["forced"], forced_reason=rec["forced_reason"],
                  median_score=float(np.median(scored.scores)), calibration_median=rec["good"]["scores"]["p50"])
    if area and scored.sizes and scored.sizes != {tuple(area["source_size"])}:
        warn(f"WARNING: these images are {', '.join(f'{w}x{h}' for h, w in sorted(scored.sizes))}, the calibration "
             f"used {area['source_size'][1]}x{area['source_size'][0]}: the minimum defect area now means another size")
    if report["drift"]:
        report["verdict"] += (": check the lighting, the camera (position, focus, lens, exposure) and the parts; "
                              "if the change is intended, recalibrate on fresh good parts with `edgead calibrate "
                              f"--engine {engine_dir} --good DIR`")
    log(_report_text(report, rec, r, rejects, n))
    return report


def _report_text(report: dict[str, Any], rec: dict[str, Any], r: dict[str, Any], rejects: int, n: int) -> str:
    """What the check prints: the calibrated and the observed rate, the medians, the verdict."""
    lo, hi = report["expected_frr_interval"]
    olo, ohi = report["observed_interval"]
    lines = [f"drift check of {report['record']} on {n} good images from {report['folder']}",
             f"  calibrated: false-reject rate {pct(r['expected_frr'])} [{pct(lo)}, {pct(hi)}] "
             f"({r['method']}, {rec['good']['n']} good images)",
             f"  observed:   {rejects} of {n} good parts rejected = {pct(report['observed_frr'])} "
             f"[{pct(olo)}, {pct(ohi)}] (Clopper-Pearson 95%), binomial p = {report['binomial_p']:.3g}",
             f"  good-part median score {report['median_score']:.6g} "
             f"(at calibration {report['calibration_median']:.6g})",
             f"  verdict: {report['verdict']}"]
    if report["detectable_rate"] is None:
        lines.append(f"  note: {n} images are too few for this check to flag any rate; use more good images")
    else:
        lines.append(f"  (with {n} images this check flags an observed rate of {pct(report['detectable_rate'])} "
                     "or more)")
    return "\n".join(lines)
