"""/metrics as a plant's monitoring reads it: prometheus_client's exposition of the run's metrics,
checked by Prometheus' own `promtool check metrics` (Debian `prometheus`, installed by .ci/run)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgead.runtime.telemetry import DECISIONS, RunMetrics

# The names dashboards and alerts were written against: they must not change.
KEPT = ("edgead_frames_total", "edgead_frames_lost_total", "edgead_frames_skipped_total", "edgead_parts_total",
        "edgead_safe_actions_total", "edgead_late_decisions_total", "edgead_alarms_total", "edgead_alarms_active",
        "edgead_camera_errors_total", "edgead_camera_reconnects_total", "edgead_camera_stalls_total",
        "edgead_sink_errors_total", "edgead_records_dropped_total", "edgead_record_write_errors_total",
        "edgead_records_deleted_total", "edgead_latency_seconds", "edgead_batch_size", "edgead_queue_depth",
        "edgead_outbox_pending", "edgead_up")
NEW = ("edgead_info", "edgead_score", "edgead_threshold", "edgead_output_up", "edgead_output_undelivered",
       "edgead_camera_up", "edgead_camera_fps")


def _busy_metrics() -> RunMetrics:
    m = RunMetrics()
    m.describe_run(version="0.1.0", engine='line "3"\nA', backend="onnxruntime", precision="int8", threshold=0.42)
    outputs = {"plc": 1.0, "mes mqtt": 0.0}
    m.output_up.set_labelled_function("output", lambda: outputs)
    m.output_undelivered.set_labelled_function("output", lambda: {"plc": 0.0, "mes mqtt": 7.0})
    m.outbox_pending.set_labelled_function("output", lambda: {"mes mqtt": 7.0})
    m.queue_depth.set_function(lambda: 2.0, queue="infer")
    for score, decision in ((0.1, "pass"), (0.41, "pass"), (0.9, "reject")):
        m.parts.inc(decision=decision)
        m.score.observe(score)
        m.latency.observe(0.004, stage="total")
    m.safe_actions.inc(reason="deadline")
    m.alarms.inc(reason="output_failure:mes mqtt")
    m.frames.inc(4)
    return m


def _samples(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_every_metric_name_is_kept_and_the_new_ones_are_there():
    names = {f.name for f in text_string_to_metric_families(_busy_metrics().render())}
    # the parser names counters without their _total
    want = {n[:-len("_total")] if n.endswith("_total") else n for n in KEPT} | set(NEW)
    assert want <= names, sorted(want - names)
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= names


def test_decisions_are_there_at_zero_and_the_score_buckets_follow_the_threshold():
    text = RunMetrics().render()                    # a fresh run: nothing decided yet
    parts = {s.labels["decision"]: s.value for s in _samples(text)["edgead_parts_total"]}
    assert parts == {d: 0.0 for d in DECISIONS}
    m = _busy_metrics()
    s = _samples(m.render())
    info = s["edgead_info"][0].labels
    assert info["threshold"] == "0.42" and info["precision"] == "int8" and info["engine"] == 'line "3"\nA'
    assert s["edgead_threshold"][0].value == pytest.approx(0.42)
    bounds = [float(b.labels["le"]) for b in s["edgead_score_bucket"]]
    assert 0.42 in [pytest.approx(b) for b in bounds] and bounds[-1] == float("inf")
    at_threshold = [b.value for b in s["edgead_score_bucket"] if float(b.labels["le"]) == pytest.approx(0.42)]
    assert at_threshold == [2] and s["edgead_score_count"][0].value == 3
    up = {x.labels["output"]: x.value for x in s["edgead_output_up"]}
    assert up == {"plc": 1.0, "mes mqtt": 0.0}
    assert {x.labels["output"]: x.value for x in s["edgead_output_undelivered"]}["mes mqtt"] == 7.0


def test_buckets_cannot_change_once_scores_were_counted():
    m = RunMetrics()
    m.score.observe(0.3)
    with pytest.raises(ValueError):
        m.describe_run(version="0", engine="e", backend="b", precision="p", threshold=1.0)


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian `prometheus`; .ci/run installs it)")
def test_promtool_accepts_the_exposition(tmp_path):
    for m in (RunMetrics(), _busy_metrics()):
        r = subprocess.run(["promtool", "check", "metrics"], input=m.render(), capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr   # no lint warning either
