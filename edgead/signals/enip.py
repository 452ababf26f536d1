"""EtherNet/IP reject output: a controller tag of an Allen-Bradley Logix PLC (ControlLogix,
CompactLogix, Micro800), written through pylogix (pure Python, Python 3.8 too).

`tag: Reject_Kick` with `data_type: BOOL` writes true/false; SINT, INT and DINT tags get `value` on
set and `reset_value` on reset. Pulse or set mode, a DINT heartbeat tag (`heartbeat_tag`) or
read-back, reconnect with backoff: see plc_sink. The tag's type is given, not asked for, so a
reject is one request (pylogix would otherwise read the tag first to learn it).
"""

from __future__ import annotations

from typing import Any

from edgead.errors import EdgeADError
from edgead.signals.config import ENIP_TYPES, EnipConfig
from edgead.signals.plc_sink import PlcLink, PlcSink, Refused
from edgead.signals.scheduler import Clock, Wait

# pylogix answers with a status text, never an exception: these mean the link, not the request, failed
LINK_STATUSES = ("Connection failure", "Connection lost", "Register session failed", "Unknown error", "timed out")


def pylogix_plc() -> Any:
    try:
        from pylogix import PLC
    except ImportError:
        raise EdgeADError("enip output: pylogix is not installed", 'pip install "edgead[plant]"') from None
    return PLC


class EnipLink(PlcLink):
    """One EtherNet/IP session: the reject tag, the heartbeat tag, read-back."""

    def __init__(self, cfg: EnipConfig) -> None:
        self.plc_class = pylogix_plc()
        self.cfg = cfg
        self.code = ENIP_TYPES[cfg.data_type]
        where = "" if cfg.micro800 else f" slot {cfg.slot}"
        self.target = f"{cfg.host}:{cfg.port}{where} tag {cfg.tag}"
        self._plc: Any = None

    def open(self) -> None:
        c = self.cfg
        plc = self.plc_class(c.host, slot=c.slot, timeout=c.timeout_ms / 1000, Micro800=c.micro800, port=c.port)
        self._plc = plc
        try:
            self._check(plc.Read(c.tag, datatype=self.code), "read")   # a missing tag is found now
        except Refused:
            self.close()
            raise
        except Exception as err:
            self.close()
            raise ConnectionError(f"cannot connect to {c.host}:{c.port}: {err}") from None

    def _check(self, reply: Any, what: str) -> None:
        status = str(getattr(reply, "Status", reply))
        if status == "Success":
            return
        if any(s in status for s in LINK_STATUSES) or "Errno" in status:
            raise ConnectionError(status)
        raise Refused(f"{self.target}: the PLC refused to {what} {getattr(reply, 'TagName', '')}: {status} "
                      f"(does the tag exist in the controller scope, with type {self.cfg.data_type}?)")

    def _plc_or_fail(self) -> Any:
        if self._plc is None:
            raise ConnectionError("not connected")
        return self._plc

    def write(self, on: bool) -> None:
        c = self.cfg
        value: Any = bool(on) if c.data_type == "BOOL" else (c.value if on else c.reset_value)
        self._check(self._plc_or_fail().Write(c.tag, value, datatype=self.code), "write")

    def beat(self, n: int) -> None:
        plc, c = self._plc_or_fail(), self.cfg
        if c.heartbeat_tag:
            self._check(plc.Write(c.heartbeat_tag, n, datatype=ENIP_TYPES["DINT"]), "write")
        else:
            self._check(plc.Read(c.tag, datatype=self.code), "read")

    def close(self) -> None:
        plc, self._plc = self._plc, None
        self.close_quietly(plc, "Close")


class EnipSink(PlcSink):
    """Reject pulses on a tag of an Allen-Bradley Logix PLC."""

    def __init__(self, cfg: EnipConfig, *, clock: Clock | None = None, wait: Wait | None = None,
                 start: bool = True) -> None:
        super().__init__(cfg, EnipLink(cfg), clock=clock, wait=wait, start=start)
