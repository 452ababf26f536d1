"""GPU tests: `python -m pytest -q tests/gpu` on a machine with TensorRT and an NVIDIA GPU.

Everywhere else each test here is marked skipped at collection, so no fixture runs (no model is
trained, no engine built) and the run reports them as skipped. They are all marked `hardware`, so
that skip stands under EDGEAD_REQUIRE_PEERS=1 too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _why_not() -> str | None:
    from edgead.backends import tensorrt as backend
    from edgead.errors import EdgeADError

    if backend.trt_version() is None:
        return 'TensorRT is not installed (pip install "edgead[trt]")'
    try:
        backend.gpu_identity()
    except EdgeADError as err:
        return f"no usable CUDA device: {err.message}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    for item in mine:
        item.add_marker(pytest.mark.hardware)      # CI has no GPU: these may skip even with strict peers
    reason = _why_not() if mine else None
    if reason:
        for item in mine:
            item.add_marker(pytest.mark.skip(reason=reason))
