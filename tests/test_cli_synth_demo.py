"""`edgead synth`, `edgead demo` argument errors and `edgead signals test` through the CLI (the quick demo: test_demo.py)."""

from pathlib import Path

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
    assert "run config not found" in capsys.readouterr().err
    cfg = tmp_path / "run.yaml"
    log = tmp_path / "events.jsonl"
    cfg.write_text(f"outputs:\n  - type: log\n    path: {log}\n")
    assert main(["signals", "test", "--config", str(cfg)]) == 0
    assert "OK" in capsys.readouterr().out
    assert log.read_text().strip()
