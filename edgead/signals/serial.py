"""Serial output: a text line per reject (e.g. "REJECT 42\\n") to a PLC or sorter controller.

The line goes out delay_ms after the capture, like a pulse (timed by the Scheduler); with
`end_template` a second line marks the end of the pulse_ms window. pyserial is imported only when
a serial output is configured. A port that vanishes (USB adapter unplugged) is reopened on the
next write, at most once a second.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from edgead.errors import EdgeADError
from edgead.protocols import InspectionEvent
from edgead.signals.config import SerialConfig, render_template
from edgead.signals.scheduler import Clock, Wait
from edgead.signals.timed import TimedSink

REOPEN_S = 1.0


def _pyserial() -> Any:
    try:
        import serial
    except ImportError:
        raise EdgeADError("serial output: pyserial is not installed", 'pip install "edgead[signals]"') from None
    if not hasattr(serial, "Serial"):
        raise EdgeADError("serial output: the installed 'serial' module is not pyserial",
                          "pip uninstall serial; pip install pyserial")
    return serial


class SerialSink(TimedSink):
    def __init__(self, cfg: SerialConfig, *, clock: Clock | None = None, wait: Wait | None = None,
                 start: bool = True) -> None:
        self._serial = _pyserial()
        self.scfg = cfg
        self._port: Any = None
        self._io = threading.Lock()
        self._next_open = 0.0
        self._last: InspectionEvent | None = None
        super().__init__(cfg.name, f"{cfg.port} @ {cfg.baudrate}", cfg, has_end=bool(cfg.end_template),
                         clock=clock, wait=wait, start=start)
        if self._open():
            self._opened()

    def _open(self) -> bool:
        self._next_open = time.monotonic() + REOPEN_S
        try:
            self._port = self._serial.Serial(self.scfg.port, self.scfg.baudrate, timeout=0,
                                             write_timeout=self.scfg.write_timeout_ms / 1000)
            return True
        except (self._serial.SerialException, OSError, ValueError) as err:
            self._port = None
            self._fail(f"cannot open {self.scfg.port}: {err}")
            return False

    def write_line(self, text: str) -> None:
        with self._io:
            if self._port is None and (time.monotonic() < self._next_open or not self._open()):
                raise OSError(f"{self.scfg.port} is not open ({self._health.detail})")
            try:
                self._port.write(text.encode("utf-8"))
            except (self._serial.SerialException, OSError) as err:
                self._port.close()
                self._port = None
                raise OSError(f"write to {self.scfg.port} failed: {err}") from None
            self.stats["lines"] += 1

    def _start(self, events: list[InspectionEvent]) -> None:
        for event in events:
            self._extend(event)

    def _extend(self, event: InspectionEvent) -> None:
        self._last = event
        self.write_line(render_template(self.scfg.template, event))

    def _end(self) -> None:
        if self._last is not None:
            self.write_line(render_template(self.scfg.end_template, self._last))

    def fire_test(self) -> str:
        """Send the reject line for a test part (seq 0) now."""
        event = InspectionEvent(seq=0, t_capture=time.monotonic(), wall_time="", decision="test",
                                score=None, threshold=None, reason="edgead signals test")
        line = render_template(self.scfg.template, event)
        self.write_line(line)
        if self.scfg.end_template:
            time.sleep(self.scfg.pulse_ms / 1000)
            self.write_line(render_template(self.scfg.end_template, event))
        return f"sent {line!r} to {self.scfg.port}"

    def close(self) -> None:
        self.close_timing()
        with self._io:
            if self._port is not None:
                self._port.close()
                self._port = None
