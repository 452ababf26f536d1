"""`edgead run` with a `cameras:` list: several cameras on one box, in one process.

Each camera is a whole run of its own (edgead.runtime.run.Session: its engine's calibration, outputs,
camera, recorder and Loop with its own deadline, queues, safe action and alarms), so a camera that
stalls, is lost or is slow delays or rejects none of the others' parts. What they share: one engine
per distinct engine (edgead.runtime.station_engines; its worker batches the cameras' parts together,
and its failure reaches every camera that uses it as that camera's safe action), one HTTP server
(the page with a camera selector, /health with every camera, /metrics with a `camera` label) and the
process (SIGINT/SIGTERM stop every camera). Each camera's log lines, events (`extra.camera`), alarms
(`[name] ...`), records (its own folder) and run.json carry its name.

The station runs until every camera's run has ended (each ends as a one-camera run does: its
source's end, max_frames, `safe_action: stop`, ...) or a signal stops them all. At the end each
camera's summary is printed, then the total; the exit code is the worst camera's (the same codes
and order as edgead.runtime.run); a camera's fatal error is raised after every summary is printed.

Edge path: no torch.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Dict, List, Optional

from edgead.errors import EdgeADError, redact_text
from edgead.protocols import FrameSource, RejectSink
from edgead.runtime.config import parse_listen
from edgead.runtime.run import Session, _is_loopback, _Signals
from edgead.runtime.station_config import StationConfig, is_station, load_station_config, with_camera
from edgead.runtime.station_engines import Engine, Opener, close_engines, open_engines
from edgead.runtime.station_metrics import StationMetrics

Log = Callable[[str], None]
RUNNING = ("ok", "degraded", "alarm")
RANK = {"ok": 0, "degraded": 1, "alarm": 2}
EXIT_ORDER = (3, 4, 5, 6)     # edgead.runtime.run's exit codes, the first listed winning
__all__ = ["Station", "is_station", "run_station", "run_station_file", "station_status", "worst_exit"]


def _stderr(line: str) -> None:
    print(redact_text(line), file=sys.stderr, flush=True)


def _prefixed(log: Log, name: str) -> Log:
    """Every line of what `log` is given starts with the camera's name."""
    return lambda text: log("\n".join(f"[{name}] {line}" for line in str(text).splitlines()))


def station_status(statuses: List[str]) -> str:
    """The station's status from its cameras': the worst running one; a camera not running while others
    do is an alarm (its parts are not inspected)."""
    running = [s for s in statuses if s in RUNNING]
    if not running:
        if statuses and all(s == "starting" for s in statuses):
            return "starting"
        return "stopping" if "stopping" in statuses else "stopped"
    if len(running) < len(statuses):
        return "alarm"
    return max(running, key=lambda s: RANK[s])


class Station:
    """The cameras' sessions, the shared engines and the HTTP view of one station run."""

    def __init__(self, config: StationConfig, log: Log) -> None:
        self.config, self.log = config, log
        self.engines: List[Engine] = []
        self.sessions: Dict[str, Session] = {}
        self.http: Any = None
        self.metrics = StationMetrics({}, lambda: [e.status() for e in self.engines])

    # ------------------------------------------------------------ what the server asks

    def health(self) -> Dict[str, Any]:
        cams = {name: self.camera_health(name) for name in self.sessions}
        return {"status": station_status([h.get("status", "unknown") for h in cams.values()]),
                "cameras": cams, "engines": [e.status() for e in self.engines]}

    def camera_health(self, name: str) -> Dict[str, Any]:
        return self.sessions[name].health()

    def ack(self, key: Optional[str]) -> List[str]:
        """Every camera's alarms (or `key` on each); the keys come back as CAMERA:KEY."""
        return [f"{name}:{k}" for name, s in self.sessions.items() for k in s.ack(key)]

    def ack_camera(self, name: str, key: Optional[str]) -> List[str]:
        return self.sessions[name].ack(key)

    # ------------------------------------------------------------ opening

    def open(self, force: bool, opener: Optional[Opener], sources: Dict[str, FrameSource],
             sinks: Dict[str, RejectSink]) -> None:
        self.engines = open_engines(self.config, force, self.log, opener)
        shared = {name: e.shared for e in self.engines for name in e.cameras}
        for cam in self.config.cameras:
            s = self.sessions[cam.name] = Session(cam.cfg, _prefixed(self.log, cam.name), camera=cam.name)
            self.metrics.cameras[cam.name] = s.metrics
            client = shared[cam.name].client(cam.name)  # type: ignore[union-attr]
            with_camera(cam.name, s.open_engine_and_camera, force, client, sinks.get(cam.name), sources.get(cam.name))
        lives = self._http_view()
        for name, s in self.sessions.items():
            s.open_loop(lives.get(name))
        if self.http is not None:
            self.http.start()
            self.log(f"live view on http://{self.http.address[0]}:{self.http.address[1]}/ "
                     f"({len(self.sessions)} cameras; /health, /metrics)")
        for s in self.sessions.values():
            s.start()

    def _http_view(self) -> Dict[str, Any]:
        """One server for every camera, bound before anything is written (a busy port fails the start)."""
        http = self.config.http
        if not http.listen:
            return {}
        from edgead.runtime.http import CameraViews, HttpView, LiveView

        host, port = parse_listen(str(http.listen))
        if not _is_loopback(host):
            self.log(f"WARNING: the live view and metrics are served on {host}:{port}, reachable from other machines "
                     "without authentication (acknowledging alarms from there needs http.token); use 127.0.0.1 "
                     "unless that is intended")
        lives = {name: LiveView(s.spec, s.vrange) for name, s in self.sessions.items()}
        self.http = HttpView(host, port, None, self.health, self.metrics.render, http.max_fps, ack=self.ack,
                             token=http.token, cameras=CameraViews(lives, self.camera_health, self.ack_camera))
        return lives

    # ------------------------------------------------------------ running and the end

    def run_loops(self) -> None:
        """Each camera's loop on its own thread; the main thread keeps the signals (they stop every camera)."""
        loops = {name: s.loop for name, s in self.sessions.items()}

        def stop_all(reason: str) -> None:
            for loop in loops.values():
                if loop is not None:
                    loop.request_stop(reason)

        threads = [threading.Thread(target=loop.run, name=f"edgead-camera-{name}", daemon=True)
                   for name, loop in loops.items() if loop is not None]
        with _Signals(stop_all, self.log):
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)   # short joins: the main thread stays free for the signal handlers

    def finish(self, out: Log) -> Dict[str, Any]:
        """Every camera's summary (printed with its name), the total, the worst exit code; then a camera's
        fatal error, if one had one."""
        summaries: Dict[str, Dict[str, Any]] = {}
        fatal: Optional[EdgeADError] = None
        for name, s in self.sessions.items():
            assert s.loop is not None
            err, s.loop.fatal = s.loop.fatal, None   # printed with every summary first, raised at the end
            summaries[name] = s.finish(_prefixed(out, name))
            if err is not None:
                summaries[name]["fatal"] = err.message
                fatal = fatal or EdgeADError(f"camera '{name}': {err.message}", err.hint)
        summary = {"cameras": summaries, "total": total(summaries), "engines": [e.status() for e in self.engines],
                   "exit_code": worst_exit(s["exit_code"] for s in summaries.values())}
        out(format_total(summary))
        if fatal is not None:
            raise fatal
        return summary

    def close(self) -> None:
        for s in reversed(list(self.sessions.values())):
            s.close()
        if self.http is not None:
            try:
                self.http.stop()
            except Exception as e:
                self.log(f"WARNING: closing the HTTP view failed: {e!r}")
        close_engines(self.engines)


def worst_exit(codes: Any) -> int:
    codes = [int(c) for c in codes]
    return next((c for c in EXIT_ORDER if c in codes), max(codes, default=0))


def total(summaries: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    keys = ("frames", "parts", "passes", "rejects", "safe_actions", "alarms")
    t: Dict[str, Any] = {k: sum(int(s.get(k) or 0) for s in summaries.values()) for k in keys}
    t["parts_per_s"] = round(sum(float(s.get("parts_per_s") or 0.0) for s in summaries.values()), 2)
    t["latency_p99_ms"] = {name: s["latency_ms"]["p99"] for name, s in summaries.items()}
    return t


def format_total(summary: Dict[str, Any]) -> str:
    t = summary["total"]
    lines = [f"station: {len(summary['cameras'])} cameras, {t['parts']} parts: {t['passes']} passed, "
             f"{t['rejects']} rejected, {t['safe_actions']} safe actions; {t['parts_per_s']} parts/s in all; "
             f"exit code {summary['exit_code']}"]
    for e in summary["engines"]:
        lines.append(f"  engine {e['engine']} ({', '.join(e['cameras'])}): {e['batches']} batches, "
                     f"{e['frames_per_batch'] or '-'} frames per batch")
    return "\n".join(lines)


def run_station(config: StationConfig, *, force: bool = False, opener: Optional[Opener] = None,
                sources: Optional[Dict[str, FrameSource]] = None, sinks: Optional[Dict[str, RejectSink]] = None,
                out: Log = print, log: Log = _stderr) -> Dict[str, Any]:
    """Run every camera to its end; returns {"cameras": {name: summary}, "total", "engines", "exit_code"}.

    opener / sources / sinks replace what the config would open (tests, embedding): `opener(cfg)` gives
    the detector for a camera's config (called once per distinct engine), the others are by camera name.
    """
    config.check_paths()    # every camera's paths, before any engine, output or camera opens
    station = Station(config, log)
    try:
        station.open(force, opener, dict(sources or {}), dict(sinks or {}))
        station.run_loops()
        return station.finish(out)
    finally:
        station.close()


def run_station_file(path: str, overrides: Optional[Dict[str, Any]] = None, *, force: bool = False,
                     out: Log = print, log: Log = _stderr) -> Dict[str, Any]:
    """`edgead run --config station.yaml` (the CLI's flags as overrides, applied to every camera)."""
    return run_station(load_station_config(path, overrides), force=force, out=out, log=log)

