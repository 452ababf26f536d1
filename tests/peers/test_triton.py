"""The Triton model repository (build-engine --triton-repo) and the triton:// detector, against a real
Triton Inference Server 2.51 (nvidia-pytriton's binaries, CPU, loopback).

What runs where: the repository tests parse every config.pbtxt into Triton's own ModelConfig
protobuf (tritonclient's model_config_pb2) and compare it with the ONNX graphs (`onnx`). The server
tests serve the stand-in copy of tests/triton_fixtures.py: the exported repository with only the
teacher's and the student's ONNX Runtime platform swapped for the python backend running the same
model.onnx (that Triton build has no onnxruntime backend); the ensemble, batching and parameters are
served as exported. Not run here: Triton's native onnxruntime and tensorrt backends, a GPU, a network
beyond loopback.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from triton_fixtures import TRITON_HOME_ENV, TritonServer, backend_dir, missing_numpy1, standin_copy, triton_home

from edgead.errors import EdgeADError
from edgead.protocols import Frame, SinkHealth

pytest.importorskip("tritonclient.grpc", reason="the Triton client is not installed: pip install 'edgead[triton]'")

MODEL = "tiny"
MAX_BATCH = 4


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def engine(tiny_model, tmp_path_factory):
    from edgead.export.build import build_engine

    out = tmp_path_factory.mktemp("engines") / "tiny"
    build_engine(tiny_model, out, backend="onnxruntime", max_batch=MAX_BATCH, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def local(engine):
    from edgead.backends import load_detector

    return load_detector(engine, "onnxruntime", "fp32", threads=1)


@pytest.fixture(scope="module")
def repo(engine, tmp_path_factory):
    from edgead.export.triton_repo import write_triton_repository

    return write_triton_repository(engine, tmp_path_factory.mktemp("triton") / "repo", name=MODEL, device="cpu",
                                   backend="onnxruntime", precision="fp32")


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    home = triton_home()
    if home is None:
        pytest.skip(f"no Triton server: set {TRITON_HOME_ENV} to a `pip install --no-deps --target DIR "
                    "nvidia-pytriton==0.7.0 \"numpy<2\"` folder")
    if missing_numpy1(home):
        pytest.skip(f"{home} has no numpy 1.x for the python backend stub: pip install --no-deps --target {home} "
                    "\"numpy<2\"")
    work = tmp_path_factory.mktemp("tritonserver")
    srv = TritonServer(home, standin_copy(repo, work / "repo"), backend_dir(home, work / "backends"),
                       work / "server.log")
    srv.start([MODEL])
    yield srv
    srv.stop()


@pytest.fixture()
def up(server):
    """The server, running (a test that stopped it has it started again)."""
    if server.proc is None:
        server.start([MODEL])
    return server


def url(server, query: str = "") -> str:
    return f"triton://127.0.0.1:{server.grpc_port}/{MODEL}{query}"


@pytest.fixture(scope="module")
def batch(tiny_product, engine):
    from line_parts import good_and_defective

    from edgead.backends.manifest import engine_preprocessing
    from edgead.preprocess import preprocess

    images, _ = good_and_defective(tiny_product / "train" / "good")
    spec = engine_preprocessing(engine)
    return np.stack([preprocess(i, spec) for i in images[:10]])


# ---------------------------------------------------------------- the repository


def _config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _onnx_io(path: Path) -> dict:
    """name -> (Triton data type, dims without the batch dim) of every input and output, read with `onnx`."""
    onnx = pytest.importorskip("onnx", reason="onnx (edgead[train]) reads the graphs the configs are compared with")
    from tritonclient.grpc import model_config_pb2 as pb

    types = {onnx.TensorProto.FLOAT: pb.TYPE_FP32, onnx.TensorProto.FLOAT16: pb.TYPE_FP16}
    graph = onnx.load(str(path)).graph
    out = {}
    for v in list(graph.input) + list(graph.output):
        dims = v.type.tensor_type.shape.dim
        assert dims[0].dim_param or dims[0].dim_value <= 0, f"{v.name}: the batch dim must be dynamic"
        out[v.name] = (types[v.type.tensor_type.elem_type], [d.dim_value for d in dims[1:]])
    return out


def _check_tensors(tensors, graph: dict) -> None:
    for t in tensors:
        dtype, dims = graph[t.name]
        assert t.data_type == dtype, t.name
        if dims:
            assert list(t.dims) == dims and not t.HasField("reshape"), t.name
        else:                                    # batch-only (score: [N]): dims [1] reshaped to []
            assert list(t.dims) == [1] and t.HasField("reshape") and list(t.reshape.shape) == [], t.name


def test_repository_parses_and_matches_the_graphs(repo, engine):
    from tritonclient.grpc import model_config_pb2 as pb

    from edgead.backends.manifest import read_manifest
    from edgead.backends.triton import PARAMETER, read_served

    assert sorted(p.parent.name for p in repo.glob("*/config.pbtxt")) == [MODEL, f"{MODEL}_student", f"{MODEL}_teacher"]
    graphs = {}
    for role in ("teacher", "student"):
        cfg = _config(repo / f"{MODEL}_{role}" / "config.pbtxt")
        graphs[role] = _onnx_io(repo / f"{MODEL}_{role}" / "1" / "model.onnx")
        assert cfg.name == f"{MODEL}_{role}" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == MAX_BATCH
        assert sorted(t.name for t in list(cfg.input) + list(cfg.output)) == sorted(graphs[role])
        _check_tensors(list(cfg.input) + list(cfg.output), graphs[role])
        assert [g.kind for g in cfg.instance_group] == [pb.ModelInstanceGroup.KIND_CPU]
        assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
        assert cfg.dynamic_batching.max_queue_delay_microseconds > 0

    ens = _config(repo / MODEL / "config.pbtxt")
    assert ens.platform == "ensemble" and ens.max_batch_size == MAX_BATCH and (repo / MODEL / "1").is_dir()
    assert [(t.name, list(t.dims)) for t in ens.input] == [("image", [3, 64, 64])]
    assert [(t.name, list(t.dims), t.HasField("reshape")) for t in ens.output] == [
        ("map", list(graphs["student"]["map"][1]), False), ("score", [1], False)]
    teacher, student = ens.ensemble_scheduling.step
    feats = read_manifest(engine)["feature_names"]
    assert teacher.model_name == f"{MODEL}_teacher" and sorted(teacher.output_map) == sorted(feats)
    assert student.model_name == f"{MODEL}_student" and sorted(student.input_map) == sorted(["image", *feats])
    assert sorted(student.output_map) == ["map", "score"]

    text = ens.parameters[PARAMETER].string_value
    assert json.loads(text) == json.loads((repo / MODEL / "edgead_manifest.json").read_text())
    manifest, entry = read_served(text, "test")
    ort32 = [e for e in read_manifest(engine)["engines"] if (e["backend"], e["precision"]) == ("onnxruntime", "fp32")]
    assert entry == ort32[0] and manifest == read_manifest(engine)


def test_overwrite_is_refused_and_the_write_is_whole(repo, engine):
    from edgead.export.triton_repo import write_triton_repository

    with pytest.raises(EdgeADError, match="--triton-repo"):
        write_triton_repository(engine, repo, name=MODEL)
    other = repo.parent / "gpu"
    write_triton_repository(engine, other, name=MODEL)                 # defaults: GPU, FP16 graphs where built
    write_triton_repository(engine, other, name=MODEL, overwrite=True)
    cfg = _config(other / f"{MODEL}_student" / "config.pbtxt")
    assert cfg.instance_group[0].kind == 1                             # KIND_GPU
    assert "fp16" in (other / MODEL / "edgead_manifest.json").read_text()
    assert sorted(p.name for p in repo.parent.iterdir()) == ["gpu", "repo"]   # no temporary folder left behind
    with pytest.raises(EdgeADError, match="model name"):
        write_triton_repository(engine, repo.parent / "bad", name="a/b")


def test_build_engine_writes_the_repository_from_the_cli(engine, tmp_path, capsys):
    from edgead.cli import main

    out = tmp_path / "models"
    assert main(["build-engine", "--engine", str(engine), "--triton-repo", str(out), "--name", "line7",
                 "--triton-device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["line7", "line7_student", "line7_teacher"]
    assert _config(out / "line7_teacher" / "config.pbtxt").instance_group[0].kind == 2     # KIND_CPU
    assert main(["build-engine", "--engine", str(engine), "--triton-repo", str(out)]) == 2   # exists: refused
    assert "--overwrite" in capsys.readouterr().err
    assert main(["build-engine", "--model", str(engine), "--triton-repo", str(out)]) == 2    # needs --engine
    assert main(["build-engine", "--engine", str(engine), "--name", "x"]) == 2              # --name needs the repo


def test_tensorrt_entry_becomes_a_plan(engine, tmp_path):
    """A folder with a TensorRT entry (plans stand-in bytes: no TensorRT here) is served as model.plan."""
    import shutil

    from edgead.backends.manifest import read_manifest, write_manifest
    from edgead.export.triton_repo import write_triton_repository

    folder = tmp_path / "trt"
    shutil.copytree(engine, folder)
    manifest = read_manifest(folder)
    files = {role: f"{role}.fp16.plan" for role in ("teacher", "student")}
    for name in files.values():
        (folder / name).write_bytes(b"plan bytes of " + name.encode())
    manifest["engines"].append({"backend": "tensorrt", "precision": "fp16", "files": files, "max_batch": 2,
                                "device": {"gpu": "NVIDIA H200", "compute_capability": "9.0",
                                           "tensorrt": "10.3.0", "dla_core": None}})
    write_manifest(folder, manifest)
    logs: list = []
    out = write_triton_repository(folder, tmp_path / "repo", name=MODEL, log=logs.append)
    cfg = _config(out / f"{MODEL}_teacher" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 2
    assert (out / f"{MODEL}_teacher" / "1" / "model.plan").read_bytes() == b"plan bytes of teacher.fp16.plan"
    assert "NVIDIA H200" in logs[-1] and "10.3.0" in logs[-1]
    with pytest.raises(EdgeADError, match="GPU"):
        write_triton_repository(folder, tmp_path / "cpu", name=MODEL, device="cpu", backend="tensorrt")


def test_pbtxt_strings_round_trip():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from edgead.export.triton_repo import to_pbtxt

    value = 'a "quoted" \\ back\nslash, é and ✓'
    cfg = text_format.Parse(to_pbtxt({"name": "x", "parameters": [{"key": "k", "value": {"string_value": value}}]}),
                            model_config_pb2.ModelConfig())
    assert cfg.parameters["k"].string_value == value


def test_edited_served_manifest_is_refused(repo):
    from edgead.backends.triton import read_served

    doc = json.loads((repo / MODEL / "edgead_manifest.json").read_text())
    doc["served"]["max_batch"] = 16
    with pytest.raises(EdgeADError, match="edited or is damaged"):
        read_served(json.dumps(doc), "test")
    doc = json.loads((repo / MODEL / "edgead_manifest.json").read_text())
    doc["manifest"]["preprocess"]["mean"] = [0.0, 0.0, 0.0]
    with pytest.raises(EdgeADError, match="edited or is damaged"):
        read_served(json.dumps(doc), "test")


def test_urls():
    from edgead.backends.triton import parse_url

    u = parse_url("triton://gpu-box/washer?timeout=0.5&shm=system")
    assert (u.host, u.port, u.model, u.timeout_s, u.shm) == ("gpu-box", 8001, "washer", 0.5, True)
    assert parse_url("triton://[::1]:9001/m").address == "[::1]:9001"
    for bad in ("triton://host/", "triton://host:1/a/b", "triton://h/m?timeout=0", "triton://h/m?tls=1",
                "http://h/m"):
        with pytest.raises(EdgeADError):
            parse_url(bad)
    from edgead.decide.calibrate import _engine_name

    assert _engine_name("triton://gpu-box/washer?shm=system") == "washer"     # calibration/washer.yaml


# ---------------------------------------------------------------- against the server


def test_scores_and_maps_equal_the_local_engine(up, local, batch):
    from edgead.backends import load_detector
    from edgead.backends.triton import TritonDetector

    s0, m0 = local.infer(batch)
    det = load_detector(url(up))
    shm = TritonDetector(url(up, "?shm=system"))
    try:
        assert isinstance(det, TritonDetector) and (det.backend, det.precision) == ("triton", "fp32")
        assert det.fingerprint == local.fingerprint and det.max_batch == MAX_BATCH
        for d in (det, shm):
            s1, m1 = d.infer(batch)                        # 10 parts: chunks of the served max batch (4)
            assert s1.shape == s0.shape and m1.shape == m0.shape
            np.testing.assert_allclose(s1, s0, atol=1e-5)
            np.testing.assert_allclose(m1, m0, atol=1e-5)
            s1, _ = d.infer(batch[:1])
            np.testing.assert_allclose(s1, s0[:1], atol=1e-5)
        with pytest.raises(EdgeADError, match="expects N x"):
            det.infer(batch[:, :, :32])
    finally:
        det.close()
        shm.close()


def test_calibration_binds_to_the_served_fingerprint(up, engine, local, batch, tmp_path):
    from edgead.backends import load_detector
    from edgead.decide.record import build_record, load_calibration, write_record
    from edgead.decide.scoring import Scored, engine_info

    def record(detector, name: str) -> Path:
        _, info = engine_info(engine, detector)
        scores = np.random.default_rng(0).normal(1.0, 0.1, 2000)
        path = tmp_path / f"{name}.yaml"
        write_record(build_record(Scored(scores, None, []), None, 0.01, "quantile", info, ("test", None), refits=5),
                     path, scores)
        return path

    det = load_detector(url(up))
    try:
        spec, info = engine_info(url(up), det)
        assert info["name"] == MODEL and info["path"] == url(up) and info["backend"] == "triton"
        assert load_calibration(record(local, "ort32"), det)["engine"]["fingerprint"] == det.fingerprint
        with pytest.raises(EdgeADError, match="engine"):
            load_calibration(record(load_detector(engine, "onnxruntime", "fp16", threads=1), "ort16"), det)
        with pytest.raises(EdgeADError, match="serves fp32"):
            load_detector(url(up), precision="fp16")
        with pytest.raises(EdgeADError, match="backend"):
            load_detector(url(up), backend="onnxruntime")
    finally:
        det.close()


def test_open_errors_say_what_is_wrong(up):
    from edgead.backends.triton import TritonDetector, parse_url
    from triton_fixtures import free_port

    t = time.monotonic()
    with pytest.raises(EdgeADError, match="does not answer"):
        TritonDetector(f"triton://127.0.0.1:{free_port()}/{MODEL}", connect_timeout_s=1.0)
    assert time.monotonic() - t < 3
    with pytest.raises(EdgeADError, match="not ready"):
        TritonDetector(f"triton://127.0.0.1:{up.grpc_port}/nothing")
    with pytest.raises(EdgeADError, match="no 'edgead_manifest'"):
        TritonDetector(f"triton://127.0.0.1:{up.grpc_port}/{MODEL}_teacher")
    assert parse_url(url(up)).port == up.grpc_port


def test_server_down_fails_fast_and_reconnects(up, local, batch):
    from edgead.backends.triton import TritonDetector

    s0, _ = local.infer(batch[:2])
    for query in ("", "?shm=system"):
        det = TritonDetector(url(up, query))
        try:
            det.infer(batch[:2])
            up.stop()
            t = time.monotonic()
            with pytest.raises(EdgeADError, match="Triton server"):
                det.infer(batch[:2])
            assert time.monotonic() - t < det.timeout_s + 1.0
            t = time.monotonic()
            with pytest.raises(EdgeADError, match="next try in"):       # within the backoff: at once
                det.infer(batch[:2])
            assert time.monotonic() - t < 0.2                  # (a timeout would be 1 s)
            up.start([MODEL])
            time.sleep(det._backoff.waiting_s)                # past the backoff window: the next call reconnects
            s1, _ = det.infer(batch[:2])
            np.testing.assert_allclose(s1, s0, atol=1e-5)
            assert det._backoff.delay_s == 0                             # a success resets the backoff
        finally:
            det.close()


def test_slow_server_times_out_then_answers_again(up, local, batch):
    """A server that stops answering (SIGSTOP: alive, silent) fails each request at the timeout."""
    import os
    import signal

    from edgead.backends.triton import TritonDetector

    det = TritonDetector(url(up, "?timeout=0.3"))
    try:
        det.infer(batch[:1])
        os.killpg(up.proc.pid, signal.SIGSTOP)
        try:
            t = time.monotonic()
            with pytest.raises(EdgeADError, match="Deadline|deadline"):
                det.infer(batch[:1])
            assert 0.25 < time.monotonic() - t < 1.5
        finally:
            os.killpg(up.proc.pid, signal.SIGCONT)
        time.sleep(det._backoff.waiting_s + 0.01)
        s1, _ = det.infer(batch[:1])
        np.testing.assert_allclose(s1, local.infer(batch[:1])[0], atol=1e-5)
    finally:
        det.close()


class _Sink:
    name = "recording"

    def __init__(self) -> None:
        self.events: list = []

    def reject(self, event) -> None:
        self.events.append(event)

    def health(self) -> SinkHealth:
        return SinkHealth(True)

    def close(self) -> None:
        pass


class _Line:
    """A replayed line of parts; reading part `kill_at` first stops the server."""

    name = "fake"
    live = False

    def __init__(self, images, kill_at: int, server: TritonServer) -> None:
        self.images, self.kill_at, self.server, self.i, self.finished = images, kill_at, server, 0, False

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def accounting(self):
        return None

    def read(self, timeout_s: float):
        if self.i >= len(self.images):
            self.finished = True
            return None
        if self.i == self.kill_at:
            time.sleep(0.5)                      # the parts before it are inspected first
            self.server.stop()
        k, self.i = self.i, self.i + 1
        time.sleep(0.02)
        return Frame(image=self.images[k], seq=k, t_capture=time.monotonic(),
                     wall_time=datetime.now(timezone.utc).isoformat(), source="fake")


def test_run_with_the_server_down_gives_the_safe_action(up, engine, local, tiny_product, tmp_path):
    """`detector: triton://...` in the run config; the server dies mid-run: those parts are safe-rejected."""
    from line_parts import good_and_defective

    from edgead.decide.record import build_record, write_record
    from edgead.decide.scoring import Scored, engine_info
    from edgead.runtime.config import from_dict
    from edgead.runtime.run import run

    from edgead.preprocess import preprocess

    images, labels = good_and_defective(tiny_product / "train" / "good")
    images = [i for i, bad in zip(images, labels) if not bad]
    spec, info = engine_info(engine, local)
    real, _ = local.infer(np.stack([preprocess(i, spec) for i in images[:8]]))
    scores = np.random.default_rng(0).normal(float(real.mean()), float(real.std()) + 1e-3, 2000)
    record = build_record(Scored(scores, None, []), None, 0.01, "quantile", info, ("test", None), refits=5)
    record["threshold"] = float(max(real.max(), scores.max())) + 1e-3      # every inspected part passes
    write_record(record, tmp_path / "cal.yaml", scores)
    cfg = from_dict({"detector": url(up), "calibration": str(tmp_path / "cal.yaml"), "deadline_ms": 5000,
                     "max_batch": 1, "camera": {"source": "fake", "live": False}})
    sink = _Sink()
    summary = run(cfg, source=_Line(images[:8], kill_at=4, server=up), sinks=sink, out=lambda s: None,
                  log=lambda s: None)
    assert summary["parts"] == 8 and sorted(e.seq for e in sink.events) == list(range(8))
    decisions = {e.seq: e.decision for e in sink.events}
    assert [decisions[k] for k in range(8)] == ["pass"] * 4 + ["safe_reject"] * 4      # never a pass once it is down
    assert all("Triton server" in e.reason for e in sink.events if e.seq >= 4)
    assert summary["passes"] == 4 and summary["safe_actions_by_reason"] == {"engine_error": 4}


def test_bench_times_the_served_model(up, capsys):
    from edgead.cli import main

    assert main(["bench", "--engine", url(up), "--batch", "1", "--iters", "2", "--warmup", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["backend"] for r in doc["rows"]} == {"triton/fp32"} and all(r["p50_ms"] > 0 for r in doc["rows"])


def test_predict_through_the_server(up, engine, local, tiny_product, tmp_path):
    from edgead.decide.predict import predict
    from edgead.decide.record import build_record, write_record
    from edgead.decide.scoring import Scored, engine_info

    _, info = engine_info(engine, local)
    scores = np.random.default_rng(0).normal(1.0, 0.1, 2000)
    write_record(build_record(Scored(scores, None, []), None, 0.01, "quantile", info, ("test", None), refits=5),
                 tmp_path / "cal.yaml", scores)
    summary = predict(url(up), tmp_path / "cal.yaml", tiny_product / "test", tmp_path / "out", log=lambda s: None)
    assert summary["images"] == len(list((tiny_product / "test").rglob("*.png")))
