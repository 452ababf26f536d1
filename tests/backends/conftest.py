"""The backends' shared fixture: one engine folder built from the session's tiny model.

Tests that edit an engine folder work on a copy (`engine_copy`), never on this one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def engine(tiny_engine: Path) -> Path:
    return tiny_engine


@pytest.fixture()
def engine_copy(engine: Path, tmp_path: Path) -> Path:
    """A copy of the engine folder: its own manifest, the graphs linked (read, never written)."""
    copy = tmp_path / "engine"
    copy.mkdir()
    for f in engine.iterdir():
        if f.name == "manifest.json":
            (copy / f.name).write_bytes(f.read_bytes())
        else:
            os.symlink(f, copy / f.name)
    return copy
