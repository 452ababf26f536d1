"""Outputs that go down: the MQTT broker killed mid-run or down from the start, the webhook's port
closed, the broker coming back while the line runs. Counted by event id: every event the run produced
(its audit log) reached an independent receiver or is reported undelivered and kept in the outbox,
and the next start or `edgead outbox flush` delivers the rest; the alarm clears when the peer is back."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fault_line import Line, edgead, event_ids, finish, start, write_yaml
from signals_fixtures import (LOOPBACK, Broker, HttpPeer, Subscriber, free_port, mosquitto, outbox_ids,  # noqa: F401
                              wait_for)

TOPIC = "edgead/l1/events"
N = 60


def _config(tmp_path: Path, line: Line, clip: Path, outputs: list[dict[str, Any]], **extra: Any) -> Path:
    return write_yaml(tmp_path / "run.yaml", {"camera": {"source": str(clip), "frame_rate": 20},
                                              "outbox_dir": str(tmp_path / "outbox"), "outputs": outputs, **extra})


def _mqtt(port: int) -> dict[str, Any]:
    return {"type": "mqtt", "host": LOOPBACK, "port": port, "line": "l1", "per_part": True}


def _record(tmp_path: Path, k: int = 0) -> Path:
    return sorted((tmp_path / "rec").glob("*/events.jsonl"))[k].parent


def test_broker_killed_mid_run_every_event_delivered_or_kept_then_flushed(line: Line, tmp_path: Path,
                                                                         mosquitto: Broker) -> None:
    clip = line.clip("clip60", N)
    config = _config(tmp_path, line, clip, [_mqtt(mosquitto.port)])
    sub = Subscriber(mosquitto.port, [TOPIC], client_id="faults-killed")
    proc = start(*line.run_args(clip, "--record", tmp_path / "rec", config=config))
    assert wait_for(lambda: len(sub.events(TOPIC)) >= 10, 30), "the run did not start publishing"
    mosquitto.stop()
    res = finish(proc)
    assert res.rc == 4, res.text

    produced = event_ids(_record(tmp_path))
    assert len(produced) == len(set(produced)) == N
    received = {e["event_id"] for e in sub.events(TOPIC)}
    left = res.summary()["undelivered"]["mqtt"]
    kept = outbox_ids(Path(left["where"]))
    assert left["count"] == len(kept) and 0 < len(kept) < N
    assert received | set(kept) == set(produced)              # each one delivered or kept: none unaccounted
    assert f"NOT DELIVERED: {len(kept)} events of output mqtt, kept in {left['where']}" in res.out
    status = edgead("outbox", "status", "--config", config)
    assert status.rc == 4 and f"{len(kept)}" in status.out

    mosquitto.start()
    flushed = edgead("outbox", "flush", "--config", config, "--timeout", "20")
    assert flushed.rc == 0, flushed.text
    assert wait_for(lambda: {e["event_id"] for e in sub.events(TOPIC)} == set(produced), 10)
    assert edgead("outbox", "status", "--config", config).rc == 0
    sub.close()


def test_broker_down_from_the_start_queues_and_the_next_start_replays_in_order(line: Line, tmp_path: Path,
                                                                              mosquitto: Broker) -> None:
    sub = Subscriber(mosquitto.port, [TOPIC], client_id="faults-degraded")
    mosquitto.stop()
    folder = line.folder("folder30", 30)
    config = write_yaml(tmp_path / "run.yaml", {"outbox_dir": str(tmp_path / "outbox"), "outputs": [_mqtt(mosquitto.port)]})
    refused = edgead(*line.run_args(folder, config=config))
    assert refused.rc == 2 and "output 'mqtt' is unreachable" in refused.err and "--allow-degraded" in refused.err

    first = edgead(*line.run_args(folder, "--allow-degraded", "--record", tmp_path / "rec", config=config))
    assert first.rc == 4 and first.summary()["undelivered"]["mqtt"]["count"] == 30, first.text
    assert "ALARM: output mqtt" in first.err and first.summary()["alarms"] >= 1

    mosquitto.start()
    second = edgead(*line.run_args(folder, "--record", tmp_path / "rec", "--max-frames", "10", config=config))
    assert second.rc == 0, second.text
    ids = event_ids(_record(tmp_path, 0)) + event_ids(_record(tmp_path, 1))
    assert len(set(ids)) == 40                            # two runs: their ids never collide
    assert wait_for(lambda: {e["event_id"] for e in sub.events(TOPIC)} == set(ids), 10)
    arrived = list(dict.fromkeys(e["event_id"] for e in sub.events(TOPIC)))
    assert arrived == ids                                 # the first run's events first, each run in order
    sub.close()


def test_webhook_on_a_closed_port_keeps_every_event_and_says_so_last(line: Line, tmp_path: Path) -> None:
    port = free_port()
    folder = line.folder("folder30", 30)
    hook = {"type": "webhook", "url": f"http://{LOOPBACK}:{port}/events", "per_part": True, "retries": 1,
            "timeout_ms": 300}
    config = write_yaml(tmp_path / "run.yaml", {"outbox_dir": str(tmp_path / "outbox"), "outputs": [hook]})
    res = edgead(*line.run_args(folder, "--allow-degraded", "--record", tmp_path / "rec", config=config), merged=True)
    assert res.rc == 4, res.out
    produced = event_ids(_record(tmp_path))
    assert res.summary()["undelivered"]["webhook"]["count"] == len(produced) == 30
    tail = res.out.rstrip().splitlines()[-3:]             # the summary is the last thing said
    assert tail[0].startswith("  camera:") and tail[1].startswith("  NOT DELIVERED: 30 events of output webhook")
    assert tail[2].startswith("  records: ")

    peer = HttpPeer(port)
    try:
        flushed = edgead("outbox", "flush", "--config", config, "--timeout", "20")
        assert flushed.rc == 0, flushed.text
        assert [body["event_id"] for _, body, _ in peer.received] == produced     # all of them, in order
    finally:
        peer.close()


def _health(port: int) -> dict[str, Any]:
    """/health's body, whatever its status code (503 while the line is degraded or stopping)."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/health", timeout=2) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read())


def test_an_output_alarm_clears_when_the_broker_is_back_and_the_alarm_topic_ends_ok(line: Line, tmp_path: Path,
                                                                                    mosquitto: Broker) -> None:
    clip = line.clip("clip200", 200)             # 10 s at 20 frames/s
    http = free_port()
    config = _config(tmp_path, line, clip, [_mqtt(mosquitto.port)], http={"listen": f"{LOOPBACK}:{http}"})
    sub = Subscriber(mosquitto.port, [TOPIC], client_id="faults-alarm")
    proc = start(*line.run_args(clip, "--record", tmp_path / "rec", config=config))
    try:
        assert wait_for(lambda: len(sub.events(TOPIC)) >= 5, 30)
        assert _health(http)["status"] == "ok"
        mosquitto.stop()
        assert wait_for(lambda: _health(http)["status"] != "ok", 10)
        down = _health(http)
        assert any(a["key"] == "output_failure:mqtt" for a in down["alarms"]), down
        mosquitto.start()
        assert wait_for(lambda: _health(http)["status"] == "ok", 15), _health(http)
        assert _health(http)["alarm_counts"].get("output_failure:mqtt", 0) >= 1
    finally:
        res = finish(proc)
    assert res.rc == 0, res.text                       # the broker was back: everything delivered
    assert wait_for(lambda: {e["event_id"] for e in sub.events(TOPIC)} == set(event_ids(_record(tmp_path))), 10)
    sub.close()
    time.sleep(0.2)
    late = Subscriber(mosquitto.port, ["edgead/l1/alarm"], client_id="faults-alarm-late")
    assert wait_for(lambda: late.payloads("edgead/l1/alarm"), 5)
    assert json.loads(late.payloads("edgead/l1/alarm")[-1])["state"] == "ok"     # retained, after a clean exit
    late.close()


def test_the_plcs_acknowledge_button_clears_an_output_alarm(line: Line, tmp_path: Path, mosquitto: Broker) -> None:
    from signals_fixtures import ModbusPeer

    plc = ModbusPeer(free_port())
    mosquitto.stop()                             # the broker is down: an output alarm that stays until acknowledged
    clip = line.clip("clip200", 200)
    http = free_port()
    config = _config(tmp_path, line, clip, [_mqtt(mosquitto.port)], http={"listen": f"{LOOPBACK}:{http}"},
                     alarm_ack={"type": "modbus", "host": LOOPBACK, "port": plc.port, "coil": 3, "poll_ms": 20})
    proc = start(*line.run_args(clip, "--allow-degraded", config=config))
    try:
        assert wait_for(lambda: _up(http) and _health(http)["alarms"], 30)
        assert [a["key"] for a in _health(http)["alarms"]] == ["output_failure:mqtt"]
        time.sleep(0.5)                          # the input has been read at least once (a bit on at start is no press)
        plc.set_coil(3, True)                    # pressed
        assert wait_for(lambda: _health(http)["alarms"] == [], 5), _health(http)
        after = _health(http)       # acknowledged, not repaired: the line is still degraded, the count stays
        assert after["status"] == "degraded" and after["alarm_counts"]["output_failure:mqtt"] == 1
        plc.set_coil(3, False)
        proc.send_signal(signal.SIGTERM)         # seen: the rest of the clip adds nothing (SIGTERM ends it cleanly)
    finally:
        res = finish(proc)
        plc.close()
    assert res.rc == 4                           # acknowledged is not delivered: the events are still kept
    assert "acknowledge pressed on the PLC (127.0.0.1:" in res.err and "alarm acknowledged: output_failure:mqtt" in res.err


def _up(port: int) -> bool:
    try:
        _health(port)
    except OSError:
        return False
    return True


def test_a_plc_that_goes_down_mid_run_every_reject_kicked_or_reported(line: Line, tmp_path: Path) -> None:
    from signals_fixtures import ModbusPeer

    plc = ModbusPeer(free_port())
    clip = line.clip("clip60", N)
    config = _config(tmp_path, line, clip, [{"type": "modbus", "host": LOOPBACK, "port": plc.port, "coil": 5,
                                             "pulse_ms": 20}])
    proc = start(*line.run_args(clip, "--record", tmp_path / "rec", config=config))
    try:
        assert wait_for(lambda: sum(1 for w in plc.writes if w[3] == 1) >= 3, 30), "no kick reached the PLC"
        plc.stop()                               # the PLC goes away for a second
        time.sleep(1.0)
        plc.start()
    finally:
        res = finish(proc)
        kicks = sum(1 for _, kind, address, value in plc.writes if kind == "coil" and address == 5 and value == 1)
        plc.close()
    rejects = sum(1 for e in (json.loads(s) for s in (_record(tmp_path) / "events.jsonl").read_text().splitlines())
                  if e.get("decision") in ("reject", "safe_reject"))
    assert rejects == sum(line.labels[i % len(line.labels)] for i in range(N)), res.text
    left = res.summary()["undelivered"].get("modbus", {"count": 0})
    assert kicks + left["count"] == rejects and left["count"] > 0, (kicks, left, rejects)   # none forgotten
    assert res.rc == 4 and f"NOT DELIVERED: {left['count']} rejects not kicked by output modbus" in res.out, res.out
    assert "ALARM: output modbus" in res.err
