"""Optional HTTP view of a run: live MJPEG, /health (JSON) and /metrics (Prometheus text).

Standard library only (http.server.ThreadingHTTPServer): the edge box gets no web framework. The
inspection path only hands the latest frame over (`LiveView.update` stores references); JPEG encoding
happens in the HTTP threads and only while someone is watching, at most `max_fps` per client.
Binds 127.0.0.1 unless the user names another address (edgead.runtime.run warns when it is not loopback).

    /              a page showing the stream
    /stream        multipart/x-mixed-replace MJPEG: the latest part, heatmap overlay, decision banner
    /frame.jpg     one JPEG of the latest part
    /health        JSON: loop status, counters, active alarms and counts since start, last alarm,
                   outputs' health (503 when not inspecting)
    /metrics       Prometheus text format
    POST /alarms/ack[?key=KEY]   the operator acknowledges the active alarms (or one): JSON {"acked": [...]}.
                   Allowed from the box itself (a loopback client) or with `Authorization: Bearer <http.token>`;
                   403 otherwise. `ack_alarms()` is its client (`edgead alarm ack`).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, List, Optional

import cv2
import numpy as np

from edgead.errors import EdgeADError
from edgead.runtime.overlay import heatmap_overlay
from edgead.preprocess import PreprocessSpec, to_display
from edgead.protocols import InspectionEvent

BOUNDARY = "edgeadframe"
_COLORS = {"pass": (40, 160, 40), "reject": (200, 30, 30), "safe_reject": (230, 120, 0)}
_PAGE = (b"<!doctype html><title>edgead live</title><body style='margin:0;background:#222'>"
         b"<img src='/stream' style='width:100%;max-width:960px;image-rendering:pixelated'>"
         b"<p style='color:#ccc;font:14px sans-serif'><a style='color:#ccc' href='/health'>health</a> "
         b"<a style='color:#ccc' href='/metrics'>metrics</a></p></body>")
VIEW_MIN_HEIGHT = 240
ACK_PATH = "/alarms/ack"

AckCallback = Callable[[Optional[str]], List[str]]   # (key or None for all) -> the keys acknowledged


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, an IPv4-mapped loopback, or "localhost"."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def ack_allowed(client_host: str, authorization: str | None, token: str | None) -> bool:
    """An acknowledgement comes from the box itself, or carries the configured bearer token."""
    if is_loopback(client_host):
        return True
    if not token or not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def ack_alarms(url: str, key: str | None = None, token: str | None = None, timeout_s: float = 5.0) -> list[str]:
    """Acknowledge the active alarms (or `key`) of the run serving `url` (its --http address, e.g.
    http://127.0.0.1:8080); returns the keys acknowledged. EdgeADError when it cannot be done."""
    base = url if "://" in url else f"http://{url}"
    base = base.rstrip("/")
    if not base.endswith(ACK_PATH):
        base += ACK_PATH
    full = base + (f"?{urllib.parse.urlencode({'key': key})}" if key else "")
    req = urllib.request.Request(full, data=b"", method="POST")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            body = json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        if e.code == 403:
            raise EdgeADError(f"{base}: acknowledging alarms is refused (403)",
                              "run it on the inspection box itself, or pass --token with the run's http.token") from e
        raise EdgeADError(f"{base}: the run answered HTTP {e.code}",
                          "is this the address of `edgead run --http`?") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise EdgeADError(f"cannot reach {base}: {reason}",
                          "is `edgead run --http HOST:PORT` running there? give that address with --url") from e
    acked = body.get("acked") if isinstance(body, dict) else None
    if not isinstance(acked, list):
        raise EdgeADError(f"{base}: unexpected answer {body!r}", "is this the address of `edgead run --http`?")
    return [str(k) for k in acked]


class LiveView:
    """The latest inspected part; encoded to JPEG lazily and once per new part."""

    def __init__(self, spec: PreprocessSpec, vrange: tuple[float, float]) -> None:
        self.spec, self.vrange = spec, vrange
        self._cond = threading.Condition()
        self._latest: tuple[np.ndarray, np.ndarray | None, InspectionEvent] | None = None
        self._version = 0
        self._cache: tuple[int, bytes] | None = None

    def update(self, image: np.ndarray, amap: np.ndarray | None, event: InspectionEvent) -> None:
        with self._cond:
            self._latest = (image, amap, event)
            self._version += 1
            self._cond.notify_all()

    def jpeg(self, after: int = -1, timeout: float = 1.0) -> tuple[int, bytes]:
        """(version, JPEG) of a part newer than `after`, waiting up to timeout; a placeholder before the first."""
        with self._cond:
            self._cond.wait_for(lambda: self._version > after, timeout)
            version, latest = self._version, self._latest
            if self._cache is not None and self._cache[0] == version:
                return self._cache
        data = self._encode(latest)
        with self._cond:
            self._cache = (version, data)
        return version, data

    def _encode(self, latest: tuple[np.ndarray, np.ndarray | None, InspectionEvent] | None) -> bytes:
        if latest is None:
            view: np.ndarray = np.full((VIEW_MIN_HEIGHT, 320, 3), 40, np.uint8)
            text, color = "waiting for the first part", (200, 200, 200)
        else:
            image, amap, ev = latest
            view = to_display(image, self.spec)
            if amap is not None:
                view = heatmap_overlay(view, amap, *self.vrange)
            if view.shape[0] < VIEW_MIN_HEIGHT:  # tiny model inputs: enlarge so the banner stays readable
                f = VIEW_MIN_HEIGHT / view.shape[0]
                view = cv2.resize(view, (round(view.shape[1] * f), VIEW_MIN_HEIGHT), interpolation=cv2.INTER_NEAREST)
            score = "-" if ev.score is None else f"{ev.score:.4g}"
            text = f"#{ev.seq} {ev.decision.upper()} score {score}" + (f" ({ev.reason})" if ev.reason else "")
            color = _COLORS.get(ev.decision, (200, 200, 200))
        view = np.ascontiguousarray(view)
        cv2.rectangle(view, (0, 0), (view.shape[1], 22), color, -1)
        cv2.putText(view, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(view, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return buf.tobytes()


class HttpView:
    """The server; `health()` and `metrics()` are callbacks so this module knows nothing of the loop."""

    def __init__(self, host: str, port: int, live: LiveView, health: Callable[[], dict[str, Any]],
                 metrics: Callable[[], str], max_fps: float = 10.0, ack: AckCallback | None = None,
                 token: str | None = None) -> None:
        self.live, self.health, self.metrics, self.max_fps = live, health, metrics, max_fps
        self.ack, self.token = ack, token
        self._stopping = threading.Event()
        try:
            self.server = ThreadingHTTPServer((host, port), self._handler())
        except OSError as e:
            raise EdgeADError(f"cannot serve HTTP on {host}:{port}: {e.strerror or e}",
                              "choose a free port with --http HOST:PORT, or leave --http out") from e
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="edgead-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():  # shutdown() waits for serve_forever: never call it before start()
            self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        view = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "edgead"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass  # requests are not worth a log line on the edge box

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/health":
                        h = view.health()
                        code = 200 if h.get("status") in ("ok", "alarm") else 503
                        self._send(code, "application/json", json.dumps(h, default=str).encode() + b"\n")
                    elif path == "/metrics":
                        self._send(200, "text/plain; version=0.0.4; charset=utf-8", view.metrics().encode())
                    elif path == "/frame.jpg":
                        self._send(200, "image/jpeg", view.live.jpeg(timeout=0.0)[1])
                    elif path in ("/stream", "/stream.mjpg"):
                        self._stream()
                    elif path == "/":
                        self._send(200, "text/html; charset=utf-8", _PAGE)
                    else:
                        self._send(404, "text/plain", b"not found: try /, /stream, /health, /metrics\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                path, _, query = self.path.partition("?")
                try:
                    length = int(self.headers.get("Content-Length") or 0) if \
                        (self.headers.get("Content-Length") or "0").isdigit() else 0
                    if 0 < length <= 65536:
                        self.rfile.read(length)  # the body says nothing: the query names the key
                    if path != ACK_PATH:
                        self._send(404, "application/json", json.dumps(
                            {"error": f"not found: POST {ACK_PATH}[?key=KEY]"}).encode() + b"\n")
                    elif not ack_allowed(self.client_address[0], self.headers.get("Authorization"), view.token):
                        self._send(403, "application/json", b'{"error": "acknowledge from the box itself, or '
                                                            b'with Authorization: Bearer <http.token>"}\n')
                    elif view.ack is None:
                        self._send(503, "application/json", b'{"error": "no run to acknowledge"}\n')
                    else:
                        key = urllib.parse.parse_qs(query).get("key", [None])[0] or None
                        body = {"acked": view.ack(key)}
                        self._send(200, "application/json", json.dumps(body).encode() + b"\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                version, period = -1, 1.0 / view.max_fps
                while not view._stopping.is_set():
                    t0 = time.monotonic()
                    new, data = view.live.jpeg(after=version, timeout=1.0)
                    if new == version and version >= 0:
                        continue  # nothing new within a second: keep waiting
                    version = new
                    self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}"
                                     "\r\n\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                    time.sleep(max(0.0, period - (time.monotonic() - t0)))

        return Handler
