"""INT8 (static QDQ, calibrated on good parts) and OpenVINO engines: what build-engine writes, what
they score against FP32, how they are chosen, calibrated and benchmarked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgead.backends import load_detector
from edgead.backends.manifest import MANIFEST, read_manifest
from edgead.cli import main
from edgead.errors import EdgeADError

from tests.backends.test_engine import _images

openvino = pytest.importorskip("openvino")     # in strict CI a missing install fails here (tests/conftest.py)


@pytest.fixture(scope="session")
def engine_int8(tiny_model: Path, tiny_product: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgead.export.build import build_engine

    out = tmp_path_factory.mktemp("engines") / "tiny-int8"
    build_engine(tiny_model, out, max_batch=4, calib_images=tiny_product / "train" / "good", log=lambda s: None)
    return out


def _ops(path: Path) -> list[tuple[str, str]]:
    import onnx

    return [(n.name, n.op_type) for n in onnx.load(str(path)).graph.node]


def test_int8_and_openvino_entries(engine_int8):
    manifest = read_manifest(engine_int8)
    built = {(e["backend"], e["precision"]): e for e in manifest["engines"]}
    assert set(built) == {("onnxruntime", "fp32"), ("onnxruntime", "fp16"), ("onnxruntime", "int8"),
                          ("openvino", "fp32"), ("openvino", "int8")}
    # OpenVINO reads the same graphs: no second copy, but its own fingerprint (its own calibration).
    assert built["openvino", "int8"]["files"] == built["onnxruntime", "int8"]["files"]
    assert built["openvino", "int8"]["fingerprint"] != built["onnxruntime", "int8"]["fingerprint"]
    assert built["openvino", "fp32"]["runtime_version"] == openvino.__version__


def test_int8_graphs_quantise_the_backbones_and_keep_the_head_fp32(engine_int8):
    from edgead.export.quantize import head_nodes
    import onnx

    teacher = _ops(engine_int8 / "teacher.int8.onnx")
    assert sum(op == "QuantizeLinear" for _, op in teacher) > 10
    student = onnx.load(str(engine_int8 / "student.int8.onnx")).graph
    fp32_head = [(n.name, n.op_type) for n in onnx.load(str(engine_int8 / "student.onnx")).graph.node
                 if n.name in set(head_nodes(onnx.load(str(engine_int8 / "student.onnx")).graph))]
    assert fp32_head, "the student graph has a head"
    quantised_head = {n.name: n.op_type for n in student.node if n.name in dict(fp32_head)}
    assert quantised_head == dict(fp32_head)          # every head op is there, unchanged
    # and nothing downstream of the head's first op is quantised
    downstream = {n.name for n in student.node if n.name in set(head_nodes(student))}
    assert not [n for n in student.node if n.name in downstream and n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert sum(n.op_type == "DequantizeLinear" for n in student.node) > 10
    for role in ("teacher", "student"):
        props = {p.key: p.value for p in onnx.load(str(engine_int8 / f"{role}.int8.onnx")).metadata_props}
        assert props["precision"] == "int8" and props["role"] == role and len(props["model_fingerprint"]) == 64


def test_head_nodes_follow_the_edges():
    """Everything fed by a head op stays FP32 even when torch names it outside /head/ (the map resize)."""
    from types import SimpleNamespace as N

    from edgead.export.quantize import head_nodes

    nodes = [N(name="/student/conv/Conv", input=["image"], output=["s"]),
             N(name="/head/Sub", input=["s", "t0_0"], output=["d"]),
             N(name="/AdaptiveMaxPool", input=["d"], output=["map"]),
             N(name="/pool/AveragePool", input=["s"], output=["p"])]
    assert head_nodes(N(node=nodes)) == ["/head/Sub", "/AdaptiveMaxPool"]


def test_int8_scores_track_fp32(engine_int8, tiny_product):
    x, _ = _images(tiny_product, engine_int8)
    s32, m32 = load_detector(engine_int8, "onnxruntime", "fp32").infer(x)
    s8, m8 = load_detector(engine_int8, "onnxruntime", "int8").infer(x)
    assert m8.shape == m32.shape and np.isfinite(m8).all()
    # 8-bit features move the scores more than FP16 does; the ranking of parts must hold.
    assert float(np.corrcoef(s8, s32)[0, 1]) > 0.95
    assert float(np.abs(s8 - s32).max()) <= 0.15 * float(np.ptp(s32))


def test_openvino_matches_onnxruntime(engine_int8, tiny_product):
    x, _ = _images(tiny_product, engine_int8)
    for precision, tol in (("fp32", 1e-4), ("int8", 0.05)):
        s_ort, m_ort = load_detector(engine_int8, "onnxruntime", precision).infer(x)
        det = load_detector(engine_int8, "openvino", precision)
        assert det.backend == "openvino" and det.precision == precision
        s_ov, m_ov = det.infer(x)
        assert m_ov.shape == m_ort.shape
        assert float(np.abs(s_ov - s_ort).max()) <= tol * float(np.ptp(s_ort)), precision


def test_cpu_default_is_int8_when_built(engine_int8, engine):
    assert load_detector(engine_int8).precision == "int8"
    assert load_detector(engine_int8, "openvino").precision == "int8"
    assert load_detector(engine).precision == "fp32"        # a folder built without --calib-images


def test_int8_needs_calibration_images(tiny_model, tiny_product, tmp_path, capsys):
    code = main(["build-engine", "--model", str(tiny_model), "--out", str(tmp_path / "e"), "--precision", "int8"])
    assert code == 2
    assert "--calib-images" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted((tiny_product / "train" / "good").iterdir())[:3]:
        shutil.copy(p, few / p.name)
    (few / "broken.png").write_bytes(b"not a png")
    code = main(["build-engine", "--model", str(tiny_model), "--out", str(tmp_path / "e"), "--calib-images", str(few)])
    err = capsys.readouterr().err
    assert code == 2 and "3 readable good images" in err and "at least 8" in err
    assert not (tmp_path / "e").exists()
    code = main(["build-engine", "--model", str(tiny_model), "--out", str(tmp_path / "e"),
                 "--calib-images", str(tmp_path / "nowhere")])
    assert code == 2 and "--calib-images" in capsys.readouterr().err


def test_openvino_engines_added_on_the_box(engine_copy, capsys, monkeypatch):
    """`build-engine --engine DIR --backend openvino`: a folder exported where OpenVINO was not installed
    gets its OpenVINO entries on the box; the ONNX Runtime entries (and so their calibrations) keep their
    fingerprints."""
    from edgead.backends import openvino as ov_backend
    from edgead.backends.manifest import write_manifest

    original = read_manifest(engine_copy)
    onnx_prints = {e["precision"]: e["fingerprint"] for e in original["engines"] if e["backend"] == "onnxruntime"}
    without = dict(original, engines=[e for e in original["engines"] if e["backend"] != "openvino"])
    write_manifest(engine_copy, without)
    assert main(["build-engine", "--engine", str(engine_copy), "--backend", "openvino"]) == 0
    assert "calibrate them" in capsys.readouterr().out
    after = read_manifest(engine_copy)
    assert [e["precision"] for e in after["engines"] if e["backend"] == "openvino"] == ["fp32"]
    assert {e["precision"]: e["fingerprint"] for e in after["engines"] if e["backend"] == "onnxruntime"} == onnx_prints
    monkeypatch.setattr(ov_backend, "usable", lambda: False)
    assert main(["build-engine", "--engine", str(engine_copy), "--backend", "openvino"]) == 2
    assert "OpenVINO is not usable" in capsys.readouterr().err


def test_openvino_engine_without_openvino_says_what_to_install(engine_int8, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(EdgeADError, match="OpenVINO is not installed") as err:
        load_detector(engine_int8, "openvino", "int8")
    assert "edgead[openvino]" in err.value.hint


def test_an_openvino_fp16_entry_is_an_edit(engine_int8, tmp_path):
    from edgead.backends.manifest import manifest_digest

    copy = tmp_path / "e"
    shutil.copytree(engine_int8, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    next(e for e in manifest["engines"] if e["backend"] == "openvino" and e["precision"] == "fp32")["precision"] = "fp16"
    manifest["digest"] = manifest_digest(manifest)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(EdgeADError, match="openvino/fp16"):
        read_manifest(copy)


def test_calibrate_and_run_the_int8_engine(engine_int8, tiny_product, tmp_path, capsys):
    record, good = tmp_path / "cal.yaml", tmp_path / "good"
    good.mkdir()
    for p in [*(tiny_product / "train" / "good").iterdir(), *(tiny_product / "test" / "good").iterdir()]:
        shutil.copy(p, good / f"{p.parent.parent.name}-{p.name}")
    # 22 good parts: enough for the plain quantile at a (test-only) high target false-reject rate
    assert main(["calibrate", "--engine", str(engine_int8), "--good", str(good), "--out", str(record),
                 "--backend", "openvino", "--target-frr", "0.5"]) == 0
    capsys.readouterr()
    text = record.read_text()
    assert "openvino" in text and "int8" in text
    # the record binds the OpenVINO INT8 engine: ONNX Runtime's INT8 engine is another engine
    code = main(["run", "--engine", str(engine_int8), "--calibration", str(record), "--camera",
                 str(tiny_product / "test" / "good"), "--backend", "onnxruntime", "--max-frames", "2"])
    assert code == 2
    assert "calibrat" in capsys.readouterr().err
    code = main(["run", "--engine", str(engine_int8), "--calibration", str(record), "--camera",
                 str(tiny_product / "test" / "good"), "--backend", "openvino", "--max-frames", "3"])
    assert code == 0


def test_bench_times_every_engine_side_by_side_with_accuracy(engine_int8, tiny_product, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--engine", str(engine_int8), "--iters", "2", "--warmup", "1", "--batch", "1",
                 "--no-torch", "--threads", "1", "--data", str(tiny_product), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    names = {r["backend"] for r in result["rows"]}
    assert names == {"onnxruntime/fp32", "onnxruntime/fp16", "onnxruntime/int8", "openvino/fp32", "openvino/int8"}
    acc = result["accuracy"]
    assert acc["onnxruntime/fp32"]["auroc_change"] == 0.0 and acc["onnxruntime/fp32"]["score_drift"] == 0.0
    assert all(0.0 <= a["image_auroc"] <= 1.0 and a["score_drift"] >= 0.0 for a in acc.values())
    table = capsys.readouterr().out
    assert "x ref" in table and "AUROC" in table and "openvino/int8" in table


def test_interleaved_timing_rotates_the_order():
    """Each round runs every engine once, starting one further along, so none always runs first."""
    from edgead.backends.bench import time_interleaved
    from edgead.preprocess import PreprocessSpec

    calls: list[str] = []

    class Fake:
        max_batch = 1

        def __init__(self, name: str) -> None:
            self.name = name

        def infer(self, batch):
            calls.append(self.name)
            return np.zeros(len(batch)), np.zeros((len(batch), 4, 4))

    spec = PreprocessSpec(height=8, width=8)
    stats = time_interleaved({"a": Fake("a"), "b": Fake("b"), "c": Fake("c")}, spec, 1, 3, 0, (8, 8), False)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert set(stats) == {"a", "b", "c"} and all(s["p50_ms"] >= 0 for s in stats.values())
