"""The typed `camera:` section of the run YAML, and the pixel formats it may name.

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

Pixel formats live here too, so the names the config accepts and the buffers the camera sources can
turn into images are one table. Edge path: numpy + OpenCV only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import cv2
import numpy as np

from edgead.errors import EdgeADError

log = logging.getLogger(__name__)

TRIGGERS = ("off", "software", "hardware")


def _bayer(new: str, old: str) -> int:
    """OpenCV's Bayer code for a GenICam pattern (named after its top-left 2x2 cell).

    OpenCV's classic names are shifted by one: GenICam BayerRG8 (R at the top-left) is
    COLOR_BayerBG2RGB there, and COLOR_BayerRG2RGB swaps red and blue. Newer builds add
    unambiguous names (COLOR_BayerRGGB2RGB, equal to the classic BG code); use them when present.
    tests/test_capture.py checks every pattern on a synthetic mosaic.
    """
    return int(getattr(cv2, new, getattr(cv2, old)))


@dataclass(frozen=True)
class PixelFormat:
    channels: int                      # values per pixel in the raw buffer
    dtype: type                        # numpy dtype of one value
    convert: int | None = None         # cv2.cvtColor code to RGB (or None: already gray/RGB)


PIXEL_FORMATS: dict[str, PixelFormat] = {
    "Mono8": PixelFormat(1, np.uint8),
    "Mono16": PixelFormat(1, np.uint16),
    "RGB8": PixelFormat(3, np.uint8),
    "BGR8": PixelFormat(3, np.uint8, cv2.COLOR_BGR2RGB),
    "RGBa8": PixelFormat(4, np.uint8, cv2.COLOR_RGBA2RGB),
    "BGRa8": PixelFormat(4, np.uint8, cv2.COLOR_BGRA2RGB),
    "BayerRG8": PixelFormat(1, np.uint8, _bayer("COLOR_BayerRGGB2RGB", "COLOR_BayerBG2RGB")),
    "BayerGR8": PixelFormat(1, np.uint8, _bayer("COLOR_BayerGRBG2RGB", "COLOR_BayerGB2RGB")),
    "BayerGB8": PixelFormat(1, np.uint8, _bayer("COLOR_BayerGBRG2RGB", "COLOR_BayerGR2RGB")),
    "BayerBG8": PixelFormat(1, np.uint8, _bayer("COLOR_BayerBGGR2RGB", "COLOR_BayerRG2RGB")),
}


def to_image(data: bytes | np.ndarray, width: int, height: int, pixel_format: str,
             stride: int | None = None) -> np.ndarray:
    """Turn one raw camera buffer into a Frame image: HxW gray or HxWx3 RGB, always a fresh array.

    `stride` is the bytes per row when rows are padded (default: packed rows); bytes past the
    last row (chunk data) are ignored.
    """
    fmt = PIXEL_FORMATS.get(pixel_format)
    if fmt is None:
        raise EdgeADError(f"camera delivers pixel format {pixel_format}, which edgead cannot convert",
                          f"set camera.pixel_format to one of: {', '.join(PIXEL_FORMATS)}")
    flat = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) \
        else np.asarray(data).reshape(-1).view(np.uint8)
    row = width * fmt.channels * np.dtype(fmt.dtype).itemsize
    stride = stride or row
    if width <= 0 or height <= 0 or stride < row or flat.size < stride * (height - 1) + row:
        raise EdgeADError(f"camera buffer too short: {flat.size} bytes for {width}x{height} {pixel_format}",
                          "the frame arrived incomplete; check the network (packet size, jumbo frames)")
    rows = np.lib.stride_tricks.as_strided(flat, shape=(height, row), strides=(stride, 1))
    shape = (height, width, fmt.channels) if fmt.channels > 1 else (height, width)
    img: np.ndarray = rows.view(fmt.dtype).reshape(shape)
    if fmt.convert is not None:
        return cv2.cvtColor(np.ascontiguousarray(img), fmt.convert)
    return np.array(img, copy=True)       # never a view into a buffer the camera will reuse


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
