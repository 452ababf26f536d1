"""Two GigE Vision cameras on one box: two Aravis fake cameras (`arv-fake-gv-camera-0.8`), each on its own
loopback address, inspected by one `edgead run --config station.yaml` sharing one engine.

The fake camera listens on its interface's address and GVCP port 3956, so two of them need two
addresses: the test runs in a user + network namespace of its own (`unshare -rn`, no root needed),
where it gives its private loopback 127.0.0.2 and 127.0.0.3. Every packet stays inside that namespace.
Where Aravis is missing the module skips (a failure under EDGEAD_REQUIRE_PEERS=1, as CI sets); where the
machine cannot make a network namespace (user namespaces switched off) the test skips as `hardware`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from capture_fixtures import aravis_missing

_missing = aravis_missing()
if _missing:
    pytest.skip(_missing, allow_module_level=True)

ADDRESSES = ("127.0.0.2", "127.0.0.3")
NAMESPACE = ["unshare", "-rn", "sh", "-c"]
SETUP = "ip link set lo up && " + " && ".join(f"ip addr add {a}/8 dev lo" for a in ADDRESSES)
TESTS = Path(__file__).resolve().parents[1]

# Run inside the namespace: both cameras up, the station over them, the cameras down again.
SCRIPT = textwrap.dedent("""
    import sys
    from capture_fixtures import FakeGigECamera
    from edgead.cli import main

    cams = []
    try:
        for i, ip in enumerate(sys.argv[2:]):
            cam = FakeGigECamera(serial=f"EDGEAD{i + 2}")
            cam.ip = ip
            cam.start()
            cams.append(cam)
        code = main(["run", "--config", sys.argv[1]])
    finally:
        for cam in cams:
            cam.cleanup()
    sys.exit(code)
""")


def _namespace_works() -> str | None:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "needs unshare (util-linux) and ip (iproute2) for a private network namespace"
    probe = subprocess.run([*NAMESPACE, SETUP], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"no network namespace here: {probe.stderr.strip()}"


@pytest.fixture(scope="module")
def engine_and_calibration(tiny_engine, tiny_product, tmp_path_factory):
    """The tiny engine and a calibration record for it (the threshold does not matter here)."""
    from edgead.backends import load_detector
    from edgead.data.images import list_images, read_image
    from edgead.decide.record import build_record, write_record
    from edgead.decide.scoring import Scored, engine_info
    from edgead.preprocess import preprocess

    out = tmp_path_factory.mktemp("station-gige")
    engine = tiny_engine
    detector = load_detector(engine, "onnxruntime", "fp32")
    spec, info = engine_info(engine, detector)
    images = [read_image(p) for p in list_images(tiny_product / "train" / "good")[:8]]
    scores, _ = detector.infer(np.stack([preprocess(i, spec) for i in images]))
    fake = np.random.default_rng(0).normal(float(scores.mean()), float(scores.std()) + 1e-6, 2000)
    record = build_record(Scored(fake, None, []), None, 0.01, "quantile", info, ("test", None), refits=5)
    return engine, write_record(record, out / "calibration.yaml", fake)


@pytest.mark.hardware   # the network namespace is a machine capability (like tests/faults' mount namespace)
def test_two_fake_gige_cameras_share_one_engine(engine_and_calibration, tmp_path):
    why = _namespace_works()
    if why:
        pytest.skip(why)
    engine, calibration = engine_and_calibration
    cams = [{"name": f"cam{i + 2}", "camera": {"source": f"gige:{ip}", "frame_rate": 10, "timeout_ms": 2000}}
            for i, ip in enumerate(ADDRESSES)]
    config = tmp_path / "station.yaml"
    config.write_text(yaml.safe_dump({"engine": str(engine), "calibration": str(calibration), "deadline_ms": 1000,
                                      "max_frames": 10, "threads": 1, "record": str(tmp_path / "runs"),
                                      "cameras": cams}))
    script = tmp_path / "station_in_namespace.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]), "OMP_NUM_THREADS": "1"}
    command = f"{SETUP} && exec {sys.executable} {script} {config} {' '.join(ADDRESSES)}"
    done = subprocess.run([*NAMESPACE, command], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for i, ip in enumerate(ADDRESSES):
        name = f"cam{i + 2}"
        assert f"[{name}] edgead run: 10 frames, 10 parts" in done.stdout, done.stdout
        (record,) = (tmp_path / "runs" / name).iterdir()
        events = [json.loads(line) for line in (record / "events.jsonl").read_text().splitlines()]
        assert len(events) == 10 and all(e["extra"]["camera"] == name and e["source"] == f"gige:{ip}" for e in events)
        assert all(e["decision"] in ("pass", "reject") for e in events)      # every part inspected in time
    assert "station: 2 cameras, 20 parts" in done.stdout
    assert f"engine {engine.name} (onnxruntime/fp32) for cameras cam2, cam3" in done.stderr
