"""A station: several cameras on one box (`cameras:` in the run YAML), each camera one RunConfig.

    engine: engines/washer                 # defaults every camera inherits: any key of edgead.runtime.config
    calibration: calibration/washer.yaml
    deadline_ms: 150
    record: runs/line1                     # inherited: each camera records into runs/line1/<name>/
    http: 127.0.0.1:8080                   # the station's own: one server for every camera
    memory_budget_mb: 2048                 # refuse to start when the engines take more (null: no limit)
    batch_window_ms: 1.0                   # how long a shared engine waits for the other cameras' parts
    cameras:
      - name: left                         # required, unique: the label of its events, metrics, alarms, records
        camera: gige:192.168.10.11
        outputs: [{type: gpio, chip: gpiochip0, line: 17, delay_ms: 120}]
      - name: right
        camera: {source: gige:192.168.10.12, exposure_us: 600}
        engine: engines/bolt               # another product: its own engine and calibration
        calibration: calibration/bolt.yaml
        outputs: [{type: gpio, chip: gpiochip0, line: 18, delay_ms: 80}]

A camera's mapping is merged over the top-level keys (a section such as `camera:` or `record:` key by
key, the camera's value winning; a list such as `outputs:` replaced whole), and the result is validated
exactly as a one-camera run config is, so a typo stops the start naming its camera and its key.
Folders that two cameras must not share get the camera's name: an inherited `record` folder and the
inherited (or default) `outbox_dir` each get a sub-folder `<name>/`; a camera's own value is used as
given, and two cameras on one folder are refused. Command-line flags win over both (`--record DIR` is
inherited like the top-level key; `--camera` names one camera, so a station refuses it).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgead.errors import EdgeADError
from edgead.io import check_input
from edgead.runtime.config import HttpConfig, RunConfig, from_dict
from edgead.schema import Place, at_least, build, known_keys, mapping, read_yaml

STATION = Place("run config")
STATION_KEYS = ("cameras", "http", "memory_budget_mb", "batch_window_ms")   # the station's, never a camera's
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SECTIONS = {"camera": "source", "record": "dir"}    # mappings merged key by key (and their shorthands)


@dataclass
class StationCamera:
    name: str
    cfg: RunConfig


@dataclass
class StationConfig:
    cameras: List[StationCamera] = field(default_factory=list)
    http: HttpConfig = field(default_factory=HttpConfig)
    memory_budget_mb: Optional[float] = None
    batch_window_ms: float = 1.0

    def check_paths(self) -> None:
        """Every camera's paths (engine, calibration, replay, record folder) before anything opens."""
        for cam in self.cameras:
            with_camera(cam.name, cam.cfg.check_paths)


def is_station(path: Optional[str]) -> bool:
    """A run YAML with a `cameras:` list (read only to look; the loaders check it properly)."""
    if not path or not Path(path).is_file():
        return False
    try:
        data = read_yaml(path, "run config", "check the path given to --config")
    except EdgeADError:
        return False
    return isinstance(data, dict) and "cameras" in data


def with_camera(name: str, fn: Any, *args: Any) -> Any:
    """Run fn; an EdgeADError it raises names the camera first."""
    try:
        return fn(*args)
    except EdgeADError as e:
        raise EdgeADError(f"camera '{name}': {e.message}", e.hint) from e


def _section(key: str, value: Any) -> Dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    return {_SECTIONS[key]: value if isinstance(value, str) else str(value)}


def merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """`over` on top of `base`: the sections key by key, any other key replaced whole."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k in _SECTIONS and (isinstance(v, dict) or isinstance(out.get(k), dict)) and v is not None:
            out[k] = {**_section(k, out.get(k)), **_section(k, v)}
        else:
            out[k] = copy.deepcopy(v)
    return out


def _camera_list(data: Dict[str, Any]) -> List[Dict[str, Any]]:
    raw = data.get("cameras")
    if not isinstance(raw, list) or not raw:
        raise STATION.error("'cameras' must be a non-empty list of cameras",
                            "each item is a mapping starting with '- name: NAME' (and camera:, outputs:, ...)")
    seen: Dict[str, int] = {}
    for i, item in enumerate(raw):
        place = Place(f"run config: cameras[{i}]")
        mapping(item, place, "each camera is a mapping like {name: left, camera: gige:192.168.10.11}")
        name = item.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise place.bad("name", name, "a name of letters, digits, '_', '.' or '-' (at most 64, starting with a "
                                          "letter or digit): it labels the camera's events, metrics and folders")
        if name in seen:
            raise place.error(f"camera name '{name}' is used twice (cameras[{seen[name]}] and cameras[{i}])",
                              "give every camera its own name")
        seen[name] = i
        for key in STATION_KEYS:
            if key in item:
                raise EdgeADError(f"camera '{name}': '{key}' belongs to the whole station",
                                  f"set '{key}' at the top level of the run config, not under a camera")
    return raw


def _defaults(data: Dict[str, Any]) -> Dict[str, Any]:
    allowed = {f.name for f in fields(RunConfig)} | set(STATION_KEYS)
    known_keys(data, allowed, STATION)
    return {k: v for k, v in data.items() if k not in STATION_KEYS}


def _camera_dict(name: str, defaults: Dict[str, Any], own: Dict[str, Any],
                 overrides: Dict[str, Any]) -> Dict[str, Any]:
    """The camera's merged mapping, with the shared folders given the camera's sub-folder."""
    own = {k: v for k, v in own.items() if k != "name"}
    d = merge(merge(defaults, own), overrides)
    record = _section("record", d.get("record"))
    own_record = _section("record", own.get("record")).get("dir")
    if record.get("dir") and not own_record:
        record["dir"] = str(Path(str(record["dir"])) / name)
        d["record"] = record
    if not own.get("outbox_dir"):
        from edgead.signals.outbox import resolve_outbox_dir

        d["outbox_dir"] = str(resolve_outbox_dir(d.get("outbox_dir")) / name)
    return d


def station_from_dict(data: Dict[str, Any], overrides: Optional[Dict[str, Any]] = None) -> StationConfig:
    """The station from a YAML mapping; `overrides` (command-line flags) apply to every camera."""
    over = dict(overrides or {})
    if "camera" in over:
        raise EdgeADError("--camera names one camera, but this run config has a `cameras:` list",
                          "leave --camera out (each camera's source is in its own `camera:`), or use a one-camera config")
    http = over.pop("http", None)
    defaults = _defaults(data)
    record = over.pop("record", None)
    if record is not None:
        defaults = merge(defaults, {"record": record})
    cameras = []
    for item in _camera_list(data):
        name = item["name"]
        cfg = with_camera(name, from_dict, _camera_dict(name, defaults, item, over))
        cameras.append(StationCamera(name, cfg))
    station: StationConfig = build(StationConfig, _station_keys(data, http), STATION)
    station.cameras = cameras
    _validate(station)
    return station


def _station_keys(data: Dict[str, Any], http: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The station's own keys; the `http` flag on top of the file's `http:` (shorthand `http: 8080` too)."""
    keys = {k: data[k] for k in STATION_KEYS[1:] if data.get(k) is not None}
    h = keys.get("http")
    h = {} if h is None else dict(h) if isinstance(h, dict) else {"listen": h}
    if http:
        h.update(http)
    keys["http"] = h
    return keys


def _validate(station: StationConfig) -> None:
    station.http.validate()
    at_least(STATION, "memory_budget_mb", station.memory_budget_mb, 1, optional=True)
    at_least(STATION, "batch_window_ms", station.batch_window_ms, 0)
    for what, get in (("record folder", lambda c: c.record.dir), ("outbox_dir", lambda c: c.outbox_dir if c.outputs
                                                                                        else None)):
        owners: Dict[str, str] = {}
        for cam in station.cameras:
            folder = get(cam.cfg)
            if not folder:
                continue
            key = str(Path(folder).expanduser().resolve())
            if key in owners:
                raise EdgeADError(f"cameras '{owners[key]}' and '{cam.name}' share the {what} {folder}",
                                  "give each camera its own folder (or leave it out: the top-level one gets a "
                                  "sub-folder per camera)")
            owners[key] = cam.name


def load_station_config(path: str, overrides: Optional[Dict[str, Any]] = None) -> StationConfig:
    """The station YAML at `path` with command-line overrides applied to every camera."""
    check_input(path, kind="file", what="--config",
                hint="give the run YAML file (its keys are documented in edgead/runtime/station_config.py)")
    data = read_yaml(path, "run config", "check the path given to --config") or {}
    return station_from_dict(mapping(data, STATION), overrides)
