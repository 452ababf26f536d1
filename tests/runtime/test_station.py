"""Several cameras on one box (edgead.runtime.station): the `cameras:` YAML, the shared engine that
batches the cameras' parts together, per-camera fail-safe (a camera that stalls or fails rejects none
of the others' parts, a shared engine that fails gives every camera its safe action), one HTTP server
with every camera in /health, /metrics and /live.json, the memory budget, `edgead signals test` and
`edgead run` on a station config.

The cameras are list-backed fake sources and the engine the tiny ONNX model of test_runtime.py (its
fixtures are imported from there, so the session builds one engine for both modules).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from test_runtime import ListSource, RecordingSink, WrappedDetector, calibration, detector, engine, frames  # noqa: F401

from edgead.errors import EdgeADError
from edgead.runtime.shared_detector import SharedDetector
from edgead.runtime.station import run_station, station_status, worst_exit
from edgead.runtime.station_config import load_station_config, station_from_dict


def _base(engine, calibration, **extra) -> dict:
    return {"engine": str(engine), "calibration": str(calibration), **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


# ---------------------------------------------------------------- the YAML


def test_cameras_inherit_the_top_level_keys_and_get_their_own_folders(tmp_path):
    station = station_from_dict({
        "engine": "engines/washer", "calibration": "cal.yaml", "deadline_ms": 120, "record": str(tmp_path / "runs"),
        "camera": {"exposure_us": 800}, "outputs": [{"type": "log", "path": "rejects.jsonl"}],
        "http": 8080, "memory_budget_mb": 512,
        "cameras": [{"name": "left", "camera": "gige:10.0.0.1"},
                    {"name": "right", "camera": {"source": "gige:10.0.0.2", "exposure_us": 500}, "deadline_ms": 80,
                     "record": {"dir": str(tmp_path / "own"), "quota_mb": 10}, "outputs": []}]},
        overrides={"max_frames": 5})
    left, right = (c.cfg for c in station.cameras)
    assert [c.name for c in station.cameras] == ["left", "right"]
    assert (left.camera.source, left.camera.exposure_us, left.deadline_ms) == ("gige:10.0.0.1", 800, 120)
    assert (right.camera.source, right.camera.exposure_us, right.deadline_ms) == ("gige:10.0.0.2", 500, 80)
    assert left.record.dir == str(tmp_path / "runs" / "left") and right.record.dir == str(tmp_path / "own")
    assert right.record.quota_mb == 10 and left.outputs and not right.outputs
    assert Path(left.outbox_dir).name == "left" and Path(right.outbox_dir).name == "right"
    assert left.max_frames == right.max_frames == 5            # a flag applies to every camera
    assert station.http.listen == "8080" and station.memory_budget_mb == 512


@pytest.mark.parametrize("data, words", [
    ({"cameras": [{"name": "a"}, {"name": "b", "deadine_ms": 5}]}, ["camera 'b'", "deadine_ms"]),
    ({"cameras": [{"name": "a"}, {"name": "b", "camera": {"source": "0", "exposur_us": 5}}]}, ["camera 'b'", "exposur_us"]),
    ({"cameras": [{"name": "a", "outputs": [{"type": "gpio", "lin": 3}]}]}, ["camera 'a'", "lin"]),
    ({"cameras": [{"name": "a"}, {"name": "a"}]}, ["'a' is used twice"]),
    ({"cameras": [{"name": "a b"}]}, ["cameras[0]", "name"]),
    ({"cameras": [{"camera": "0"}]}, ["cameras[0]", "name"]),
    ({"cameras": []}, ["non-empty list"]),
    ({"cameras": [{"name": "a", "http": 8080}]}, ["camera 'a'", "http", "whole station"]),
    ({"cameras": [{"name": "a"}], "deadline_mss": 3}, ["deadline_mss"]),
    ({"cameras": [{"name": "a"}], "memory_budget_mb": 0}, ["memory_budget_mb"]),
    ({"cameras": [{"name": "a", "record": "r"}, {"name": "b", "record": "r"}]}, ["share the record folder"]),
])
def test_a_mistake_names_its_camera_and_key(data, words):
    with pytest.raises(EdgeADError) as e:
        station_from_dict({"engine": "e", "calibration": "c.yaml", **data})
    assert all(w in e.value.message for w in words), e.value.message
    assert e.value.hint


def test_camera_flag_is_refused_and_a_one_camera_loader_says_what_the_file_is(tmp_path):
    from edgead.runtime.config import load_run_config

    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump({"engine": "e", "calibration": "c.yaml", "cameras": [{"name": "a"}]}))
    with pytest.raises(EdgeADError, match="--camera"):
        load_station_config(str(path), {"camera": {"source": "0"}})
    with pytest.raises(EdgeADError, match="station"):
        load_run_config(path)


def test_station_status_and_exit_code():
    assert station_status(["ok", "ok"]) == "ok"
    assert station_status(["ok", "degraded"]) == "degraded"
    assert station_status(["ok", "stopped"]) == "alarm"        # one camera's parts are not inspected
    assert station_status(["stopped", "stopped"]) == "stopped"
    assert station_status(["starting", "starting"]) == "starting"
    assert worst_exit([0, 6, 4]) == 4 and worst_exit([0, 0]) == 0 and worst_exit([3, 5]) == 3


# ---------------------------------------------------------------- the shared engine


class FakeEngine:
    """Scores each row by its first value, after `delay_s`; records the batch sizes it was called with."""

    backend, precision, fingerprint, max_batch = "onnxruntime", "fp32", "fake", 8

    def __init__(self, delay_s: float = 0.02, fail: bool = False) -> None:
        self.delay_s, self.fail, self.sizes = delay_s, fail, []

    def infer(self, batch):
        self.sizes.append(len(batch))
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("CUDA error: device lost")
        return batch[:, 0, 0, 0].astype(np.float32), batch[:, 0]


def _call(client, value: float, rows: int, out: list) -> None:
    try:
        scores, maps = client.infer(np.full((rows, 1, 2, 2), value, np.float32))
        out.append((value, scores.tolist(), maps.shape))
    except Exception as e:
        out.append((value, e))


def test_the_shared_engine_batches_the_cameras_parts_and_hands_each_its_own_rows():
    fake = FakeEngine()
    shared = SharedDetector(fake, window_s=0.05)
    clients = [shared.client(n) for n in "abc"]
    try:
        for _ in range(3):
            got: list = []
            threads = [threading.Thread(target=_call, args=(c, float(i + 1), i + 1, got)) for i, c in enumerate(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(5)
            assert sorted((v, s) for v, s, _ in got) == [(1.0, [1.0]), (2.0, [2.0, 2.0]), (3.0, [3.0] * 3)]
        assert max(fake.sizes) == 6 and shared.batches < 9     # the three cameras' parts went in together
    finally:
        shared.close()


def test_one_camera_alone_never_waits_for_the_window_and_big_batches_split():
    fake = FakeEngine(delay_s=0.0)
    shared = SharedDetector(fake, window_s=1.0)
    client = shared.client("only")
    try:
        t0 = time.monotonic()
        for _ in range(5):
            client.infer(np.zeros((2, 1, 2, 2), np.float32))
        assert time.monotonic() - t0 < 0.5
        with pytest.raises(ValueError, match="max batch"):
            client.infer(np.zeros((9, 1, 2, 2), np.float32))
    finally:
        shared.close()


def test_the_engine_is_saturated_by_every_cameras_queue_together():
    """Free-running cameras skip frames while the shared engine has 2x its max batch waiting from all of them:
    overload drops frames at the cameras (counted "busy") instead of aging parts past their deadline."""
    shared = SharedDetector(FakeEngine(delay_s=0.3), window_s=0.0)
    try:
        a, b = shared.client("a"), shared.client("b")
        depth = {"a": 0, "b": 0}
        a.watch_queue(lambda: depth["a"])
        b.watch_queue(lambda: depth["b"])
        depth.update(a=7, b=8)
        assert shared.backlog() == 15 and not a.saturated()
        depth["b"] = 9                                   # 16 = 2 x max batch 8, the two queues together
        assert a.saturated() and b.saturated()
        depth.update(a=0, b=0)
        out: list = []
        t = threading.Thread(target=_call, args=(a, 1.0, 8, out))
        t.start()
        time.sleep(0.1)                                  # its 8 frames run on the engine now
        depth["b"] = 8
        assert shared.backlog() == 16 and b.saturated()
        t.join()
        depth["b"] = 0
        assert shared.backlog() == 0 and out[0][1] == [1.0] * 8
    finally:
        shared.close()


def test_an_engine_error_reaches_every_caller_of_its_batch():
    shared = SharedDetector(FakeEngine(fail=True), window_s=0.05)
    clients = [shared.client(n) for n in "ab"]
    try:
        got: list = []
        threads = [threading.Thread(target=_call, args=(c, 1.0, 1, got)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert len(got) == 2 and all(isinstance(r[1], RuntimeError) and "device lost" in str(r[1]) for r in got)
    finally:
        shared.close()


# ---------------------------------------------------------------- a station run


def _station(engine, calibration, names, **top):
    cams = [{"name": n, "camera": {"source": "fake", "live": True}} for n in names]
    return station_from_dict({**_base(engine, calibration), "deadline_ms": 250, **top, "cameras": cams})


def test_a_failing_camera_rejects_none_of_the_other_cameras_parts(engine, calibration, detector, frames):
    images, labels = frames
    n = 12
    good = ListSource(images[:n], period_s=0.03)
    # camera b: one frame comes 0.4 s late (past its deadline), then it is unplugged twice (two parts lost):
    # each of those three parts gets the safe action
    bad = ListSource(images[:n], period_s=0.03, stall={3: 0.4}, raise_at={6, 7})
    sinks = {"a": RecordingSink(), "b": RecordingSink()}
    logs: list[str] = []
    out: list[str] = []
    summary = run_station(_station(engine, calibration, "ab"), opener=lambda cfg: detector,
                          sources={"a": good, "b": bad}, sinks=sinks, out=out.append, log=logs.append)
    a, b = summary["cameras"]["a"], summary["cameras"]["b"]
    assert a["safe_actions"] == 0 and a["parts"] == n
    assert a["rejects"] == sum(labels[:n]) and a["passes"] == n - sum(labels[:n])
    assert a["latency_ms"]["p99"] < 250
    assert b["safe_actions_by_reason"] == {"deadline": 1, "frame_lost": 2} and b["camera_errors"] == 2
    assert [e.seq for e in sinks["a"].events if e.rejected] == [k for k in range(n) if labels[k]]
    assert all(e.extra["camera"] == "a" for e in sinks["a"].events)
    late = [e for e in sinks["b"].events if e.decision == "safe_reject"]
    assert [e.seq for e in late] == [3, 6, 7] and all(e.extra["camera"] == "b" for e in late)
    assert any(line.startswith("[b] ALARM: safe action (deadline)") for line in logs)
    assert summary["total"]["parts"] == a["parts"] + b["parts"] and summary["exit_code"] == 0
    assert any(line.startswith("[a] edgead run:") for line in out) and out[-1].startswith("station: 2 cameras")
    assert summary["engines"][0]["cameras"] == ["a", "b"]


def test_a_shared_engine_failure_gives_every_camera_its_safe_action(engine, calibration, detector, frames):
    images, _ = frames
    failing = WrappedDetector(detector, fail_calls={"all"})
    sources = {n: ListSource(images[:4], period_s=0.02) for n in "ab"}
    sinks = {n: RecordingSink() for n in "ab"}
    summary = run_station(_station(engine, calibration, "ab"), opener=lambda cfg: failing, sources=sources,
                          sinks=sinks, out=lambda s: None, log=lambda s: None)
    for n in "ab":
        s = summary["cameras"][n]
        assert s["parts"] == 4 and s["safe_actions_by_reason"] == {"engine_error": 4}, s
        assert all(e.decision == "safe_reject" and "device" not in e.reason and "CUDA" in e.reason
                   for e in sinks[n].events)


def _watch(url: str, result: dict, stop) -> None:
    """Read the server while the station runs, then stop the cameras."""
    try:
        deadline = time.monotonic() + 10
        health: dict = {}
        while time.monotonic() < deadline:
            try:
                health = json.loads(_get(url + "/health"))
            except urllib.error.URLError:     # the server is not up yet
                time.sleep(0.05)
                continue
            if all(c.get("parts", 0) >= 3 for c in health.get("cameras", {}).values()) and len(health["cameras"]) == 2:
                break
            time.sleep(0.05)
        result["health"] = health
        result["metrics"] = _get(url + "/metrics").decode()
        result["live_b"] = json.loads(_get(url + "/live.json?camera=b"))
        result["page"] = _get(url + "/?camera=b").decode()
        try:
            _get(url + "/live.json?camera=nope")
        except urllib.error.HTTPError as e:
            result["unknown"] = e.code
        req = urllib.request.Request(url + "/alarms/ack?camera=b", data=b"", method="POST")
        result["ack"] = json.loads(urllib.request.urlopen(req, timeout=5).read())
    finally:
        stop()


def test_health_metrics_and_live_view_show_every_camera(engine, calibration, detector, frames):
    images, _ = frames
    port = _free_port()
    sources = {n: ListSource(images, period_s=0.02, forever=True) for n in "ab"}
    result: dict = {}

    def stop() -> None:
        for s in sources.values():
            s.stop.set()

    watcher = threading.Thread(target=_watch, args=(f"http://127.0.0.1:{port}", result, stop))
    watcher.start()
    summary = run_station(_station(engine, calibration, "ab", http=f"127.0.0.1:{port}"), opener=lambda cfg: detector,
                          sources=sources, out=lambda s: None, log=lambda s: None)
    watcher.join(10)
    health = result["health"]
    assert health["status"] == "ok" and set(health["cameras"]) == {"a", "b"}
    assert all(c["camera"]["ok"] and "outputs" in c for c in health["cameras"].values())
    assert health["engines"][0]["cameras"] == ["a", "b"]
    families = {f.name: f for f in text_string_to_metric_families(result["metrics"])}
    parts = [s for s in families["edgead_parts"].samples if s.name == "edgead_parts_total"]
    assert {s.labels["camera"] for s in parts} == {"a", "b"}
    assert {s.labels["camera"] for s in families["edgead_info"].samples} == {"a", "b"}
    assert "edgead_engine_memory_bytes" in families and "process_cpu_seconds" in families
    live = result["live_b"]
    assert live["camera"] == "b" and [c["name"] for c in live["cameras"]] == ["a", "b"]
    assert all(r["url"].endswith("?camera=b") for r in live["rejects"] if r["url"])
    assert live["health"]["camera"]["name"] == "fake" and "cameras" in result["page"]
    assert result["unknown"] == 404 and result["ack"] == {"acked": []}
    assert summary["cameras"]["a"]["parts"] >= 3 and summary["cameras"]["b"]["parts"] >= 3


def test_memory_budget_refuses_to_start_with_a_clear_message(engine, calibration, detector, frames):
    onnx_mb = sum(p.stat().st_size for p in Path(engine).rglob("*.onnx")) / 1e6
    budget = max(1.0, onnx_mb / 2)
    if onnx_mb <= 1.0:
        pytest.skip("the tiny engine's ONNX files are under the smallest budget")   # pragma: no cover
    cfg = _station(engine, calibration, "ab", memory_budget_mb=budget)
    with pytest.raises(EdgeADError) as e:
        run_station(cfg, opener=lambda c: detector, sources={n: ListSource(frames[0][:2]) for n in "ab"},
                    out=lambda s: None, log=lambda s: None)
    assert "memory_budget_mb" in e.value.message and "tiny" in e.value.message and "not starting" in e.value.message
    logs: list[str] = []
    run_station(_station(engine, calibration, "ab", memory_budget_mb=10 * onnx_mb + 2000),
                opener=lambda c: detector, sources={n: ListSource(frames[0][:2]) for n in "ab"},
                out=lambda s: None, log=logs.append)
    assert any(line.startswith("engine tiny (onnxruntime/fp32) for cameras a, b: ONNX files") for line in logs)


# ---------------------------------------------------------------- the CLI


def _station_file(tmp_path: Path, engine, calibration, images) -> Path:
    from test_runtime import _folder_of

    cams = []
    for n in ("left", "right"):
        folder = _folder_of(images[:6], tmp_path / f"frames-{n}")
        cams.append({"name": n, "camera": str(folder),
                     "outputs": [{"type": "log", "path": str(tmp_path / f"{n}.jsonl")}]})
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump({**_base(engine, calibration), "record": str(tmp_path / "runs"),
                                    "outputs": [{"type": "log", "path": str(tmp_path / "shared.jsonl")}],
                                    "cameras": cams}))
    return path


def test_edgead_run_and_signals_test_take_a_station_config(tmp_path, engine, calibration, frames, capsys):
    from edgead.cli import main

    images, labels = frames
    path = _station_file(tmp_path, engine, calibration, images)
    assert main(["signals", "test", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "left/log" in printed and "right/log" in printed and "2 outputs: 2 OK" in printed
    assert main(["run", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "[left] edgead run: 6 frames, 6 parts" in printed and "station: 2 cameras, 12 parts" in printed
    for n in ("left", "right"):
        (record,) = (tmp_path / "runs" / n).iterdir()      # the camera's folder, a session folder in it
        events = [json.loads(line) for line in (record / "events.jsonl").read_text().splitlines()]
        assert len(events) == 6 and all(e["extra"]["camera"] == n for e in events)
        assert json.loads((record / "run.json").read_text())["station_camera"] == n
        logged = [json.loads(line) for line in (tmp_path / f"{n}.jsonl").read_text().splitlines()]
        assert logged[0]["test"] == "edgead signals test"          # the wiring check fired the camera's own output
        parts = logged[1:]
        assert [e["seq"] for e in parts if e["decision"] != "pass"] == [k for k in range(6) if labels[k]]
        assert all(e["extra"]["camera"] == n for e in parts)
    assert (tmp_path / "shared.jsonl").exists() is False          # inherited by neither: each has its own
