"""The recorder keeps the audit log first: whole lines only, images give way, every failure is an
alarm and counted, close() never raises; and the record folder is checked at start.

The full disk is tests/runtime/tiny_disk.py (a simulated file system: tmpfs needs root): its os.write
writes what fits, then raises ENOSPC, like a real disk filling up.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_disk import TinyDisk

import edgead.runtime.recorder as recorder_mod
from edgead.errors import EdgeADError
from edgead.preprocess import PreprocessSpec
from edgead.protocols import InspectionEvent
from edgead.runtime.config import RecordConfig
from edgead.runtime.recorder import IMAGE_ALARM, LOG_ALARM, Recorder
from edgead.runtime.telemetry import RunMetrics

KB = 1024


class Alarms:
    """The loop's side of the recorder's callbacks."""

    def __init__(self) -> None:
        self.raised: list[tuple[str, str]] = []
        self.cleared: list[str] = []

    def keys(self) -> set[str]:
        return {k for k, _ in self.raised}


def _event(seq: int, decision: str) -> InspectionEvent:
    return InspectionEvent(seq=seq, t_capture=time.monotonic(), wall_time="2024-01-01T00:00:00Z", decision=decision,
                           score=0.5, threshold=1.0, reason="", source="fake", event_id=f"run-{seq}")


def _recorder(root: Path, alarms: Alarms | None = None, **cfg) -> Recorder:
    metrics = RunMetrics()
    rec = Recorder(RecordConfig(dir=str(root), **cfg), PreprocessSpec(), (0.0, 1.0), metrics, log=lambda s: None)
    if alarms is not None:
        rec.on_alarm = lambda key, reason: alarms.raised.append((key, reason))
        rec.on_clear = alarms.cleared.append
    rec.start({"run": "test"})
    return rec


def _wait(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _lines(rec: Recorder) -> list[dict]:
    text = rec.events_path.read_text()
    assert text == "" or text.endswith("\n"), "a torn last line"
    return [json.loads(line) for line in text.splitlines()]   # every line parses: none is torn


def _feed(rec: Recorder, seqs: range, rng: np.random.Generator, every_reject: int = 3) -> None:
    """Parts with images, paced so the image queue never overflows (this is about space, not speed)."""
    for k in seqs:
        _wait(lambda: rec._jobs.qsize() < 4)
        image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)   # noise: ~12 KB as PNG
        decision = "reject" if k % every_reject == 0 else "pass"
        rec.record(k, _event(k, decision), image, np.zeros((8, 8), np.float32) if decision == "reject" else None)
        time.sleep(0.001)


@pytest.fixture
def small_limits(monkeypatch):
    monkeypatch.setattr(recorder_mod, "MIN_FREE_BYTES", 64 * KB)
    monkeypatch.setattr(recorder_mod, "LOG_RESERVE_BYTES", 24 * KB)


def test_a_filling_disk_evicts_images_and_keeps_every_event_line(tmp_path, monkeypatch, small_limits):
    root = tmp_path / "records"
    old = root / "20000101T000000Z" / "rejects"
    old.mkdir(parents=True)
    for i in range(8):  # an earlier run's images: the first to go
        (old / f"{i:08d}-raw.png").write_bytes(b"p" * 20 * KB)
        os.utime(old / f"{i:08d}-raw.png", (1000 + i, 1000 + i))
    disk = TinyDisk(root, 480 * KB, monkeypatch)
    alarms = Alarms()
    rec = _recorder(root, alarms, save_good_every=1, ring_size=0, queue=64)
    n = 300
    _feed(rec, range(n), np.random.default_rng(0))
    report = rec.close({"summary": {"parts": n}})

    lines = _lines(rec)
    assert [d["seq"] for d in lines] == list(range(n))                     # every part's line, in order
    assert report["events"] == {"written": n, "not_written": 0, "dropped": 0} and report["complete"]
    assert not list(old.iterdir())                                          # old images evicted first
    m, images = rec.metrics, report["images"]
    on_disk = {str(p.relative_to(rec.dir)) for p in rec.dir.rglob("*.png")}
    assert images["written"] == n * 4 // 3 + (1 if n % 3 else 0) and images["not_written"] == images["dropped"] == 0
    assert m.records_deleted.total() == 8 + images["written"] - len(on_disk) > 100   # this run's oldest went too
    assert alarms.raised == [] and disk.used() <= disk.capacity                      # nothing was lost: no alarm
    assert json.loads(rec.run_json.read_text())["record"]["events"]["written"] == n
    listed = {name for d in lines for name in d["images"]}
    assert on_disk <= listed and len(listed) == images["written"]           # no image without its line


def test_images_stop_before_the_log_runs_out_of_room(tmp_path, monkeypatch, small_limits):
    root = tmp_path / "records"
    disk = TinyDisk(root, 400 * KB, monkeypatch)
    alarms = Alarms()
    rec = _recorder(root, alarms, save_good_every=1, ring_size=0)
    disk.fill(leave=30 * KB)          # less than an image plus the log's reserve (24 KB), nothing to evict
    _feed(rec, range(30), np.random.default_rng(3))
    report = rec.close({})
    assert [d["seq"] for d in _lines(rec)] == list(range(30)) and report["events"]["written"] == 30
    assert report["images"]["written"] == 0 and report["images"]["dropped"] == 40   # 10 rejects x 2 + 20 good
    assert rec.metrics.records_dropped.value(kind="no_space") == 40
    assert IMAGE_ALARM in alarms.keys() and "nearly full" in dict(alarms.raised)[IMAGE_ALARM]


def test_a_full_disk_truncates_to_whole_lines_counts_and_alarms(tmp_path, monkeypatch, small_limits):
    root = tmp_path / "records"
    disk = TinyDisk(root, 400 * KB, monkeypatch)
    alarms = Alarms()
    rec = _recorder(root, alarms, save_rejects=False, ring_size=0)
    for k in range(50):
        rec.event(k, _event(k, "pass"))
    _wait(lambda: rec.report()["events"]["written"] == 50)
    size = len(rec.events_path.read_bytes()) // 50
    filler = disk.fill(leave=2 * size + size // 2)   # room for two lines, then a short write
    for k in range(50, 150):
        rec.event(k, _event(k, "pass"))
    _wait(lambda: sum(rec.report()["events"][k] for k in ("written", "not_written")) == 150)
    assert disk.short >= 1 and disk.refused >= 1

    lines = _lines(rec)                          # whole lines only: the short write was cut back
    r = rec.report()["events"]
    assert len(lines) == r["written"] and 50 < r["written"] < 150
    assert r["written"] + r["not_written"] + r["dropped"] == 150
    assert [d["seq"] for d in lines] == list(range(r["written"]))
    assert rec.metrics.record_write_errors.value(kind="event") == r["not_written"]
    assert LOG_ALARM in alarms.keys() and LOG_ALARM not in alarms.cleared

    filler.unlink()                              # the disk is writable again: the alarm clears
    for k in range(150, 160):
        rec.event(k, _event(k, "pass"))
    _wait(lambda: rec.report()["events"]["written"] == r["written"] + 10)
    assert alarms.cleared == [LOG_ALARM]

    disk.fill(leave=0)                           # full again at exit: close neither raises nor hangs
    for k in range(160, 170):
        rec.event(k, _event(k, "pass"))
    report = rec.close({"summary": {"parts": 170}})
    ev = report["events"]
    assert ev["written"] + ev["not_written"] + ev["dropped"] == 170 == len(_lines(rec)) + ev["not_written"]
    assert report["run_json_written"] is False and not report["complete"]
    assert "record_failure:run_json" in alarms.keys()
    assert json.loads(rec.run_json.read_text()) == {"run": "test"}          # the start's copy is intact
    assert rec.close({}) == report                                          # a second close is harmless


def test_a_failing_image_write_is_an_alarm_not_a_lost_line(tmp_path, monkeypatch):
    root = tmp_path / "records"
    alarms = Alarms()
    rec = _recorder(root, alarms, ring_size=0)
    real = recorder_mod.write_file_atomic

    def broken(path, data, fsync=False):
        if path.suffix == ".png":
            raise OSError(5, "Input/output error")
        return real(path, data, fsync)

    monkeypatch.setattr(recorder_mod, "write_file_atomic", broken)
    _feed(rec, range(6), np.random.default_rng(1), every_reject=2)
    _wait(lambda: rec.report()["images"]["not_written"] == 6)   # 3 rejects: raw + overlay each
    monkeypatch.setattr(recorder_mod, "write_file_atomic", real)
    _feed(rec, range(6, 8), np.random.default_rng(2), every_reject=2)
    report = rec.close({})
    assert len(_lines(rec)) == 8 and report["events"]["written"] == 8
    assert rec.metrics.record_write_errors.value(kind="image") == 6
    assert IMAGE_ALARM in alarms.keys() and "EIO" in dict(alarms.raised)[IMAGE_ALARM]
    assert alarms.cleared == [IMAGE_ALARM] and report["images"]["written"] == 2


def test_without_callbacks_a_failure_is_logged_as_an_alarm(tmp_path, monkeypatch, small_limits):
    root = tmp_path / "records"
    disk = TinyDisk(root, 300 * KB, monkeypatch)
    logs: list[str] = []
    rec = Recorder(RecordConfig(dir=str(root)), PreprocessSpec(), (0.0, 1.0), RunMetrics(), log=logs.append)
    rec.start({})
    disk.fill(leave=0)
    rec.event(0, _event(0, "pass"))
    report = rec.close({})
    assert report["events"]["not_written"] == 1
    assert any(line.startswith("ALARM: the event log") for line in logs)


def test_the_record_folder_is_checked_at_start(tmp_path, monkeypatch):
    spec, metrics = PreprocessSpec(), RunMetrics()

    def start(path: Path, **cfg) -> Recorder:
        return Recorder(RecordConfig(dir=str(path), **cfg), spec, (0.0, 1.0), metrics, log=lambda s: None)

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(EdgeADError) as e:
        start(afile)
    assert e.value.message == f"--record (record.dir) {afile} is a file, but an output folder is needed"
    assert e.value.hint == "give --record (record.dir) a folder (it is made if it does not exist), or move the file away"
    with pytest.raises(EdgeADError) as e:
        start(afile / "runs")
    assert e.value.message == f"--record (record.dir) {afile / 'runs'}: {afile} is a file, so nothing can be written under it"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.geteuid() == 0:   # root writes anywhere: the read-only mount is what access() reports then
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode))
        with pytest.raises(EdgeADError) as e:
            start(ro / "runs")
        assert e.value.message == (f"--record (record.dir) {ro / 'runs'} cannot be written: there is no permission "
                                   f"to write there ({ro})")
        assert e.value.hint == "choose a writable folder for --record (record.dir); check the mount and its permissions"
    finally:
        ro.chmod(0o755)
    assert not (ro / "runs").exists()

    root = tmp_path / "small"
    TinyDisk(root, 512 * KB, monkeypatch)
    with pytest.raises(EdgeADError, match=r"has only 0\.5 MB free; recording needs at least 1\.0 MB") as e:
        start(root, quota_mb=1)
    assert "record.quota_mb" in e.value.hint and list(root.iterdir()) == []   # no empty run folder left
    old = root / "20000101T000000Z"
    old.mkdir()
    (old / "a.png").write_bytes(b"p" * 300 * KB)   # old records make room when they can
    rec = start(root, quota_mb=0.25 + 0.001)
    assert not (old / "a.png").exists() and metrics.records_deleted.total() == 1
    rec.close({})
