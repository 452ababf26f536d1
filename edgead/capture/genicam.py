"""GenICam cameras through a vendor's GenTL producer (.cti) and Harvesters.

For cameras whose vendor ships a GenTL producer (Basler, FLIR, IDS, Baumer, ... for GigE Vision,
USB3 Vision, CoaXPress): `genicam:<producer.cti>[:<serial>]`. Harvesters is optional and imported
only here. seq is the producer's frame id, meta has the camera timestamp when the producer gives one.
A setting the camera has no feature for is an error naming the key and the feature.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from edgead.capture.config import CameraConfig
from edgead.capture.frames import FrameIds, make_frame
from edgead.capture.pixels import PIXEL_FORMATS, to_image
from edgead.errors import EdgeADError
from edgead.protocols import Frame

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "edgead[genicam]" (Harvesters and the genicam package)'


def parse_genicam_spec(rest: str) -> tuple[str, str | None]:
    """'<cti path>[:<serial>]' -> (cti path, serial or None). The path ends in .cti."""
    rest = rest.strip()
    if rest.lower().endswith(".cti"):
        return rest, None
    head, sep, serial = rest.rpartition(":")
    if sep and head.lower().endswith(".cti") and serial:
        return head, serial
    raise EdgeADError(f"genicam: spec needs a GenTL producer file ending in .cti, got '{rest}'",
                      "write genicam:/path/to/producer.cti or genicam:/path/to/producer.cti:<serial>; "
                      "the camera vendor's SDK installs the .cti")


def load_harvester() -> Any:
    """The Harvester class, or an EdgeADError saying what to install."""
    try:
        from harvesters.core import Harvester
    except ImportError as e:
        raise EdgeADError(f"genicam: sources need Harvesters, which is not installed ({e})", INSTALL_HINT) from e
    return Harvester


class GenICamSource:
    """One camera of a GenTL producer; serial None = the first camera the producer lists."""

    SUPPORTED = {"exposure_us", "gain_db", "pixel_format", "trigger", "trigger_source", "packet_size",
                 "frame_rate", "timeout_ms", "buffers"}
    live: bool = True
    finished: bool = False          # a live camera never ends

    def __init__(self, cti: str | Path, serial: str | None = None, *, config: CameraConfig | None = None) -> None:
        self.cti = Path(cti).expanduser()
        self.serial = serial
        self.config = config or CameraConfig()
        self.name: str = f"genicam:{self.cti.name}:{serial}" if serial else f"genicam:{self.cti.name}"
        self.frames = 0
        self.frames_dropped = 0
        self.missed_triggers = 0
        self._harvester: Any = None
        self._acquirer: Any = None
        self._ids = FrameIds()          # kept across reopens: ids that go on tell what was lost
        self.config.check_supported(self.name, self.SUPPORTED, live=True)

    def accounting(self) -> dict[str, Any] | None:
        """None: a live camera promises no number of frames (lost ones show as seq gaps)."""
        return None

    def open(self) -> None:
        if self._acquirer is not None:
            return
        if not self.cti.is_file():
            raise EdgeADError(f"GenTL producer not found: {self.cti}",
                              "install the camera vendor's SDK and point genicam: at its .cti file")
        harvester = load_harvester()()
        try:
            harvester.add_file(str(self.cti), check_existence=True, check_validity=True)
            harvester.update()
        except OSError as e:
            harvester.reset()
            raise EdgeADError(f"GenTL producer {self.cti} cannot be loaded on this machine: {e}",
                              "use the .cti built for this OS and CPU (e.g. x86_64 vs aarch64)") from e
        devices = list(harvester.device_info_list)
        found = ", ".join(f"{d.serial_number} ({d.id_})" for d in devices) or "none"
        if not devices:
            harvester.reset()
            raise EdgeADError(f"no camera found by {self.cti.name}",
                              "check power, cable and the vendor's viewer; only one program may use a camera")
        if self.serial is None:
            index = 0
        else:
            index = next((i for i, d in enumerate(devices) if self.serial in (d.serial_number, d.id_)), -1)
            if index < 0:
                harvester.reset()
                raise EdgeADError(f"GenICam camera '{self.serial}' not found by {self.cti.name}",
                                  f"cameras found (serial (id)): {found}")
        try:
            acquirer = harvester.create(index)
        except Exception as e:
            harvester.reset()
            raise EdgeADError(f"{self.name}: could not open the camera: {e}",
                              "close other programs that use it (the vendor's viewer)") from e
        try:
            self._configure(acquirer.remote_device.node_map)
            acquirer.num_buffers = self.config.buffers
            acquirer.start()
        except EdgeADError:
            acquirer.destroy()
            harvester.reset()
            raise
        except Exception as e:
            acquirer.destroy()
            harvester.reset()
            raise EdgeADError(f"{self.name}: could not start acquisition: {e}",
                              "check the camera section against the camera's features") from e
        self._harvester, self._acquirer = harvester, acquirer
        log.info("%s: acquiring (%s)", self.name, devices[index].id_)

    def _configure(self, node_map: Any) -> None:
        """Apply the camera config through standard GenICam (SFNC) feature names."""
        cfg = self.config

        def node(key: str, *names: str) -> Any:
            for feature in names:
                if node_map.has_node(feature):
                    return node_map.get_node(feature)
            raise EdgeADError(f"{self.name}: camera.{key} cannot be applied: the camera has no "
                              f"{' or '.join(names)} feature", "remove the key, or set it with the vendor's tool")

        def write(key: str, target: Any, value: Any) -> None:
            try:
                target.value = value
            except Exception as e:
                offered = getattr(target, "symbolics", None)
                raise EdgeADError(f"{self.name}: camera.{key}={value!r} was refused by {target.node.name}",
                                  f"it offers: {', '.join(offered)}" if offered else
                                  f"check the value against the camera's range ({e})") from e

        if cfg.pixel_format is not None:
            write("pixel_format", node("pixel_format", "PixelFormat"), cfg.pixel_format)
        if node_map.has_node("PixelFormat") and node_map.get_node("PixelFormat").value not in PIXEL_FORMATS:
            raise EdgeADError(f"{self.name}: the camera sends {node_map.get_node('PixelFormat').value}, "
                              "which edgead cannot convert",
                              f"set camera.pixel_format to one of: {', '.join(PIXEL_FORMATS)}")
        if cfg.packet_size is not None:
            write("packet_size", node("packet_size", "GevSCPSPacketSize"), cfg.packet_size)
        if cfg.exposure_us is not None:
            if node_map.has_node("ExposureAuto"):
                write("exposure_us", node_map.get_node("ExposureAuto"), "Off")
            write("exposure_us", node("exposure_us", "ExposureTime", "ExposureTimeAbs"), cfg.exposure_us)
        if cfg.gain_db is not None:
            if node_map.has_node("GainAuto"):
                write("gain_db", node_map.get_node("GainAuto"), "Off")
            write("gain_db", node("gain_db", "Gain"), cfg.gain_db)
        if cfg.frame_rate is not None:
            if node_map.has_node("AcquisitionFrameRateEnable"):
                write("frame_rate", node_map.get_node("AcquisitionFrameRateEnable"), True)
            write("frame_rate", node("frame_rate", "AcquisitionFrameRate", "AcquisitionFrameRateAbs"),
                  cfg.frame_rate)
        if cfg.trigger == "off" and not node_map.has_node("TriggerMode"):
            return                                  # no trigger at all: free-running already
        mode = node("trigger", "TriggerMode")
        if node_map.has_node("TriggerSelector"):
            write("trigger", node_map.get_node("TriggerSelector"), "FrameStart")
        if cfg.trigger == "off":
            write("trigger", mode, "Off")
            return
        source = "Software" if cfg.trigger == "software" else cfg.trigger_source
        write("trigger_source" if cfg.trigger == "hardware" else "trigger", node("trigger", "TriggerSource"), source)
        write("trigger", mode, "On")

    def software_trigger(self) -> None:
        """Fire one exposure (camera.trigger: software)."""
        if self.config.trigger != "software":
            raise EdgeADError(f"{self.name}: software_trigger() needs camera.trigger: software",
                              f"camera.trigger is {self.config.trigger}")
        if self._acquirer is None:
            raise EdgeADError(f"{self.name} is not open", "call open() first")
        try:
            self._acquirer.remote_device.node_map.TriggerSoftware.execute()
        except Exception as e:
            raise EdgeADError(f"{self.name}: software trigger failed: {e}",
                              "the camera may be gone; the source reconnects when it is back") from e

    def read(self, timeout_s: float) -> Frame | None:
        if self._acquirer is None:
            raise EdgeADError(f"{self.name} is not open", "call open() first")
        try:
            buffer = self._acquirer.try_fetch(timeout=max(timeout_s, 1e-3))
        except Exception as e:
            raise EdgeADError(f"{self.name}: camera gone ({type(e).__name__}: {e})",
                              "check power and cable; the source reconnects when it is back") from e
        if buffer is None:
            return None
        arrived = time.monotonic()
        try:
            component = buffer.payload.components[0]
            frame_id = int(buffer.frame_id)
            meta: dict[str, Any] = {"frame_id": frame_id, "pixel_format": component.data_format}
            stamp = self._timestamp_ns(buffer)
            if stamp:
                meta["camera_timestamp_ns"] = stamp
            try:
                image = self._image(component)
            except EdgeADError as e:               # a short buffer is a lost frame, not a lost camera
                log.warning("%s: frame %d unusable: %s", self.name, frame_id, e.message)
                image = None
        finally:
            buffer.queue()
        seq, missing = self._ids.update(frame_id)
        missing += image is None
        if missing:
            if self.config.trigger == "hardware":
                self.missed_triggers += missing
                log.error("%s: %d missed trigger(s) before seq %d: parts passed uninspected",
                          self.name, missing, seq)
            else:
                self.frames_dropped += missing
        if image is None:
            return None
        self.frames += 1
        return make_frame(image, seq, self.name, arrived, meta)

    @staticmethod
    def _timestamp_ns(buffer: Any) -> int | None:
        try:
            return int(buffer.timestamp_ns) or None
        except Exception:                       # producers without timestamps raise NotAvailable
            return None

    def _image(self, component: Any) -> Any:
        fmt = str(component.data_format)
        if fmt not in PIXEL_FORMATS:
            raise EdgeADError(f"{self.name}: the camera sends {fmt}, which edgead cannot convert",
                              f"set camera.pixel_format to one of: {', '.join(PIXEL_FORMATS)}")
        return to_image(component.data, int(component.width), int(component.height), fmt)

    def close(self) -> None:
        acquirer, harvester, self._acquirer, self._harvester = self._acquirer, self._harvester, None, None
        for step in ((acquirer.stop, acquirer.destroy) if acquirer is not None else ()) + \
                ((harvester.reset,) if harvester is not None else ()):
            try:
                step()
            except Exception as e:              # a camera that is gone may fail to stop; go on closing
                log.debug("%s: %s failed: %s", self.name, getattr(step, "__name__", step), e)
