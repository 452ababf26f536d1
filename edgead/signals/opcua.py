"""OPC UA output: edgead writes its results into variables of the plant's OPC UA server (MES/SCADA).

A client that writes, not a server of its own. The MES or SCADA server is what the plant already
runs, secures and backs up: its engineers define the nodes (names, types, access rights) and
edgead fills them, like any other station. The output contract holds only that way: a write is
answered by the peer, so "delivered", "not delivered", "unreachable at start" and "lost mid-run"
mean what they mean for the other outputs (a server of our own never knows whether anybody
read it). And the inspection box opens no listening port on the plant network.

State, not events. Variables hold a value, not a queue: a reader that samples slower than the
line sees the latest part, so the durable outbox (which keeps every event) is not used. What
makes gaps visible instead are the counters: `parts` and `rejects` count since this run started,
so a reader sees how many parts passed between two samples, and a reconnect writes the current
state at once. A part whose state never reached the server (down until the run ended) is counted
by `undelivered()`, and the alarm is raised while the server is away. For every part as an event,
use an mqtt or webhook output beside this one.

Nodes (`nodes:` or `node_prefix:`): event_id, seq, decision, score, threshold, reason, wall_time
(the last part, or the last reject with `per_part: false`), parts, rejects, status ("ok", "alarm"
while an output has failed, "stopped" after a clean close) and alarm (the alarm's text, "" when
none). Each value is converted to the node's own data type, read at connect (Boolean, integers,
Float/Double, String, DateTime), so the server's type checks pass.

asyncua is asyncio: its event loop runs on this output's own thread; reject() only updates the
state under a lock and wakes that thread, so the run loop never waits for the network.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import math
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional
from urllib.parse import urlsplit

from edgead.errors import EdgeADError
from edgead.protocols import InspectionEvent, SinkHealth
from edgead.signals.base import SinkBase
from edgead.signals.config import OpcUaConfig, opcua_nodes, resolve_secret
from edgead.signals.log import utc_now

INSTALL = 'pip install "edgead[plant]" (asyncua needs Python 3.10 or newer: JetPack 6)'
PART_FIELDS = ("event_id", "seq", "decision", "score", "threshold", "reason", "wall_time")
SERVER_TIME = "i=2258"          # Server.ServerStatus.CurrentTime: read as the heartbeat, on every server
AUTH_ERRORS = ("BadUserAccessDenied", "BadIdentityTokenRejected", "BadIdentityTokenInvalid")
SECURITY_ERRORS = ("BadSecurityPolicyRejected", "BadSecurityChecksFailed", "BadCertificateInvalid",
                   "BadCertificateUntrusted", "BadCertificateUriInvalid", "BadSecurityModeRejected")


def asyncua_api() -> Any:
    try:
        import asyncua
    except ImportError:
        raise EdgeADError("opcua output: asyncua is not installed", INSTALL) from None
    return asyncua


class _NodeProblem(Exception):
    """A configured node is missing, of a type edgead cannot write, or refused a write."""


class OpcUaSink(SinkBase):
    """The last part, counters, status and alarm text, written to an OPC UA server from the output's own thread."""

    def __init__(self, cfg: OpcUaConfig) -> None:
        self.asyncua = asyncua_api()
        url = urlsplit(cfg.url)
        super().__init__(cfg.name, cfg.url)
        self.cfg = cfg
        self.host, self.port = url.hostname or "", url.port or 4840
        self.password = resolve_secret("opcua", cfg.name, "password", cfg.password, cfg.password_env)
        for key in ("certificate", "private_key", "server_certificate"):
            path = getattr(cfg, key)
            if path and not Path(path).is_file():
                raise EdgeADError(f"opcua output '{cfg.name}': {key} {path} is not a file",
                                  "give the path of a PEM or DER file")
        self.nodes = opcua_nodes(cfg)
        self._lock = threading.Lock()
        self.parts = self.rejects = 0
        self._last: InspectionEvent | None = None
        self._status, self._alarm = "ok", ""
        self._version = 0                   # +1 per change of what the nodes should hold
        self._written = (-1, 0, 0)          # (version, parts, rejects) the server holds
        self._client: Any = None
        self._types: Dict[str, Any] = {}
        self._refused = False               # the last write was refused: a heartbeat does not make it healthy
        self._connected = threading.Event()
        self._closing = False
        self._health = SinkHealth(False, f"connecting to {cfg.url}")
        self._loop = asyncio.new_event_loop()
        self._wake: Optional[asyncio.Event] = None
        self._thread = threading.Thread(target=self._run, name=f"edgead-{cfg.name}-opcua", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ run loop side

    def reject(self, event: InspectionEvent) -> None:
        with self._lock:
            self.parts += 1
            self.rejects += 1 if event.rejected else 0
            if self.wants(event, self.cfg.per_part):
                self._last = event
            self._version += 1
        self._kick()

    def alarm(self, sink_name: str, detail: str) -> None:
        self._set_status("alarm", f"{sink_name}: {detail}")

    def clear_alarm(self) -> None:
        self._set_status("ok", "")

    def _set_status(self, status: str, text: str) -> None:
        with self._lock:
            if (self._status, self._alarm) == (status, text) or self._status == "stopped":
                return
            self._status, self._alarm = status, text
            self._version += 1
        self._kick()

    def _kick(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wake_up)
        except RuntimeError:                # the loop has ended (closing): the state stays counted
            pass

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def undelivered(self) -> dict[str, object] | None:
        """Parts whose state never reached the server (it was away until the end)."""
        with self._lock:
            n, r = self.parts - self._written[1], self.rejects - self._written[2]
        if n <= 0:
            return None
        return {"count": n, "where": None, "what": "parts not written to the OPC UA server", "rejects": r,
                "why": self.health().detail or "the server did not take the last state"}

    # ------------------------------------------------------------------ the output's own thread

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        backoff = self.cfg.reconnect_min_ms / 1000
        while not self._closing:
            try:
                client = await self._open()
            except Exception as err:
                self._fail(self._why(err))
                await self._pause(backoff)
                backoff = min(backoff * 2, self.cfg.reconnect_max_ms / 1000)
                continue
            backoff = self.cfg.reconnect_min_ms / 1000
            try:
                await self._serve(client)
            except Exception as err:
                if not self._closing:
                    self._fail(self._why(err, lost=True))
            finally:
                self._connected.clear()
                self._client = None
                await self._quiet_disconnect(client)

    async def _pause(self, seconds: float) -> None:
        """Wait before the next connect; close() ends the wait."""
        deadline = time.monotonic() + seconds
        while not self._closing and time.monotonic() < deadline:
            await self._wait_wake(min(0.1, deadline - time.monotonic()))

    async def _wait_wake(self, timeout: float) -> None:
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.0, timeout))
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    async def _open(self) -> Any:
        """Connect (security, user), then read every node's data type: a missing node is found now."""
        ua, cfg = self.asyncua.ua, self.cfg
        client = self.asyncua.Client(cfg.url, timeout=cfg.timeout_ms / 1000)
        if cfg.application_uri:
            client.application_uri = cfg.application_uri
        if cfg.username:
            client.set_user(cfg.username)
            client.set_password(self.password)
        try:
            if cfg.security_policy != "None":
                from asyncua.crypto import security_policies

                await client.set_security(getattr(security_policies, f"SecurityPolicy{cfg.security_policy}"),
                                          certificate=cfg.certificate, private_key=cfg.private_key,
                                          server_certificate=cfg.server_certificate or None,
                                          mode=getattr(ua.MessageSecurityMode, cfg.security_mode))
            await asyncio.wait_for(client.connect(), 3 * cfg.timeout_ms / 1000)
            self._types = {f: await self._node_type(client, f, n) for f, n in self.nodes.items()}
        except BaseException:
            await self._quiet_disconnect(client)
            raise
        return client

    async def _node_type(self, client: Any, field: str, node_id: str) -> Any:
        try:
            vt = await client.get_node(node_id).read_data_type_as_variant_type()
        except self.asyncua.ua.UaStatusCodeError as err:
            raise _NodeProblem(f"node {node_id} ({field}): {type(err).__name__}: does it exist on the server?") from None
        if _convert(field, None, vt) is _UNWRITABLE:
            raise _NodeProblem(f"node {node_id} ({field}) has data type {vt.name}: edgead writes Boolean, integer, "
                               "Float, Double, String or DateTime nodes")
        return vt

    async def _serve(self, client: Any) -> None:
        """Write the state at connect and at every change; read the server's clock every heartbeat_ms."""
        self._client = client
        self._connected.set()
        if await self._write_state(client, self._snapshot()):
            self._ok()
        beat = self.cfg.heartbeat_ms / 1000
        next_beat = time.monotonic() + beat
        while True:
            await self._wait_wake(next_beat - time.monotonic())
            snap = self._snapshot()
            if snap["version"] != self._written[0] and await self._write_state(client, snap) and not self._health.ok:
                self._ok()
            if self._closing:
                return
            if time.monotonic() >= next_beat:
                await asyncio.wait_for(client.get_node(SERVER_TIME).read_value(), self.cfg.timeout_ms / 1000)
                next_beat = time.monotonic() + beat
                if not self._health.ok and not self._refused:
                    self._ok()

    def _snapshot(self) -> Dict[str, Any]:
        with self._lock:
            return {"version": self._version, "parts": self.parts, "rejects": self.rejects, "last": self._last,
                    "status": self._status, "alarm": self._alarm}

    async def _write_state(self, client: Any, snap: Dict[str, Any]) -> bool:
        """One Write request with every node; the parts it covers count as delivered. False when refused."""
        values: Dict[str, Any] = {"parts": snap["parts"], "rejects": snap["rejects"], "status": snap["status"],
                                  "alarm": snap["alarm"]}
        last = snap["last"]
        if last is not None:
            values.update(_part_values(last))
        written = [f for f in self.nodes if f in values]
        try:
            await self._write(client, {f: values[f] for f in written})
        except _NodeProblem as err:
            self._refused = True             # the link is up: tried again at the next change or heartbeat
            self._fail(str(err))
            return False
        self._refused = False
        n = snap["parts"] - self._written[1]
        self._written = (snap["version"], snap["parts"], snap["rejects"])
        if n > 0:
            self._delivered(n)
        return True

    async def _write(self, client: Any, values: Dict[str, Any]) -> int:
        ua = self.asyncua.ua
        if not values:
            return 0
        ids = [client.get_node(self.nodes[f]).nodeid for f in values]
        dvs = [ua.DataValue(ua.Variant(_convert(f, v, self._types[f]), self._types[f])) for f, v in values.items()]
        results = await asyncio.wait_for(client.uaclient.write_attributes(ids, dvs, ua.AttributeIds.Value),
                                         self.cfg.timeout_ms / 1000)
        bad = [f"{self.nodes[f]} ({f}): {r.name}" for f, r in zip(values, results) if not r.is_good()]
        if bad:
            raise _NodeProblem(f"{self.cfg.url} refused the write of {', '.join(bad)} (is the node writable for "
                               f"{self.cfg.username or 'an anonymous client'}?)")
        return len(values)

    async def _quiet_disconnect(self, client: Any) -> None:
        try:
            await asyncio.wait_for(client.disconnect(), self.cfg.timeout_ms / 1000)
        except Exception:                   # a dead server cannot be told goodbye: the socket is gone either way
            try:
                client.disconnect_socket()
            except Exception:
                pass

    def _why(self, err: BaseException, lost: bool = False) -> str:
        """One line on what went wrong, in the electrician's words."""
        name, cfg = type(err).__name__, self.cfg
        if isinstance(err, _NodeProblem):
            return str(err)
        if lost:
            return f"connection to {cfg.url} lost ({name}: {err}); reconnecting"
        if name in AUTH_ERRORS:
            if not cfg.username:
                return f"{cfg.url} refused an anonymous session ({name}): set username and password"
            return f"{cfg.url} refused user {cfg.username!r}: wrong user name or password ({name})"
        if name in SECURITY_ERRORS:
            return (f"{cfg.url} refused the secure channel ({name}): does the server trust edgead's certificate, "
                    f"and does it offer security_policy {cfg.security_policy} {cfg.security_mode}?")
        if isinstance(err, asyncio.TimeoutError):
            return f"no answer from {cfg.url} within {cfg.timeout_ms:.0f} ms"
        if isinstance(err, OSError):
            return f"cannot connect to {self.host}:{self.port}: {err.strerror or err}"
        if "endpoint" in str(err).lower():
            return (f"{cfg.url} offers no endpoint with security_policy {cfg.security_policy} {cfg.security_mode}: "
                    f"{err}")
        return f"{name}: {err}"

    # ------------------------------------------------------------------ test, close

    def fire_test(self) -> str:
        """Write a test part (decision "test", seq 0) to the last-part nodes now; counters are left alone."""
        timeout = 3 * self.cfg.timeout_ms / 1000
        if not self._connected.is_set() and self._failed:   # refused already (password, node): no use waiting
            raise ConnectionError(self.health().detail)
        if not self._connected.wait(timeout):
            raise ConnectionError(self.health().detail or f"cannot connect to {self.cfg.url}")
        test = InspectionEvent(seq=0, t_capture=time.monotonic(), wall_time=utc_now(), decision="test",
                               score=None, threshold=None, reason="edgead signals test")
        with self._lock:
            values = {"status": self._status, "alarm": self._alarm}
        values.update(_part_values(test))

        async def write() -> int:
            if self._client is None:
                raise ConnectionError(self.health().detail or f"not connected to {self.cfg.url}")
            return await self._write(self._client, {f: values[f] for f in self.nodes if f in values})

        n = asyncio.run_coroutine_threadsafe(write(), self._loop).result(timeout)
        return f"wrote a test part to {n} node{'s' if n != 1 else ''} on {self.cfg.url}"

    def close(self, drain_s: float = 2.0) -> None:
        """Write the last state with status "stopped" (if the server is there), then disconnect."""
        with self._lock:
            self._status = "stopped"
            self._version += 1
        deadline = time.monotonic() + (drain_s if self._connected.is_set() else 0.0)
        self._kick()
        while (self._connected.is_set() and not self._refused and self._written[0] != self._version
               and time.monotonic() < deadline):
            time.sleep(0.01)
        self._closing = True
        self._kick()
        self._thread.join(timeout=drain_s + 3 * self.cfg.timeout_ms / 1000)


_UNWRITABLE = object()
_INTS = ("SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64")


def _part_values(event: InspectionEvent) -> Dict[str, Any]:
    return {"event_id": event.event_id or "", "seq": event.seq, "decision": event.decision, "score": event.score,
            "threshold": event.threshold, "reason": event.reason or "", "wall_time": event.wall_time}


def _convert(field: str, value: Any, vt: Any) -> Any:
    """The value as the node's type wants it; _UNWRITABLE for a type edgead does not write."""
    kind = getattr(vt, "name", str(vt))
    if kind == "Boolean":
        return {"decision": value in ("reject", "safe_reject"), "status": value == "ok",
                "alarm": bool(value)}.get(field, bool(value))
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind in _INTS:
        return int(number) if number is not None and math.isfinite(number) else 0
    if kind in ("Float", "Double"):
        return float(number) if number is not None else float("nan")
    if kind == "String":
        return "" if value is None else str(value)
    if kind == "DateTime":
        return _timestamp(value)
    return _UNWRITABLE


def _timestamp(value: Any) -> _dt.datetime:
    """The event's ISO wall time as a UTC datetime (now, for a value that is not one)."""
    try:
        return _dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(_dt.timezone.utc)
    except ValueError:
        return _dt.datetime.now(_dt.timezone.utc)

