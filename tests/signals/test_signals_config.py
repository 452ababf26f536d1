"""Output configs: the issue's YAML parses; every mistake is an EdgeADError naming the output and the key."""

from __future__ import annotations

import textwrap

import pytest

from edgead.errors import EdgeADError
from edgead.signals import build_sinks
from edgead.signals.config import (EncoderConfig, ModbusConfig, MqttConfig, SerialConfig, load_outputs,
                                   parse_outputs, parse_sink, render_template)

ISSUE_YAML = """
camera: {type: replay}          # someone else's section: ignored here
outputs:
  - type: modbus
    host: 192.168.0.10
    port: 502
    coil: 12
    delay_ms: 350
    pulse_ms: 80
  - type: mqtt
    host: 127.0.0.1
    topic: edgead/line1/events
    per_part: true
on_sink_failure: alarm   # or stop
"""


def test_the_issue_example_parses(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(ISSUE_YAML)
    out = load_outputs(path)
    assert out.on_sink_failure == "alarm"
    modbus, mqtt = out.sinks
    assert isinstance(modbus, ModbusConfig) and (modbus.host, modbus.coil, modbus.delay_ms, modbus.pulse_ms) == (
        "192.168.0.10", 12, 350.0, 80.0)
    assert isinstance(modbus.delay_ms, float) and modbus.name == "modbus" and modbus.mode == "pulse"
    assert modbus.late_ms == 40.0                     # default: half the pulse
    assert parse_sink({"type": "gpio", "pin": 1, "pulse_ms": 8}).late_ms == 10.0
    assert parse_sink({"type": "gpio", "pin": 1, "late_ms": 3}).late_ms == 3.0
    assert isinstance(mqtt, MqttConfig) and mqtt.per_part and mqtt.qos == 1 and mqtt.name == "mqtt"


@pytest.mark.parametrize("raw,message", [
    ({"type": "modbus", "host": "h", "coil": 1, "dealy_ms": 300}, "outputs[0] (modbus): unknown key 'dealy_ms'"),
    ({"type": "mqtt", "host": "h", "tpoic": "x"}, "outputs[0] (mqtt): unknown key 'tpoic'"),
    ({"type": "modbus", "host": "h", "coil": "12"}, "outputs[0] (modbus): 'coil' has a bad value '12'"),
    ({"type": "modbus", "host": "h", "coil": 1, "pulse_ms": True}, "'pulse_ms' has a bad value True"),
    ({"type": "modbus", "host": "h"}, "give exactly one of 'coil' and 'register'"),
    ({"type": "modbus", "coil": 3}, "outputs[0] (modbus): missing key 'host'"),
    ({"type": "modbus", "host": "h", "coil": 1, "mode": "toggle"}, "'mode' has a bad value 'toggle'"),
    ({"type": "gpio"}, "outputs[0] (gpio): missing key 'pin'"),
    ({"type": "gpio", "pin": 3, "alarm_pin": 3}, "must differ"),
    ({"type": "gpio", "pin": 3, "backend": "rpi"}, "'backend' has a bad value 'rpi'"),
    ({"type": "serial", "port": "/dev/ttyS0", "template": "REJECT {part}\n"}, "unknown field {part}"),
    ({"type": "mqtt", "host": "h", "topic": "edgead/{line/events"}, "'topic' is not a valid template"),
    ({"type": "mqtt", "host": "h", "qos": 3}, "'qos' has a bad value 3"),
    ({"type": "webhook", "url": "mes.local/x"}, "'url' must start with http:// or https://"),
    ({"type": "webhook", "url": "http://u:p@mes.local/x", "token": "t0ken"},
     "give a token or a user:password in the url, not both"),
    ({"type": "kicker"}, "outputs[0]: unknown output type 'kicker'"),
    ({"host": "h"}, "outputs[0] needs a 'type'"),
    ({"type": "gpio", "pin": 3, "encoder": {"source": "modbus", "host": "h", "register": 4, "delay_cnt": 5}},
     "outputs[0] (gpio).encoder: unknown key 'delay_cnt'"),
    ({"type": "gpio", "pin": 3, "delay_ms": 300, "encoder": {"source": "modbus", "host": "h", "register": 4}},
     "'delay_ms' cannot be used with an encoder"),
    ({"type": "gpio", "pin": 3, "encoder": {"source": "modbus", "register": 4}}, "needs 'host' and 'register'"),
    ({"type": "gpio", "pin": 3, "encoder": {"source": "gpio"}}, "a gpio encoder needs 'line'"),
])
def test_mistakes_name_the_output_and_the_key(raw, message):
    with pytest.raises(EdgeADError) as err:
        parse_outputs({"outputs": [raw]})
    assert message in err.value.message
    assert err.value.hint


def test_the_index_of_the_bad_output_is_named():
    with pytest.raises(EdgeADError, match=r"outputs\[1\] \(log\): unknown key 'file'"):
        parse_outputs({"outputs": [{"type": "log"}, {"type": "log", "file": "x"}]})


def test_policy_names_and_encoder():
    with pytest.raises(EdgeADError, match="'on_sink_failure' has a bad value 'halt'"):
        parse_outputs({"outputs": [], "on_sink_failure": "halt"})
    out = parse_outputs({"on_sink_failure": "stop", "outputs": [
        {"type": "log", "path": "a.jsonl"}, {"type": "log", "path": "b.jsonl"},
        {"type": "gpio", "name": "kicker", "pin": 5,
         "encoder": {"source": "modbus", "host": "plc", "register": 7, "bits": 32, "delay_counts": 1200}}]})
    assert out.on_sink_failure == "stop"
    assert [c.name for c in out.sinks] == ["log", "log#2", "kicker"]
    enc = out.sinks[2].encoder
    assert isinstance(enc, EncoderConfig) and (enc.register, enc.bits, enc.delay_counts) == (7, 32, 1200)
    assert parse_outputs({}).sinks == []


def test_serial_defaults_and_templates():
    cfg = parse_sink({"type": "serial", "port": "/dev/ttyUSB0", "template": "R{seq:05d} {decision}\r\n"})
    assert isinstance(cfg, SerialConfig) and cfg.pulse_ms == 0.0 and cfg.baudrate == 9600
    from signals_fixtures import event

    assert render_template(cfg.template, event(42)) == "R00042 reject\r\n"


def test_bad_yaml_and_missing_file_are_user_errors(tmp_path):
    with pytest.raises(EdgeADError, match="run config .*nope.yaml does not exist"):
        load_outputs(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("outputs:\n  - type: log\n   path: x\n")
    with pytest.raises(EdgeADError, match="not valid YAML"):
        load_outputs(bad)
    notlist = tmp_path / "notlist.yaml"
    notlist.write_text(textwrap.dedent("""
        outputs:
          type: log
    """))
    with pytest.raises(EdgeADError, match="'outputs' must be a list"):
        load_outputs(notlist)


def test_a_typo_in_any_output_opens_none_of_them(tmp_path):
    with pytest.raises(EdgeADError, match=r"outputs\[1\] \(log\): unknown key 'pth'"):
        build_sinks([{"type": "log", "path": str(tmp_path / "a.jsonl")}, {"type": "log", "pth": "b"}])
    assert not (tmp_path / "a.jsonl").exists()


def test_secret_from_an_unset_environment_variable_is_named(monkeypatch):
    from edgead.errors import EdgeADError
    from edgead.signals.config import resolve_secret

    monkeypatch.delenv("EDGEAD_TEST_UNSET_SECRET", raising=False)
    assert resolve_secret("mqtt", "plc", "password", "inline", "") == "inline"
    with pytest.raises(EdgeADError) as err:
        resolve_secret("webhook", "mes", "token", "", "EDGEAD_TEST_UNSET_SECRET")
    assert "webhook output 'mes': environment variable EDGEAD_TEST_UNSET_SECRET is not set" in str(err.value)
    assert "set token: in the config" in err.value.hint
    monkeypatch.setenv("EDGEAD_TEST_UNSET_SECRET", "s3cret")
    assert resolve_secret("webhook", "mes", "token", "", "EDGEAD_TEST_UNSET_SECRET") == "s3cret"
