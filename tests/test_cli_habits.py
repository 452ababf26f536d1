"""The command line fits scripts and habits: progress bars that never spam a CI log with `\\r`,
-q / -v before or after the verb, --json that is exactly one document on stdout, shell completion,
and the training-time estimate. The session's tiny engine and record (tests/conftest.py)."""

from __future__ import annotations

import io
import json
import shutil
import logging
import subprocess
from pathlib import Path

import pytest

from edgead.cli import main
from edgead.decide import progress
from edgead.decide.progress import Progress

VERBS = ("synth", "train", "eval", "build-engine", "bench", "calibrate", "predict", "run", "signals", "outbox",
         "alarm", "demo", "completion")


@pytest.fixture(scope="module")
def engine(tiny_engine: Path) -> Path:
    return tiny_engine


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# --- the progress module -------------------------------------------------------------------------

def test_off_a_terminal_a_plain_line_each_10_percent_and_a_final_100():
    clock, out = _Clock(), io.StringIO()
    with Progress("scoring good images", 250, "images", stream=out, clock=clock) as bar:
        for _ in range(250):
            clock.t += 0.01
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 10 and lines[0].startswith("scoring good images: 10% (25/250 images)")
    assert lines[-1] == "scoring good images: 100% (250/250 images) in 2.5 s"


def test_off_a_terminal_a_slow_step_still_says_it_is_alive():
    clock, out = _Clock(), io.StringIO()
    with Progress("training", 1000, "steps", stream=out, clock=clock) as bar:
        for _ in range(3):
            clock.t += progress.LOG_INTERVAL_S
            bar.update(1, note="epoch 1/5")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[0].startswith("training: 0% (1/1000 steps), 30 s") and "epoch 1/5" in lines[0]
    assert lines[-1].startswith("training: 0% (3/1000 steps) in 1.5 min")


def test_on_a_terminal_one_line_redrawn_at_most_10_times_a_second():
    clock, out = _Clock(), _Terminal()
    with Progress("eval", 1000, "images", stream=out, clock=clock) as bar:
        for _ in range(1000):
            clock.t += 0.001                         # 1 s in all
            bar.update(1)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")          # one line, ended once
    assert 5 <= text.count("\r") <= 12, text.count("\r")
    assert text.rstrip().rsplit("\r", 1)[-1].startswith("eval: 100% (1000/1000 images) in 1.0 s")


def test_a_message_wipes_the_terminal_bar_first(capsys):
    out = _Terminal()
    bar = Progress("build-engine", 4, "steps", stream=out)
    bar.update(1)
    progress.say("INT8 graphs calibrated")
    assert out.getvalue().endswith("\r" + " " * len(out.getvalue().split("\r")[1]) + "\r")
    assert capsys.readouterr().out == "INT8 graphs calibrated\n"
    bar.close(failed=True)


def test_quiet_shows_no_bar_and_no_step_message(capsys):
    progress.set_verbosity(progress.QUIET)
    try:
        out = io.StringIO()
        with Progress("x", 3, stream=out) as bar:
            bar.update(3)
        progress.info("a step")
        progress.warn("WARNING: kept")
    finally:
        progress.set_verbosity(progress.NORMAL)
    assert out.getvalue() == ""
    assert capsys.readouterr() == ("", "WARNING: kept\n")


def test_demo_steps_say_which_step_of_the_story_they_are():
    from edgead.demo.demo import Steps

    lines: list[str] = []
    steps = Steps(lines.append)
    assert steps.run("evaluation", lambda: 42) == 42
    assert lines[0] == f"[demo] step 3/{len(Steps.STAGES)}: evaluation ..."
    assert lines[1].startswith("[demo] evaluation: ") and "since the start" in lines[1]


# --- calibrate, predict: progress, -q, --json --------------------------------------------------

def test_calibrate_shows_progress_lines_without_carriage_returns(engine, held_out, tmp_path, capsys):
    assert main(["calibrate", "--engine", str(engine), "--good", str(held_out), "--target-frr", "0.1",
                 "--out", str(tmp_path / "c.yaml")]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in err and "scoring good images: 100% (110/110 images) in " in err
    assert "scoring 110 good images" in out and "calibration written to" in out


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_prints_only_the_result(engine, held_out, tmp_path, capsys, where):
    args = ["calibrate", "--engine", str(engine), "--good", str(held_out), "--target-frr", "0.1",
            "--out", str(tmp_path / "c.yaml")]
    assert main(["-q", *args] if where == "before" else [*args, "-q"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("calibration written to") and "scoring" not in out and "rule: reject" in out


def test_calibrate_json_is_one_document_on_stdout(engine, held_out, tmp_path, capsys):
    assert main(["calibrate", "--engine", str(engine), "--good", str(held_out), "--target-frr", "0.1",
                 "--out", str(tmp_path / "c.yaml"), "--json"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["record_path"] == str(tmp_path / "c.yaml") and doc["exit_code"] == 0
    assert doc["threshold"] > 0 and doc["good"]["n"] == 110 and doc["good"]["scores"]["p50"] > 0
    assert "calibration written to" in err and "scoring good images: 100%" in err


def test_drift_check_json_keeps_its_exit_code(calibrated, held_out, capsys):
    code = main(["calibrate", "--check", str(calibrated), "--good", str(held_out), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == doc["exit_code"] == (3 if doc["drift"] else 0) and "observed_frr" in doc


def test_json_error_is_a_document_too(tmp_path, capsys):
    assert main(["calibrate", "--engine", str(tmp_path / "none"), "--good", str(tmp_path), "--json"]) == 2
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["exit_code"] == 2 and "--engine" in doc["error"] and doc["hint"]
    assert err.startswith("edgead calibrate: error: --engine")


def test_predict_shows_progress(engine, calibrated, tiny_product, tmp_path, capsys):
    assert main(["predict", "--engine", str(engine), "--calibration", str(calibrated), "--data",
                 str(tiny_product / "test"), "--out", str(tmp_path / "p")]) == 0
    out, err = capsys.readouterr()
    assert "predict: 100% (14/14 images)" in err and "\r" not in err and "14 images:" in out


# --- bench, run, signals test, eval: --json ------------------------------------------------------

def test_bench_json_has_the_table_rows(engine, capsys):
    assert main(["bench", "--engine", str(engine), "--batch", "1", "--iters", "2", "--warmup", "1", "--no-torch",
                 "--backend", "onnxruntime/fp32", "--threads", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)["rows"]
    assert {r["backend"] for r in rows} == {"onnxruntime/fp32"} and all(r["p50_ms"] > 0 for r in rows)
    assert "p50 ms" in err


def test_run_json_is_the_summary_with_its_exit_code(engine, calibrated, tiny_product, capsys):
    code = main(["run", "--engine", str(engine), "--calibration", str(calibrated), "--camera",
                 str(tiny_product / "test" / "good"), "--deadline-ms", "5000", "--threads", "1", "--json"])
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert code == summary["exit_code"] == 0 and summary["parts"] == 6
    assert "inspecting" in err


def test_quiet_run_prints_the_summary_and_its_faults_only(engine, calibrated, tiny_product, capsys):
    code = main(["-q", "run", "--engine", str(engine), "--calibration", str(calibrated), "--camera",
                 str(tiny_product / "test" / "good"), "--deadline-ms", "5000", "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 0 and "parts" in out and "inspecting" not in err


def test_run_json_of_a_fatal_fault_carries_the_summary(engine, calibrated, tiny_product, tmp_path, capsys):
    # a replay with a corrupt file: the run stops on it, and the script still gets what was decided
    folder = tmp_path / "replay"
    shutil.copytree(tiny_product / "test" / "good", folder)
    (folder / "003_corrupt.png").write_bytes(b"not an image")
    code = main(["run", "--engine", str(engine), "--calibration", str(calibrated), "--camera", str(folder),
                 "--threads", "1", "--json"])
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert code == doc["exit_code"] != 0 and "003_corrupt.png" in doc["error"]
    assert doc["summary"]["parts"] >= 1 and doc["summary"]["source"]["unreadable"] == 1


def test_signals_test_json_per_output(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"outputs:\n  - type: log\n    path: {tmp_path / 'ok.jsonl'}\n"
                   f"  - type: log\n    name: blocked\n    path: {tmp_path / 'afile' / 'x.jsonl'}\n")
    (tmp_path / "afile").write_text("in the way")
    code = main(["signals", "test", "--config", str(cfg), "--json"])
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert code == doc["exit_code"] == 1 and (doc["ok"], doc["failed"]) == (1, 1)
    assert [(r["output"], r["ok"]) for r in doc["outputs"]] == [("log", True), ("blocked", False)]
    assert "1 OK, 1 FAILED" in err


def test_eval_json_is_the_metrics(tiny_model, tiny_product, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_model), "--data", str(tiny_product), "--out", str(tmp_path),
                 "--json"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert 0 <= doc["image_auroc"] <= 1 and doc["n_good"] == 6
    assert "eval: 100% (14/14 images)" in err and "image AUROC" in err and "\r" not in err


# --- -v, completion, train's estimate -------------------------------------------------------------

def test_verbose_shows_the_debug_messages_of_edgead_loggers(monkeypatch, capsys):
    import edgead.cli as cli

    def talk(args):
        logging.getLogger("edgead.signals").debug("a debug line")
        return 0

    monkeypatch.setattr(cli, "cmd_synth", talk)
    assert main(["synth", "--out", "x", "-v"]) == 0
    assert "a debug line" in capsys.readouterr().err
    assert main(["synth", "--out", "x"]) == 0
    assert "a debug line" not in capsys.readouterr().err
    assert main(["-q", "synth", "--out", "x", "-v"]) == 2
    assert "-q and -v" in capsys.readouterr().err


def test_bash_completion_script_is_valid_and_knows_the_verbs(tmp_path, capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    path = tmp_path / "edgead.bash"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)
    assert all(verb in script for verb in VERBS) and "--json" in script and "--quiet" in script
    for shell in ("zsh", "tcsh"):
        assert main(["completion", shell]) == 0
        assert "calibrate" in capsys.readouterr().out


def test_bash_completes_a_verb(tmp_path, capsys):
    assert main(["completion", "bash"]) == 0
    path = tmp_path / "edgead.bash"
    path.write_text(capsys.readouterr().out)
    words = subprocess.run(["bash", "-c", f'source "{path}"; COMP_WORDS=(edgead cal); COMP_CWORD=1; '
                            'COMP_LINE="edgead cal"; COMP_POINT=10; _shtab_edgead; echo "${COMPREPLY[@]}"'],
                           capture_output=True, text=True, timeout=30, check=True).stdout.split()
    assert words == ["calibrate"]


def test_train_prints_an_estimate_from_a_short_probe(tiny_product, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["train", "--data", str(tiny_product / "train" / "good"), "--out", str(out), "--size", "64", "64",
                 "--epochs", "2", "--batch-size", "4"]) == 0
    printed, err = capsys.readouterr()
    line = next(s for s in printed.splitlines() if s.startswith("estimated training time: ~"))
    assert "(from a 3-step probe" in line
    assert printed.index("estimated training time") < printed.index("model written to")
    assert "training: 100% (8/8 steps)" in err and "\r" not in err
    estimate = json.loads((out / "metadata.json").read_text())["training"]["estimate"]
    assert estimate["probe_steps"] == 3 and estimate["probe_counted"] and estimate["seconds"] > 0


def test_quiet_train_prints_only_the_model_line(tiny_product, tmp_path, capsys):
    assert main(["train", "-q", "--data", str(tiny_product / "train" / "good"), "--out", str(tmp_path / "m"),
                 "--size", "64", "64", "--epochs", "1", "--batch-size", "4"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("model written to") and len(out.splitlines()) == 1 and err == ""
