"""The run configuration (`edgead run --config run.yaml`): typed; an unknown key is an error naming it.

Defaults, then the YAML file, then command-line flags (flags win). A typo in a line's config must
stop the run before the first part, never be ignored: a misspelt `deadline_ms` silently falling back
to the default is exactly the failure an inspection station cannot afford.

    engine: engines/washer            # required (or detector:)
    detector: null                    # a model served by Triton instead of a local engine folder:
                                      #   triton://HOST:8001/MODEL (?timeout=SECONDS, default 1.0; ?shm=system
                                      #   for a server on this host); then engine: is not needed
    calibration: calibration/washer.yaml   # required
    backend: auto                     # auto | tensorrt | onnxruntime
    precision: null                   # null (the backend's default) | fp16 | fp32
    threads: null                     # ONNX Runtime CPU threads (null: the backend's default); leave
                                      #   a core for the camera and outputs on a small box
    camera:                           # or just `camera: gige:Fake_1`
      source: gige:Fake_1             # 0 | file | url | gst:... | folder | gige:ID | genicam:CTI[:SERIAL]
      live: auto                      # auto (a file or folder is a replay: the loop waits for it) | true | false
      stall_alarm_s: 0                # alarm when no frame arrives for this long (0: off; trigger lines idle)
      exposure_us: 800                # every other key sets up the camera (edgead.capture.config):
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
      token: null                     # a bearer token that lets other machines acknowledge alarms
                                      #   (POST /alarms/ack); loopback needs none. Never written to run.json
    outputs: []                       # reject outputs (edgead.signals.config: - type: gpio|modbus|mqtt|...)
    on_sink_failure: alarm            # alarm | stop
    outbox_dir: null                  # where mqtt/webhook events wait until acknowledged, kept across
                                      #   restarts (null: $EDGEAD_STATE_DIR/outbox, ~/.local/state/edgead)
    allow_degraded: false             # start even when an output reports unhealthy
    alarm_ack: null                   # the operator's acknowledge button on the PLC (edgead.signals.ack_input):
                                      #   {type: modbus, host: H, port: 502, coil: N (or discrete_input: N)}

`RunConfig.to_dict()` (what run.json keeps) writes every secret as "***": passwords, tokens, keys
named *_secret or *_token, and a password inside a URL (`http://user:pw@host`); the *_env keys (names
of environment variables, not their values) are kept.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgead.backends.manifest import BACKENDS, PRECISIONS
from edgead.backends.triton import is_triton_url, parse_url
from edgead.capture.config import CameraConfig
from edgead.signals.ack_input import AckInputConfig
from edgead.errors import REDACTED, EdgeADError, redact_text, register_secret
from edgead.io import check_input, check_output
from edgead.schema import Place, at_least, build, is_int, known_keys, one_of, read_yaml

SAFE_ACTIONS = ("reject", "stop")
MIN_TOKEN_CHARS = 16
SINK_FAILURE = ("alarm", "stop")
RUN = Place("run config")
RECORD_FLAG = "--record (record.dir)"   # the record folder comes from the flag or the run config's key


@dataclass
class RecordConfig:
    dir: str | None = None
    quota_mb: float = 1024.0
    save_rejects: bool = True
    save_good_every: int = 0
    ring_size: int = 16
    queue: int = 16

    def validate(self) -> None:
        place = RUN.child("record")
        at_least(place, "quota_mb", self.quota_mb, 1)
        for key, minimum in (("save_good_every", 0), ("ring_size", 0), ("queue", 1)):
            at_least(place, key, getattr(self, key), minimum)


@dataclass
class HttpConfig:
    listen: str | int | None = None     # a bare port may be written as a number
    max_fps: float = 10.0
    token: str | None = None            # bearer token for POST /alarms/ack from another machine

    def validate(self) -> None:
        if is_int(self.listen):
            self.listen = str(self.listen)
        if self.listen is not None:
            parse_listen(self.listen)
        at_least(RUN.child("http"), "max_fps", self.max_fps, 0.1)
        if self.token is not None and (len(self.token) < MIN_TOKEN_CHARS or any(c.isspace() for c in self.token)):
            raise RUN.bad("http.token", "***", f"at least {MIN_TOKEN_CHARS} characters without spaces "
                                               "(e.g. from `openssl rand -hex 16`), or null")


@dataclass
class RunConfig:
    engine: str | None = None
    detector: str | None = None       # triton://host:port/model: validate() makes it the engine
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
    outbox_dir: str | None = None     # where undelivered events wait (null: $EDGEAD_STATE_DIR/outbox)
    allow_degraded: bool = False
    alarm_ack: AckInputConfig | None = None   # a PLC bit whose rising edge acknowledges the alarms

    @property
    def trigger_mode(self) -> bool:
        """True: each frame is one part (never dropped). False: free-running, every Nth frame inspected."""
        return self.every_nth is None

    @property
    def nth(self) -> int:
        return 1 if self.every_nth is None else self.every_nth

    def validate(self) -> None:
        """Range and cross-key rules (types were checked when the config was built)."""
        one_of(RUN, "backend", self.backend, ("auto", *BACKENDS), f"expected auto, {' or '.join(BACKENDS)}")
        self._served_detector()
        one_of(RUN, "precision", self.precision, (None, *PRECISIONS), f"expected null, {' or '.join(PRECISIONS)}")
        for key in ("threads", "every_nth", "max_batch", "max_frames"):
            at_least(RUN, key, getattr(self, key), 1, optional=True)
        if self.roi is not None:
            x, y, w, h = self.roi
            if x < 0 or y < 0 or w < 1 or h < 1:
                raise RUN.bad("roi", list(self.roi), "[x, y, w, h] whole numbers, x, y >= 0, w, h >= 1, or null")
        if self.trigger and self.every_nth is not None:
            raise EdgeADError("run config: 'trigger: true' and 'every_nth' both set",
                              "trigger mode inspects every frame (each is one part); every_nth is the free-running "
                              "mode: choose one")
        if self.trigger is False and self.every_nth is None:
            self.every_nth = 1
        at_least(RUN, "deadline_ms", self.deadline_ms, 1)
        one_of(RUN, "safe_action", self.safe_action, SAFE_ACTIONS,
               "expected reject (reject + alarm) or stop (reject + alarm, then end the run); passing a part that "
               "was not inspected is never an option")
        self.record.validate()
        self.http.validate()
        if self.alarm_ack is not None:
            self.alarm_ack.validate(RUN.child("alarm_ack"))
        one_of(RUN, "on_sink_failure", self.on_sink_failure, SINK_FAILURE, f"expected {' or '.join(SINK_FAILURE)}")
        from edgead.signals.config import parse_outputs

        parse_outputs({"outputs": self.outputs, "on_sink_failure": self.on_sink_failure})  # names its bad keys

    def _served_detector(self) -> None:
        """`detector: triton://...` names the engine (a served model): checked here, run by load_detector."""
        if self.detector is not None:
            if not is_triton_url(self.detector):
                raise RUN.bad("detector", self.detector, "a served model, triton://HOST:8001/MODEL, or null")
            if self.engine not in (None, self.detector):
                raise EdgeADError("run config: both 'engine' and 'detector' are set",
                                  "give the engine folder (engine, --engine) or the served model (detector), not both")
            self.engine = self.detector
        if is_triton_url(self.engine):
            parse_url(str(self.engine))          # a bad URL is refused before anything is opened

    def require(self) -> None:
        """The keys a run cannot start without."""
        for key, flag in (("engine", "--engine engines/NAME"), ("calibration", "--calibration calibration/NAME.yaml")):
            if not getattr(self, key):
                raise EdgeADError(f"run needs {flag.split()[0]}", f"pass {flag} or set '{key}' in --config")
        if self.camera.source is None:
            raise EdgeADError("run needs --camera", "pass --camera 0|FILE|URL|FOLDER|gige:ID|genicam:CTI "
                                                    "or set 'camera.source' in --config")

    def check_paths(self) -> None:
        """Every path of the run, before anything is opened: the engine folder and the calibration record
        exist and can be read, so can a replayed file or folder, and the record folder can be written."""
        self.require()
        if not is_triton_url(self.engine):         # a served model is checked when it is opened
            check_input(str(self.engine), kind="dir", what="--engine", hint="give the engine folder written by "
                        "`edgead build-engine` (--engine, or 'engine' in --config)")
        check_input(str(self.calibration), kind="file", what="--calibration", hint="give the record written by "
                    "`edgead calibrate` (--calibration, or 'calibration' in --config)")
        spec = str(self.camera.source).strip()
        source = Path(spec).expanduser()
        if not re.fullmatch(r"\d+|/dev/video\d+", spec) and (source.is_dir() or source.is_file()):
            check_input(source, kind="dir" if source.is_dir() else "file", what="--camera",
                        hint="give a video file or a folder of images to replay (--camera, or 'camera.source')")
        if self.record.dir:
            check_output(self.record.dir, kind="dir", what=RECORD_FLAG, overwrite=True, min_free_mb=0)

    def to_dict(self) -> dict[str, Any]:
        """The settings as run.json records them: secrets redacted (see the module docstring)."""
        d: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = (v.to_dict() if isinstance(v, CameraConfig)
                         else {g.name: getattr(v, g.name) for g in fields(v)} if hasattr(v, "__dataclass_fields__")
                         else list(v) if isinstance(v, tuple) else v)
        return redact(d)


_SECRET_KEY = re.compile(r"(^|_)(password|passwd|token|secret|api_key|apikey)$", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    """password, token, *_password, *_token, *_secret, ... (but not *_env: that names a variable)."""
    return not key.lower().endswith("_env") and bool(_SECRET_KEY.search(key))


def redact(obj: Any) -> Any:
    """A copy of `obj` with every secret value "***" (empty and null values stay, so "none set" shows)."""
    if isinstance(obj, dict):
        return {k: REDACTED if isinstance(k, str) and is_secret_key(k) and obj[k] not in (None, "")
                else redact(obj[k]) for k in obj}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def register_secrets(obj: Any) -> None:
    """Every secret value in a loaded config is known to `edgead.errors.redact_text` from now on, so no
    message or log line can carry it, whoever writes it."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str) and is_secret_key(k) and isinstance(v, str):
                register_secret(v)
            else:
                register_secrets(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            register_secrets(v)


_SHORTHAND = {"camera": "source", "record": "dir", "http": "listen"}   # `camera: 0`, `record: runs/x`, `http: 8080`
_TOP_KEYS = {f.name for f in fields(RunConfig)}


def _expand(name: str, value: Any) -> dict[str, Any]:
    """A section as a mapping: empty for null, `{source: "0"}` for the shorthand `camera: 0`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        return {_SHORTHAND[name]: value if isinstance(value, str) or name == "http" else str(value)}
    return value


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Typed, validated config from a mapping (YAML file merged with overrides)."""
    register_secrets(data)
    data = dict(known_keys(data, _TOP_KEYS, RUN))
    for name in _SHORTHAND:
        data[name] = _expand(name, data.get(name))
    data["camera"] = CameraConfig.from_dict(data["camera"], prefix="run config")
    if data.get("outputs") is None:
        data["outputs"] = []
    cfg: RunConfig = build(RunConfig, data, RUN)
    cfg.validate()
    return cfg


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k in _SHORTHAND and isinstance(v, dict):
            cur = out.get(k)
            if cur is None:
                cur = {}
            elif not isinstance(cur, dict):
                cur = {_SHORTHAND[k]: cur}
            out[k] = {**cur, **v}
        else:
            out[k] = v
    return out


def load_run_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The YAML file (optional) with command-line overrides on top; nothing is required yet (see require())."""
    data: dict[str, Any] = {}
    if path is not None:
        check_input(path, kind="file", what="--config",
                    hint="give the run YAML file (its keys are documented in edgead/runtime/config.py)")
        data = read_yaml(path, "run config", "check the path given to --config") or {}
        if isinstance(data, dict) and "cameras" in data:   # edgead.runtime.station_config reads those
            raise EdgeADError(f"{path} is a station's run config (a `cameras:` list), not one camera's",
                              "`edgead run` and `edgead signals test` take it; here give a one-camera run config")
        known_keys(data, _TOP_KEYS, RUN)
    return from_dict(_merge(data, overrides or {}))


def parse_listen(listen: str) -> tuple[str, int]:
    """'8080' -> ('127.0.0.1', 8080); 'HOST:PORT' and '[v6]:PORT' as given."""
    text = str(listen).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise RUN.bad("http.listen", listen, "PORT or HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)
