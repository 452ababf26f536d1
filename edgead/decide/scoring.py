"""Scoring image files through a detector, as calibration and the drift check both do.

Images are read, preprocessed with the engine's own preprocessing and scored in chunks, so maps
never pile up in memory; with the area rule each image also gets its area score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgead.protocols import Detector
from edgead.backends import engine_manifest
from edgead.backends.manifest import preprocess_spec
from edgead.backends.triton import is_triton_url, parse_url
from edgead.data.images import read_image
from edgead.decide import thresholds as T
from edgead.decide.progress import Progress
from edgead.decide.text import Log, stderr
from edgead.errors import EdgeADError
from edgead.preprocess import PreprocessSpec, preprocess

CHUNK = 32  # images preprocessed and scored at a time


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


def read_input(path: str | Path, spec: PreprocessSpec, skip_bad: bool, warn: Log,
               skipped: str = "skipping") -> tuple[np.ndarray, np.ndarray] | None:
    """An image file and its engine input. Unreadable (or not preprocessable): raises with the
    --skip-bad hint, or with skip_bad warns (`skipped` says what becomes of it) and returns None."""
    try:
        image = read_image(path)
        return image, preprocess(image, spec)
    except EdgeADError as e:
        if not skip_bad:
            msg = e.message if str(path) in e.message else f"{path}: {e.message}"
            raise EdgeADError(msg, "fix or remove it, or pass --skip-bad") from e
        warn(f"WARNING: {skipped} {path}: {e.message}")
        return None


def score_images(detector: Detector, spec: PreprocessSpec, paths: Sequence[Path], min_area_px: int | None = None,
                 skip_bad: bool = False, warn: Log = stderr, label: str = "scoring images") -> Scored:
    """Read, preprocess and score images in chunks (a progress bar named `label` counts them);
    unreadable ones raise, or are skipped with skip_bad."""
    scores: list[np.ndarray] = []
    areas: list[np.ndarray] = []
    out = Scored(np.empty(0), None, [])
    batch: list[np.ndarray] = []
    bar = Progress(label, len(paths), "images")
    seen = 0

    def flush() -> None:
        s, maps = detector.infer(np.stack(batch))
        scores.append(np.asarray(s, np.float64).reshape(-1))
        if min_area_px is not None:
            areas.append(T.area_scores(maps, min_area_px))
        batch.clear()
        bar.update(seen - bar.done)

    with bar:
        for p in paths:
            seen += 1
            got = read_input(p, spec, skip_bad, warn)
            if got is None:
                out.bad.append(Path(p))
                continue
            image, x = got
            out.sizes.add(source_hw(image, spec))
            out.paths.append(Path(p))
            batch.append(x)
            if len(batch) == CHUNK:
                flush()
        if batch:
            flush()
        bar.update(seen - bar.done)
    out.scores = np.concatenate(scores) if scores else np.empty(0)
    out.area_scores = (np.concatenate(areas) if areas else np.empty(0)) if min_area_px is not None else None
    if not np.isfinite(out.decision).all():
        raise EdgeADError("the engine returned NaN or inf scores", "rebuild the engine; if it persists, retrain")
    return out


def engine_info(engine_dir: str | Path, detector: Detector) -> tuple[PreprocessSpec, dict[str, Any]]:
    """The engine's preprocessing and what the record says about the engine (a `triton://` URL: the
    served model, its manifest as the server carries it)."""
    manifest = engine_manifest(engine_dir, detector)
    if is_triton_url(engine_dir):
        url = parse_url(str(engine_dir))
        path, name = str(url), url.model
    else:
        path, name = str(Path(engine_dir).resolve()), Path(engine_dir).resolve().name
    info = {"path": path, "name": name,
            "fingerprint": detector.fingerprint, "backend": detector.backend, "precision": detector.precision,
            "map_size": [int(v) for v in manifest["map_size"]]}
    return preprocess_spec(manifest), info
