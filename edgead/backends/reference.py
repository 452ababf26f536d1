"""Torch backend: the reference, straight from the model artifact (needs the training stack)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from edgead.io import sha256_file
from edgead.model.artifact import WEIGHTS_FILE, load_model
from edgead.model.kd import with_half_backbones


class TorchDetector:
    """Detector protocol over a `models/<name>/` artifact, FP32 (or FP16 autocast for drift studies)."""

    backend = "torch"

    def __init__(self, model_dir: str | Path, device: str = "cpu", precision: str = "fp32", max_batch: int = 8) -> None:
        self.model, self.metadata = load_model(model_dir, device)
        if precision == "fp16":
            self.model = with_half_backbones(self.model).to(device)
        self.device = torch.device(device)
        self.precision = precision
        self.max_batch = max_batch
        digest = hashlib.sha256(f"torch/{precision}/".encode())
        digest.update(sha256_file(Path(model_dir) / WEIGHTS_FILE).encode())
        self.fingerprint = digest.hexdigest()

    @torch.no_grad()
    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = [], []
        for i in range(0, len(batch), self.max_batch):
            x = torch.from_numpy(np.ascontiguousarray(batch[i:i + self.max_batch], np.float32)).to(self.device)
            if self.precision == "fp16":
                # Backbones in FP16, the scoring head in FP32 (as the FP16 engines do).
                tiles = self.model.tiles(x).half()
                t = [[f.float() for f in layers] for layers in self.model.teacher_features(tiles)]
                s = [[f.float() for f in layers] for layers in self.model.student_features(tiles)]
                amap, score = self.model.score(t, s)
            else:
                amap, score = self.model(x)
            scores.append(score.float().cpu().numpy())
            maps.append(amap[:, 0].float().cpu().numpy())
        return np.concatenate(scores), np.concatenate(maps)
