"""`edgead predict`: score a folder of images offline with an engine and its calibration, no live loop.

What a user reaches for first on a new batch of parts: every image of the folder (and its subfolders)
is scored by the engine the line runs and decided with the line's own rule (`record.decide`, the
calibrated threshold or the area rule). `predictions.csv` gets one row per image: its path relative
to the folder, score, decision and margin (how far above or below the threshold it is, in the units
of the rule); `rejects/` an overlay of the anomaly map for every reject; `summary.json` the counts.
An unreadable image is never a pass: without `--skip-bad` it stops the job, with it it is a row with
decision `unreadable` and the job exits 6, as `run` does for unreadable frames.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgead.backends import engine_manifest, load_detector
from edgead.backends.manifest import preprocess_spec
from edgead.backends.triton import is_triton_url
from edgead.data.images import IMAGE_EXTENSIONS
from edgead.decide.progress import Progress, info, warn
from edgead.decide.record import decision_value, load_calibration
from edgead.decide.scoring import read_input
from edgead.errors import EdgeADError
from edgead.io import atomic_write_bytes, atomic_write_json, check_input, check_output, png_bytes
from edgead.preprocess import to_display
from edgead.runtime.overlay import heat_range, heatmap_overlay

CHUNK = 16                 # images scored at a time: maps never pile up in memory
EXIT_UNREADABLE = 6        # as `edgead run` for a recording with unreadable frames
COLUMNS = ("file", "score", "decision", "margin")


def image_files(folder: Path) -> list[Path]:
    """Every image under `folder`, subfolders included, sorted; hidden files (macOS '._' copies) skipped."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _overlay_name(relative: Path) -> str:
    return "__".join(relative.with_suffix("").parts) + "-overlay.png"


def _predict_chunk(paths: list[Path], data: Path, out: Path, detector: Any, record: dict[str, Any], spec: Any,
                   vrange: tuple[float, float], skip_bad: bool, rows: list[dict[str, Any]]) -> None:
    """Score and decide one chunk of images: a row each in `rows`, an overlay per reject."""
    images, inputs, kept = [], [], []
    for path in paths:
        got = read_input(path, spec, skip_bad, warn, skipped="recording as unreadable (not passed):")
        if got is None:
            rows.append({"file": str(path.relative_to(data)), "score": "", "decision": "unreadable", "margin": ""})
            continue
        images.append(got[0])
        inputs.append(got[1])
        kept.append(path)
    if not kept:
        return
    scores, maps = detector.infer(np.stack(inputs))
    for path, image, score, amap in zip(kept, images, scores, maps):
        value, threshold = decision_value(float(score), amap, record)
        reject = not value <= threshold                     # NaN rejects, as record.decide
        relative = path.relative_to(data)
        rows.append({"file": str(relative), "score": f"{float(score):.6g}",
                     "decision": "reject" if reject else "pass", "margin": f"{value - threshold:.6g}"})
        if reject:
            overlay = heatmap_overlay(to_display(image, spec), amap, *vrange)
            atomic_write_bytes(out / "rejects" / _overlay_name(relative), png_bytes(overlay))


def predict(engine: str | Path, calibration: str | Path, data: str | Path, out: str | Path, *,
            backend: str = "auto", precision: str | None = None, skip_bad: bool = False, force: bool = False,
            overwrite: bool = False, log: Callable[[str], None] = info) -> dict[str, Any]:
    """Score and decide every image under `data`; write the CSV, the reject overlays and the summary."""
    data = check_input(data, kind="dir", what="--data", hint="give a folder of images (subfolders are read too)")
    if not is_triton_url(engine):                     # a served model is checked when it is opened
        check_input(engine, kind="dir", what="--engine", hint="give an engine folder written by `edgead build-engine`")
    check_input(calibration, kind="file", what="--calibration",
                hint="give the record written by `edgead calibrate` (calibration/NAME.yaml)")
    paths = image_files(data)
    if not paths:
        raise EdgeADError(f"no images under {data}", "give a folder of PNG, JPG, BMP or TIFF images")
    out = check_output(out, kind="dir", what="--out", overwrite=overwrite)
    detector = load_detector(engine, backend, precision)
    record = load_calibration(calibration, detector, force)
    spec = preprocess_spec(engine_manifest(engine, detector))
    vrange = heat_range(record)
    if (out / "rejects").is_dir():                    # --overwrite: an earlier job's overlays must not linger
        shutil.rmtree(out / "rejects")
    (out / "rejects").mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    with Progress("predict", len(paths), "images") as bar:
        for start in range(0, len(paths), CHUNK):
            _predict_chunk(paths[start:start + CHUNK], data, out, detector, record, spec, vrange, skip_bad, rows)
            bar.update(len(paths[start:start + CHUNK]))
    rows.sort(key=lambda r: r["file"])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "predictions.csv", buffer.getvalue().encode())
    counts = {d: sum(r["decision"] == d for r in rows) for d in ("pass", "reject", "unreadable")}
    summary = {"images": len(rows), **counts, "threshold": record["threshold"], "area_rule": record["area"] is not None,
               "engine": {"path": str(Path(engine).resolve()), "backend": detector.backend,
                          "precision": detector.precision}, "data": str(data.resolve())}
    atomic_write_json(out / "summary.json", summary)
    log(f"{len(rows)} images: {counts['pass']} passed, {counts['reject']} rejected"
        + (f", {counts['unreadable']} UNREADABLE (not passed)" if counts["unreadable"] else "")
        + f" ({detector.backend}/{detector.precision}, threshold {record['threshold']:.6g}); "
          f"{out / 'predictions.csv'}, overlays of the rejects in {out / 'rejects'}")
    return summary
