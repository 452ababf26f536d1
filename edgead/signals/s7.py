"""Siemens S7 reject output: a DB bit or word in the PLC (S7-300/400/1200/1500, ISO-on-TCP port 102).

`address: DB10.DBX2.0` writes one bit (a bit write: the PLC's other bits of that byte are not
touched, so the PLC program may reset its own bits in the same byte), `address: DB10.DBW4` a
16-bit word (`value` on set, `reset_value` on reset). Pulse or set mode, heartbeat word
(`heartbeat_address`) or read-back, reconnect with backoff: see plc_sink. On an S7-1200/1500 the
DB needs "optimized block access" off and the CPU "permit PUT/GET communication" on; the error
says so when the PLC refuses.

python-snap7 3.x is a pure-Python client (no native library) and needs Python 3.10; older
releases (the only ones for Python 3.8) wrap a native library with another API, so they are
refused with a hint rather than half-used.
"""

from __future__ import annotations

from typing import Any, Optional

from edgead.errors import EdgeADError
from edgead.signals.config import S7Config, parse_s7_address
from edgead.signals.plc_sink import PlcLink, PlcSink, Refused
from edgead.signals.scheduler import Clock, Wait

INSTALL = 'pip install "edgead[plant]" (python-snap7 3.x needs Python 3.10 or newer: JetPack 6)'


def snap7_api() -> Any:
    """The snap7 module (3.x API), or an EdgeADError saying what to install."""
    try:
        import snap7
    except ImportError:
        raise EdgeADError("s7 output: python-snap7 is not installed", INSTALL) from None
    if not all(hasattr(snap7, n) for n in ("Client", "Area", "WordLen")) or not hasattr(snap7, "error"):
        raise EdgeADError(f"s7 output: python-snap7 {getattr(snap7, '__version__', '?')} is too old: edgead needs 3.x",
                          INSTALL)
    return snap7


class S7Link(PlcLink):
    """One S7 connection: the reject bit/word, the heartbeat word, read-back."""

    def __init__(self, cfg: S7Config) -> None:
        self.snap7 = snap7_api()
        self.cfg = cfg
        self.db, self.byte, self.bit = parse_s7_address(cfg.address) or (0, 0, None)
        beat = parse_s7_address(cfg.heartbeat_address) if cfg.heartbeat_address else None
        self.beat_at: Optional[tuple[int, int]] = (beat[0], beat[1]) if beat else None
        self.target = f"{cfg.host}:{cfg.port} rack {cfg.rack} slot {cfg.slot} {cfg.address.upper()}"
        self._client: Any = None

    def open(self) -> None:
        c = self.cfg
        client = self.snap7.Client()
        try:
            client.connect(c.host, c.rack, c.slot, c.port)
        except Exception as err:
            raise ConnectionError(f"cannot connect to {c.host}:{c.port} (rack {c.rack}, slot {c.slot}): {err}") from None
        conn = getattr(client, "connection", None)
        sock = getattr(conn, "socket", None)
        if sock is not None:                 # every request answered within timeout_ms, or the link is lost
            sock.settimeout(c.timeout_ms / 1000)
            conn.timeout = c.timeout_ms / 1000
        self._client = client
        try:
            self._read_back()                # a DB that is missing or too small is found now, not at the first reject
        except Exception:
            self.close()
            raise

    def _request(self, fn: str, *args: Any) -> Any:
        err_mod = self.snap7.error
        if self._client is None:
            raise ConnectionError("not connected")
        try:
            return getattr(self._client, fn)(*args)
        except (err_mod.S7StalePacketError, err_mod.S7PacketLostError):
            raise
        except err_mod.S7ProtocolError as err:
            raise Refused(f"{self.target}: the PLC refused {fn}: {err} (does the DB exist and is it big enough? "
                          "S7-1200/1500: optimized block access off, PUT/GET permitted)") from None

    def write(self, on: bool) -> None:
        s7 = self.snap7
        if self.bit is not None:
            self._request("write_area", s7.Area.DB, self.db, self.byte * 8 + self.bit, bytearray([1 if on else 0]),
                          s7.WordLen.Bit)
        else:
            value = self.cfg.value if on else self.cfg.reset_value
            self._request("db_write", self.db, self.byte, bytearray(value.to_bytes(2, "big")))

    def _read_back(self) -> None:
        if self.bit is not None:
            self._request("read_area", self.snap7.Area.DB, self.db, self.byte * 8 + self.bit, 1, self.snap7.WordLen.Bit)
        else:
            self._request("db_read", self.db, self.byte, 2)

    def beat(self, n: int) -> None:
        if self.beat_at is None:
            self._read_back()
        else:
            self._request("db_write", self.beat_at[0], self.beat_at[1], bytearray((n & 0xFFFF).to_bytes(2, "big")))

    def close(self) -> None:
        client, self._client = self._client, None
        self.close_quietly(client, "disconnect")


class S7Sink(PlcSink):
    """Reject pulses on a DB bit or word of a Siemens S7 PLC."""

    def __init__(self, cfg: S7Config, *, clock: Clock | None = None, wait: Wait | None = None,
                 start: bool = True) -> None:
        super().__init__(cfg, S7Link(cfg), clock=clock, wait=wait, start=start)
