"""`edgead run`: inspect parts on the line until stopped; a summary at exit.

Startup checks, each a clear EdgeADError before the first part (CLI exit code 2): the engine loads
and its files match the manifest; the calibration was made with this engine (fingerprint); the ROI
is the engine's (see check_roi); the reject outputs are healthy (unless allow_degraded); the camera
opens; the HTTP port is free. Then the loop (edgead.runtime.loop) runs until the source ends,
--max-frames, SIGINT/SIGTERM, or a fault that stops it (a replay that cannot be read,
`safe_action: stop`, `on_sink_failure: stop`). A live camera is read through ReconnectingSource (the loop's
one reconnect path): while it is away the loop raises an alarm and keeps waiting for it. Shutdown finishes the parts in flight, flushes the
event log, releases the camera and prints the summary.

Edge path (ARCHITECTURE.md rule 2): numpy, OpenCV, PyYAML and a backend; never torch.
"""

from __future__ import annotations

import ipaddress
import secrets
import signal
import sys
import threading
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from edgead import __version__
from edgead.errors import EdgeADError, redact_text
from edgead.preprocess import PreprocessSpec
from edgead.protocols import Detector, FrameSource, RejectSink
from edgead.runtime.config import RunConfig, parse_listen
from edgead.runtime.loop import Loop, LoopOptions
from edgead.runtime.overlay import heat_range
from edgead.runtime.recorder import Recorder
from edgead.runtime.telemetry import RunMetrics
from edgead.signals.group import SinkGroup

# Exit codes of `edgead run` (2 is a start-up error, from the CLI). When several apply, the first listed wins.
EXIT_OK = 0
EXIT_FAULT_STOP = 3       # the run ended itself because of a fault (safe_action: stop, on_sink_failure: stop)
EXIT_UNDELIVERED = 4      # events are still waiting in an output's outbox (sent at the next start)
EXIT_RECORD_INCOMPLETE = 5  # the record folder misses event lines or run.json (disk full, read-only)
EXIT_SOURCE_SHORT = 6     # a replay ended early or had frames that could not be read

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(redact_text(line), file=sys.stderr, flush=True)


def check_roi(engine_spec: PreprocessSpec, roi: tuple[int, int, int, int] | None) -> tuple[PreprocessSpec, str | None]:
    """The ROI rule: the crop is part of the engine's preprocessing, so the calibration holds only for it.

    - no run-time ROI, or the engine's own: the engine's preprocessing, unchanged;
    - the same width and height at another x, y (the camera or fixture moved): allowed with a loud
      WARNING, since the model still sees the same number of pixels per part;
    - anything else (another size, or a crop of an engine trained on the whole frame): refused, as the
      scores would be on another scale than the threshold. Rebuild the model with that ROI.
    """
    if roi is None or tuple(roi) == engine_spec.roi:
        return engine_spec, None
    if engine_spec.roi is None:
        raise EdgeADError(f"--roi {' '.join(map(str, roi))} crops frames that the engine sees whole: its calibration "
                          "does not hold for a crop",
                          "leave --roi out, or train the model with this roi (preprocess.roi) and rebuild the engine")
    x, y, w, h = engine_spec.roi
    if tuple(roi[2:]) != (w, h):
        raise EdgeADError(f"--roi size {roi[2]}x{roi[3]} differs from the engine's ROI {w}x{h} (at {x},{y}): the model "
                          "would see the part at another scale than it was calibrated on",
                          f"keep the size {w}x{h} (shifting x, y is allowed), or train and rebuild with the new ROI")
    return replace(engine_spec, roi=(int(roi[0]), int(roi[1]), int(roi[2]), int(roi[3]))), (
        f"WARNING: the ROI is moved from x={x} y={y} to x={roi[0]} y={roi[1]} (size {w}x{h} kept): the engine was "
        "calibrated on the old position; the false-reject and escape rates only hold if the part moved in the "
        "image by exactly this much. Check with `edgead calibrate --check` on frames cropped this way.")


def _is_replay(source: str) -> bool:
    return Path(source).exists()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _build_source(cfg: RunConfig) -> FrameSource:
    """The camera, not yet opened (the loop reads a live one through its reconnect path)."""
    from edgead.capture import open_source

    assert cfg.camera.source is not None
    return open_source(cfg.camera.source, cfg.camera, connect=False)


def _open_outputs(cfg: RunConfig, log: Log) -> SinkGroup | None:
    if not cfg.outputs:
        log("WARNING: no outputs configured: rejects are logged and counted but signal nothing")
        return None
    from edgead.signals import build_sinks, check_health

    sinks = build_sinks(cfg.outputs, outbox_dir=cfg.outbox_dir)
    try:
        check_health(sinks, cfg.allow_degraded, warn=log)
    except BaseException:
        for s in sinks:
            s.close()
        raise
    # no alarm callback yet: check_health said which output is down, and the loop raises their alarms
    # once it takes the group over (SinkGroup.set_callbacks), so each is said once
    return SinkGroup(sinks, on_sink_failure=cfg.on_sink_failure)


def format_summary(s: dict[str, Any]) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in s["safe_actions_by_reason"].items())
    lat = s["latency_ms"]
    lines = [f"edgead run: {s['frames']} frames, {s['parts']} parts: {s['passes']} passed, {s['rejects']} rejected, "
             f"{s['safe_actions']} safe actions{f' ({reasons})' if reasons else ''}",
             f"  latency capture->decision p50 {lat['p50']} ms, p99 {lat['p99']} ms; {s['parts_per_s']} parts/s "
             f"over {s['elapsed_s']} s",
             f"  camera: {s['reconnects']} reconnects, {s['camera_errors']} errors, {s['frames_lost']} frames lost; "
             f"alarms {s['alarms']}; stopped by {s['stopped_by']}"]
    if s.get("frames_skipped"):
        lines.append("  frames not inspected (free-running): "
                     + ", ".join(f"{k} {v}" for k, v in s["frames_skipped"].items()))
    if any(s.get("records_dropped", {}).values()):
        lines.append("  records dropped (disk too slow): "
                     + ", ".join(f"{k} {v}" for k, v in s["records_dropped"].items()))
    lines.extend(_fault_lines(s))
    if s.get("record_dir"):
        lines.append(f"  records: {s['record_dir']}")
    return "\n".join(lines)


def _fault_lines(s: dict[str, Any]) -> list[str]:
    """What the run could not finish: events not delivered, records not written, frames not read."""
    lines = []
    for name, u in (s.get("undelivered") or {}).items():
        if u.get("where"):
            lines.append(f"  NOT DELIVERED: {u['count']} events of output {name}, kept in {u['where']}: sent at the "
                         "next start (or `edgead outbox flush`)")
        else:                           # an output with nowhere to keep them: counted, with the reason
            lines.append(f"  NOT DELIVERED: {u['count']} {u.get('what', 'events')} by output {name} "
                         f"({u.get('why') or 'see its alarm'}); the record's events.jsonl has every part")
    record = s.get("record") or {}
    if record.get("complete") is False:
        ev = record.get("events", {})
        lines.append(f"  RECORD INCOMPLETE in {record.get('dir')}: {ev.get('not_written', 0)} event lines not written, "
                     f"{ev.get('dropped', 0)} dropped, run.json {'written' if record.get('run_json_written') else 'NOT written'}"
                     f"{'; ' + str(record['last_error']) if record.get('last_error') else ''}")
    src = s.get("source") or {}
    if src.get("ended_early") or src.get("unreadable") or src.get("skipped"):
        lines.append(f"  SOURCE: {src.get('read')} of {src.get('expected')} frames read, {src.get('unreadable', 0)} "
                     f"unreadable, {len(src.get('skipped') or [])} skipped"
                     + (" (ended early)" if src.get("ended_early") else ""))
    return lines


class _Signals:
    """SIGINT/SIGTERM ask the loop to stop (parts in flight are finished); restored afterwards."""

    def __init__(self, stop: Callable[[str], None], log: Log) -> None:
        self.stop, self.log = stop, log
        self.old: dict[int, Any] = {}
        self.stopping = False

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.stopping and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user will not wait for the shutdown
        self.stopping = True
        self.log(f"{name}: stopping after the parts in flight (Ctrl-C again to abandon them)")
        self.stop(f"signal {name}")

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)


def _engine(cfg: RunConfig, detector: Detector | None, force: bool, log: Log,
            warnings: list[str]) -> tuple[Detector, dict[str, Any], PreprocessSpec, int]:
    """The detector, its calibration (fingerprint checked), the preprocessing (ROI rule) and the batch size.

    The engine is a folder or a `triton://` URL (config `detector:`): a served model's manifest is the one
    the server carries."""
    from edgead.backends import engine_manifest
    from edgead.backends.manifest import preprocess_spec
    from edgead.decide.record import load_calibration

    if detector is None:
        from edgead.backends import load_detector

        detector = load_detector(cfg.engine, cfg.backend, cfg.precision, cfg.threads)  # type: ignore[arg-type]
    calibration = load_calibration(cfg.calibration, detector, force)  # type: ignore[arg-type]
    if calibration.get("forced"):
        warnings.append(f"calibration used despite: {calibration.get('forced_reason')} (--force)")
    engine_spec = preprocess_spec(engine_manifest(cfg.engine, detector))  # type: ignore[arg-type]
    spec, roi_warning = check_roi(engine_spec, cfg.roi)
    if roi_warning:
        log(roi_warning)
        warnings.append(roi_warning)
    max_batch = cfg.max_batch or int(detector.max_batch)
    if max_batch > int(detector.max_batch):
        raise EdgeADError(f"max_batch {max_batch} exceeds the engine's maximum batch {detector.max_batch}",
                          "lower max_batch, or rebuild the engine with `edgead build-engine --max-batch N`")
    return detector, calibration, spec, max_batch


def _http_view(cfg: RunConfig, spec: PreprocessSpec, vrange: tuple[float, float], metrics: RunMetrics,
               health: Callable[[], dict[str, Any]], ack: Callable[[str | None], list[str]],
               log: Log) -> tuple[Any, Any]:
    """The live view and its server, bound before anything is written: a busy port fails the start cleanly."""
    if not cfg.http.listen:
        return None, None
    from edgead.runtime.http import HttpView, LiveView

    host, port = parse_listen(cfg.http.listen)
    if not _is_loopback(host):
        log(f"WARNING: the live view and metrics are served on {host}:{port}, reachable from other machines "
            "without authentication (acknowledging alarms from there needs http.token); use 127.0.0.1 unless "
            "that is intended")
    live = LiveView(spec, vrange)
    return live, HttpView(host, port, live, health, metrics.render, cfg.http.max_fps, ack=ack, token=cfg.http.token)


def _loop_options(cfg: RunConfig, source: FrameSource, max_batch: int, camera: str = "") -> LoopOptions:
    if cfg.camera.live == "auto":  # a source says what it is; a file or folder path is a replay too
        wait = not source.live or _is_replay(cfg.camera.source or "")
    else:
        wait = cfg.camera.live is False
    return LoopOptions(trigger=cfg.trigger_mode, nth=cfg.nth, deadline_s=cfg.deadline_ms / 1000.0,
                       max_batch=max_batch, safe_action=cfg.safe_action, wait_for_engine=wait,
                       stall_alarm_s=cfg.camera.stall_alarm_s, max_frames=cfg.max_frames, run_id=new_run_id(),
                       camera=camera)


def new_run_id() -> str:
    """A session's id: UTC start time plus a random suffix, unique across restarts and boxes."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _run_info(cfg: RunConfig, detector: Detector, calibration: dict[str, Any], source: FrameSource,
              spec: PreprocessSpec, opts: LoopOptions, warnings: list[str]) -> dict[str, Any]:
    """What run.json records about this session: versions, engine, calibration, camera, settings."""
    return {"edgead_version": __version__, "run_id": opts.run_id, "started": datetime.now(timezone.utc).isoformat(),
            "engine": {"path": str(cfg.engine), "fingerprint": detector.fingerprint,
                       "backend": detector.backend, "precision": detector.precision},
            "calibration": {"path": str(cfg.calibration), "threshold": calibration.get("threshold"),
                            "rule": calibration.get("rule"), "forced": bool(calibration.get("forced")),
                            "forced_reason": calibration.get("forced_reason")},
            "camera": source.name, "preprocess": spec.to_dict(), "config": cfg.to_dict(),
            "mode": "trigger" if opts.trigger else f"free-running, every {opts.nth} frame(s)",
            "max_batch": opts.max_batch, "warnings": warnings}


def _finish(loop: Loop, recorder: Recorder | None, run_info: dict[str, Any], warnings: list[str],
            out: Log) -> dict[str, Any]:
    summary = loop.summary()
    summary["record_dir"] = str(recorder.dir) if recorder else None
    summary["warnings"] = warnings
    if loop.sinks is not None:     # drained and closed first: the counts are final, nothing prints after them
        loop.sinks.close()
    summary["undelivered"] = loop.sinks.undelivered() if loop.sinks is not None else {}
    summary["source"] = loop.source.accounting()
    if recorder is not None:
        summary["record"] = recorder.close({**run_info, "summary": summary})
    summary["exit_code"] = _exit_code(loop, summary)
    out(format_summary(summary))
    if loop.fatal is not None:
        loop.fatal.summary = summary     # type: ignore[attr-defined]  # `run --json` prints it with the error
        raise loop.fatal
    return summary


def _exit_code(loop: Loop, summary: dict[str, Any]) -> int:
    source = summary.get("source") or {}
    record = summary.get("record") or {}
    for failed, code in (((loop.stopped_by or "").startswith(("safe action", "reject output")), EXIT_FAULT_STOP),
                         (bool(summary["undelivered"]), EXIT_UNDELIVERED),
                         (record.get("complete") is False, EXIT_RECORD_INCOMPLETE),
                         (bool(source.get("ended_early") or source.get("unreadable")), EXIT_SOURCE_SHORT)):
        if failed:
            return code
    return EXIT_OK


class Session:
    """One camera's wiring, opened in steps (`open_engine_and_camera`, `open_loop`, `start`) so that
    `run` and the station (edgead.runtime.station) build a camera the same way; `close()` undoes it."""

    def __init__(self, cfg: RunConfig, log: Log, camera: str = "") -> None:
        self.cfg, self.log, self.camera = cfg, log, camera
        self.metrics = RunMetrics()
        self.warnings: list[str] = []
        self.closers: list[Callable[[], None]] = []
        self.loop: Loop | None = None
        self.recorder: Recorder | None = None
        self.group: SinkGroup | None = None
        self.run_info: dict[str, Any] = {}

    def open_engine_and_camera(self, force: bool, detector: Detector | None, sinks: RejectSink | None,
                               source: FrameSource | None) -> None:
        """The engine and its calibration, the outputs, the metrics' description, the camera (opened)."""
        cfg, log = self.cfg, self.log
        opened_here = detector is None
        self.detector, self.calibration, self.spec, self.max_batch = _engine(cfg, detector, force, log, self.warnings)
        close = getattr(self.detector, "close", None)
        if opened_here and callable(close):   # e.g. a Triton client's shared-memory regions: closed last
            self.closers.append(close)
        group = _open_outputs(cfg, log) if sinks is None else \
            sinks if isinstance(sinks, SinkGroup) else SinkGroup([sinks])
        self.group = group
        self.metrics.describe_run(version=__version__, engine=Path(str(cfg.engine)).name,
                                  backend=self.detector.backend, precision=self.detector.precision,
                                  threshold=self.calibration.get("threshold"))
        if group is not None:
            self.closers.append(group.close)
            _output_metrics(self.metrics, group)
        if source is None:
            source = _build_source(cfg)
        source.open()
        self.closers.append(source.close)
        self.source = source
        self.vrange = heat_range(self.calibration)

    def health(self) -> dict[str, Any]:
        return _health(self.loop, self.group) if self.loop else {"status": "starting"}

    def ack(self, key: str | None) -> list[str]:
        return self.loop.ack_alarms(key) if self.loop else []

    def open_loop(self, live: Any) -> Loop:
        """The recorder, the loop (and the outputs' callbacks into it), the PLC's acknowledge input."""
        from edgead.decide.record import decide

        cfg, log, group = self.cfg, self.log, self.group
        if cfg.record.dir:
            recorder = self.recorder = Recorder(cfg.record, self.spec, self.vrange, self.metrics, log)
            self.closers.append(lambda: recorder.close({"summary": None,
                                                        "error": "the run did not start or end cleanly"}))
        self.opts = _loop_options(cfg, self.source, self.max_batch, self.camera)
        loop = self.loop = Loop(source=self.source, detector=self.detector, calibration=self.calibration,
                                spec=self.spec, decide=decide, options=self.opts, metrics=self.metrics, sinks=group,
                                recorder=self.recorder, live=live, log=log,
                                on_alarm=None if group is None else lambda reason: group.raise_alarm("edgead", reason),
                                on_clear=None if group is None else group.clear_alarm_outputs)
        loop.warnings.extend(self.warnings)
        if group is not None:   # from now on an output's failure and recovery are the loop's alarms
            group.set_callbacks(loop.output_failed, loop.output_recovered)
        if cfg.alarm_ack is not None:
            self.closers.append(_ack_input(cfg, loop).close)
        return loop

    def start(self) -> None:
        """run.json's start, the 'inspecting' line, the ready output on: parts may come."""
        cfg, recorder, opts = self.cfg, self.recorder, self.opts
        self.run_info = _run_info(cfg, self.detector, self.calibration, self.source, self.spec, opts, self.warnings)
        if self.camera:
            self.run_info["station_camera"] = self.camera
        if recorder is not None:
            recorder.start(self.run_info)
        self.log(f"inspecting {self.source.name} with {Path(str(cfg.engine)).name} ({self.detector.backend}/"
                 f"{self.detector.precision}), {'trigger mode' if opts.trigger else f'every {opts.nth} frame(s)'}, "
                 f"deadline {cfg.deadline_ms:g} ms, batch <= {self.max_batch}"
                 + (f"; recording to {recorder.dir}" if recorder else ""))
        if self.group is not None:
            self.group.set_ready(True)  # the 'ready' line: on while parts are inspected (close() turns it off)

    def finish(self, out: Log) -> dict[str, Any]:
        assert self.loop is not None
        return _finish(self.loop, self.recorder, self.run_info, self.warnings, out)

    def close(self) -> None:
        for close in reversed(self.closers):
            try:
                close()
            except Exception as e:  # closing one thing must not keep the others open
                self.log(f"WARNING: closing failed: {e!r}")
        self.closers = []


def run(cfg: RunConfig, *, force: bool = False, detector: Detector | None = None,
        source: FrameSource | None = None, sinks: RejectSink | None = None, out: Log = print,
        log: Log = _stderr) -> dict[str, Any]:
    """Run the inspection loop to its end; returns the summary (with "exit_code").

    detector / source / sinks replace what the config would open (tests, embedding); a fatal fault
    (camera lost, preprocessing impossible) is raised as EdgeADError after the summary is printed.
    """
    cfg.check_paths()   # the required keys, then every path: before the engine, the outputs or the camera open
    s = Session(cfg, log)
    try:
        s.open_engine_and_camera(force, detector, sinks, source)
        live, http = _http_view(cfg, s.spec, s.vrange, s.metrics, s.health, s.ack, log)
        if http is not None:
            s.closers.append(http.stop)
        loop = s.open_loop(live)
        if http is not None:
            http.start()
            log(f"live view on http://{http.address[0]}:{http.address[1]}/ (/health, /metrics)")
        s.start()
        with _Signals(loop.request_stop, log):
            loop.run()
        return s.finish(out)
    finally:
        s.close()


def _ack_input(cfg: RunConfig, loop: Loop) -> Any:
    """The PLC's acknowledge button: each press acknowledges every active alarm; the input failing is one."""
    from edgead.signals.ack_input import AckInput

    assert cfg.alarm_ack is not None
    where = cfg.alarm_ack.where

    def pressed() -> None:
        loop.log(f"acknowledge pressed on the PLC ({where})")
        loop.ack_alarms(None)

    return AckInput(cfg.alarm_ack, on_ack=pressed, on_problem=lambda why: loop.alarm(why, key="ack_input"),
                    on_back=lambda: loop.clear_alarm("ack_input")).start()


def _output_metrics(metrics: RunMetrics, group: SinkGroup) -> None:
    """Per-output gauges read at scrape time: up, undelivered, and the outbox backlog."""
    def by_name(field: str) -> Callable[[], dict[str, float]]:
        return lambda: {str(st["name"]): float(st.get(field) or 0) for st in group.statuses()}

    metrics.output_up.set_labelled_function("output", by_name("ok"))
    metrics.output_undelivered.set_labelled_function("output", by_name("undelivered"))
    metrics.outbox_pending.set_labelled_function("output", lambda: {k: float(v) for k, v in group.outbox_pending().items()})


def _health(loop: Loop, sinks: SinkGroup | None) -> dict[str, Any]:
    """The loop's health with each output on its own; an output down makes an ok run "degraded"."""
    h = loop.health()
    h["outputs"] = []
    if sinks is not None:
        try:
            h["outputs"] = sinks.statuses()
        except Exception as e:
            h["outputs"] = [{"name": "outputs", "ok": False, "detail": repr(e)}]
        if h["status"] == "ok" and not all(o.get("ok") for o in h["outputs"]):
            h["status"] = "degraded"
    return h
