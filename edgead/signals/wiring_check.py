"""`edgead signals test --config run.yaml`: one test pulse on every output, so an electrician can
check the wiring before the line runs. Prints OK or FAILED (with the reason) per output; the exit
code is 0 only when every output is OK. The test events are sent directly, never through an
output's durable outbox: the sinks get a throw-away outbox folder, so a check neither replays nor
touches the events a run left for the next start (nor collides with a run that holds them).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from edgead.errors import EdgeADError
from edgead.signals.config import SinkConfig, load_outputs
from edgead.signals.factory import build_sink, check_health


def signals_test(config_path: str | Path, out: Callable[[str], None] = print, connect_timeout_s: float = 3.0,
                 results: Optional[List[Dict[str, Any]]] = None) -> int:
    """Fire one test pulse on each output of the run config; 0 if all OK, 1 otherwise.

    A bad config (unknown key, bad value) raises EdgeADError before anything is fired. `results`, when
    given, gets one {"output", "ok", "detail"} per output (what `--json` prints).
    """
    results = [] if results is None else results
    outputs = load_outputs(config_path)
    if not outputs.sinks:
        out(f"FAILED  no outputs configured in {config_path} (add an `outputs:` list)")
        return 1
    width = max(len(c.name) for c in outputs.sinks)
    with tempfile.TemporaryDirectory(prefix="edgead-signals-test-") as outbox_dir:
        failed = sum(_test_one(cfg, i, f"{cfg.name:<{width}}", outbox_dir, out, connect_timeout_s, results)
                     for i, cfg in enumerate(outputs.sinks))
    n = len(outputs.sinks)
    out(f"{n} output{'s' if n != 1 else ''}: {n - failed} OK, {failed} FAILED")
    return 0 if failed == 0 else 1


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
