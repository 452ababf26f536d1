"""`edgead synth`, `edgead demo` argument errors and `edgead signals test` through the CLI (the quick demo: test_demo.py)."""

import datetime as dt
import json
import re
import textwrap
from pathlib import Path

from signals_fixtures import LOOPBACK, free_port, need_module

from edgead.cli import main


def test_synth_cli_writes_each_category(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--seed", "1", "--category", "washer"]) == 0
    root = Path(capsys.readouterr().out.strip())
    assert root == tmp_path / "washer"
    assert len(list((root / "train" / "good").glob("*.png"))) == 60
    assert any((root / "ground_truth").iterdir())


def test_synth_cli_unknown_category(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--category", "gears"]) == 2
    err = capsys.readouterr().err
    assert "unknown synthetic category 'gears'" in err and "washer" in err


def test_demo_on_a_folder_that_is_not_mvtec(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not an MVTec-layout category" in capsys.readouterr().err


def test_signals_test_cli(tmp_path, capsys):
    assert main(["signals", "test", "--config", str(tmp_path / "none.yaml")]) == 2
    assert f"error: --config {tmp_path / 'none.yaml'} does not exist" in capsys.readouterr().err
    cfg = tmp_path / "run.yaml"
    log = tmp_path / "events.jsonl"
    cfg.write_text(f"outputs:\n  - type: log\n    path: {log}\n")
    assert main(["signals", "test", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"OK      log  wrote a test line to {log}",
                                                    "1 output: 1 OK, 0 FAILED"]
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]   # the test line, and nothing else
    assert line.keys() == {"test", "wall_time"} and line["test"] == "edgead signals test"
    written = dt.datetime.strptime(line["wall_time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
    assert abs(dt.datetime.now(dt.timezone.utc) - written) < dt.timedelta(minutes=5)   # UTC, not local time


def test_signals_test_cli_fails_on_a_dead_output(tmp_path, capsys):
    """A PLC that is not there: exit 1, a FAILED line naming it, and the outputs that work still tested."""
    need_module("pymodbus", 'pymodbus is not installed (pip install "edgead[signals]")')
    dead = free_port()
    log = tmp_path / "events.jsonl"
    (tmp_path / "run.yaml").write_text(textwrap.dedent(f"""
        outputs:
          - type: log
            path: {log}
          - type: modbus
            host: {LOOPBACK}
            port: {dead}
            coil: 12
    """))
    assert main(["signals", "test", "--config", str(tmp_path / "run.yaml")]) == 1
    ok, failed, summary = capsys.readouterr().out.splitlines()
    assert ok == f"OK      log     wrote a test line to {log}"
    # the retry interval in the reason grows with each failed connect: any value
    assert re.fullmatch(rf"FAILED  modbus  127\.0\.0\.1:{dead} unit 1 coil 12: cannot connect to "
                        rf"127\.0\.0\.1:{dead} \(retrying every \d+\.\d s at most\)", failed), failed
    assert summary == "2 outputs: 1 OK, 1 FAILED"
    assert len(log.read_text().splitlines()) == 1
