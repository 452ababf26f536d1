"""Full disks, for real: a small tmpfs mounted in a user namespace (`unshare -rm`, no root needed) holds
the record folder or the log output. The audit log comes first (images give way), every line is whole,
the summary is always printed and says what was not written, and a disk too full to start is one message."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from fault_line import REPO, Line, env, no_traceback, Result, write_yaml
from mount_namespace import run_with_mounts

pytestmark = pytest.mark.hardware   # mount namespaces are a machine capability, not an install step


def _in_tmpfs(tmp_path: Path, size_kb: int, script: str) -> Result:
    """`script` in a mount namespace where {disk} is a tmpfs of size_kb; {edgead} runs the CLI. What the
    script copies to {keep} outlives the mount."""
    disk, keep = tmp_path / "disk", tmp_path / "keep"
    keep.mkdir()
    cli = f"{shlex.quote(sys.executable)} -m edgead.cli"
    p = run_with_mounts({disk: f"size={size_kb}k"}, script.format(disk=disk, keep=keep, edgead=cli), timeout=180,
                        env=env(), cwd=REPO)
    return no_traceback(Result(p.returncode, p.stdout, p.stderr))


def _whole_lines(path: Path) -> list[dict]:
    return [json.loads(s) for s in path.read_text().splitlines()]      # a torn line would not parse


def test_a_record_disk_that_fills_mid_run_keeps_the_audit_log_whole_and_says_what_is_missing(line: Line,
                                                                                             tmp_path: Path):
    """A 4 MB record disk filled to the last byte by another writer for 2 s of a 5 s run, then freed."""
    n = 100
    clip = line.clip("clip100", n)
    config = write_yaml(tmp_path / "run.yaml", {"camera": {"source": str(clip), "frame_rate": 20},
                                                "record": {"quota_mb": 1}})
    args = " ".join(shlex.quote(str(a)) for a in line.run_args(clip, "--record", tmp_path / "disk" / "rec",
                                                                   config=config))
    # the disk fills once the run inspects (its start-up checks the free space: a full disk then is refused)
    script = (f"{{edgead}} {args} >{{keep}}/out 2>{{keep}}/err & pid=$!; "
              "for i in $(seq 100); do grep -q inspecting {keep}/err && break; sleep 0.1; done; sleep 0.5; "
              "dd if=/dev/zero of={disk}/ballast bs=64k 2>/dev/null; sleep 2; rm -f {disk}/ballast; "
              "wait $pid; echo rc=$? >>{keep}/out; cp -r {disk}/rec {keep}/")
    _in_tmpfs(tmp_path, 4096, script)
    keep = tmp_path / "keep"
    res = no_traceback(Result(0, (keep / "out").read_text(), (keep / "err").read_text()))
    rc = int(res.out.rsplit("rc=", 1)[1].split()[0])
    assert f"edgead run: {n} frames, {n} parts:" in res.out, res.text       # the summary, always
    run_dir = next((keep / "rec").glob("*"))
    lines = [e for e in _whole_lines(run_dir / "events.jsonl") if "event_id" in e]
    assert len({e["event_id"] for e in lines}) == len(lines)
    missing = n - len(lines)
    if missing:     # the disk refused some lines: counted, alarmed, exit 5
        assert rc == 5 and f"{missing} event lines not written" in res.out, res.text
    else:           # the recorder's own images gave way: every decision is in the log
        assert rc == 0, res.text
    assert "ALARM" in res.err and "disk" in res.err, res.err       # the episode was seen either way


def test_a_log_output_on_a_full_disk_alarms_and_is_counted(line: Line, tmp_path: Path):
    folder = line.folder("folder30", 30)
    config = write_yaml(tmp_path / "run.yaml", {"outputs": [{"type": "log", "path": str(tmp_path / "disk" / "log.jsonl"),
                                                              "per_part": True}]})
    args = " ".join(shlex.quote(str(a)) for a in line.run_args(folder, config=config))
    fill = "dd if=/dev/zero of={disk}/ballast bs=1k count=200 2>/dev/null"
    res = _in_tmpfs(tmp_path, 64, f"{fill}; {{edgead}} {args}; echo rc=$?")
    rc = int(res.out.rsplit("rc=", 1)[1].split()[0])
    assert "edgead run: 30 frames, 30 parts:" in res.out, res.text
    assert "ALARM: output log" in res.err and rc == 4, res.text
    assert "NOT DELIVERED: 30 events not written by output log (cannot write" in res.out, res.out


def test_a_record_disk_too_full_to_start_is_one_message(line: Line, tmp_path: Path):
    args = " ".join(shlex.quote(str(a)) for a in line.run_args(line.folder("folder30", 30), "--record", "{disk}/rec"))
    fill = "dd if=/dev/zero of={disk}/ballast bs=1k count=2000 2>/dev/null"
    res = _in_tmpfs(tmp_path, 1024, f"{fill}; {{edgead}} {args}; echo rc=$?")
    assert res.out.strip().endswith("rc=2"), res.text
    assert "free" in res.err and "--record" in res.err and "edgead run: error:" in res.err
