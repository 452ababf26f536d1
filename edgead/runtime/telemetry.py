"""Counters, gauges and latency histograms for the run loop, exposed through prometheus_client.

The values live here (one lock, microseconds per update, so the inspection threads count freely;
histograms also keep the latest raw samples, so the exit summary reports exact p50/p99 instead of
bucket estimates). prometheus_client writes the exposition (/metrics) from them through a custom
collector, with its process_* and python_* metrics beside ours. A metric declares its label names
up front and may preset label values at 0 (decisions, reasons), so `rate()` works before the first
reject.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Sequence, Tuple

import numpy as np
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric as _Family

Labels = Tuple[Tuple[str, str], ...]   # typing.Tuple: aliases are evaluated at import, on Python 3.8 too

# Seconds, Prometheus convention; dense where deadlines live (1 ms .. 1 s).
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
# Anomaly scores in units of the threshold: dense around it, where a drift shows first.
SCORE_BUCKETS_X_THRESHOLD = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
RESERVOIR = 65536          # raw samples kept per histogram series for exact percentiles
FPS_WINDOW_S = 5.0         # the camera's frame rate is measured over this many seconds

# Known label values, present at 0 from the start (a reason not listed appears when it first happens).
DECISIONS = ("pass", "reject", "safe_reject")
SAFE_REASONS = ("deadline", "queue_full", "frame_lost", "engine_error", "decide_error", "preprocess_error")
SKIP_REASONS = ("not_nth", "busy")
RECORD_KINDS = ("event", "image", "run_json")


def _key(labels: dict[str, str]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, lock: threading.Lock) -> None:
        self.name, self.help, self._lock = name, help, lock

    def family(self) -> _Family:
        """This metric as prometheus_client's metric family (the collector's unit)."""
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, lock: threading.Lock) -> None:
        super().__init__(name, help, lock)
        self._values: dict[Labels, float] = {}
        self._labelled = False

    def preset(self, label: str, values: Sequence[str]) -> "Counter":
        """Show these label values at 0 before they first happen (none: a labelled counter with no
        unlabelled 0 sample before its first value)."""
        with self._lock:
            self._labelled = True
            for v in values:
                self._values.setdefault(_key({label: v}), 0.0)
        return self

    def inc(self, n: float = 1.0, **labels: str) -> None:
        k = _key(labels)
        with self._lock:
            self._values[k] = self._values.get(k, 0.0) + n

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(_key(labels), 0.0)

    def by_label(self, label: str) -> dict[str, float]:
        """{label value: count} of the values that happened, e.g. safe actions by reason."""
        with self._lock:
            out: dict[str, float] = {}
            for k, v in self._values.items():
                if v:
                    name = dict(k).get(label, "")
                    out[name] = out.get(name, 0.0) + v
            return out

    def total(self) -> float:
        with self._lock:
            return sum(self._values.values())

    def family(self) -> _Family:
        base = self.name[:-len("_total")] if self.name.endswith("_total") else self.name
        fam = _Family(base, self.help, "counter")
        with self._lock:
            items = sorted(self._values.items()) or ([] if self._labelled else [((), 0.0)])
        for k, v in items:
            fam.add_sample(base + "_total", dict(k), v)
        return fam


class Gauge(_Metric):
    """A value set by the loop, or read through a callback at scrape time (queue depths)."""

    kind = "gauge"

    def __init__(self, name: str, help: str, lock: threading.Lock) -> None:
        super().__init__(name, help, lock)
        self._values: dict[Labels, float] = {}
        self._funcs: dict[Labels, Callable[[], float]] = {}
        self._many: Callable[[], Dict[str, float]] | None = None
        self._many_label = ""

    def set(self, v: float, **labels: str) -> None:
        with self._lock:
            self._values[_key(labels)] = float(v)

    def set_function(self, fn: Callable[[], float], **labels: str) -> None:
        with self._lock:
            self._funcs[_key(labels)] = fn

    def set_labelled_function(self, label: str, fn: Callable[[], Dict[str, float]]) -> None:
        """One callback for a whole label set read at scrape time: {label value: value} (e.g. per output)."""
        with self._lock:
            self._many, self._many_label = fn, label

    def value(self, **labels: str) -> float:
        k = _key(labels)
        with self._lock:
            fn = self._funcs.get(k)
            if fn is None:
                return self._values.get(k, 0.0)
        return float(fn())

    def _read(self) -> dict[Labels, float]:
        with self._lock:
            values, funcs, many, label = dict(self._values), dict(self._funcs), self._many, self._many_label
        for k, fn in funcs.items():
            try:
                values[k] = float(fn())
            except Exception:  # a gauge callback must never break a scrape
                values[k] = float("nan")
        if many is not None:
            try:
                values.update({_key({label: name}): float(v) for name, v in many().items()})
            except Exception:
                pass           # no samples this scrape rather than no /metrics at all
        return values

    def family(self) -> _Family:
        fam = _Family(self.name, self.help, "gauge")
        values = self._read()
        if not values and self._many is None:
            values = {(): 0.0}
        for k, v in sorted(values.items()):
            fam.add_sample(self.name, dict(k), v)
        return fam


class _Series:
    def __init__(self, n_buckets: int) -> None:
        self.counts = [0] * n_buckets
        self.count = 0
        self.sum = 0.0
        self.samples = np.zeros(RESERVOIR, dtype=np.float64)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, lock: threading.Lock, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help, lock)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[Labels, _Series] = {}

    def set_buckets(self, buckets: Sequence[float]) -> None:
        """New bucket bounds (before the first observation: the score buckets follow the threshold)."""
        with self._lock:
            if any(s.count for s in self._series.values()):
                raise ValueError(f"{self.name}: buckets cannot change after observations")
            self.buckets = tuple(sorted(float(b) for b in buckets))
            self._series = {k: _Series(len(self.buckets)) for k in self._series}

    def preset(self, **labels: str) -> "Histogram":
        """Show this series (zero counts) before its first observation."""
        with self._lock:
            self._series.setdefault(_key(labels), _Series(len(self.buckets)))
        return self

    def observe(self, v: float, **labels: str) -> None:
        k = _key(labels)
        with self._lock:
            s = self._series.get(k)
            if s is None:
                s = self._series[k] = _Series(len(self.buckets))
            for i, b in enumerate(self.buckets):
                if v <= b:
                    s.counts[i] += 1
                    break
            s.samples[s.count % RESERVOIR] = v
            s.count += 1
            s.sum += v

    def count(self, **labels: str) -> int:
        with self._lock:
            s = self._series.get(_key(labels))
            return s.count if s else 0

    def percentiles(self, qs: Iterable[float], **labels: str) -> list[float | None]:
        """Exact percentiles (0..100) of the latest RESERVOIR samples; None when there are none."""
        with self._lock:
            s = self._series.get(_key(labels))
            data = None if s is None or s.count == 0 else s.samples[: min(s.count, RESERVOIR)].copy()
        qs = list(qs)
        if data is None:
            return [None] * len(qs)
        return [float(v) for v in np.percentile(data, qs)]

    def family(self) -> _Family:
        fam = _Family(self.name, self.help, "histogram")
        with self._lock:
            items = sorted((k, list(s.counts), s.count, s.sum) for k, s in self._series.items())
            buckets = self.buckets
        for k, counts, count, total in items:
            labels, cum = dict(k), 0
            for b, c in zip(buckets, counts):
                cum += c
                fam.add_sample(self.name + "_bucket", {**labels, "le": _bound(b)}, cum)
            fam.add_sample(self.name + "_bucket", {**labels, "le": "+Inf"}, count)
            fam.add_sample(self.name + "_count", labels, count)
            fam.add_sample(self.name + "_sum", labels, total)
        return fam


def _bound(b: float) -> str:
    """A bucket bound as Prometheus writes it (0.001, 1.0, +Inf)."""
    return "+Inf" if math.isinf(b) else repr(float(b))


class Info(_Metric):
    """edgead_info{version, engine, ...} 1: what is running, for dashboards and alert labels."""

    def __init__(self, name: str, help: str, lock: threading.Lock) -> None:
        super().__init__(name, help, lock)
        self._labels: dict[str, str] = {}

    def set(self, **labels: Any) -> None:
        with self._lock:
            self._labels = {k: "" if v is None else str(v) for k, v in labels.items()}

    def family(self) -> _Family:
        base = self.name[:-len("_info")] if self.name.endswith("_info") else self.name
        fam = _Family(base, self.help, "info")
        with self._lock:
            fam.add_sample(base + "_info", dict(self._labels), 1.0)
        return fam


class FrameRate:
    """Frames per second over the last FPS_WINDOW_S, and how long ago the last frame came."""

    def __init__(self) -> None:
        self._times: collections.deque[float] = collections.deque(maxlen=4096)
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        with self._lock:
            self._times.append(time.monotonic() if now is None else now)

    def fps(self, now: float | None = None) -> float | None:
        """None before two frames; 0.0 when none came within the window."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [t for t in self._times if now - t <= FPS_WINDOW_S]
            if len(self._times) < 2:
                return None
        if len(recent) < 2:
            return 0.0
        return round((len(recent) - 1) / max(recent[-1] - recent[0], 1e-6), 2)

    def age_s(self, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        with self._lock:
            return round(now - self._times[-1], 3) if self._times else None


class Registry:
    """All metrics of one run, and the prometheus_client collector that exposes them with process_* beside."""

    def __init__(self, process_metrics: bool = True) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}
        self._exposition = CollectorRegistry(auto_describe=False)
        self._exposition.register(self)     # type: ignore[arg-type]  # a Collector by duck typing (collect())
        if process_metrics:
            ProcessCollector(registry=self._exposition)
            PlatformCollector(registry=self._exposition)

    def _add(self, metric: _Metric) -> _Metric:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str) -> Counter:
        return self._add(Counter(name, help, self._lock))  # type: ignore[return-value]

    def gauge(self, name: str, help: str) -> Gauge:
        return self._add(Gauge(name, help, self._lock))  # type: ignore[return-value]

    def histogram(self, name: str, help: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
        return self._add(Histogram(name, help, self._lock, buckets))  # type: ignore[return-value]

    def info(self, name: str, help: str) -> Info:
        return self._add(Info(name, help, self._lock))  # type: ignore[return-value]

    def collect(self) -> Iterator[_Family]:
        for m in list(self._metrics.values()):
            yield m.family()

    def render(self) -> str:
        return generate_latest(self._exposition).decode("utf-8")


class RunMetrics:
    """The named metrics of `edgead run` (one place, so the loop, /metrics and the summary agree)."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.info = r.info("edgead_info", "What runs: edgead version, engine, backend, precision and threshold.")
        self.frames = r.counter("edgead_frames_total", "Frames received from the camera.")
        self.frames_lost = r.counter("edgead_frames_lost_total", "Frames missing from the camera's sequence numbers.")
        self.frames_skipped = r.counter("edgead_frames_skipped_total",
                                        "Free-running mode: frames not inspected, by reason (not_nth, busy).")
        self.frames_skipped.preset("reason", SKIP_REASONS)
        self.parts = r.counter("edgead_parts_total", "Parts decided, by decision (pass, reject, safe_reject).")
        self.parts.preset("decision", DECISIONS)
        self.safe_actions = r.counter("edgead_safe_actions_total",
                                      "Parts given the safe action (not inspected in time), by reason.")
        self.safe_actions.preset("reason", SAFE_REASONS)
        self.late_decisions = r.counter("edgead_late_decisions_total",
                                        "Decisions that arrived after their part's deadline had fired the safe action.")
        self.alarms = r.counter("edgead_alarms_total", "Alarms raised, by reason.").preset("reason", ())
        self.alarms_active = r.gauge("edgead_alarms_active",
                                     "Alarms active now (not yet cleared by their condition or acknowledged).")
        self.camera_errors = r.counter("edgead_camera_errors_total", "Exceptions raised by the camera.")
        self.camera_reconnects = r.counter("edgead_camera_reconnects_total", "Camera reconnections.")
        self.camera_stalls = r.counter("edgead_camera_stalls_total", "Periods without frames longer than stall_alarm_s.")
        self.camera_up = r.gauge("edgead_camera_up", "1 while the camera delivers frames (not lost, not stalled).")
        self.camera_fps = r.gauge("edgead_camera_fps", f"Frames per second from the camera, over the last "
                                                        f"{FPS_WINDOW_S:g} s.")
        self.sink_errors = r.counter("edgead_sink_errors_total", "Reject-output failures (an exception, an output gone, a missed pulse, a dropped event).")
        self.output_up = r.gauge("edgead_output_up", "Per output: 1 while it reaches its peer (PLC, broker, ...).")
        self.output_undelivered = r.gauge("edgead_output_undelivered",
                                          "Per output: events or rejects not delivered (not kicked, not sent, lost).")
        self.records_dropped = r.counter("edgead_records_dropped_total",
                                         "Records not written because the disk was too slow or short of space, "
                                         "by kind.").preset("kind", ())
        self.record_write_errors = r.counter("edgead_record_write_errors_total",
                                             "Records the disk refused (full, read-only, failing), by kind "
                                             "(event, image, run_json); each one is an alarm.")
        self.record_write_errors.preset("kind", RECORD_KINDS)
        self.records_deleted = r.counter("edgead_records_deleted_total", "Files deleted to keep the disk quota.")
        self.latency = r.histogram("edgead_latency_seconds",
                                   "Per-part latency by stage: queue, preprocess, infer, decide, total (capture->decision).")
        self.latency.preset(stage="total")
        self.score = r.histogram("edgead_score", "Anomaly score of each inspected part (buckets around the threshold).",
                                 buckets=SCORE_BUCKETS_X_THRESHOLD)
        self.threshold = r.gauge("edgead_threshold", "The calibrated reject threshold (score units).")
        self.batch = r.histogram("edgead_batch_size", "Frames per inference batch.",
                                 buckets=(1, 2, 4, 8, 16, 32, 64))
        self.queue_depth = r.gauge("edgead_queue_depth", "Items waiting in each queue.")
        self.outbox_pending = r.gauge("edgead_outbox_pending",
                                      "Events waiting in an output's durable outbox for the peer's acknowledgement.")
        self.up = r.gauge("edgead_up", "1 while the loop inspects parts.")
        self.frame_rate = FrameRate()
        self.camera_fps.set_function(lambda: self.frame_rate.fps() or 0.0)

    def describe_run(self, *, version: str, engine: str, backend: str, precision: str,
                     threshold: float | None) -> None:
        """edgead_info, the threshold gauge and score buckets scaled to the threshold (before the first part)."""
        self.info.set(version=version, engine=engine, backend=backend, precision=precision,
                      threshold="" if threshold is None else f"{threshold:.6g}")
        if threshold is not None and math.isfinite(threshold) and threshold > 0:
            self.threshold.set(threshold)
            self.score.set_buckets([threshold * f for f in SCORE_BUCKETS_X_THRESHOLD])
        self.score.preset()

    def render(self) -> str:
        return self.registry.render()
