"""Optional HTTP view of a run: the operator's live page, live MJPEG, /health (JSON), /metrics (Prometheus).

Standard library only (http.server.ThreadingHTTPServer): the edge box gets no web framework. The
inspection path only hands the latest part over (`LiveView.update` stores references); JPEG encoding
happens in the HTTP threads and only while someone is watching, at most `max_fps` per client.
Binds 127.0.0.1 unless the user names another address (edgead.runtime.run warns when it is not loopback).

    /              the live page (edgead.runtime.live_page: one self-contained document, no external resource)
    /live.json     what only the page needs (LiveView.snapshot: counters since start and per hour, current
                   part, last rejects, score history, legend) with the /health document under "health"
                   (always 200, so the page polls one URL and the browser logs no error while starting)
    /rejects/N.jpg the JPEG of reject N of /live.json (404 once it left the ring)
    /stream        multipart/x-mixed-replace MJPEG: the camera frame, heatmap overlay on the ROI, decision banner
    /frame.jpg     one JPEG of the latest part
    /health        JSON: loop status (ok, alarm, degraded: an output down), active alarms, the camera and
                   each output on its own, counters (503 when not inspecting)
    /metrics       Prometheus text format
    POST /alarms/ack[?key=KEY]   the operator acknowledges the active alarms (or one): JSON {"acked": [...]}.
                   Allowed from the box itself (a loopback client) or with `Authorization: Bearer <http.token>`;
                   403 otherwise. `ack_alarms()` is its client (`edgead alarm ack`).

A station (several cameras, edgead.runtime.station) serves them all on one port (`CameraViews`): the
page, /live.json, /stream, /frame.jpg and /rejects/N.jpg take `?camera=NAME` (default: the first camera;
an unknown name is a 404), /live.json lists the cameras with their status, /health is the station's
({"status", "cameras": {name: health}}), and POST /alarms/ack acknowledges one camera's alarms with
`camera=NAME`, every camera's without.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional

from edgead.errors import EdgeADError
from edgead.runtime.live_page import PAGE
from edgead.runtime.live_view import LiveView

BOUNDARY = "edgeadframe"
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


class CameraViews:
    """A station's cameras behind one server: each one's LiveView, its health and its acknowledgement."""

    def __init__(self, views: Dict[str, LiveView], health: Callable[[str], Dict[str, Any]],
                 ack: Callable[[str, Optional[str]], List[str]]) -> None:
        if not views:
            raise ValueError("a station serves at least one camera")
        self.views, self.health, self.ack = dict(views), health, ack

    @property
    def first(self) -> str:
        return next(iter(self.views))


class HttpView:
    """The server; `health()` and `metrics()` are callbacks so this module knows nothing of the loop."""

    def __init__(self, host: str, port: int, live: LiveView | None, health: Callable[[], dict[str, Any]],
                 metrics: Callable[[], str], max_fps: float = 10.0, ack: AckCallback | None = None,
                 token: str | None = None, cameras: CameraViews | None = None) -> None:
        if live is None and cameras is None:
            raise ValueError("HttpView needs a LiveView or a station's CameraViews")
        self.live = live if live is not None else cameras.views[cameras.first]  # type: ignore[union-attr]
        self.health, self.metrics, self.max_fps = health, metrics, max_fps
        self.ack, self.token, self.cameras = ack, token, cameras
        self.stopping = threading.Event()
        try:
            self.server = ThreadingHTTPServer((host, port), type("Handler", (_Handler,), {"view": self}))
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
        self.stopping.set()
        if self._thread.is_alive():  # shutdown() waits for serve_forever: never call it before start()
            self.server.shutdown()
        self.server.server_close()

    def camera(self, query: str) -> str | None:
        """The station camera `?camera=NAME` names (the first one when none is named); None: no such
        camera. "" for a one-camera run, which has no names."""
        if self.cameras is None:
            return ""
        name = urllib.parse.parse_qs(query).get("camera", [""])[0]
        if not name:
            return self.cameras.first
        return name if name in self.cameras.views else None

    def live_for(self, camera: str) -> LiveView:
        return self.cameras.views[camera] if self.cameras is not None and camera else self.live

    def live_json(self, camera: str = "") -> bytes:
        """/live.json: the view's snapshot and the health document, numbers JSON can carry (no NaN)."""
        body = self.live_for(camera).snapshot()
        try:
            body["health"] = self.cameras.health(camera) if self.cameras is not None else self.health()
        except Exception as e:  # the page shows it; the view itself keeps working
            body["health"] = {"status": "unknown", "error": repr(e)}
        if self.cameras is not None:
            self._station_fields(body, camera)
        return json.dumps(_plain(body), default=str).encode() + b"\n"

    def _station_fields(self, body: Dict[str, Any], camera: str) -> None:
        """The camera shown, every camera with its status (the page's selector), reject URLs with the camera."""
        try:
            station = self.health()
        except Exception as e:
            station = {"status": "unknown", "error": repr(e), "cameras": {}}
        states = station.get("cameras") or {}
        body["camera"] = camera
        body["station"] = {"status": station.get("status")}
        body["cameras"] = [{"name": name, "status": (states.get(name) or {}).get("status", "unknown")}
                           for name in self.cameras.views]   # type: ignore[union-attr]
        q = "?" + urllib.parse.urlencode({"camera": camera})
        for r in body.get("rejects") or []:
            if r.get("url"):
                r["url"] += q


def _plain(x: Any) -> Any:
    """NaN and infinities as null (JSON.parse refuses them), recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


class _Handler(BaseHTTPRequestHandler):
    server_version = "edgead"
    view: HttpView   # set on the subclass HttpView builds

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
        path, _, query = self.path.partition("?")
        view = self.view
        camera = view.camera(query)
        try:
            if camera is None:
                self._send(404, "text/plain", b"no such camera: see \"cameras\" in /live.json\n")
            elif path == "/health":
                h = view.health()
                code = 200 if h.get("status") in ("ok", "alarm", "degraded") else 503
                self._send(code, "application/json", json.dumps(_plain(h), default=str).encode() + b"\n")
            elif path == "/live.json":
                self._send(200, "application/json", view.live_json(camera))
            elif path.startswith("/rejects/") and path.endswith(".jpg"):
                self._reject(view.live_for(camera), path[len("/rejects/"):-len(".jpg")])
            elif path == "/metrics":
                self._send(200, "text/plain; version=0.0.4; charset=utf-8", view.metrics().encode())
            elif path == "/frame.jpg":
                self._send(200, "image/jpeg", view.live_for(camera).jpeg(timeout=0.0)[1])
            elif path in ("/stream", "/stream.mjpg"):
                self._stream(view.live_for(camera))
            elif path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", PAGE)
            else:
                self._send(404, "text/plain", b"not found: try /, /stream, /live.json, /health, /metrics\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _reject(self, live: LiveView, rid: str) -> None:
        data = live.reject_jpeg(int(rid)) if rid.isdigit() else None
        if data is None:
            self._send(404, "text/plain", b"no such reject image (the view keeps the last ones only)\n")
        else:
            self._send(200, "image/jpeg", data)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        path, _, query = self.path.partition("?")
        view = self.view
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
                q = urllib.parse.parse_qs(query)
                key, camera = q.get("key", [None])[0] or None, q.get("camera", [None])[0] or None
                if camera is not None and view.cameras is not None:
                    if camera not in view.cameras.views:
                        self._send(404, "application/json", b'{"error": "no such camera"}\n')
                        return
                    body = {"acked": view.cameras.ack(camera, key)}
                else:
                    body = {"acked": view.ack(key)}
                self._send(200, "application/json", json.dumps(body).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _stream(self, live: LiveView) -> None:
        view = self.view
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        # Each part is followed at once by the next boundary and headers (no Content-Length: the boundary
        # ends a part): Chromium shows a part only once it has read the next part's headers, which would
        # otherwise hold every frame back until the next part arrives.
        head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n\r\n".encode()
        self.wfile.write(head)
        version, period = -1, 1.0 / view.max_fps
        while not view.stopping.is_set():
            t0 = time.monotonic()
            new, data = live.jpeg(after=version, timeout=1.0)
            if new == version and version >= 0:
                continue  # nothing new within a second: keep waiting
            version = new
            self.wfile.write(data + b"\r\n" + head)
            self.wfile.flush()
            time.sleep(max(0.0, period - (time.monotonic() - t0)))
