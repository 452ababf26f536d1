"""The runtime stage: `edgead run` and what it needs on the line.

One job per module: run.py (the verb: start-up checks and wiring), config.py (the run YAML),
loop.py (threads, queues, deadlines, fail-safe), recorder.py (event log, images, disk quota),
telemetry.py (Prometheus counters and histograms), http.py (optional live view).
Edge path: no torch anywhere in this package.
"""

from edgead.runtime.config import RunConfig, load_run_config
from edgead.runtime.loop import Loop, LoopOptions
from edgead.runtime.telemetry import RunMetrics

__all__ = ["Loop", "LoopOptions", "RunConfig", "RunMetrics", "load_run_config"]
