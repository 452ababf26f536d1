"""One Modbus TCP connection, shared by the modbus reject output and the modbus encoder counter.

pymodbus is imported only when a modbus output or encoder is configured, with an install hint
when missing. A lost connection is reconnected with backoff, so a dead host is not asked again on
every call. pymodbus 3.10 renamed the unit keyword `slave=` to `device_id=`, and Python 3.8 (JetPack
5) stops at pymodbus 3.6, so each request names the unit the way the installed client spells it: a
wrong keyword would not fail but land in `**kwargs`, and the request would go to unit 0.
"""

from __future__ import annotations

import inspect
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


def unit_keyword(method: Any) -> str:
    """`device_id` (pymodbus >= 3.10) or `slave` (older): how this client method takes the unit id."""
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):      # not introspectable: assume the current API
        return "device_id"
    return "slave" if "slave" in params and "device_id" not in params else "device_id"


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
        self._unit_kw: dict[str, str] = {}    # method -> its unit keyword (see unit_keyword)

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
            request = getattr(self._client, method)
            unit = self._unit_kw.get(method)
            if unit is None:
                unit = self._unit_kw[method] = unit_keyword(request)
            try:
                reply = request(*args, **{unit: self.unit}, **kwargs)
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
