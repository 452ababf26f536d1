"""The run configuration (`edgead run --config run.yaml`): typed; an unknown key is an error naming it.

Defaults, then the YAML file, then command-line flags (flags win). A typo in a line's config must
stop the run before the first part, never be ignored: a misspelt `deadline_ms` silently falling back
to the default is exactly the failure an inspection station cannot afford.

    engine: engines/washer            # required
    calibration: calibration/washer.yaml   # required
    backend: auto                     # auto | tensorrt | onnxruntime
    precision: null                   # null (the backend's default) | fp16 | fp32
    threads: null                     # ONNX Runtime CPU threads (null: the backend's default); leave
                                      #   a core for the camera and outputs on a small box
    camera:                           # or just `camera: gige:Fake_1`
      source: gige:Fake_1             # 0 | file | url | gst:... | folder | gige:ID | genicam:CTI[:SERIAL]
      live: auto                      # auto (a file or folder is a replay: the loop waits for it) | true | false
      stall_alarm_s: 0                # alarm when no frame arrives for this long (0: off; trigger lines idle)
      exposure_us: 800                # every other key is the capture module's (edgead.capture.config):
      frame_rate: 30                  #   exposure_us, gain_db, pixel_format, trigger, frame_rate, loop, ...
    roi: null                         # [x, y, w, h]: must equal the engine's (see edgead.runtime.run.check_roi)
    trigger: true                     # each frame is one part; or
    every_nth: null                   # free-running: inspect every Nth frame (then trigger must not be true)
    deadline_ms: 200
    safe_action: reject               # reject (reject + alarm) | stop (reject + alarm, then end the run)
    max_batch: null                   # <= the engine's max batch (null: the engine's)
    max_frames: null
    record:                           # or just `record: runs/NAME`
      dir: null                       # null: nothing is recorded
      quota_mb: 1024
      save_rejects: true
      save_good_every: 0              # also keep every Nth good frame (0: none)
      ring_size: 16                   # recent good frames kept in memory (ring_size x frame size of RAM),
                                      #   written to ring/ when an alarm is raised and at exit
      queue: 16                       # images waiting for the disk before new ones are dropped
    http:                             # or just `http: 127.0.0.1:8080`
      listen: null                    # PORT or HOST:PORT; a bare port binds 127.0.0.1
      max_fps: 10
    outputs: []                       # reject outputs (edgead.signals.config: - type: gpio|modbus|mqtt|...)
    on_sink_failure: alarm            # alarm | stop
    allow_degraded: false             # start even when an output reports unhealthy
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from edgead.errors import EdgeADError

SAFE_ACTIONS = ("reject", "stop")
SINK_FAILURE = ("alarm", "stop")
LIVE = ("auto", True, False)


def _bad(key: str, value: Any, want: str) -> EdgeADError:
    return EdgeADError(f"run config: '{key}' has a bad value {value!r}", f"expected {want}")


def _keys(section: str, data: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise EdgeADError(f"run config: '{section or 'the file'}' must be a mapping, got {type(data).__name__}",
                          "write it as 'key: value' lines")
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        name = f"{section}.{unknown[0]}" if section else unknown[0]
        raise EdgeADError(f"run config: unknown key '{name}'",
                          f"allowed keys{f' in {section!r}' if section else ''}: {', '.join(sorted(allowed))}")
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check(key: str, value: Any, kind: str, minimum: float | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    ok = {"str": isinstance(value, str), "bool": isinstance(value, bool), "int": _is_int(value),
          "num": _is_num(value), "dict": isinstance(value, dict), "list": isinstance(value, list)}[kind]
    want = {"str": "text", "bool": "true or false", "int": "a whole number", "num": "a number",
            "dict": "a mapping", "list": "a list"}[kind]
    if ok and minimum is not None and value < minimum:
        ok, want = False, f"{want} >= {minimum:g}"
    if not ok:
        raise _bad(key, value, want + (" or null" if optional else ""))


@dataclass
class CameraConfig:
    """`source`, `live` and `stall_alarm_s` are the run loop's; every other key goes to edgead.capture."""

    source: str | None = None
    live: Any = "auto"
    stall_alarm_s: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        _check("camera.source", self.source, "str", optional=True)
        if self.live not in LIVE:
            raise _bad("camera.live", self.live, "auto, true or false")
        _check("camera.stall_alarm_s", self.stall_alarm_s, "num", 0)
        from edgead.capture.config import CameraConfig as CaptureConfig

        try:
            CaptureConfig.from_dict(self.settings)  # the capture module names its own bad keys
        except EdgeADError as e:
            if "allowed keys" in e.hint:
                e.hint = e.hint.replace(": ", ": live, source, stall_alarm_s (the run loop's); ", 1)
            raise

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "live": self.live, "stall_alarm_s": self.stall_alarm_s, **self.settings}


@dataclass
class RecordConfig:
    dir: str | None = None
    quota_mb: float = 1024.0
    save_rejects: bool = True
    save_good_every: int = 0
    ring_size: int = 16
    queue: int = 16

    def validate(self) -> None:
        _check("record.dir", self.dir, "str", optional=True)
        _check("record.quota_mb", self.quota_mb, "num", 1)
        _check("record.save_rejects", self.save_rejects, "bool")
        _check("record.save_good_every", self.save_good_every, "int", 0)
        _check("record.ring_size", self.ring_size, "int", 0)
        _check("record.queue", self.queue, "int", 1)


@dataclass
class HttpConfig:
    listen: str | None = None
    max_fps: float = 10.0

    def validate(self) -> None:
        if _is_int(self.listen):
            self.listen = str(self.listen)
        _check("http.listen", self.listen, "str", optional=True)
        if self.listen is not None:
            parse_listen(self.listen)
        _check("http.max_fps", self.max_fps, "num", 0.1)


@dataclass
class RunConfig:
    engine: str | None = None
    calibration: str | None = None
    backend: str = "auto"
    precision: str | None = None
    threads: int | None = None
    camera: CameraConfig = field(default_factory=CameraConfig)
    roi: tuple[int, int, int, int] | None = None
    trigger: bool | None = None
    every_nth: int | None = None
    deadline_ms: float = 200.0
    safe_action: str = "reject"
    max_batch: int | None = None
    max_frames: int | None = None
    record: RecordConfig = field(default_factory=RecordConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    on_sink_failure: str = "alarm"
    allow_degraded: bool = False

    @property
    def trigger_mode(self) -> bool:
        """True: each frame is one part (never dropped). False: free-running, every Nth frame inspected."""
        return self.every_nth is None

    @property
    def nth(self) -> int:
        return 1 if self.every_nth is None else self.every_nth

    def validate(self) -> None:
        for key in ("engine", "calibration"):
            _check(key, getattr(self, key), "str", optional=True)
        if self.backend not in ("auto", "tensorrt", "onnxruntime"):
            raise _bad("backend", self.backend, "auto, tensorrt or onnxruntime")
        if self.precision not in (None, "fp16", "fp32"):
            raise _bad("precision", self.precision, "null, fp16 or fp32")
        _check("threads", self.threads, "int", 1, optional=True)
        self.camera.validate()
        if self.roi is not None:
            r = self.roi
            if not (isinstance(r, (list, tuple)) and len(r) == 4 and all(_is_int(v) for v in r)
                    and r[0] >= 0 and r[1] >= 0 and r[2] >= 1 and r[3] >= 1):
                raise _bad("roi", r, "[x, y, w, h] whole numbers, x, y >= 0, w, h >= 1, or null")
            self.roi = (int(r[0]), int(r[1]), int(r[2]), int(r[3]))
        _check("trigger", self.trigger, "bool", optional=True)
        _check("every_nth", self.every_nth, "int", 1, optional=True)
        if self.trigger and self.every_nth is not None:
            raise EdgeADError("run config: 'trigger: true' and 'every_nth' both set",
                              "trigger mode inspects every frame (each is one part); every_nth is the free-running "
                              "mode: choose one")
        if self.trigger is False and self.every_nth is None:
            self.every_nth = 1
        _check("deadline_ms", self.deadline_ms, "num", 1)
        if self.safe_action not in SAFE_ACTIONS:
            raise _bad("safe_action", self.safe_action,
                       "reject (reject + alarm) or stop (reject + alarm, then end the run); passing a part that was "
                       "not inspected is never an option")
        _check("max_batch", self.max_batch, "int", 1, optional=True)
        _check("max_frames", self.max_frames, "int", 1, optional=True)
        self.record.validate()
        self.http.validate()
        _check("outputs", self.outputs, "list")
        if self.on_sink_failure not in SINK_FAILURE:
            raise _bad("on_sink_failure", self.on_sink_failure, " or ".join(SINK_FAILURE))
        from edgead.signals.config import parse_outputs

        parse_outputs({"outputs": self.outputs, "on_sink_failure": self.on_sink_failure})  # names its bad keys
        _check("allow_degraded", self.allow_degraded, "bool")

    def require(self) -> None:
        """The keys a run cannot start without."""
        for key, flag in (("engine", "--engine engines/NAME"), ("calibration", "--calibration calibration/NAME.yaml")):
            if not getattr(self, key):
                raise EdgeADError(f"run needs {flag.split()[0]}", f"pass {flag} or set '{key}' in --config")
        if self.camera.source is None:
            raise EdgeADError("run needs --camera", "pass --camera 0|FILE|URL|FOLDER|gige:ID|genicam:CTI "
                                                    "or set 'camera.source' in --config")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = (v.to_dict() if isinstance(v, CameraConfig)
                         else {g.name: getattr(v, g.name) for g in fields(v)} if hasattr(v, "__dataclass_fields__")
                         else list(v) if isinstance(v, tuple) else v)
        return d


_SECTIONS = {"camera": (CameraConfig, "source"), "record": (RecordConfig, "dir"), "http": (HttpConfig, "listen")}


def _section(name: str, value: Any) -> Any:
    cls, shorthand = _SECTIONS[name]
    if value is None:
        return cls()
    if not isinstance(value, dict):  # `camera: 0`, `record: runs/x`, `http: 8080`
        value = {shorthand: value if isinstance(value, str) or name == "http" else str(value)}
    if name == "camera":
        mine = {"source", "live", "stall_alarm_s"}
        data = {k: v for k, v in value.items() if k in mine}
        if isinstance(data.get("source"), int) and not isinstance(data.get("source"), bool):
            data["source"] = str(data["source"])  # `source: 0` is the device index
        return cls(**data, settings={k: v for k, v in value.items() if k not in mine})
    data = _keys(name, value, {f.name for f in fields(cls)})
    return cls(**data)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Typed, validated config from a mapping (YAML file merged with overrides)."""
    data = dict(_keys("", data, {f.name for f in fields(RunConfig)}))
    for name in _SECTIONS:
        data[name] = _section(name, data.get(name))
    if isinstance(data.get("roi"), list):
        data["roi"] = tuple(data["roi"])
    if data.get("outputs") is None:
        data["outputs"] = []
    cfg = RunConfig(**data)
    cfg.validate()
    return cfg


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k in _SECTIONS and isinstance(v, dict):
            cur = out.get(k)
            if cur is None:
                cur = {}
            elif not isinstance(cur, dict):
                cur = {_SECTIONS[k][1]: cur}
            out[k] = {**cur, **v}
        else:
            out[k] = v
    return out


def load_run_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The YAML file (optional) with command-line overrides on top; nothing is required yet (see require())."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise EdgeADError(f"run config not found: {p}", "check the path given to --config")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise EdgeADError(f"run config {p} is not valid YAML: {exc}".splitlines()[0],
                              "fix the YAML syntax (indentation, colons)") from exc
        _keys("", data, {f.name for f in fields(RunConfig)})
    return from_dict(_merge(data, overrides or {}))


def parse_listen(listen: str) -> tuple[str, int]:
    """'8080' -> ('127.0.0.1', 8080); 'HOST:PORT' and '[v6]:PORT' as given."""
    text = str(listen).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _bad("http.listen", listen, "PORT or HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)
