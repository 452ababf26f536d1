"""Real small and read-only disks without root: a shell script run in a user + mount namespace
(`unshare -rm`) where chosen folders are fresh tmpfs mounts. Skips where this machine cannot do it
(no util-linux, or user namespaces switched off): a machine capability, so callers mark `hardware`."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Mapping

import pytest


def run_with_mounts(mounts: Mapping[Path, str], script: str, *, timeout: float,
                    env: Mapping[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`script` (sh) with each folder of `mounts` a tmpfs mounted with its options ("ro", "size=2m")."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare (util-linux) to mount a tmpfs without root")
    for folder in mounts:
        Path(folder).mkdir(parents=True, exist_ok=True)
    mount = " && ".join(f"mount -t tmpfs -o {opts} none {shlex.quote(str(f))}" for f, opts in mounts.items())
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", mount], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"user namespaces cannot mount here: {probe.stderr.strip()}")
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"{mount} && {script}"], capture_output=True, text=True,
                          timeout=timeout, env=None if env is None else dict(env), cwd=cwd)
