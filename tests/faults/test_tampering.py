"""Settings changed behind the operator's back: an edited calibration record or engine manifest, an output
that would be replaced, a run config with a key given twice, secrets in a config. Each is one message,
exit 2 and nothing written; --force is loud and recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from fault_line import Line, edgead, write_yaml

REBUILD = "hint: rebuild it with `edgead build-engine --model models/NAME`; never edit an engine folder by hand"


def _edited_record(line: Line, tmp_path: Path, threshold: str) -> Path:
    text = line.calibration.read_text()
    old = next(s for s in text.splitlines() if s.startswith("threshold: "))
    out = tmp_path / "edited.yaml"
    out.write_text(text.replace(old, f"threshold: {threshold}"))
    return out


@pytest.mark.parametrize("threshold", ["1.0e+9", "-1"])
def test_an_edited_threshold_is_refused_and_force_is_recorded(line: Line, tmp_path: Path, threshold: str) -> None:
    folder = line.folder("folder30", 30)
    record = _edited_record(line, tmp_path, threshold)
    args = ["run", "--engine", line.engine, "--calibration", record, "--camera", folder]
    refused = edgead(*args)
    assert refused.rc == 2 and refused.out == ""
    assert f"calibration record {record} was edited after calibration: its digest does not match" in refused.err
    assert "recalibrate with `edgead calibrate" in refused.err

    forced = edgead(*args, "--force", "--record", tmp_path / "rec")
    assert forced.rc == 0, forced.text
    assert "Using it anyway because of --force" in forced.err
    run_json = json.loads(next((tmp_path / "rec").glob("*/run.json")).read_text())
    assert run_json["calibration"]["forced"] is True
    assert "edited record" in run_json["calibration"]["forced_reason"]
    summary = run_json["summary"]
    decided = "passes" if threshold.startswith("1") else "rejects"      # what the edit does to every part
    assert summary[decided] == summary["parts"] == 30


MANIFEST_EDITS: dict[str, Callable[[Any], Any]] = {
    "max_batch 0": lambda d: d["engines"][0].update(max_batch=0) or d,
    "max_batch 'abc'": lambda d: d["engines"][0].update(max_batch="abc") or d,
    "engines deleted": lambda d: {k: v for k, v in d.items() if k != "engines"},
    "sha256 []": lambda d: d.update(sha256=[]) or d,
    "a top-level array": lambda d: [d],
    "a statistic changed": lambda d: d["val_good_scores"].update(max=99.0) or d,
}


@pytest.mark.parametrize("edit", sorted(MANIFEST_EDITS))
def test_an_edited_manifest_is_refused_with_rebuild(line: Line, tmp_path: Path, edit: str) -> None:
    engine = tmp_path / "engine"
    shutil.copytree(line.engine, engine)
    manifest = engine / "manifest.json"
    manifest.write_text(json.dumps(MANIFEST_EDITS[edit](json.loads(manifest.read_text()))))
    res = edgead("run", "--engine", engine, "--calibration", line.calibration, "--camera", line.folder("folder30", 30),
                 "--backend", "onnxruntime", timeout=60)
    assert res.rc == 2 and res.out == "", res.text
    assert f"edgead run: error: {manifest}" in res.err and "this engine folder was edited or is damaged" in res.err
    assert REBUILD in res.err


def test_a_changed_engine_file_is_refused(line: Line, tmp_path: Path) -> None:
    engine = tmp_path / "engine"
    shutil.copytree(line.engine, engine)
    with open(engine / "student.onnx", "ab") as f:
        f.write(b"\0")
    res = edgead("run", "--engine", engine, "--calibration", line.calibration, "--camera", line.folder("folder30", 30),
                 "--backend", "onnxruntime", "--precision", "fp32")
    assert res.rc == 2 and "student.onnx" in res.err and REBUILD in res.err, res.text


def test_calibrate_and_build_engine_never_replace_output_silently(line: Line, tmp_path: Path) -> None:
    good = line.folder("folder60", 60)
    record = tmp_path / "cal" / "line.yaml"
    first = edgead("calibrate", "--engine", line.engine, "--good", good, "--out", record, "--target-frr", "0.2")
    assert first.rc == 0, first.text
    before = record.read_bytes()
    again = edgead("calibrate", "--engine", line.engine, "--good", good, "--out", record, "--target-frr", "0.25")
    assert again.rc == 2 and f"--out {record} already exists" in again.err and "--overwrite" in again.err
    assert record.read_bytes() == before
    replaced = edgead("calibrate", "--engine", line.engine, "--good", good, "--out", record, "--target-frr", "0.25",
                      "--overwrite")
    assert replaced.rc == 0 and record.read_bytes() != before

    engine = tmp_path / "engine"
    shutil.copytree(line.engine, engine)
    files = {p.name: p.read_bytes() for p in engine.iterdir()}
    res = edgead("build-engine", "--model", line.model, "--out", engine, "--backend", "onnxruntime")
    assert res.rc == 2 and f"--out {engine} already exists" in res.err and "--overwrite" in res.err, res.text
    assert {p.name: p.read_bytes() for p in engine.iterdir()} == files


def test_a_key_given_twice_in_a_run_config_is_refused(line: Line, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("deadline_ms: 100\nmax_frames: 5\ndeadline_ms: 5000\n")
    res = edgead("run", "--engine", line.engine, "--calibration", line.calibration,
                 "--camera", line.folder("folder30", 30), "--config", config)
    assert res.rc == 2 and res.out == ""
    assert "the key 'deadline_ms' is given twice (lines 1 and 3)" in res.err


def test_secrets_never_reach_the_record_the_log_or_the_screen(line: Line, tmp_path: Path) -> None:
    token, password = "tok-7f3a9c1e", "pw-91b2d4"
    config = write_yaml(tmp_path / "run.yaml", {
        "allow_degraded": True, "outbox_dir": str(tmp_path / "outbox"),
        "outputs": [{"type": "webhook", "url": f"http://edgead:{password}@127.0.0.1:9/x",
                     "per_part": True, "retries": 0, "timeout_ms": 200},
                    {"type": "webhook", "name": "mes", "url": "http://127.0.0.1:9/y", "token": token,
                     "per_part": True, "retries": 0, "timeout_ms": 200},
                    {"type": "mqtt", "host": "127.0.0.1", "port": 9, "username": "plc", "password": password}]})
    res = edgead(*line.run_args(line.folder("folder30", 30), "--record", tmp_path / "rec", "--max-frames", "5",
                                config=config))
    assert res.rc == 4, res.text        # undelivered (nothing listens): kept in the outbox and said so
    written = [p for p in (tmp_path / "rec").rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl")]
    assert written
    for text in [res.out, res.err, *(p.read_text() for p in written)]:
        assert token not in text and password not in text
    run_json = json.loads(next((tmp_path / "rec").glob("*/run.json")).read_text())
    outputs = run_json["config"]["outputs"]
    assert outputs[0]["url"] == "http://edgead:***@127.0.0.1:9/x" and outputs[1]["token"] == "***"
    assert outputs[2]["password"] == "***" and outputs[2]["username"] == "plc"
