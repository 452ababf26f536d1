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
from dataclasses import dataclass, field, replace
from typing import Any

from edgead.capture.pixels import PIXEL_FORMATS
from edgead.errors import EdgeADError
from edgead.schema import Place, at_least, build, in_range, is_int, mapping, need, one_of, positive

log = logging.getLogger(__name__)

TRIGGERS = ("off", "software", "hardware")
LIVE = ("auto", True, False)
RUN_KEYS = frozenset({"source", "live", "stall_alarm_s"})   # the run loop's keys; the rest set up the camera


@dataclass(frozen=True)
class CameraConfig:
    source: str | None = None          # run loop: the camera spec (edgead.capture.spec.open_source)
    live: str | bool = "auto"          # run loop: auto (a file or folder is a replay) | true | false
    stall_alarm_s: float = 0.0         # run loop: alarm when no frame arrives for this long (0: off)
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
    # the keys the YAML set (not a YAML key itself)
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False, metadata={"yaml": False})

    @classmethod
    def from_dict(cls, data: dict[str, Any] | CameraConfig | None, prefix: str = "config") -> CameraConfig:
        """Parse the `camera:` mapping; None or {} gives the defaults. `prefix` names the file in errors."""
        if data is None:
            return cls()
        if isinstance(data, CameraConfig):
            return data
        place = Place(prefix, "camera")
        values = dict(mapping(data, place, "write it as `camera:` followed by indented `key: value` lines"))
        if values.get("trigger") is False:       # YAML 1.1 reads a bare `off` as false
            values["trigger"] = "off"
        if is_int(values.get("source")):
            values["source"] = str(values["source"])   # `source: 0` is the device index
        config: CameraConfig = build(cls, values, place)
        config = replace(config, given=frozenset(data), trigger_source=config.trigger_source.strip())
        config.validate(place)
        return config

    def validate(self, place: Place) -> None:
        """Ranges and cross-key rules (types were checked when it was built)."""
        one_of(place, "live", self.live, LIVE, "expected auto, true or false")
        at_least(place, "stall_alarm_s", self.stall_alarm_s, 0)
        for key in ("exposure_us", "frame_rate"):
            positive(place, key, getattr(self, key), optional=True)
        if self.pixel_format is not None:
            one_of(place, "pixel_format", self.pixel_format, tuple(PIXEL_FORMATS), f"expected one of: {', '.join(PIXEL_FORMATS)}")
        one_of(place, "trigger", self.trigger, TRIGGERS, f"expected one of: {', '.join(TRIGGERS)}")
        if not self.trigger_source.strip():
            raise place.bad("trigger_source", self.trigger_source, "a name, like Line0")
        if self.packet_size is not None:
            in_range(place, "packet_size", self.packet_size, 576, 65535)
        in_range(place, "timeout_ms", self.timeout_ms, 1, 600_000)
        in_range(place, "buffers", self.buffers, 1, 256)
        need(place, "trigger_source" not in self.given or self.trigger == "hardware",
             "'camera.trigger_source' is set but 'camera.trigger' is not hardware",
             "set `trigger: hardware`, or remove trigger_source")

    @property
    def settings(self) -> dict[str, Any]:
        """The camera settings the YAML set (not the run loop's keys), as parsed."""
        return {k: getattr(self, k) for k in sorted(self.given - RUN_KEYS)}

    def to_dict(self) -> dict[str, Any]:
        """As written in run.json: the run loop's keys, then the settings the YAML gave."""
        return {"source": self.source, "live": self.live, "stall_alarm_s": self.stall_alarm_s, **self.settings}

    def check_supported(self, source: str, supported: set[str], live: bool) -> None:
        """Refuse settings this source cannot apply (live cameras), or log that they are ignored (files).

        A live camera that silently ignored `exposure_us` would inspect under the wrong light; a video
        file or image folder replaying a recording has no exposure to set, so there it is only noted.
        """
        unsupported = sorted(self.given - supported - RUN_KEYS)
        if not unsupported:
            return
        keys = ", ".join(f"camera.{k}" for k in unsupported)
        if live:
            raise EdgeADError(f"{keys} cannot be applied to {source}",
                              f"this kind of source supports: {', '.join(sorted(supported)) or 'no camera settings'}; "
                              "remove the key, or set it with the camera's own tool")
        log.info("%s: %s ignored (recorded frames)", source, keys)
