"""PlcSink: the base of the PLC outputs that write one bit, word or tag per reject (s7, enip).

The same contract as the Modbus output: per reject set, then reset pulse_ms later (`mode: pulse`),
or set only and let the PLC reset it (`mode: set`); a heartbeat word/tag incremented every
heartbeat_ms (without one the output is read back at that rate), so a lost PLC raises the alarm
before the next reject needs it. A lost connection is reopened with backoff on a maintenance
thread, never inline on the pulse path: while the PLC is away a pulse fails at once (counted as
not fired, alarmed) instead of waiting for a connect timeout and making every later pulse late.
"""

from __future__ import annotations

import threading
import time

from edgead.protocols import InspectionEvent
from edgead.signals.config import PlcConfig
from edgead.signals.scheduler import Clock, Wait
from edgead.signals.timed import TimedSink


class Refused(OSError):
    """The PLC answered but refused the request (unknown tag, DB missing or too small): the link stays up."""


class PlcLink:
    """One connection to a PLC, for PlcSink; subclasses implement the protocol's requests.

    open() connects (raises OSError/ConnectionError saying why not); write(on) sets or resets the
    reject output; beat(n) writes heartbeat n, or reads the output back where no heartbeat is
    configured. A request raises Refused when the PLC refused it, anything else when the link broke.
    """

    target = ""

    def open(self) -> None:
        raise NotImplementedError

    def write(self, on: bool) -> None:
        raise NotImplementedError

    def beat(self, n: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @staticmethod
    def close_quietly(handle: object, method: str) -> None:
        """Close a client that may already be dead (a broken link may fail to close: it is gone either way)."""
        if handle is None:
            return
        try:
            getattr(handle, method)()
        except Exception:
            pass


class PlcSink(TimedSink):
    """Reject pulses through a PlcLink; heartbeat/read-back and reconnect with backoff on its own thread."""

    def __init__(self, cfg: PlcConfig, link: PlcLink, *, clock: Clock | None = None, wait: Wait | None = None,
                 start: bool = True) -> None:
        pulse = cfg.mode == "pulse"
        super().__init__(cfg.name, link.target, cfg, width_override=None if pulse else 0.0, has_end=pulse,
                         clock=clock, wait=wait, start=start)
        self.link = link
        self.pcfg = cfg
        self.heartbeats = 0
        self.last_error = ""
        self._lock = threading.Lock()        # one request at a time: the PLC clients are not thread-safe
        self._connected = False
        self._backoff = cfg.reconnect_min_ms / 1000
        self._next_try = 0.0
        self._stop = threading.Event()
        if self._connect(force=True):
            self._opened()
        else:
            self._fail(self.last_error)
        self._thread = threading.Thread(target=self._maintain, name=f"edgead-{cfg.name}-link", daemon=True)
        self._thread.start()

    def _connect(self, force: bool = False) -> bool:
        """Open the link unless open; between failures wait the backoff (doubling up to the max)."""
        if self._connected:
            return True
        now = time.monotonic()
        if not force and now < self._next_try:
            return False
        try:
            with self._lock:
                self.link.open()
        except Exception as err:
            self._next_try = now + self._backoff
            self._backoff = min(self._backoff * 2, self.pcfg.reconnect_max_ms / 1000)
            self.last_error = f"{err} (retrying every {self._backoff:.1f} s at most)"
            return False
        self._backoff = self.pcfg.reconnect_min_ms / 1000
        self.last_error = ""
        self._connected = True
        return True

    def _call(self, what: str, *args: object) -> None:
        """One request on the link; ConnectionError when not connected or the link broke, Refused when refused."""
        if not self._connected:
            raise ConnectionError(f"not connected to {self.target} ({self.last_error or 'reconnecting'})")
        with self._lock:
            try:
                getattr(self.link, what)(*args)
            except Refused:
                raise
            except Exception as err:
                self._connected = False
                self.link.close()
                self.last_error = f"connection to {self.target} lost: {err}"
                raise ConnectionError(self.last_error) from None

    def _start(self, events: list[InspectionEvent]) -> None:
        self._call("write", True)

    def _extend(self, event: InspectionEvent) -> None:
        if self.pcfg.mode == "set":          # one write per part: the PLC counts them
            self._call("write", True)

    def _end(self) -> None:
        self._call("write", False)

    def _maintain(self) -> None:
        """Reconnect with backoff; heartbeat (or read back the output) every heartbeat_ms."""
        next_beat = time.monotonic()
        while not self._stop.wait(0.05):
            if not self._connected:
                if self._connect():
                    self._opened()
                elif self._health.ok:
                    self._fail(self.last_error or f"not connected to {self.target}")
                continue
            if time.monotonic() < next_beat:
                continue
            next_beat = time.monotonic() + self.pcfg.heartbeat_ms / 1000
            try:
                self._call("beat", (self.heartbeats + 1) & 0x7FFFFFFF)
                self.heartbeats = (self.heartbeats + 1) & 0x7FFFFFFF
            except OSError as err:
                self._fail(str(err))
                continue
            if not self._health.ok:          # a refused request before: the PLC answers again
                self._opened()

    def fire_test(self) -> str:
        """One pulse now (no delay), for checking the wiring; raises when the PLC does not take it."""
        if not self._connect(force=True):
            raise ConnectionError(self.last_error)
        self._call("write", True)
        if self.pcfg.mode == "set":
            return f"set {self.target} (mode set: the PLC resets it)"
        width = self.pcfg.pulse_ms / 1000 if self.encoder is None else 0.1
        time.sleep(width)
        self._call("write", False)
        return f"pulsed {self.target} for {width * 1000:.0f} ms"

    def close(self) -> None:
        self.close_timing()
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            self.link.close()
