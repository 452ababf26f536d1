"""Modbus TCP reject output: a coil or holding register in the PLC that runs the reject station.

Per reject: set, then reset pulse_ms later (`mode: pulse`), or set only and let the PLC reset it
(`mode: set`). An optional heartbeat register is incremented every heartbeat_ms so the PLC can stop
the line when edgead dies; without one the output is read back at that rate, so a lost PLC raises
the alarm before the next reject needs it. A lost connection is retried with backoff on a
maintenance thread, never inline on the pulse path (a dead host would make every pulse late).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from edgead.errors import EdgeADError
from edgead.protocols import InspectionEvent
from edgead.signals.config import EncoderConfig, ModbusConfig
from edgead.signals.timing import Clock, TimedSink, Wait


def _client_class() -> Any:
    try:
        from pymodbus.client import ModbusTcpClient
    except ImportError:
        raise EdgeADError("modbus output: pymodbus is not installed", 'pip install "edgead[signals]"') from None
    return ModbusTcpClient


class ModbusLink:
    """One Modbus TCP connection: calls serialised (pymodbus clients are not thread-safe), reconnect with backoff."""

    def __init__(self, host: str, port: int, unit: int, timeout_s: float,
                 backoff_min_s: float = 0.5, backoff_max_s: float = 10.0) -> None:
        self.host, self.port, self.unit = host, port, unit
        self._client = _client_class()(host, port=port, timeout=timeout_s, retries=0)
        self._lock = threading.Lock()
        self._backoff_min, self._backoff_max = backoff_min_s, backoff_max_s
        self._backoff = backoff_min_s
        self._next_try = 0.0
        self.last_error = ""

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    def connect(self, force: bool = False) -> bool:
        """Connect unless connected; between failures wait the backoff (doubling up to the max)."""
        with self._lock:
            if self._client.connected:
                return True
            now = time.monotonic()
            if not force and now < self._next_try:
                return False
            if self._client.connect():
                self._backoff = self._backoff_min
                self.last_error = ""
                return True
            self._next_try = now + self._backoff
            self._backoff = min(self._backoff * 2, self._backoff_max)
            self.last_error = f"cannot connect to {self.host}:{self.port} (retrying every {self._backoff:.1f} s at most)"
            return False

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One request; ConnectionError when not connected or the connection broke, OSError when refused."""
        from pymodbus.exceptions import ModbusException

        with self._lock:
            if not self._client.connected:
                raise ConnectionError(f"not connected to {self.host}:{self.port} ({self.last_error or 'reconnecting'})")
            try:
                reply = getattr(self._client, method)(*args, device_id=self.unit, **kwargs)
            except ModbusException as err:
                self._client.close()
                self.last_error = f"connection to {self.host}:{self.port} lost: {err}"
                raise ConnectionError(self.last_error) from None
            if reply.isError():
                raise OSError(f"{self.host}:{self.port} unit {self.unit} refused {method}{args}: {reply}")
            return reply

    def close(self) -> None:
        with self._lock:
            self._client.close()


class ModbusSink(TimedSink):
    """Reject pulses on a coil or holding register; heartbeat/read-back and reconnect on its own thread."""

    def __init__(self, cfg: ModbusConfig, *, clock: Clock | None = None, wait: Wait | None = None,
                 start: bool = True) -> None:
        what = f"coil {cfg.coil}" if cfg.coil is not None else f"register {cfg.register}"
        pulse = cfg.mode == "pulse"
        self.link = ModbusLink(cfg.host, cfg.port, cfg.unit, cfg.timeout_ms / 1000,
                               cfg.reconnect_min_ms / 1000, cfg.reconnect_max_ms / 1000)
        super().__init__(cfg.name, f"{cfg.host}:{cfg.port} unit {cfg.unit} {what}", cfg,
                         width_override=None if pulse else 0.0, has_end=pulse, clock=clock, wait=wait, start=start)
        self.mcfg = cfg
        self.heartbeats = 0
        self._stop = threading.Event()
        if self.link.connect(force=True):
            self._opened()
        else:
            self._fail(self.link.last_error)
        self._thread = threading.Thread(target=self._maintain, name=f"edgead-{cfg.name}-link", daemon=True)
        self._thread.start()

    def _write(self, on: bool) -> None:
        c = self.mcfg
        if c.coil is not None:
            self.link.call("write_coil", c.coil, on)
        else:
            self.link.call("write_register", int(c.register or 0), c.value if on else c.reset_value)

    def _start(self, events: list[InspectionEvent]) -> None:
        self._write(True)

    def _extend(self, event: InspectionEvent) -> None:
        if self.mcfg.mode == "set":          # one write per part: the PLC counts them
            self._write(True)

    def _end(self) -> None:
        self._write(False)

    def _maintain(self) -> None:
        """Reconnect with backoff; heartbeat (or read back the output) every heartbeat_ms."""
        c = self.mcfg
        next_beat = time.monotonic()
        while not self._stop.wait(0.05):
            if not self.link.connected:
                if self.link.connect():
                    self._opened()
                elif self._health.ok:
                    self._fail(self.link.last_error or f"not connected to {c.host}:{c.port}")
                continue
            if time.monotonic() < next_beat:
                continue
            next_beat = time.monotonic() + c.heartbeat_ms / 1000
            try:
                if c.heartbeat_register is not None:
                    self.heartbeats = (self.heartbeats + 1) & 0xFFFF
                    self.link.call("write_register", c.heartbeat_register, self.heartbeats)
                elif c.coil is not None:
                    self.link.call("read_coils", c.coil, count=1)
                else:
                    self.link.call("read_holding_registers", int(c.register or 0), count=1)
            except OSError as err:
                self._fail(str(err))

    def fire_test(self) -> str:
        """One pulse now (no delay), for checking the wiring; raises when the PLC does not take it."""
        if not self.link.connect(force=True):
            raise ConnectionError(self.link.last_error)
        self._write(True)
        if self.mcfg.mode == "set":
            return f"set {self.target} (mode set: the PLC resets it)"
        width = self.mcfg.pulse_ms / 1000 if self.encoder is None else 0.1
        time.sleep(width)
        self._write(False)
        return f"pulsed {self.target} for {width * 1000:.0f} ms"

    def close(self) -> None:
        self.close_timing()
        self._stop.set()
        self._thread.join(timeout=2)
        self.link.close()


class ModbusRegisterCounter:
    """Encoder source: the belt position counter that the PLC keeps in a register (16 or 32 bit)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        self.cfg = cfg
        self.link = ModbusLink(cfg.host, cfg.port, cfg.unit, cfg.timeout_ms / 1000, 0.2, 5.0)
        self.link.connect(force=True)

    def read(self) -> int:
        c = self.cfg
        if not self.link.connect():
            raise ConnectionError(self.link.last_error or f"not connected to {c.host}:{c.port}")
        method = "read_input_registers" if c.input_register else "read_holding_registers"
        words = self.link.call(method, int(c.register or 0), count=2 if c.bits == 32 else 1).registers
        if c.bits == 16:
            return int(words[0])
        hi, lo = (words[0], words[1]) if c.word_order == "big" else (words[1], words[0])
        return (int(hi) << 16) | int(lo)

    def close(self) -> None:
        self.link.close()
