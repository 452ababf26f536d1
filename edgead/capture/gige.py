"""GigE Vision cameras through Aravis (PyGObject), with the settings an inspection line needs.

Aravis is optional: it is imported only when a gige: source opens, with an install message when it
is missing. The camera id may be Aravis's id (vendor-model-serial), the serial number, the MAC, or
an IPv4 address; "" opens the first camera found. An IP address is first asked for its identity
with one unicast GVCP DISCOVERY packet, so a wrong or unplugged address fails fast and no broadcast
is sent; a name needs Aravis's discovery (a broadcast on every network interface).

seq is the camera's frame id (unwrapped past 65535), t_capture the host time the buffer arrived
(turned into time.monotonic()), meta has the camera's own timestamp. With trigger: hardware a gap in
frame ids or an incomplete buffer is a part that was not inspected: `missed_triggers` counts them,
and the seq jump makes the run loop give each one the safe action. A camera that ignores a trigger
while busy (trigger overrun) makes no frame id; only the camera's own counters show that.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import threading
import time
from typing import Any, Callable

from edgead.capture.config import CameraConfig
from edgead.capture.frames import FrameIds, make_frame
from edgead.capture.pixels import PIXEL_FORMATS, to_image
from edgead.errors import EdgeADError
from edgead.protocols import Frame

log = logging.getLogger(__name__)

INSTALL_HINT = ('pip install "edgead[gige]" (PyGObject), and the system packages: on Debian/Ubuntu '
                "apt-get install gir1.2-aravis-0.8 libgirepository1.0-dev libcairo2-dev pkg-config "
                "(aravis-tools-cli adds arv-tool-0.8 to list cameras)")
GVCP_PORT = 3956

# GenICam pixel format names (pixels.PIXEL_FORMATS) -> Aravis constant names
_ARAVIS_FORMATS = {
    "Mono8": "MONO_8", "Mono16": "MONO_16", "RGB8": "RGB_8_PACKED", "BGR8": "BGR_8_PACKED",
    "RGBa8": "RGBA_8_PACKED", "BGRa8": "BGRA_8_PACKED", "BayerRG8": "BAYER_RG_8",
    "BayerGR8": "BAYER_GR_8", "BayerGB8": "BAYER_GB_8", "BayerBG8": "BAYER_BG_8",
}


def load_aravis() -> Any:
    """The Aravis 0.8 module, or an EdgeADError saying what to install."""
    try:
        import gi
    except ImportError as e:
        raise EdgeADError("GigE cameras need PyGObject and Aravis, and PyGObject is not installed",
                          INSTALL_HINT) from e
    try:
        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ValueError, ImportError) as e:
        raise EdgeADError(f"GigE cameras need Aravis 0.8, which is not installed ({e})", INSTALL_HINT) from e
    return Aravis


def gvcp_probe(ip: str, timeout_s: float) -> dict[str, str] | None:
    """Ask one address for its GigE Vision identity (unicast DISCOVERY_CMD); None when nobody answers."""
    request = struct.pack(">BBHHH", 0x42, 0x01, 0x0002, 0, 0x7E57)   # key, ack wanted, DISCOVERY, len, id
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.sendto(request, (ip, GVCP_PORT))
            deadline = time.monotonic() + timeout_s
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 1e-3))
                data, _ = sock.recvfrom(2048)
                status, command, _length, ack_id = struct.unpack(">HHHH", data[:8])
                if command == 0x0003 and ack_id == 0x7E57 and len(data) >= 8 + 0xF8:
                    break
        except OSError:                      # timeout, refused (ICMP), unreachable
            return None
    body = data[8:]

    def text(offset: int, size: int) -> str:
        return body[offset:offset + size].split(b"\0")[0].decode("ascii", "replace")

    return {"vendor": text(0x48, 32), "model": text(0x68, 32), "serial": text(0xD8, 16),
            "user_name": text(0xE8, 16), "ip": socket.inet_ntoa(body[0x24:0x28]), "status": str(status)}


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
        return True
    except ValueError:
        return False


class GigESource:
    """One GigE Vision camera: open() connects, applies the camera config and starts acquiring."""

    SUPPORTED = {"exposure_us", "gain_db", "pixel_format", "trigger", "trigger_source", "packet_size",
                 "frame_rate", "timeout_ms", "buffers"}
    live: bool = True
    finished: bool = False          # a live camera never ends

    def __init__(self, camera_id: str = "", *, config: CameraConfig | None = None,
                 probe_interval_s: float = 1.0) -> None:
        self.camera_id = camera_id.strip()
        self.config = config or CameraConfig()
        self.name: str = f"gige:{self.camera_id}"
        self.probe_interval_s = probe_interval_s
        self.frames = 0
        self.frames_dropped = 0          # frame ids that never arrived (free-running / software trigger)
        self.missed_triggers = 0         # trigger: hardware: parts with no usable frame
        self.bad_buffers = 0             # frames that arrived incomplete (lost packets)
        self.device_ip: str | None = None
        self._camera: Any = None
        self._stream: Any = None
        self._glib: Any = None
        self._aravis: Any = None
        self._formats: dict[int, str] = {}
        self._lost: str | None = None    # set by Aravis's heartbeat thread on "control-lost"
        self._handler: int | None = None
        self._ids = FrameIds()          # kept across reopens: ids that go on tell what was lost
        self._last_probe = 0.0
        self.config.check_supported(self.name, self.SUPPORTED, live=True)

    def accounting(self) -> dict[str, Any] | None:
        """None: a live camera promises no number of frames (lost ones show as seq gaps)."""
        return None

    # --- open / close -----------------------------------------------------------------------------

    def open(self) -> None:
        if self._camera is not None:
            return
        aravis = load_aravis()
        from gi.repository import GLib
        self._glib, self._aravis = GLib, aravis
        self._formats = {getattr(aravis, f"PIXEL_FORMAT_{a}"): n for n, a in _ARAVIS_FORMATS.items()}
        camera = self._connect(aravis, GLib)
        try:
            self._configure(camera, aravis, GLib)
            stream = camera.create_stream(None, None)
            if stream is None:
                raise EdgeADError(f"{self.name}: could not create a stream", "another program may be streaming from it")
            payload = camera.get_payload()
            for _ in range(self.config.buffers):
                stream.push_buffer(aravis.Buffer.new_allocate(payload))
            camera.set_acquisition_mode(aravis.AcquisitionMode.CONTINUOUS)
            camera.start_acquisition()
        except GLib.Error as e:
            self._leave_control(camera)
            raise EdgeADError(f"{self.name}: could not start acquisition: {e.message}",
                              "close other programs using the camera (arv-viewer, vendor tools), then retry") from e
        except BaseException:
            self._leave_control(camera)
            raise
        self._lost = None
        device = camera.get_device()
        self._handler = device.connect("control-lost", self._on_control_lost)
        self.device_ip = self._address(device)
        self._camera, self._stream = camera, stream
        self._last_probe = time.monotonic()
        log.info("%s: acquiring %s (%s %s, serial %s, %s)", self.name, camera.get_pixel_format_as_string(),
                 camera.get_vendor_name(), camera.get_model_name(), camera.get_device_serial_number(),
                 self.device_ip or "no IP")

    def close(self) -> None:
        if self._camera is None:
            return
        if self._handler is not None:
            self._camera.get_device().disconnect(self._handler)
            self._handler = None
        if self._lost is None:
            try:
                self._camera.stop_acquisition()
            except self._glib.Error as e:
                log.debug("%s: stop_acquisition failed: %s", self.name, e.message)
            self._leave_control(self._camera)
            self._camera = self._stream = None
            return
        # A camera that is gone makes Aravis's clean-up wait out its register timeouts (seconds):
        # the last references go in a thread (GObject unref runs without the GIL), so reconnecting
        # starts at once. No other reference may stay here, or the clean-up would run in this thread.
        holder = [self._stream, self._camera]
        self._camera = self._stream = None
        threading.Thread(target=holder.clear, name=f"{self.name} release", daemon=True).start()

    def _leave_control(self, camera: Any) -> None:
        """Give up control now, not when Python frees the object: an exception's traceback can keep it
        alive, and a GigE Vision camera takes orders from one controller only, so the next open would
        fail."""
        device = camera.get_device()
        if hasattr(device, "leave_control"):
            try:
                device.leave_control()
            except self._glib.Error as e:
                log.debug("%s: leave_control failed: %s", self.name, e.message)

    def _on_control_lost(self, _device: Any) -> None:
        self._lost = "control lost (no heartbeat answer)"

    @staticmethod
    def _address(device: Any) -> str | None:
        """The camera's IPv4 address (GvDevice.get_device_address is a socket address: ip and port)."""
        get = getattr(device, "get_device_address", None)     # GvDevice only, not USB3 Vision
        try:
            address: Any = get() if get else None
            if address is not None and hasattr(address, "get_address"):
                address = address.get_address()
            return str(address.to_string()) if address is not None else None
        except Exception:
            return None

    def _connect(self, aravis: Any, glib: Any) -> Any:
        cid = self.camera_id
        where = ("check power and cable, that this PC has an address in the camera's subnet, and that "
                 f"UDP port {GVCP_PORT} is not blocked by a firewall")
        known = True
        listed = ""
        if _is_ipv4(cid):
            if gvcp_probe(cid, self.config.timeout_ms / 1000) is None:
                raise EdgeADError(f"no GigE Vision camera answers at {cid}",
                                  f"{where}; waited {self.config.timeout_ms} ms (camera.timeout_ms)")
            target = cid
        else:
            aravis.update_device_list()
            found = [{"id": aravis.get_device_id(i), "serial": aravis.get_device_serial_nbr(i),
                      "mac": aravis.get_device_physical_id(i), "ip": aravis.get_device_address(i)}
                     for i in range(aravis.get_n_devices())]
            listed = ", ".join(f"{d['id']} ({d['ip'] or d['mac']})" for d in found) or "none"
            if not found and not cid:
                raise EdgeADError("no GigE Vision camera found", where)
            match = found[0] if not cid else next((d for d in found if cid in (d["id"], d["serial"], d["mac"])), None)
            known = match is not None
            target = match["id"] if match else cid      # not listed: Aravis may still resolve a host name
        try:
            return aravis.Camera.new(target)
        except glib.Error as e:
            if not known:
                raise EdgeADError(f"GigE camera '{cid}' not found",
                                  f"cameras found: {listed}; use an id, serial number, MAC or IP address "
                                  f"from that list ({where})") from e
            raise EdgeADError(f"GigE camera '{cid or target}' could not be opened: {e.message}",
                              "close other programs that hold the camera (arv-viewer, a vendor tool) "
                              "and check that it answers (arv-tool-0.8)") from e

    def _configure(self, camera: Any, aravis: Any, glib: Any) -> None:
        """Apply the camera config; a value the camera refuses is an error naming the key."""
        cfg = self.config

        def refuse(key: str, value: Any, why: str, hint: str) -> EdgeADError:
            return EdgeADError(f"{self.name}: camera.{key}={value!r} cannot be applied: {why}", hint)

        def in_bounds(key: str, value: float, bounds: Any) -> None:
            lo, hi = float(bounds[0]), float(bounds[1])
            if not lo <= value <= hi:
                raise refuse(key, value, f"outside the camera's range {lo:g} .. {hi:g}", f"use a value in {lo:g} .. {hi:g}")

        try:
            if cfg.pixel_format is not None:
                offered = list(camera.dup_available_pixel_formats_as_strings() or [])
                if cfg.pixel_format not in offered:
                    raise refuse("pixel_format", cfg.pixel_format, "the camera does not offer it",
                                 f"it offers: {', '.join(offered)}")
                camera.set_pixel_format_from_string(cfg.pixel_format)
            if cfg.packet_size is not None:
                if not camera.is_gv_device():
                    raise refuse("packet_size", cfg.packet_size, "not a GigE Vision camera", "remove the key")
                camera.gv_set_packet_size(cfg.packet_size)
            # exposure and gain: the same steps, each with its own Aravis calls
            for key, value, missing, available, bounds, auto_available, set_auto, set_value in (
                    ("exposure_us", cfg.exposure_us, "no exposure time", camera.is_exposure_time_available,
                     camera.get_exposure_time_bounds, camera.is_exposure_auto_available,
                     camera.set_exposure_time_auto, camera.set_exposure_time),
                    ("gain_db", cfg.gain_db, "no gain", camera.is_gain_available, camera.get_gain_bounds,
                     camera.is_gain_auto_available, camera.set_gain_auto, camera.set_gain)):
                if value is None:
                    continue
                if not available():
                    raise refuse(key, value, f"the camera has {missing}", "remove the key")
                in_bounds(key, value, bounds())
                if auto_available():
                    set_auto(aravis.Auto.OFF)
                set_value(value)
            if cfg.frame_rate is not None:
                if not camera.is_frame_rate_available():
                    raise refuse("frame_rate", cfg.frame_rate, "the camera has no frame rate control", "remove the key")
                in_bounds("frame_rate", cfg.frame_rate, camera.get_frame_rate_bounds())
                camera.set_frame_rate(cfg.frame_rate)
            self._set_trigger(camera, refuse)
            current = camera.get_pixel_format_as_string()
            if current not in PIXEL_FORMATS:
                raise refuse("pixel_format", current, "edgead cannot convert this format (the camera's current one)",
                             f"set camera.pixel_format to one of: {', '.join(PIXEL_FORMATS)}")
        except glib.Error as e:
            raise EdgeADError(f"{self.name}: the camera refused a setting: {e.message}",
                              "check the camera section against what the camera offers (arv-tool-0.8 features)") from e

    def _set_trigger(self, camera: Any, refuse: Callable[..., EdgeADError]) -> None:
        trigger = self.config.trigger
        if trigger == "off":
            if camera.is_feature_available("TriggerMode"):
                camera.clear_triggers()
            return
        if trigger == "software" and not camera.is_software_trigger_supported():
            raise refuse("trigger", trigger, "the camera has no software trigger", "use off or hardware")
        source = "Software" if trigger == "software" else self.config.trigger_source
        offered = list(camera.dup_available_trigger_sources() or [])
        if source not in offered:
            raise refuse("trigger_source" if trigger == "hardware" else "trigger", source,
                         "not a trigger source of this camera", f"it offers: {', '.join(offered) or 'none'}")
        camera.set_trigger(source)

    # --- acquisition ------------------------------------------------------------------------------

    def software_trigger(self) -> None:
        """Fire one exposure (camera.trigger: software), e.g. when a light barrier sees a part."""
        if self.config.trigger != "software":
            raise EdgeADError(f"{self.name}: software_trigger() needs camera.trigger: software",
                              f"camera.trigger is {self.config.trigger}")
        if self._camera is None:
            raise EdgeADError(f"{self.name} is not open", "call open() first")
        try:
            self._camera.software_trigger()
        except self._glib.Error as e:
            raise EdgeADError(f"{self.name}: software trigger failed: {e.message}",
                              "the camera may be gone; the source reconnects when it is back") from e

    def read(self, timeout_s: float) -> Frame | None:
        if self._camera is None:
            raise EdgeADError(f"{self.name} is not open", "call open() first")
        self._raise_if_lost()
        buf = self._stream.timeout_pop_buffer(max(1, int(timeout_s * 1e6)))
        if buf is None:
            self._check_alive()
            return None
        arrived = time.time_ns()
        try:
            status = buf.get_status()
            ok = status == self._aravis.BufferStatus.SUCCESS
            frame_id = int(buf.get_frame_id())
            meta = {"frame_id": frame_id, "camera_timestamp_ns": int(buf.get_timestamp()),
                    "system_timestamp_ns": int(buf.get_system_timestamp())}
            image = None
            if ok:
                try:
                    image = self._image(buf)
                except EdgeADError as e:       # a short buffer is a lost frame, not a lost camera
                    log.warning("%s: frame %d unusable: %s", self.name, frame_id, e.message)
        finally:
            self._stream.push_buffer(buf)
        seq, missing = self._ids.update(frame_id)
        if image is None:
            self.bad_buffers += 1
            log.warning("%s: incomplete frame %d (%s)", self.name, frame_id, status.value_nick)
        self._count_missing(missing + (image is None), seq)
        if image is None:
            return None
        sys_ns = meta["system_timestamp_ns"]
        age = (arrived - sys_ns) / 1e9 if sys_ns > 0 else 0.0
        self.frames += 1
        return make_frame(image, seq, self.name, time.monotonic() - min(max(age, 0.0), 5.0), meta)

    def _image(self, buf: Any) -> Any:
        code = buf.get_image_pixel_format()
        name = self._formats.get(code, f"0x{code:08x}")
        return to_image(buf.get_data(), buf.get_image_width(), buf.get_image_height(), name)

    def _count_missing(self, count: int, seq: int) -> None:
        if count <= 0:
            return
        if self.config.trigger == "hardware":
            self.missed_triggers += count
            log.error("%s: %d missed trigger(s) before seq %d: parts passed uninspected", self.name, count, seq)
        else:
            self.frames_dropped += count
            log.warning("%s: %d frame(s) lost before seq %d", self.name, count, seq)

    def _raise_if_lost(self) -> None:
        if self._lost is not None:
            raise EdgeADError(f"{self.name}: camera gone ({self._lost})",
                              "check power and the network cable; the source reconnects when it is back")

    def _check_alive(self) -> None:
        """On a read timeout (at most every probe_interval_s): does the camera still answer?

        With a trigger, no frames is normal, so silence alone proves nothing; a GVCP DISCOVERY to the
        camera's address does, within milliseconds, long before Aravis's heartbeat gives up.
        """
        self._raise_if_lost()
        now = time.monotonic()
        if self.device_ip is None or now - self._last_probe < self.probe_interval_s:
            return
        self._last_probe = now
        wait = min(0.25, self.config.timeout_ms / 2000)
        if gvcp_probe(self.device_ip, wait) is None and gvcp_probe(self.device_ip, wait) is None:
            self._lost = f"no answer at {self.device_ip}"
            self._raise_if_lost()
