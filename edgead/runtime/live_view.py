"""What the operator's live page shows: the camera frame with the anomaly overlay on its ROI, counters
since start and per hour, the last rejects and a score history (edgead.runtime.http serves it).

The inspection path only stores references: `update()` adds to a few counters and bounded deques and
keeps the latest frame (O(1), no copy, no encoding). Everything costly happens in the HTTP threads
that ask for it: the stream's JPEG once per new frame, a reject's JPEG once, when it is first asked
for. Memory is bounded: HISTORY points, REJECT_IMAGES rejects, and of the rejects nobody has looked
at yet only `raw_budget` bytes of camera frames are kept (past it the oldest lose their image, said
so in /live.json). No torch here (edge path).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import cv2
import numpy as np

from edgead.preprocess import PreprocessSpec, as_rgb_uint8
from edgead.protocols import InspectionEvent
from edgead.runtime.overlay import heatmap_overlay

VIEW_MIN_HEIGHT = 240       # tiny frames are enlarged so the banner stays readable
STREAM_MAX_WIDTH = 960      # the stream is scaled down to this (the browser scales it again)
REJECT_MAX_WIDTH = 800      # a reject's JPEG (the strip's thumbnail and the enlarged view)
REJECTS_LISTED = 20         # the strip in /live.json
REJECT_IMAGES = 40          # rejects kept: a page that lists the 20 newest never asks for one gone
HISTORY = 600               # score points for the chart
RAW_BUDGET = 64 * 1024 * 1024   # bytes of camera frames held for rejects not encoded yet
LEGEND_STOPS = 32
_COLORS = {"pass": (40, 160, 40), "reject": (200, 30, 30), "safe_reject": (230, 120, 0)}

Latest = Tuple[np.ndarray, Optional[np.ndarray], InspectionEvent]


def legend_threshold(vrange: Tuple[float, float]) -> float:
    """The threshold on the overlay's colour scale: overlay.heat_range puts it at 80 % of the range."""
    lo, hi = float(vrange[0]), float(vrange[1])
    return lo + (hi - lo) / 1.25


def legend_colors(stops: int = LEGEND_STOPS) -> List[str]:
    """The overlay's colormap (OpenCV JET, as heatmap_overlay applies it) as CSS colours, low to high."""
    u8 = np.linspace(0, 255, stops).round().astype(np.uint8)[:, None]
    rgb = cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)[:, 0]
    return ["#%02x%02x%02x" % tuple(int(c) for c in px) for px in rgb]


def finite(x: Any, digits: int = 6) -> Optional[float]:
    """A number JSON can carry (None for NaN, inf or missing), rounded to `digits` significant digits."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return float(f"{v:.{digits}g}") if math.isfinite(v) else None


def margin(ev: InspectionEvent) -> Optional[float]:
    """Score minus threshold, in score units (as `edgead predict` writes it): > 0 is above the threshold."""
    s, t = finite(ev.score, 12), finite(ev.threshold, 12)
    return None if s is None or t is None else finite(s - t)


def render(image: np.ndarray, amap: Optional[np.ndarray], spec: PreprocessSpec, vrange: Tuple[float, float],
           max_width: int) -> np.ndarray:
    """The camera frame (scaled to at most max_width) with the anomaly map coloured over its ROI.

    The map covers the ROI stretched to the model input (preprocess crops, then resizes), so it is
    resized back onto the ROI's rectangle; a ROI outside this frame gets no overlay (nothing aligns).
    """
    src = as_rgb_uint8(image)
    h, w = src.shape[:2]
    f = min(1.0, max_width / w)
    if h * f < VIEW_MIN_HEIGHT:
        f = VIEW_MIN_HEIGHT / h
    if f == 1.0:
        view = src.copy()   # never draw into the frame the recorder may still be writing
    else:
        size = (max(1, round(w * f)), max(1, round(h * f)))
        view = cv2.resize(src, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_NEAREST)
    x, y, rw, rh = spec.roi if spec.roi is not None else (0, 0, w, h)
    if x + rw > w or y + rh > h:
        return view
    x0, y0 = round(x * f), round(y * f)
    x1, y1 = max(x0 + 1, round((x + rw) * f)), max(y0 + 1, round((y + rh) * f))
    if amap is not None:
        view[y0:y1, x0:x1] = heatmap_overlay(view[y0:y1, x0:x1], amap, *vrange)
    if spec.roi is not None:
        cv2.rectangle(view, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), 1)
    return view


def banner(view: np.ndarray, ev: Optional[InspectionEvent]) -> np.ndarray:
    """The decision bar along the top (the stream is also watched without the page)."""
    if ev is None:
        text, color = "waiting for the first part", (200, 200, 200)
    else:
        score = "-" if finite(ev.score) is None else f"{ev.score:.4g}"
        text = f"#{ev.seq} {ev.decision.upper()} score {score}" + (f" ({ev.reason})" if ev.reason else "")
        color = _COLORS.get(ev.decision, (200, 200, 200))
    cv2.rectangle(view, (0, 0), (view.shape[1], 22), color, -1)
    cv2.putText(view, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return view


def encode_jpeg(view: np.ndarray, quality: int = 80) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(view, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


class Counts:
    """Parts by outcome. `inspected`: scored (pass or reject); `rejected`: every part the reject gate got
    (safe actions included); the reject rate is rejected / parts."""

    __slots__ = ("parts", "inspected", "passed", "rejected", "safe_actions")

    def __init__(self) -> None:
        self.parts = self.inspected = self.passed = self.rejected = self.safe_actions = 0

    def add(self, decision: str) -> None:
        self.parts += 1
        if decision == "pass":
            self.passed += 1
            self.inspected += 1
        elif decision == "reject":
            self.rejected += 1
            self.inspected += 1
        else:   # safe_reject: not inspected in time, rejected all the same
            self.rejected += 1
            self.safe_actions += 1

    def to_dict(self) -> Dict[str, Any]:
        return {"parts": self.parts, "inspected": self.inspected, "passed": self.passed, "rejected": self.rejected,
                "safe_actions": self.safe_actions,
                "reject_rate": finite(self.rejected / self.parts, 4) if self.parts else None}


class _Reject:
    """One reject of the ring: its event, its frame until encoded (then only the JPEG)."""

    __slots__ = ("id", "event", "t", "image", "amap", "nbytes", "jpeg", "dropped")

    def __init__(self, rid: int, event: InspectionEvent, t: float, image: Optional[np.ndarray],
                 amap: Optional[np.ndarray]) -> None:
        self.id, self.event, self.t, self.image, self.amap = rid, event, t, image, amap
        self.nbytes = (image.nbytes if image is not None else 0) + (amap.nbytes if amap is not None else 0)
        self.jpeg: Optional[bytes] = None
        self.dropped = False

    def to_dict(self) -> Dict[str, Any]:
        ev = self.event
        kept = self.jpeg is not None or self.image is not None
        return {"id": self.id, "seq": ev.seq, "event_id": ev.event_id, "decision": ev.decision, "reason": ev.reason,
                "score": finite(ev.score), "threshold": finite(ev.threshold), "margin": margin(ev),
                "wall_time": ev.wall_time, "t": round(self.t, 3),
                "url": f"/rejects/{self.id}.jpg" if kept else None,
                "image": "kept" if kept else ("dropped (memory)" if self.dropped else "none")}


def _hour_start(t: float) -> float:
    """Start of the local clock hour holding t (unix seconds): the operator's "this hour"."""
    lt = time.localtime(t)
    return float(math.floor(t) - lt.tm_min * 60 - lt.tm_sec)


class LiveView:
    """The latest inspected part and the page's numbers, fed by the run loop's output thread."""

    def __init__(self, spec: PreprocessSpec, vrange: Tuple[float, float], *, map_threshold: Optional[float] = None,
                 raw_budget: int = RAW_BUDGET, clock: Callable[[], float] = time.time) -> None:
        self.spec, self.vrange, self.clock, self.raw_budget = spec, vrange, clock, raw_budget
        self.map_threshold = legend_threshold(vrange) if map_threshold is None else map_threshold
        self._legend = {"vmin": finite(vrange[0]), "vmax": finite(vrange[1]), "threshold": finite(self.map_threshold),
                        "colors": legend_colors()}
        self._cond = threading.Condition()
        self._encode_lock = threading.Lock()   # one encoder of reject JPEGs at a time: each is made once
        self._latest: Optional[Latest] = None
        self._event: Optional[InspectionEvent] = None
        self._version = 0
        self._cache: Optional[Tuple[int, bytes]] = None
        self.started = clock()
        self._total = Counts()
        self._hours: Deque[Tuple[float, Counts]] = deque(maxlen=2)
        self._history: Deque[Tuple[float, Optional[float], str]] = deque(maxlen=HISTORY)
        self._rejects: Deque[_Reject] = deque()
        self._next_reject = 1
        self._raw_bytes = 0

    # ------------------------------------------------------------ the inspection path (O(1) each)

    def update(self, image: Optional[np.ndarray], amap: Optional[np.ndarray], event: InspectionEvent) -> None:
        """Every resolved part, with its camera frame (None when the part had none: a frame lost)."""
        now = self.clock()
        hour = _hour_start(now)
        with self._cond:
            self._event = event
            self._total.add(event.decision)
            if not self._hours or self._hours[-1][0] != hour:
                self._hours.append((hour, Counts()))
            self._hours[-1][1].add(event.decision)
            self._history.append((now, event.score, event.decision))
            if event.rejected:
                self._add_reject(_Reject(self._next_reject, event, now, image, amap))
                self._next_reject += 1
            if image is not None:
                self._latest = (image, amap, event)
                self._version += 1
                self._cond.notify_all()

    def _add_reject(self, r: _Reject) -> None:
        if len(self._rejects) >= REJECT_IMAGES:
            self._let_go(self._rejects.popleft())
        self._rejects.append(r)
        if r.image is not None:
            self._raw_bytes += r.nbytes
        for old in self._rejects:   # nobody looking: keep the newest frames within the budget
            if self._raw_bytes <= self.raw_budget:
                break
            if old.image is not None and old is not r:
                self._let_go(old)
                old.dropped = True

    def _let_go(self, r: _Reject) -> None:
        if r.image is not None:
            self._raw_bytes -= r.nbytes
        r.image = r.amap = None

    # ------------------------------------------------------------ the HTTP threads

    def jpeg(self, after: int = -1, timeout: float = 1.0) -> Tuple[int, bytes]:
        """(version, JPEG) of a frame newer than `after`, waiting up to timeout; a placeholder before the first."""
        with self._cond:
            self._cond.wait_for(lambda: self._version > after, timeout)
            version, latest = self._version, self._latest
            if self._cache is not None and self._cache[0] == version:
                return self._cache
        if latest is None:
            view = banner(np.full((VIEW_MIN_HEIGHT, 320, 3), 40, np.uint8), None)
        else:
            image, amap, ev = latest
            view = banner(render(image, amap, self.spec, self.vrange, STREAM_MAX_WIDTH), ev)
        data = encode_jpeg(view)
        with self._cond:
            self._cache = (version, data)
        return version, data

    def reject_jpeg(self, rid: int) -> Optional[bytes]:
        """The JPEG of reject `rid` (encoded on first request), or None when it is not (or no longer) kept."""
        with self._encode_lock:
            with self._cond:
                r = next((x for x in self._rejects if x.id == rid), None)
                if r is None or r.jpeg is not None:
                    return None if r is None else r.jpeg
                image, amap = r.image, r.amap
            if image is None:
                return None
            data = encode_jpeg(banner(render(image, amap, self.spec, self.vrange, REJECT_MAX_WIDTH), r.event))
            with self._cond:
                r.jpeg = data
                self._let_go(r)
            return data

    def snapshot(self) -> Dict[str, Any]:
        """What /live.json serves: counters, the current part, the last rejects, the score history, the legend."""
        now = self.clock()
        hour = _hour_start(now)
        with self._cond:
            ev = self._event
            hours = {start: c.to_dict() for start, c in self._hours}
            total = self._total.to_dict()
            history = list(self._history)
            rejects = [r.to_dict() for r in list(self._rejects)[-REJECTS_LISTED:]]
            version = self._version
        empty = Counts().to_dict()
        current = None if ev is None else {
            "seq": ev.seq, "event_id": ev.event_id, "decision": ev.decision, "reason": ev.reason,
            "score": finite(ev.score), "threshold": finite(ev.threshold), "margin": margin(ev),
            "wall_time": ev.wall_time}
        return {
            "now": round(now, 3), "started": round(self.started, 3), "frame_version": version,
            "threshold": None if ev is None else finite(ev.threshold),
            "legend": self._legend, "current": current,
            "counts": {"since_start": total, "this_hour": hours.get(hour, empty),
                       "last_hour": hours.get(hour - 3600.0, empty), "hour_start": hour},
            "rejects": rejects[::-1],
            "history": [[round(t, 3), finite(s), d] for t, s, d in history],
        }
