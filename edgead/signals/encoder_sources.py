"""Where an encoder's count comes from: a counter register in the PLC, or edges counted on a GPIO line.

`build_encoder` opens the source that an `encoder:` mapping names and wraps it in an EncoderTracker.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from edgead.errors import EdgeADError
from edgead.signals.config import EncoderConfig
from edgead.signals.encoder import EncoderTracker
from edgead.signals.gpiod_loader import import_gpiod
from edgead.signals.modbus_link import ModbusLink


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


class GpiodEdgeCounter:
    """Encoder source: counts edges on one input line through gpiod edge events, on its own thread.

    `request` may be injected (tests): an object with wait_edge_events(timeout_s) -> bool,
    read_edge_events() -> list and release().
    """

    def __init__(self, chip: str, line: int, edge: str = "rising", request: Any = None,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        if request is None:
            gpiod = import_gpiod()
            from gpiod.line import Direction, Edge

            which = {"rising": Edge.RISING, "falling": Edge.FALLING, "both": Edge.BOTH}[edge]
            settings = gpiod.LineSettings(direction=Direction.INPUT, edge_detection=which)
            try:
                request = gpiod.request_lines(chip, consumer="edgead-encoder", config={line: settings})
            except (OSError, ValueError) as err:
                raise EdgeADError(f"gpio encoder: cannot request line {line} on {chip}: {err}",
                                  "check encoder.chip / encoder.line and that you are in the gpio group") from None
        self._request = request
        self._count = 0
        self._stop = threading.Event()
        self._on_error = on_error
        self._thread = threading.Thread(target=self._run, name="edgead-gpio-encoder", daemon=True)
        self._thread.start()

    def read(self) -> int:
        return self._count

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._request.wait_edge_events(0.05):
                    self._count += len(self._request.read_edge_events())
            except Exception as err:
                if self._on_error is not None:
                    self._on_error(err)
                self._stop.wait(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._request.release()


def build_encoder(cfg: EncoderConfig, on_error: Callable[[BaseException], None] | None = None,
                  ) -> tuple[EncoderTracker, Callable[[], None]]:
    """The tracker for an `encoder:` mapping, and how to close its counter source."""
    if cfg.source == "modbus":
        counter = ModbusRegisterCounter(cfg)
        tracker = EncoderTracker(counter.read, bits=cfg.bits, poll_s=cfg.poll_ms / 1000)
        tracker.on_error = on_error
        return tracker, counter.close
    edges = GpiodEdgeCounter(cfg.chip, int(cfg.line or 0), cfg.edge, on_error=on_error)
    tracker = EncoderTracker(edges.read, bits=0, poll_s=cfg.poll_ms / 1000)
    tracker.on_error = on_error
    return tracker, edges.close
