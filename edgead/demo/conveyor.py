"""A synthetic conveyor: the held-back parts of an MVTec-layout folder as a camera recording.

The demo (and anyone commissioning a line without the line) needs parts that pass the camera in a
known order, so every decision of the real run loop can be scored against the truth. The parts
are the test split (good and defective, shuffled with a seed), written as a lossless video (FFV1,
so the run loop sees the same pixels as the evaluation; MJPG where FFV1 is missing) in trigger
order: frame i is part i. Parts of different sizes or bit depths cannot share a video; they become a
folder of numbered images instead, which `edgead run` replays the same way.
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import cv2
import numpy as np

from edgead.data.images import read_image
from edgead.data.mvtec import test_samples
from edgead.errors import EdgeADError
from edgead.io import atomic_write_json

VIDEO_CODECS = ("FFV1", "MJPG")   # lossless first


@dataclass(frozen=True)
class Part:
    """One part on the belt: frame index, truth, and the image it came from."""

    frame: int
    label: int            # 0 good, 1 defective
    defect_type: str      # "good" for good parts
    path: str
    mask: str | None


def conveyor_parts(root: str | Path, seed: int = 0, max_parts: int | None = None) -> list[Part]:
    """The test split in a reproducible shuffled order (good and defective parts mixed as on a line)."""
    samples = test_samples(Path(root))
    if not samples:
        raise EdgeADError(f"{root} has no test images to put on the conveyor", "add test/good and test/<defect> images")
    order = np.random.default_rng(seed).permutation(len(samples))
    if max_parts is not None:
        order = order[:max_parts]
    return [Part(frame=i, label=int(samples[j].label), defect_type=samples[j].defect_type, path=str(samples[j].path),
                 mask=str(samples[j].mask_path) if samples[j].mask_path else None) for i, j in enumerate(order)]


class _NotOneVideo(Exception):
    """The parts differ in size or bit depth: they cannot share one video."""


def _video_frames(parts: list[Part]) -> Iterator[np.ndarray]:
    """The parts' images as uint8 RGB frames of one size, read one at a time (a long belt never sits in RAM)."""
    size = None
    for p in parts:
        img = read_image(p.path)
        if img.dtype != np.uint8 or (size is not None and img.shape[:2] != size):
            raise _NotOneVideo(p.path)
        size = img.shape[:2]
        yield np.dstack([img] * 3) if img.ndim == 2 else img[..., :3]


def write_video(frames: Iterable[np.ndarray], path: Path, fps: float = 10.0, prefer: str | None = None) -> str:
    """Write RGB frames of one size to `path` (.avi), with codec `prefer` first if given; returns the codec."""
    it = iter(frames)
    first = next(it)
    h, w = first.shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    for codec in dict.fromkeys(((prefer,) if prefer else ()) + VIDEO_CODECS):
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))  # type: ignore[attr-defined]
        if writer.isOpened():
            break
    else:
        raise EdgeADError(f"this OpenCV build cannot write a video ({' or '.join(VIDEO_CODECS)}) to {path}",
                          "install opencv-python-headless from pip (it has both codecs)")
    try:
        for f in itertools.chain([first], it):
            writer.write(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return codec


def write_conveyor(parts: list[Part], out_dir: str | Path, fps: float = 10.0) -> dict[str, Any]:
    """Write the recording and `truth.json`; returns {source, kind, codec, truth, parts}."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        source, kind, codec = out / "conveyor.avi", "video", write_video(_video_frames(parts), out / "conveyor.avi", fps)
    except _NotOneVideo:
        (out / "conveyor.avi").unlink(missing_ok=True)
        source, kind, codec = out / "frames", "folder", None
        source.mkdir()
        width = max(4, len(str(len(parts))))
        for p in parts:
            shutil.copyfile(p.path, source / f"part_{p.frame:0{width}d}{Path(p.path).suffix.lower()}")
    info = {"source": str(source), "kind": kind, "codec": codec, "fps": fps, "parts": [asdict(p) for p in parts]}
    atomic_write_json(out / "truth.json", info)
    return {**info, "truth": str(out / "truth.json")}


def score_run(parts: list[Part], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Every decision of a run against the truth; a part with no decision counts as a miss, never a pass."""
    by_seq = {int(e["seq"]): e for e in events if "seq" in e}
    good = [p for p in parts if p.label == 0]
    bad = [p for p in parts if p.label == 1]

    def rejected(p: Part) -> bool:
        e = by_seq.get(p.frame)
        return e is not None and e["decision"] in ("reject", "safe_reject")

    false_rejects = [p for p in good if rejected(p)]
    escapes = [p for p in bad if not rejected(p)]
    missing = [p.frame for p in parts if p.frame not in by_seq]
    return {
        "parts": len(parts), "good": len(good), "defective": len(bad), "decided": len(parts) - len(missing),
        "missing_decisions": missing,
        "false_rejects": len(false_rejects), "escapes": len(escapes),
        "false_reject_rate": len(false_rejects) / len(good) if good else None,
        "escape_rate": len(escapes) / len(bad) if bad else None,
        "safe_actions": sum(1 for e in by_seq.values() if e["decision"] == "safe_reject"),
        "false_reject_frames": [p.frame for p in false_rejects],
        "escape_frames": [p.frame for p in escapes],
        "escapes_by_type": {t: sum(1 for p in escapes if p.defect_type == t) for t in sorted({p.defect_type for p in bad})},
    }


def stage_latencies(events: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """p50/p90/p99 in ms of every latency stage the run loop recorded (queue, preprocess, infer, ...)."""
    stages: dict[str, list[float]] = {}
    for e in events:
        for name, v in (e.get("latency_ms") or {}).items():
            if v is not None:
                stages.setdefault(name, []).append(float(v))
    return {name: {**{f"p{q}": round(float(np.percentile(v, q)), 2) for q in (50, 90, 99)}, "n": len(v)}
            for name, v in stages.items()}
