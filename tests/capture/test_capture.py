"""edgead.capture: spec strings, camera config, pixel formats, video files, image folders, reconnecting.
The real GigE Vision and GenTL cameras are in tests/peers/test_camera_peers.py."""

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
from edgead.errors import EdgeADError, redact_text

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

    def accounting(self) -> dict | None:
        return None                     # a live camera: nothing to account for against


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
    assert redact_text("rtsp://op:s3cret@127.0.0.1:9/x") == "rtsp://op:***@127.0.0.1:9/x"
    with pytest.raises(EdgeADError) as e:
        open_source("rtsp://op:s3cret@127.0.0.1:9/stream", {"timeout_ms": 500})
    assert "could not be opened" in e.value.message and "s3cret" not in str(e.value)
