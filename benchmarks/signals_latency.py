"""Decision-to-output latency per reject output, on loopback peers.

For each sink: N reject events, one every --gap-ms, each fired at once (delay_ms 0); the latency is
from the `reject()` call to the peer receiving it: the pymodbus server decoding the coil write,
the mosquitto subscriber getting the message, the HTTP server reading the POST, the bytes arriving
at the pty master, the JSON line appearing in the file, the (fake) GPIO line being set. mqtt and
webhook go through their durable outbox (in a temporary folder), so its write is included. A second
table checks the timing itself: pulses scheduled --delay-ms after capture, error of the on edge.

Needs the signals extra and the mosquitto binary (the mqtt row is skipped without it):

    python benchmarks/signals_latency.py --events 200
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from signals_fixtures import (LOOPBACK, Broker, FakeLines, HttpPeer, ModbusPeer, PtyPeer, Subscriber,  # noqa: E402
                              event, free_port, mosquitto_binary, wait_for)

from edgead.signals import build_sink  # noqa: E402
from edgead.signals.config import parse_sink  # noqa: E402
from edgead.signals.gpio import GpioSink  # noqa: E402


def drive(sink: Any, n: int, gap_s: float, delay_s: float = 0.0) -> dict[int, float]:
    """Send n rejects; return seq -> the time each should reach the peer (call time + delay)."""
    sent: dict[int, float] = {}
    for seq in range(n):
        t = time.monotonic()
        sent[seq] = t + delay_s
        sink.reject(event(seq, t))
        time.sleep(gap_s)
    return sent


def stats(ms: list[float]) -> tuple[str, str, str, str]:
    a = np.asarray(ms)
    return (str(len(a)), f"{np.percentile(a, 50):.2f}", f"{np.percentile(a, 99):.2f}", f"{a.max():.2f}")


def by_order(sent: dict[int, float], arrivals: list[float]) -> list[float]:
    """Level outputs carry no part number: an on edge belongs to the latest part due before it
    (parts are --gap-ms apart, far more than any latency; a missed part has no edge)."""
    due = sorted(sent.values())
    out = []
    for t in arrivals:
        i = bisect.bisect_right(due, t + 0.0005) - 1
        if i >= 0:
            out.append((t - due[i]) * 1000)
    return out


MISSED: dict[str, int] = {}


def bench_gpio(n: int, gap: float, delay: float) -> list[float]:
    lines = FakeLines()
    sink = GpioSink(parse_sink({"type": "gpio", "pin": 5, "pulse_ms": 2, "delay_ms": delay * 1000}), backend=lines)
    sent = drive(sink, n, gap, delay)
    wait_for(lambda: len([a for _, a in lines.edges(5) if a]) + sink.stats["missed"] >= n, 5 + delay)
    sink.close()
    MISSED["gpio"] = sink.stats["missed"]
    return by_order(sent, [t for t, a in lines.edges(5) if a])


def bench_modbus(n: int, gap: float, delay: float) -> list[float]:
    peer = ModbusPeer(free_port())
    sink = build_sink({"type": "modbus", "host": LOOPBACK, "port": peer.port, "coil": 3, "pulse_ms": 2,
                       "delay_ms": delay * 1000})
    try:
        sent = drive(sink, n, gap, delay)
        wait_for(lambda: len([w for w in peer.writes if w[3] == 1]) + sink.stats["missed"] >= n, 5 + delay)
    finally:
        sink.close()
        peer.close()
    MISSED["modbus"] = sink.stats["missed"]
    return by_order(sent, [w[0] for w in peer.writes if w[3] == 1])


def bench_mqtt(n: int, gap: float) -> list[float] | str:
    binary = mosquitto_binary()
    if binary is None:
        return "skipped: mosquitto not installed"
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(binary, Path(tmp))
        sub = Subscriber(broker.port, ["edgead/bench/events"], client_id="edgead-bench-sub")
        sink = build_sink({"type": "mqtt", "host": LOOPBACK, "port": broker.port, "line": "bench", "qos": 1},
                          outbox_dir=Path(tmp) / "outbox")
        try:
            wait_for(lambda: sink.health().ok, 5)
            sent = drive(sink, n, gap)
            wait_for(lambda: len(sub.payloads("edgead/bench/events")) >= n, 10)
            got = {json.loads(p)["seq"]: t for t, topic, p, _ in sub.messages if topic == "edgead/bench/events"}
        finally:
            sink.close()
            sub.close()
            broker.stop()
    return [(got[s] - sent[s]) * 1000 for s in sent if s in got]


def bench_webhook(n: int, gap: float) -> list[float]:
    peer = HttpPeer()
    with tempfile.TemporaryDirectory() as tmp:
        sink = build_sink({"type": "webhook", "url": peer.url}, outbox_dir=Path(tmp) / "outbox")
        try:
            sent = drive(sink, n, gap)
            wait_for(lambda: len(peer.received) >= n, 10)
        finally:
            sink.close()
            peer.close()
    got = {body["seq"]: t for t, body, _ in peer.received}
    return [(got[s] - sent[s]) * 1000 for s in sent if s in got]


def bench_serial(n: int, gap: float) -> list[float]:
    peer = PtyPeer()
    sink = build_sink({"type": "serial", "port": peer.path, "baudrate": 115200})
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend(peer.read_lines(n, timeout=5 + n * gap)), daemon=True)
    reader.start()
    try:
        sent = drive(sink, n, gap)
        reader.join()
    finally:
        sink.close()
        peer.close()
    got = {int(text.split()[1]): t for t, text in lines}
    return [(got[s] - sent[s]) * 1000 for s in sent if s in got]


def bench_log(n: int, gap: float) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rejects.jsonl"
        sink = build_sink({"type": "log", "path": str(path)})
        got: dict[int, float] = {}
        stop = threading.Event()

        def tail() -> None:
            fd = os.open(path, os.O_RDONLY)
            buf = b""
            while not stop.is_set():
                chunk = os.read(fd, 65536)
                if not chunk:
                    time.sleep(0.0001)
                    continue
                t = time.monotonic()
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    got[json.loads(line)["seq"]] = t
            os.close(fd)

        reader = threading.Thread(target=tail, daemon=True)
        reader.start()
        try:
            sent = drive(sink, n, gap)
            wait_for(lambda: len(got) >= n, 5)
        finally:
            stop.set()
            reader.join()
            sink.close()
    return [(got[s] - sent[s]) * 1000 for s in sent if s in got]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--gap-ms", type=float, default=10.0, help="time between rejects (no pulse merging)")
    ap.add_argument("--delay-ms", type=float, default=100.0, help="delay for the timing-accuracy table")
    args = ap.parse_args()
    n, gap = args.events, args.gap_ms / 1000
    runs: list[tuple[str, str, Callable[[], Any]]] = [
        ("gpio", "fake line object (no GPIO hardware here): scheduler only", lambda: bench_gpio(n, gap, 0.0)),
        ("modbus", "pymodbus TCP server, coil write decoded", lambda: bench_modbus(n, gap, 0.0)),
        ("mqtt", "mosquitto, qos 1, subscriber receives", lambda: bench_mqtt(n, gap)),
        ("webhook", "http.server, POST body read", lambda: bench_webhook(n, gap)),
        ("serial", "pty pair, line read at the master", lambda: bench_serial(n, gap)),
        ("log", "JSONL line appears in the file", lambda: bench_log(n, gap)),
    ]
    logging.getLogger("edgead.signals").setLevel(logging.ERROR)   # missed parts are counted below instead
    load = os.getloadavg()[0]
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f} at start, "
          f"Python {platform.python_version()}; {n} rejects, one every {args.gap_ms:g} ms, delay_ms 0\n")
    print("| output | peer (loopback) | events | p50 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, peer, run in runs:
        result = run()
        if isinstance(result, str):
            print(f"| {name} | {peer} | {result} ||||")
        else:
            print(f"| {name} | {peer} | " + " | ".join(stats(result)) + " |")
    d = args.delay_ms / 1000
    print(f"\nPulse timing: on edge minus (capture + {args.delay_ms:g} ms), pulse_ms 2, default late_ms 10; "
          "a pulse later than that is not fired and is reported (missed)\n")
    print("| output | pulses fired | p50 ms | p99 ms | max ms | missed |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, key, fn in (("gpio (fake line)", "gpio", bench_gpio), ("modbus", "modbus", bench_modbus)):
        print(f"| {name} | " + " | ".join(stats(fn(n, gap, d))) + f" | {MISSED.get(key, 0)} |")


if __name__ == "__main__":
    main()
