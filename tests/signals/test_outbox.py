"""The durable outbox on its own: restart and replay in order, torn tail, bounds, disk errors, fsync
batches, the lock, the admin functions, and SinkGroup's accounting and alarm lifecycle."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest
from signals_fixtures import LOOPBACK, Alarms, event, free_port, http_peer, state_dir, wait_for  # noqa: F401

from edgead.errors import EdgeADError
from edgead.signals import SinkBase, SinkGroup, build_sink, outbox_admin
from edgead.signals.config import parse_sink
from edgead.signals.outbox import Outbox, default_outbox_dir, folder_name, output_folder, segment_paths

pytestmark = pytest.mark.usefixtures("state_dir")


def fill(box: Outbox, n: int, start: int = 0) -> list[int]:
    return [box.append(f"r1-{i}", {"body": json.dumps({"seq": i})}) for i in range(start, start + n)]


def drain(box: Outbox) -> list[str]:
    out = []
    while (rec := box.take(0.01)) is not None:
        out.append(rec.event_id)
    return out


def test_records_survive_a_restart_and_come_back_in_order_without_the_acknowledged_ones(tmp_path):
    box = Outbox(tmp_path / "mes", max_bytes=1 << 20, segment_bytes=300)
    ns = fill(box, 10)
    taken = [box.take(0.01) for _ in range(6)]
    for rec in taken[:3] + taken[4:5]:                 # 0, 1, 2 and (out of order) 4 acknowledged
        box.ack(rec.n)
    assert ns == list(range(1, 11)) and box.pending() == 6
    box.close()
    assert len(segment_paths(tmp_path / "mes")) > 1    # several segments, the first ones partly acked

    again = Outbox(tmp_path / "mes", max_bytes=1 << 20, segment_bytes=300)
    try:
        assert again.replayed == 6 and again.repaired == 0
        assert drain(again) == ["r1-3", "r1-5", "r1-6", "r1-7", "r1-8", "r1-9"]
        assert again.append("r2-0", {"body": "{}"}) == 11          # numbers go on, never reused
    finally:
        again.close()


def test_a_torn_last_line_is_cut_off_and_counted_at_open(tmp_path):
    box = Outbox(tmp_path / "mes", max_bytes=1 << 20)
    fill(box, 3)
    box.close()
    (_, seg), = segment_paths(tmp_path / "mes")
    whole = seg.stat().st_size
    with open(seg, "ab") as f:                         # a crash in the middle of the 4th write
        f.write(b'{"n":4,"id":"r1-3","t":"2026-01-01T00:00:00Z","msg":{"bo')
    again = Outbox(tmp_path / "mes", max_bytes=1 << 20)
    try:
        assert again.repaired == 1 and again.pending() == 3 and seg.stat().st_size == whole
        assert again.append("r1-3", {"body": "{}"}) == 4
        assert drain(again) == ["r1-0", "r1-1", "r1-2", "r1-3"]
    finally:
        again.close()
    lines = [x for _, p in segment_paths(tmp_path / "mes") for x in p.read_bytes().splitlines(keepends=True)]
    assert [json.loads(x)["id"] for x in lines] == ["r1-0", "r1-1", "r1-2", "r1-3"]
    assert all(x.endswith(b"\n") for x in lines)


def test_acknowledged_segments_are_deleted_and_the_bytes_given_back(tmp_path):
    box = Outbox(tmp_path / "mes", max_bytes=1 << 20, segment_bytes=200)
    fill(box, 20)
    assert len(segment_paths(tmp_path / "mes")) >= 4 and box.size_bytes() > 0
    while (rec := box.take(0.01)) is not None:
        box.ack(rec.n)
    box.sync(force_acks=True)
    try:
        assert segment_paths(tmp_path / "mes") == [] and box.size_bytes() == 0 and box.pending() == 0
    finally:
        box.close()
    assert json.loads((tmp_path / "mes" / "acked.json").read_text())["acked_to"] == 20


def test_records_are_fsynced_in_batches_of_n_records(tmp_path):
    box = Outbox(tmp_path / "mes", max_bytes=1 << 20, fsync_every=4, fsync_ms=60_000)
    try:
        fill(box, 3)
        time.sleep(0.2)
        assert box.fsyncs == 0                         # 3 < 4 records and the timer far away
        fill(box, 1, start=3)
        assert wait_for(lambda: box.fsyncs >= 1, 2)
    finally:
        box.close()
    timed = Outbox(tmp_path / "t", max_bytes=1 << 20, fsync_every=1000, fsync_ms=20)
    try:
        fill(timed, 1)
        assert wait_for(lambda: timed.fsyncs >= 1, 2)  # one record: the timer flushes it
    finally:
        timed.close()


def test_a_full_outbox_refuses_and_counts_and_frees_again_when_acknowledged(tmp_path):
    box = Outbox(tmp_path / "mes", max_bytes=400, segment_bytes=100)
    try:
        got = fill(box, 10)
        kept = [n for n in got if n is not None]
        assert 1 <= len(kept) < 10 and box.refused == 10 - len(kept) and box.pending() == len(kept)
        assert "is full" in box.last_error and box.size_bytes() <= 400
        while (rec := box.take(0.01)) is not None:
            box.ack(rec.n)
        assert box.append("r1-10", {"body": "{}"}) is not None    # acknowledged space is reused
    finally:
        box.close()


def test_a_disk_error_mid_write_refuses_the_event_and_leaves_whole_lines(tmp_path, monkeypatch):
    """ENOSPC after half a record (os.write patched to write half the bytes, as a full disk does)."""
    import edgead.signals.outbox as outbox_mod

    box = Outbox(tmp_path / "mes", max_bytes=1 << 20)
    fill(box, 2)
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        return len(data) // 2

    monkeypatch.setattr(outbox_mod.os, "write", half_then_full)
    assert box.append("r1-2", {"body": "{}"}) is None
    monkeypatch.setattr(outbox_mod.os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    assert box.append("r1-3", {"body": "{}"}) is None
    monkeypatch.setattr(outbox_mod.os, "write", real_write)
    fill(box, 1, start=4)
    assert box.refused == 2 and "No space left" in box.last_error and box.pending() == 3
    box.close()
    again = Outbox(tmp_path / "mes", max_bytes=1 << 20)
    try:
        assert again.repaired == 0 and drain(again) == ["r1-0", "r1-1", "r1-4"]
    finally:
        again.close()


def test_one_outbox_folder_is_held_by_one_process_at_a_time(tmp_path):
    box = Outbox(tmp_path / "mes", max_bytes=1 << 20, output="mes")
    try:
        with pytest.raises(EdgeADError, match="output 'mes': its outbox .* is in use by another edgead process"):
            Outbox(tmp_path / "mes", max_bytes=1 << 20, output="mes")
    finally:
        box.close()
    Outbox(tmp_path / "mes", max_bytes=1 << 20).close()        # free again once closed


def test_the_default_outbox_folder_follows_the_state_dir(state_dir, monkeypatch):
    assert default_outbox_dir() == state_dir / "outbox"
    assert output_folder(None, "mes") == state_dir / "outbox" / "mes"
    assert folder_name("mqtt") == "mqtt" and folder_name("mqtt#2").startswith("mqtt_2-")
    assert folder_name("mqtt#2") != folder_name("mqtt_2") and folder_name("../x") != "../x"
    monkeypatch.delenv("EDGEAD_STATE_DIR")
    assert default_outbox_dir() == Path.home() / ".local" / "state" / "edgead" / "outbox"


# ---------------------------------------------------------------- through a sink and the group


def test_a_full_outbox_is_counted_undelivered_and_raises_the_alarm(tmp_path):
    """A webhook whose peer is away and whose outbox holds ~2 kB: nothing silently dropped."""
    url = f"http://{LOOPBACK}:{free_port()}/hook"
    sink = build_sink({"type": "webhook", "name": "mes", "url": url, "outbox_mb": 0.002, "retries": 0,
                       "backoff_ms": 10, "timeout_ms": 200}, outbox_dir=tmp_path / "outbox")
    alarms = Alarms()
    group = SinkGroup([sink], on_alarm=alarms)
    for i in range(20):
        group.reject(event(i, event_id=f"r1-{i}"))
    group.close()
    left = group.undelivered()["mes"]
    assert left["count"] == 20 and left["pending"] + left["refused"] == 20 and left["refused"] > 0
    assert left["where"] == str(tmp_path / "outbox" / "mes")
    assert any("is full" in d and "counted as undelivered" in d for _, d in alarms.got)
    assert "dropped" in group.active_alarms()["mes"]        # latched until the operator acknowledges
    assert sum(p.stat().st_size for _, p in segment_paths(tmp_path / "outbox" / "mes")) <= 2000


class Peer(SinkBase):
    """A sink whose failures the test drives; records the alarm outputs it is asked for."""

    def __init__(self, name, pending=None):
        super().__init__(name, "test")
        self.outputs, self._pending = [], pending

    def reject(self, event):
        pass

    def close(self):
        pass

    def alarm(self, sink_name, detail):
        self.outputs.append("alarm")

    def clear_alarm(self):
        self.outputs.append("clear")

    def outbox_pending(self):
        return self._pending

    def undelivered(self):
        return {"count": self._pending, "where": f"/outbox/{self.name}"} if self._pending else None


def test_group_sums_undelivered_and_pending_per_output():
    group = SinkGroup([Peer("mqtt", 3), Peer("mes", 0), Peer("gpio")])
    assert group.undelivered() == {"mqtt": {"count": 3, "where": "/outbox/mqtt"}}
    assert group.outbox_pending() == {"mqtt": 3, "mes": 0}


def test_a_recovered_output_clears_its_alarm_but_a_latched_one_waits_for_the_operator():
    a, b = Peer("mqtt"), Peer("gpio")
    alarms = Alarms()
    group = SinkGroup([a, b], on_alarm=alarms, on_recovered=alarms.back)
    a._fail("lost the broker")
    assert a.outputs == ["alarm"] and group.active_alarms() == {"mqtt": ["failure"]}
    a._ok()
    assert alarms.recovered == ["mqtt"] and a.outputs == ["alarm", "clear"] and group.active_alarms() == {}
    a._ok()                                            # healthy and staying so: no second "recovered"
    assert alarms.recovered == ["mqtt"]
    b._notify("missed", "part 9 not kicked")
    a._fail("lost the broker")
    a._ok()
    assert group.active_alarms() == {"gpio": ["missed"]} and a.outputs[-1] == "alarm"   # still on
    group.reset_alarm()
    assert group.active_alarms() == {} and a.outputs[-1] == "clear"
    group.raise_alarm("camera", "camera lost")
    a._fail("lost the broker")
    a._ok()
    assert a.outputs[-1] == "alarm"                    # the camera's alarm holds the outputs
    group.clear_alarm_source("camera")
    assert a.outputs[-1] == "clear" and len(alarms.got) == 4


def test_an_output_down_before_the_group_existed_is_alarmed_without_a_stop():
    a = Peer("mqtt")
    a._fail("cannot connect to broker")                # --allow-degraded: down at start
    alarms = Alarms()
    group = SinkGroup([a], on_sink_failure="stop", on_alarm=alarms)
    assert alarms.got == [("mqtt", "cannot connect to broker")] and not group.should_stop
    a._ok()
    a._fail("lost the broker")                         # a failure during the run does stop
    assert group.should_stop


def test_outbox_keys_are_checked():
    with pytest.raises(EdgeADError, match=r"outputs\[0\] \(mqtt\).*'outbox_mb' has a bad value 0"):
        parse_sink({"type": "mqtt", "host": "h", "outbox_mb": 0})
    with pytest.raises(EdgeADError, match="outbox_fsync_every"):
        parse_sink({"type": "webhook", "url": "http://h/x", "outbox_fsync_every": 0})
    assert parse_sink({"type": "webhook", "url": "http://h/x"}).outbox_mb == 64.0


# ---------------------------------------------------------------- outbox status / drop


def left_by_a_run(outbox_dir, name="mes", n=4):
    url = f"http://{LOOPBACK}:{free_port()}/hook"
    cfg = {"type": "webhook", "name": name, "url": url, "retries": 0, "backoff_ms": 10, "timeout_ms": 200}
    sink = build_sink(cfg, outbox_dir=outbox_dir)
    for i in range(n):
        sink.reject(event(i, event_id=f"r1-{i}"))
    sink.close()
    return cfg


def test_status_lists_what_waits_per_output(tmp_path):
    assert outbox_admin.status(tmp_path / "none") == []
    left_by_a_run(tmp_path, "mes", 4)
    left_by_a_run(tmp_path, "mqtt#2", 2)
    st = {s["output"]: s for s in outbox_admin.status(tmp_path)}
    assert {k: (v["pending"], v["oldest_id"], v["type"], v["in_use"]) for k, v in st.items()} == {
        "mes": (4, "r1-0", "webhook", False), "mqtt#2": (2, "r1-0", "webhook", False)}
    assert st["mes"]["bytes"] > 0 and st["mes"]["oldest_time"].endswith("Z")


def test_drop_deletes_the_pending_events_and_refuses_while_a_run_holds_them(tmp_path):
    left_by_a_run(tmp_path, "mes", 4)
    left_by_a_run(tmp_path, "plant", 3)
    with pytest.raises(EdgeADError, match="no outbox for an output named 'nope'") as err:
        outbox_admin.drop(tmp_path, "nope")
    assert "mes" in err.value.hint and "plant" in err.value.hint
    holder = Outbox(output_folder(tmp_path, "mes"), max_bytes=1 << 20, output="mes")
    try:
        with pytest.raises(EdgeADError, match="in use by another edgead process"):
            outbox_admin.drop(tmp_path, "mes")
        assert [s["in_use"] for s in outbox_admin.status(tmp_path)] == [True, False]
    finally:
        holder.close()
    assert outbox_admin.drop(tmp_path, "mes") == 4
    assert [(s["output"], s["pending"]) for s in outbox_admin.status(tmp_path)] == [("plant", 3)]
    assert outbox_admin.drop(tmp_path, None) == 3 and outbox_admin.status(tmp_path) == []


def test_a_new_owner_of_the_callbacks_hears_of_the_outputs_already_down():
    a, b = Peer("mqtt"), Peer("mes")
    a._fail("cannot connect to broker")
    first = Alarms()
    group = SinkGroup([a, b], on_alarm=first)
    b._fail("cannot connect to mes:80")
    loop = Alarms()
    group.set_callbacks(loop, loop.back)             # the run loop exists now: it gets both at once
    assert sorted(loop.got) == [("mes", "cannot connect to mes:80"), ("mqtt", "cannot connect to broker")]
    a._ok()
    assert loop.recovered == ["mqtt"] and first.recovered == []
    group.raise_alarm("edgead", "safe action")
    group.clear_alarm_outputs()                       # the run's board: nothing active
    assert group.active_alarms() == {} and a.outputs[-1] == "clear"


def test_the_outbox_cli_status_flush_and_drop(tmp_path, capsys, monkeypatch, http_peer):
    """`edgead outbox status|flush|drop`: exit 4 while events wait; flush delivers them to --config's outputs."""
    from edgead.cli import main

    left_by_a_run(tmp_path, "mes", 3)
    assert main(["outbox", "status", "--outbox-dir", str(tmp_path)]) == 4
    assert "mes" in capsys.readouterr().out
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(f"outbox_dir: {tmp_path}\noutputs:\n  - {{type: webhook, name: mes, url: {http_peer.url}}}\n")
    assert main(["outbox", "flush", "--config", str(run_yaml), "--timeout", "10"]) == 0
    assert "mes: 3 delivered, 0 left" in capsys.readouterr().out
    assert sorted(body["event_id"] for _, body, _ in http_peer.received) == ["r1-0", "r1-1", "r1-2"]
    left_by_a_run(tmp_path, "plant", 2)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["outbox", "drop", "--outbox-dir", str(tmp_path)]) == 1
    assert main(["outbox", "drop", "--outbox-dir", str(tmp_path), "--yes"]) == 0
    assert "dropped 2 events" in capsys.readouterr().out
    assert main(["outbox", "status", "--outbox-dir", str(tmp_path)]) == 0


def test_the_outbox_cli_reads_every_cameras_outbox_of_a_station(tmp_path, capsys, http_peer):
    """A station's run YAML (`cameras:`): each camera's outbox is its own sub-folder; status and flush name
    the camera, and --outbox-dir (one folder) is refused there."""
    from edgead.cli import main

    left_by_a_run(tmp_path / "top", "mes", 2)         # camera top's outbox: <outbox_dir>/top
    station = tmp_path / "station.yaml"
    station.write_text(f"engine: engines/e\ncalibration: c.yaml\noutbox_dir: {tmp_path}\n"
                       f"outputs:\n  - {{type: webhook, name: mes, url: {http_peer.url}}}\n"
                       "cameras:\n  - name: top\n  - name: side\n")
    assert main(["outbox", "status", "--config", str(station)]) == 4
    out = capsys.readouterr().out
    assert "[top] mes " in out and "2 pending" in out and "[side] no outbox: nothing waits" in out
    assert main(["outbox", "flush", "--config", str(station), "--timeout", "10"]) == 0
    assert "[top] mes: 2 delivered, 0 left" in capsys.readouterr().out
    assert main(["outbox", "status", "--config", str(station), "--outbox-dir", str(tmp_path)]) == 2
    assert "cameras:" in capsys.readouterr().err
