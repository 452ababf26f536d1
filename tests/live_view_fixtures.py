"""The live view without a model: synthetic camera frames, anomaly maps and events fed to a LiveView,
a /health document of the run's shape, and headless Chromium driven through its DevTools protocol.

Used by tests/runtime/test_live_view.py, tests/peers/test_live_view_browser.py and
benchmarks/live_view_shot.py (the README's screenshot). The DevTools client is a few lines of
standard-library websocket (RFC 6455, text frames only): no websocket package needed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from edgead.preprocess import PreprocessSpec
from edgead.protocols import InspectionEvent

FRAME_H, FRAME_W = 360, 480
ROI = (120, 60, 240, 240)            # x, y, w, h: the part sits in it
SPEC = PreprocessSpec(height=64, width=64, roi=ROI)
VRANGE = (0.5, 1.75)                 # heat_range of a threshold 1.5 over a p50 of 0.5
THRESHOLD = 1.5


def event(seq: int, decision: str, score: Optional[float], threshold: Optional[float] = THRESHOLD,
          reason: str = "") -> InspectionEvent:
    return InspectionEvent(seq=seq, t_capture=time.monotonic(), wall_time=datetime.now(timezone.utc).isoformat(),
                           decision=decision, score=score, threshold=threshold, reason=reason, source="synthetic",
                           event_id=f"run-{seq}")


def part(rng: np.random.Generator, seq: int, defect: bool, drift: float = 0.0) -> Tuple[np.ndarray, np.ndarray, float]:
    """(camera frame RGB, anomaly map 64x64, score): a grey disc on a belt, a dark scratch when defective."""
    frame = np.full((FRAME_H, FRAME_W, 3), (70, 74, 80), np.uint8)
    frame[:, :, :] += rng.integers(0, 5, (FRAME_H, FRAME_W, 1), dtype=np.uint8)
    for x in range((seq * 7) % 40 - 40, FRAME_W, 40):          # belt slats move
        cv2.line(frame, (x, 0), (x, FRAME_H), (58, 60, 64), 3)
    cx, cy = ROI[0] + ROI[2] // 2, ROI[1] + ROI[3] // 2
    cv2.circle(frame, (cx, cy), 100, (182, 186, 190), -1)
    cv2.circle(frame, (cx, cy), 28, (120, 124, 128), -1)
    amap = rng.normal(0.45 + drift, 0.05, (64, 64)).astype(np.float32)
    if defect:
        a = rng.uniform(0, 2 * np.pi)
        px, py = int(cx + 62 * np.cos(a)), int(cy + 62 * np.sin(a))
        cv2.line(frame, (px - 14, py - 9), (px + 14, py + 9), (40, 30, 30), 4)
        mx, my = (px - ROI[0]) * 64 / ROI[2], (py - ROI[1]) * 64 / ROI[3]
        yy, xx = np.mgrid[0:64, 0:64]
        amap += (1.3 + rng.uniform(0, 0.4)) * np.exp(-((xx - mx) ** 2 + (yy - my) ** 2) / 18.0).astype(np.float32)
    return frame, amap, float(amap.max())


class Feed:
    """A thread that plays a line at `rate` parts/s into `live.update`: every `reject_every`-th part
    defective, every `safe_every`-th one a safe action (deadline, no map), a slow drift of the scores."""

    def __init__(self, live: Any, rate: float = 20.0, reject_every: int = 6, safe_every: int = 37,
                 seed: int = 0, start_seq: int = 1) -> None:
        self.live, self.period, self.reject_every, self.safe_every = live, 1.0 / rate, reject_every, safe_every
        self.rng, self.seq = np.random.default_rng(seed), start_seq
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="live-feed", daemon=True)

    def one(self) -> InspectionEvent:
        seq = self.seq
        self.seq += 1
        defect = seq % self.reject_every == 0
        frame, amap, score = part(self.rng, seq, defect, drift=0.0004 * seq)
        if seq % self.safe_every == 0:
            ev = event(seq, "safe_reject", None, reason="deadline")
            self.live.update(frame, None, ev)
        else:
            ev = event(seq, "reject" if score > THRESHOLD else "pass", score)
            self.live.update(frame, amap, ev)
        return ev

    def _run(self) -> None:
        while not self.stop.wait(self.period):
            self.one()

    def start(self) -> "Feed":
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


class Health:
    """A /health document of the run's shape, its counters those of `live` (the parts it was fed) and its
    uptime moving; one output down with its alarm active (`alarm`); `ack` clears the alarms."""

    def __init__(self, live: Any, outputs: bool = True, alarm: bool = True, fps: float = 20.0,
                 uptime_s: float = 3725.0) -> None:
        self.live, self.outputs, self.fps, self.uptime_s = live, outputs, fps, uptime_s
        self.t0, self.lock = time.monotonic(), threading.Lock()
        self.acked: List[Optional[str]] = []
        self.calls = 0
        since = datetime.now(timezone.utc).isoformat()
        self.alarms = [{"key": "output_failure:plc", "reason": "output plc: connection refused (127.0.0.1:5020)",
                        "since": since, "count": 3, "kind": "condition"}] if alarm else []

    def __call__(self) -> Dict[str, Any]:
        up = time.monotonic() - self.t0
        with self.lock:
            alarms = list(self.alarms)
            self.calls += 1
        c = self.live.snapshot()["counts"]["since_start"]
        parts, rejected, stuck = c["parts"], c["rejected"], 2 if alarms else 0
        outs = [{"name": "plc", "type": "modbus", "target": "127.0.0.1:5020", "ok": not alarms,
                 "detail": "connection refused" if alarms else "", "last_delivery": time.time() - 4.0,
                 "delivered": max(0, rejected - stuck), "undelivered": stuck, "pending": None},
                {"name": "mes", "type": "mqtt", "target": "mqtt://127.0.0.1:1883/line1", "ok": True, "detail": "",
                 "last_delivery": time.time() - 0.3, "delivered": parts, "undelivered": 0, "pending": 0}]
        return {"status": "alarm" if alarms else "ok", "uptime_s": round(up + self.uptime_s, 3), "parts": parts,
                "safe_actions": c["safe_actions"], "alarms": alarms,
                "alarm_counts": {a["key"]: a["count"] for a in alarms}, "last_alarm": alarms[0] if alarms else None,
                "camera": {"name": "gige:Line1-Cam", "ok": True, "detail": "",
                           "fps": round(self.fps * (0.99 + 0.005 * (self.calls % 5)), 2), "frames": parts + 1,
                           "frames_lost": 1, "reconnects": 0, "errors": 0, "last_frame_age_s": 0.04},
                "outputs": outs if self.outputs else []}

    def ack(self, key: Optional[str]) -> List[str]:
        with self.lock:
            self.acked.append(key)
            gone = [a["key"] for a in self.alarms if key is None or a["key"] == key]
            self.alarms = [a for a in self.alarms if a["key"] not in gone]
        return gone


# ---------------------------------------------------------------- headless Chromium over DevTools


# The stream's decision banner (its top-left pixel) read through a canvas: red while a reject is shown.
BANNER_RED = """(() => {
  const i = document.getElementById('stream'), c = document.createElement('canvas');
  c.width = i.naturalWidth; c.height = i.naturalHeight;
  if (!c.width) return false;
  const g = c.getContext('2d'); g.drawImage(i, 0, 0);
  const p = g.getImageData(3, 3, 1, 1).data;
  return p[0] > 150 && p[1] < 90 && p[2] < 90;
})()"""


def chromium_binary() -> Optional[str]:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class DevTools:
    """One DevTools websocket: `call(method, **params)` returns the result; events are kept in `events`."""

    def __init__(self, ws_url: str, timeout: float = 10.0) -> None:
        u = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            buf += chunk
        head, self._buf = buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"DevTools refused the websocket: {head[:200]!r}")
        self._id = 0
        self.events: List[Dict[str, Any]] = []

    def _exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def _send(self, opcode: int, payload: bytes) -> None:
        n, mask = len(payload), os.urandom(4)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else
                                         bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                         bytes([0x80 | 127]) + struct.pack(">Q", n))
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
        self.sock.sendall(head + mask + masked)

    def _message(self) -> Dict[str, Any]:
        parts: List[bytes] = []
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload, opcode = self._exact(n), b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the websocket")
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            if opcode in (0x0, 0x1, 0x2):
                parts.append(payload)
                if b0 & 0x80:
                    return json.loads(b"".join(parts))

    def call(self, method: str, **params: Any) -> Dict[str, Any]:
        self._id += 1
        mid = self._id
        self._send(0x1, json.dumps({"id": mid, "method": method, "params": params}).encode())
        while True:
            msg = self._message()
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError as e:   # the page is still loading (no body yet)
                value, error = None, e
            else:
                error = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never satisfied: {expression} ({error})")
            time.sleep(0.1)

    def pump(self, seconds: float) -> None:
        """Let the page run, collecting its events (a no-op call every 0.1 s drains them)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.evaluate("1")
            time.sleep(0.1)

    def console_errors(self) -> List[str]:
        """Uncaught exceptions, console.error/assert calls and the browser's own error entries (failed loads)."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append("log: " + p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
        return out

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Chromium:
    """Headless Chromium with a DevTools port, one page opened at `url`; a context manager."""

    def __init__(self, url: str, width: int = 1280, height: int = 900, timeout: float = 20.0) -> None:
        self.url, self.size, self.timeout = url, (width, height), timeout
        self.profile = tempfile.mkdtemp(prefix="edgead-chromium-")
        self.proc: Optional[subprocess.Popen] = None
        self.stderr: List[str] = []

    def __enter__(self) -> DevTools:
        binary = chromium_binary()
        if binary is None:
            raise RuntimeError("no chromium on PATH")
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-component-update",
             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", f"--user-data-dir={self.profile}",
             f"--window-size={self.size[0]},{self.size[1]}", "--hide-scrollbars", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = self._devtools_port()
        deadline = time.monotonic() + self.timeout
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.tools = DevTools(pages[0]["webSocketDebuggerUrl"])
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            self.tools.call(domain)
        self.tools.call("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                        deviceScaleFactor=1, mobile=False)
        self.tools.call("Page.navigate", url=self.url)
        return self.tools

    def _devtools_port(self) -> int:
        assert self.proc is not None and self.proc.stderr is not None
        found: List[int] = []
        ready = threading.Event()

        def read() -> None:   # keep draining stderr so chromium never blocks on a full pipe
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line)
                m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
                if m and not found:
                    found.append(int(m.group(1)))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(self.timeout) or not found:
            raise RuntimeError("chromium did not open its DevTools port: " + "".join(self.stderr[-20:]))
        return found[0]

    def __exit__(self, *exc: Any) -> None:
        try:
            self.tools.close()
        except AttributeError:
            pass
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.profile, ignore_errors=True)


def serve(live: Any, health: Callable[[], Dict[str, Any]], ack: Optional[Callable[[Optional[str]], List[str]]] = None,
          token: Optional[str] = None) -> Any:
    """A started HttpView on 127.0.0.1, an ephemeral port."""
    from edgead.runtime.http import HttpView

    view = HttpView("127.0.0.1", 0, live, health, lambda: "", ack=ack, token=token)
    view.start()
    return view
