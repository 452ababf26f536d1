"""`edgead build-engine --engine DIR`: TensorRT plans built on the device from an exported folder.

TensorRT cannot run here, so `build_engines` is replaced by a stand-in that writes plan files the
way the real one does; what is tested is ours: no torch on this path, the ONNX graphs checked
against the manifest first, the manifest rewritten so the ONNX Runtime entries (and calibrations
made with them) stay valid.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from edgead.backends import load_detector
from edgead.cli import main
from edgead.errors import EdgeADError


@pytest.fixture(scope="module")
def pristine(tiny_model, tmp_path_factory):
    """One export for the module; each test gets its own copy to change (a copy costs far less than an export)."""
    from edgead.export.build import build_engine

    out = tmp_path_factory.mktemp("pristine") / "tiny"
    build_engine(tiny_model, out, max_batch=4, log=lambda s: None)
    return out


@pytest.fixture()
def exported(pristine, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "tiny"
    shutil.copytree(pristine, out)
    return out


@pytest.fixture()
def fake_trt(monkeypatch):
    calls = []

    def build_engines(engine_dir, onnx_files, precision, max_batch, input_hw, feature_shapes, workspace_mib=1024,
                      dla_core=None, strongly_typed_fp16_onnx=None):
        calls.append(dict(onnx_files=onnx_files, precision=precision, max_batch=max_batch, input_hw=input_hw,
                          feature_shapes=feature_shapes, dla_core=dla_core, fp16=strongly_typed_fp16_onnx))
        files = {}
        for role in ("teacher", "student"):
            (engine_dir / f"{role}.{precision}.plan").write_bytes(f"plan {role}".encode())
            files[role] = f"{role}.{precision}.plan"
        return {"backend": "tensorrt", "precision": precision, "files": files, "max_batch": max_batch,
                "device": {"gpu": "Orin", "compute_capability": "8.7", "tensorrt": "10.3.0", "dla_core": dla_core}}

    import edgead.export.build as rebuild
    import edgead.export.tensorrt_build as trt_backend

    monkeypatch.setattr(trt_backend, "build_engines", build_engines)
    monkeypatch.setattr(rebuild, "tensorrt_unusable_reason", lambda: None)
    return calls


def test_rebuild_on_device_needs_no_torch_and_keeps_onnx_entries_valid(exported, fake_trt, monkeypatch, capsys):
    before = json.loads((exported / "manifest.json").read_text())
    ort_fp = {(e["backend"], e["precision"]): e["fingerprint"] for e in before["engines"]}
    monkeypatch.setitem(sys.modules, "torch", None)     # any `import torch` on this path now fails
    assert main(["build-engine", "--engine", str(exported), "--dla", "0", "--max-batch", "2"]) == 0
    assert "TensorRT 10.3.0 fp16 engines built" in capsys.readouterr().out
    call = fake_trt[0]
    assert call["onnx_files"] == {"teacher": "teacher.onnx", "student": "student.onnx"}
    assert call["fp16"] == {"teacher": "teacher.fp16.onnx", "student": "student.fp16.onnx"}
    assert call["input_hw"] == (64, 64) and call["max_batch"] == 2 and call["dla_core"] == 0
    assert set(call["feature_shapes"]) == set(before["feature_names"])
    after = json.loads((exported / "manifest.json").read_text())
    assert after["engines"][0]["backend"] == "tensorrt" and after["engines"][0]["max_batch"] == 2
    assert {(e["backend"], e["precision"]): e["fingerprint"] for e in after["engines"][1:]} == ort_fp
    assert {e["max_batch"] for e in after["engines"][1:]} == {4}     # ONNX Runtime (and OpenVINO) keep their batch
    assert after["sha256"]["teacher.fp16.plan"]
    monkeypatch.delitem(sys.modules, "torch")
    det = load_detector(exported, "onnxruntime")        # the ONNX Runtime path still loads and verifies
    assert det.fingerprint == ort_fp["onnxruntime", "fp32"] and det.max_batch == 4
    # building again replaces the TensorRT entry instead of adding a second one
    assert main(["build-engine", "--engine", str(exported)]) == 0
    again = json.loads((exported / "manifest.json").read_text())
    assert [e["backend"] for e in again["engines"]].count("tensorrt") == 1
    assert again["engines"][0]["max_batch"] == 2 == fake_trt[1]["max_batch"]     # the folder's, by default


def test_rebuild_refuses_a_half_copied_folder(exported, fake_trt):
    from edgead.export.build import rebuild_tensorrt

    (exported / "student.onnx").write_bytes(b"truncated")
    with pytest.raises(EdgeADError) as e:
        rebuild_tensorrt(exported, log=lambda s: None)
    assert "student.onnx does not match its manifest" in str(e.value)
    assert fake_trt == []
    (exported / "student.onnx").unlink()
    with pytest.raises(EdgeADError, match="missing"):
        rebuild_tensorrt(exported, log=lambda s: None)


def test_rebuild_without_tensorrt_or_from_an_edited_manifest(exported, fake_trt, monkeypatch, tmp_path):
    import edgead.export.build as rebuild
    from edgead.backends.manifest import DAMAGED, write_manifest

    edited = tmp_path / "edited"
    shutil.copytree(exported, edited)
    m = json.loads((edited / "manifest.json").read_text())
    del m["feature_shapes"]                              # what the plans are built from
    (edited / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgeADError, match=f"'feature_shapes' is missing.*{DAMAGED}"):
        rebuild.rebuild_tensorrt(edited, log=lambda s: None)
    only16 = tmp_path / "only16"                         # a folder written without the FP32 graphs
    shutil.copytree(exported, only16)
    m = json.loads((only16 / "manifest.json").read_text())
    m["engines"] = [e for e in m["engines"] if e["precision"] != "fp32"]
    write_manifest(only16, m)
    with pytest.raises(EdgeADError, match="has no FP32 ONNX graphs to build TensorRT engines from"):
        rebuild.rebuild_tensorrt(only16, log=lambda s: None)
    assert fake_trt == []
    monkeypatch.setattr(rebuild, "tensorrt_unusable_reason", lambda: "no CUDA device (cudaErrorNoDevice)")
    with pytest.raises(EdgeADError) as e:
        rebuild.rebuild_tensorrt(exported, log=lambda s: None)
    assert "TensorRT is not usable" in str(e.value) and "cudaErrorNoDevice" in str(e.value) and "JetPack" in e.value.hint


def test_rebuild_into_a_read_only_folder_is_refused_before_building(exported, fake_trt, monkeypatch, capsys):
    from readonly_mount import mount_read_only

    before = (exported / "manifest.json").read_bytes()
    mount_read_only(exported, monkeypatch)
    assert main(["build-engine", "--engine", str(exported)]) == 2
    err = capsys.readouterr().err
    assert f"--engine {exported}" in err and "read-only" in err and "Traceback" not in err
    assert fake_trt == [] and (exported / "manifest.json").read_bytes() == before


def test_cli_rejects_export_options_with_engine(exported, capsys):
    assert main(["build-engine", "--engine", str(exported), "--map-size", "32", "32"]) == 2
    assert "--engine builds TensorRT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["build-engine"])
    assert "one of the arguments --model --engine is required" in capsys.readouterr().err


def test_auto_runs_onnx_runtime_and_says_why_where_tensorrt_cannot_run(exported, fake_trt, monkeypatch, caplog):
    import edgead.backends.manifest as manifest_module

    assert main(["build-engine", "--engine", str(exported)]) == 0
    monkeypatch.setattr(manifest_module, "tensorrt_unusable_reason",
                        lambda: "the driver supports CUDA 12.2, cuda-python needs 13.0")
    with caplog.at_level("WARNING", logger="edgead.engine"):
        det = load_detector(exported)
    assert det.backend == "onnxruntime"
    assert "not used: the driver supports CUDA 12.2" in caplog.text


def test_auto_runs_onnx_runtime_where_the_plans_cannot_be_opened(exported, fake_trt, monkeypatch, caplog):
    import importlib

    import edgead.backends.manifest as manifest_module

    # the module load_detector imports from (another test may have re-imported it since the package's attribute was set)
    trt_backend = importlib.import_module("edgead.backends.tensorrt")
    assert main(["build-engine", "--engine", str(exported)]) == 0
    monkeypatch.setattr(manifest_module, "tensorrt_unusable_reason", lambda: None)

    def other_gpu(*args, **kwargs):
        raise EdgeADError("this engine was built for another GPU (Orin)", "rebuild it on this device")

    monkeypatch.setattr(trt_backend, "TensorRTDetector", other_gpu)
    with caplog.at_level("WARNING", logger="edgead.engine"):
        assert load_detector(exported).backend == "onnxruntime"
    assert "could not be opened (this engine was built for another GPU" in caplog.text
    with pytest.raises(EdgeADError, match="another GPU"):
        load_detector(exported, "tensorrt")                 # asked for by name: no silent substitute


def test_a_failed_tensorrt_build_in_auto_still_writes_the_onnx_folder(tiny_model, tmp_path, monkeypatch, capsys):
    import edgead.export.build as build
    import edgead.export.tensorrt_build as trt_build

    def fails(*args, **kwargs):
        raise EdgeADError("TensorRT 10.3.0 failed to build the student engine: out of memory", "try a larger --workspace")

    monkeypatch.setattr(trt_build, "build_engines", fails)
    monkeypatch.setattr(build, "tensorrt_unusable_reason", lambda: None)
    assert main(["build-engine", "--model", str(tiny_model), "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "TensorRT not usable here (its build failed: TensorRT 10.3.0 failed" in out
    assert load_detector(tmp_path / "e").backend == "onnxruntime"
    assert main(["build-engine", "--model", str(tiny_model), "--out", str(tmp_path / "f"), "--backend", "tensorrt"]) == 2
    assert "out of memory" in capsys.readouterr().err and not (tmp_path / "f").exists()


def test_int8_tensorrt_is_built_from_the_qdq_graphs(tiny_model, tiny_product, tmp_path, exported, fake_trt, capsys):
    from edgead.export.build import build_engine

    assert main(["build-engine", "--engine", str(exported), "--precision", "int8"]) == 2
    assert "no INT8 (QDQ) ONNX graphs" in capsys.readouterr().err and fake_trt == []
    folder = tmp_path / "int8"
    build_engine(tiny_model, folder, max_batch=4, calib_images=tiny_product / "train" / "good", log=lambda s: None)
    fake_trt.clear()                                  # (build_engine built its TensorRT entry with the stand-in)
    assert main(["build-engine", "--engine", str(folder), "--precision", "int8"]) == 0
    assert fake_trt[0]["onnx_files"] == {"teacher": "teacher.int8.onnx", "student": "student.int8.onnx"}
    assert fake_trt[0]["precision"] == "int8"
