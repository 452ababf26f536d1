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

from edgead.protocols import InspectionEvent
from edgead.signals.config import ModbusConfig
from edgead.signals.modbus_link import ModbusLink
from edgead.signals.scheduler import Clock, Wait
from edgead.signals.timed import TimedSink


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
