"""edgead.capture: spec strings, camera config, video files, image folders, reconnecting, and real
GigE Vision (Aravis fake camera on loopback) and GenTL (Viky producer) cameras."""

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
from edgead.capture.opencv import OpenCVCamera, gstreamer_camera, has_gstreamer, redact
from edgead.capture.pixels import PIXEL_FORMATS, to_image
from edgead.capture.replay import ReplaySource
from edgead.errors import EdgeADError

# --- camera config ---------------------------------------------------------------------------------


def test_config_unknown_key_names_it():
    with pytest.raises(EdgeADError) as e:
        CameraConfig.from_dict({"exposure_us": 500, "exposure_ms": 2})
    assert "camera.exposure_ms" in e.value.message and "exposure_us" in e.value.hint


@pytest.mark.parametrize("section, key", [
    ({"exposure_us": -5}, "exposure_us"), ({"gain_db": "high"}, "gain_db"), ({"trigger": "on"}, "trigger"),
    ({"pixel_format": "YUV422"}, "pixel_format"), ({"packet_size": 9000.5}, "packet_size"),
    ({"trigger_source": "Line1"}, "trigger_source"), ({"loop": "yes"}, "loop"), ({"trigger": None}, "trigger"),
])
def test_config_bad_values_name_the_key(section, key):
    with pytest.raises(EdgeADError) as e:
        CameraConfig.from_dict(section)
    assert f"camera.{key}" in e.value.message


def test_config_from_yaml():
    cfg = CameraConfig.from_dict(yaml.safe_load(
        "exposure_us: 800\ngain_db: 0\npixel_format: BayerRG8\ntrigger: hardware\ntrigger_source: Line1\n"
        "packet_size: 8192\nframe_rate: 30\ntimeout_ms: 500\n"))
    assert (cfg.exposure_us, cfg.gain_db, cfg.trigger, cfg.trigger_source, cfg.packet_size) == \
        (800.0, 0.0, "hardware", "Line1", 8192)
    assert CameraConfig.from_dict(yaml.safe_load("trigger: off")).trigger == "off"   # YAML's bare off is False
    assert CameraConfig.from_dict(None) == CameraConfig()


def test_a_live_camera_refuses_settings_it_cannot_apply_a_recording_ignores_them(tmp_path):
    with pytest.raises(EdgeADError) as e:
        OpenCVCamera(0, config=CameraConfig.from_dict({"exposure_us": 100}))
    assert "camera.exposure_us" in e.value.message and "opencv:0" in e.value.message
    folder = write_images(tmp_path / "imgs", ["a.png"])
    ReplaySource(folder, config=CameraConfig.from_dict({"exposure_us": 100}))        # no error


# --- pixel formats -----------------------------------------------------------------------------------

COLOR = (200, 90, 30)          # R, G, B: every channel different, so any swap shows


def _mosaic(pattern: str, h: int = 8, w: int = 8) -> np.ndarray:
    """A GenICam Bayer buffer of a flat COLOR image; pattern = the top-left 2x2 cell, e.g. 'RGGB'."""
    value = dict(zip("RGB", COLOR))
    m = np.zeros((h, w), np.uint8)
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        m[dy::2, dx::2] = value[pattern[k]]
    return m


@pytest.mark.parametrize("name, pattern", [("BayerRG8", "RGGB"), ("BayerGR8", "GRBG"),
                                           ("BayerGB8", "GBRG"), ("BayerBG8", "BGGR")])
def test_bayer_patterns_decode_to_the_right_colours(name, pattern):
    rgb = to_image(_mosaic(pattern).tobytes(), 8, 8, name)
    assert rgb.shape == (8, 8, 3)
    assert tuple(int(v) for v in rgb[4, 4]) == COLOR


def test_bayer_rg_is_not_opencvs_bayerrg_code():
    """GenICam BayerRG8 (R top-left) is OpenCV's classic COLOR_BayerBG2RGB; COLOR_BayerRG2RGB swaps R/B."""
    wrong = cv2.cvtColor(_mosaic("RGGB"), cv2.COLOR_BayerRG2RGB)
    assert tuple(int(v) for v in wrong[4, 4]) == COLOR[::-1]
    assert PIXEL_FORMATS["BayerRG8"].convert == cv2.COLOR_BayerBG2RGB


def test_other_pixel_formats_stride_and_short_buffers():
    rgb = np.random.default_rng(0).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_image(rgb.tobytes(), 5, 4, "RGB8"), rgb)
    np.testing.assert_array_equal(to_image(rgb[..., ::-1].tobytes(), 5, 4, "BGR8"), rgb)
    rgba = np.concatenate([rgb, np.full((4, 5, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_image(rgba.tobytes(), 5, 4, "RGBa8"), rgb)
    mono16 = np.arange(20, dtype=np.uint16).reshape(4, 5) * 1000
    out16 = to_image(mono16.tobytes(), 5, 4, "Mono16")
    assert out16.dtype == np.uint16 and (out16 == mono16).all()
    padded = np.zeros((4, 8), np.uint8)
    padded[:, :5] = 7
    out = to_image(padded.tobytes(), 5, 4, "Mono8", stride=8)
    assert out.shape == (4, 5) and (out == 7).all() and out.flags.writeable
    with pytest.raises(EdgeADError, match="too short"):
        to_image(b"\0" * 10, 5, 4, "Mono8")


def test_frame_ids_unwrap_count_gaps_and_restarts():
    ids = FrameIds()
    assert ids.update(65533) == (65533, 0)
    assert ids.update(65535) == (65535, 1)            # 65534 missing
    assert ids.update(1) == (65536, 0)                # 16-bit wrap skips 0
    assert ids.update(4) == (65539, 2)
    assert ids.update(3) == (65540, 0)                # count restarted: seq goes on, loss unknown
    assert ids.update(3) == (65541, 0)                # no frame ids: a plain counter


def test_make_frame_stamps_monotonic_and_utc():
    before = time.monotonic()
    f = make_frame(np.zeros((2, 2), np.uint8), 5, "x")
    assert before <= f.t_capture <= time.monotonic() and f.wall_time.endswith("Z") and f.seq == 5


# --- spec strings ------------------------------------------------------------------------------------


def test_device_index_that_does_not_open():
    with pytest.raises(EdgeADError) as e:
        open_source("37")
    assert e.value.message == "camera 37 could not be opened"
    assert "/dev/video37" in e.value.hint and "group 'video'" in e.value.hint and "other program" in e.value.hint


@pytest.mark.parametrize("spec", ["usb3:cam1", "pylon:0", "ftp://127.0.0.1/x"])
def test_unknown_spec(spec):
    with pytest.raises(EdgeADError) as e:
        open_source(spec)
    assert f"unknown camera spec '{spec}'" == e.value.message and "gige:" in e.value.hint


def test_missing_path_and_empty_spec(tmp_path):
    with pytest.raises(EdgeADError, match="no such file or folder"):
        open_source(str(tmp_path / "nope.mp4"))
    with pytest.raises(EdgeADError, match="empty camera spec"):
        open_source("  ")


def test_gst_without_gstreamer(monkeypatch):
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "  Video I/O:\n    GStreamer:   NO\n")
    with pytest.raises(EdgeADError) as e:
        open_source("gst:videotestsrc ! videoconvert ! appsink")
    assert "no GStreamer support" in e.value.message and "WITH_GSTREAMER" in e.value.hint
    assert has_gstreamer("    GStreamer:                   YES (1.22.0)")
    with pytest.raises(EdgeADError, match="needs a pipeline"):
        gstreamer_camera("  ")


def test_genicam_spec_parsing():
    assert parse_genicam_spec("/opt/x/producer.cti") == ("/opt/x/producer.cti", None)
    assert parse_genicam_spec("/opt/x/producer.cti:2140001") == ("/opt/x/producer.cti", "2140001")
    with pytest.raises(EdgeADError, match="ending in .cti"):
        parse_genicam_spec("/opt/x/producer.so:1")


@pytest.mark.parametrize("spec, module, extra", [("gige:cam", "gi", "gige"), ("genicam:/x/p.cti", "harvesters", "genicam")])
def test_optional_library_missing_says_what_to_install(monkeypatch, tmp_path, spec, module, extra):
    monkeypatch.setitem(sys.modules, module, None)                        # import -> ImportError
    if module == "harvesters":
        monkeypatch.setitem(sys.modules, "harvesters.core", None)
        (tmp_path / "p.cti").write_bytes(b"")
        spec = f"genicam:{tmp_path / 'p.cti'}"
    message = {"gige": r"GigE cameras need PyGObject and Aravis, and PyGObject is not installed\n",
               "genicam": r"genicam: sources need Harvesters, which is not installed \(import of harvesters"}[extra]
    with pytest.raises(EdgeADError, match=f"^{message}") as e:
        open_source(spec)
    assert f'pip install "edgead[{extra}]"' in e.value.hint


# --- video files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fourcc, ext", [("mp4v", ".mp4"), ("MJPG", ".avi")])
def test_video_file_seq_finished_and_loop(tmp_path, fourcc, ext):
    path = write_video(tmp_path / f"v{ext}", fourcc, n=12)
    src = open_source(str(path))
    frames = [src.read(0.1) for _ in range(12)]
    assert [f.seq for f in frames] == list(range(12))
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    means = [f.image.mean() for f in frames]
    assert all(b > a for a, b in zip(means, means[1:]))                 # in file order
    assert frames[-1].meta["frame_index"] == 11 and frames[0].source == f"video:{path}"
    assert not src.finished
    assert src.read(0.1) is None and src.finished and src.read(0.1) is None
    src.close()

    looped = open_source(str(path), {"loop": True})
    seqs = [looped.read(0.1) for _ in range(30)]
    assert [f.seq for f in seqs] == list(range(30)) and not looped.finished
    assert [f.meta["frame_index"] for f in seqs][10:14] == [10, 11, 0, 1] and seqs[-1].meta["pass"] == 2
    looped.close()


def test_video_file_that_is_not_a_video(tmp_path):
    bad = tmp_path / "x.mp4"
    bad.write_bytes(b"not a video" * 50)
    with pytest.raises(EdgeADError, match="cannot open video file"):
        open_source(str(bad))


# --- image folders -----------------------------------------------------------------------------------


def test_replay_folder_order_and_finished(tmp_path):
    names = ["b.png", "a.png", "10.png", "02.png", "c.bmp"]
    folder = write_images(tmp_path / "imgs", names)
    (folder / "notes.txt").write_text("not an image")
    src = open_source(str(folder))
    frames = [src.read(0.1) for _ in range(5)]
    assert [Path(f.meta["file"]).name for f in frames] == sorted(names)
    assert [f.seq for f in frames] == list(range(5))
    assert [int(f.image[0, 0, 0]) for f in frames] == [names.index(n) for n in sorted(names)]   # RGB
    assert src.read(0.1) is None and src.finished
    looped = ReplaySource(folder, loop=True)
    looped.open()
    assert [looped.read(0.1).meta["index"] for _ in range(7)] == [0, 1, 2, 3, 4, 0, 1]


def test_replay_pacing(tmp_path, monkeypatch):
    import edgead.capture.frames as capture

    # a fake clock drives the pacer: the waits are exact, however slow reading the files is
    clock = FakeClock()
    monkeypatch.setattr(capture, "time", SimpleNamespace(monotonic=clock, time=time.time))
    folder = write_images(tmp_path / "imgs", [f"{i:02d}.png" for i in range(5)])
    src = ReplaySource(folder, fps=40, sleep=clock.sleep)
    src.open()
    frames = [src.read(1.0) for _ in range(5)]
    assert all(frames) and clock.sleeps == pytest.approx([1 / 40] * 4)
    assert [f.t_capture for f in frames] == pytest.approx([100 + i / 40 for i in range(5)])
    slow = ReplaySource(folder, fps=2, sleep=clock.sleep)
    slow.open()
    clock.sleeps.clear()
    assert slow.read(0.05) is not None and clock.sleeps == []          # the first is due at once
    assert slow.read(0.05) is None and clock.sleeps == [0.05]          # the next is due in 0.5 s: not within 0.05 s
    assert slow.read(1.0) is not None and clock.sleeps == pytest.approx([0.05, 0.45])   # it waits the rest


def test_replay_bad_file_stops_or_is_skipped(tmp_path):
    folder = write_images(tmp_path / "imgs", ["01.png", "03.png"])
    (folder / "02.png").write_bytes(b"\x89PNG truncated")
    src = open_source(str(folder))
    assert src.read(0.1).meta["index"] == 0
    with pytest.raises(EdgeADError) as e:
        src.read(0.1)
    assert "02.png" in e.value.message and "skip_bad" in e.value.hint

    wrapped = ReconnectingSource(open_source(str(folder)))             # a recording is not reopened
    wrapped.read(0.1)
    with pytest.raises(EdgeADError, match="02.png"):
        wrapped.read(0.1)

    skipping = open_source(str(folder), {"skip_bad": True})
    got = [skipping.read(0.1) for _ in range(3)]
    assert [Path(f.meta["file"]).name for f in got[:2]] == ["01.png", "03.png"] and got[2] is None
    assert skipping.skipped == 1 and skipping.finished


# --- reconnecting ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


class FlakySource:
    """Scripted: frames 0..4, then the camera is gone; open fails `down` times; frames resume at `resume`."""

    live = True

    def __init__(self, clock: FakeClock, down: int = 3, resume: int = 10) -> None:
        self.name = "flaky"
        self.clock, self.down, self.next_seq, self.resume = clock, down, 0, resume
        self.opens = self.closes = 0
        self.is_open = False

    def open(self) -> None:
        self.opens += 1
        if self.opens > 1 and self.down > 0:
            self.down -= 1
            raise EdgeADError("camera not found")
        self.is_open = True

    def read(self, timeout_s: float):
        assert self.is_open
        self.clock.now += 0.01
        if self.next_seq == 5 and self.opens == 1:
            raise EdgeADError("camera stopped delivering frames")
        if self.next_seq == 5:
            self.next_seq = self.resume
        frame = make_frame(np.zeros((2, 2), np.uint8), self.next_seq, self.name, self.clock.now)
        self.next_seq += 1
        return frame

    def close(self) -> None:
        self.closes += 1
        self.is_open = False


def test_reconnect_with_backoff_counts_the_gap(caplog):
    clock = FakeClock()
    inner = FlakySource(clock, down=3, resume=10)
    src = ReconnectingSource(inner, Backoff(initial_s=0.01, factor=2, max_s=0.03), sleep=clock.sleep, clock=clock)
    caplog.set_level(logging.INFO, logger="edgead.capture.reconnect")
    frames = []
    for _ in range(40):
        frame = src.read(0.5)
        if frame is not None:
            frames.append(frame)
        if len(frames) == 8:
            break
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4, 10, 11, 12]
    assert clock.sleeps == pytest.approx([0.01, 0.02, 0.03, 0.03])      # doubling, capped
    assert max(clock.sleeps) <= 0.05
    assert (src.reconnects, src.failed_attempts, src.frames_lost) == (1, 3, 5)
    assert src.gap_s_total == pytest.approx(frames[5].t_capture - frames[4].t_capture)
    assert inner.closes == 4 and src.connected
    text = caplog.text
    assert "camera lost" in text and "reopen attempt 3 failed" in text and "5 frames lost" in text


def test_reconnect_keeps_seq_increasing_when_the_camera_restarts_its_count():
    clock = FakeClock()
    src = ReconnectingSource(FlakySource(clock, down=0, resume=0), Backoff(0.01, 2, 0.04),
                             sleep=clock.sleep, clock=clock)
    seqs, raw = [], []
    while len(seqs) < 8:
        f = src.read(0.5)
        if f is not None:
            seqs.append(f.seq)
            raw.append(f.meta.get("source_seq", f.seq))
    assert seqs == list(range(8)) and raw == [0, 1, 2, 3, 4, 0, 1, 2] and src.frames_lost == 0


def test_first_open_failure_is_not_retried():
    clock = FakeClock()

    class Dead(FlakySource):
        def open(self) -> None:
            raise EdgeADError("camera 0 could not be opened")

    with pytest.raises(EdgeADError, match="could not be opened"):
        ReconnectingSource(Dead(clock), sleep=clock.sleep, clock=clock).read(0.1)


class FakeCapture:
    """cv2.VideoCapture stand-in: `script` is shared; True = a frame, False = a failed read."""

    def __init__(self, script: list[bool], opens: list[bool]) -> None:
        self.script, self.ok = script, opens.pop(0) if opens else True

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return self.ok

    def read(self):
        good = self.script.pop(0) if self.script else False
        return (True, np.zeros((4, 6, 3), np.uint8)) if good else (False, None)

    def get(self, prop: int) -> float:
        return 0.0

    def set(self, prop: int, value: float) -> bool:
        return True

    def release(self) -> None:
        pass


def test_unplugged_usb_camera_raises_then_reconnects():
    script = [True, False, False, False]
    cam = OpenCVCamera(0, capture_factory=lambda *a: FakeCapture(script, [True]))
    cam.open()
    assert cam.read(0.1).image.shape == (4, 6, 3)
    assert cam.read(0.1) is None and cam.read(0.1) is None          # a hiccup is not yet a lost camera
    with pytest.raises(EdgeADError, match="stopped delivering frames"):
        cam.read(0.1)

    script = [True, True, False, False, False, True, True]
    opens = [True, False, True]                                      # first open, a failed reopen, back
    clock = FakeClock()
    src = ReconnectingSource(OpenCVCamera(0, capture_factory=lambda *a: FakeCapture(script, opens)),
                             Backoff(0.01, 2, 0.02), sleep=clock.sleep, clock=clock)
    got = [src.read(0.1) for _ in range(9)]
    assert [f.seq for f in got if f] == [0, 1, 2, 3]                  # the restarted count continues
    assert (src.reconnects, src.failed_attempts) == (1, 1) and clock.sleeps == pytest.approx([0.01, 0.02])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_http_stream_on_loopback_then_its_end_is_a_lost_camera(tmp_path):
    write_video(tmp_path / "cam.avi", "MJPG", n=5)
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        src = open_source(f"http://127.0.0.1:{server.server_address[1]}/cam.avi", {"timeout_ms": 2000})
        frames = [src.read(1.0) for _ in range(5)]
        assert [f.seq for f in frames] == list(range(5)) and frames[0].image.shape == (48, 64, 3)
        with pytest.raises(EdgeADError, match="stopped delivering frames"):
            for _ in range(5):
                src.read(1.0)
        src.close()
    finally:
        server.shutdown()
        server.server_close()


def test_stream_that_does_not_open_hides_the_password():
    assert redact("rtsp://op:s3cret@127.0.0.1:9/x") == "rtsp://op:***@127.0.0.1:9/x"
    with pytest.raises(EdgeADError) as e:
        open_source("rtsp://op:s3cret@127.0.0.1:9/stream", {"timeout_ms": 500})
    assert "could not be opened" in e.value.message and "s3cret" not in str(e.value)


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
