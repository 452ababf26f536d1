"""The calibration record can be trusted: digest, plausibility, --force, all-or-none writes, --out checks.

No engine: records are built from synthetic scores (as `test_calibrate._synthetic`), edited the way
a person would (load the YAML, change a value, dump it) and read back through the public functions.
"""

from __future__ import annotations

import errno
import math
import pathlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml

from edgead.decide import thresholds as T
from edgead.decide.integrity import record_digest
from edgead.decide.record import FORMAT, build_record, check_out, load_calibration, read_calibration, write_record
from edgead.decide.scoring import Scored
from edgead.errors import EdgeADError

FP = "ab" * 32
ENGINE = {"path": "/nowhere/engines/tiny", "name": "tiny", "fingerprint": FP, "backend": "onnxruntime",
          "precision": "fp32", "map_size": [16, 16]}


def _det(fingerprint: str = FP) -> SimpleNamespace:
    return SimpleNamespace(fingerprint=fingerprint, backend="onnxruntime", precision="fp32")


def _scores(area: bool = False, n: int = 200) -> tuple[Scored, Scored, dict[str, Any] | None]:
    rng = np.random.default_rng(0)
    good_maps = rng.random((n, 16, 16)) ** 6
    bad_maps = good_maps[:20] + 0.5 * (rng.random((20, 16, 16)) > 0.9)
    a = {"min_area_px": 4, "min_area": 9.0, "min_area_unit": "source px", "mm_per_px": None,
         "source_size": [24, 24], "map_size": [16, 16]} if area else None
    g = Scored(good_maps.reshape(n, -1).max(1), T.area_scores(good_maps, 4) if area else None, [])
    d = Scored(bad_maps.reshape(20, -1).max(1), T.area_scores(bad_maps, 4) if area else None, [])
    return g, d, a


def _record(tmp_path: Path, area: bool = False, name: str = "cal.yaml") -> Path:
    g, d, a = _scores(area)
    rec = build_record(g, d, 0.05, "auto", dict(ENGINE), ("/good", "/bad"), a, refits=20)
    return write_record(rec, tmp_path / name, g.decision, d.decision)


def _edit(path: Path, where: str, value: Any, redigest: bool = False) -> None:
    """Set a field (dotted path) as a person with an editor would; redigest: as if edgead had written it."""
    rec = yaml.safe_load(path.read_text())
    *blocks, key = where.split(".")
    d = rec
    for b in blocks:
        d = d[b]
    d[key] = value
    if redigest:
        rec["digest"] = record_digest(rec)
    path.write_text(yaml.safe_dump(rec, sort_keys=False))


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------- the digest


def test_the_record_carries_a_digest_of_what_is_read_back(tmp_path):
    path = _record(tmp_path)
    rec = yaml.safe_load(path.read_text())
    assert rec["format"] == FORMAT == 2 and rec["digest"].startswith("sha256:") and len(rec["digest"]) == 71
    assert record_digest(rec) == rec["digest"]
    loaded = load_calibration(path, _det())
    assert loaded["forced"] is False and loaded["forced_reason"] is None


@pytest.mark.parametrize("area", [False, True])
@pytest.mark.parametrize("where,value", [
    ("threshold", 1e9), ("threshold", -1.0), ("threshold", 0.9), ("target_frr", 0.5), ("method", "evt"),
    ("engine.fingerprint", "cd" * 32), ("good.scores.max", 99.0), ("expected_frr", 0.0),
    ("area.pixel_threshold", 1e9), ("area.min_area_px", 1), ("warnings", ["all fine"]),
])
def test_an_edited_record_is_refused_saying_to_recalibrate(tmp_path, where, value, area):
    path = _record(tmp_path, area=area)
    if where.startswith("area.") and not area:
        return
    _edit(path, where, value)
    with pytest.raises(EdgeADError) as e:
        load_calibration(path, _det())
    assert "was edited after calibration" in e.value.message and "recalibrate" in e.value.hint
    assert "--force" in e.value.hint


def test_the_digest_is_over_values_not_text(tmp_path):
    """Re-dumped with other formatting (flow style, sorted keys), the unchanged record still loads."""
    path = _record(tmp_path, area=True)
    path.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()), sort_keys=True, default_flow_style=True))
    assert load_calibration(path, _det())["forced"] is False


@pytest.mark.parametrize("where", ["engine.path", "engine.name", "good.folder", "defects.folder"])
def test_moving_the_folders_is_not_an_edit(tmp_path, where):
    path = _record(tmp_path)
    _edit(path, where, "/somewhere/else")
    rec = load_calibration(path, _det())
    assert rec["forced"] is False and rec[where.split(".")[0]][where.split(".")[1]] == "/somewhere/else"


def test_force_uses_an_edited_record_loudly_and_says_why(tmp_path, capsys):
    path = _record(tmp_path)
    _edit(path, "threshold", -1.0)  # edited, and below every good score
    rec = load_calibration(path, _det(), force=True)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 3 and "was edited after calibration" in warnings[0] and "--force" in warnings[0]
    assert "below the median good score" in warnings[1] and "200 good images" in warnings[1]
    assert "below the good scores' min" in warnings[2] and "at least 200 of the 200 good images" in warnings[2]
    assert rec["forced"] is True and rec["forced_reason"] == "edited record; implausible threshold"
    assert rec["threshold"] == -1.0

    rec = load_calibration(path, _det("cd" * 32), force=True)  # and from another engine
    assert rec["forced_reason"] == "edited record; implausible threshold; engine mismatch"
    assert len([x for x in capsys.readouterr().err.splitlines() if x.startswith("WARNING:")]) == 4


def test_a_record_from_before_the_digest_is_refused_unless_forced(tmp_path, capsys):
    path = _record(tmp_path)
    rec = yaml.safe_load(path.read_text())
    del rec["digest"]
    rec["format"] = 1
    path.write_text(yaml.safe_dump(rec, sort_keys=False))
    with pytest.raises(EdgeADError) as e:
        read_calibration(path)
    assert "is format 1, written before records carried a digest" in e.value.message
    assert "recalibrate" in e.value.hint and "--force" in e.value.hint
    rec = read_calibration(path, force=True)
    assert rec["forced_reason"] == "unverified record (format 1)" and "WARNING" in capsys.readouterr().err
    assert rec["threshold"] == yaml.safe_load(path.read_text())["threshold"]


# ---------------------------------------------------------------- plausibility against the record's own statistics


@pytest.mark.parametrize("area", [False, True])
def test_an_implausible_threshold_is_refused_with_the_numbers_even_with_a_valid_digest(tmp_path, area, capsys):
    path = _record(tmp_path, area=area)
    rec = yaml.safe_load(path.read_text())
    key = "area.pixel_threshold" if area else "threshold"
    stats = rec["good"]["area_scores" if area else "scores"]
    spread = stats["max"] - stats["p50"]
    cases = [
        (stats["min"] - 1.0, "below the median good score"),
        (stats["p50"] + 0.5 * (stats["p90"] - stats["p50"]), "at least 20 of the 200 good images score above it (10%)"),
        (stats["max"] + 2000 * spread, "spreads (largest minus median good score"),
    ]
    for value, message in cases:
        _edit(path, key, value, redigest=True)
        with pytest.raises(EdgeADError) as e:
            read_calibration(path)
        assert message in e.value.message and f"'{key}'" in e.value.message and f"{value:.6g}" in e.value.message
        assert "recalibrate" in e.value.hint
        forced = read_calibration(path, force=True)
        assert forced["forced_reason"] == "implausible threshold" and "WARNING" in capsys.readouterr().err


def test_write_record_refuses_an_implausible_threshold_and_writes_nothing(tmp_path):
    g, d, _ = _scores()
    rec = build_record(g, d, 0.05, "auto", dict(ENGINE), ("/good", "/bad"), refits=20)
    rec["threshold"] = float(np.median(g.scores)) - 1e-3
    with pytest.raises(EdgeADError, match="not written") as e:
        write_record(rec, tmp_path / "cal.yaml", g.scores, d.scores)
    assert "below the median good score" in e.value.message and "recalibrate" in e.value.hint
    assert _files(tmp_path) == []


def test_implausible_rules():
    stats = T.score_stats(np.arange(1000.0))
    assert T.implausible(990.0, stats, 0.01, 0.01, (0.005, 0.018)) == []         # an honest quantile
    assert T.implausible(1000.0 + 5000.0, stats, 1e-4, 1e-4, (1e-5, 1e-3)) == []  # 10 spreads up: plausible
    low = T.implausible(400.0, stats, 0.01, 0.01, (0.005, 0.018))
    assert len(low) == 2 and "median good score 499.5" in low[0]
    assert "below the good scores' p50 499.5, so at least 500 of the 1000 good images" in low[1]
    assert T.implausible(950.0, stats, 0.01, 0.01, (0.005, 0.018)) == []   # >= 10 of 1000 above: within 1.8%
    assert T.implausible(950.0, stats, 0.001, 0.001, (0.0002, 0.005)) == [
        "the threshold 950 is below the good scores' p99 989.01, so at least 10 of the 1000 good images "
        "score above it (1%), more than the 0.5% the record promises"]
    assert len(T.implausible(1000.0 + 1001 * 500.5, stats, 1e-4, 1e-4, (1e-5, 1e-3))) == 1
    assert T.implausible(400.0, stats, 0.5, 0.5, (0.47, 0.53)) == []               # target 0.5: the median is fine


# ---------------------------------------------------------------- writing: all or none, and the --out checks


@pytest.mark.parametrize("victim", [".yaml.", ".png.", ".csv."])
def test_a_full_disk_leaves_no_file_behind(tmp_path, monkeypatch, victim):
    """ENOSPC while writing one of the three temporary files (Path.write_bytes patched): none of them appear."""
    real = pathlib.Path.write_bytes

    def full(self: Path, data: bytes) -> int:
        if victim in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    g, d, _ = _scores()
    rec = build_record(g, d, 0.05, "auto", dict(ENGINE), ("/good", "/bad"), refits=20)
    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(EdgeADError) as e:
        write_record(rec, tmp_path / "out" / "cal.yaml", g.scores, d.scores)
    assert e.value.message == f"cannot write {tmp_path / 'out' / 'cal.yaml'}: the disk is full"
    assert e.value.hint == "free disk space or choose another --out; no part of the record was written: calibrate again"
    assert _files(tmp_path / "out") == []


def test_out_paths_are_checked_before_anything_is_written(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.yaml").mkdir()
    cases = [(tmp_path / "afile" / "x.yaml", f"{tmp_path / 'afile'} is a file, so nothing can be written under it"),
             (tmp_path / "afile" / "sub" / "x.yaml", f"{tmp_path / 'afile'} is a file, so nothing can be written under it"),
             (tmp_path / "adir.yaml", "is a folder, but a file path is needed"),
             (tmp_path / "c.txt", "must be a .yaml file")]
    for out, message in cases:
        with pytest.raises(EdgeADError, match="--out") as e:
            check_out(out)
        assert message in e.value.message and e.value.hint
    g, d, _ = _scores()
    rec = build_record(g, d, 0.05, "auto", dict(ENGINE), ("/good", "/bad"), refits=20)
    with pytest.raises(EdgeADError, match="is a folder, but a file path is needed") as e:
        write_record(rec, tmp_path / "adir.yaml", g.scores, d.scores)
    assert e.value.hint == f"name a file inside it, e.g. --out {tmp_path / 'adir.yaml' / 'NAME.yaml'}"
    assert _files(tmp_path) == ["adir.yaml", "afile"]


def test_an_existing_record_or_figure_is_replaced_only_with_overwrite(tmp_path):
    path = _record(tmp_path)
    before = path.read_bytes()
    with pytest.raises(EdgeADError) as e:
        check_out(path)
    assert e.value.message == f"--out {path} already exists"
    assert e.value.hint == "choose another --out, or pass --overwrite to replace it (and cal.png, cal.csv beside it)"
    assert check_out(path, overwrite=True) == path and path.read_bytes() == before
    path.unlink()  # a figure left from an earlier record is not replaced silently either
    with pytest.raises(EdgeADError) as e:
        check_out(path)
    assert e.value.message == f"--out {path}: {path.with_suffix('.png')} already exists beside it (from an earlier run)"
    assert "--overwrite" in e.value.hint
    g, _, _ = _scores()   # replacing a record with defects by one without: its old table goes too
    rec = build_record(g, None, 0.05, "auto", dict(ENGINE), ("/good", None), refits=20)
    write_record(rec, path, g.scores, overwrite=True)
    assert _files(tmp_path) == ["cal.png", "cal.yaml"] and read_calibration(path)["files"]["table"] is None


# ---------------------------------------------------------------- the EVT guard reaches the record


def test_an_unusable_tail_fit_is_recorded_as_a_quantile_with_the_reason(tmp_path):
    s = np.random.default_rng(0).uniform(size=50)  # bounded: the GPD shape comes out near -1.2
    g = Scored(s, None, [])
    rec = build_record(g, None, 0.01, "auto", dict(ENGINE), ("/good", None), refits=20)
    assert rec["method"] == "quantile" and rec["evt"] is None and rec["threshold"] == s.max()
    assert "fell back to the empirical quantile" in rec["method_reason"]
    note, = [w for w in rec["warnings"] if "EVT tail fit is not used" in w]
    assert "below -0.5" in note and "1000 good images (10 / target)" in note and "1.96%" in note
    back = load_calibration(write_record(rec, tmp_path / "cal.yaml", s), _det())
    assert back["warnings"] == rec["warnings"] and math.isclose(back["threshold"], s.max())
