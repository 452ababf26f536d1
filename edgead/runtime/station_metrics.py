"""/metrics of a station: every camera's run metrics with a `camera` label, and each shared engine's.

Each camera keeps its own RunMetrics (what its loop, its summary and its recorder count); this
collector merges their families at scrape time, adding `camera="NAME"` to every sample, so one
Prometheus job sees `edgead_parts_total{camera="left",decision="reject"}` beside the right camera's.
The engines add `edgead_engine_memory_bytes{engine, kind}` (what the start-up reported) and their
batch counts (frames per engine call shows how well the cameras' parts batch together).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric

from edgead.runtime.telemetry import RunMetrics


class StationMetrics:
    """The collector (prometheus_client calls `collect()`) and the exposition text (`render()`)."""

    def __init__(self, cameras: Dict[str, RunMetrics],
                 engines: Callable[[], List[Dict[str, Any]]] = lambda: []) -> None:
        self.cameras, self.engines = cameras, engines
        self._exposition = CollectorRegistry(auto_describe=False)
        self._exposition.register(self)     # type: ignore[arg-type]  # a Collector by duck typing (collect())
        ProcessCollector(registry=self._exposition)
        PlatformCollector(registry=self._exposition)

    def collect(self) -> Iterator[Metric]:
        merged: Dict[str, Metric] = {}
        for name, metrics in self.cameras.items():
            for fam in metrics.registry.collect():
                out = merged.get(fam.name)
                if out is None:
                    out = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type)
                for sample in fam.samples:
                    out.add_sample(sample.name, {"camera": name, **sample.labels}, sample.value)
        for fam in merged.values():
            yield fam
        for fam in self._engine_families():
            yield fam

    def _engine_families(self) -> List[Metric]:
        memory = Metric("edgead_engine_memory_bytes", "Per shared engine: the ONNX files' size and the process "
                        "memory it took while opening (measured at start).", "gauge")
        batches = Metric("edgead_engine_batches", "Per shared engine: inference calls (each one batch of every "
                         "camera's waiting parts).", "counter")
        frames = Metric("edgead_engine_frames", "Per shared engine: frames inferred.", "counter")
        for e in self.engines():
            label = {"engine": str(e["engine"])}
            memory.add_sample("edgead_engine_memory_bytes", {**label, "kind": "onnx_files"}, float(e["onnx_bytes"]))
            if e.get("rss_bytes") is not None:
                memory.add_sample("edgead_engine_memory_bytes", {**label, "kind": "rss_at_open"}, float(e["rss_bytes"]))
            batches.add_sample("edgead_engine_batches_total", label, float(e["batches"]))
            frames.add_sample("edgead_engine_frames_total", label, float(e["frames"]))
        return [memory, batches, frames]

    def render(self) -> str:
        return generate_latest(self._exposition).decode("utf-8")
