"""`edgead run`: end to end through ONNX Runtime, the fail-safe rules under injected faults, the
recorder, the HTTP view, SIGTERM, and the run config.

The tiny model does not separate its synthetic test images, so good parts are its training images
and defective parts are the same images with a 56x56 block of noise (scores ~4 vs < 1); the
calibration threshold is put halfway between, and the fixture checks the separation first.
Fakes implement the protocols (a list-backed FrameSource, a recording sink, wrapped detectors).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from line_parts import good_and_defective

from edgead.errors import EdgeADError
from edgead.protocols import Frame, InspectionEvent, SinkHealth
from edgead.runtime.config import from_dict, load_run_config, parse_listen



# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return tiny_engine


@pytest.fixture(scope="module")
def detector(engine):
    from edgead.backends import load_detector

    return load_detector(engine, "onnxruntime", "fp32")


@pytest.fixture(scope="module")
def frames(tiny_product):
    """(RGB frames, labels): training images, every third one with a block of noise."""
    return good_and_defective(tiny_product / "train" / "good")


@pytest.fixture(scope="module")
def calibration(engine, detector, frames, tmp_path_factory):
    """A real calibration record (edgead.decide.calibrate), its threshold halfway between good and defect scores."""
    from edgead.decide.record import build_record, write_record
    from edgead.decide.scoring import Scored, engine_info
    from edgead.preprocess import preprocess

    spec, info = engine_info(engine, detector)
    images, labels = frames
    scores, _ = detector.infer(np.stack([preprocess(i, spec) for i in images]))
    good = scores[np.array(labels) == 0]
    bad = scores[np.array(labels) == 1]
    assert good.max() + 1.0 < bad.min(), "the test frames must separate for the accuracy checks to mean anything"
    fake_good = np.random.default_rng(0).normal(float(good.mean()), float(good.std()), 2000)
    record = build_record(Scored(fake_good, None, []), None, 0.01, "quantile", info, ("test", None), refits=5)
    record["threshold"] = float(good.max() + bad.min()) / 2
    path = tmp_path_factory.mktemp("calibration") / "tiny.yaml"
    write_record(record, path, fake_good)
    return path


def _write_video(path: Path, images: list[np.ndarray]) -> Path | None:
    h, w = images[0].shape[:2]
    for fourcc in ("FFV1", "png ", "MJPG"):  # lossless first
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (w, h))
        if not writer.isOpened():
            continue
        for img in images:
            writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        writer.release()
        if cv2.VideoCapture(str(path)).read()[0]:
            return path
    return None


# ---------------------------------------------------------------- fakes


def _frame(image: np.ndarray, seq: int, t: float | None = None) -> Frame:
    return Frame(image=image, seq=seq, t_capture=time.monotonic() if t is None else t,
                 wall_time=datetime.now(timezone.utc).isoformat(), source="fake")


class ListSource:
    """FrameSource over a list. stall: {index: seconds} delivered late (stamped before the stall);
    raise_at: indices whose read raises (the frame is lost); skip: indices the camera never delivers."""

    name = "fake"

    def __init__(self, images, *, live: bool = True, period_s: float = 0.0, stall=None, raise_at=(), skip=(),
                 forever: bool = False) -> None:
        self.images, self.live, self.period_s = list(images), live, period_s
        self.stall, self.raise_at, self.skip, self.forever = dict(stall or {}), set(raise_at), set(skip), forever
        self.i, self.finished, self.opens, self.closes = 0, False, 0, 0
        self.stop = threading.Event()

    def open(self) -> None:
        self.opens += 1

    def close(self) -> None:
        self.closes += 1

    def accounting(self) -> dict | None:
        return None    # like a live camera: losses show as seq gaps, not against a frame count

    def read(self, timeout_s: float) -> Frame | None:
        if self.stop.is_set() or (self.i >= len(self.images) and not self.forever):
            self.finished = True
            return None
        if self.period_s:
            time.sleep(self.period_s)
        k = self.i
        self.i += 1
        if k in self.raise_at:
            raise EdgeADError("camera unplugged", "plug it in")
        if k in self.skip:
            return None
        t = time.monotonic()
        if k in self.stall:
            time.sleep(self.stall[k])
        return _frame(self.images[k % len(self.images)], k, t)


class RecordingSink:
    name = "recording"

    def __init__(self, fail_on: set[int] = frozenset()) -> None:
        self.events: list[InspectionEvent] = []
        self.fail_on = fail_on

    def reject(self, event: InspectionEvent) -> None:
        self.events.append(event)
        if event.seq in self.fail_on:
            raise OSError("relay stuck")

    def health(self) -> SinkHealth:
        return SinkHealth(True)

    def close(self) -> None:
        pass


class WrappedDetector:
    """The real detector, slowed down or failing on chosen calls."""

    def __init__(self, inner, delay_s: float = 0.0, fail_calls=()) -> None:
        self.inner, self.delay_s, self.fail_calls, self.calls = inner, delay_s, set(fail_calls), 0
        self.backend, self.precision = inner.backend, inner.precision
        self.fingerprint, self.max_batch = inner.fingerprint, inner.max_batch

    def infer(self, batch):
        self.calls += 1
        if self.calls in self.fail_calls or "all" in self.fail_calls:
            raise RuntimeError("CUDA error: an illegal memory access")
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.inner.infer(batch)


def _run(engine, calibration, detector, source, sinks=None, logs=None, **cfg):
    from edgead.runtime.run import run

    config = from_dict({"engine": str(engine), "calibration": str(calibration),
                        "camera": {"source": "fake", "live": source.live}, **cfg})
    sink = sinks if sinks is not None else RecordingSink()
    out: list[str] = []
    summary = run(config, detector=detector, source=source, sinks=sink, out=out.append,
                  log=(logs.append if logs is not None else lambda s: None))
    return summary, sink, out


def _folder_of(images: list[np.ndarray], folder: Path) -> Path:
    """The frames as an image folder, named so that name order (the replay's order) is frame order."""
    folder.mkdir()
    for k, img in enumerate(images):
        cv2.imwrite(str(folder / f"part_{k:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return folder


def _lines(summary) -> list[dict]:
    path = Path(summary["record_dir"]) / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_every_part_once(summary, sink, n):
    assert summary["parts"] == n
    assert sorted(e.seq for e in sink.events) == list(range(n))


# ---------------------------------------------------------------- end to end


def test_video_file_end_to_end(engine, calibration, frames, tmp_path):
    from edgead.runtime.run import run

    images, labels = frames
    video = _write_video(tmp_path / "parts.avi", images)
    if video is None:
        pytest.skip("this OpenCV build writes no usable video codec")
    cfg = from_dict({"engine": str(engine), "calibration": str(calibration), "camera": str(video),
                     "deadline_ms": 5000, "record": {"dir": str(tmp_path / "runs"), "save_good_every": 4}})
    out: list[str] = []
    summary = run(cfg, out=out.append, log=lambda s: None)
    lines = _lines(summary)
    assert len(lines) == len(images) == summary["parts"] == summary["frames"]
    got = {d["seq"]: d["decision"] for d in lines}
    assert got == {k: ("reject" if y else "pass") for k, y in enumerate(labels)}
    assert all(set(d["latency_ms"]) >= {"read", "preprocess", "queue", "infer", "decide", "total"} for d in lines)
    assert summary["safe_actions"] == 0 and summary["exit_code"] == 0 and summary["stopped_by"] == "end of source"
    run_dir = Path(summary["record_dir"])
    for d in lines:
        for name in d["images"]:
            assert cv2.imread(str(run_dir / name)) is not None
    rejects = [d for d in lines if d["decision"] == "reject"]
    assert {n.rsplit("-", 1)[1] for d in rejects for n in d["images"]} == {"raw.png", "overlay.png"}
    assert len(list((run_dir / "good").glob("*.png"))) == (len(images) - len(rejects)) // 4
    assert json.loads((run_dir / "run.json").read_text())["summary"]["parts"] == len(images)
    assert out[0].startswith(f"edgead run: {len(images)} frames")


def test_image_folder_end_to_end_with_log_output(engine, calibration, frames, tmp_path):
    """The real capture (folder replay) and signals (log output) modules around the loop."""
    from edgead.runtime.run import run

    images, labels = frames
    folder = _folder_of(images, tmp_path / "parts")
    cfg = from_dict({"engine": str(engine), "calibration": str(calibration), "camera": str(folder),
                     "deadline_ms": 5000, "record": str(tmp_path / "runs"),
                     "outputs": [{"type": "log", "path": str(tmp_path / "out.jsonl")}]})
    summary = run(cfg, out=lambda s: None, log=lambda s: None)
    lines = _lines(summary)
    assert [d["decision"] for d in sorted(lines, key=lambda d: d["seq"])] == \
        ["reject" if y else "pass" for y in labels]
    logged = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(d["seq"] for d in logged if "seq" in d) == list(range(len(images)))


# ---------------------------------------------------------------- fault injection


def test_slow_engine_parts_get_the_safe_action_at_their_deadline(engine, calibration, detector, frames):
    images, _ = frames
    slow = WrappedDetector(detector, delay_s=0.4)
    summary, sink, _ = _run(engine, calibration, slow, ListSource(images[:6], period_s=0.03), deadline_ms=100)
    _check_every_part_once(summary, sink, 6)
    assert summary["safe_actions"] == 6 and summary["safe_actions_by_reason"] == {"deadline": 6}
    assert all(e.decision == "safe_reject" and e.reason == "deadline" for e in sink.events)
    # fired by the watchdog at the deadline, not when the engine finally answered (>= 400 ms: its delay)
    assert max(e.latency_ms["total"] for e in sink.events) < 400
    assert summary["late_decisions"] >= 1 and summary["alarms"] >= 6


def test_engine_that_raises(engine, calibration, detector, frames):
    images, _ = frames
    flaky = WrappedDetector(detector, fail_calls={1})
    summary, sink, _ = _run(engine, calibration, flaky, ListSource(images[:8], live=False), deadline_ms=5000,
                            max_batch=1)
    _check_every_part_once(summary, sink, 8)
    assert summary["safe_actions_by_reason"] == {"engine_error": 1}
    bad = [e for e in sink.events if e.decision == "safe_reject"]
    assert bad[0].seq == 0 and "illegal memory access" in bad[0].reason and bad[0].score is None
    assert summary["passes"] + summary["rejects"] == 7

    dead = WrappedDetector(detector, fail_calls={"all"})
    summary, sink, _ = _run(engine, calibration, dead, ListSource(images[:5], live=False), deadline_ms=5000)
    _check_every_part_once(summary, sink, 5)
    assert summary["safe_actions_by_reason"] == {"engine_error": 5}


def test_stalling_source(engine, calibration, detector, frames):
    """Frames delivered after their deadline are safe-rejected; frames the camera lost were parts too."""
    images, _ = frames
    # deadline 600 ms: an on-time frame meets it on a loaded 2-core box; a 1.2 s stall never does
    src = ListSource(images[:8], stall={2: 1.2, 3: 1.2}, skip={5, 6})
    summary, sink, _ = _run(engine, calibration, detector, src, deadline_ms=600)
    _check_every_part_once(summary, sink, 8)
    by_seq = {e.seq: e for e in sink.events}
    assert by_seq[2].reason == by_seq[3].reason == "deadline"
    assert by_seq[5].reason == by_seq[6].reason == "frame lost"
    assert summary["safe_actions_by_reason"] == {"deadline": 2, "frame_lost": 2}
    assert summary["frames_lost"] == 2 and summary["frames"] == 6


def test_source_that_raises_is_reopened(engine, calibration, detector, frames):
    images, _ = frames
    src = ListSource(images[:6], raise_at={3})
    summary, sink, _ = _run(engine, calibration, detector, src, deadline_ms=5000)
    _check_every_part_once(summary, sink, 6)
    assert {e.seq: e.reason for e in sink.events}[3] == "frame lost"
    assert summary["camera_errors"] == 1 and summary["reconnects"] == 1 and src.opens == 2
    assert summary["safe_actions_by_reason"] == {"frame_lost": 1}


def test_camera_lost_behind_reconnecting_source(engine, calibration, detector, frames):
    """The capture module's ReconnectingSource swallows the error: the loop alarms, counts the reconnect,
    and the frame lost meanwhile is still a part that gets the safe action."""
    from edgead.capture import Backoff, ReconnectingSource

    images, _ = frames
    src = ReconnectingSource(ListSource(images[:6], raise_at={3}), Backoff(initial_s=0.01))
    src.live = True  # type: ignore[attr-defined]
    logs: list[str] = []
    summary, sink, _ = _run(engine, calibration, detector, src, logs=logs, deadline_ms=5000)
    _check_every_part_once(summary, sink, 6)
    assert {e.seq: e.reason for e in sink.events}[3] == "frame lost"
    assert summary["reconnects"] == 1 and summary["camera_errors"] == 0
    assert any("ALARM: camera lost" in line for line in logs)
    # the camera came back: its alarm cleared itself; it stays counted since the start
    assert summary["alarm_counts"]["camera_lost"] == 1 and "camera_lost" not in summary["alarms_active"]
    assert logs.index(next(x for x in logs if "ALARM: camera lost" in x)) < logs.index("alarm cleared: camera_lost")


def test_replay_that_raises_stops_with_its_error(engine, calibration, detector, frames):
    images, _ = frames
    with pytest.raises(EdgeADError, match="camera unplugged"):
        _run(engine, calibration, detector, ListSource(images[:6], live=False, raise_at={2}), deadline_ms=5000)


def test_full_queue_trigger_rejects_free_running_skips(engine, calibration, detector, frames):
    images, _ = frames
    n = 40
    slow = WrappedDetector(detector, delay_s=0.05)
    summary, sink, _ = _run(engine, calibration, slow, ListSource([images[0]] * n), deadline_ms=5000, max_batch=1)
    _check_every_part_once(summary, sink, n)
    assert summary["safe_actions_by_reason"].get("queue_full", 0) >= 10
    assert summary["passes"] + summary["safe_actions"] == n

    summary, sink, _ = _run(engine, calibration, slow, ListSource([images[0]] * n), deadline_ms=5000, max_batch=1,
                            every_nth=2)
    assert summary["safe_actions"] == 0 and summary["frames"] == n
    skipped = summary["frames_skipped"]
    assert skipped["not_nth"] == n // 2 and skipped.get("busy", 0) >= 5
    assert summary["parts"] == n // 2 - skipped["busy"] == len(sink.events)


def test_sink_that_raises_is_counted_and_the_run_goes_on(engine, calibration, detector, frames):
    images, _ = frames
    sink = RecordingSink(fail_on={1})
    summary, _, _ = _run(engine, calibration, detector, ListSource(images[:4], live=False), sinks=sink,
                         deadline_ms=5000)
    assert summary["parts"] == 4 and summary["sink_errors"] == 1 and summary["alarms"] == 1


def test_safe_action_stop_ends_the_run(engine, calibration, detector, frames):
    images, _ = frames
    summary, sink, _ = _run(engine, calibration, WrappedDetector(detector, fail_calls={"all"}),
                            ListSource(images, live=False, period_s=0.02), deadline_ms=5000, safe_action="stop",
                            max_batch=1)
    assert summary["exit_code"] == 3 and summary["stopped_by"].startswith("safe action: engine error")
    assert 1 <= summary["parts"] < len(images) and summary["parts"] == summary["safe_actions"] == len(sink.events)


def test_slow_disk_drops_records_not_parts(engine, calibration, detector, frames, tmp_path, monkeypatch):
    from edgead.runtime.recorder import Recorder

    real = Recorder._write
    monkeypatch.setattr(Recorder, "_write", lambda self, name, data: (time.sleep(0.15), real(self, name, data)))
    images, labels = frames
    summary, sink, _ = _run(engine, calibration, detector, ListSource(images, period_s=0.005), deadline_ms=5000,
                            record={"dir": str(tmp_path / "runs"), "queue": 1, "ring_size": 0})
    _check_every_part_once(summary, sink, len(images))
    assert summary["safe_actions"] == 0 and summary["rejects"] == sum(labels)
    assert summary["records_dropped"].get("reject_image", 0) >= 1
    assert len(_lines(summary)) == len(images)  # event lines have their own buffer


def test_full_disk_during_a_run_keeps_whole_lines_alarms_and_prints_the_summary(engine, calibration, detector, frames,
                                                                                tmp_path, monkeypatch):
    """The disk under the record folder fills up mid-run (tests/runtime/tiny_disk.py: no tmpfs without root)."""
    import edgead.runtime.recorder as recorder_mod
    from tiny_disk import TinyDisk

    monkeypatch.setattr(recorder_mod, "MIN_FREE_BYTES", 64 * 1024)
    monkeypatch.setattr(recorder_mod, "LOG_RESERVE_BYTES", 16 * 1024)
    reports: list[dict] = []
    real_close = recorder_mod.Recorder.close
    monkeypatch.setattr(recorder_mod.Recorder, "close",
                        lambda self, info: reports.append(real_close(self, info)) or reports[-1])
    disk = TinyDisk(tmp_path / "runs", 256 * 1024, monkeypatch)
    images, _ = frames

    class FillingSource(ListSource):
        def read(self, timeout_s):
            if self.i == 12:  # once 8 lines are on disk, another program takes the disk: a few more fit
                end = time.monotonic() + 10
                while sum(len(p.read_bytes().splitlines()) for p in (tmp_path / "runs").glob("*/events.jsonl")) < 8:
                    assert time.monotonic() < end
                    time.sleep(0.01)
                disk.fill(leave=1000)
            return super().read(timeout_s)

    logs: list[str] = []
    n = 3 * len(images)
    summary, sink, out = _run(engine, calibration, detector, FillingSource(images * 3, live=False), logs=logs,
                              deadline_ms=5000, record={"dir": str(tmp_path / "runs"), "ring_size": 0,
                                                                 "save_rejects": False})   # no image to evict
    _check_every_part_once(summary, sink, n)
    assert out and out[0].startswith(f"edgead run: {n} frames") and not any("Traceback" in x for x in logs)
    report = reports[0]
    assert all(r == report for r in reports)    # closed once; a later close() only reports again
    text = (Path(summary["record_dir"]) / "events.jsonl").read_text()
    lines = [json.loads(x) for x in text.splitlines()]          # whole lines only
    assert text.endswith("\n") and 8 <= len(lines) < n and disk.refused >= 1
    assert [d["seq"] for d in lines] == list(range(len(lines)))
    ev = report["events"]
    assert ev["written"] == len(lines) and ev["written"] + ev["not_written"] + ev["dropped"] == n
    assert summary["alarm_counts"].get("record_failure:events", 0) >= 1
    assert any(x.startswith("ALARM: the event log") for x in logs)
    assert report["run_json_written"] is False and not report["complete"]


def test_quota_deletes_oldest_first(tmp_path):
    from edgead.runtime.recorder import Quota

    keep = tmp_path / "events.jsonl"
    keep.write_bytes(b"x" * 100)
    files = []
    for i in range(5):
        p = tmp_path / "old" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"y" * 100)
        os.utime(p, (1000 + i, 1000 + i))
        files.append(p)
    os.utime(keep, (900, 900))
    q = Quota(tmp_path, 350, {keep})
    assert q.total == 600 and q.enforce() == 3
    assert keep.exists() and [p.exists() for p in files] == [False, False, False, True, True]


# ---------------------------------------------------------------- HTTP, metrics, SIGTERM


def _get(url: str, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def calibration_threshold(path) -> float:
    import yaml

    return float(yaml.safe_load(Path(path).read_text())["threshold"])


def _samples(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {name{labels}: value}, parsed by prometheus_client's own parser;
    labels sorted by name with `le` last, so keys read as the metrics are written."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            items = sorted(sample.labels.items(), key=lambda kv: (kv[0] == "le", kv[0]))
            labels = ",".join(f'{k}="{v}"' for k, v in items)
            out[sample.name + (f"{{{labels}}}" if labels else "")] = float(sample.value)
    return out


def test_http_endpoints(engine, calibration, detector, frames):
    images, _ = frames
    src = ListSource(images, period_s=0.02, forever=True)
    logs: list[str] = []
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(s=_run(engine, calibration, detector, src, logs=logs,
                                                             deadline_ms=5000, http="127.0.0.1:0")[0]))
    t.start()
    try:
        deadline = time.monotonic() + 20
        while not any("live view on" in s for s in logs) or src.i < 5:
            assert time.monotonic() < deadline and t.is_alive()
            time.sleep(0.05)
        base = next(s for s in logs if "live view on" in s).split()[3].rstrip("/")
        code, _, body = _get(base + "/health")
        health = json.loads(body)
        # nothing in this run raises an alarm (healthy sink, 5 s deadline): anything but "ok" is a bug
        assert code == 200 and health["status"] == "ok" and health["last_alarm"] is None
        assert health["parts"] >= 5 and health["safe_actions"] == 0 and health["camera"]["name"] == "fake"
        code, _, body = _get(base + "/metrics")
        assert code == 200
        samples = _samples(body.decode())
        for name in ("edgead_frames_total", 'edgead_latency_seconds_bucket{stage="total",le="0.001"}',
                     'edgead_queue_depth{queue="infer"}', "edgead_camera_reconnects_total"):
            assert name in samples, name
        # values, read after /health: counters only grow, and every part so far passed or was rejected
        parts = {k: v for k, v in samples.items() if k.startswith("edgead_parts_total{")}
        # every decision is there from the start (rate() works before the first reject); none was a safe action
        assert set(parts) == {f'edgead_parts_total{{decision="{d}"}}' for d in ("pass", "reject", "safe_reject")}
        assert parts['edgead_parts_total{decision="safe_reject"}'] == 0
        info = next(k for k in samples if k.startswith("edgead_info{"))
        assert f'threshold="{calibration_threshold(calibration):.6g}"' in info and 'backend="onnxruntime"' in info
        assert samples["edgead_threshold"] == pytest.approx(calibration_threshold(calibration))
        assert samples["edgead_score_count"] >= health["parts"] and "process_cpu_seconds_total" in samples
        assert samples["edgead_camera_up"] == 1 and samples["edgead_camera_fps"] > 0
        cam = health["camera"]
        assert cam["ok"] and cam["frames"] >= 5 and cam["fps"] > 0 and cam["frames_lost"] == 0 and cam["reconnects"] == 0
        assert sum(parts.values()) >= health["parts"] and samples["edgead_frames_total"] >= sum(parts.values())
        assert sum(v for k, v in samples.items() if k.startswith("edgead_safe_actions_total")) == 0
        assert samples["edgead_camera_reconnects_total"] == 0
        buckets = [v for k, v in samples.items() if k.startswith('edgead_latency_seconds_bucket{stage="total"')]
        assert buckets == sorted(buckets) and buckets[-1] == samples['edgead_latency_seconds_count{stage="total"}']
        assert buckets[-1] >= health["parts"]
        with urllib.request.urlopen(base + "/stream", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            head = r.read(200)
            assert b"Content-Type: image/jpeg" in head
            body = head + r.read(4000)
        jpeg = body[body.index(b"\r\n\r\n") + 4:]
        assert jpeg[:2] == b"\xff\xd8"
        img = cv2.imdecode(np.frombuffer(_get(base + "/frame.jpg")[2], np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] >= 64
        assert _get(base + "/nope")[0] == 404
    finally:
        src.stop.set()
        t.join(20)
    assert result["s"]["parts"] == result["s"]["frames"]


def _live_loop(engine, calibration, detector, source, logs):
    """A Loop and its HTTP view wired the way edgead.runtime.run wires them (health, metrics, ack)."""
    from edgead.backends.manifest import engine_preprocessing
    from edgead.decide.record import decide, load_calibration
    from edgead.runtime.http import HttpView, LiveView
    from edgead.runtime.loop import Loop, LoopOptions
    from edgead.runtime.telemetry import RunMetrics

    spec, metrics, cleared = engine_preprocessing(engine), RunMetrics(), []
    loop = Loop(source=source, detector=detector, calibration=load_calibration(calibration, detector), spec=spec,
                decide=decide, options=LoopOptions(deadline_s=5.0, max_batch=1, run_id="t"), metrics=metrics,
                log=logs.append, on_clear=lambda: cleared.append(1))
    view = HttpView("127.0.0.1", 0, LiveView(spec, (0.0, 1.0)), loop.health, metrics.render, ack=loop.ack_alarms)
    return loop, view, metrics, cleared


def test_health_lists_active_alarms_until_acknowledged(engine, calibration, detector, frames):
    from edgead.runtime.http import ack_alarms

    images, _ = frames
    src = ListSource(images, period_s=0.02, forever=True)
    logs: list[str] = []
    loop, view, metrics, cleared = _live_loop(engine, calibration, WrappedDetector(detector, fail_calls={2}), src,
                                              logs)
    view.start()
    t = threading.Thread(target=loop.run)
    t.start()
    try:
        base = "http://%s:%d" % view.address
        deadline = time.monotonic() + 20
        while json.loads(_get(base + "/health")[2])["status"] != "alarm":
            assert time.monotonic() < deadline and t.is_alive()
            time.sleep(0.02)
        health = json.loads(_get(base + "/health")[2])
        assert [a["key"] for a in health["alarms"]] == ["safe_action_engine_error"]
        assert health["alarms"][0]["kind"] == "event" and health["alarm_counts"] == {"safe_action_engine_error": 1}
        assert health["last_alarm"]["reason"].startswith("safe action (engine error")
        assert _samples(_get(base + "/metrics")[2].decode())["edgead_alarms_active"] == 1
        assert ack_alarms(base) == ["safe_action_engine_error"]
        health = json.loads(_get(base + "/health")[2])
        assert health["status"] == "ok" and health["alarms"] == []
        assert health["alarm_counts"] == {"safe_action_engine_error": 1} and health["safe_actions"] == 1
        samples = _samples(_get(base + "/metrics")[2].decode())
        assert samples["edgead_alarms_active"] == 0
        assert samples['edgead_alarms_total{reason="safe_action_engine_error"}'] == 1
        assert cleared == [1] and "alarm acknowledged: safe_action_engine_error" in logs
    finally:
        loop.request_stop("test")
        t.join(20)
        view.stop()


def test_output_and_record_alarms_clear_when_the_condition_does(engine, calibration, detector, frames):
    logs: list[str] = []
    loop, _, metrics, cleared = _live_loop(engine, calibration, detector, ListSource(frames[0][:1]), logs)
    loop.output_failed("plc", "no answer from 10.0.0.5:502")
    loop.output_failed("plc", "no answer from 10.0.0.5:502")
    loop.output_failed("mqtt", "broker gone")
    assert loop.health()["status"] == "alarm"
    assert [a["key"] for a in loop.health()["alarms"]] == ["output_failure:plc", "output_failure:mqtt"]
    loop.output_recovered("plc")
    assert [a["key"] for a in loop.health()["alarms"]] == ["output_failure:mqtt"] and cleared == []
    loop.output_recovered("mqtt")
    loop.output_recovered("mqtt")             # a second recovery report changes nothing
    h = loop.health()
    assert h["status"] == "ok" and cleared == [1]
    assert h["alarm_counts"] == {"output_failure:mqtt": 1, "output_failure:plc": 2}
    assert metrics.alarms.value(reason="output_failure:plc") == 2 and metrics.sink_errors.total() == 3
    loop._record_failed("record_failure:events", "the event log failed (ENOSPC)")   # the recorder's callback
    assert loop.health()["status"] == "alarm"
    loop.clear_alarm("record_failure:events")
    assert loop.health()["status"] == "ok" and cleared == [1, 1]


def test_run_json_never_holds_a_secret(engine, calibration, detector, frames, tmp_path, monkeypatch):
    from signals_fixtures import free_port

    secrets = ["mqtt-pass-8d1f", "hook-token-77a2", "url-pass-5c3e", "0123456789abcdef-http"]
    outputs = [{"type": "mqtt", "host": "127.0.0.1", "port": free_port(), "username": "line1",
                "password": secrets[0]},
               {"type": "mqtt", "name": "mqtt2", "host": "127.0.0.1", "port": free_port(), "password_env": "EDGEAD_PW"},
               {"type": "webhook", "url": f"http://mes:{secrets[2]}@127.0.0.1:{free_port()}/e"},
               {"type": "webhook", "name": "hook2", "url": f"http://127.0.0.1:{free_port()}/e", "token": secrets[1]}]
    logs: list[str] = []
    summary, _, out = _run(engine, calibration, detector, ListSource(frames[0][:3], live=False), logs=logs,
                           deadline_ms=5000, outputs=outputs, allow_degraded=True,
                           http={"listen": "127.0.0.1:0", "token": secrets[3]}, record=str(tmp_path / "runs"))
    assert summary["parts"] == 3
    text = (Path(summary["record_dir"]) / "run.json").read_text()
    for secret in secrets:
        assert secret not in text and not any(secret in line for line in logs + out), secret
    config = json.loads(text)["config"]
    assert config["outputs"][0]["password"] == "***" and config["outputs"][0]["username"] == "line1"
    assert config["outputs"][1]["password_env"] == "EDGEAD_PW"            # the name of a variable stays
    assert config["outputs"][2]["url"].startswith("http://mes:***@") and config["outputs"][3]["token"] == "***"
    assert config["http"]["token"] == "***"


def test_metrics_text_format():
    from edgead.runtime.telemetry import RunMetrics

    m = RunMetrics()
    m.parts.inc(decision="pass")
    m.parts.inc(2, decision="safe_reject")
    m.safe_actions.inc(2, reason="deadline")
    for v in (0.0005, 0.003, 0.2):
        m.latency.observe(v, stage="total")
    text = m.render()
    assert '# TYPE edgead_parts_total counter' in text
    samples = _samples(text)
    assert samples['edgead_parts_total{decision="safe_reject"}'] == 2
    assert samples['edgead_parts_total{decision="reject"}'] == 0          # present before the first reject
    assert samples['edgead_latency_seconds_bucket{stage="total",le="0.001"}'] == 1
    assert samples['edgead_latency_seconds_bucket{stage="total",le="+Inf"}'] == 3
    assert samples['edgead_latency_seconds_count{stage="total"}'] == 3
    assert m.latency.percentiles([50], stage="total") == [0.003]


def test_sigterm_leaves_complete_logs(engine, calibration, frames, tmp_path):
    images, _ = frames
    folder = _folder_of(images[:4], tmp_path / "parts")
    (tmp_path / "run.yaml").write_text(f"camera:\n  source: {folder}\n  frame_rate: 8\n  loop: true\n"
                                       "deadline_ms: 5000\n")
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "edgead.cli", "run", "--engine", str(engine), "--calibration",
                             str(calibration), "--config", str(tmp_path / "run.yaml"), "--record", str(runs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            logs = list(runs.glob("*/events.jsonl"))
            if logs and len(logs[0].read_text().splitlines()) >= 3:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM" in err and "edgead run:" in out and "stopped by signal SIGTERM" in out
    text = logs[0].read_text()
    assert text.endswith("\n")
    lines = [json.loads(x) for x in text.splitlines()]
    summary = json.loads((logs[0].parent / "run.json").read_text())["summary"]
    assert len(lines) == summary["parts"] == summary["frames"] >= 3
    assert [d["seq"] for d in lines] == list(range(len(lines)))


# ---------------------------------------------------------------- config, ROI, edge path


def test_run_config_keys_and_values(tmp_path):
    cfg = from_dict({"engine": "e", "calibration": "c", "camera": 0, "record": "runs/x", "http": 8080,
                     "every_nth": 3, "roi": [1, 2, 30, 40]})
    assert cfg.camera.source == "0" and cfg.record.dir == "runs/x" and cfg.http.listen == "8080"
    assert not cfg.trigger_mode and cfg.nth == 3 and cfg.roi == (1, 2, 30, 40)
    assert from_dict({}).trigger_mode and from_dict({}).threads is None and from_dict({"threads": 1}).threads == 1
    for bad, match in (({"deadline": 5}, "unknown key 'deadline'"),
                       ({"record": {"dir": "x", "quota": 5}}, "unknown key 'record.quota'"),
                       ({"camera": {"source": "0", "exposure": 5}}, "unknown key 'camera.exposure'"),
                       ({"deadline_ms": "fast"}, "'deadline_ms' has a bad value"),
                       ({"safe_action": "pass"}, "'safe_action' has a bad value"),
                       ({"threads": 0}, "'threads' has a bad value"),
                       ({"trigger": True, "every_nth": 2}, "both set"),
                       ({"roi": [0, 0, 10]}, "'roi'"),
                       ({"http": "localhost:http"}, "'http.listen'"),
                       ({"outputs": [{"type": "log", "pth": "x"}]}, "pth")):
        with pytest.raises(EdgeADError, match=match):
            from_dict(bad)
    path = tmp_path / "run.yaml"
    path.write_text("engine: a\ncamera:\n  source: clip.mp4\n  frame_rate: 5\nrecord:\n  dir: r\n")
    cfg = load_run_config(path, {"engine": "b", "camera": {"source": "0"}, "record": {"quota_mb": 10}})
    assert (cfg.engine, cfg.camera.source, cfg.camera.settings, cfg.record.dir, cfg.record.quota_mb) == \
        ("b", "0", {"frame_rate": 5}, "r", 10)
    with pytest.raises(EdgeADError, match="run needs --camera"):
        from_dict({"engine": "e", "calibration": "c"}).require()
    assert parse_listen("8080") == ("127.0.0.1", 8080) and parse_listen("0.0.0.0:1") == ("0.0.0.0", 1)


def test_roi_rule():
    from edgead.preprocess import PreprocessSpec
    from edgead.runtime.run import check_roi

    spec = PreprocessSpec(roi=(10, 10, 50, 40))
    assert check_roi(spec, None) == (spec, None) and check_roi(spec, (10, 10, 50, 40)) == (spec, None)
    moved, warning = check_roi(spec, (14, 8, 50, 40))
    assert moved.roi == (14, 8, 50, 40) and warning.startswith("WARNING")
    with pytest.raises(EdgeADError, match="differs from the engine's ROI"):
        check_roi(spec, (10, 10, 60, 40))
    with pytest.raises(EdgeADError, match="sees whole"):
        check_roi(PreprocessSpec(), (0, 0, 50, 50))


def test_startup_errors_are_one_clear_line(engine, calibration, tmp_path, capsys):
    from edgead.cli import main

    assert main(["run", "--engine", str(engine), "--calibration", str(calibration), "--camera",
                 str(tmp_path / "missing")]) == 2
    assert "error: camera spec" in capsys.readouterr().err
    other = tmp_path / "other.yaml"     # a genuine record, of another engine (its digest matches)
    import yaml

    from edgead.decide.integrity import record_digest

    rec = yaml.safe_load(calibration.read_text())
    rec["engine"]["fingerprint"] = "0" + rec["engine"]["fingerprint"]
    rec["digest"] = record_digest(rec)
    other.write_text(yaml.safe_dump(rec, sort_keys=False))
    assert main(["run", "--engine", str(engine), "--calibration", str(other), "--camera", str(tmp_path)]) == 2
    assert "made with another engine" in capsys.readouterr().err


def test_edge_path_imports_no_torch():
    code = ("import sys, edgead.runtime.run, edgead.runtime.http, edgead.runtime.recorder, edgead.cli; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_threads_option_reaches_onnx_runtime_and_changes_no_number(engine, detector, frames):
    from edgead.backends import load_detector
    from edgead.preprocess import PreprocessSpec, preprocess

    spec = PreprocessSpec.from_dict(json.loads((engine / "manifest.json").read_text())["preprocess"])
    x = np.stack([preprocess(f, spec) for f in frames[0][:4]])
    one = load_detector(engine, "onnxruntime", "fp32", threads=1)
    assert one.teacher.get_session_options().intra_op_num_threads == 1
    np.testing.assert_allclose(one.infer(x)[0], detector.infer(x)[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- flags through the CLI


def test_threads_flag_reaches_the_engine_and_the_run_record(engine, calibration, frames, tmp_path, monkeypatch,
                                                           capsys):
    import edgead.backends as backends
    from edgead.cli import main

    opened = []
    real = backends.load_detector

    def spy(*args, **kwargs):
        opened.append(real(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(backends, "load_detector", spy)      # run imports it from there when it starts
    folder = _folder_of(frames[0][:4], tmp_path / "parts")
    assert main(["run", "--engine", str(engine), "--calibration", str(calibration), "--camera", str(folder),
                 "--threads", "1", "--deadline-ms", "5000", "--record", str(tmp_path / "runs")]) == 0
    capsys.readouterr()
    det, = opened
    assert det.teacher.get_session_options().intra_op_num_threads == 1
    assert det.student.get_session_options().intra_op_num_threads == 1
    run_json, = (tmp_path / "runs").glob("*/run.json")
    record = json.loads(run_json.read_text())
    assert record["config"]["threads"] == 1 and record["summary"]["parts"] == 4


def test_allow_degraded_starts_with_an_unreachable_output(engine, calibration, frames, tmp_path, capsys):
    from signals_fixtures import free_port

    from edgead.cli import main

    folder = _folder_of(frames[0][:4], tmp_path / "parts")
    (tmp_path / "run.yaml").write_text(f"outputs:\n  - type: modbus\n    host: 127.0.0.1\n    port: {free_port()}\n"
                                       "    coil: 3\n")
    args = ["run", "--engine", str(engine), "--calibration", str(calibration), "--camera", str(folder),
            "--config", str(tmp_path / "run.yaml"), "--deadline-ms", "5000", "--record", str(tmp_path / "runs")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "output 'modbus' is unreachable" in err and "--allow-degraded" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/events.jsonl"))
    assert main([*args, "--allow-degraded"]) == 4          # the reject it could not kick is reported
    captured = capsys.readouterr()
    assert "running degraded: output 'modbus' is unreachable: cannot connect to 127.0.0.1:" in captured.err
    assert "NOT DELIVERED: 1 rejects not kicked by output modbus (" in captured.out
    assert captured.out.rstrip().splitlines()[-1].startswith("  records: "), captured.out   # the summary is last
    run_json, = (tmp_path / "runs").glob("*/run.json")
    record = json.loads(run_json.read_text())
    assert record["config"]["allow_degraded"] is True and record["summary"]["parts"] == 4
    assert "edgead run: 4 frames, 4 parts" in captured.out
