"""Typed reject-output configs, read from the `outputs:` list of the run YAML.

A typo in an output's config must never be ignored: a misspelt `delay_ms` would kick the wrong part.
So every unknown key, missing key and bad value is an EdgeADError naming the output and the key.

    outputs:
      - type: modbus
        host: 192.168.0.10
        coil: 12
        delay_ms: 350
        pulse_ms: 80
    on_sink_failure: alarm   # or stop
"""

from __future__ import annotations

import math
import os
import re
import string
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Tuple
from urllib.parse import urlsplit

from edgead.errors import EdgeADError, register_secret
from edgead.schema import Place, build, mapping, need, one_of, read_yaml
from edgead.protocols import InspectionEvent

FAILURE_POLICIES = ("alarm", "stop")
TEMPLATE_FIELDS = ("seq", "decision", "score", "threshold", "reason", "source", "wall_time", "t_capture", "line",
                   "camera")   # camera: a station's camera name ("" in a one-camera run)


@dataclass
class EncoderConfig:
    """Delay in belt travel (encoder counts) instead of time: right even when the belt speed changes."""

    source: str = "modbus"        # "modbus": a counter register in the PLC; "gpio": count edges on a line
    host: str = ""                # modbus
    port: int = 502
    unit: int = 1
    register: int | None = None
    input_register: bool = False  # read an input register (function 4) instead of a holding register (3)
    bits: int = 16                # 16 (one register) or 32 (two registers); the count wraps at 2**bits
    word_order: str = "big"       # 32-bit counters: "big" = high word first
    timeout_ms: float = 500.0
    chip: str = "/dev/gpiochip0"  # gpio
    line: int | None = None
    edge: str = "rising"          # "rising", "falling" or "both"
    poll_ms: float = 2.0          # how often the count is sampled
    delay_counts: int = 0         # capture -> reject station, in counts
    pulse_counts: int = 10        # how long the output stays on, in counts
    late_counts: int = 0          # a pulse may start this many counts late; later is a missed part


@dataclass
class SinkConfig:
    type: str = ""
    name: str = ""                # shown in alarms and health errors; defaults to the type


@dataclass
class TimedConfig(SinkConfig):
    """An output that physically kicks the part: fires delay_ms after capture for pulse_ms."""

    delay_ms: float = 0.0         # capture -> part in front of the reject station
    pulse_ms: float = 50.0        # how long the output stays on; overlapping pulses merge
    late_ms: float | None = None  # a pulse may start this late; later is a missed part (alarm).
                                  # Default: half the pulse (at least 10 ms)
    encoder: EncoderConfig | None = None


@dataclass
class GpioConfig(TimedConfig):
    backend: str = "gpiod"        # "gpiod" (any Linux board, /dev/gpiochipN) or "jetson" (Jetson.GPIO)
    chip: str = "/dev/gpiochip0"  # gpiod
    pin: int | None = None        # gpiod: line offset on the chip; jetson: pin number in `numbering`
    alarm_pin: int | None = None  # on while an output has failed (latched until reset)
    ready_pin: int | None = None  # on while edgead is inspecting
    active_low: bool = False
    numbering: str = "BOARD"      # jetson: "BOARD" or "BCM"


@dataclass
class ModbusConfig(TimedConfig):
    host: str = ""
    port: int = 502
    unit: int = 1
    coil: int | None = None       # exactly one of coil / register
    register: int | None = None   # holding register
    value: int = 1                # register value written on set (coils write True)
    reset_value: int = 0
    mode: str = "pulse"           # "pulse": set, then reset after pulse_ms; "set": set only, the PLC resets
    heartbeat_register: int | None = None   # incremented every heartbeat_ms so the PLC sees we are alive
    heartbeat_ms: float = 1000.0
    timeout_ms: float = 500.0
    reconnect_min_ms: float = 500.0
    reconnect_max_ms: float = 10000.0


@dataclass
class PeerConfig(SinkConfig):
    """An output whose events go to a peer (mqtt, webhook): they wait in a durable outbox until acknowledged."""

    outbox_mb: float = 64.0       # bytes the outbox folder may hold; a full one refuses events (counted, alarm)
    outbox_fsync_every: int = 32  # records are fsync'd in batches: every this many records ...
    outbox_fsync_ms: float = 50.0  # ... or this often, whichever comes first


@dataclass
class MqttConfig(PeerConfig):
    host: str = ""
    port: int = 1883
    line: str = "line1"           # fills {line} in the topics
    topic: str = "edgead/{line}/events"
    status_topic: str = "edgead/{line}/status"   # retained "online"; "offline" as last will
    alarm_topic: str = "edgead/{line}/alarm"     # retained JSON while an output has failed
    per_part: bool = False        # every inspected part, not only rejects
    qos: int = 1
    retain: bool = False          # for events (status is always retained)
    client_id: str = ""
    keepalive_s: int = 30
    username: str = ""
    password: str = ""
    password_env: str = ""        # read the password from this environment variable instead
    tls: bool = False
    ca_certs: str = ""
    certfile: str = ""
    keyfile: str = ""
    tls_insecure: bool = False    # skip the broker host name check (self-signed test brokers only)
    outbox: int = 1000            # events read ahead from the durable outbox into memory for sending
    window: int = 10              # unacknowledged messages in flight
    reconnect_min_ms: float = 200.0
    reconnect_max_ms: float = 5000.0
    connect_timeout_ms: float = 2000.0


@dataclass
class WebhookConfig(PeerConfig):
    url: str = ""
    per_part: bool = False
    timeout_ms: float = 2000.0
    retries: int = 3              # attempts after the first one before the alarm (the event is kept and retried)
    backoff_ms: float = 200.0     # doubles after each failed attempt ...
    backoff_max_ms: float = 10000.0  # ... up to this
    token: str = ""               # sent as "Authorization: Bearer <token>"
    token_env: str = ""           # read the token from this environment variable instead
    queue: int = 1000             # events read ahead from the durable outbox into memory for sending


@dataclass
class SerialConfig(TimedConfig):
    port: str = ""                # e.g. /dev/ttyUSB0
    baudrate: int = 9600
    template: str = "REJECT {seq}\n"
    end_template: str = ""        # sent when the pulse ends (pulse_ms later), if not empty
    pulse_ms: float = 0.0
    write_timeout_ms: float = 200.0


@dataclass
class PlcConfig(TimedConfig):
    """A PLC output written per reject over a factory protocol (s7, enip): pulse or set, heartbeat, reconnect."""

    host: str = ""
    value: int = 1                # a word/integer written on set (a bit or BOOL writes true)
    reset_value: int = 0
    mode: str = "pulse"           # "pulse": set, then reset after pulse_ms; "set": set only, the PLC resets
    heartbeat_ms: float = 1000.0  # the heartbeat (or, without one, a read-back) runs this often
    timeout_ms: float = 500.0
    reconnect_min_ms: float = 500.0
    reconnect_max_ms: float = 10000.0


@dataclass
class S7Config(PlcConfig):
    """Siemens S7 (S7-300/400/1200/1500 over ISO-on-TCP): a DB bit or word per reject."""

    port: int = 102
    rack: int = 0
    slot: int = 1                 # S7-1200/1500: 0/1; S7-300: 0/2
    address: str = ""             # DB10.DBX2.0 (a bit) or DB10.DBW4 (a 16-bit word)
    heartbeat_address: str = ""   # DB10.DBW6: a word incremented every heartbeat_ms


@dataclass
class EnipConfig(PlcConfig):
    """EtherNet/IP to an Allen-Bradley Logix PLC (ControlLogix, CompactLogix, Micro800): a tag per reject."""

    port: int = 44818
    slot: int = 0                 # the controller's slot in the chassis
    micro800: bool = False        # Micro800 controllers take no slot in the path
    tag: str = ""                 # e.g. Reject_Kick or Program:Line1.Reject
    data_type: str = "BOOL"       # the tag's type: BOOL, SINT, INT or DINT
    heartbeat_tag: str = ""       # a DINT incremented every heartbeat_ms


@dataclass
class OpcUaNodes:
    """The node id each value is written to; "" is not written. Fields: OPCUA_FIELDS."""

    event_id: str = ""
    seq: str = ""
    decision: str = ""
    score: str = ""
    threshold: str = ""
    reason: str = ""
    wall_time: str = ""
    parts: str = ""
    rejects: str = ""
    status: str = ""
    alarm: str = ""


OPCUA_FIELDS = tuple(f.name for f in fields(OpcUaNodes))
OPCUA_POLICIES = ("None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")


@dataclass
class OpcUaConfig(SinkConfig):
    """Writes the last part, the counters and the status into variables of a plant OPC UA server (MES/SCADA)."""

    url: str = ""                 # opc.tcp://mes.local:4840
    node_prefix: str = ""         # e.g. "ns=2;s=Line1.Inspection.": every field at prefix + field name
    nodes: OpcUaNodes = field(default_factory=OpcUaNodes)   # per field: a node id ("" keeps the prefix's)
    skip: list[str] = field(default_factory=list)           # fields not written (with a node_prefix)
    per_part: bool = True         # the last-part nodes follow every part; false: rejects only
    username: str = ""
    password: str = ""
    password_env: str = ""
    security_policy: str = "None"  # Basic256Sha256, Aes128Sha256RsaOaep, Aes256Sha256RsaPss
    security_mode: str = "SignAndEncrypt"   # or Sign
    certificate: str = ""         # edgead's certificate (PEM or DER) ...
    private_key: str = ""         # ... and its key, for a security_policy
    server_certificate: str = ""  # the server's; empty: taken from its endpoint list
    application_uri: str = ""     # must match the certificate's URI where the server checks it
    timeout_ms: float = 2000.0
    heartbeat_ms: float = 1000.0  # the server's clock is read this often: a lost server raises the alarm
    reconnect_min_ms: float = 500.0
    reconnect_max_ms: float = 10000.0


@dataclass
class LogConfig(SinkConfig):
    path: str = "rejects.jsonl"
    per_part: bool = True


SINK_CONFIGS: dict[str, type[SinkConfig]] = {
    "gpio": GpioConfig, "modbus": ModbusConfig, "mqtt": MqttConfig, "webhook": WebhookConfig,
    "serial": SerialConfig, "log": LogConfig, "s7": S7Config, "enip": EnipConfig, "opcua": OpcUaConfig,
}


@dataclass
class OutputsConfig:
    sinks: list[SinkConfig] = field(default_factory=list)
    on_sink_failure: str = "alarm"   # "alarm": keep inspecting with the other outputs; "stop": stop the line


def render_template(template: str, event: InspectionEvent, line: str = "") -> str:
    """Fill {seq}, {decision}, ... from the event (the fields in TEMPLATE_FIELDS)."""
    values = {"seq": event.seq, "decision": event.decision, "score": event.score, "threshold": event.threshold,
              "reason": event.reason, "source": event.source, "wall_time": event.wall_time,
              "t_capture": event.t_capture, "line": line, "camera": (event.extra or {}).get("camera", "")}
    return template.format(**values)


def check_template(where: str, key: str, template: str) -> None:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise EdgeADError(f"{where}: '{key}' is not a valid template ({err})",
                          "write fields as {seq}; a literal brace is {{ or }}") from None
    bad = sorted(n for n in names if n.split(".")[0].split("[")[0] not in TEMPLATE_FIELDS)
    if bad:
        raise EdgeADError(f"{where}: '{key}' uses an unknown field {{{bad[0]}}}",
                          f"fields: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}")


def _build(cls: type, where: str, data: Any) -> Any:
    place = Place(where)
    mapping(data, place, "each output is a mapping like {type: log, path: rejects.jsonl}")
    values = dict(data)
    if isinstance(values.get("encoder"), dict):      # its errors read `outputs[0] (gpio).encoder: ...`
        values["encoder"] = build(EncoderConfig, values["encoder"], Place(f"{where}.encoder"))
    return build(cls, values, place)


def _need(where: str, ok: bool, message: str, hint: str) -> None:
    need(Place(where), ok, message, hint)


def _one_of(where: str, key: str, value: str, allowed: tuple[str, ...]) -> None:
    one_of(Place(where), key, value, allowed)


def _validate_timed(where: str, cfg: TimedConfig, raw: dict[str, Any]) -> None:
    if cfg.late_ms is None:
        cfg.late_ms = max(10.0, cfg.pulse_ms / 2)
    _need(where, cfg.delay_ms >= 0 and cfg.pulse_ms >= 0 and cfg.late_ms >= 0,
          "delay_ms, pulse_ms and late_ms must be >= 0", "delay_ms is capture -> reject station, in ms")
    enc = cfg.encoder
    if enc is None:
        return
    w = f"{where}.encoder"
    for key in ("delay_ms", "pulse_ms", "late_ms"):
        _need(where, key not in raw, f"'{key}' cannot be used with an encoder",
              f"use encoder.{key.replace('_ms', '_counts')} (belt travel in encoder counts)")
    _one_of(w, "source", enc.source, ("modbus", "gpio"))
    _one_of(w, "edge", enc.edge, ("rising", "falling", "both"))
    _one_of(w, "word_order", enc.word_order, ("big", "little"))
    _need(w, enc.bits in (16, 32), f"'bits' has a bad value {enc.bits!r}", "use 16 (one register) or 32 (two)")
    _need(w, enc.delay_counts >= 0 and enc.pulse_counts >= 0 and enc.late_counts >= 0 and enc.poll_ms > 0,
          "counts must be >= 0 and poll_ms > 0", "delay_counts is the belt travel capture -> reject station")
    if enc.source == "modbus":
        _need(w, bool(enc.host) and enc.register is not None, "a modbus encoder needs 'host' and 'register'",
              "the PLC's address and the holding register that holds the encoder count")
    else:
        _need(w, enc.line is not None, "a gpio encoder needs 'line'", "the line offset the encoder pulses arrive on")


def _validate_peer(where: str, cfg: PeerConfig) -> None:
    _need(where, math.isfinite(cfg.outbox_mb) and cfg.outbox_mb > 0, f"'outbox_mb' has a bad value {cfg.outbox_mb!r}",
          "the megabytes the output's outbox may hold on disk, e.g. outbox_mb: 64")
    _need(where, cfg.outbox_fsync_every >= 1 and math.isfinite(cfg.outbox_fsync_ms) and cfg.outbox_fsync_ms > 0,
          "'outbox_fsync_every' must be >= 1 and 'outbox_fsync_ms' > 0", "the defaults (32 records, 50 ms) are usually right")


S7_ADDRESS = re.compile(r"^DB(\d+)\.DB(?:X(\d+)\.([0-7])|W(\d+))$", re.IGNORECASE)
ENIP_TYPES = {"BOOL": 0xC1, "SINT": 0xC2, "INT": 0xC3, "DINT": 0xC4}    # the CIP type codes
ENIP_RANGES = {"SINT": (-128, 127), "INT": (-32768, 32767), "DINT": (-2**31, 2**31 - 1)}


def parse_s7_address(text: str) -> Optional[Tuple[int, int, Optional[int]]]:
    """(db, byte, bit) of "DB10.DBX2.3", (db, byte, None) of "DB10.DBW4"; None when it is neither."""
    m = S7_ADDRESS.match(text.strip())
    if not m:
        return None
    if m.group(2) is not None:
        return int(m.group(1)), int(m.group(2)), int(m.group(3))
    return int(m.group(1)), int(m.group(4)), None


def _validate_plc(where: str, cfg: PlcConfig) -> None:
    _need(where, bool(cfg.host), "missing key 'host'", "the PLC's IP address or host name")
    _one_of(where, "mode", cfg.mode, ("pulse", "set"))
    _need(where, cfg.heartbeat_ms > 0 and cfg.timeout_ms > 0 and 0 < cfg.reconnect_min_ms <= cfg.reconnect_max_ms,
          "heartbeat_ms, timeout_ms and reconnect_*_ms must be > 0 (min <= max)", "the defaults are usually right")
    if isinstance(cfg, S7Config):
        _need(where, bool(cfg.address), "missing key 'address'",
              "the DB bit or word the PLC program reads, e.g. address: DB10.DBX2.0 or DB10.DBW4")
        for key in ("address", "heartbeat_address"):
            text = getattr(cfg, key)
            _need(where, not text or parse_s7_address(text) is not None, f"'{key}' has a bad value {text!r}",
                  "write a DB bit as DB10.DBX2.0 (DB 10, byte 2, bit 0) or a word as DB10.DBW4")
        beat = parse_s7_address(cfg.heartbeat_address) if cfg.heartbeat_address else None
        _need(where, beat is None or beat[2] is None, "'heartbeat_address' must be a word (DB10.DBW6)",
              "the heartbeat counts up: it needs a word, not a bit")
        _need(where, 0 <= cfg.value <= 0xFFFF and 0 <= cfg.reset_value <= 0xFFFF,
              "'value' and 'reset_value' must fit a word (0..65535)", "e.g. value: 1, reset_value: 0")
        _need(where, 0 <= cfg.rack <= 7 and 0 <= cfg.slot <= 31, "'rack' must be 0..7 and 'slot' 0..31",
              "S7-1200/1500: rack 0, slot 1; S7-300: rack 0, slot 2")
    elif isinstance(cfg, EnipConfig):
        _need(where, bool(cfg.tag), "missing key 'tag'", "the controller tag the PLC program reads, e.g. tag: Reject_Kick")
        cfg.data_type = cfg.data_type.upper()
        _one_of(where, "data_type", cfg.data_type, tuple(ENIP_TYPES))
        lo, hi = ENIP_RANGES.get(cfg.data_type, (0, 1))
        _need(where, lo <= cfg.value <= hi and lo <= cfg.reset_value <= hi,
              f"'value' and 'reset_value' must fit a {cfg.data_type} ({lo}..{hi})", "e.g. value: 1, reset_value: 0")


def _validate_opcua(where: str, cfg: OpcUaConfig) -> None:
    _need(where, cfg.url.startswith("opc.tcp://"), f"'url' must start with opc.tcp://, got {cfg.url!r}",
          "e.g. url: opc.tcp://mes.local:4840")
    bad = [f for f in cfg.skip if f not in OPCUA_FIELDS]
    _need(where, not bad, f"'skip' names an unknown field {bad[0] if bad else ''!r}", f"fields: {', '.join(OPCUA_FIELDS)}")
    _need(where, bool(opcua_nodes(cfg)), "no node to write: give 'node_prefix' or 'nodes'",
          "e.g. node_prefix: \"ns=2;s=Line1.Inspection.\" writes ...seq, ...decision, ...rejects and the others")
    _one_of(where, "security_policy", cfg.security_policy, OPCUA_POLICIES)
    _one_of(where, "security_mode", cfg.security_mode, ("Sign", "SignAndEncrypt"))
    _need(where, cfg.security_policy == "None" or bool(cfg.certificate and cfg.private_key),
          f"security_policy {cfg.security_policy} needs 'certificate' and 'private_key'",
          "edgead's own certificate and key files (PEM or DER); the server must trust the certificate")
    _need(where, not (cfg.password and cfg.password_env), "give 'password' or 'password_env', not both",
          "password_env names an environment variable that holds the password")
    _need(where, not (cfg.password or cfg.password_env) or bool(cfg.username), "a password needs a 'username'",
          "username: the user the server knows")
    _need(where, cfg.timeout_ms > 0 and cfg.heartbeat_ms > 0 and 0 < cfg.reconnect_min_ms <= cfg.reconnect_max_ms,
          "timeout_ms, heartbeat_ms and reconnect_*_ms must be > 0 (min <= max)", "the defaults are usually right")


def opcua_nodes(cfg: OpcUaConfig) -> dict[str, str]:
    """field -> node id: `nodes:` entries, else node_prefix + field name, less `skip:`."""
    out: dict[str, str] = {}
    for name in OPCUA_FIELDS:
        node = getattr(cfg.nodes, name) or (cfg.node_prefix + name if cfg.node_prefix else "")
        if node and name not in cfg.skip:
            out[name] = node
    return out


def _validate(where: str, cfg: SinkConfig, raw: dict[str, Any]) -> None:
    if isinstance(cfg, PeerConfig):
        _validate_peer(where, cfg)
    if isinstance(cfg, TimedConfig):
        _validate_timed(where, cfg, raw)
    if isinstance(cfg, PlcConfig):
        _validate_plc(where, cfg)
    elif isinstance(cfg, OpcUaConfig):
        _validate_opcua(where, cfg)
    if isinstance(cfg, GpioConfig):
        _one_of(where, "backend", cfg.backend, ("gpiod", "jetson"))
        _one_of(where, "numbering", cfg.numbering, ("BOARD", "BCM"))
        _need(where, cfg.pin is not None, "missing key 'pin'", "the output line that drives the reject actuator")
        pins = [p for p in (cfg.pin, cfg.alarm_pin, cfg.ready_pin) if p is not None]
        _need(where, len(set(pins)) == len(pins), f"pin, alarm_pin and ready_pin must differ, got {pins}",
              "give each signal its own line")
    elif isinstance(cfg, ModbusConfig):
        _need(where, bool(cfg.host), "missing key 'host'", "the PLC's IP address or host name")
        _need(where, (cfg.coil is None) != (cfg.register is None), "give exactly one of 'coil' and 'register'",
              "coil: 12 writes a coil; register: 40 writes a holding register")
        _one_of(where, "mode", cfg.mode, ("pulse", "set"))
        _need(where, 0 <= cfg.value <= 0xFFFF and 0 <= cfg.reset_value <= 0xFFFF,
              "'value' and 'reset_value' must fit a register (0..65535)", "e.g. value: 1, reset_value: 0")
        _need(where, cfg.heartbeat_ms > 0 and cfg.timeout_ms > 0 and 0 < cfg.reconnect_min_ms <= cfg.reconnect_max_ms,
              "heartbeat_ms, timeout_ms and reconnect_*_ms must be > 0 (min <= max)", "the defaults are usually right")
    elif isinstance(cfg, MqttConfig):
        _need(where, bool(cfg.host), "missing key 'host'", "the MQTT broker's address")
        _need(where, cfg.qos in (0, 1, 2), f"'qos' has a bad value {cfg.qos!r}", "use 0, 1 or 2 (1: no event lost)")
        _need(where, cfg.outbox >= 1 and cfg.window >= 1, "'outbox' and 'window' must be >= 1", "e.g. outbox: 1000")
        _need(where, not (cfg.password and cfg.password_env), "give 'password' or 'password_env', not both",
              "password_env names an environment variable that holds the password")
        for key in ("topic", "status_topic", "alarm_topic"):
            check_template(where, key, getattr(cfg, key))
    elif isinstance(cfg, WebhookConfig):
        _need(where, cfg.url.startswith(("http://", "https://")), f"'url' must start with http:// or https://, got {cfg.url!r}",
              "e.g. url: http://mes.local:8080/edgead/events")
        _need(where, cfg.retries >= 0 and cfg.queue >= 1 and cfg.timeout_ms > 0, "retries >= 0, queue >= 1, timeout_ms > 0",
              "e.g. retries: 3")
        _need(where, 0 < cfg.backoff_ms <= cfg.backoff_max_ms, "backoff_ms must be > 0 and <= backoff_max_ms",
              "e.g. backoff_ms: 200, backoff_max_ms: 10000")
        _need(where, not (cfg.token and cfg.token_env), "give 'token' or 'token_env', not both",
              "token_env names an environment variable that holds the token")
        _need(where, not ((cfg.token or cfg.token_env) and urlsplit(cfg.url).username is not None),
              "give a token or a user:password in the url, not both",
              "a token is sent as 'Authorization: Bearer', a user:password in the url as basic authentication")
    elif isinstance(cfg, SerialConfig):
        _need(where, bool(cfg.port), "missing key 'port'", "the serial device, e.g. /dev/ttyUSB0")
        _need(where, cfg.baudrate > 0, f"'baudrate' has a bad value {cfg.baudrate!r}", "e.g. 9600 or 115200")
        check_template(where, "template", cfg.template)
        check_template(where, "end_template", cfg.end_template)
    elif isinstance(cfg, LogConfig):
        _need(where, bool(cfg.path), "missing key 'path'", "e.g. path: runs/line1/rejects.jsonl")


def parse_sink(raw: Any, index: int = 0) -> SinkConfig:
    """One entry of `outputs:` as its typed config; errors name `outputs[i] (type)` and the key."""
    if not isinstance(raw, dict) or "type" not in raw:
        raise EdgeADError(f"outputs[{index}] needs a 'type'", f"one of: {', '.join(SINK_CONFIGS)}")
    kind = raw["type"]
    if kind not in SINK_CONFIGS:
        raise EdgeADError(f"outputs[{index}]: unknown output type {kind!r}", f"one of: {', '.join(SINK_CONFIGS)}")
    where = f"outputs[{index}] ({kind})"
    cfg = _build(SINK_CONFIGS[kind], where, raw)
    _validate(where, cfg, raw)
    if not cfg.name:
        cfg.name = kind
    return cfg


def parse_outputs(run_config: Any) -> OutputsConfig:
    """The `outputs:` list and `on_sink_failure:` of a run config (other top-level keys belong to others)."""
    if not isinstance(run_config, dict):
        raise EdgeADError("run config must be a mapping", "see `outputs:` in docs for the layout")
    raw = run_config.get("outputs", [])
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise EdgeADError("'outputs' must be a list of outputs", "each item starts with '- type: ...'")
    policy = run_config.get("on_sink_failure", "alarm")
    if policy not in FAILURE_POLICIES:
        raise EdgeADError(f"'on_sink_failure' has a bad value {policy!r}",
                          "alarm: keep inspecting with the other outputs; stop: stop the line")
    sinks = [parse_sink(item, i) for i, item in enumerate(raw)]
    names: dict[str, int] = {}
    for cfg in sinks:               # two outputs of one type without names: modbus, modbus#2
        names[cfg.name] = names.get(cfg.name, 0) + 1
        if names[cfg.name] > 1:
            cfg.name = f"{cfg.name}#{names[cfg.name]}"
    return OutputsConfig(sinks=sinks, on_sink_failure=policy)


def load_outputs(path: str | Path) -> OutputsConfig:
    """Read a run YAML file and parse its outputs."""
    return parse_outputs(read_yaml(path, "run config", "give the path of the run YAML") or {})


def resolve_secret(kind: str, name: str, key: str, value: str, env_var: str) -> str:
    """A password or token given inline, or read from the environment variable named by `<key>_env`.

    An empty variable is an error at start, never a silent anonymous connection.
    """
    if not env_var:
        register_secret(value)
        return value
    secret = os.environ.get(env_var, "")
    if not secret:
        raise EdgeADError(f"{kind} output '{name}': environment variable {env_var} is not set",
                          f"export it before starting, or set {key}: in the config")
    register_secret(secret)
    return secret
