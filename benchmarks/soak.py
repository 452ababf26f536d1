"""Soak: `edgead run` for N minutes at line rate, every output on a loopback peer, faults on a schedule.

    python benchmarks/soak.py --minutes 30 --out bench-out/soak        # the figure in docs/benchmarks.md
    python benchmarks/soak.py --minutes 3 --period 1 --out bench-out/soak-short

The tests' tiny synthetic model (64x64, built here) inspects a replayed clip looped at --fps, with
four outputs at once: MQTT (Debian's mosquitto), a webhook (a loopback HTTP server), Modbus TCP (a
pymodbus server) and the JSON log, recording to a record folder. Every --period minutes, in turn:
- the broker is stopped for 20 s, then started again;
- the webhook answers 503 for 30 s;
- the camera stalls for 2 s (no frame; stall_alarm_s is 1 s);
- a disk-full episode: the record folder is a small tmpfs (when this user can mount one) filled to
  the last byte for 20 s, then emptied again; without a mount the episode is skipped and said so.

Reported (results.json, table.md): resident memory slope (MB/hour, least squares after a warm-up),
open file descriptors and threads (first, last, max), events produced / delivered (by id, counted by
independent receivers: an MQTT subscriber, the HTTP server) / reported undelivered per output,
parts uninspected (frames read minus parts decided, safe actions included), and the p99 latency of
the first and the last --window minutes. Targets: 0 parts uninspected, 0 events unaccounted for,
RSS slope under 5 MB/hour, p99 drift under 10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loop import calibration, tiny_model, write_video  # noqa: E402
from signals_fixtures import Broker, HttpPeer, ModbusPeer, Subscriber, free_port, mosquitto_binary  # noqa: E402

from edgead.backends import load_detector  # noqa: E402
from edgead.capture import open_source  # noqa: E402
from edgead.data.images import list_images, read_image  # noqa: E402
from edgead.export.build import build_engine  # noqa: E402
from edgead.protocols import Frame  # noqa: E402
from edgead.runtime.config import from_dict  # noqa: E402
from edgead.runtime.run import run  # noqa: E402


class StallingSource:
    """The replayed clip as a live camera that stalls on request (no frame while `stall_until` is ahead)."""

    live = True
    finished = False

    def __init__(self, inner: Any) -> None:
        self.inner, self.name = inner, "soak-camera"
        self.stall_until = 0.0
        self.frames = 0

    def open(self) -> None:
        self.inner.open()

    def read(self, timeout_s: float) -> Frame | None:
        if time.monotonic() < self.stall_until:
            time.sleep(min(timeout_s, self.stall_until - time.monotonic()))
            return None
        frame = self.inner.read(timeout_s)
        if frame is not None:
            self.frames += 1
        return frame

    def close(self) -> None:
        self.inner.close()

    def accounting(self) -> dict[str, Any] | None:
        return None


class IdsOnly:
    """Which event ids the peers received, one byte per sequence number in a table allocated up front.

    The test peers keep whole messages, and even a set of id strings grows by about 100 bytes per event:
    either would grow this process and hide edgead's own memory behind the benchmark's bookkeeping."""

    def __init__(self, subscriber: Subscriber, http: HttpPeer, modbus: ModbusPeer, frames: int) -> None:
        self.mqtt_seen, self.http_seen = bytearray(2 * frames + 1000), bytearray(2 * frames + 1000)
        self.foreign = 0           # ids that are not <run id>-<seq> within the run: counted, never delivered
        self.coil_writes = 0
        self._sub, self._http, self._modbus = subscriber, http, modbus
        subscriber.client.on_message = lambda cl, ud, m: self._mark(self.mqtt_seen, json.loads(m.payload))
        threading.Thread(target=self._drain_http, daemon=True, name="soak-http-ids").start()

    def _mark(self, table: bytearray, msg: dict[str, Any]) -> None:
        seq = str(msg.get("event_id", "")).rpartition("-")[2]
        if seq.isdigit() and int(seq) < len(table):
            table[int(seq)] = 1
        else:
            self.foreign += 1

    @property
    def mqtt(self) -> int:
        return sum(self.mqtt_seen)

    @property
    def http(self) -> int:
        return sum(self.http_seen)

    def _drain_http(self) -> None:
        while True:
            while self._http.received:
                self._mark(self.http_seen, self._http.received.pop(0)[1])
            while self._modbus.writes:
                self._modbus.writes.pop(0)
                self.coil_writes += 1
            time.sleep(0.2)


class Sampler(threading.Thread):
    """RSS, open descriptors and threads of this process every `every_s` seconds; with `heap`, also the
    bytes Python objects hold (tracemalloc), which tells objects kept per event from allocator growth."""

    def __init__(self, every_s: float, heap: bool = False) -> None:
        super().__init__(daemon=True, name="soak-sampler")
        self.every_s, self.samples, self.heap = every_s, [], heap
        self.stop = threading.Event()

    def run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self.stop.wait(self.every_s):
            rss = int(Path("/proc/self/statm").read_text().split()[1]) * page / 2**20
            sample = {"t": time.monotonic(), "rss_mb": rss, "fds": len(os.listdir("/proc/self/fd")),
                      "threads": len(os.listdir("/proc/self/task"))}
            if self.heap:
                sample["heap_mb"] = tracemalloc.get_traced_memory()[0] / 2**20
            self.samples.append(sample)


class Disk:
    """A small tmpfs for the record folder, and the ballast that fills it (needs mount rights)."""

    def __init__(self, folder: Path, size_mb: int) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
                            capture_output=True).returncode == 0 if shutil.which("mount") else False
        self.mounted = ok

    def fill(self) -> None:
        try:
            with open(self.folder / "ballast", "wb") as f:
                while True:
                    f.write(b"\0" * 2**16)
        except OSError:        # full: the episode is on (also when the disk was full already)
            pass

    def empty(self) -> None:
        (self.folder / "ballast").unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.folder)], capture_output=True)


def faults(stop: threading.Event, period_s: float, broker: Broker, http: HttpPeer, camera: StallingSource,
           disk: Disk, log: list[dict[str, Any]]) -> None:
    """One fault of each kind per period, spread over it."""
    steps = [("broker down 20 s", lambda: broker.stop(), 20.0, lambda: broker.start()),
             ("webhook 503 for 30 s", lambda: (setattr(http, "fail_status", 503), setattr(http, "fail_first", 10**9)), 30.0,
              lambda: setattr(http, "fail_first", 0)),
             ("camera stall 2 s", lambda: setattr(camera, "stall_until", time.monotonic() + 2.0), 2.0, lambda: None)]
    if disk.mounted:
        steps.append(("disk full 20 s", disk.fill, 20.0, disk.empty))
    gap = period_s / len(steps)
    start = time.monotonic()
    k = 0
    while True:
        name, begin, hold, end = steps[k % len(steps)]
        if stop.wait(max(0.0, start + (k + 0.5) * gap - time.monotonic())):
            return
        t0 = time.monotonic()
        begin()
        stop.wait(hold)
        end()
        log.append({"fault": name, "at_s": round(t0 - start, 1)})
        k += 1


def rss_slope(samples: list[dict[str, Any]], warmup_s: float, key: str = "rss_mb") -> float:
    """MB per hour, least squares over the samples after `warmup_s`."""
    t0 = samples[0]["t"] if samples else 0.0
    pts = [(s["t"] - t0, s[key]) for s in samples if s["t"] - t0 >= warmup_s and key in s]
    if len(pts) < 3:
        return float("nan")
    t, y = np.array(pts).T
    return float(np.polyfit(t / 3600.0, y, 1)[0])


def p99_windows(events_file: Path, window_s: float) -> tuple[float | None, float | None]:
    rows = [json.loads(line) for line in events_file.read_text().splitlines() if '"latency_ms"' in line]
    rows = [r for r in rows if r.get("latency_ms", {}).get("total") is not None]
    if not rows:
        return None, None
    t = np.array([r["t_capture"] for r in rows])
    lat = np.array([r["latency_ms"]["total"] for r in rows])
    first, last = lat[t <= t[0] + window_s], lat[t >= t[-1] - window_s]
    return float(np.percentile(first, 99)), float(np.percentile(last, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--period", type=float, default=5.0, help="minutes between two faults of the same kind")
    ap.add_argument("--window", type=float, default=5.0, help="minutes of the first and last p99 windows")
    ap.add_argument("--fps", type=float, default=20.0)
    ap.add_argument("--out", default="bench-out/soak")
    ap.add_argument("--heap", action="store_true", help="also trace Python's heap (tracemalloc; slower)")
    args = ap.parse_args()
    if args.heap:
        tracemalloc.start()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model, data = tiny_model(out)
    engine = out / "engine"
    if not (engine / "manifest.json").exists():
        build_engine(model, engine, max_batch=4, log=lambda s: None)
    detector = load_detector(engine, "onnxruntime", threads=1)
    images = [read_image(p) for p in list_images(data)]
    cal = calibration(engine, detector, images, out)
    video = write_video(out / "parts.avi", images, 200)

    binary = mosquitto_binary()
    if binary is None:
        raise SystemExit("the soak needs mosquitto (apt-get install -y mosquitto)")
    shutil.rmtree(out / "broker", ignore_errors=True)
    broker, http, modbus = Broker(binary, out / "broker"), HttpPeer(), ModbusPeer(free_port())
    subscriber = Subscriber(broker.port, ["edgead/soak/events"], client_id="edgead-soak-sub")
    frames = int(args.minutes * 60 * args.fps)
    ids = IdsOnly(subscriber, http, modbus, frames)
    disk = Disk(out / "records", 64)     # room for a 30-minute event log: the ballast makes it full
    shutil.rmtree(out / "outbox", ignore_errors=True)
    camera = StallingSource(open_source(str(video), {"loop": True, "frame_rate": args.fps}, connect=False))
    cfg = from_dict({
        "engine": str(engine), "calibration": str(cal), "camera": {"source": str(video), "live": True,
                                                                  "stall_alarm_s": 1.0},
        "deadline_ms": 1000, "max_frames": frames, "record": {"dir": str(out / "records"), "quota_mb": 4},
        "outbox_dir": str(out / "outbox"), "allow_degraded": True, "outputs": [
            {"type": "mqtt", "host": "127.0.0.1", "port": broker.port, "line": "soak", "per_part": True},
            {"type": "webhook", "url": http.url, "per_part": True, "retries": 1, "timeout_ms": 500},
            {"type": "modbus", "host": "127.0.0.1", "port": modbus.port, "coil": 12, "pulse_ms": 20},
            {"type": "log", "path": str(out / "events-log.jsonl"), "per_part": True}]})
    sampler, stop, fault_log = Sampler(10.0, args.heap), threading.Event(), []
    sampler.start()
    injector = threading.Thread(target=faults, args=(stop, args.period * 60, broker, http, camera, disk, fault_log),
                                daemon=True)
    injector.start()
    t0 = time.monotonic()
    try:
        summary = run(cfg, detector=detector, source=camera, out=lambda s: None, log=lambda s: None)
    except Exception as e:  # the soak reports what happened, whatever it was
        summary = {"error": repr(e)}
    elapsed = time.monotonic() - t0
    stop.set()
    injector.join(60)
    broker.start() if broker.proc is None else None
    time.sleep(5.0)
    sampler.stop.set()
    report(args, out, summary, elapsed, sampler.samples, fault_log, ids, camera, disk)
    subscriber.close()
    broker.stop()
    http.close()
    modbus.close()
    disk.close()


def report(args: argparse.Namespace, out: Path, summary: dict[str, Any], elapsed: float,
           samples: list[dict[str, Any]], fault_log: list[dict[str, Any]], ids: IdsOnly,
           camera: StallingSource, disk: Disk) -> None:
    time.sleep(0.5)      # the last HTTP ids drained
    mqtt_ids, http_ids = ids.mqtt, ids.http
    undelivered = summary.get("undelivered", {}) or {}
    parts = int(summary.get("parts", 0))
    run_dirs = sorted(p for p in (out / "records").glob("*") if (p / "events.jsonl").exists())
    p99_first, p99_last = p99_windows(run_dirs[-1] / "events.jsonl", args.window * 60) if run_dirs else (None, None)
    row = {
        "minutes": round(elapsed / 60, 1), "fps": args.fps, "frames_read": camera.frames, "parts": parts,
        "safe_actions": summary.get("safe_actions"), "coil_writes": ids.coil_writes, "foreign_ids": ids.foreign, "uninspected": camera.frames - (parts - int((summary.get("safe_actions_by_reason") or {}).get("frame_lost", 0))),
        "mqtt": {"delivered": mqtt_ids, "undelivered": undelivered.get("mqtt", {}).get("count", 0)},
        "webhook": {"delivered": http_ids, "undelivered": undelivered.get("webhook", {}).get("count", 0)},
        "rss_mb_first_last": [round(samples[0]["rss_mb"], 1), round(samples[-1]["rss_mb"], 1)] if samples else None,
        "rss_slope_mb_per_h": round(rss_slope(samples, 120.0), 2),
        "rss_slope_second_half_mb_per_h": round(rss_slope(samples, elapsed / 2), 2),
        "heap_mb_first_last": [round(samples[0]["heap_mb"], 2), round(samples[-1]["heap_mb"], 2)]
        if samples and "heap_mb" in samples[0] else None,
        "heap_slope_mb_per_h": round(rss_slope(samples, 120.0, "heap_mb"), 2) if args.heap else None,
        "samples": [{k: round(v, 2) for k, v in s.items()} for s in samples],
        "fds_first_last_max": [samples[0]["fds"], samples[-1]["fds"], max(s["fds"] for s in samples)] if samples else None,
        "threads_first_last_max": [samples[0]["threads"], samples[-1]["threads"],
                                   max(s["threads"] for s in samples)] if samples else None,
        "p99_ms_first_last": [p99_first, p99_last],
        "p99_drift": None if not p99_first or p99_last is None else round(p99_last / p99_first - 1, 3),
        "faults": fault_log, "disk_full_episodes": disk.mounted, "exit_code": summary.get("exit_code"),
        "error": summary.get("error"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": "python benchmarks/soak.py " + " ".join(sys.argv[1:]),
    }
    for name in ("mqtt", "webhook"):   # at least once: an event may be delivered and still wait for its ack
        gap = parts - row[name]["delivered"] - row[name]["undelivered"]
        row[name]["unaccounted"] = max(0, gap)
        row[name]["delivered_and_still_pending"] = max(0, -gap)
    (out / "results.json").write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
