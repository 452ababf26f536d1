"""The operator's acknowledge button, read from the PLC: a Modbus coil or discrete input polled by a
thread of its own; its rising edge acknowledges every active alarm (as `POST /alarms/ack` and
`edgead alarm ack` do).

Run config:

    alarm_ack: {type: modbus, host: 192.168.0.10, port: 502, unit: 1, coil: 40, poll_ms: 100}
    # or discrete_input: 12 (function 2) instead of coil (function 1)

Only a rising edge counts: a bit already on when edgead starts (a latched button, a stuck wire) does not
acknowledge anything until it has been seen off. The input being unreachable is itself an alarm, and
it clears when the input answers again; parts are inspected either way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from edgead.schema import Place
from edgead.signals.modbus_link import ModbusLink


@dataclass
class AckInputConfig:
    type: str = "modbus"
    host: str = ""
    port: int = 502
    unit: int = 1
    coil: int | None = None             # read with function 1
    discrete_input: int | None = None   # read with function 2
    poll_ms: float = 100.0              # a press shorter than this may be missed: PLCs latch it for 200 ms+
    timeout_ms: float = 500.0

    def validate(self, place: Place) -> None:
        if self.type != "modbus":
            raise place.bad("type", self.type, "'modbus' (the acknowledge input is a Modbus TCP bit)")
        if not self.host:
            raise place.bad("host", self.host, "the PLC's address, e.g. 192.168.0.10")
        if (self.coil is None) == (self.discrete_input is None):
            raise place.bad("coil", self.coil, "exactly one of 'coil' or 'discrete_input'")
        address = self.coil if self.coil is not None else self.discrete_input
        if not isinstance(address, int) or address < 0:
            raise place.bad("coil" if self.coil is not None else "discrete_input", address, "an address >= 0")
        if not 10 <= self.poll_ms <= 5000:
            raise place.bad("poll_ms", self.poll_ms, "10 to 5000 ms")

    @property
    def where(self) -> str:
        kind, address = ("coil", self.coil) if self.coil is not None else ("discrete input", self.discrete_input)
        return f"{self.host}:{self.port} unit {self.unit} {kind} {address}"


class AckInput:
    """Polls the acknowledge bit; calls `on_ack` on each rising edge, `on_problem` once when the input
    stops answering and `on_back` when it answers again."""

    def __init__(self, cfg: AckInputConfig, on_ack: Callable[[], None], on_problem: Callable[[str], None],
                 on_back: Callable[[], None], link: ModbusLink | None = None) -> None:
        self.cfg = cfg
        self.on_ack, self.on_problem, self.on_back = on_ack, on_problem, on_back
        self.link = link or ModbusLink(cfg.host, cfg.port, cfg.unit, cfg.timeout_ms / 1000)
        self.presses = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgead-ack-input", daemon=True)

    def start(self) -> AckInput:
        self._thread.start()
        return self

    def read(self) -> bool:
        """The bit now; ConnectionError or OSError when the PLC does not answer."""
        if not self.link.connect():
            raise ConnectionError(self.link.last_error or f"cannot connect to {self.cfg.host}:{self.cfg.port}")
        if self.cfg.coil is not None:
            return bool(self.link.call("read_coils", self.cfg.coil, count=1).bits[0])
        return bool(self.link.call("read_discrete_inputs", self.cfg.discrete_input, count=1).bits[0])

    def _run(self) -> None:
        was_on: bool | None = None          # unknown until the first answer: no edge from the state at start
        failing = False
        while not self._stop.wait(self.cfg.poll_ms / 1000):
            try:
                on = self.read()
            except (ConnectionError, OSError) as err:
                if not failing:
                    failing = True
                    self.on_problem(f"the alarm acknowledge input {self.cfg.where} does not answer: {err}")
                was_on = None
                continue
            if failing:
                failing = False
                self.on_back()
            if on and was_on is False:
                self.presses += 1
                self.on_ack()
            was_on = on

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self.link.close()
