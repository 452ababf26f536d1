"""The typed `camera:` section of the run YAML.

A typo in a camera setting must never be ignored: a misspelt `exposure_us` would inspect every part
under the wrong light. So unknown keys and bad values are EdgeADErrors naming the key; a setting the
chosen live camera cannot apply is an error too (see `check_supported`).

    camera:
      exposure_us: 800
      gain_db: 2.0
      pixel_format: BayerRG8     # Mono8, Mono16, RGB8, BGR8, RGBa8, BGRa8, BayerRG8/GR8/GB8/BG8
      trigger: hardware          # off (free-running), software, hardware
      trigger_source: Line0      # the input line, with trigger: hardware
      packet_size: 8192          # GigE Vision only (GevSCPSPacketSize); needs jumbo frames above 1500
      frame_rate: 30             # cameras: acquisition rate; video files and image folders: replay pacing
      timeout_ms: 1000           # how long the camera may take to answer before it counts as gone
      buffers: 4                 # GigE/GenTL stream buffers
      loop: false                # video files and image folders: start again after the last frame
      skip_bad: false            # image folders: skip (and count) unreadable images instead of stopping

The pixel format names come from pixels.PIXEL_FORMATS, the table the camera sources convert with,
so a format is accepted here only when its buffers can be turned into images.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from edgead.capture.pixels import PIXEL_FORMATS
from edgead.errors import EdgeADError

log = logging.getLogger(__name__)

TRIGGERS = ("off", "software", "hardware")


@dataclass(frozen=True)
class CameraConfig:
    exposure_us: float | None = None
    gain_db: float | None = None
    pixel_format: str | None = None
    trigger: str = "off"
    trigger_source: str = "Line0"
    packet_size: int | None = None
    frame_rate: float | None = None
    timeout_ms: int = 1000
    buffers: int = 4
    loop: bool = False
    skip_bad: bool = False
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)   # keys set in the YAML

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CameraConfig:
        """Parse the `camera:` mapping; None or {} gives the defaults."""
        if data is None:
            return cls()
        if isinstance(data, CameraConfig):
            return data
        if not isinstance(data, dict):
            raise EdgeADError(f"config: 'camera' must be a mapping, got {type(data).__name__}",
                              "write it as `camera:` followed by indented `key: value` lines")
        allowed = {f.name for f in fields(cls)} - {"given"}
        for key in data:
            if key not in allowed:
                raise EdgeADError(f"config: unknown key 'camera.{key}'",
                                  f"allowed keys in 'camera': {', '.join(sorted(allowed))}")
        values = dict(data)
        if values.get("trigger") is False:       # YAML 1.1 reads a bare `off` as false
            values["trigger"] = "off"
        defaults = cls()
        for key, check in _CHECKS.items():
            if key not in values:
                continue
            if values[key] is None and getattr(defaults, key) is None:
                continue                          # `exposure_us: null` = leave the camera's own value
            values[key] = check(key, values[key])
        if "trigger_source" in data and values.get("trigger", "off") != "hardware":
            raise EdgeADError("config: 'camera.trigger_source' is set but 'camera.trigger' is not hardware",
                              "set `trigger: hardware`, or remove trigger_source")
        return cls(**values, given=frozenset(data))

    def check_supported(self, source: str, supported: set[str], live: bool) -> None:
        """Refuse settings this source cannot apply (live cameras), or log that they are ignored (files).

        A live camera that silently ignored `exposure_us` would inspect under the wrong light; a video
        file or image folder replaying a recording has no exposure to set, so there it is only noted.
        """
        unsupported = sorted(self.given - supported)
        if not unsupported:
            return
        keys = ", ".join(f"camera.{k}" for k in unsupported)
        if live:
            raise EdgeADError(f"{keys} cannot be applied to {source}",
                              f"this kind of source supports: {', '.join(sorted(supported)) or 'no camera settings'}; "
                              "remove the key, or set it with the camera's own tool")
        log.info("%s: %s ignored (recorded frames)", source, keys)


def _number(positive: bool) -> Callable[[str, Any], float]:
    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (positive and value <= 0):
            raise EdgeADError(f"config: 'camera.{key}' has a bad value {value!r}",
                              f"expected a {'positive ' if positive else ''}number")
        return float(value)
    return check


def _integer(low: int, high: int) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise EdgeADError(f"config: 'camera.{key}' has a bad value {value!r}",
                              f"expected a whole number from {low} to {high}")
        return value
    return check


def _choice(options: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if value not in options:
            raise EdgeADError(f"config: 'camera.{key}' has a bad value {value!r}",
                              f"expected one of: {', '.join(options)}")
        return str(value)
    return check


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise EdgeADError(f"config: 'camera.{key}' has a bad value {value!r}", "expected a name, like Line0")
    return value.strip()


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise EdgeADError(f"config: 'camera.{key}' has a bad value {value!r}", "expected true or false")
    return value


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "exposure_us": _number(positive=True),
    "gain_db": _number(positive=False),
    "pixel_format": _choice(tuple(PIXEL_FORMATS)),
    "trigger": _choice(TRIGGERS),
    "trigger_source": _text,
    "packet_size": _integer(576, 65535),
    "frame_rate": _number(positive=True),
    "timeout_ms": _integer(1, 600_000),
    "buffers": _integer(1, 256),
    "loop": _flag,
    "skip_bad": _flag,
}
