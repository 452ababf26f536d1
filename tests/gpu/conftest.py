"""GPU tests: `python -m pytest -q tests/gpu` on a machine with TensorRT and an NVIDIA GPU.

Everywhere else each test here is marked skipped at collection, so no fixture runs (no model is
trained, no engine built) and the run reports them as skipped. They are all marked `hardware`, so
that skip stands under EDGEAD_REQUIRE_PEERS=1 too. A test module that needs no TensorRT says so
with NEEDS_TENSORRT = False (the device check's CPU dry run) and runs everywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _why_not() -> str | None:
    """Why TensorRT cannot run here: not installed, or CUDA not working (the backend's own probe)."""
    from edgead.backends import tensorrt as backend

    if backend.trt_version() is None:
        return 'TensorRT is not installed (pip install "edgead[trt]")'
    return backend.why_unusable()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in Path(str(item.path)).resolve().parents
            and getattr(getattr(item, "module", None), "NEEDS_TENSORRT", True)]
    for item in mine:
        item.add_marker(pytest.mark.hardware)      # CI has no GPU: these may skip even with strict peers
    reason = _why_not() if mine else None
    if reason:
        for item in mine:
            item.add_marker(pytest.mark.skip(reason=reason))
