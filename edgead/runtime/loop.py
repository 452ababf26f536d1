"""The run loop: capture, inference and output threads joined by small bounded queues.

    capture ──(infer queue: 2 x max batch)──▶ inference (batches what has queued) ──▶ output queue ──▶ output
       └── every part is entered in the Ledger at capture; the output thread is its deadline watchdog ──┘

Fail-safe rules (ARCHITECTURE.md rule 4): every part gets exactly one event, and a part that was not
inspected in time gets the safe action (decision "safe_reject": reject + alarm; `safe_action: stop`
also ends the run), counted by reason in edgead_safe_actions_total:
- deadline: no decision `deadline_ms` after capture. The output thread fires it AT the deadline,
  whatever the engine is doing (a hung engine cannot hold a part back); a decision that arrives later
  is discarded and counted (edgead_late_decisions_total).
- engine error / decide error / preprocess error: the engine raised, returned a non-finite score or
  the wrong shape; the frame could not be preprocessed.
- queue full (trigger mode): the engine is behind and the inference queue is full; the part is not
  dropped, it is rejected at once.
- frame lost (trigger mode): the camera's sequence numbers jumped; each missing frame was a part.
Alarms live on an AlarmBoard (edgead.runtime.alarms): a condition (camera lost or stalled, an output
failing, the record disk failing) clears itself when the loop sees it gone (a frame arrives, the
output reports it recovered, a record is written again); an event (a safe action, a sequence jump)
expires after a while; the operator can acknowledge either (`ack_alarms`, POST /alarms/ack). When the
last one goes, `on_clear` sets the alarm outputs back to ok.
In free-running mode (every Nth frame) frames are not parts: frames skipped because the engine is
busy or lost by the camera are counted, not rejected. Replays (files, folders) are not live: there
the capture thread waits for the engine instead (nothing is lost by waiting for a file).
No torch here (edge path).
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edgead.capture.reconnect import Backoff, ReconnectingSource
from edgead.errors import EdgeADError
from edgead.preprocess import PreprocessSpec, preprocess
from edgead.protocols import Detector, Frame, FrameSource, InspectionEvent
from edgead.runtime.alarms import AlarmBoard
from edgead.errors import redact_text
from edgead.runtime.telemetry import RunMetrics

if TYPE_CHECKING:  # types only: the loop is handed these, it never builds them
    from edgead.runtime.http import LiveView
    from edgead.runtime.recorder import Recorder
    from edgead.signals.group import SinkGroup

MAX_LOST_EVENTS = 1000      # a sequence jump larger than this is a camera restart, not lost parts
OUT_QUEUE = 64              # decided parts waiting for the output thread (it only fires sinks: fast)
WATCHDOG_TICK_S = 0.05      # the output thread looks at the ledger at least this often
ALARM_LOG_INTERVAL_S = 1.0  # one stderr line per alarm reason and interval (all are counted)
ALARM_TICK_S = 1.0          # the output thread lets expired event alarms go at least this often
RECORD_ALARM = "record_failure"   # recorder keys: record_failure:events, :images, :run_json


@dataclass
class LoopOptions:
    trigger: bool = True            # each frame is one part; False: free-running, every `nth` frame inspected
    nth: int = 1
    deadline_s: float = 0.2
    max_batch: int = 1
    safe_action: str = "reject"     # "reject" (reject + alarm) or "stop" (reject + alarm, then end the run)
    wait_for_engine: bool = False   # replay source: wait for a free slot instead of rejecting/skipping
    read_timeout_s: float = 0.1
    stall_alarm_s: float = 0.0
    max_frames: int | None = None
    run_id: str = ""                # prefixes every event's id ("<run id>-<n>")
    camera: str = ""                # a station's camera name: in every event (extra.camera) and alarm ("[name] ...")


@dataclass
class Part:
    pid: int
    frame: Frame
    deadline: float                                    # monotonic seconds
    x: np.ndarray | None = None                        # preprocessed CHW float32
    t_read: float = 0.0
    t_queued: float = 0.0
    lat: dict[str, float] = field(default_factory=dict)


@dataclass
class Outcome:
    """One resolved part on its way to the outputs."""

    pid: int
    event: InspectionEvent
    image: np.ndarray | None = None
    amap: np.ndarray | None = None


class Ledger:
    """Parts between capture and decision. Whoever resolves a part first (decision or watchdog) wins."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, Part] = {}

    def add(self, part: Part) -> None:
        with self._lock:
            self._open[part.pid] = part

    def pop(self, pid: int) -> Part | None:
        with self._lock:
            return self._open.pop(pid, None)

    def is_open(self, pid: int) -> bool:
        with self._lock:
            return pid in self._open

    def overdue(self, now: float) -> list[Part]:
        with self._lock:
            late = [p for p in self._open.values() if p.deadline <= now]
            for p in late:
                del self._open[p.pid]
            return late

    def next_deadline(self) -> float | None:
        with self._lock:
            return min((p.deadline for p in self._open.values()), default=None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)


def reason_key(reason: str) -> str:
    """'engine error: CUDA failure' -> 'engine_error' (a bounded label set for metrics)."""
    return reason.split(":", 1)[0].strip().replace(" ", "_") or "unknown"


def _text(err: BaseException) -> str:
    """An error for an event's reason or an alarm: our own message, or the exception's repr."""
    return err.message if isinstance(err, EdgeADError) and err.message else repr(err)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class Loop:
    """Runs one inspection session; `run()` blocks until stopped and returns when the outputs are flushed."""

    def __init__(self, *, source: FrameSource, detector: Detector, calibration: dict[str, Any], spec: PreprocessSpec,
                 decide: Callable[[float, np.ndarray, dict[str, Any]], bool], options: LoopOptions,
                 metrics: RunMetrics | None = None, sinks: SinkGroup | None = None, recorder: Recorder | None = None,
                 live: LiveView | None = None, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
                 on_alarm: Callable[[str], None] | None = None, on_clear: Callable[[], None] | None = None,
                 alarms: AlarmBoard | None = None) -> None:
        # A live camera reads through the one reconnect path (ReconnectingSource); a replay is never
        # reopened (that would play it again from the start): its errors stop the run.
        self.camera: ReconnectingSource | None = None
        if not options.wait_for_engine:
            if not isinstance(source, ReconnectingSource):
                source = ReconnectingSource(source, Backoff(initial_s=0.1, max_s=2.0), on_lost=self._camera_error,
                                            opened=True)
            self.camera = source
        self.source, self.detector, self.calibration, self.spec = source, detector, calibration, spec
        self.decide, self.opt, self.sinks, self.recorder, self.live = decide, options, sinks, recorder, live
        self.metrics = metrics or RunMetrics()
        self.log, self.on_alarm, self.on_clear = log, on_alarm, on_clear
        self.board = alarms if alarms is not None else AlarmBoard()
        self.board.on_empty = self._all_clear
        if recorder is not None:   # a record the disk refused is one of the run's alarms
            recorder.on_alarm, recorder.on_clear = self._record_failed, self.clear_alarm
        self.threshold = calibration.get("threshold")
        self.ledger = Ledger()
        depth = options.max_batch if options.wait_for_engine else 2 * options.max_batch
        self.infer_q: queue.Queue[Part | None] = queue.Queue(maxsize=depth)
        self.out_q: queue.Queue[Outcome] = queue.Queue(maxsize=OUT_QUEUE)
        # Replay: a slot is taken before a frame is read, so a frame is only stamped when it can be queued.
        self._slots = threading.Semaphore(depth) if options.wait_for_engine else None
        self._stop = threading.Event()
        self._infer_done = threading.Event()
        self._draining = threading.Event()
        self._pid_lock = threading.Lock()
        self._next_pid = 0
        self._alarm_lock = threading.Lock()
        self._alarm_logged: dict[str, float] = {}
        self.last_alarm: dict[str, Any] | None = None
        self.stopped_by: str | None = None
        self.fatal: EdgeADError | None = None
        self.started: float | None = None
        self.ended: float | None = None
        self.warnings: list[str] = []
        self._camera_away = False
        self._reconnects_seen = 0
        m = self.metrics
        m.queue_depth.set_function(self.infer_q.qsize, queue="infer")
        m.queue_depth.set_function(self.out_q.qsize, queue="output")
        m.queue_depth.set_function(lambda: float(len(self.ledger)), queue="in_flight")
        m.alarms_active.set_function(lambda: float(len(self.board.active())))
        watch = getattr(detector, "watch_queue", None)   # a shared engine counts this camera's queue as its backlog
        if callable(watch):
            watch(self.infer_q.qsize)
        m.camera_up.set_function(lambda: float(self.camera_status()["ok"]))
        self._threads = [threading.Thread(target=self._guard(self._capture), name="edgead-capture", daemon=True),
                         threading.Thread(target=self._guard(self._infer), name="edgead-infer", daemon=True),
                         threading.Thread(target=self._guard(self._output), name="edgead-output", daemon=True)]

    # ------------------------------------------------------------ control

    def request_stop(self, reason: str) -> None:
        """Stop capturing; parts already captured are still decided (or safe-rejected) and logged."""
        if not self._stop.is_set():
            self.stopped_by = reason
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Start the threads, wait for a stop request, then shut down in order: capture, inference, outputs."""
        self.started = time.monotonic()
        self.metrics.up.set(1)
        for t in self._threads:
            t.start()
        while not self._stop.is_set():
            self._stop.wait(0.2)  # short waits: the main thread stays free for signal handlers
        capture, infer, output = self._threads
        capture.join(self.opt.read_timeout_s + 2.0)
        if capture.is_alive():
            self.log(f"WARNING: the camera {self.source.name} does not return from read(); not waiting for it")
        self._put_sentinel()
        infer.join(self.opt.deadline_s + 5.0)
        if infer.is_alive():
            self.log("WARNING: the engine does not return; its parts were safe-rejected at their deadline")
        self._infer_done.set()
        self._draining.set()
        output.join(self.opt.deadline_s + 10.0)
        self.metrics.up.set(0)
        self.ended = time.monotonic()

    def _put_sentinel(self) -> None:
        end = time.monotonic() + self.opt.deadline_s + 5.0
        while time.monotonic() < end:
            try:
                self.infer_q.put(None, timeout=0.1)
                return
            except queue.Full:
                continue

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        """A bug in one thread stops the run (parts in flight still reach their deadline), never hangs it."""
        def wrapped() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported, then the run ends
                import traceback

                self.log(f"ERROR: thread {threading.current_thread().name} crashed:\n{traceback.format_exc()}")
                self.fatal = self.fatal or EdgeADError(f"internal error in the run loop: {e!r}",
                                                       "this is a bug: please report it with the log above")
                self.request_stop("internal error")
                if threading.current_thread().name == "edgead-infer":
                    self._infer_done.set()
        return wrapped

    def _pid(self) -> int:
        with self._pid_lock:
            self._next_pid += 1
            return self._next_pid

    # ------------------------------------------------------------ alarms

    def alarm(self, reason: str, key: str | None = None, notify: bool = True, event: bool = False) -> None:
        """Raised on the board (active until cleared or acknowledged; `event`: a one-off that expires by
        itself, see edgead.runtime.alarms), counted by `key` (a short label), logged at most once a second
        per key; dumps the ring.

        notify=False: the alarm outputs already know (an output failure reported by the SinkGroup).
        """
        key, reason = key or reason_key(reason), redact_text(reason)   # a URL's password never reaches a log
        logged, reason = reason, f"[{self.opt.camera}] {reason}" if self.opt.camera else reason
        self.metrics.alarms.inc(reason=key)
        self.board.raise_(key, reason, event=event)
        now = time.monotonic()
        with self._alarm_lock:
            self.last_alarm = {"reason": reason, "monotonic": now,
                               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            quiet = now - self._alarm_logged.get(key, -math.inf) < ALARM_LOG_INTERVAL_S
            if not quiet:
                self._alarm_logged[key] = now
        if not quiet:
            self.log(f"ALARM: {logged}")   # a station's log lines already name their camera
            if self.on_alarm is not None and notify:
                try:
                    self.on_alarm(reason)
                except Exception as e:
                    self.log(f"WARNING: the alarm output failed: {e!r}")
        if self.recorder is not None and not key.startswith(RECORD_ALARM):  # no ring onto a failing disk
            self.recorder.dump_ring()

    def clear_alarm(self, key: str) -> bool:
        """The condition behind `key` is gone (camera back, output recovered, disk writable again)."""
        cleared = self.board.clear(key)
        if cleared:
            self.log(f"alarm cleared: {key}")
        return cleared

    def ack_alarms(self, key: str | None = None) -> list[str]:
        """The operator acknowledged `key` (None: all active alarms); returns the keys cleared."""
        keys = self.board.ack(key)
        if keys:
            self.log(f"alarm acknowledged: {', '.join(keys)}")
        return keys

    def _all_clear(self) -> None:
        """The last active alarm went: the alarm outputs go back to ok (on_clear)."""
        self.log("no alarm active")
        if self.on_clear is not None:
            try:
                self.on_clear()
            except Exception as e:
                self.log(f"WARNING: resetting the alarm outputs failed: {e!r}")

    def output_failed(self, name: str, detail: str) -> None:
        """An output reported a failure (the SinkGroup already drives the alarm outputs): counted and alarmed."""
        self.metrics.sink_errors.inc()
        self.alarm(f"output {name}: {detail}", key=f"output_failure:{name}", notify=False)

    def output_recovered(self, name: str) -> None:
        """An output reported it works again (SinkGroup.on_recovered): its alarm clears."""
        self.clear_alarm(f"output_failure:{name}")

    def _record_failed(self, key: str, reason: str) -> None:
        """The recorder's on_alarm: a line, an image or run.json the disk refused."""
        self.alarm(reason, key=key)

    # ------------------------------------------------------------ capture thread

    def _acquire_slot(self) -> bool:
        if self._slots is None:
            return True
        while not self._stop.is_set():
            if self._slots.acquire(timeout=0.1):
                return True
        return False

    def _capture(self) -> None:
        opt, m = self.opt, self.metrics
        frames, last_seq, last_t = 0, None, None
        last_frame_at, stalled = time.monotonic(), False
        while not self._stop.is_set():
            if opt.max_frames is not None and frames >= opt.max_frames:
                self.request_stop("max frames")
                break
            if not self._acquire_slot():
                break
            try:
                frame = self.source.read(opt.read_timeout_s)
            except Exception as e:  # a replay that cannot be read (a live camera reconnects inside read())
                self._release_slot()
                self._source_failed(e)
                break
            now = time.monotonic()
            self._watch_reconnects()
            if frame is None:
                self._release_slot()
                if self.source.finished:
                    self.request_stop("end of source")
                    break
                camera = self.camera
                if camera is not None and not camera.connected and not self._camera_away:
                    self._camera_away = True
                    err = camera.last_error
                    self.alarm(f"camera lost: {self.source.name}: {err.message if err else None}; reconnecting "
                               "(parts passing now are not inspected)", key="camera_lost")
                if opt.stall_alarm_s and not stalled and now - last_frame_at > opt.stall_alarm_s:
                    stalled = True
                    m.camera_stalls.inc()
                    self.alarm(f"camera stalled: no frame from {self.source.name} for {opt.stall_alarm_s:g} s",
                               key="camera_stalled")
                continue
            frames += 1
            if self._camera_away or stalled:   # the camera is back: its alarms clear
                self.clear_alarm("camera_lost")
                self.clear_alarm("camera_stalled")
            last_frame_at, stalled, self._camera_away = now, False, False
            m.frames.inc()
            m.frame_rate.tick(now)
            self._check_gap(frame, last_seq, last_t)
            last_seq, last_t = frame.seq, frame.t_capture
            if not opt.trigger and (frames - 1) % opt.nth:
                m.frames_skipped.inc(reason="not_nth")
                self._release_slot()
                continue
            if not opt.trigger and self._slots is None and (self.infer_q.full() or self._engine_saturated()):
                m.frames_skipped.inc(reason="busy")
                continue
            self._enter(frame, now, first=frames == 1)

    def _engine_saturated(self) -> bool:
        """An engine shared with other cameras (edgead.runtime.shared_detector) already has all it can do in time."""
        saturated = getattr(self.detector, "saturated", None)
        return bool(saturated()) if callable(saturated) else False

    def _release_slot(self) -> None:
        if self._slots is not None:
            self._slots.release()

    def _enter(self, frame: Frame, t_read: float, first: bool) -> None:
        part = Part(self._pid(), frame, frame.t_capture + self.opt.deadline_s, t_read=t_read)
        self.ledger.add(part)
        part.lat["read"] = _ms(t_read - frame.t_capture)
        t0 = time.monotonic()
        try:
            part.x = preprocess(frame.image, self.spec)
        except Exception as e:
            self._release_slot()
            self._safe(part, f"preprocess error: {_text(e)}")
            if first and isinstance(e, EdgeADError):  # e.g. the ROI lies outside this camera's frame
                self.fatal = e
                self.request_stop("preprocess error")
            return
        part.t_queued = time.monotonic()
        part.lat["preprocess"] = _ms(part.t_queued - t0)
        try:
            self.infer_q.put_nowait(part)
        except queue.Full:  # never in replay (a slot was taken before the read)
            if self.opt.trigger:
                self._safe(part, "queue full")
            else:
                self.ledger.pop(part.pid)
                self.metrics.frames_skipped.inc(reason="busy")

    def _check_gap(self, frame: Frame, last_seq: int | None, last_t: float | None) -> None:
        if last_seq is None or last_t is None or frame.seq <= last_seq + 1:
            return  # in order, or the camera restarted its numbering
        lost = frame.seq - last_seq - 1
        self.metrics.frames_lost.inc(lost)
        if not self.opt.trigger:
            return
        if lost > MAX_LOST_EVENTS:
            self.alarm(f"frame lost: the camera's sequence jumped from {last_seq} to {frame.seq}; treated as a "
                       "restart, the parts in between could not be rejected", key="frame_lost", event=True)
            return
        for k in range(lost):
            t = last_t + (frame.t_capture - last_t) * (k + 1) / (lost + 1)
            ev = InspectionEvent(seq=last_seq + 1 + k, t_capture=t, wall_time=frame.wall_time, decision="safe_reject",
                                 score=None, threshold=self.threshold, reason="frame lost", source=frame.source,
                                 extra=self._extra({"lost_between": [last_seq, frame.seq]}))
            pid = self._pid()
            ev.event_id = self._event_id(pid)
            self._emit(Outcome(pid, ev))

    def _watch_reconnects(self) -> None:
        """Mirror the camera's reconnect count into the metrics."""
        n = self.camera.reconnects if self.camera is not None else 0
        if n > self._reconnects_seen:
            self.metrics.camera_reconnects.inc(n - self._reconnects_seen)
            self._reconnects_seen = n
            self.log(f"camera {self.source.name} reconnected")
            self.clear_alarm("camera_lost")
            self._camera_away = False

    def _camera_error(self, err: EdgeADError) -> None:
        """A live camera raised (unplugged, driver error): counted; its ReconnectingSource reopens it."""
        self.metrics.camera_errors.inc()

    def _source_failed(self, err: BaseException) -> None:
        """A replay that cannot be read ends the run with its error (reopening would replay it from the start)."""
        self.metrics.camera_errors.inc()
        msg = _text(err)
        self.alarm(f"camera error: {self.source.name}: {msg}", key="camera_error")
        self.fatal = err if isinstance(err, EdgeADError) else EdgeADError(
            f"reading {self.source.name} failed: {msg}", "check the file or folder")
        self.request_stop("source error")

    # ------------------------------------------------------------ inference thread

    def _infer(self) -> None:
        done = False
        while not done:
            part = self.infer_q.get()
            if part is None:
                break
            batch = [part]
            while len(batch) < self.opt.max_batch:
                try:
                    nxt = self.infer_q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    done = True
                    break
                batch.append(nxt)
            for _ in batch:
                self._release_slot()
            self._infer_batch(batch)
        self._infer_done.set()

    def _infer_batch(self, batch: list[Part]) -> None:
        now = time.monotonic()
        todo = []
        for p in batch:
            if not self.ledger.is_open(p.pid):
                continue  # the watchdog already fired its safe action
            if now >= p.deadline:
                self._safe(p, "deadline")
            else:
                p.lat["queue"] = _ms(now - p.t_queued)
                todo.append(p)
        if not todo:
            return
        self.metrics.batch.observe(len(todo))
        t0 = time.monotonic()
        try:
            scores, maps = self.detector.infer(np.stack([p.x for p in todo if p.x is not None]))
            scores = np.asarray(scores).reshape(-1)
            if len(scores) != len(todo) or len(maps) != len(todo):
                raise RuntimeError(f"the engine returned {len(scores)} scores for {len(todo)} frames")
        except Exception as e:
            msg = _text(e)
            for p in todo:
                self._safe(p, f"engine error: {msg}")
            return
        t1 = time.monotonic()
        for p, score, amap in zip(todo, scores, maps):
            p.lat["infer"] = _ms(t1 - t0)
            t2 = time.monotonic()
            score = float(score)
            try:
                if not math.isfinite(score):
                    raise ValueError(f"non-finite score {score}")
                reject = bool(self.decide(score, amap, self.calibration))
            except Exception as e:
                self._safe(p, f"decide error: {_text(e)}", score=score, amap=amap)
                continue
            t3 = time.monotonic()
            p.lat["decide"] = _ms(t3 - t2)
            if t3 > p.deadline:
                self._safe(p, "deadline", score=score, amap=amap)
                continue
            p.lat["total"] = _ms(t3 - p.frame.t_capture)
            ev = self._event(p, "reject" if reject else "pass", score)
            self._resolve(p, Outcome(p.pid, ev, p.frame.image, amap))

    # ------------------------------------------------------------ resolution (any thread)

    def _event(self, p: Part, decision: str, score: float | None, reason: str = "") -> InspectionEvent:
        f = p.frame
        return InspectionEvent(seq=f.seq, t_capture=f.t_capture, wall_time=f.wall_time, decision=decision,
                               score=score, threshold=self.threshold, reason=reason, source=f.source,
                               latency_ms=dict(p.lat), extra=self._extra(f.meta),
                               event_id=self._event_id(p.pid))

    def _extra(self, meta: dict[str, Any] | None) -> dict[str, Any]:
        """The event's extra fields: the frame's meta, and a station's camera name."""
        extra = dict(meta) if meta else {}
        if self.opt.camera:
            extra["camera"] = self.opt.camera
        return extra

    def _event_id(self, pid: int) -> str:
        """`<run id>-<n>`, n the loop's own part number: unique in the run even when a camera restarts its
        frame numbering, so a consumer can de-duplicate replayed events by id."""
        return f"{self.opt.run_id}-{pid}" if self.opt.run_id else str(pid)

    def _safe(self, p: Part, reason: str, score: float | None = None, amap: np.ndarray | None = None,
              resolved: bool = False) -> None:
        """The safe action; a score that came too late is kept in the event for review, never used."""
        p.lat["total"] = _ms(time.monotonic() - p.frame.t_capture)
        out = Outcome(p.pid, self._event(p, "safe_reject", score, reason), p.frame.image, amap)
        if resolved:  # popped from the ledger by the watchdog itself
            self._handle(out)
        else:
            self._resolve(p, out)

    def _resolve(self, p: Part, out: Outcome) -> None:
        if self.ledger.pop(p.pid) is None:
            self.metrics.late_decisions.inc()
            return
        self._emit(out)

    def _emit(self, out: Outcome) -> None:
        while True:
            try:
                self.out_q.put(out, timeout=1.0)
                return
            except queue.Full:
                if self._draining.is_set() and not self._threads[2].is_alive():
                    self.log(f"ERROR: part {out.event.seq} resolved after the outputs stopped: "
                             f"{out.event.decision} {out.event.reason}")
                    return

    # ------------------------------------------------------------ output thread (sinks, watchdog, records)

    def _output(self) -> None:
        next_tick = time.monotonic() + ALARM_TICK_S
        while True:
            nd = self.ledger.next_deadline()
            timeout = WATCHDOG_TICK_S if nd is None else min(WATCHDOG_TICK_S, max(0.0, nd - time.monotonic()))
            try:
                self._handle(self.out_q.get(timeout=timeout) if timeout > 0 else self.out_q.get_nowait())
            except queue.Empty:
                pass
            for p in self.ledger.overdue(time.monotonic()):
                self._safe(p, "deadline", resolved=True)
            if time.monotonic() >= next_tick:
                self.board.expire()   # event alarms past their hold time go (and the outputs with them)
                next_tick = time.monotonic() + ALARM_TICK_S
            if (self._draining.is_set() and self._infer_done.is_set() and len(self.ledger) == 0
                    and self.out_q.empty()):
                return

    def _handle(self, out: Outcome) -> None:
        ev, m = out.event, self.metrics
        if self.sinks is not None:
            try:
                self.sinks.reject(ev)  # time-critical first: the reject gate (each sink picks what it wants)
            except Exception as e:
                m.sink_errors.inc()
                self.alarm(f"sink error: {_text(e)}", key="sink_error", event=True)
            if self.sinks.should_stop:
                self.request_stop("reject output failed (on_sink_failure: stop)")
        m.parts.inc(decision=ev.decision)
        if ev.score is not None:
            m.score.observe(float(ev.score))
        for stage, v in ev.latency_ms.items():
            m.latency.observe(v / 1000.0, stage=stage)
        if ev.decision == "safe_reject":
            m.safe_actions.inc(reason=reason_key(ev.reason))
            self.alarm(f"safe action ({ev.reason}) for part seq {ev.seq}", key=f"safe_action_{reason_key(ev.reason)}",
                       event=True)
            if self.opt.safe_action == "stop":
                self.request_stop(f"safe action: {ev.reason}")
        try:  # records and the live view are best effort: a bug there must not stop the decisions
            if self.recorder is not None:   # the line first, then its images
                self.recorder.record(out.pid, ev, out.image, out.amap)
            if self.live is not None:   # every part (the camera frame, or None for a frame lost): it counts them
                self.live.update(out.image, out.amap, ev)
        except Exception as e:
            m.records_dropped.inc(kind="error")
            self.log(f"WARNING: recording part {ev.seq} failed: {e!r}")

    # ------------------------------------------------------------ reporting

    def health(self) -> dict[str, Any]:
        m = self.metrics
        now = time.monotonic()
        active = self.board.active()
        status = "stopped" if self.ended else "stopping" if self._stop.is_set() else "alarm" if active else "ok"
        return {"status": status, "camera": self.camera_status(),
                "uptime_s": round(now - self.started, 3) if self.started else 0.0,
                "parts": int(m.parts.total()), "safe_actions": int(m.safe_actions.total()),
                "in_flight": len(self.ledger), "infer_queue": self.infer_q.qsize(),
                "last_alarm": None if self.last_alarm is None else
                {k: v for k, v in self.last_alarm.items() if k != "monotonic"},
                "stopped_by": self.stopped_by, "warnings": list(self.warnings),
                "alarms": active, "alarm_counts": self.board.counts()}

    def camera_status(self) -> dict[str, Any]:
        """The camera on its own: up (not lost, stalled or failed), why not, frame rate and counts."""
        m = self.metrics
        keys = ("camera_lost", "camera_stalled", "camera_error")
        down = [a for a in self.board.active() if a["key"] in keys]
        running = self.started is not None and not self.ended
        return {"name": self.source.name, "ok": bool(running and not down and not self._camera_away),
                "detail": "; ".join(a["reason"] for a in down) or ("" if running else "not running"),
                "fps": m.frame_rate.fps(), "frames": int(m.frames.total()), "frames_lost": int(m.frames_lost.total()),
                "reconnects": int(m.camera_reconnects.total()), "errors": int(m.camera_errors.total()),
                "last_frame_age_s": m.frame_rate.age_s()}

    def summary(self) -> dict[str, Any]:
        m = self.metrics
        decisions = m.parts.by_label("decision")
        p50, p99 = m.latency.percentiles([50, 99], stage="total")
        elapsed = ((self.ended or time.monotonic()) - self.started) if self.started else 0.0
        parts = int(sum(decisions.values()))
        return {
            "frames": int(m.frames.total()), "parts": parts,
            "passes": int(decisions.get("pass", 0)), "rejects": int(decisions.get("reject", 0)),
            "safe_actions": int(decisions.get("safe_reject", 0)),
            "safe_actions_by_reason": {k: int(v) for k, v in sorted(m.safe_actions.by_label("reason").items())},
            "latency_ms": {"p50": None if p50 is None else round(p50 * 1000, 3),
                           "p99": None if p99 is None else round(p99 * 1000, 3)},
            "frames_lost": int(m.frames_lost.total()),
            "frames_skipped": {k: int(v) for k, v in sorted(m.frames_skipped.by_label("reason").items())},
            "late_decisions": int(m.late_decisions.total()),
            "camera_errors": int(m.camera_errors.total()), "reconnects": int(m.camera_reconnects.total()),
            "alarms": int(m.alarms.total()), "sink_errors": int(m.sink_errors.total()),
            "records_dropped": {k: int(v) for k, v in sorted(m.records_dropped.by_label("kind").items())},
            "record_write_errors": {k: int(v) for k, v in sorted(m.record_write_errors.by_label("kind").items())},
            "alarm_counts": self.board.counts(), "alarms_active": [a["key"] for a in self.board.active()],
            "elapsed_s": round(elapsed, 3), "parts_per_s": round(parts / elapsed, 2) if elapsed > 0 else None,
            "stopped_by": self.stopped_by,
        }
