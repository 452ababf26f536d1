"""`edgead outbox status|flush|drop`: what the outputs' durable outboxes hold, for the electrician.

After a run that ended with undelivered events (exit code 4), the events wait in
`<outbox_dir>/<output>/` and go out first at the next start. These functions look at them without
starting a run: how many wait and since when (`status`), deliver them now (`flush`: the outputs of
the run config are opened and given time to send), or throw them away (`drop`, after the CLI asked
for confirmation). `flush` and `drop` take the folder's lock, so they refuse while a run holds it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from edgead.errors import EdgeADError
from edgead.signals.config import SinkConfig, parse_outputs, parse_sink
from edgead.signals.factory import OUTBOX_TYPES, build_sink
from edgead.signals.outbox import (LOCK_FILE, META_FILE, load_acks, lock_folder, output_folder, parse_record,
                                   resolve_outbox_dir, scan_segment, segment_paths)
from edgead.signals.outbox_sink import OutboxSink

try:
    import fcntl
except ImportError:
    fcntl = None  # type: ignore[assignment]


def _meta(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / META_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _in_use(folder: Path) -> bool:
    """Does an edgead process hold this outbox now? (Tries the lock and lets go at once.)"""
    if fcntl is None:
        return False
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _scan_folder(folder: Path) -> dict[str, Any]:
    """Read only: pending records, bytes, the oldest pending event, lines that are not whole records."""
    acked_to, listed = load_acks(folder)
    pending, size, torn, last = 0, 0, 0, 0
    oldest: dict[str, Any] = {"oldest_id": None, "oldest_time": None}
    for first, path in segment_paths(folder):
        scan = scan_segment(path, first, last)
        size += scan.size
        torn += scan.bad_lines
        live = [(n, a, b) for n, a, b in scan.entries if n > acked_to and n not in listed]
        if scan.entries:
            last = scan.entries[-1][0]
        if live and oldest["oldest_id"] is None:
            with open(path, "rb") as f:
                f.seek(live[0][1])
                rec = parse_record(f.read(live[0][2] - live[0][1]).rstrip(b"\n"))
            if rec is not None:
                oldest = {"oldest_id": rec.event_id, "oldest_time": rec.t}
        pending += len(live)
    return {"pending": pending, "bytes": size, **oldest, "torn_lines": torn}


def folder_status(folder: Path) -> dict[str, Any]:
    """One outbox folder: whose it is, what waits in it, and whether a run holds it now."""
    meta = _meta(folder)
    return {"output": meta.get("output", folder.name), "type": meta.get("type", ""), "target": meta.get("target", ""),
            "folder": str(folder), **_scan_folder(folder), "in_use": _in_use(folder)}


def _folders(outbox_dir: str | Path | None) -> list[Path]:
    root = resolve_outbox_dir(outbox_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and ((p / META_FILE).exists() or segment_paths(p)))


def status(outbox_dir: str | Path | None) -> list[dict[str, Any]]:
    """Per output folder: {"output", "type", "target", "folder", "pending", "bytes", "oldest_id",
    "oldest_time", "torn_lines", "in_use"}; an empty list when there is no outbox yet."""
    return [folder_status(f) for f in _folders(outbox_dir)]


def _configs(outputs: Sequence[SinkConfig | dict[str, Any]] | Any) -> list[SinkConfig]:
    if isinstance(outputs, dict):                    # a whole run config mapping
        return parse_outputs(outputs).sinks
    raw = list(outputs or [])
    if all(isinstance(c, dict) for c in raw):
        return parse_outputs({"outputs": raw}).sinks
    return [c if isinstance(c, SinkConfig) else parse_sink(c, i) for i, c in enumerate(raw)]


def flush(run_config_outputs: Sequence[SinkConfig | dict[str, Any]] | Any, outbox_dir: str | Path | None,
          timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
    """Open the outputs that have events waiting and let them deliver for up to timeout_s (together).

    Returns per output {"delivered": n, "left": n, "where": folder} (and "error" for an output that
    could not be opened, or a folder that no output of the run config owns)."""
    configs = [(i, c) for i, c in enumerate(_configs(run_config_outputs)) if c.type in OUTBOX_TYPES]
    report: dict[str, dict[str, Any]] = {}
    sinks: list[OutboxSink] = []
    owned: set[str] = set()
    try:
        for i, cfg in configs:
            folder = output_folder(outbox_dir, cfg.name)
            owned.add(str(folder))
            if not folder.is_dir() or _scan_folder(folder)["pending"] == 0:
                continue
            try:
                sink = build_sink(cfg, i, outbox_dir=outbox_dir)
            except EdgeADError as err:
                report[cfg.name] = {"delivered": 0, "left": _scan_folder(folder)["pending"], "where": str(folder),
                                    "error": err.message}
                continue
            assert isinstance(sink, OutboxSink)
            sinks.append(sink)
        deadline = time.monotonic() + timeout_s
        for sink in sinks:
            sink.wait_delivered(max(0.0, deadline - time.monotonic()))
    finally:
        for sink in sinks:
            sink.close(drain_s=0.0)
            report[sink.name] = {"delivered": int(sink.stats["delivered"]), "left": sink.outbox.pending(),
                                 "where": str(sink.outbox.folder)}
    for st in status(outbox_dir):
        if st["folder"] not in owned and st["pending"]:
            report[st["output"]] = {"delivered": 0, "left": st["pending"], "where": st["folder"],
                                    "error": "no mqtt or webhook output of this name in the run config"}
    return report


def drop(outbox_dir: str | Path | None, output: str | None = None) -> int:
    """Delete the events waiting for one output (by name), or for all with None; returns how many.

    Refuses (EdgeADError) while a run holds the outbox, or for an output that has none."""
    folders = _folders(outbox_dir)
    if output is not None:
        named = [f for f in folders if _meta(f).get("output") == output or f.name == output]
        if not named:
            have = ", ".join(_meta(f).get("output", f.name) for f in folders) or "none"
            raise EdgeADError(f"no outbox for an output named '{output}' in {resolve_outbox_dir(outbox_dir)}",
                              f"outputs with an outbox: {have} (`edgead outbox status` lists them)")
        folders = named
    dropped = 0
    for folder in folders:
        fd = lock_folder(folder, _meta(folder).get("output", folder.name))
        try:
            dropped += _scan_folder(folder)["pending"]
            shutil.rmtree(folder)
        finally:
            os.close(fd)
    return dropped

