"""`edgead signals test --config run.yaml`: one test pulse on every output, so an electrician can
check the wiring before the line runs. Prints OK or FAILED (with the reason) per output; the exit
code is 0 only when every output is OK. The test events are sent directly, never through an
output's durable outbox: the sinks get a throw-away outbox folder, so a check neither replays nor
touches the events a run left for the next start (nor collides with a run that holds them).

A station's config (`cameras:`, edgead.runtime.station_config) fires every camera's outputs, each
camera's own `outputs:` or the top-level ones it inherits, named CAMERA/OUTPUT.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from edgead.errors import EdgeADError
from edgead.schema import read_yaml
from edgead.signals.config import OutputsConfig, SinkConfig, parse_outputs
from edgead.signals.factory import build_sink, check_health


def signals_test(config_path: str | Path, out: Callable[[str], None] = print, connect_timeout_s: float = 3.0,
                 results: Optional[List[Dict[str, Any]]] = None) -> int:
    """Fire one test pulse on each output of the run config; 0 if all OK, 1 otherwise.

    A bad config (unknown key, bad value) raises EdgeADError before anything is fired. `results`, when
    given, gets one {"output", "ok", "detail"} per output (what `--json` prints).
    """
    results = [] if results is None else results
    groups = _output_groups(read_yaml(config_path, "run config", "give the path of the run YAML") or {})
    items = [(camera, cfg) for camera, outputs in groups for cfg in outputs.sinks]
    if not items:
        out(f"FAILED  no outputs configured in {config_path} (add an `outputs:` list)")
        return 1
    labels = [f"{camera}/{cfg.name}" if camera else cfg.name for camera, cfg in items]
    width = max(len(label) for label in labels)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="edgead-signals-test-") as outbox_dir:
        for i, ((camera, cfg), label) in enumerate(zip(items, labels)):
            folder = os.path.join(outbox_dir, camera) if camera else outbox_dir
            failed += _test_one(cfg, i, f"{label:<{width}}", folder, out, connect_timeout_s, results)
            if camera:
                results[-1]["camera"] = camera
    n = len(items)
    out(f"{n} output{'s' if n != 1 else ''}: {n - failed} OK, {failed} FAILED")
    return 0 if failed == 0 else 1


def _output_groups(data: Any) -> List[Tuple[str, OutputsConfig]]:
    """[("", outputs)] for a one-camera config; [(camera name, its outputs), ...] for a station's."""
    if not isinstance(data, dict) or "cameras" not in data:
        return [("", parse_outputs(data))]
    cameras = data.get("cameras")
    if not isinstance(cameras, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                                for c in cameras):
        raise EdgeADError("run config: 'cameras' must be a list of mappings, each with a name",
                          "each item starts with '- name: NAME' (and camera:, outputs:, ...)")
    groups = []
    for cam in cameras:
        own = {k: cam[k] if k in cam else data.get(k) for k in ("outputs", "on_sink_failure")}
        try:
            groups.append((cam["name"], parse_outputs({k: v for k, v in own.items() if v is not None})))
        except EdgeADError as e:
            raise EdgeADError(f"camera '{cam['name']}': {e.message}", e.hint) from e
    return groups


def _test_one(cfg: SinkConfig, i: int, label: str, outbox_dir: str, out: Callable[[str], None],
              connect_timeout_s: float, results: List[Dict[str, Any]]) -> int:
    """Fire one output's test and print its line; 1 when it failed, else 0."""
    try:
        sink = build_sink(cfg, i, outbox_dir=outbox_dir)
    except EdgeADError as err:
        results.append({"output": cfg.name, "ok": False, "detail": err.message, "hint": err.hint})
        out(f"FAILED  {label}  {err.message}" + (f" ({err.hint})" if err.hint else ""))
        return 1
    failed = 0
    try:
        check_health([sink], allow_degraded=True, timeout_s=connect_timeout_s, warn=lambda s: None)
        detail = sink.fire_test()
        results.append({"output": cfg.name, "ok": True, "detail": str(detail)})
        out(f"OK      {label}  {detail}")
    except Exception as err:
        failed = 1
        reason = err.message if isinstance(err, EdgeADError) else str(err) or type(err).__name__
        results.append({"output": cfg.name, "ok": False, "detail": f"{sink.target}: {reason}"})
        out(f"FAILED  {label}  {sink.target}: {reason}")
    finally:
        try:
            sink.close()
        except Exception as err:
            out(f"        {label}  (close failed: {err})")
    return failed
