"""edgead.capture against real peers: GigE Vision (Aravis fake camera on loopback) and GenTL (the Viky
producer shipped with the genicam package)."""

from __future__ import annotations

import functools
import http.server
import logging
import re
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import yaml

from capture_fixtures import (FakeGigECamera, fake_gige_server, gige_camera, viky,  # noqa: F401
                              write_images, write_video)
from edgead.capture import FrameIds, ReconnectingSource, Backoff, make_frame, open_source
from edgead.capture.config import CameraConfig
from edgead.capture.genicam import parse_genicam_spec
from edgead.capture.opencv import OpenCVCamera, gstreamer_camera, has_gstreamer
from edgead.capture.pixels import PIXEL_FORMATS, to_image
from edgead.capture.replay import ReplaySource
from edgead.errors import EdgeADError

# --- GigE Vision: Aravis fake camera on loopback -------------------------------------------------------


def _gige(camera: FakeGigECamera, **config):
    return open_source(f"gige:{camera.ip}", {"timeout_ms": 500, **config})


def _read_back(src) -> dict[str, object]:
    """The settings as the camera reports them: register reads over GVCP on the source's own
    connection (Aravis's register cache off, as by default, so no value comes from a cache)."""
    from gi.repository import Aravis

    camera = src._camera
    device = camera.get_device()
    device.set_register_cache_policy(Aravis.RegisterCachePolicy.DISABLE)
    return {"pixel_format": device.get_string_feature_value("PixelFormat"),
            "exposure_us": camera.get_exposure_time(), "frame_rate": camera.get_frame_rate(),
            "packet_size": camera.gv_get_packet_size()}


# Each case differs from the fake camera's defaults (Mono8, 10000 us, 25 fps, 1400 B) and from the other
# cases: the camera keeps its settings across connections, so a value left by an earlier case (Mono8
# comes last for that) cannot pass for one this open did not apply. It stores the exposure in whole us
# and the frame rate as a whole-us period (1234.5 us reads back 1234, 49.7 fps 49.7018): these are exact.
@pytest.mark.parametrize("pixel_format, shape, exposure_us, frame_rate, packet_size", [
    ("RGB8", (512, 512, 3), 3000, 40, 1200), ("BayerRG8", (512, 512, 3), 1500, 20, 8192),
    ("Mono8", (512, 512), 2000, 50, 1000)])
def test_gige_frames(gige_camera, pixel_format, shape, exposure_us, frame_rate, packet_size):
    before = time.monotonic()
    src = _gige(gige_camera, pixel_format=pixel_format, frame_rate=frame_rate, exposure_us=exposure_us,
                packet_size=packet_size)
    try:
        frames = [src.read(1.0) for _ in range(4)]
        after = time.monotonic()
        applied = _read_back(src)
    finally:
        src.close()
    assert applied == {"pixel_format": pixel_format, "exposure_us": exposure_us, "frame_rate": frame_rate,
                       "packet_size": packet_size}
    assert all(frames)
    seqs = [f.seq for f in frames]
    assert all(b > a for a, b in zip(seqs, seqs[1:]))
    assert frames[0].image.shape == shape and frames[0].image.dtype == np.uint8
    assert frames[0].source == f"gige:{gige_camera.ip}" and frames[0].meta["camera_timestamp_ns"] > 0
    assert frames[0].meta["frame_id"] > 0
    # t_capture is on the monotonic clock, when the buffer arrived: between open and the last read
    # (10 ms for the wall clock, which dates the buffer, drifting against the monotonic one)
    stamps = [f.t_capture for f in frames]
    assert before - 0.01 <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= after + 0.01


def test_gige_software_trigger_one_frame_per_trigger(gige_camera):
    src = _gige(gige_camera, pixel_format="Mono8", trigger="software")
    try:
        assert src.read(0.3) is None                     # nothing without a trigger
        seqs = []
        for _ in range(3):
            src.software_trigger()
            frame = src.read(1.0)
            assert frame is not None
            seqs.append(frame.seq)
            assert src.read(0.15) is None                # exactly one
        assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2] and src.frames_dropped == 0
    finally:
        src.close()


def test_gige_bad_id_and_refused_settings(gige_camera, monkeypatch):
    from edgead.capture import gige

    probes: list[tuple[str, float]] = []
    discovery: list[str] = []
    real_probe, real_aravis = gige.gvcp_probe, gige.load_aravis()

    def probe(ip: str, timeout_s: float):
        probes.append((ip, timeout_s))
        return real_probe(ip, timeout_s)

    class NoDiscovery:
        """Aravis, noting every use of its device list (a broadcast on every interface) or its open."""

        def __getattr__(self, name: str):
            if name in ("update_device_list", "Camera"):
                discovery.append(name)
            return getattr(real_aravis, name)

    with monkeypatch.context() as m:
        m.setattr(gige, "gvcp_probe", probe)
        m.setattr(gige, "load_aravis", NoDiscovery)
        with pytest.raises(EdgeADError) as e:
            open_source("gige:127.0.0.9", {"timeout_ms": 300})
    assert e.value.message == "no GigE Vision camera answers at 127.0.0.9"
    # fails fast: one unicast probe bounded by camera.timeout_ms, then no Aravis discovery or open
    assert probes == [("127.0.0.9", 0.3)] and discovery == []
    with pytest.raises(EdgeADError) as e:
        _gige(gige_camera, trigger="hardware", trigger_source="Line7")
    assert "camera.trigger_source='Line7'" in e.value.message and "Line0" in e.value.hint
    with pytest.raises(EdgeADError) as e:
        _gige(gige_camera, exposure_us=1e9)
    assert "camera.exposure_us" in e.value.message and "range" in e.value.message
    hw = _gige(gige_camera, pixel_format="Mono8", trigger="hardware", trigger_source="Line0")
    try:
        assert hw.read(0.3) is None and hw.missed_triggers == 0    # no pulse on Line0: no frame, no alarm
    finally:
        hw.close()


def test_gvcp_probe_gives_up_after_its_timeout():
    """A host that takes the DISCOVERY but never answers (a PC, not a camera): the probe waits out its
    timeout once. 127.0.0.9 refuses at once otherwise (ICMP), which never exercises the wait."""
    import socket

    from edgead.capture.gige import GVCP_PORT, gvcp_probe

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        try:
            silent.bind(("127.0.0.9", GVCP_PORT))
        except OSError as e:
            pytest.skip(f"cannot listen on 127.0.0.9:{GVCP_PORT} ({e})")
        t0 = time.monotonic()
        assert gvcp_probe("127.0.0.9", 0.5) is None
        waited = time.monotonic() - t0
        silent.settimeout(1.0)
        assert silent.recv(64)[:4] == bytes([0x42, 0x01, 0x00, 0x02])       # it sent one DISCOVERY_CMD
    # a retry or a second wait would double the 0.5 s: the other 0.5 s is for a loaded machine
    assert 0.49 <= waited < 1.0


def test_gige_missed_triggers_are_counted_and_jump_the_seq():
    """A frame-id gap with trigger: hardware is counted, and the seq jumps by it, which is what makes
    the run loop give each missing part the safe action (ids fed as if frames 2..3 never came)."""
    from edgead.capture.gige import GigESource

    src = GigESource("127.0.0.1", config=CameraConfig.from_dict({"trigger": "hardware"}))
    seqs = []
    for frame_id in (1, 4):
        seq, missing = src._ids.update(frame_id)
        src._count_missing(missing, seq)
        seqs.append(seq)
    assert src.missed_triggers == 2 and seqs == [1, 4]


class _StubGLibError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _stub_aravis(devices: list[tuple[str, str, str, str]], opened: list[str]) -> SimpleNamespace:
    """Aravis's device list without a discovery broadcast: (id, serial, mac, ip) per camera."""
    def new(target: str) -> str:
        if target not in [d[0] for d in devices]:
            raise _StubGLibError(f"Device '{target}' not found")
        opened.append(target)
        return "camera"

    return SimpleNamespace(
        update_device_list=lambda: None, get_n_devices=lambda: len(devices),
        get_device_id=lambda i: devices[i][0], get_device_serial_nbr=lambda i: devices[i][1],
        get_device_physical_id=lambda i: devices[i][2], get_device_address=lambda i: devices[i][3],
        Camera=SimpleNamespace(new=new))


def test_gige_ids_match_serial_mac_or_first_camera():
    from edgead.capture.gige import GigESource

    glib = SimpleNamespace(Error=_StubGLibError)
    cams = [("Basler-acA1300-2140001", "2140001", "00:30:53:01:02:03", "192.168.10.20"),
            ("Aravis-Fake-EDGEAD1", "EDGEAD1", "00:11:22:33:44:55", "127.0.0.1")]
    opened: list[str] = []
    for cid in ("2140001", "00:11:22:33:44:55", "Aravis-Fake-EDGEAD1", ""):
        GigESource(cid)._connect(_stub_aravis(cams, opened), glib)
    assert opened == ["Basler-acA1300-2140001", "Aravis-Fake-EDGEAD1", "Aravis-Fake-EDGEAD1", "Basler-acA1300-2140001"]
    with pytest.raises(EdgeADError) as e:
        GigESource("Basler-9999")._connect(_stub_aravis(cams, opened), glib)
    assert e.value.message == "GigE camera 'Basler-9999' not found"
    assert "Basler-acA1300-2140001 (192.168.10.20), Aravis-Fake-EDGEAD1 (127.0.0.1)" in e.value.hint
    with pytest.raises(EdgeADError, match="no GigE Vision camera found"):
        GigESource("")._connect(_stub_aravis([], opened), glib)


def test_gige_camera_killed_mid_run_raises_from_read(gige_camera):
    src = _gige(gige_camera, pixel_format="Mono8")
    try:
        assert src.read(1.0) is not None
        gige_camera.stop()
        t0 = time.monotonic()
        # the message names who noticed: "no answer at" is the GVCP probe, "control lost" Aravis's heartbeat
        with pytest.raises(EdgeADError, match=rf"camera gone \(no answer at {re.escape(gige_camera.ip)}\)"):
            while time.monotonic() - t0 < 8:
                src.read(0.3)
        # No wall-clock bound here: the message above already proves the GVCP probe (worst case 1.8 s)
        # noticed before Aravis's heartbeat (5 s); a loaded CI box stretched the probe's 1.8 s to 4.2 s.
    finally:
        earlier = set(threading.enumerate())
        t0 = time.monotonic()
        src.close()
        close_s = time.monotonic() - t0
    # Aravis's clean-up of a dead camera waits out each register access (GVCP: 500 ms x 5 tries; 5-9 s
    # measured): close hands it to a thread that is still at it, and returns within one access (2.5 s),
    # where doing the clean-up inline takes 5-9 s.
    release = [t for t in threading.enumerate() if t.name == f"{src.name} release" and t not in earlier]
    assert len(release) == 1 and release[0].is_alive()
    assert close_s < 2.5


def test_gige_reconnects_after_the_camera_comes_back(gige_camera):
    src = ReconnectingSource(_gige(gige_camera, pixel_format="Mono8"), Backoff(0.05, 2, 0.2))
    try:
        assert src.read(1.0) is not None
        gige_camera.stop()
        deadline = time.monotonic() + 8
        while src.connected and time.monotonic() < deadline:
            src.read(0.3)
        assert not src.connected and "camera gone" in src.last_error.message
        gige_camera.start()
        frame, deadline = None, time.monotonic() + 10
        while frame is None and time.monotonic() < deadline:
            frame = src.read(0.3)
        assert frame is not None and src.reconnects == 1 and src.gap_s_total > 0
    finally:
        src.close()


# --- GenTL producer: Viky (shipped in the genicam package) --------------------------------------------


def test_genicam_viky_frames(viky):
    src = open_source(f"genicam:{viky}:1", {"pixel_format": "Mono8"})
    try:
        frames = [src.read(2.0) for _ in range(3)]
    finally:
        src.close()
    assert [f.seq for f in frames] == [frames[0].seq, frames[0].seq + 1, frames[0].seq + 2]
    assert frames[0].image.shape == (400, 400) and frames[0].image.dtype == np.uint8
    assert frames[0].source == "genicam:viky.cti:1" and frames[0].meta["pixel_format"] == "Mono8"
    color = open_source(f"genicam:{viky}", {"pixel_format": "RGBa8"})
    try:
        assert color.read(2.0).image.shape == (400, 400, 3)
    finally:
        color.close()


def test_genicam_viky_errors(viky, tmp_path):
    with pytest.raises(EdgeADError) as e:
        open_source(f"genicam:{viky}", {"exposure_us": 100})
    assert "camera.exposure_us" in e.value.message and "ExposureTime" in e.value.message
    with pytest.raises(EdgeADError) as e:
        open_source(f"genicam:{viky}", {"pixel_format": "BayerRG8"})
    assert e.value.message == "genicam:viky.cti: camera.pixel_format='BayerRG8' was refused by PixelFormat"
    assert "Mono8" in e.value.hint
    with pytest.raises(EdgeADError) as e:
        open_source(f"genicam:{viky}:999")
    assert "'999' not found" in e.value.message and "VikyTL_DEV_green" in e.value.hint
    junk = tmp_path / "junk.cti"
    junk.write_bytes(b"not a library")
    with pytest.raises(EdgeADError, match="cannot be loaded"):
        open_source(f"genicam:{junk}")
