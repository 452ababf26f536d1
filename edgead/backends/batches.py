"""What every CPU detector does around its runtime: check a batch against the engine's input, and run
it in chunks of the engine's max batch (a longer burst from the camera is split, never refused)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgead.errors import EdgeADError

Run = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]


def checked_batch(batch: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """The batch as contiguous float32 N x C x H x W, or the error that says how to preprocess it."""
    if batch.ndim != 4 or tuple(batch.shape[1:]) != input_shape:
        raise EdgeADError(f"input batch has shape {tuple(batch.shape)}, the engine expects N x {input_shape}",
                          "preprocess frames with the engine's preprocessing (manifest.json: preprocess)")
    return np.ascontiguousarray(batch, dtype=np.float32)


def infer_in_chunks(run: Run, batch: np.ndarray, max_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores N, maps N x h x w) from `run` (scores n, maps n x 1 x h x w) over chunks of max_batch."""
    scores, maps = [], []
    for i in range(0, len(batch), max_batch):
        s, m = run(batch[i:i + max_batch])
        scores.append(np.asarray(s, np.float32).reshape(-1))
        maps.append(np.asarray(m, np.float32)[:, 0])
    return np.concatenate(scores), np.concatenate(maps)
