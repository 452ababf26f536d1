"""Reading images and folders of images, with errors a line operator can act on.

A folder copied off a camera PC often holds a half-written JPEG or a stray file;
those must name the file and say what to do, never surface as an OpenCV None.
Edge path: numpy + OpenCV only (no torch).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from edgead.errors import EdgeADError
from edgead.io import check_input
from edgead.preprocess import PreprocessSpec, preprocess, to_uint8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

log = logging.getLogger(__name__)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image as uint8 RGB HxWx3 (or HxW for gray files); 16-bit is scaled to 8-bit.

    Alpha is dropped; EXIF orientation is ignored, so a file reads exactly like the camera frame
    it was saved from. Reads via bytes + imdecode so non-ASCII paths work on every OS.
    """
    p = Path(path)
    if not p.exists():
        raise EdgeADError(f"image not found: {p}", "check the path")
    if not p.is_file():
        raise EdgeADError(f"not an image file: {p} is a folder", "pass an image file")
    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except OSError as e:
        raise EdgeADError(f"cannot read image {p}: {e.strerror or e}", "check the file's permissions") from e
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None or img.size == 0:
        raise EdgeADError(
            f"cannot decode image {p}: the file is corrupt, truncated or not an image",
            "re-export or remove the file",
        )
    try:
        img = to_uint8(img)
    except EdgeADError as e:
        raise EdgeADError(f"unsupported pixel type {img.dtype} in {p}", "save it as 8-bit or 16-bit") from e
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        elif img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        else:
            raise EdgeADError(f"unsupported {img.shape[2]}-channel image {p}", "save it as gray or RGB")
    return np.ascontiguousarray(img)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in `folder` (not subfolders), sorted by name.

    Hidden files are skipped: macOS leaves '._name.png' metadata files that are not images.
    """
    f = check_input(folder, kind="dir", what="the image folder", hint="pass the folder that holds the images")
    return sorted(
        p
        for p in f.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def check_size(image: np.ndarray, path: str | os.PathLike, spec: PreprocessSpec, min_side: int) -> None:
    """Refuse an image whose region used (its ROI, else the whole image) is below `min_side` pixels a side.

    Training passes the smallest input the model accepts (`ModelConfig.min_input_size`: the backbones'
    largest stride in the presets): such an image has fewer pixels than one cell of the deepest feature
    map, so resizing it to the input invents every feature the students would learn from.
    """
    h, w = (spec.roi[3], spec.roi[2]) if spec.roi is not None else image.shape[:2]
    if min(h, w) < min_side:
        raise EdgeADError(f"image {Path(path)} is {w}x{h} pixels, smaller than the {min_side}x{min_side} "
                          f"the model needs (its input is {spec.width}x{spec.height})",
                          "use the camera's full-size images")


def load_image(path: str | os.PathLike, spec: PreprocessSpec, min_side: int = 1) -> np.ndarray:
    """Read, check the size of and preprocess one image -> float32 (3, height, width)."""
    image = read_image(path)
    check_size(image, path, spec, min_side)
    return preprocess(image, spec)


def load_batch(
    paths: Iterable[str | os.PathLike], spec: PreprocessSpec, skip_bad: bool = False, min_side: int = 1
) -> tuple[np.ndarray, list[Path], list[Path]]:
    """Read and preprocess images -> (float32 NCHW, kept paths, bad paths).

    Without `skip_bad` the first unreadable image (or one below `min_side`, see `check_size`) raises;
    with it, bad images are logged and left out so one broken file does not stop a 5,000-image training run.
    """
    arrays: list[np.ndarray] = []
    kept: list[Path] = []
    bad: list[Path] = []
    for path in paths:
        p = Path(path)
        try:
            arrays.append(load_image(p, spec, min_side))
        except EdgeADError as e:
            if not skip_bad:
                msg = e.message if str(p) in e.message else f"{p}: {e.message}"
                raise EdgeADError(msg, "fix or remove it, or pass --skip-bad") from e
            log.warning("skipping %s: %s", p, e.message)
            bad.append(p)
            continue
        kept.append(p)
    if arrays:
        batch = np.stack(arrays)
    else:
        batch = np.empty((0, 3, spec.height, spec.width), dtype=np.float32)
    return batch, kept, bad
