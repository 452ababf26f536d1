"""Replays that lose frames: a clip cut short, bytes wiped in the middle, unreadable images in a folder.
Every frame the source holds is a decision or a counted loss; a replay that ends early exits 6."""

from __future__ import annotations

from pathlib import Path

from fault_line import Line, edgead

N = 60


def _accounted(summary: dict, n: int) -> dict:
    src = summary["source"]
    assert src["expected"] == n
    assert summary["parts"] == summary["passes"] + summary["rejects"] + summary["safe_actions"] == src["read"]
    assert src["read"] + src["unreadable"] + len(src["skipped"]) == n, src
    return src


def _damaged(line: Line, tmp_path: Path, name: str, damage) -> Path:
    data = bytearray(line.clip("clip60", N).read_bytes())
    damage(data)
    out = tmp_path / name
    out.write_bytes(bytes(data))
    return out


def test_a_clip_cut_short_counts_every_unread_frame_and_exits_6(line: Line, tmp_path: Path) -> None:
    clip = _damaged(line, tmp_path, "cut.avi", lambda b: b.__delitem__(slice(len(b) * 4 // 10, None)))
    res = edgead(*line.run_args(clip, "--record", tmp_path / "rec"))
    assert res.rc == 6, res.text
    src = _accounted(res.summary(), N)
    assert 0 < src["read"] < N and src["ended_early"] is True
    assert f"SOURCE: {src['read']} of {N} frames read, {src['unreadable']} unreadable" in res.out
    assert f"{src['unreadable']} frame(s) could not be read (truncated or damaged file)" in res.err


def test_wiped_bytes_mid_clip_are_counted_not_hidden(line: Line, tmp_path: Path) -> None:
    def wipe(b: bytearray) -> None:
        mid = len(b) // 2
        b[mid:mid + len(b) // 8] = bytes(len(b) // 8)

    res = edgead(*line.run_args(_damaged(line, tmp_path, "wiped.avi", wipe), "--record", tmp_path / "rec"))
    src = _accounted(res.summary(), N)
    assert src["unreadable"] > 0 and res.rc == 6, res.text


def test_unreadable_images_stop_a_replay_unless_skipped_and_then_each_is_listed(line: Line, tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    for p in sorted(line.folder("folder30", 30).iterdir()):
        (folder / p.name).write_bytes(p.read_bytes())
    bad = ["part0003.png", "part0011.png", "part0020.png"]
    for name in bad:
        (folder / name).write_bytes(b"not a png")

    stopped = edgead(*line.run_args(folder))
    assert stopped.rc == 2
    assert "edgead run: error: replay stopped at part0003.png: cannot decode image" in stopped.err
    assert "hint: fix or remove the file, or set camera.skip_bad: true" in stopped.err

    config = tmp_path / "run.yaml"
    config.write_text("camera:\n  skip_bad: true\n")
    res = edgead(*line.run_args(folder, "--record", tmp_path / "rec", config=config))
    assert res.rc == 0, res.text
    src = _accounted(res.summary(), 30)
    assert src["skipped"] == bad and "SOURCE: 27 of 30 frames read, 0 unreadable, 3 skipped" in res.out
    for name in bad:
        assert f"skipped unreadable {name}" in res.err
