"""One Modbus TCP connection, shared by the modbus reject output and the modbus encoder counter.

pymodbus is imported only when a modbus output or encoder is configured, with an install hint
when missing. A lost connection is reconnected with backoff, so a dead host is not asked again on
every call.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from edgead.errors import EdgeADError


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
