"""The engine manifest: a manifest written by build-engine reads back and verifies; any edit of it
(a value check can see, or only the digest and fingerprints) is the one "edited or damaged: rebuild"
error from `edgead run`, naming the key where there is one, never a traceback or a hang."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from edgead.backends import load_detector
from edgead.backends.manifest import (DAMAGED, FORMAT, MANIFEST, RUN_FIELDS, entry_fingerprint, manifest_digest,
                                      read_manifest)
from edgead.cli import main
from edgead.errors import EdgeADError

Edit = Callable[[Any], Any]


def _set(path: str, value: Any) -> Edit:
    """An edit setting the key at a dotted path ("engines.0.max_batch") to `value`."""
    *parents, last = path.split(".")

    def edit(m: Any) -> Any:
        node = m
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
        return m
    return edit


def _delete(key: str) -> Edit:
    return lambda m: {k: v for k, v in m.items() if k != key}


def _resealed(edit: Edit) -> Edit:
    """The edit, with the digest recomputed as a careful editor would: the fingerprints still see it."""
    def both(m: Any) -> Any:
        m = edit(m)
        m["digest"] = manifest_digest(m)
        return m
    return both


# (edit, what the message must name)
EDITS: dict[str, tuple[Edit, str]] = {
    "max_batch 0": (_set("engines.0.max_batch", 0), "'engines[0].max_batch' has a bad value 0"),
    "max_batch text": (_set("engines.1.max_batch", "abc"), "'engines[1].max_batch' has a bad value 'abc'"),
    "max_batch null": (_set("engines.0.max_batch", None), "'engines[0].max_batch'"),
    "engines deleted": (_delete("engines"), "'engines' is missing"),
    "engines empty": (_set("engines", []), "'engines' is empty"),
    "sha256 a list": (_set("sha256", []), "'sha256' has a bad value []"),
    "top-level array": (lambda m: [m], "must be a mapping, got list"),
    "unknown key": (_set("max_batch", 8), "unknown key 'max_batch'"),
    "input shape": (_set("input.shape", ["batch", 3, 128, 128]), "'input.shape'"),
    "input name": (_set("input.name", "x"), "'input.name' has a bad value 'x'"),
    "output names": (_set("outputs", {"heat": ["batch"], "score": ["batch"]}), "'outputs.heat'"),
    "map size": (_set("map_size", [32, 32]), "'outputs.map'"),
    "feature renamed": (_set("feature_names.0", "t9_9"), "'feature_shapes' does not name"),
    "preprocess bad": (_set("preprocess.std", [0, 1, 1]), "'preprocess'"),
    "backend unknown": (_set("engines.0.backend", "tflite"), "'engines[0].backend' has a bad value"),
    "file outside": (_set("engines.0.files.teacher", "../teacher.onnx"), "'engines[0].files.teacher'"),
    "file hash dropped": (lambda m: {**m, "sha256": dict(list(m["sha256"].items())[1:])}, "'sha256' names"),
    "hash not hex": (lambda m: {**m, "sha256": {**m["sha256"], "teacher.onnx": "xyz"}}, "'sha256.teacher.onnx'"),
    "fingerprint cut": (_set("engines.0.fingerprint", "abc"), "'engines[0].fingerprint'"),
    "stats text": (_set("val_good_scores.p99", "high"), "'val_good_scores.p99'"),
    "digest missing": (_delete("digest"), "'digest' is missing"),
    # values that pass every check: only the digest, or (digest recomputed) the fingerprint, sees them
    "max_batch 4 to 16": (_set("engines.0.max_batch", 16), "do not match its digest"),
    "mean changed": (_set("preprocess.mean", [0.5, 0.5, 0.5]), "do not match its digest"),
    "host changed": (_set("host", "elsewhere"), "do not match its digest"),
    "resealed max_batch": (_resealed(_set("engines.0.max_batch", 16)), "engines[0] (onnxruntime/fp32) does not "
                                                                       "match its fingerprint"),
    "resealed feature shape": (_resealed(_set("feature_shapes.t0_0", [24, 9, 9])), "engines[0]"),
}


def _edit(folder: Path, edit: Edit) -> None:
    m = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps(edit(m)))


@pytest.mark.parametrize("name", sorted(EDITS))
def test_an_edited_manifest_stops_run_with_the_rebuild_message(engine_copy, tmp_path, capsys, name):
    edit, named = EDITS[name]
    _edit(engine_copy, edit)
    never_read = tmp_path / "cal.yaml"      # the paths pass their checks; the engine is opened before the record
    never_read.write_text("not read: the engine is refused first\n")
    code = main(["run", "--engine", str(engine_copy), "--calibration", str(never_read),
                 "--camera", str(tmp_path), "--max-frames", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert DAMAGED in err and named in err, err
    assert "edgead build-engine" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 2            # one message, one hint
    with pytest.raises(EdgeADError, match=DAMAGED):
        load_detector(engine_copy)


@pytest.mark.parametrize("text", ["", "{", b"\xff\xfe{}", "null", "3"])
def test_a_manifest_that_is_not_json_or_not_an_object(engine_copy, text):
    path = engine_copy / MANIFEST
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(EdgeADError, match=DAMAGED) as e:
        read_manifest(engine_copy)
    assert "rebuild" in e.value.hint


def test_an_older_format_says_rebuild_with_this_version(engine_copy):
    _edit(engine_copy, _set("format", FORMAT - 1))
    with pytest.raises(EdgeADError) as e:
        read_manifest(engine_copy)
    assert f"has format {FORMAT - 1}, this edgead reads format {FORMAT}" in e.value.message
    assert "edgead build-engine" in e.value.hint


def test_what_build_engine_wrote_reads_back_and_verifies(engine):
    m = read_manifest(engine)
    assert m == json.loads((engine / MANIFEST).read_text())
    assert m["format"] == FORMAT and m["digest"] == manifest_digest(m)
    assert "max_batch" not in m and {e["max_batch"] for e in m["engines"]} == {4}
    for backend, precision in (("onnxruntime", "fp32"), ("onnxruntime", "fp16")):
        det = load_detector(engine, backend, precision)
        entry = next(e for e in m["engines"] if (e["backend"], e["precision"]) == (backend, precision))
        assert det.fingerprint == entry["fingerprint"] == entry_fingerprint(m, entry)
        assert det.max_batch == 4


def test_the_fingerprint_covers_every_run_field_and_not_provenance(engine):
    m = read_manifest(engine)
    entry = m["engines"][0]
    base = entry_fingerprint(m, entry)
    changed = {}
    for key in RUN_FIELDS:
        other = copy.deepcopy(m)
        other[key] = {"changed": True}
        changed[key] = entry_fingerprint(other, other["engines"][0]) != base
    for key in [k for k in entry if k != "fingerprint"]:            # backend, precision, runtime, files, batch
        other = copy.deepcopy(m)
        files = entry["files"]
        other["engines"][0][key] = {"teacher": files["student"], "student": files["teacher"]} if key == "files" else 7
        changed[f"engines[0].{key}"] = entry_fingerprint(other, other["engines"][0]) != base
    other = copy.deepcopy(m)
    other["sha256"][entry["files"]["student"]] = "2" * 64             # the student graph's bytes
    changed["student graph"] = entry_fingerprint(other, other["engines"][0]) != base
    assert changed == {k: True for k in changed} and len(changed) == len(RUN_FIELDS) + 6
    for key, value in (("host", "elsewhere"), ("created", "2000"), ("model", {"path": "/x"}),
                       ("edgead_version", "9"), ("val_good_scores", None)):
        other = copy.deepcopy(m)
        other[key] = value
        assert entry_fingerprint(other, other["engines"][0]) == base, key    # the same model built again
        assert manifest_digest(other) != m["digest"], key                      # but no edit goes unseen
