"""The model artifact `models/<name>/`: config.yaml, students.pt, metadata.json.

Teachers are not stored: they are public ImageNet weights, resolved by `edgead.model.weights` and
recorded by sha256 in the metadata so a different file is noticed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from edgead.model.config import ModelConfig
from edgead.errors import EdgeADError
from edgead.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from edgead.model.kd import DualKD

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "students.pt"
METADATA_FILE = "metadata.json"


def save_model(out: Path, model: DualKD, metadata: dict[str, Any]) -> None:
    """Write the three files atomically; metadata last, so its presence means a complete artifact."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_FILE, yaml.safe_dump(model.cfg.to_dict(), sort_keys=False))
    buf = io.BytesIO()
    torch.save(model.student_state(), buf)
    atomic_write_bytes(out / WEIGHTS_FILE, buf.getvalue())
    atomic_write_json(out / METADATA_FILE, metadata)


def read_metadata(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / METADATA_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgeADError(f"model metadata {path} is missing or unreadable",
                          "train the model again with `edgead train`") from exc


def load_config_from_model(model_dir: Path) -> ModelConfig:
    path = Path(model_dir) / CONFIG_FILE
    if not Path(model_dir).is_dir():
        raise EdgeADError(f"model folder not found: {model_dir}", "train one with `edgead train --data DIR --out models/NAME`")
    if not path.is_file():
        raise EdgeADError(f"{model_dir} is not an edgead model: {CONFIG_FILE} is missing",
                          "point --model at the folder written by `edgead train`")
    return ModelConfig.from_dict(yaml.safe_load(path.read_text()))


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[DualKD, dict[str, Any]]:
    """Rebuild the detector from its artifact, ready for inference (eval mode)."""
    model_dir = Path(model_dir)
    cfg = load_config_from_model(model_dir)
    metadata = read_metadata(model_dir)
    weights = model_dir / WEIGHTS_FILE
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise EdgeADError(f"student weights {weights} are missing or corrupt ({exc.__class__.__name__})",
                          "train the model again with `edgead train`") from exc
    model = DualKD(cfg)
    model.load_student_state(state)
    return model.to(device).eval(), metadata
