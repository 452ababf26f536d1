"""Helpers of the cross-stage fault suite (tests/faults): `edgead` driven from its command line, as an electrician would, while
real peers are stopped and restarted, disks fill up and files are cut or edited.

Every test counts: frames in the source = parts decided (passes + rejects + safe actions) + frames
counted as lost; events produced = delivered (by id, seen by an independent receiver) + reported
undelivered; and nothing the user sees is a traceback. `Line` is one small inspection line (the tests'
tiny model as an ONNX Runtime engine, a real calibration record, clips and image folders of good
parts and parts with a block of noise) that every test builds its fault on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    def summary(self) -> dict[str, Any]:
        """The run's summary from the run.json of its record folder (named on stdout)."""
        line = next(s for s in self.out.splitlines() if s.strip().startswith("records: "))
        return json.loads((Path(line.split("records: ", 1)[1].strip()) / "run.json").read_text())["summary"]


def no_traceback(res: Result) -> Result:
    assert "Traceback" not in res.text, res.text
    return res


def env() -> dict[str, str]:
    """The test's own environment (its EDGEAD_STATE_DIR), one thread, the checkout first on the path."""
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), e.get("PYTHONPATH", "")) if p)
    return e


def edgead(*args: str | Path, timeout: float = 120, merged: bool = False) -> Result:
    """`edgead ARGS` in a new process; its exit code, stdout and stderr (never a traceback). `merged`:
    stderr into stdout, in the order a terminal shows them."""
    p = subprocess.run([sys.executable, "-m", "edgead.cli", *map(str, args)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT if merged else subprocess.PIPE, text=True, timeout=timeout, env=env())
    return no_traceback(Result(p.returncode, p.stdout, p.stderr or ""))


def start(*args: str | Path) -> subprocess.Popen[str]:
    """`edgead ARGS` started in the background (finish it with `finish`)."""
    return subprocess.Popen([sys.executable, "-m", "edgead.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env())


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> Result:
    out, err = proc.communicate(timeout=timeout)
    return no_traceback(Result(proc.returncode, out, err))


def write_yaml(path: Path, obj: Any) -> Path:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def event_ids(record_dir: Path) -> list[str]:
    """Every event id in a run's audit log, in order."""
    lines = (record_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(s)["event_id"] for s in lines if '"event_id"' in s]


@dataclass
class Line:
    model: Path
    engine: Path
    calibration: Path
    images: list[np.ndarray]        # good parts and, every third, a defective one
    labels: list[int]
    root: Path

    def clip(self, name: str, n: int) -> Path:
        """A lossless clip of n parts (the images in turn), made once."""
        from edgead.demo import conveyor

        path = self.root / f"{name}.avi"
        if not path.exists():
            conveyor.write_video([self.images[i % len(self.images)] for i in range(n)], path, 30, prefer="FFV1")
        return path

    def folder(self, name: str, n: int) -> Path:
        """An image folder of n parts, made once."""
        import cv2

        path = self.root / name
        if not path.exists():
            path.mkdir()
            for i in range(n):
                cv2.imwrite(str(path / f"part{i:04d}.png"), cv2.cvtColor(self.images[i % len(self.images)],
                                                                        cv2.COLOR_RGB2BGR))
        return path

    def run_args(self, camera: Path | str, *extra: str | Path, config: Path | None = None) -> list[str | Path]:
        args: list[str | Path] = ["run", "--engine", self.engine, "--calibration", self.calibration, "--camera", camera,
                                  "--deadline-ms", "5000"]
        return args + (["--config", config] if config else []) + list(extra)
