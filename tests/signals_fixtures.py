"""Real peers for the reject-output tests, all on 127.0.0.1 and free ports: a pymodbus TCP server,
a mosquitto broker (restartable), an HTTP server with scripted failures, and a pty pair standing in
for a serial cable. Stuck peers (a TCP port that never answers, a full pty, a full pipe) for the
"reject() never waits on I/O" tests. Plus the fakes (clock, GPIO lines) for what cannot run here.

Import the fixtures by name from the test modules: `from signals_fixtures import modbus_server`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

LOOPBACK = "127.0.0.1"


def need_module(name: str, reason: str) -> None:
    """Skip the test when an optional library is missing (any ImportError, on any pytest)."""
    try:
        __import__(name)
    except ImportError:
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], Any], timeout: float = 5.0, step: float = 0.005) -> Any:
    """Poll until pred() is truthy; return its value (or the last falsy one after the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$EDGEAD_STATE_DIR in the test's own folder: an output's default outbox never lands in the real home."""
    d = tmp_path / "state"
    monkeypatch.setenv("EDGEAD_STATE_DIR", str(d))
    return d


# ---------------------------------------------------------------- fakes


class Alarms:
    """The alarm callbacks of a SinkGroup, recorded: got (name, detail), recovered names."""

    def __init__(self) -> None:
        self.got: list = []
        self.recovered: list = []

    def __call__(self, name: str, detail: str) -> None:
        self.got.append((name, detail))

    def back(self, name: str) -> None:
        self.recovered.append(name)


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


class FakeLines:
    """A GPIO backend that records (monotonic time, pin, active) for each change."""

    def __init__(self) -> None:
        self.log: list[tuple[float, int, bool]] = []
        self.level: dict[int, bool] = {}
        self.closed = False

    def set(self, pin: int, active: bool) -> None:
        self.log.append((time.monotonic(), pin, active))
        self.level[pin] = active

    def close(self) -> None:
        for pin in list(self.level):
            self.set(pin, False)
        self.closed = True

    def edges(self, pin: int) -> list[tuple[float, bool]]:
        return [(t, a) for t, p, a in self.log if p == pin]


def event(seq: int, t_capture: float | None = None, decision: str = "reject", **kw: Any) -> Any:
    from edgead.protocols import InspectionEvent

    return InspectionEvent(seq=seq, t_capture=time.monotonic() if t_capture is None else t_capture,
                           wall_time="2026-01-01T00:00:00Z", decision=decision, score=kw.pop("score", 0.9),
                           threshold=kw.pop("threshold", 0.5), **kw)


# ---------------------------------------------------------------- Modbus TCP server (pymodbus)


class ModbusPeer:
    """A pymodbus TCP server on its own event-loop thread; records each write as (t, kind, address, value)."""

    def __init__(self, port: int) -> None:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        self.port = port
        self.writes: list[tuple[float, str, int, int]] = []
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="modbus-peer", daemon=True)
        self._thread.start()
        self._client: Any = None
        self.start()

    def _trace(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            name = type(pdu).__name__
            if name == "WriteSingleCoilRequest":
                self.writes.append((time.monotonic(), "coil", pdu.address, int(pdu.bits[0])))
            elif name == "WriteSingleRegisterRequest":
                self.writes.append((time.monotonic(), "register", pdu.address, int(pdu.registers[0])))
        return pdu

    async def _start(self) -> None:
        from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
        from pymodbus.server import ModbusTcpServer

        device = ModbusDeviceContext(co=ModbusSequentialDataBlock(1, [False] * 200),
                                     hr=ModbusSequentialDataBlock(1, [0] * 200),
                                     ir=ModbusSequentialDataBlock(1, [0] * 200))
        self._server = ModbusTcpServer(ModbusServerContext(devices=device), address=(LOOPBACK, self.port),
                                       trace_pdu=self._trace)
        await self._server.serve_forever(background=True)

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        assert wait_for(lambda: port_open(self.port), 5), "pymodbus server did not start"

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(5)
            self._server = None
        wait_for(lambda: not port_open(self.port), 2)

    def set_register(self, address: int, value: int) -> None:
        """Change a holding register from outside (the PLC's encoder counter moving)."""
        from pymodbus.client import ModbusTcpClient

        if self._client is None:
            self._client = ModbusTcpClient(LOOPBACK, port=self.port, timeout=1)
            self._client.connect()
        self._client.write_register(address, value, device_id=1)

    def set_coil(self, address: int, value: bool) -> None:
        """Switch a coil from outside (the operator's button wired to the PLC)."""
        from pymodbus.client import ModbusTcpClient

        if self._client is None:
            self._client = ModbusTcpClient(LOOPBACK, port=self.port, timeout=1)
            self._client.connect()
        self._client.write_coil(address, value, device_id=1)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=2)


@pytest.fixture
def modbus_server() -> Iterator[ModbusPeer]:
    need_module("pymodbus", 'pymodbus is not installed (pip install "edgead[signals]")')
    peer = ModbusPeer(free_port())
    yield peer
    peer.close()


# ---------------------------------------------------------------- mosquitto broker


class Broker:
    """Debian's mosquitto on 127.0.0.1:port with persistence, so a restart keeps subscribers' sessions."""

    def __init__(self, binary: str, root: Path, listener_lines: list[str] | None = None) -> None:
        self.binary, self.root, self.port = binary, root, free_port()
        (root / "data").mkdir(parents=True)
        lines = [f"listener {self.port} {LOOPBACK}", *(listener_lines or ["allow_anonymous true"]),
                 "persistence true", f"persistence_location {root / 'data'}/", f"log_dest file {root / 'mosquitto.log'}"]
        if os.geteuid() == 0:
            lines.append("user root")       # else mosquitto drops to a user that cannot write the temp dir
        self.conf = root / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        if not wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, 10) or self.proc.poll() is not None:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            log = (self.root / "mosquitto.log").read_text() if (self.root / "mosquitto.log").exists() else ""
            raise RuntimeError(f"mosquitto did not start: {err} {log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    need_module("paho.mqtt", 'paho-mqtt is not installed (pip install "edgead[signals]")')
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("the mosquitto binary is not installed (apt-get install -y mosquitto)")
    broker = Broker(binary, tmp_path / "broker")
    yield broker
    broker.stop()


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def mosquitto_tls(tmp_path: Path) -> Iterator[tuple[Broker, Path]]:
    """mosquitto with TLS (a throw-away CA, server cert for IP 127.0.0.1) and a password file
    (user "line1", password "s3cret"); yields the broker and the CA certificate."""
    need_module("paho.mqtt", 'paho-mqtt is not installed (pip install "edgead[signals]")')
    binary, openssl, passwd = mosquitto_binary(), shutil.which("openssl"), shutil.which("mosquitto_passwd")
    if binary is None or passwd is None:
        pytest.skip("the mosquitto binary is not installed (apt-get install -y mosquitto)")
    if openssl is None:
        pytest.skip("openssl is not installed: it makes the test certificates (apt-get install -y openssl)")
    d = tmp_path / "tls"
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run(openssl, "req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-days", "2",
         "-subj", "/CN=edgead test CA")
    _run(openssl, "req", *ec, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"), "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _run(openssl, "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
         "-CAcreateserial", "-out", str(d / "server.pem"), "-days", "2", "-extfile", str(d / "san.ext"))
    _run(passwd, "-c", "-b", str(d / "passwd"), "line1", "s3cret")
    os.chmod(d / "passwd", 0o600)
    broker = Broker(binary, tmp_path / "broker", [
        f"cafile {d / 'ca.pem'}", f"certfile {d / 'server.pem'}", f"keyfile {d / 'server.key'}",
        "allow_anonymous false", f"password_file {d / 'passwd'}"])
    yield broker, d / "ca.pem"
    broker.stop()


class Subscriber:
    """A persistent-session subscriber (clean_session False, qos 1) that survives broker restarts."""

    def __init__(self, port: int, topics: list[str], client_id: str = "edgead-test-sub") -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[float, str, bytes, bool]] = []
        self.connected = threading.Event()
        self._topics = topics
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.on_connect = self._on_connect
        c.on_message = lambda cl, ud, m: self.messages.append((time.monotonic(), m.topic, m.payload, m.retain))
        c.on_disconnect = lambda *a: self.connected.clear()
        c.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]
        c.connect(LOOPBACK, port, keepalive=10)
        c.loop_start()
        self.client = c
        assert self.connected.wait(5), "test subscriber could not connect"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        for t in self._topics:
            client.subscribe(t, qos=1)
        time.sleep(0.05)
        self.connected.set()

    def payloads(self, topic: str) -> list[bytes]:
        return [p for _, t, p, _ in list(self.messages) if t == topic]

    def events(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.payloads(topic)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def outbox_ids(folder: Path) -> list[str]:
    """The ids of the events waiting in an outbox folder, in their order (read from the files)."""
    from edgead.signals.outbox import load_acks, parse_record, segment_paths

    acked_to, listed = load_acks(folder)
    recs = [parse_record(line) for _, p in segment_paths(folder) for line in p.read_bytes().splitlines()]
    return [r.event_id for r in recs if r is not None and r.n > acked_to and r.n not in listed]


# ---------------------------------------------------------------- HTTP peer


class HttpPeer:
    """ThreadingHTTPServer on 127.0.0.1: answers `fail_status` to the first `fail_first` posts, sleeps `delay_s`."""

    def __init__(self, port: int = 0) -> None:
        peer = self
        self.fail_first = 0
        self.fail_status = 500
        self.delay_s = 0.0
        self.attempts = 0
        self.received: list[tuple[float, dict[str, Any], dict[str, str]]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                t = time.monotonic()
                peer.attempts += 1
                if peer.delay_s:
                    time.sleep(peer.delay_s)
                if peer.attempts <= peer.fail_first:
                    self.send_response(peer.fail_status)
                    self.end_headers()
                    return
                peer.received.append((t, json.loads(body), dict(self.headers)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{LOOPBACK}:{self.port}/edgead/events"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_peer() -> Iterator[HttpPeer]:
    peer = HttpPeer()
    yield peer
    peer.close()


# ---------------------------------------------------------------- serial: a pty pair


class PtyPeer:
    """The master side of a pty: the sink opens `path` (the slave) with pyserial; we read here."""

    def __init__(self) -> None:
        import tty

        self.master, self._slave = os.openpty()
        tty.setraw(self.master)
        self.path = os.ttyname(self._slave)
        self._buf = b""
        self._lines: list[tuple[float, str]] = []

    def read_lines(self, n: int, timeout: float = 2.0) -> list[tuple[float, str]]:
        """The next n lines, each with the time its last byte was read."""
        deadline = time.monotonic() + timeout
        while len(self._lines) < n and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                self._buf += os.read(self.master, 4096)
                t = time.monotonic()
                while b"\n" in self._buf:
                    line, self._buf = self._buf.split(b"\n", 1)
                    self._lines.append((t, line.decode()))
        out, self._lines = self._lines[:n], self._lines[n:]
        return out

    def close(self) -> None:
        for fd in (self.master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def pty_peer() -> Iterator[PtyPeer]:
    need_module("serial", 'pyserial is not installed (pip install "edgead[signals]")')
    peer = PtyPeer()
    yield peer
    peer.close()


# ---------------------------------------------------------------- stuck peers: any I/O to them waits


@pytest.fixture
def tcp_black_hole() -> Iterator[int]:
    """A port that completes the TCP handshake (in the kernel's backlog) and never answers: a hung PLC."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        s.listen(64)
        yield int(s.getsockname()[1])


def fill_pty(path: str) -> None:
    """Fill a pty's buffer from the slave side: with nobody reading the master, the next write blocks."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        while True:
            os.write(fd, b"\0" * 1024)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)


class StuckFifo:
    """A named pipe filled to the brim: a file (a log on a stalled disk) whose writes block until release()."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self._reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)   # so a writer can open it at once
        self._filler = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            while True:
                os.write(self._filler, b"\n" * 4096)
        except BlockingIOError:
            pass
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def release(self) -> None:
        """Drain from now on: blocked writes go through."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="stuck-fifo-drain", daemon=True)
            self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            if select.select([self._reader], [], [], 0.05)[0]:
                try:
                    os.read(self._reader, 65536)
                except BlockingIOError:
                    pass

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        os.close(self._filler)
        os.close(self._reader)
