"""The parts the run-loop tests inspect: the tiny product's good training images and, every third one,
the same image with a 56x56 block of noise (the tiny model scores it far above the good ones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFECT_EVERY = 3   # part k is defective when k % 3 == 2


def good_and_defective(folder: Path) -> tuple[list[np.ndarray], list[int]]:
    """(RGB images, labels 0 good / 1 defective), in the folder's order."""
    from edgead.data.images import list_images, read_image

    rng = np.random.default_rng(1)
    images, labels = [], []
    for k, p in enumerate(list_images(folder)):
        img = read_image(p)
        defective = k % DEFECT_EVERY == DEFECT_EVERY - 1
        if defective:
            img = img.copy()
            img[20:76, 20:76] = rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)
        images.append(img)
        labels.append(int(defective))
    return images, labels
