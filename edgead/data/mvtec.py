"""Datasets in the MVTec AD layout, the de-facto standard for anomaly-detection benchmarks.

    <category>/train/good/*.png
    <category>/test/good/*.png
    <category>/test/<defect_type>/*.png
    <category>/ground_truth/<defect_type>/<stem>_mask.png   (0 = good, 255 = defect)

Our own synthetic products (edgead.data.synth) are written in this layout too.

A defective test image without a mask file gets `mask_path=None`: its defect
region is *unknown* (not "no defect"). `Sample.has_mask` is False for it and
pixel-level metrics must leave it out; image-level metrics still use it.
Edge path: numpy + OpenCV only (no torch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgead.data.images import IMAGE_EXTENSIONS, list_images, read_image
from edgead.errors import EdgeADError

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image with its label; `mask_path` is None for good images and for unmasked defects."""

    path: Path
    label: int  # 0 good, 1 defective
    defect_type: str  # "good" or the test/<type> folder name
    mask_path: Path | None

    @property
    def has_mask(self) -> bool:
        """True when the pixel truth is known (good images: all zero)."""
        return self.label == 0 or self.mask_path is not None


def is_mvtec_root(folder: str | os.PathLike) -> bool:
    """A category root is a folder with train/good/ inside."""
    return (Path(folder) / "train" / GOOD).is_dir()


def _require_root(root: Path) -> None:
    if not is_mvtec_root(root):
        raise EdgeADError(
            f"{root} is not an MVTec-style category folder (no train/good/ inside)",
            "pass the category folder, e.g. mvtec/bottle, that holds train/ and test/",
        )


def train_samples(root: str | os.PathLike) -> list[Sample]:
    """The good training images of a category (train/good)."""
    r = Path(root)
    _require_root(r)
    return [Sample(p, 0, GOOD, None) for p in list_images(r / "train" / GOOD)]


def _find_mask(root: Path, defect_type: str, image: Path) -> Path | None:
    gt = root / "ground_truth" / defect_type
    # MVTec names masks <stem>_mask.png; some converted datasets keep the image's own stem.
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png"):
        if (gt / name).is_file():
            return gt / name
    for ext in IMAGE_EXTENSIONS:
        if ext != ".png" and (gt / f"{image.stem}_mask{ext}").is_file():
            return gt / f"{image.stem}_mask{ext}"
    return None


def test_samples(root: str | os.PathLike) -> list[Sample]:
    """All test images: test/good first, then each test/<type> (sorted), with mask paths."""
    r = Path(root)
    test = r / "test"
    if not test.is_dir():
        raise EdgeADError(
            f"no test/ folder in {r}",
            "evaluation needs test/good/ and test/<defect_type>/ folders (MVTec layout)",
        )
    types = sorted(d.name for d in test.iterdir() if d.is_dir() and not d.name.startswith("."))
    types.sort(key=lambda t: t != GOOD)  # stable: good first, the rest alphabetical
    samples: list[Sample] = []
    for t in types:
        for p in list_images(test / t):
            if t == GOOD:
                samples.append(Sample(p, 0, GOOD, None))
            else:
                samples.append(Sample(p, 1, t, _find_mask(r, t, p)))
    if not samples:
        raise EdgeADError(
            f"no test images found under {test}",
            "put images in test/good/ and test/<defect_type>/",
        )
    return samples


test_samples.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, despite the name


def read_mask(sample: Sample, shape: tuple[int, ...]) -> np.ndarray:
    """Ground truth as uint8 HxW in {0, 1} for an image of `shape` (HxW or HxWxC).

    Zeros for good images. For a defective image without a mask (unknown truth)
    this also returns zeros; check `sample.has_mask` before using it for pixel metrics.
    """
    hw = tuple(int(v) for v in shape[:2])
    if sample.mask_path is None:
        return np.zeros(hw, dtype=np.uint8)
    m = read_image(sample.mask_path)
    if m.shape[:2] != hw:
        raise EdgeADError(
            f"mask {sample.mask_path} is {m.shape[1]}x{m.shape[0]} but its image "
            f"{sample.path} is {hw[1]}x{hw[0]}",
            "masks must have exactly the size of their images; re-export the mask",
        )
    if m.ndim == 3:
        m = m.max(axis=2)
    return (m > 0).astype(np.uint8)


def good_images(folder: str | os.PathLike, min_count: int = 10) -> list[Path]:
    """Training images: a plain folder of good images, or an MVTec category root (its train/good)."""
    f = Path(folder)
    src = f / "train" / "good" if is_mvtec_root(f) else f
    paths = list_images(src)
    exts = "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    if not paths:
        raise EdgeADError(
            f"no images found in {src} (found 0, need at least {min_count})",
            f"put at least {min_count} good images ({exts}) in that folder, "
            "or pass an MVTec category root that has train/good/",
        )
    if len(paths) < min_count:
        raise EdgeADError(
            f"only {len(paths)} images found in {src}, need at least {min_count}",
            f"add more good images (ideally 50+) to {src}",
        )
    return paths
