"""The plant-protocol outputs against real peers on 127.0.0.1: an asyncua OPC UA server, python-snap7's
S7 server and cpppo's EtherNet/IP Logix simulator; and `edgead signals test` firing each of them.

Fault injection as for the other outputs: a peer down at start (refused unless degraded), lost
mid-run (alarm; a reject not written is counted), back (recovered, alarm cleared).
"""

from __future__ import annotations

import datetime as dt
import sys
import textwrap
import time

import pytest
from plant_fixtures import (PASSWORD, USER, UaPeer, enip_server, s7_server, self_signed, ua_node,  # noqa: F401
                            ua_server)
from signals_fixtures import LOOPBACK, Alarms, event, free_port, need_module, state_dir, wait_for  # noqa: F401

from edgead.cli import main
from edgead.errors import EdgeADError
from edgead.signals import SinkGroup, build_sink, check_health
from edgead.signals.config import parse_sink

pytestmark = pytest.mark.usefixtures("state_dir")
FAST = {"reconnect_min_ms": 50, "reconnect_max_ms": 200, "heartbeat_ms": 50}


def opcua_sink(url, **kw):
    return build_sink({"type": "opcua", "url": url, "node_prefix": "ns=2;s=Line1.", "username": USER,
                       "password": PASSWORD, **FAST, **kw})


# ---------------------------------------------------------------- OPC UA


def test_opcua_writes_the_last_part_counters_and_status_as_another_client_reads_them(ua_server):
    sink = opcua_sink(ua_server.url, nodes={"reason": ua_node("rejected")})    # a Boolean node: true for a reject
    group = SinkGroup([sink])
    try:
        assert check_health([sink]) == []
        sink.reject(event(1, decision="pass", score=0.2, event_id="r-1"))
        sink.reject(event(2, score=0.93, threshold=0.5, event_id="r-2", reason="x"))
        assert wait_for(lambda: ua_server.values()["parts"] == 2, 3)
        v = ua_server.values()
        assert (v["event_id"], v["seq"], v["decision"], v["score"], v["threshold"]) == ("r-2", 2, "reject", 0.93, 0.5)
        assert (v["parts"], v["rejects"], v["status"], v["alarm"]) == (2, 1, "ok", "")
        assert v["wall_time"] == dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)   # the event's UTC time in a DateTime node
        assert v["rejected"] is True and v["reason"] == ""    # "reason" went to the Boolean node instead
        assert sink.stats["delivered"] == 2 and sink.undelivered() is None and sink.last_delivery
        group.raise_alarm("camera", "camera lost")             # the run's alarms reach the status nodes
        assert wait_for(lambda: ua_server.values()["status"] == "alarm", 3)
        assert ua_server.values()["alarm"] == "camera: camera lost"
        group.clear_alarm_source("camera")
        assert wait_for(lambda: ua_server.values()["status"] == "ok", 3) and ua_server.values()["alarm"] == ""
    finally:
        group.close()
    assert ua_server.values()["status"] == "stopped"          # a clean close says so


def test_opcua_wrong_password_is_refused_with_a_clear_message(ua_server):
    sink = opcua_sink(ua_server.url, password="not-the-pw")
    try:
        with pytest.raises(EdgeADError, match=r"refused user 'edgead': wrong user name or password") as err:
            check_health([sink], timeout_s=0.5)
        assert "output 'opcua' is unreachable" in err.value.message and "not-the-pw" not in err.value.message
    finally:
        sink.close()
    anonymous = build_sink({"type": "opcua", "url": ua_server.url, "node_prefix": "ns=2;s=Line1.", **FAST})
    try:
        with pytest.raises(EdgeADError, match="refused an anonymous session"):
            check_health([anonymous], timeout_s=0.5)
    finally:
        anonymous.close()


def test_opcua_server_lost_mid_run_raises_the_alarm_and_its_return_clears_it(ua_server):
    sink = opcua_sink(ua_server.url, timeout_ms=500)
    alarms = Alarms()
    group = SinkGroup([sink], on_alarm=alarms, on_recovered=alarms.back)
    try:
        assert check_health([sink]) == []
        group.reject(event(1))
        assert wait_for(lambda: sink.stats["delivered"] == 1, 3)
        ua_server.stop()                                       # the MES server goes away
        assert wait_for(lambda: alarms.got, 3), "no alarm for a lost server"
        assert alarms.got[0][0] == "opcua" and ua_server.url in alarms.got[0][1]
        t0 = time.monotonic()
        group.reject(event(2))
        group.reject(event(3, decision="pass"))
        assert time.monotonic() - t0 < 0.05, "reject() waited for the network"
        assert sink.undelivered()["count"] == 2 and sink.undelivered()["rejects"] == 1
        ua_server.start()
        assert wait_for(lambda: alarms.recovered == ["opcua"], 5), sink.health().detail
        assert wait_for(lambda: sink.undelivered() is None, 3)   # the counters carry what happened meanwhile
        v = ua_server.values()
        assert (v["parts"], v["rejects"], v["seq"], v["status"]) == (3, 2, 3, "ok")
    finally:
        group.close()


def test_opcua_down_at_start_or_a_missing_node_refuses_the_start():
    need_module("asyncua", 'asyncua is not installed (pip install "edgead[plant]", Python 3.10+)')
    sink = opcua_sink(f"opc.tcp://{LOOPBACK}:{free_port()}/")
    try:
        with pytest.raises(EdgeADError, match=r"output 'opcua' is unreachable: cannot connect to 127\.0\.0\.1:\d+"):
            check_health([sink], timeout_s=0.5)
        assert check_health([sink], allow_degraded=True, timeout_s=0, warn=lambda s: None)[0][0] == "opcua"
    finally:
        sink.close()


def test_opcua_missing_node_is_named(ua_server):
    sink = opcua_sink(ua_server.url, nodes={"seq": "ns=2;s=Line1.nope"})
    try:
        with pytest.raises(EdgeADError, match=r"node ns=2;s=Line1\.nope \(seq\): BadNodeIdUnknown"):
            check_health([sink], timeout_s=0.5)
    finally:
        sink.close()


def test_opcua_node_that_refuses_the_write_is_named_and_nothing_counts_as_delivered(ua_server):
    sink = opcua_sink(ua_server.url, nodes={"alarm": ua_node("readonly")})
    try:
        with pytest.raises(EdgeADError, match=r"refused the write of ns=2;s=Line1\.readonly \(alarm\): Bad"):
            check_health([sink], timeout_s=0.5)
        sink.reject(event(1))
        time.sleep(0.2)
        assert sink.stats["delivered"] == 0 and sink.undelivered()["count"] == 1
    finally:
        sink.close()


def test_opcua_basic256sha256_sign_and_encrypt_with_user_and_password(tmp_path):
    need_module("asyncua", 'asyncua is not installed (pip install "edgead[plant]", Python 3.10+)')
    server_pki = self_signed(tmp_path, "server", "urn:freeopcua:python:server")
    cert, key = self_signed(tmp_path, "edgead", "urn:edgead:test")
    peer = UaPeer(free_port(), security=server_pki)
    peer.start()
    sink = opcua_sink(peer.url, security_policy="Basic256Sha256", certificate=str(cert), private_key=str(key),
                      application_uri="urn:edgead:test")
    try:
        assert check_health([sink], timeout_s=5) == []
        sink.reject(event(7))
        assert wait_for(lambda: sink.stats["delivered"] == 1, 3)
        plain = opcua_sink(peer.url)                           # no encryption: the server offers none
        try:
            with pytest.raises(EdgeADError, match="opcua"):
                check_health([plain], timeout_s=1)
        finally:
            plain.close()
    finally:
        sink.close()
        peer.close()


def test_plant_outputs_say_what_to_install_when_the_library_is_missing(monkeypatch):
    for module, kind, cfg in (("asyncua", "opcua", {"url": "opc.tcp://h:4840", "node_prefix": "ns=2;s=L."}),
                              ("snap7", "s7", {"host": "h", "address": "DB1.DBX0.0"}),
                              ("pylogix", "enip", {"host": "h", "tag": "T"})):
        monkeypatch.setitem(sys.modules, module, None)         # import fails as if not installed
        with pytest.raises(EdgeADError, match=f"{kind} output: .* is not installed") as err:
            build_sink({"type": kind, **cfg})
        assert "edgead[plant]" in err.value.hint


def test_plant_output_configs_name_the_bad_key():
    with pytest.raises(EdgeADError, match=r"outputs\[0\] \(opcua\): unknown key 'nodes.sq'"):
        parse_sink({"type": "opcua", "url": "opc.tcp://h:4840", "nodes": {"sq": "ns=2;i=1"}})
    with pytest.raises(EdgeADError, match=r"outputs\[0\] \(s7\): 'address' has a bad value"):
        parse_sink({"type": "s7", "host": "h", "address": "DB1.DBD0"})
    with pytest.raises(EdgeADError, match=r"outputs\[0\] \(opcua\): security_policy Basic256Sha256 needs"):
        parse_sink({"type": "opcua", "url": "opc.tcp://h:4840", "node_prefix": "x", "security_policy": "Basic256Sha256"})
    with pytest.raises(EdgeADError, match=r"outputs\[0\] \(enip\): 'value' and 'reset_value' must fit a SINT"):
        parse_sink({"type": "enip", "host": "h", "tag": "T", "data_type": "sint", "value": 300})


# ---------------------------------------------------------------- Siemens S7
# snap7's server stores a bit write's value in the whole byte (a real PLC sets just that bit), so the
# tests use bit 0 of each byte, where both read the same.


def test_s7_bit_pulse_and_heartbeat_word(s7_server):
    sink = build_sink({"type": "s7", "host": LOOPBACK, "port": s7_server.port, "address": "DB10.DBX2.0",
                       "pulse_ms": 150, "late_ms": 1000, "heartbeat_address": "DB10.DBW6", **FAST})
    try:
        assert check_health([sink]) == []
        assert wait_for(lambda: s7_server.word(6) >= 2, 3), "the heartbeat word does not count"
        t0 = time.monotonic()
        sink.reject(event(1, t0))
        sink.reject(event(2, decision="pass"))                  # a good part: no pulse
        assert wait_for(lambda: s7_server.db[2] == 1, 2), "the bit was not set"
        assert wait_for(lambda: s7_server.db[2] == 0, 2) and time.monotonic() - t0 >= 0.15, "not reset after pulse_ms"
        assert sink.stats["pulses"] == 1 and sink.stats["delivered"] == 1 and sink.undelivered() is None
    finally:
        sink.close()


def test_s7_word_set_mode_writes_the_value_per_reject(s7_server):
    sink = build_sink({"type": "s7", "host": LOOPBACK, "port": s7_server.port, "address": "DB10.DBW4", "value": 513,
                       "mode": "set", "late_ms": 1000, **FAST})
    try:
        sink.reject(event(1))
        assert wait_for(lambda: s7_server.word(4) == 513, 2)
        s7_server.db[4:6] = b"\x00\x00"                         # the PLC takes it and resets the word
        sink.reject(event(2, time.monotonic() + 0.05))
        assert wait_for(lambda: s7_server.word(4) == 513, 2) and sink.stats["delivered"] == 2
    finally:
        sink.close()


def test_s7_plc_lost_mid_run_counts_the_reject_not_written_and_recovers(s7_server):
    sink = build_sink({"type": "s7", "host": LOOPBACK, "port": s7_server.port, "address": "DB10.DBX3.0",
                       "pulse_ms": 10, "late_ms": 1000, **FAST})
    alarms = Alarms()
    group = SinkGroup([sink], on_alarm=alarms, on_recovered=alarms.back)
    try:
        s7_server.stop()
        assert wait_for(lambda: alarms.got, 5), "no alarm for a lost PLC"
        assert alarms.got[0][0] == "s7" and "DB10.DBX3.0" in alarms.got[0][1]
        group.reject(event(1))
        assert wait_for(lambda: sink.undelivered(), 2)["not_fired"] == 1     # counted, never silently
        s7_server.start()
        assert wait_for(lambda: alarms.recovered == ["s7"], 5), sink.health().detail
        group.reject(event(2))
        assert wait_for(lambda: sink.stats["pulses"] == 1, 3)
    finally:
        group.close()


def test_s7_missing_db_is_refused_at_start_with_a_hint(s7_server):
    sink = build_sink({"type": "s7", "host": LOOPBACK, "port": s7_server.port, "address": "DB11.DBW0", **FAST})
    try:
        with pytest.raises(EdgeADError, match=r"DB11\.DBW0: the PLC refused .*does the DB exist"):
            check_health([sink], timeout_s=0.3)
    finally:
        sink.close()


# ---------------------------------------------------------------- EtherNet/IP


def test_enip_bool_tag_pulse_and_dint_heartbeat(enip_server):
    sink = build_sink({"type": "enip", "host": LOOPBACK, "port": enip_server.port, "tag": "Reject", "pulse_ms": 300,
                       "late_ms": 1000, "heartbeat_tag": "Beat", **FAST})
    try:
        assert check_health([sink]) == []
        sink.reject(event(1))
        assert wait_for(lambda: enip_server.read("Reject") is True, 2), "the tag was not set"
        assert wait_for(lambda: enip_server.read("Reject") is False, 2), "the tag was not reset"
        assert enip_server.read("Beat") >= 1 and sink.stats["delivered"] == 1
    finally:
        sink.close()


def test_enip_plc_lost_mid_run_alarms_and_recovers(enip_server):
    sink = build_sink({"type": "enip", "host": LOOPBACK, "port": enip_server.port, "tag": "Kick", "data_type": "DINT",
                       "value": 7, "mode": "set", "late_ms": 1000, **FAST})
    alarms = Alarms()
    group = SinkGroup([sink], on_alarm=alarms, on_recovered=alarms.back)
    try:
        enip_server.stop()
        assert wait_for(lambda: alarms.got, 5) and alarms.got[0][0] == "enip"
        group.reject(event(1))
        assert wait_for(lambda: sink.undelivered(), 2)["not_fired"] == 1
        enip_server.start()
        assert wait_for(lambda: alarms.recovered == ["enip"], 5), sink.health().detail
        group.reject(event(2))
        assert wait_for(lambda: enip_server.read("Kick") == 7, 3)
    finally:
        group.close()


# ---------------------------------------------------------------- edgead signals test


def test_signals_test_cli_fires_opcua_s7_and_enip(ua_server, s7_server, enip_server, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(textwrap.dedent(f"""
        outputs:
          - type: opcua
            url: {ua_server.url}
            node_prefix: "ns=2;s=Line1."
            username: {USER}
            password_env: EDGEAD_TEST_UA_PASSWORD
          - type: s7
            host: {LOOPBACK}
            port: {s7_server.port}
            address: DB10.DBW8
            value: 99
            mode: set
          - type: enip
            host: {LOOPBACK}
            port: {enip_server.port}
            tag: Reject
            pulse_ms: 20
    """))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEAD_TEST_UA_PASSWORD", PASSWORD)
        assert main(["signals", "test", "--config", str(cfg)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("OK      opcua") and "wrote a test part to 9 nodes" in lines[0]
    assert lines[1].startswith("OK      s7   ") and "set " in lines[1]
    assert lines[2].startswith("OK      enip ") and "pulsed" in lines[2]
    assert lines[3] == "3 outputs: 3 OK, 0 FAILED"
    v = ua_server.values()
    assert (v["decision"], v["seq"], v["parts"]) == ("test", 0, 0)   # a test part; the counters untouched
    assert s7_server.word(8) == 99

    with pytest.MonkeyPatch.context() as mp:                  # a wrong password: FAILED, with the reason
        mp.setenv("EDGEAD_TEST_UA_PASSWORD", "not-the-pw")
        assert main(["signals", "test", "--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "FAILED  opcua" in out and "wrong user name or password" in out and "not-the-pw" not in out
