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
from edgead.io import atomic_write_bytes, atomic_write_json, atomic_write_text, check_input
from edgead.model.kd import DualKD
from edgead.model.weights import is_state_dict, read_torch_file
from edgead.schema import read_yaml

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "students.pt"
METADATA_FILE = "metadata.json"


def save_model(out: Path, model: DualKD, metadata: dict[str, Any]) -> None:
    """Write the three files atomically; metadata last, so its presence means a complete artifact (an old
    model's metadata goes first: a write failing half-way never leaves new files beside old metadata)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / METADATA_FILE).unlink(missing_ok=True)
    atomic_write_text(out / CONFIG_FILE, yaml.safe_dump(model.cfg.to_dict(), sort_keys=False))
    buf = io.BytesIO()
    torch.save(model.student_state(), buf)
    atomic_write_bytes(out / WEIGHTS_FILE, buf.getvalue())
    atomic_write_json(out / METADATA_FILE, metadata)


RETRAIN = "train the model again with `edgead train` (or restore the folder from a backup)"


def read_metadata(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / METADATA_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeADError(f"model metadata {path} is missing or unreadable", RETRAIN) from exc
    if not isinstance(data, dict):
        raise EdgeADError(f"model metadata {path} is not a JSON object", RETRAIN)
    return data


def load_config_from_model(model_dir: Path) -> ModelConfig:
    """The model's config.yaml; bad YAML or a value training would not have written is one message naming the file."""
    path = Path(model_dir) / CONFIG_FILE
    check_input(model_dir, kind="dir", what="the model folder", hint="train one with `edgead train --data DIR --out models/NAME`")
    if not path.is_file():
        raise EdgeADError(f"{model_dir} is not an edgead model: {CONFIG_FILE} is missing",
                          "point --model at the folder written by `edgead train`")
    try:
        data = read_yaml(path, "model config", RETRAIN)
    except EdgeADError as err:
        raise EdgeADError(err.message, f"restore the config.yaml the model was trained with, or {RETRAIN}") from None
    try:
        return ModelConfig.from_dict(data)
    except EdgeADError as err:
        detail = err.message[len("config: "):] if err.message.startswith("config: ") else err.message
        raise EdgeADError(f"model config {path} is not one edgead wrote: {detail}",
                          f"restore the config.yaml the model was trained with, or {RETRAIN}") from None


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[DualKD, dict[str, Any]]:
    """Rebuild the detector from its artifact, ready for inference (eval mode)."""
    model_dir = Path(model_dir)
    cfg = load_config_from_model(model_dir)
    metadata = read_metadata(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise EdgeADError(f"{model_dir} is not a complete edgead model: {WEIGHTS_FILE} is missing", RETRAIN)
    state = read_torch_file(weights, "student weights", RETRAIN)
    if not is_state_dict(state):
        raise EdgeADError(f"student weights {weights} are not a state_dict of tensors", RETRAIN)
    model = DualKD(cfg)
    try:
        model.load_student_state(state)
    except EdgeADError as err:
        raise EdgeADError(f"student weights {weights}: {err.message}", err.hint) from None
    return model.to(device).eval(), metadata
