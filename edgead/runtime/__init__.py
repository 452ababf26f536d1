"""The run loop of `edgead run` and what it needs: config, threads and queues, recorder, metrics, HTTP view.

One job per module: config.py (the run YAML), loop.py (threads, queues, deadlines, fail-safe),
recorder.py (event log, images, disk quota), metrics.py (Prometheus counters and histograms),
http.py (optional live view). Edge path: no torch anywhere in this package.
"""

from edgead.runtime.config import RunConfig, load_run_config
from edgead.runtime.loop import Loop, LoopOptions
from edgead.runtime.telemetry import RunMetrics

__all__ = ["Loop", "LoopOptions", "RunConfig", "RunMetrics", "load_run_config"]
