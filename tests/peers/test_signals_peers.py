"""Reject outputs against real peers on 127.0.0.1: pymodbus server, mosquitto, http.server, a pty.

Fault injection: a peer down at start (health error), lost mid-run (alarm, outbox, recovery), slow
(reject() still returns at once: the I/O is on the sink's own thread).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from signals_fixtures import (LOOPBACK, FakeClock, FakeLines, StuckFifo, Subscriber, event, fill_pty,  # noqa: F401
                              free_port, http_peer, modbus_server, mosquitto, mosquitto_tls, outbox_ids, pty_peer,
                              state_dir, tcp_black_hole, wait_for)

from edgead.errors import EdgeADError
from edgead.signals import SinkGroup, build_sink, build_sinks, check_health
from edgead.signals.config import parse_sink
from edgead.signals.wiring_check import signals_test

# Every output's default outbox goes to the test's own $EDGEAD_STATE_DIR, never the real home.
pytestmark = pytest.mark.usefixtures("state_dir")

# Real-clock timing: an edge is never early (strict), and not later than this (a loaded 2-core
# machine can stall a thread for a while; the exact times are checked on a fake clock).
SLACK_S = 0.5


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


needs_pymodbus = pytest.mark.skipif(not _importable("pymodbus.client"),
                                    reason='pymodbus is not installed (pip install "edgead[signals]")')
needs_pyserial = pytest.mark.skipif(not _importable("serial"),
                                    reason='pyserial is not installed (pip install "edgead[signals]")')


def modbus_sink(port, **kw):
    return build_sink({"type": "modbus", "host": LOOPBACK, "port": port, "coil": 12, "reconnect_min_ms": 50,
                       "reconnect_max_ms": 200, **kw})


def mqtt_sink(port, outbox_dir=None, **kw):
    return build_sink({"type": "mqtt", "host": LOOPBACK, "port": port, "line": "l1", "client_id": "edgead-under-test",
                       "reconnect_min_ms": 50, "reconnect_max_ms": 200, **kw}, outbox_dir=outbox_dir)


class Alarms:
    def __init__(self):
        self.got = []
        self.recovered = []

    def __call__(self, name, detail):
        self.got.append((name, detail))

    def back(self, name):
        self.recovered.append(name)


# ---------------------------------------------------------------- Modbus TCP


def test_modbus_coil_pulse_is_delayed_from_capture_and_lasts_pulse_ms(modbus_server):
    """On a fake clock stepped by hand, the real server sees each coil write at its exact time."""
    from edgead.signals.modbus import ModbusSink

    clock = FakeClock(100.0)
    sink = ModbusSink(parse_sink({"type": "modbus", "host": LOOPBACK, "port": modbus_server.port, "coil": 12,
                                  "delay_ms": 60, "pulse_ms": 40}), clock=clock, start=False)
    try:
        assert check_health([sink]) == []
        sink.reject(event(1, 100.0))
        sink.reject(event(2, 100.0, decision="pass"))          # a good part: no pulse
        for t, coil in ((100.0599, []), (100.06, [1]), (100.0999, [1]), (100.1, [1, 0]), (101.0, [1, 0])):
            clock.t = t
            sink.scheduler.run_due()                           # the writes are request/reply: done on return
            assert [w[1:] for w in modbus_server.writes] == [("coil", 12, v) for v in coil], f"at t0 + {t - 100:.4f} s"
        assert sink.stats["pulses"] == 1 and sink.stats["missed"] == 0
    finally:
        sink.close()


def test_modbus_coil_pulse_on_the_real_clock_is_never_early(modbus_server):
    """The same pulse on the sink's own thread and time.monotonic, as the server receives it."""
    # late_ms 1000: a stalled thread must still fire here (lateness is the fake-clock tests' job)
    sink = modbus_sink(modbus_server.port, delay_ms=60, pulse_ms=40, late_ms=1000)
    try:
        assert check_health([sink]) == []
        t0 = time.monotonic()
        sink.reject(event(1, t0))
        assert wait_for(lambda: len(modbus_server.writes) >= 2, 3)
        (t_on, kind, addr, on), (t_off, _, _, off) = modbus_server.writes
        assert (kind, addr, on, off) == ("coil", 12, 1, 0)
        assert t_on - t0 >= 0.06 and t_off - t0 >= 0.06 + 0.04, "an edge came early"   # sent after it was due
        assert t_on - t0 < 0.06 + SLACK_S and t_off - t_on < 0.04 + SLACK_S, "grossly late"
    finally:
        sink.close()


def test_modbus_register_set_mode_and_heartbeat(modbus_server):
    sink = build_sink({"type": "modbus", "host": LOOPBACK, "port": modbus_server.port, "register": 40, "value": 7,
                       "mode": "set", "heartbeat_register": 41, "heartbeat_ms": 50,
                       "late_ms": 1000})              # a stalled thread must not turn a write into a missed part
    try:
        sink.reject(event(1))
        sink.reject(event(2, time.monotonic() + 0.01))
        assert wait_for(lambda: len([w for w in modbus_server.writes if w[2] == 40]) == 2, 3)
        time.sleep(0.05)
        assert [w[3] for w in modbus_server.writes if w[2] == 40] == [7, 7]        # set only, no reset
        assert wait_for(lambda: len([w for w in modbus_server.writes if w[2] == 41]) >= 3, 3)
        beats = [w[3] for w in modbus_server.writes if w[2] == 41]
        assert beats[:3] == [1, 2, 3]
    finally:
        sink.close()


@needs_pymodbus
def test_modbus_down_at_start_is_a_health_error_naming_the_output():
    sink = modbus_sink(free_port())
    try:
        with pytest.raises(EdgeADError,
                           match=r"output 'modbus' is unreachable: cannot connect to 127\.0\.0\.1:\d+ ") as err:
            check_health([sink], timeout_s=0.2)
        assert "output 'modbus' is unreachable: cannot connect to 127.0.0.1:" in err.value.message
        assert "--allow-degraded" in err.value.hint
        warned = []
        down = check_health([sink], allow_degraded=True, timeout_s=0, warn=warned.append)
        assert down[0][0] == "modbus" and "running degraded" in warned[0]
    finally:
        sink.close()


def test_modbus_lost_mid_run_raises_the_alarm_and_recovers(modbus_server, tmp_path):
    lines = FakeLines()
    from edgead.signals.gpio import GpioSink

    sink = modbus_sink(modbus_server.port, pulse_ms=10, heartbeat_ms=50, late_ms=1000)  # a stall must not miss part 2
    pins = GpioSink(parse_sink({"type": "gpio", "pin": 5, "alarm_pin": 6, "late_ms": 200}), backend=lines)
    log = build_sink({"type": "log", "path": str(tmp_path / "events.jsonl")})
    alarms = Alarms()
    group = SinkGroup([sink, pins, log], on_sink_failure="alarm", on_alarm=alarms, on_recovered=alarms.back)
    try:
        modbus_server.stop()                              # the PLC goes away mid-run
        assert wait_for(lambda: alarms.got, 3), "no alarm for a lost PLC"
        assert alarms.got[0][0] == "modbus" and "127.0.0.1" in alarms.got[0][1]
        assert lines.level[6] is True                     # alarm pin latched
        assert not group.should_stop                      # policy alarm: keep inspecting
        group.reject(event(1))                            # the other outputs still get it
        assert wait_for(lambda: lines.edges(5), 2)
        modbus_server.start()
        assert wait_for(lambda: sink.health().ok, 5), sink.health().detail
        assert wait_for(lambda: alarms.recovered == ["modbus"], 2), alarms.recovered
        assert lines.level[6] is False                    # the PLC is back and nothing else alarms: pin off
        group.reject(event(2))
        assert wait_for(lambda: any(w[3] == 1 for w in modbus_server.writes), 3)
    finally:
        group.close()
    logged = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert any(rec.get("sink") == "modbus" and "alarm" in rec for rec in logged)


def test_modbus_register_encoder_delays_in_belt_counts(modbus_server):
    """The delay follows the PLC's encoder counter: nothing fires while the belt stands still."""
    modbus_server.set_register(30, 1000)
    lines = FakeLines()
    from edgead.signals.gpio import GpioSink

    cfg = parse_sink({"type": "gpio", "pin": 5, "encoder": {
        "source": "modbus", "host": LOOPBACK, "port": modbus_server.port, "register": 30, "poll_ms": 2,
        "delay_counts": 200, "pulse_counts": 50, "late_counts": 30}})
    sink = GpioSink(cfg, backend=lines)
    try:
        assert sink.health().ok, sink.health().detail
        time.sleep(0.03)
        sink.reject(event(1))                              # captured at count 1000
        for count in (1100, 1199):
            modbus_server.set_register(30, count)
            time.sleep(0.06)
            assert lines.edges(5) == [], f"fired early at count {count}"
        modbus_server.set_register(30, 1210)
        assert wait_for(lambda: len(lines.edges(5)) == 1, 2)
        modbus_server.set_register(30, 1240)
        time.sleep(0.06)
        assert len(lines.edges(5)) == 1
        modbus_server.set_register(30, 1265)                # on at 1210: full 50 counts -> off at 1260
        assert wait_for(lambda: len(lines.edges(5)) == 2, 2)
        assert [a for _, a in lines.edges(5)] == [True, False]
    finally:
        sink.close()


# ---------------------------------------------------------------- MQTT (mosquitto)


def test_mqtt_publishes_events_and_status(mosquitto):
    sub = Subscriber(mosquitto.port, ["edgead/l1/#"])
    sink = mqtt_sink(mosquitto.port, per_part=True, topic="edgead/{line}/{decision}")
    try:
        assert check_health([sink], timeout_s=5) == []
        sink.reject(event(1, decision="pass", score=0.1))
        sink.reject(event(2, score=float("nan")))
        assert wait_for(lambda: len(sub.payloads("edgead/l1/reject")) == 1 and sub.payloads("edgead/l1/pass"), 5)
        rej = sub.events("edgead/l1/reject")[0]
        assert rej["seq"] == 2 and rej["line"] == "l1" and rej["score"] is None and rej["decision"] == "reject"
        assert wait_for(lambda: sub.payloads("edgead/l1/status"), 2)[-1] == b"online"
    finally:
        sink.close()
    assert wait_for(lambda: sub.payloads("edgead/l1/status")[-1] == b"offline", 2)
    sub.close()


def test_mqtt_last_will_says_offline_when_edgead_dies(mosquitto):
    code = textwrap.dedent(f"""
        import os, time
        from edgead.signals import build_sink
        s = build_sink({{"type": "mqtt", "host": "{LOOPBACK}", "port": {mosquitto.port}, "line": "lw",
                         "client_id": "edgead-dies", "keepalive_s": 5}})
        for _ in range(500):
            if s.health().ok:
                break
            time.sleep(0.01)
        print(s.health().ok, flush=True)
        os._exit(0)                      # no clean disconnect: the broker must publish the will
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "True", out.stderr
    sub = Subscriber(mosquitto.port, ["edgead/lw/status"], client_id="edgead-test-sub-lw")
    assert wait_for(lambda: sub.payloads("edgead/lw/status"), 3) == [b"offline"]   # retained
    sub.close()


def test_mqtt_broker_restart_mid_run_loses_no_event_and_keeps_order(mosquitto):
    sub = Subscriber(mosquitto.port, ["edgead/l1/events"])
    alarms = Alarms()
    sink = mqtt_sink(mosquitto.port, outbox=100)
    group = SinkGroup([sink], on_alarm=alarms)
    try:
        assert check_health([sink], timeout_s=5) == []
        for i in range(20):
            group.reject(event(i))
        mosquitto.stop()
        assert wait_for(lambda: alarms.got, 3), "no alarm when the broker went away"
        assert "lost the broker" in alarms.got[0][1]
        for i in range(20, 60):                       # while the broker is down: into the outbox
            group.reject(event(i))
            time.sleep(0.002)
        mosquitto.start()
        assert wait_for(lambda: len({e["seq"] for e in sub.events("edgead/l1/events")}) == 60, 15), \
            sorted({e["seq"] for e in sub.events("edgead/l1/events")})
        seqs = [e["seq"] for e in sub.events("edgead/l1/events")]
        first_seen = list(dict.fromkeys(seqs))        # at-least-once: a duplicate may follow a reconnect
        assert first_seen == list(range(60))
        assert sink.health().ok and sink.stats["dropped"] == 0
    finally:
        group.close()
        sub.close()


def test_mqtt_down_at_start_queues_every_event_and_sends_them_in_order(mosquitto):
    """--allow-degraded with the broker down: nothing dropped although 8 events exceed the in-memory
    read-ahead (outbox: 5); they wait on disk and all go out, in order, once the broker is there."""
    mosquitto.stop()
    alarms = Alarms()
    sink = mqtt_sink(mosquitto.port, outbox=5)
    group = SinkGroup([sink], on_alarm=alarms, on_recovered=alarms.back)
    try:
        with pytest.raises(EdgeADError, match=f"output 'mqtt' is unreachable: cannot connect to broker 127.0.0.1:{mosquitto.port}"):
            check_health([sink], timeout_s=1)
        for i in range(8):
            group.reject(event(i, event_id=f"r1-{i}"))
        assert group.outbox_pending() == {"mqtt": 8}
        assert alarms.got and "cannot connect to broker" in alarms.got[0][1]     # the output is down: an alarm
        mosquitto.start()
        sub = Subscriber(mosquitto.port, ["edgead/l1/events"])
        assert wait_for(lambda: group.outbox_pending() == {"mqtt": 0}, 10), group.outbox_pending()
        assert wait_for(lambda: len({e["event_id"] for e in sub.events("edgead/l1/events")}) == 8, 5)
        assert list(dict.fromkeys(e["seq"] for e in sub.events("edgead/l1/events"))) == list(range(8))
        assert alarms.recovered == ["mqtt"] and sink.stats["refused"] == 0
        sub.close()
    finally:
        group.close()
    assert group.undelivered() == {}


def test_mqtt_tls_with_username_and_password(mosquitto_tls, monkeypatch):
    broker, ca = mosquitto_tls
    monkeypatch.setenv("EDGEAD_TEST_MQTT_PASSWORD", "s3cret")
    good = mqtt_sink(broker.port, tls=True, ca_certs=str(ca), username="line1", password_env="EDGEAD_TEST_MQTT_PASSWORD",
                     name="good")
    bad = mqtt_sink(broker.port, tls=True, ca_certs=str(ca), username="line1", password="wrong",
                    client_id="edgead-bad-password", name="mqtt")
    try:
        assert check_health([good], timeout_s=5) == []
        assert good.fire_test().startswith("published a test event")
        with pytest.raises(EdgeADError, match="output 'mqtt' is unreachable: broker 127.0.0.1:.* refused the connection"):
            check_health([bad], timeout_s=2)
    finally:
        good.close()
        bad.close()


# ---------------------------------------------------------------- durable outbox, alarm lifecycle


def test_mqtt_broker_gone_until_close_loses_nothing_and_the_next_start_replays_in_order(mosquitto, tmp_path):
    """Events produced = received by an independent subscriber + counted undelivered (and on disk);
    the next start with the broker back delivers the rest, in order: every id arrives."""
    outbox_dir, topic = tmp_path / "outbox", "edgead/l1/events"
    ids = [f"run1-{i}" for i in range(60)]
    sub = Subscriber(mosquitto.port, [topic])
    alarms = Alarms()
    sink = mqtt_sink(mosquitto.port, outbox_dir)
    group = SinkGroup([sink], on_alarm=alarms)
    try:
        assert check_health([sink], timeout_s=5) == []
        for i in range(20):
            group.reject(event(i, event_id=ids[i]))
        assert wait_for(lambda: len(sub.payloads(topic)) >= 20, 5)
        mosquitto.stop()                              # killed mid-run, not back before the run ends
        assert wait_for(lambda: alarms.got, 3)
        for i in range(20, 60):
            group.reject(event(i, event_id=ids[i]))
    finally:
        group.close()
    received = {e["event_id"] for e in sub.events(topic)}
    left = group.undelivered()["mqtt"]
    kept = outbox_ids(Path(left["where"]))
    assert left["count"] == left["pending"] == len(kept) == sink.stats["unsent"] and left["refused"] == 0
    assert len(kept) >= 40 and received | set(kept) == set(ids)        # each one delivered or kept
    assert kept == sorted(kept, key=lambda x: int(x.split("-")[1]))

    mosquitto.start()
    before = len(sub.events(topic))
    again = mqtt_sink(mosquitto.port, outbox_dir)
    try:
        assert again.stats["replayed"] == len(kept)
        assert wait_for(lambda: again.outbox_pending() == 0, 10), again.outbox_pending()
        assert wait_for(lambda: {e["event_id"] for e in sub.events(topic)} == set(ids), 5)
    finally:
        again.close()
    # (the broker may also re-deliver to the subscriber what it had not acknowledged before the kill)
    replayed = list(dict.fromkeys(e["event_id"] for e in sub.events(topic)[before:] if e["event_id"] in kept))
    assert replayed == kept and again.undelivered() is None
    sub.close()


def test_webhook_to_a_closed_port_keeps_every_event_for_the_next_start(http_peer, tmp_path):
    """per_part with --allow-degraded and the MES away for the whole run: all 60 in the outbox, none
    given up; the next start (the MES back) posts every one, in order."""
    outbox_dir = tmp_path / "outbox"
    cfg = {"type": "webhook", "name": "mes", "url": f"http://{LOOPBACK}:{free_port()}/hook", "per_part": True,
           "retries": 1, "backoff_ms": 10, "timeout_ms": 300}
    ids = [f"run1-{i}" for i in range(60)]
    sink = build_sink(cfg, outbox_dir=outbox_dir)
    alarms = Alarms()
    assert check_health([sink], allow_degraded=True, timeout_s=0, warn=lambda s: None)
    group = SinkGroup([sink], on_alarm=alarms)
    for i in range(60):
        group.reject(event(i, decision="reject" if i % 3 == 0 else "pass", event_id=ids[i]))
    time.sleep(0.1)                                   # the sender is retrying the first one
    group.close()
    folder = outbox_dir / "mes"
    assert group.undelivered() == {"mes": {"count": 60, "where": str(folder), "pending": 60, "refused": 0}}
    assert outbox_ids(folder) == ids and alarms.got
    again = build_sink({**cfg, "url": http_peer.url}, outbox_dir=outbox_dir)
    try:
        assert again.wait_delivered(10)
    finally:
        again.close()
    assert [b["event_id"] for _, b, _ in http_peer.received] == ids and again.undelivered() is None


def test_outbox_flush_delivers_what_a_run_left(http_peer, tmp_path):
    from edgead.signals import outbox_admin

    cfg = {"type": "webhook", "name": "mes", "url": f"http://{LOOPBACK}:{free_port()}/hook", "retries": 0,
           "backoff_ms": 10, "timeout_ms": 300}
    sink = build_sink(cfg, outbox_dir=tmp_path)
    for i in range(5):
        sink.reject(event(i, event_id=f"run1-{i}"))
    sink.close()
    assert [(s["output"], s["pending"], s["oldest_id"]) for s in outbox_admin.status(tmp_path)] == [("mes", 5, "run1-0")]
    report = outbox_admin.flush([{**cfg, "url": http_peer.url}], tmp_path, timeout_s=5)
    assert report == {"mes": {"delivered": 5, "left": 0, "where": str(tmp_path / "mes")}}
    assert [b["event_id"] for _, b, _ in http_peer.received] == [f"run1-{i}" for i in range(5)]
    assert outbox_admin.status(tmp_path)[0]["pending"] == 0
    assert outbox_admin.flush([{**cfg, "url": http_peer.url}], tmp_path, timeout_s=1) == {}   # nothing left


def _retained(port: int, topic: str, client_id: str) -> dict[str, Any]:
    sub = Subscriber(port, [topic], client_id=client_id)
    try:
        return wait_for(lambda: sub.events(topic), 3)[-1]
    finally:
        sub.close()


def test_mqtt_alarm_topic_is_ok_at_connect_and_after_a_clean_close(mosquitto):
    import paho.mqtt.client as paho

    topic = "edgead/l1/alarm"
    past = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="edgead-past-run")
    past.connect(LOOPBACK, mosquitto.port)
    past.loop_start()
    past.publish(topic, json.dumps({"state": "alarm", "sink": "mqtt"}), qos=1, retain=True).wait_for_publish(3)
    past.disconnect()
    past.loop_stop()
    assert _retained(mosquitto.port, topic, "edgead-sub-a")["state"] == "alarm"     # a past run's alarm
    sink = mqtt_sink(mosquitto.port)
    group = SinkGroup([sink])
    sub = Subscriber(mosquitto.port, [topic], client_id="edgead-sub-b")
    try:
        assert check_health([sink], timeout_s=5) == []
        assert wait_for(lambda: sub.events(topic) and sub.events(topic)[-1]["state"] == "ok", 3)
        group.raise_alarm("camera", "camera lost")
        assert wait_for(lambda: sub.events(topic)[-1]["state"] == "alarm", 3)
    finally:
        group.close()
    assert wait_for(lambda: sub.events(topic)[-1]["state"] == "ok", 3)
    sub.close()
    assert _retained(mosquitto.port, topic, "edgead-sub-c")["state"] == "ok"       # what a new dashboard sees


def test_mqtt_broker_back_reports_recovered_and_clears_the_alarm(mosquitto):
    topic = "edgead/l1/alarm"
    alarms = Alarms()
    sink = mqtt_sink(mosquitto.port)
    group = SinkGroup([sink], on_alarm=alarms, on_recovered=alarms.back)
    try:
        assert check_health([sink], timeout_s=5) == []
        mosquitto.stop()
        assert wait_for(lambda: alarms.got, 3) and group.active_alarms() == {"mqtt": ["failure"]}
        mosquitto.start()
        assert wait_for(lambda: alarms.recovered == ["mqtt"], 5), alarms.recovered
        assert group.active_alarms() == {}
        assert wait_for(lambda: _retained(mosquitto.port, topic, "edgead-sub-d")["state"] == "ok", 3)
    finally:
        group.close()


# ---------------------------------------------------------------- webhook (http.server)


def test_webhook_posts_json_with_bearer_token(http_peer, monkeypatch):
    monkeypatch.setenv("EDGEAD_TEST_TOKEN", "s3cret")
    sink = build_sink({"type": "webhook", "url": http_peer.url, "token_env": "EDGEAD_TEST_TOKEN"})
    try:
        assert check_health([sink]) == []
        sink.reject(event(5))
        sink.reject(event(6, decision="pass"))
        assert wait_for(lambda: http_peer.received, 3)
        assert sink.wait_delivered(3)                 # everything it was going to post is posted: not the pass
        (_, body, headers), = http_peer.received
        assert body["seq"] == 5 and headers["Authorization"] == "Bearer s3cret"
        assert headers["Content-Type"] == "application/json"
    finally:
        sink.close()


def test_webhook_user_and_password_in_the_url_are_basic_auth_and_never_shown(http_peer, caplog):
    import base64

    url = http_peer.url.replace("http://", "http://line%401:pa55-w0rd@")
    sink = build_sink({"type": "webhook", "url": url, "retries": 0})
    try:
        assert check_health([sink]) == [] and "pa55-w0rd" not in sink.target and "line%401" not in sink.target
        sink.reject(event(5))
        assert sink.wait_delivered(3)
        (_, body, headers), = http_peer.received
        assert headers["Authorization"] == "Basic " + base64.b64encode(b"line@1:pa55-w0rd").decode()
        http_peer.fail_first, http_peer.fail_status = 10**6, 503     # a failure message names the URL
        sink.reject(event(6))
        assert wait_for(lambda: sink.stats["failed"] or sink.health().ok is False, 5)
    finally:
        sink.close()
    assert http_peer.url in caplog.text and "pa55-w0rd" not in caplog.text


def test_webhook_retries_a_server_that_fails_twice(http_peer):
    http_peer.fail_first = 2
    sink = build_sink({"type": "webhook", "url": http_peer.url, "backoff_ms": 20, "retries": 3})
    try:
        sink.reject(event(1))
        sink.reject(event(2))
        assert wait_for(lambda: len(http_peer.received) == 2, 3)
        assert [b["seq"] for _, b, _ in http_peer.received] == [1, 2]
        assert http_peer.attempts == 4 and sink.stats["retries"] == 2 and sink.health().ok
    finally:
        sink.close()


def test_webhook_down_peer_alarms_after_retries_and_keeps_the_event():
    url = f"http://{LOOPBACK}:{free_port()}/hook"
    alarms = Alarms()
    sink = build_sink({"type": "webhook", "url": url, "backoff_ms": 10, "retries": 2, "timeout_ms": 300})
    group = SinkGroup([sink], on_sink_failure="stop", on_alarm=alarms)
    try:
        with pytest.raises(EdgeADError, match="output 'webhook' is unreachable: cannot connect to 127.0.0.1"):
            check_health([sink], timeout_s=0)
        group.reject(event(1))
        assert wait_for(lambda: sink.stats["failed"] == 1, 3)
        assert sink.stats["retries"] >= 2 and group.should_stop
        assert alarms.got and "after 3 attempts; events wait in the outbox" in alarms.got[-1][1]
    finally:
        group.close()
    left = group.undelivered()
    assert left["webhook"]["count"] == 1 and left["webhook"]["pending"] == 1
    assert sink.stats["failed"] == 1                  # one alarm for the outage, the event kept retrying


def test_webhook_client_errors_are_not_retried(http_peer):
    http_peer.fail_first, http_peer.fail_status = 1, 401
    sink = build_sink({"type": "webhook", "url": http_peer.url, "backoff_ms": 10})
    try:
        sink.reject(event(1))
        assert wait_for(lambda: sink.stats["rejected"] == 1, 3)
        assert http_peer.attempts == 1 and "HTTP 401" in sink.health().detail
        sink.reject(event(2))                         # the next one is posted (the server takes it)
        assert wait_for(lambda: [b["seq"] for _, b, _ in http_peer.received] == [2], 3)
    finally:
        sink.close()
    assert sink.undelivered()["count"] == 1           # the refused one stays in the outbox for the next start


# ---------------------------------------------------------------- serial (pty) and log


def test_serial_sends_the_template_line_after_the_delay(pty_peer):
    # late_ms 1000 and parts 0.3 s apart: a stalled thread neither misses a part nor merges the two
    sink = build_sink({"type": "serial", "port": pty_peer.path, "baudrate": 115200, "delay_ms": 30,
                       "pulse_ms": 20, "late_ms": 1000, "template": "REJECT {seq}\n", "end_template": "END {seq}\n"})
    try:
        assert sink.health().ok, sink.health().detail
        t0 = time.monotonic()
        sink.reject(event(41, t0))
        sink.reject(event(42, t0 + 0.3))
        sink.reject(event(43, t0, decision="pass"))
        got = pty_peer.read_lines(4, timeout=3)
        assert [text for _, text in got] == ["REJECT 41", "END 41", "REJECT 42", "END 42"]
        assert got[0][0] - t0 >= 0.03 and got[1][0] - t0 >= 0.03 + 0.02
    finally:
        sink.close()


@needs_pyserial
def test_serial_port_missing_is_unhealthy():
    sink = build_sink({"type": "serial", "port": "/dev/edgead-no-such-tty"})
    try:
        assert not sink.health().ok and "cannot open /dev/edgead-no-such-tty" in sink.health().detail
    finally:
        sink.close()


def test_log_writes_one_json_object_per_event(tmp_path):
    path = tmp_path / "run" / "rejects.jsonl"
    sinks = build_sinks([{"type": "log", "path": str(path), "per_part": False},
                         {"type": "log", "path": str(tmp_path / "all.jsonl")}])
    for i, decision in enumerate(["pass", "reject", "safe_reject", "pass"]):
        for s in sinks:
            s.reject(event(i, decision=decision, reason="deadline" if decision == "safe_reject" else ""))
    for s in sinks:
        s.close()
    rejects = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(r["seq"], r["decision"]) for r in rejects] == [(1, "reject"), (2, "safe_reject")]
    assert len((tmp_path / "all.jsonl").read_text().splitlines()) == 4


# ---------------------------------------------------------------- SinkGroup and slow peers


class Exploding:
    name = "broken"

    def reject(self, event):
        raise RuntimeError("driver crashed")

    def health(self):
        from edgead.protocols import SinkHealth

        return SinkHealth(True)

    def close(self):
        pass


def test_group_isolates_a_raising_sink_counts_it_and_stops_when_told(tmp_path):
    alarms = Alarms()
    log = build_sink({"type": "log", "path": str(tmp_path / "e.jsonl")})
    group = SinkGroup([Exploding(), log], on_sink_failure="stop", on_alarm=alarms)
    group.reject(event(1))
    group.reject(event(2))
    group.close()
    assert group.failures["broken"] == 2 and group.should_stop
    assert alarms.got[0] == ("broken", "reject() raised RuntimeError: driver crashed")
    events = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines() if '"seq"' in x]
    assert [e["seq"] for e in events] == [1, 2]
    group.reset_alarm()
    assert not group.should_stop


def test_a_missed_part_is_an_alarm_and_with_stop_drops_ready_and_sets_the_alarm_pin():
    from edgead.signals.gpio import GpioSink

    lines = FakeLines()
    kicker = GpioSink(parse_sink({"type": "gpio", "pin": 5, "alarm_pin": 6, "ready_pin": 7, "delay_ms": 50,
                                  "pulse_ms": 20}), backend=lines)
    alarms = Alarms()
    group = SinkGroup([kicker], on_sink_failure="stop", on_alarm=alarms)
    group.set_ready(True)
    assert lines.level[7] is True
    group.reject(event(9, time.monotonic() - 1.0))     # decided a second after capture: window long gone
    assert wait_for(lambda: alarms.got, 2)
    assert alarms.got[0][0] == "gpio" and "part 9 not kicked" in alarms.got[0][1]
    assert group.should_stop and lines.level[7] is False and lines.level[6] is True
    assert not lines.edges(5)                             # never fired late
    group.reject(event(10, time.monotonic() + 10))        # still queued at close: reported, output left off
    group.close()
    assert "part 10 not kicked" in alarms.got[-1][1] and not lines.level.get(5, False)


BLOCK_S = 1.0      # every stuck peer below holds an I/O call for at least this long


def reject_time(sink: Any, n: int, limit: float) -> float | None:
    """Seconds that n reject() calls took, or None if they had not returned after `limit`.

    The calls run on a helper thread, so a reject() that does wait on its peer fails the test
    instead of hanging it (an absent broker would hold such a call for ever)."""
    took: list[float] = []

    def calls() -> None:
        t = time.perf_counter()
        for i in range(n):
            sink.reject(event(i + 1))
        took.append(time.perf_counter() - t)

    th = threading.Thread(target=calls, name="rejects", daemon=True)
    th.start()
    th.join(limit)
    return took[0] if took else None


def test_reject_never_blocks_on_a_slow_or_absent_peer(http_peer, mosquitto, pty_peer, tcp_black_hole, tmp_path):
    """Every sink type, its output thread stuck on its peer: 30 reject() calls return far sooner than one I/O.

    Structural, not a speed figure (that is benchmarks/signals_latency.py's): a reject() that did
    the I/O, or waited on a lock the I/O thread holds, would take BLOCK_S at least; all 30 together
    get BLOCK_S / 4, room for a loaded machine.
    """
    ms = BLOCK_S * 1000
    http_peer.delay_s = BLOCK_S                           # answers each POST after BLOCK_S
    mosquitto.stop()                                      # gone for the whole test
    fill_pty(pty_peer.path)                               # nobody reads the line: a write waits write_timeout_ms
    disk = StuckFifo(tmp_path / "x.jsonl")                # the log's "disk" takes no write until released
    webhook = build_sink({"type": "webhook", "url": http_peer.url, "timeout_ms": 3 * ms})
    mqtt = mqtt_sink(mosquitto.port)
    modbus = modbus_sink(tcp_black_hole, timeout_ms=ms)   # connects, then no reply: each request times out
    serial = build_sink({"type": "serial", "port": pty_peer.path, "write_timeout_ms": ms})
    log = build_sink({"type": "log", "path": str(disk.path)})
    # How to see that the sink's I/O thread has reached its stuck peer (None: no outside sign of it;
    # a short settle instead, which can only make the check weaker, never flaky).
    reached: list[tuple[Any, Callable[[], bool] | None]] = [
        (webhook, lambda: http_peer.attempts >= 1),
        (mqtt, None),
        (modbus, lambda: modbus.scheduler.fired >= 1),    # its pulse is decided: the write is under way
        (serial, lambda: serial.scheduler.fired >= 1),
        (log, None),
    ]
    try:
        for sink, probe in reached:
            sink.reject(event(0))                         # the output thread takes this one to the peer
            if probe is None:
                time.sleep(0.2)
            else:
                assert wait_for(probe, 5), f"{sink.name}: the output thread never reached its peer"
            took = reject_time(sink, 30, limit=BLOCK_S)
            said = f"more than {BLOCK_S}" if took is None else f"{took:.3f}"
            assert took is not None and took < BLOCK_S / 4, f"{sink.name}: 30 reject() calls took {said} s"
    finally:
        disk.release()                                    # else closing the log would wait on it for ever
        t = time.monotonic()
        for sink, _ in reached:
            sink.close()
        disk.close()
        assert time.monotonic() - t < 12, "close() hung on a stuck peer"


# ---------------------------------------------------------------- edgead signals test


def test_signals_test_reports_each_output(modbus_server, http_peer, pty_peer, tmp_path):
    dead = free_port()
    cfg = tmp_path / "run.yaml"
    cfg.write_text(textwrap.dedent(f"""
        outputs:
          - type: modbus
            host: {LOOPBACK}
            port: {modbus_server.port}
            coil: 3
            pulse_ms: 20
          - type: webhook
            url: {http_peer.url}
          - type: serial
            port: {pty_peer.path}
          - type: log
            path: {tmp_path / 'log.jsonl'}
          - type: webhook
            name: mes
            url: http://{LOOPBACK}:{dead}/hook
    """))
    lines: list[str] = []
    assert signals_test(cfg, out=lines.append, connect_timeout_s=0.3) == 1
    assert lines[0].startswith("OK      modbus ") and "pulsed" in lines[0]
    assert lines[1].startswith("OK      webhook") and "HTTP 200" in lines[1]
    assert lines[2].startswith("OK      serial ") and pty_peer.read_lines(1)[0][1] == "REJECT 0"
    assert lines[3].startswith("OK      log    ")
    assert lines[4].startswith("FAILED  mes    ") and f"127.0.0.1:{dead}" in lines[4]
    assert lines[5] == "5 outputs: 4 OK, 1 FAILED"
    assert [w[3] for w in modbus_server.writes] == [1, 0]
    assert http_peer.received[0][1]["decision"] == "test"

    ok = tmp_path / "ok.yaml"
    ok.write_text(f"outputs:\n  - type: log\n    path: {tmp_path / 'ok.jsonl'}\n")
    assert signals_test(ok, out=lines.append) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("outputs:\n  - type: log\n    pth: x\n")
    with pytest.raises(EdgeADError, match="unknown key 'pth'"):
        signals_test(bad, out=lines.append)


def test_signals_test_mqtt(mosquitto, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"outputs:\n  - type: mqtt\n    host: {LOOPBACK}\n    port: {mosquitto.port}\n")
    lines: list[str] = []
    assert signals_test(cfg, out=lines.append) == 0
    assert lines[0].startswith("OK      mqtt") and "edgead/line1/events" in lines[0]
