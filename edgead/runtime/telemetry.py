"""Counters, gauges and latency histograms for the run loop, rendered in Prometheus text format.

Written here (a few dozen lines) rather than pulling in prometheus_client: the edge box installs
numpy, OpenCV, PyYAML and a backend, nothing else. Every update takes one lock for microseconds,
so the inspection threads can count freely. Histograms also keep the latest raw samples, so the
exit summary reports exact p50/p99 instead of bucket estimates.
"""

from __future__ import annotations

import math
import threading
from typing import Callable, Iterable, Tuple

import numpy as np

Labels = Tuple[Tuple[str, str], ...]   # typing.Tuple: aliases are evaluated at import, on Python 3.8 too

# Seconds, Prometheus convention; dense where deadlines live (1 ms .. 1 s).
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
RESERVOIR = 65536          # raw samples kept per histogram series for exact percentiles


def _key(labels: dict[str, str]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _fmt_labels(labels: Labels, extra: Iterable[tuple[str, str]] = ()) -> str:
    items = list(labels) + list(extra)
    if not items:
        return ""
    esc = (str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for _, v in items)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(items, esc)) + "}"


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, lock: threading.Lock) -> None:
        self.name, self.help, self._lock = name, help, lock

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, lock: threading.Lock) -> None:
        super().__init__(name, help, lock)
        self._values: dict[Labels, float] = {}

    def inc(self, n: float = 1.0, **labels: str) -> None:
        k = _key(labels)
        with self._lock:
            self._values[k] = self._values.get(k, 0.0) + n

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(_key(labels), 0.0)

    def by_label(self, label: str) -> dict[str, float]:
        """{label value: count}, e.g. safe actions by reason."""
        with self._lock:
            out: dict[str, float] = {}
            for k, v in self._values.items():
                name = dict(k).get(label, "")
                out[name] = out.get(name, 0.0) + v
            return out

    def total(self) -> float:
        with self._lock:
            return sum(self._values.values())

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items()) or [((), 0.0)]
        return super().render() + [f"{self.name}{_fmt_labels(k)} {_num(v)}" for k, v in items]


class Gauge(_Metric):
    """A value set by the loop, or read through a callback at scrape time (queue depths)."""

    kind = "gauge"

    def __init__(self, name: str, help: str, lock: threading.Lock) -> None:
        super().__init__(name, help, lock)
        self._values: dict[Labels, float] = {}
        self._funcs: dict[Labels, Callable[[], float]] = {}

    def set(self, v: float, **labels: str) -> None:
        with self._lock:
            self._values[_key(labels)] = float(v)

    def set_function(self, fn: Callable[[], float], **labels: str) -> None:
        with self._lock:
            self._funcs[_key(labels)] = fn

    def value(self, **labels: str) -> float:
        k = _key(labels)
        with self._lock:
            fn = self._funcs.get(k)
            if fn is None:
                return self._values.get(k, 0.0)
        return float(fn())

    def render(self) -> list[str]:
        with self._lock:
            values = dict(self._values)
            funcs = dict(self._funcs)
        for k, fn in funcs.items():
            try:
                values[k] = float(fn())
            except Exception:  # a gauge callback must never break a scrape
                values[k] = float("nan")
        items = sorted(values.items()) or [((), 0.0)]
        return super().render() + [f"{self.name}{_fmt_labels(k)} {_num(v) if v == v else 'NaN'}" for k, v in items]


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

    def render(self) -> list[str]:
        lines = super().render()
        with self._lock:
            items = sorted((k, list(s.counts), s.count, s.sum) for k, s in self._series.items())
        for k, counts, count, total in items:
            cum = 0
            for b, c in zip(self.buckets, counts):
                cum += c
                lines.append(f"{self.name}_bucket{_fmt_labels(k, [('le', _num(b))])} {cum}")
            lines.append(f"{self.name}_bucket{_fmt_labels(k, [('le', '+Inf')])} {count}")
            lines.append(f"{self.name}_sum{_fmt_labels(k)} {_num(total)}")
            lines.append(f"{self.name}_count{_fmt_labels(k)} {count}")
        return lines


class Registry:
    """All metrics of one run; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}

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

    def render(self) -> str:
        lines: list[str] = []
        for m in self._metrics.values():
            lines += m.render()
        return "\n".join(lines) + "\n"


class RunMetrics:
    """The named metrics of `edgead run` (one place, so the loop, /metrics and the summary agree)."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.frames = r.counter("edgead_frames_total", "Frames received from the camera.")
        self.frames_lost = r.counter("edgead_frames_lost_total", "Frames missing from the camera's sequence numbers.")
        self.frames_skipped = r.counter("edgead_frames_skipped_total",
                                        "Free-running mode: frames not inspected, by reason (not_nth, busy).")
        self.parts = r.counter("edgead_parts_total", "Parts decided, by decision (pass, reject, safe_reject).")
        self.safe_actions = r.counter("edgead_safe_actions_total",
                                      "Parts given the safe action (not inspected in time), by reason.")
        self.late_decisions = r.counter("edgead_late_decisions_total",
                                        "Decisions that arrived after their part's deadline had fired the safe action.")
        self.alarms = r.counter("edgead_alarms_total", "Alarms raised, by reason.")
        self.alarms_active = r.gauge("edgead_alarms_active",
                                     "Alarms active now (not yet cleared by their condition or acknowledged).")
        self.camera_errors = r.counter("edgead_camera_errors_total", "Exceptions raised by the camera.")
        self.camera_reconnects = r.counter("edgead_camera_reconnects_total", "Camera reconnections.")
        self.camera_stalls = r.counter("edgead_camera_stalls_total", "Periods without frames longer than stall_alarm_s.")
        self.sink_errors = r.counter("edgead_sink_errors_total", "Reject-output failures (an exception, an output gone, a missed pulse, a dropped event).")
        self.records_dropped = r.counter("edgead_records_dropped_total",
                                         "Records not written because the disk was too slow or short of space, "
                                         "by kind.")
        self.record_write_errors = r.counter("edgead_record_write_errors_total",
                                             "Records the disk refused (full, read-only, failing), by kind "
                                             "(event, image, run_json); each one is an alarm.")
        self.records_deleted = r.counter("edgead_records_deleted_total", "Files deleted to keep the disk quota.")
        self.latency = r.histogram("edgead_latency_seconds",
                                   "Per-part latency by stage: queue, preprocess, infer, decide, total (capture->decision).")
        self.batch = r.histogram("edgead_batch_size", "Frames per inference batch.",
                                 buckets=(1, 2, 4, 8, 16, 32, 64))
        self.queue_depth = r.gauge("edgead_queue_depth", "Items waiting in each queue.")
        self.outbox_pending = r.gauge("edgead_outbox_pending",
                                      "Events waiting in an output's durable outbox for the peer's acknowledgement.")
        self.up = r.gauge("edgead_up", "1 while the loop inspects parts.")

    def render(self) -> str:
        return self.registry.render()
