"""GPIO reject output: a line on the board drives the actuator's relay or valve.

Two backends: the Linux GPIO character device through `gpiod` (libgpiod v2 bindings; any board,
Jetsons included) and `Jetson.GPIO`. Both are imported only when a gpio output is configured, with
an install hint when missing. Pins: `pin` (reject), optional `alarm_pin` (on while an output has
failed, latched until reset) and `ready_pin` (on while inspecting). `active_low` inverts all three.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from edgead.errors import EdgeADError
from edgead.protocols import InspectionEvent
from edgead.signals.config import GpioConfig
from edgead.signals.gpiod_loader import import_gpiod
from edgead.signals.scheduler import Clock, Wait
from edgead.signals.timed import TimedSink


class GpioBackend(Protocol):
    def set(self, pin: int, active: bool) -> None: ...

    def close(self) -> None: ...


class GpiodBackend:
    """Output lines requested from /dev/gpiochipN; the kernel applies active-low."""

    def __init__(self, chip: str, pins: list[int], active_low: bool) -> None:
        gpiod = import_gpiod()
        from gpiod.line import Direction, Value

        self._value = {True: Value.ACTIVE, False: Value.INACTIVE}
        settings = gpiod.LineSettings(direction=Direction.OUTPUT, output_value=Value.INACTIVE,
                                      active_low=active_low)
        try:
            self._request = gpiod.request_lines(chip, consumer="edgead", config={tuple(pins): settings})
        except (OSError, ValueError) as err:
            raise OSError(f"cannot request lines {pins} on {chip}: {err} "
                          "(is the chip right, the line free, and are you in the gpio group?)") from err
        self._pins = pins

    def set(self, pin: int, active: bool) -> None:
        self._request.set_value(pin, self._value[active])

    def close(self) -> None:
        try:
            for pin in self._pins:
                self.set(pin, False)
        finally:
            self._request.release()


class JetsonBackend:
    """Jetson.GPIO (BOARD or BCM numbering); active-low applied here."""

    def __init__(self, pins: list[int], active_low: bool, numbering: str = "BOARD") -> None:
        try:
            import Jetson.GPIO as GPIO  # type: ignore[import-not-found]
        except ImportError:
            raise EdgeADError("gpio output: Jetson.GPIO is not installed",
                              "on a Jetson: pip install Jetson.GPIO (JetPack usually ships it), "
                              "or use backend: gpiod") from None
        self._gpio, self._pins, self._active_low = GPIO, pins, active_low
        GPIO.setwarnings(False)
        GPIO.setmode(GPIO.BOARD if numbering == "BOARD" else GPIO.BCM)
        for pin in pins:
            GPIO.setup(pin, GPIO.OUT, initial=self._level(False))

    def _level(self, active: bool) -> Any:
        return self._gpio.HIGH if active != self._active_low else self._gpio.LOW

    def set(self, pin: int, active: bool) -> None:
        self._gpio.output(pin, self._level(active))

    def close(self) -> None:
        try:
            for pin in self._pins:
                self.set(pin, False)
        finally:
            self._gpio.cleanup(self._pins)


def open_backend(cfg: GpioConfig, pins: list[int]) -> GpioBackend:
    if cfg.backend == "jetson":
        return JetsonBackend(pins, cfg.active_low, cfg.numbering)
    return GpiodBackend(cfg.chip, pins, cfg.active_low)


class GpioSink(TimedSink):
    """Reject pulse on `pin`, timed from the capture; alarm and ready lines beside it.

    `backend` may be injected (tests, or another GPIO library): anything with set(pin, active) and close().
    """

    def __init__(self, cfg: GpioConfig, backend: GpioBackend | None = None, *,
                 clock: Clock | None = None, wait: Wait | None = None, start: bool = True) -> None:
        pin = int(cfg.pin if cfg.pin is not None else -1)
        where = cfg.chip if cfg.backend == "gpiod" else f"Jetson {cfg.numbering}"
        self.pin, self.alarm_pin, self.ready_pin = pin, cfg.alarm_pin, cfg.ready_pin
        self._io = threading.Lock()
        self.backend: GpioBackend | None = backend
        super().__init__(cfg.name, f"{where} pin {pin}", cfg, clock=clock, wait=wait, start=start)
        pins = [p for p in (pin, cfg.alarm_pin, cfg.ready_pin) if p is not None]
        if self.backend is None:
            try:
                self.backend = open_backend(cfg, pins)
            except OSError as err:
                self._fail(str(err))
                return
        self._opened()

    def _drive(self, pin: int | None, active: bool) -> None:
        if pin is None:
            return
        if self.backend is None:
            raise OSError(f"{self.target}: the GPIO lines could not be opened ({self._health.detail})")
        with self._io:
            self.backend.set(pin, active)

    def _start(self, events: list[InspectionEvent]) -> None:
        self._drive(self.pin, True)

    def _end(self) -> None:
        self._drive(self.pin, False)

    def set_ready(self, ready: bool) -> None:
        self._drive(self.ready_pin, ready)

    def alarm(self, sink_name: str, detail: str) -> None:
        self._drive(self.alarm_pin, True)

    def clear_alarm(self) -> None:
        self._drive(self.alarm_pin, False)

    def fire_test(self, width_s: float | None = None) -> str:
        """One pulse now (no delay), for checking the wiring."""
        width = self.cfg.pulse_ms / 1000 if width_s is None else width_s
        self._drive(self.pin, True)
        time.sleep(max(width, 0.1 if self.cfg.encoder is not None else 0.0))
        self._drive(self.pin, False)
        return f"pulsed {self.target} for {max(width, 0.0) * 1000:.0f} ms"

    def close(self) -> None:
        self.close_timing()
        if self.backend is not None:
            with self._io:
                self.backend.close()
            self.backend = None
