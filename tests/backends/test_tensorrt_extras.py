"""The TensorRT extras of setup.py, as pip would read them on a Jetson and on an x86-64 GPU box:
no TensorRT wheel on a Jetson (it comes with JetPack), and TensorRT and cuda-python of one CUDA major."""

from __future__ import annotations

import os
import runpy
import sys
import types
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
JETSON = {"platform_machine": "aarch64", "sys_platform": "linux"}
DESKTOP = {"platform_machine": "x86_64", "sys_platform": "linux"}


@pytest.fixture(scope="module")
def extras() -> dict[str, list[Any]]:
    """extras_require, by running setup.py with a setup() that only records what it is given."""
    from packaging.requirements import Requirement   # pytest's own dependency

    seen: dict[str, Any] = {}
    fake = types.ModuleType("setuptools")
    fake.setup = lambda **kw: seen.update(kw)            # type: ignore[attr-defined]
    fake.find_packages = lambda **kw: []                  # type: ignore[attr-defined]
    saved, cwd = sys.modules.get("setuptools"), Path.cwd()
    sys.modules["setuptools"] = fake
    try:
        os.chdir(ROOT)
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    finally:
        os.chdir(cwd)
        if saved is None:
            sys.modules.pop("setuptools", None)
        else:
            sys.modules["setuptools"] = saved
    return {name: [Requirement(r) for r in reqs] for name, reqs in seen["extras_require"].items()}


def _applying(reqs: list[Any], env: dict[str, str]) -> dict[str, Any]:
    return {r.name: r for r in reqs if r.marker is None or r.marker.evaluate(env)}


@pytest.mark.parametrize("extra, cuda, inside, outside", [
    ("trt", 12, ["12.6.0", "12.9.10"], ["12.5.0", "13.0.0"]),
    ("trt-cuda13", 13, ["13.0.0", "13.4.4"], ["12.9.10", "14.0.0"]),
    ("trt-cuda11", 11, ["11.8.7"], ["11.7.0", "12.0.0"]),
])
def test_trt_extras(extras: dict[str, list[Any]], extra: str, cuda: int, inside: list[str],
                    outside: list[str]) -> None:
    on_jetson, on_desktop = _applying(extras[extra], JETSON), _applying(extras[extra], DESKTOP)
    assert not [n for n in on_jetson if n.startswith("tensorrt")], on_jetson     # JetPack's TensorRT, not a wheel
    assert [n for n in on_desktop if n.startswith("tensorrt")] == [f"tensorrt-cu{cuda}"]
    for where in (on_jetson, on_desktop):
        spec = where["cuda-python"].specifier
        assert all(spec.contains(v) for v in inside) and not any(spec.contains(v) for v in outside), spec


def test_no_extra_takes_the_bare_tensorrt_wheel(extras: dict[str, list[Any]]) -> None:
    """The `tensorrt` metapackage follows the newest CUDA (13: drivers >= 580), whatever cuda-python is."""
    assert not [(name, str(r)) for name, reqs in extras.items() for r in reqs if r.name == "tensorrt"]
