"""A real Triton Inference Server for the tests, from the binaries nvidia-pytriton bundles.

EDGEAD_TRITON_HOME names a `pip install --no-deps --target DIR nvidia-pytriton==0.7.0 "numpy<2"` folder
(CI makes one: .ci/run). Its python backend stub is built against numpy 1.x (a numpy 2 array reaches
the server as 0 bytes), ignores PYTHONPATH and puts its working directory first on sys.path: the
server runs in DIR, so the stub imports DIR's numpy 1.x (onnxruntime runs with either). That Triton build has the python backend but no onnxruntime or tensorrt backend, so the
tests serve a *stand-in copy* of the exported repository: the same files, with only the teacher's and
the student's `platform: "onnxruntime_onnx"` replaced by `backend: "python"` and a model.py that runs
that same model.onnx with the onnxruntime package. The ensemble, dynamic batching, max_batch_size, the
parameters and every input and output are served by the real server exactly as exported.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import List, Optional

TRITON_HOME_ENV = "EDGEAD_TRITON_HOME"
ONNX_PLATFORM = 'platform: "onnxruntime_onnx"'

MODEL_PY = '''"""Stand-in for Triton's onnxruntime backend (tests only): runs model.onnx with the onnxruntime package."""
import json
import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
            values = self.session.run(self.outputs, feeds)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in zip(self.outputs, values)]))
        return responses
'''


def triton_home() -> Optional[Path]:
    """The nvidia-pytriton folder named by EDGEAD_TRITON_HOME, when it holds a tritonserver."""
    home = os.environ.get(TRITON_HOME_ENV)
    if home and (Path(home) / "pytriton" / "tritonserver" / "bin" / "tritonserver").is_file():
        return Path(home)
    return None


def missing_numpy1(home: Path) -> bool:
    """DIR has no numpy 1.x for the stub (see the module docstring)."""
    return not any(p.name.startswith("numpy-1.") for p in home.glob("numpy-*.dist-info"))


def standin_copy(repo: Path, out: Path) -> Path:
    """The exported repository with its ONNX models served by the python backend (see the module)."""
    shutil.copytree(repo, out)
    for config in sorted(out.glob("*/config.pbtxt")):
        text = config.read_text()
        if ONNX_PLATFORM in text:
            config.write_text(text.replace(ONNX_PLATFORM, 'backend: "python"', 1))
            (config.parent / "1" / "model.py").write_text(MODEL_PY)
    return out


def backend_dir(home: Path, out: Path) -> Path:
    """A backend folder with the python backend and the stub of this interpreter's Python version."""
    server = home / "pytriton" / "tritonserver"
    python = out / "python"
    shutil.copytree(server / "backends" / "python", python, ignore=shutil.ignore_patterns("__pycache__"))
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    shutil.copy2(server / "python_backend_stubs" / version / "triton_python_backend_stub", python)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TritonServer:
    """tritonserver on loopback, serving `repo`; start() waits for every model to be ready."""

    def __init__(self, home: Path, repo: Path, backends: Path, log: Path) -> None:
        self.home, self.repo, self.backends, self.log_path = home, repo, backends, log
        self.grpc_port, self.http_port = free_port(), free_port()
        self.proc: Optional[subprocess.Popen] = None

    def command(self) -> List[str]:
        return [str(self.home / "pytriton" / "tritonserver" / "bin" / "tritonserver"),
                "--model-repository", str(self.repo), "--backend-directory", str(self.backends),
                "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
                "--http-address", "127.0.0.1", "--http-port", str(self.http_port), "--allow-metrics", "false",
                "--exit-on-error", "true", "--strict-readiness", "true"]

    def env(self) -> dict:
        """The stub must load this interpreter's libpython (not the distribution's) and the bundled libs."""
        libs = [sysconfig.get_config_var("LIBDIR") or "", str(self.home / "nvidia_pytriton.libs")]
        old = os.environ.get("LD_LIBRARY_PATH", "")
        return {**os.environ, "LD_LIBRARY_PATH": ":".join([p for p in libs if p] + ([old] if old else [])),
                "OMP_NUM_THREADS": "1"}

    def start(self, models: List[str], timeout_s: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                         start_new_session=True, cwd=str(self.home))   # its python stubs go with it in stop()
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}: {self.tail()}")
            try:
                if all(urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/models/{m}/ready",
                                              timeout=1).status == 200 for m in models):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"tritonserver was not ready within {timeout_s} s: {self.tail()}")

    def stop(self) -> None:
        """Kill the server and its stubs (its own process group), as a crash would; then remove the
        python backend's shared memory regions they leave in /dev/shm (named on the stubs' command lines)."""
        if self.proc is not None:
            regions = _stub_regions(self.proc.pid)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
            time.sleep(0.1)                      # the stubs are gone once the group is reaped by init
            for name in regions:
                try:
                    os.unlink(f"/dev/shm/{name}")
                except OSError:
                    pass
        self.proc = None

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _stub_regions(pgid: int) -> List[str]:
    """The python backend's shared memory regions of a process group (each stub names its own)."""
    names = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or os.getpgid(int(proc.name)) != pgid:
                continue
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        names += [a.decode() for a in args if a.startswith(b"triton_python_backend_shm_region_")]
    return names
