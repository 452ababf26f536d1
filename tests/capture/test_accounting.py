"""Recordings account for every frame: what the container (or folder) promised = frames read +
frames that could not be read (+ images skipped with camera.skip_bad), and `ended_early` says when
a replay lost any. Real files written with cv2.VideoWriter, then truncated or damaged on disk; a
scripted capture pins down the reading-on logic frame by frame."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from capture_fixtures import write_images, write_video
from edgead.capture import ReconnectingSource, open_source
from edgead.capture.opencv import OpenCVCamera, VideoFileSource
from edgead.capture.replay import ReplaySource
from edgead.errors import EdgeADError

KEYS = {"expected", "read", "unreadable", "skipped", "ended_early", "passes"}


def _drain(src, limit: int = 10_000) -> list:
    frames: list = []
    for _ in range(limit):
        frame = src.read(0.1)
        if frame is None:
            assert src.finished
            return frames
        frames.append(frame)
    raise AssertionError("the source never finished")


def _damage(path: Path, *, keep: float | None = None, corrupt_at: float | None = None, size: int = 400) -> Path:
    """Cut the file to `keep` of its bytes, or overwrite `size` bytes at `corrupt_at` of it (seeded)."""
    data = bytearray(path.read_bytes())
    if keep is not None:
        data = data[:int(len(data) * keep)]
    if corrupt_at is not None:
        at = int(len(data) * corrupt_at)
        data[at:at + size] = np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8).tobytes()
    out = path.with_name(f"damaged_{path.name}")
    out.write_bytes(bytes(data))
    return out


# --- real video files --------------------------------------------------------------------------------


@pytest.mark.parametrize("fourcc, ext", [("mp4v", ".mp4"), ("MJPG", ".avi")])
def test_clean_video_reads_every_frame_the_container_lists(tmp_path, fourcc, ext):
    src = open_source(str(write_video(tmp_path / f"v{ext}", fourcc, n=12)))
    first = src.read(0.1)
    midway = src.accounting()
    assert first is not None and midway["read"] == 1 and not midway["ended_early"]     # not over yet
    frames = [first] + _drain(src)
    acc = src.accounting()
    assert set(acc) == KEYS
    assert acc == {"expected": 12, "read": 12, "unreadable": 0, "skipped": [], "ended_early": False, "passes": 1}
    assert len(frames) == acc["read"] and [f.meta["frame_index"] for f in frames] == list(range(12))


def test_truncated_video_counts_the_frames_never_read(tmp_path):
    """A recording cut mid-file (as a copy interrupted, or a recorder that lost power)."""
    whole = write_video(tmp_path / "v.avi", "MJPG", n=300)
    src = open_source(str(_damage(whole, keep=0.3)))
    frames = _drain(src)
    acc = src.accounting()
    assert acc["expected"] == 300                          # the AVI header still lists all of them
    assert 0 < acc["read"] < 300 and acc["read"] == len(frames)
    assert acc["read"] + acc["unreadable"] == acc["expected"]
    assert acc["unreadable"] >= 150 and acc["ended_early"] is True
    assert [f.seq for f in frames] == list(range(len(frames)))


@pytest.mark.parametrize("fourcc, ext", [("MJPG", ".avi"), ("mp4v", ".mp4")])
def test_corrupt_bytes_mid_video_are_counted_and_reading_goes_on(tmp_path, fourcc, ext):
    whole = write_video(tmp_path / f"v{ext}", fourcc, n=60)
    src = open_source(str(_damage(whole, corrupt_at=0.5, size=300)))
    frames = _drain(src)
    acc = src.accounting()
    assert acc["expected"] == 60 and acc["read"] == len(frames)
    assert acc["unreadable"] >= 1 and acc["read"] + acc["unreadable"] == 60
    assert acc["ended_early"] is True
    assert acc["read"] > 40                                # the frames after the damage were read too
    assert abs(frames[-1].image.mean() - (20 * 59) % 256) < 4   # up to the file's last frame


def test_truncated_mp4_without_its_index_does_not_open(tmp_path):
    """OpenCV's mp4 writer puts the index (moov) last: a cut .mp4 is refused at start, not replayed short."""
    cut = _damage(write_video(tmp_path / "v.mp4", "mp4v", n=30), keep=0.5)
    with pytest.raises(EdgeADError, match="cannot open video file"):
        open_source(str(cut))


# --- the reading-on logic, frame by frame ---------------------------------------------------------


class ScriptedVideo:
    """cv2.VideoCapture stand-in for a file of frames 0..n-1 (pixel value = frame index).

    bad: frames whose decoding fails (one failed read each, then the next frame follows);
    vanish: frames the demuxer drops without a failed read; present: frames the file still holds
    (a truncated file); count: what the container says (0 = unknown); fps 0: no timestamps.
    """

    def __init__(self, n: int, *, bad=(), vanish=(), present: int | None = None, count: int | None = None,
                 fps: float = 10.0) -> None:
        self.packets = [i for i in range(n if present is None else present) if i not in vanish]
        self.bad, self.fps = set(bad), fps
        self.count = n if count is None else count
        self.pos, self.ms, self.reads = 0, 0.0, 0

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return True

    def read(self):
        self.reads += 1
        if self.pos >= len(self.packets):
            self.ms = 0.0
            return False, None
        i = self.packets[self.pos]
        self.pos += 1
        if i in self.bad:
            self.ms = 0.0
            return False, None
        self.ms = i * 1000.0 / self.fps if self.fps else 0.0
        return True, np.full((4, 6, 3), i, np.uint8)

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FRAME_COUNT: float(self.count), cv2.CAP_PROP_FPS: self.fps,
                cv2.CAP_PROP_POS_MSEC: self.ms}.get(prop, 0.0)

    def release(self) -> None:
        pass


def _scripted(tmp_path: Path, loop: bool = False, **script) -> tuple[VideoFileSource, list[ScriptedVideo]]:
    path = tmp_path / "scripted.avi"
    path.write_bytes(b"x")
    made: list[ScriptedVideo] = []

    def factory(_path: str) -> ScriptedVideo:
        made.append(ScriptedVideo(**script))
        return made[-1]

    src = VideoFileSource(path, loop=loop, capture_factory=factory)
    src.open()
    return src, made


def _indices(frames) -> list[int]:
    assert all(int(f.image[0, 0, 0]) == f.meta["frame_index"] for f in frames)     # meta tells the truth
    return [f.meta["frame_index"] for f in frames]


@pytest.mark.parametrize("fps", [10.0, 0.0])           # with timestamps, and counting failed reads
def test_undecodable_frames_are_skipped_and_counted(tmp_path, fps):
    src, _ = _scripted(tmp_path, n=10, bad={3, 4, 7}, fps=fps)
    frames = _drain(src)
    assert _indices(frames) == [0, 1, 2, 5, 6, 8, 9]
    acc = src.accounting()
    assert (acc["expected"], acc["read"], acc["unreadable"], acc["ended_early"]) == (10, 7, 3, True)


def test_frames_that_vanish_unnoticed_are_found_by_their_timestamps(tmp_path):
    src, _ = _scripted(tmp_path, n=10, vanish={3}, bad={6})
    frames = _drain(src)
    acc = src.accounting()
    assert len(frames) == 8 and frames[-1].meta["frame_index"] == 9      # back in step after frame 6
    assert (acc["read"], acc["unreadable"]) == (8, 2) and acc["read"] + acc["unreadable"] == acc["expected"]


def test_truncated_and_bad_tail_count_up_to_the_containers_end(tmp_path):
    src, made = _scripted(tmp_path, n=100, present=40)
    frames = _drain(src)
    acc = src.accounting()
    assert (len(frames), acc["read"], acc["unreadable"], acc["ended_early"]) == (40, 40, 60, True)
    assert made[0].reads <= 41 + 60                        # reading on is bounded by what the file lists
    tail, _ = _scripted(tmp_path, n=10, bad={8, 9})
    assert len(_drain(tail)) == 8 and tail.accounting()["unreadable"] == 2


def test_unknown_frame_count(tmp_path):
    clean, _ = _scripted(tmp_path, n=10, count=0)
    assert len(_drain(clean)) == 10
    assert clean.accounting() == {"expected": None, "read": 10, "unreadable": 0, "skipped": [],
                                  "ended_early": False, "passes": 1}
    damaged, _ = _scripted(tmp_path, n=10, bad={4}, count=0)
    assert _indices(_drain(damaged)) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    acc = damaged.accounting()
    assert (acc["expected"], acc["read"], acc["unreadable"], acc["ended_early"]) == (None, 9, 1, True)


def test_looping_counts_every_pass(tmp_path):
    src, made = _scripted(tmp_path, loop=True, n=5, bad={2})
    frames = [src.read(0.1) for _ in range(10)]
    assert _indices(frames) == [0, 1, 3, 4, 0, 1, 3, 4, 0, 1] and not src.finished
    acc = src.accounting()
    assert (acc["read"], acc["unreadable"], acc["passes"], acc["ended_early"]) == (10, 2, 3, True)
    assert len(made) == 3


def test_a_video_none_of_whose_frames_decode(tmp_path):
    src, _ = _scripted(tmp_path, loop=True, n=4, bad={0, 1, 2, 3})
    assert src.read(0.1) is None and src.finished                     # no endless reopening
    acc = src.accounting()
    assert (acc["read"], acc["unreadable"], acc["ended_early"]) == (0, 4, True)


# --- image folders -----------------------------------------------------------------------------------


def test_image_folder_skipped_files_are_listed_and_counted(tmp_path):
    folder = write_images(tmp_path / "imgs", [f"{i:02d}.png" for i in range(10) if i not in (2, 5, 9)])
    for name in ("02.png", "05.png", "09.png"):
        (folder / name).write_bytes(b"\x89PNG damaged")
    src = open_source(str(folder), {"skip_bad": True})
    frames = _drain(src)
    acc = src.accounting()
    assert acc == {"expected": 10, "read": 7, "unreadable": 0, "skipped": ["02.png", "05.png", "09.png"],
                   "ended_early": False, "passes": 1}
    assert len(frames) + len(acc["skipped"]) == acc["expected"] and src.skipped == 3

    strict = open_source(str(folder))
    strict.read(0.1), strict.read(0.1)
    with pytest.raises(EdgeADError, match="02.png"):
        strict.read(0.1)
    acc = strict.accounting()
    assert (acc["read"], acc["unreadable"], acc["skipped"], acc["ended_early"]) == (2, 1, [], True)


def test_clean_folder_and_looping_folder(tmp_path):
    folder = write_images(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    src = open_source(str(folder))
    assert len(_drain(src)) == 3
    assert src.accounting() == {"expected": 3, "read": 3, "unreadable": 0, "skipped": [],
                                "ended_early": False, "passes": 1}
    (folder / "b2.png").write_bytes(b"not a png")
    looped = ReplaySource(folder, loop=True, skip_bad=True)
    looped.open()
    assert len([looped.read(0.1) for _ in range(7)]) == 7
    acc = looped.accounting()
    assert acc["skipped"] == ["b2.png"] and looped.skipped == 2 and acc["passes"] == 3   # listed once
    assert not acc["ended_early"] and acc["read"] == 7


# --- live sources and the reconnecting wrapper ---------------------------------------------------


def test_live_sources_have_no_account_and_the_wrapper_passes_it_through(tmp_path):
    camera = OpenCVCamera(0)
    assert camera.accounting() is None
    assert OpenCVCamera("rtsp://127.0.0.1:9/x").accounting() is None
    from edgead.capture.genicam import GenICamSource
    from edgead.capture.gige import GigESource
    assert GigESource("cam").accounting() is None and GenICamSource(tmp_path / "p.cti").accounting() is None
    assert ReconnectingSource(camera).accounting() is None

    folder = write_images(tmp_path / "imgs", ["a.png", "b.png"])
    wrapped = ReconnectingSource(open_source(str(folder)), opened=True)
    _drain(wrapped)
    assert wrapped.accounting() == wrapped.source.accounting()
    assert wrapped.accounting()["read"] == 2
