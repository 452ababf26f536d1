"""`edgead calibrate`: the record, figure and table; fingerprint refusal; the drift check; every error.

The first half needs no engine (records built from synthetic scores); the second calibrates the tiny
synthetic product through ONNX Runtime. A target of 10 % needs 100 good images (10 / target), more than
tiny_product's 16, so `held_out` renders 110 further good washers of the same product (seed 3, 96x96):
images the model never saw, as calibration should use.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import yaml

from edgead import __version__
from edgead.decide import thresholds as T
from edgead.decide.record import KIND, build_record, decide, load_calibration, read_calibration, write_record
from edgead.decide.scoring import Scored
from edgead.cli import main
from edgead.errors import EdgeADError

FP = "ab" * 32
ENGINE = {"path": "/nowhere/engines/tiny", "name": "tiny", "fingerprint": FP, "backend": "onnxruntime",
          "precision": "fp32", "map_size": [16, 16]}


def _det(fingerprint: str = FP) -> SimpleNamespace:
    return SimpleNamespace(fingerprint=fingerprint, backend="onnxruntime", precision="fp32")


def _synthetic(tmp_path: Path, area: bool = False) -> Path:
    rng = np.random.default_rng(0)
    good_maps = rng.random((200, 16, 16)) ** 6
    bad_maps = good_maps[:20] + 0.5 * (rng.random((20, 16, 16)) > 0.9)
    a = {"min_area_px": 4, "min_area": 9.0, "min_area_unit": "source px", "mm_per_px": None,
         "source_size": [24, 24], "map_size": [16, 16]} if area else None
    g = Scored(good_maps.reshape(200, -1).max(1), T.area_scores(good_maps, 4) if area else None, [])
    d = Scored(bad_maps.reshape(20, -1).max(1), T.area_scores(bad_maps, 4) if area else None, [])
    rec = build_record(g, d, 0.05, "auto", dict(ENGINE), ("/good", "/bad"), a, refits=20)
    return write_record(rec, tmp_path / "cal.yaml", g.decision, d.decision)


# ---------------------------------------------------------------- records without an engine


def test_record_round_trip_and_decide(tmp_path):
    path = _synthetic(tmp_path)
    rec = load_calibration(path, _det())
    assert rec["kind"] == KIND and rec["rule"] == "image" and rec["area"] is None and rec["forced"] is False
    assert rec["method"] == "quantile" and rec["rejects"] == 10 and rec["good"]["n"] == 200
    t = rec["threshold"]
    assert decide(t, None, rec) is False and decide(np.nextafter(t, 2), None, rec) is True
    assert decide(float("nan"), None, rec) is True  # fail safe
    assert cv2.imread(str(tmp_path / "cal.png")) is not None
    assert (tmp_path / "cal.csv").read_text().splitlines()[0] == "threshold,false_reject_rate,escape_rate,f1"


def test_area_rule_decides_on_the_area_score(tmp_path):
    rec = load_calibration(_synthetic(tmp_path, area=True), _det())
    area = rec["area"]
    assert rec["rule"] == "area" and area["min_area_px"] == 4 and area["method"] == "quantile"
    p = area["pixel_threshold"]
    amap = np.zeros((16, 16))
    amap.flat[:3] = p + 1  # three hot pixels: a tolerated blemish
    assert decide(99.0, amap, rec) is False
    amap.flat[3] = p + 1e-6  # the fourth pixel above the pixel threshold rejects
    assert decide(0.0, amap, rec) is True
    with pytest.raises(EdgeADError, match="needs the anomaly map"):
        decide(1.0, None, rec)


def test_f1_optimal_below_the_good_threshold_warns_and_keeps_the_good_one():
    rng = np.random.default_rng(1)
    g = Scored(rng.normal(0, 1, 1000), None, [])
    d = Scored(rng.normal(1.5, 1, 60), None, [])
    rec = build_record(g, d, 0.01, "auto", dict(ENGINE), ("/g", "/d"), refits=20)
    assert rec["threshold"] == T.quantile_threshold(g.scores, 0.01)
    dfx = rec["defects"]
    assert dfx["f1_below_threshold"] and dfx["f1_threshold"] < rec["threshold"]
    assert dfx["escapes"] == int((d.scores <= rec["threshold"]).sum())
    assert any("F1-optimal threshold" in w and "BELOW" in w for w in rec["warnings"])


def test_fingerprint_refusal_and_force(tmp_path, capsys):
    path = _synthetic(tmp_path)
    with pytest.raises(EdgeADError) as e:
        load_calibration(path, _det("cd" * 32))
    assert "another engine" in e.value.message and "recalibrate" in e.value.hint
    rec = load_calibration(path, _det("cd" * 32), force=True)
    assert rec["forced"] is True and "WARNING" in capsys.readouterr().err


@pytest.mark.parametrize("edit,message", [
    (lambda t: "kind: [unclosed\n", "is not valid YAML"),
    (lambda t: t + "threshold: 0.5\n", "the key 'threshold' is given twice"),
    (lambda t: "just text\n", "is not an edgead calibration record"),
    (lambda t: t + "foo: 1\n", "unknown key 'foo'"),
    (lambda t: t.replace("\nthreshold:", "\nthreshold_x:"), "unknown key 'threshold_x'"),
    (lambda t: "\n".join(line for line in t.splitlines() if not line.startswith("target_frr:")), "lacks the key 'target_frr'"),
    (lambda t: t.replace("  fingerprint:", "  fingerprint2:"), "unknown key 'engine.fingerprint2'"),
    (lambda t: t.replace("format: 2", "format: 7"), "has format 7"),
    (lambda t: t.replace("rule: image", "rule: area"), "'rule' is 'area'"),
])
def test_bad_records_are_refused_by_name(tmp_path, edit, message):
    path = _synthetic(tmp_path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(EdgeADError, match="calibration record|not an edgead") as e:
        read_calibration(path)
    assert message in e.value.message and e.value.hint


def test_threshold_must_be_a_number(tmp_path):
    path = _synthetic(tmp_path)
    rec = yaml.safe_load(path.read_text())
    rec["threshold"] = "high"
    path.write_text(yaml.safe_dump(rec))
    with pytest.raises(EdgeADError, match="'threshold' must be a finite number"):
        read_calibration(path)
    with pytest.raises(EdgeADError) as e:
        read_calibration(tmp_path / "none.yaml")
    assert e.value.message == f"calibration record {tmp_path / 'none.yaml'} does not exist"
    assert e.value.hint == "calibrate first: edgead calibrate --engine engines/NAME --good DIR"


# ---------------------------------------------------------------- end to end through ONNX Runtime


@pytest.fixture(scope="module")
def engine(tiny_engine: Path) -> Path:
    return tiny_engine


def test_calibration_record_contents(calibrated, engine, held_out, tiny_product):
    from edgead.backends import load_detector

    det = load_detector(engine)
    rec = load_calibration(calibrated, det)
    assert rec["engine"]["fingerprint"] == det.fingerprint and rec["engine"]["path"] == str(engine.resolve())
    assert (rec["engine"]["backend"], rec["engine"]["precision"]) == ("onnxruntime", "fp32")
    assert rec["edgead_version"] == __version__ and rec["created"].endswith("Z")
    assert rec["method"] == "quantile" and "110 good images >= 100" in rec["method_reason"]
    assert rec["target_frr"] == 0.1 and rec["good"]["n"] == 110 and rec["defects"]["n"] == 8
    assert rec["rejects"] == 11 and rec["expected_frr"] == pytest.approx(0.1)
    assert rec["expected_frr_interval"] == pytest.approx(list(T.clopper_pearson(11, 110)))
    s = rec["good"]["scores"]
    assert s["min"] <= s["p50"] <= rec["threshold"] <= s["max"] and s["n"] == 110
    dfx = rec["defects"]
    assert 0 <= dfx["escape_rate"] <= 1 and dfx["escapes"] == round(dfx["escape_rate"] * 8)
    table = dfx["trade_off"]
    assert 2 <= len(table) <= 110 + 8 + 1 and table[0]["false_reject_rate"] == 1 and table[-1]["escape_rate"] == 1

    img = cv2.imread(str(calibrated.with_suffix(".png")))
    assert img is not None and img.shape[1] >= 800
    rows = calibrated.with_suffix(".csv").read_text().splitlines()
    assert rows[0] == "threshold,false_reject_rate,escape_rate,f1" and len(rows) == len(dfx["trade_off"]) + 1
    assert rec["files"] == {"figure": "tiny.png", "table": "tiny.csv"}

    # The threshold is the quantile of the engine's own scores on every held-out image: exactly the
    # 11 = 10 % of 110 that the record counts lie above it, and the escape rate is the share of the
    # defective images whose score is not above it.
    from edgead.decide.calibrate import defect_paths
    from edgead.decide.scoring import engine_info, score_images
    from edgead.data.images import list_images

    spec, _ = engine_info(engine, det)
    scored = score_images(det, spec, list_images(held_out))
    assert len(scored.scores) == 110 and int((scored.scores > rec["threshold"]).sum()) == rec["rejects"] == 11
    ranked = np.sort(scored.scores)
    assert ranked[-12] <= rec["threshold"] < ranked[-11]
    assert [decide(sc, None, rec) for sc in scored.scores] == list(scored.scores > rec["threshold"])
    defect_scores = score_images(det, spec, defect_paths(tiny_product)).scores
    escapes = int((defect_scores <= rec["threshold"]).sum())
    assert dfx["escapes"] == escapes and dfx["escape_rate"] == pytest.approx(escapes / 8)


def test_drift_check_consistent_on_the_same_images(calibrated, held_out, capsys):
    assert main(["calibrate", "--check", str(calibrated), "--good", str(held_out)]) == 0
    out = capsys.readouterr().out
    assert "11 of 110 good parts rejected" in out and "verdict: consistent" in out


def test_drift_detected_on_darkened_noisy_images(calibrated, held_out, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for p in sorted(held_out.iterdir())[:30]:
        img = cv2.imread(str(p)).astype(np.float32) * 0.4 + rng.normal(0, 25, (96, 96, 3))
        cv2.imwrite(str(tmp_path / p.name), np.clip(img, 0, 255).astype(np.uint8))
    assert main(["calibrate", "--check", str(calibrated), "--good", str(tmp_path)]) == 3
    out = capsys.readouterr().out
    assert "verdict: drift: more good parts rejected" in out and "recalibrate" in out and "lighting" in out


def test_other_precision_is_refused_unless_forced(calibrated, held_out, engine, capsys):
    args = ["calibrate", "--check", str(calibrated), "--good", str(held_out), "--precision", "fp16"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "another engine" in err and "recalibrate" in err
    # FP16 scores of the same images match FP32 within 2 %: forced, the check must call them consistent
    assert main([*args, "--force"]) == 0
    captured = capsys.readouterr()
    assert "WARNING" in captured.err and "another engine" in captured.err
    assert "verdict: consistent" in captured.out


def test_area_rule_in_mm(engine, held_out, tmp_path):
    out = tmp_path / "area.yaml"
    # 0.05 mm^2 at 0.05 mm/px = 20 source pixels of 96x96 = 8.9 -> 9 pixels of the 64x64 map.
    assert main(["calibrate", "--engine", str(engine), "--good", str(held_out), "--target-frr", "0.1",
                 "--min-defect-area", "0.05", "--mm-per-px", "0.05", "--out", str(out)]) == 0
    rec = read_calibration(out)
    area = rec["area"]
    assert rec["rule"] == "area" and area["min_area_px"] == 9 and area["min_area_unit"] == "mm2"
    assert area["source_size"] == [96, 96] and area["map_size"] == [64, 64]
    assert area["rejects"] == 11 and area["pixel_threshold"] <= rec["threshold"]  # 9th largest <= max
    assert rec["good"]["area_scores"]["n"] == 110


def test_defaults_and_skip_bad(engine, held_out, tmp_path, monkeypatch, capsys):
    good = tmp_path / "good"
    good.mkdir()
    for p in held_out.iterdir():
        (good / p.name).write_bytes(p.read_bytes())
    (good / "000_broken.png").write_bytes(b"not a png")
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", "--engine", str(engine), "--good", str(good), "--target-frr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "000_broken.png" in err and "--skip-bad" in err
    assert main(["calibrate", "--engine", str(engine), "--good", str(good), "--target-frr", "0.1",
                 "--skip-bad"]) == 0
    rec = read_calibration(tmp_path / "calibration" / "tiny.yaml")  # default --out
    assert rec["good"]["skipped"] == 1 and rec["good"]["n"] == 110 and rec["defects"] is None
    assert rec["files"]["table"] is None and (tmp_path / "calibration" / "tiny.png").is_file()


# ---------------------------------------------------------------- every CLI error: exit 2 and the message


def _err(capsys, args) -> str:
    assert main(["calibrate", *args]) == 2
    return capsys.readouterr().err


def test_too_few_good_images(engine, tiny_product, capsys):
    # An MVTec root calibrates on its train/good: 16 images.
    err = _err(capsys, ["--engine", str(engine), "--good", str(tiny_product), "--target-frr", "0.1"])
    assert "need at least 50" in err and "got 16" in err and "hint:" in err
    err = _err(capsys, ["--engine", str(engine), "--good", str(tiny_product), "--target-frr", "0.1",
                        "--method", "quantile"])
    assert "needs at least 100 good images" in err


def test_cli_errors(engine, held_out, tiny_product, calibrated, tmp_path, capsys):
    e, g = str(engine), str(held_out)
    assert "target false-reject rate" in _err(capsys, ["--engine", e, "--good", g, "--target-frr", "0.7"])
    assert f"--engine {tmp_path / 'x'} does not exist" in _err(capsys, ["--engine", str(tmp_path / "x"), "--good", g,
                                                                         "--target-frr", "0.1"])
    assert "needs --engine" in _err(capsys, ["--good", g])
    assert "--mm-per-px only makes sense" in _err(capsys, ["--engine", e, "--good", g, "--mm-per-px", "0.1"])
    assert "--min-defect-area must be a positive" in _err(capsys, ["--engine", e, "--good", g,
                                                                   "--min-defect-area", "-3"])
    assert "--force only applies to --check" in _err(capsys, ["--engine", e, "--good", g, "--force"])
    assert "must be a .yaml file" in _err(capsys, ["--engine", e, "--good", g, "--target-frr", "0.1",
                                                   "--out", str(tmp_path / "c.txt")])
    (tmp_path / "empty").mkdir()
    assert "no images found" in _err(capsys, ["--engine", e, "--good", str(tmp_path / "empty")])
    assert "no defective images found" in _err(capsys, ["--engine", e, "--good", g, "--target-frr", "0.1",
                                                        "--defects", str(tmp_path / "empty")])
    c = str(calibrated)
    assert "--defects cannot be used with --check" in _err(capsys, ["--check", c, "--good", g, "--defects", g])
    assert f"--check {tmp_path / 'no.yaml'} does not exist" in _err(capsys, ["--check", str(tmp_path / "no.yaml"),
                                                                          "--good", g])
    bad = tmp_path / "bad.yaml"
    bad.write_text(calibrated.read_text() + "extra: 1\n")
    assert "unknown key 'extra'" in _err(capsys, ["--check", str(bad), "--good", g])
    bad.write_text(calibrated.read_text().replace(str(engine.resolve()), str(tmp_path / "moved")))
    err = _err(capsys, ["--check", str(bad), "--good", g])
    assert f"the record's engine folder {tmp_path / 'moved'} does not exist" in err and "--engine" in err
    assert main(["calibrate", "--check", str(bad), "--good", g, "--engine", e]) == 0
    capsys.readouterr()
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(held_out.iterdir())[:5]:
        (few / p.name).write_bytes(p.read_bytes())
    assert "need at least 10" in _err(capsys, ["--check", c, "--good", str(few)])
    assert math.isfinite(read_calibration(calibrated)["threshold"])


# ---------------------------------------------------------------- --out is checked before any work; no silent replace


def _no_engine_load(monkeypatch) -> None:
    import edgead.backends

    def refuse(*args, **kwargs):
        raise AssertionError("the engine was loaded: the --out check must come first")

    monkeypatch.setattr(edgead.backends, "load_detector", refuse)


def test_an_existing_record_is_not_replaced(engine, held_out, calibrated, monkeypatch, capsys):
    before = {p.name: p.read_bytes() for p in calibrated.parent.iterdir()}
    _no_engine_load(monkeypatch)
    err = _err(capsys, ["--engine", str(engine), "--good", str(held_out), "--target-frr", "0.1",
                        "--out", str(calibrated)])
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in calibrated.parent.iterdir()} == before


def test_overwrite_replaces_the_record_and_its_files(engine, held_out, tmp_path):
    from edgead.decide.calibrate import calibrate

    out = tmp_path / "cal.yaml"
    calibrate(engine, held_out, target_frr=0.1, method="quantile", out=out, log=lambda s: None)
    with pytest.raises(EdgeADError, match="already exists"):
        calibrate(engine, held_out, target_frr=0.2, out=out, log=lambda s: None)
    assert read_calibration(out)["target_frr"] == 0.1
    rec, path = calibrate(engine, held_out, target_frr=0.2, out=out, log=lambda s: None, overwrite=True)
    assert path == out and read_calibration(out)["target_frr"] == 0.2 == rec["target_frr"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.png", "cal.yaml"]


def test_out_under_a_file_or_on_a_folder_is_one_message_and_no_file(engine, held_out, tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.yaml").mkdir()
    _no_engine_load(monkeypatch)
    for out, message in ((tmp_path / "afile" / "x.yaml", f"{tmp_path / 'afile'} is a file, so nothing can be written"),
                         (tmp_path / "adir.yaml", "is a folder, but a file path is needed")):
        err = _err(capsys, ["--engine", str(engine), "--good", str(held_out), "--target-frr", "0.1",
                            "--out", str(out), "--defects", str(held_out)])
        assert message in err and "--out" in err and "hint:" in err and "Traceback" not in err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["adir.yaml", "afile"]
    assert (tmp_path / "afile").read_text() == "x"


def test_drift_check_refuses_an_edited_record_unless_forced(calibrated, held_out, tmp_path, capsys):
    from edgead.decide.drift import check_drift

    rec = yaml.safe_load(calibrated.read_text())
    rec["threshold"] = float(np.nextafter(rec["threshold"], 1e9))  # one ulp: an edit all the same
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(rec, sort_keys=False))
    err = _err(capsys, ["--check", str(edited), "--good", str(held_out)])
    assert "was edited after calibration" in err and "recalibrate" in err and "--force" in err
    assert main(["calibrate", "--check", str(edited), "--good", str(held_out), "--force"]) == 0
    captured = capsys.readouterr()
    assert "WARNING" in captured.err and "was edited" in captured.err and "verdict: consistent" in captured.out
    report = check_drift(edited, held_out, force=True, log=lambda s: None)
    assert report["forced"] is True and report["forced_reason"] == "edited record"
