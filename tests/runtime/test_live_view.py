"""The live view's numbers and images: counters since start and per hour, the reject ring (bounded,
each JPEG made once, frames let go past the memory budget), the score history, the camera frame
with the map on its ROI, and /live.json, /rejects/N.jpg, / on a real HttpView (synthetic events)."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

from live_view_fixtures import FRAME_H, FRAME_W, ROI, SPEC, THRESHOLD, VRANGE, Feed, Health, event, part, serve

from edgead.preprocess import PreprocessSpec
from edgead.runtime import live_view as lv
from edgead.runtime.live_page import PAGE
from edgead.runtime.live_view import LiveView, legend_colors, legend_threshold, render
from edgead.runtime.overlay import heat_range


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _hour(t: float) -> float:
    lt = time.localtime(t)
    return float(int(t) - lt.tm_min * 60 - lt.tm_sec)


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def _strict_json(body: bytes):
    def refuse(name):
        raise AssertionError(f"{name} in JSON: a browser's JSON.parse refuses it")
    return json.loads(body, parse_constant=refuse)


def _frame():
    return np.full((FRAME_H, FRAME_W, 3), 100, np.uint8)


def test_counters_since_start_and_per_clock_hour():
    start = _hour(time.time()) + 3600 * 5 + 10       # 10 s into some local hour
    clock = Clock(start)
    live = LiveView(SPEC, VRANGE, clock=clock)
    for i, d in enumerate(["pass", "pass", "reject", "safe_reject", "pass"]):
        live.update(_frame(), None, event(i, d, None if d == "safe_reject" else 1.0))
    c = live.snapshot()["counts"]
    assert c["since_start"] == {"parts": 5, "inspected": 4, "passed": 3, "rejected": 2, "safe_actions": 1,
                                "reject_rate": 0.4}
    assert c["this_hour"] == c["since_start"] and c["last_hour"]["parts"] == 0 and c["last_hour"]["reject_rate"] is None
    clock.t = start + 3600                            # the next hour: last hour holds what came before
    live.update(None, None, event(9, "safe_reject", None, reason="frame lost"))
    c = live.snapshot()["counts"]
    assert c["since_start"]["parts"] == 6 and c["since_start"]["safe_actions"] == 2
    assert c["this_hour"]["parts"] == 1 and c["this_hour"]["reject_rate"] == 1.0
    assert c["last_hour"]["parts"] == 5 and c["hour_start"] == _hour(clock.t)
    clock.t = start + 3 * 3600                         # hours without parts count nothing
    c = live.snapshot()["counts"]
    assert c["this_hour"]["parts"] == 0 and c["last_hour"]["parts"] == 0 and c["since_start"]["parts"] == 6


def test_update_only_stores_references_and_a_lost_frame_keeps_the_picture():
    live = LiveView(SPEC, VRANGE)
    frame, amap = _frame(), np.zeros((64, 64), np.float32)
    live.update(frame, amap, event(1, "reject", 2.0))
    assert live._latest[0] is frame and live._latest[1] is amap and live._cache is None   # nothing encoded
    assert live._rejects[-1].image is frame and live._rejects[-1].jpeg is None
    version = live._version
    live.update(None, None, event(2, "safe_reject", None, reason="frame lost"))   # counted, no new picture
    assert live._version == version and live._latest[0] is frame
    snap = live.snapshot()
    assert snap["current"]["seq"] == 2 and snap["rejects"][0]["image"] == "none" and snap["rejects"][0]["url"] is None
    t0 = time.perf_counter()
    for i in range(2000):
        live.update(frame, amap, event(i, "reject" if i % 2 else "pass", 1.0 + i % 3))
    assert (time.perf_counter() - t0) / 2000 < 1e-3    # microseconds each: the inspection path never waits


def test_reject_ring_is_bounded_and_each_jpeg_is_made_once():
    live = LiveView(SPEC, VRANGE)
    rng = np.random.default_rng(0)
    for seq in range(1, lv.REJECT_IMAGES + 11):
        frame, amap, score = part(rng, seq, True)
        live.update(frame, amap, event(seq, "reject", score))
    rejects = live.snapshot()["rejects"]
    assert len(rejects) == lv.REJECTS_LISTED
    assert [r["seq"] for r in rejects] == list(range(lv.REJECT_IMAGES + 10, lv.REJECT_IMAGES + 10 - lv.REJECTS_LISTED, -1))
    newest = rejects[0]
    assert newest["margin"] == pytest.approx(newest["score"] - THRESHOLD, abs=1e-5)
    assert newest["url"] == f"/rejects/{newest['id']}.jpg" and newest["threshold"] == THRESHOLD
    assert len(live._rejects) == lv.REJECT_IMAGES                       # older ones left the ring
    assert live.reject_jpeg(1) is None and live.reject_jpeg(10 ** 6) is None
    data = live.reject_jpeg(newest["id"])
    assert data is not None and live.reject_jpeg(newest["id"]) is data     # encoded once, then served
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[1] == FRAME_W and img.shape[0] == FRAME_H            # the camera frame, not the model input
    raw = live._raw_bytes
    assert live._rejects[-1].image is None and raw == sum(r.nbytes for r in live._rejects if r.image is not None)


def test_frames_of_rejects_nobody_looked_at_are_let_go_past_the_budget():
    frame = _frame()
    live = LiveView(SPEC, VRANGE, raw_budget=3 * frame.nbytes + 10)
    for seq in range(1, 7):
        live.update(frame.copy(), None, event(seq, "reject", 2.0))
    rejects = live.snapshot()["rejects"]
    assert [r["image"] for r in rejects] == ["kept"] * 3 + ["dropped (memory)"] * 3
    assert all(r["url"] is None for r in rejects[3:]) and live.reject_jpeg(rejects[-1]["id"]) is None
    assert live._raw_bytes <= live.raw_budget
    for r in rejects[:3]:
        assert live.reject_jpeg(r["id"]) is not None
    assert live._raw_bytes == 0 and [r["image"] for r in live.snapshot()["rejects"][:3]] == ["kept"] * 3


def test_score_history_is_bounded_and_json_safe():
    live = LiveView(SPEC, VRANGE)
    for i in range(lv.HISTORY + 50):
        live.update(None, None, event(i, "pass", float(i)))
    live.update(None, None, event(9999, "safe_reject", float("nan"), reason="engine error: non-finite score"))
    snap = live.snapshot()
    hist = snap["history"]
    assert len(hist) == lv.HISTORY and hist[0][1] == 51.0 and hist[-1][1] is None and hist[-1][2] == "safe_reject"
    assert all(a[0] <= b[0] for a, b in zip(hist, hist[1:]))
    assert snap["current"]["score"] is None and snap["current"]["margin"] is None
    _strict_json(json.dumps(snap, allow_nan=False).encode())


def test_the_frame_shows_the_map_on_its_roi_only():
    frame = np.full((FRAME_H, FRAME_W, 3), 100, np.uint8)
    before = frame.copy()
    amap = np.full((64, 64), VRANGE[1], np.float32)                        # all red
    view = render(frame, amap, SPEC, VRANGE, 2000)
    assert view.shape == frame.shape and np.array_equal(frame, before)   # drawn on a copy
    x, y, w, h = ROI
    inside = view[y + 5:y + h - 5, x + 5:x + w - 5].reshape(-1, 3)
    assert (inside[:, 0] > inside[:, 2] + 30).all()                      # red over the ROI
    assert np.array_equal(view[:y - 2], frame[:y - 2]) and np.array_equal(view[:, x + w + 2:], frame[:, x + w + 2:])
    big = render(np.zeros((2000, 3000), np.uint16), amap, PreprocessSpec(64, 64, roi=(1000, 500, 800, 800)),
                 VRANGE, lv.STREAM_MAX_WIDTH)
    assert big.shape == (640, 960, 3)                                    # scaled to the stream width
    tiny = render(np.zeros((64, 64, 3), np.uint8), amap, PreprocessSpec(64, 64), VRANGE, lv.STREAM_MAX_WIDTH)
    assert tiny.shape[0] == lv.VIEW_MIN_HEIGHT
    off = render(frame, amap, PreprocessSpec(64, 64, roi=(400, 300, 200, 200)), VRANGE, 2000)   # outside the frame
    assert np.array_equal(off, frame)


def test_the_legend_is_the_overlays_colormap_and_marks_its_threshold():
    colors = legend_colors(3)
    assert colors[0] == "#000080" and colors[-1] == "#800000"            # JET: dark blue .. dark red, as drawn
    cal = {"threshold": 2.0, "good": {"scores": {"p50": 1.2}}}
    assert legend_threshold(heat_range(cal)) == pytest.approx(2.0)
    area = {"threshold": 30.0, "area": {"pixel_threshold": 0.9}, "good": {"area_scores": {"p50": 0.5}}}
    assert legend_threshold(heat_range(area)) == pytest.approx(0.9)
    legend = LiveView(SPEC, heat_range(cal)).snapshot()["legend"]
    assert legend["threshold"] == pytest.approx(2.0) and legend["vmin"] == 1.2 and len(legend["colors"]) == lv.LEGEND_STOPS


def test_live_json_rejects_and_page_over_http():
    live = LiveView(SPEC, VRANGE)
    health = Health(live, outputs=False, alarm=False)
    view = serve(live, lambda: {"status": "starting"})
    try:
        base = "http://%s:%d" % view.address
        code, ctype, body = _get(base + "/live.json")                      # before the first part
        snap = _strict_json(body)
        assert code == 200 and ctype == "application/json" and snap["current"] is None and snap["rejects"] == []
        assert snap["health"] == {"status": "starting"} and snap["history"] == [] and snap["threshold"] is None
        view.health = health
        feed = Feed(live, reject_every=2, safe_every=5)
        for _ in range(12):
            feed.one()
        snap = _strict_json(_get(base + "/live.json")[2])
        assert snap["counts"]["since_start"]["parts"] == 12 and snap["current"]["seq"] == 12
        assert snap["health"]["status"] == "ok" and snap["health"]["outputs"] == [] and len(snap["history"]) == 12
        kept = [r for r in snap["rejects"] if r["url"]]
        assert kept and all(r["decision"] in ("reject", "safe_reject") for r in snap["rejects"])
        code, ctype, body = _get(base + kept[0]["url"])
        assert code == 200 and ctype == "image/jpeg" and body[:2] == b"\xff\xd8"
        for missing in ("/rejects/999999.jpg", "/rejects/abc.jpg", "/rejects/.jpg"):
            assert _get(base + missing)[0] == 404
        img = cv2.imdecode(np.frombuffer(_get(base + "/frame.jpg")[2], np.uint8), cv2.IMREAD_COLOR)
        assert img.shape[:2] == (FRAME_H, FRAME_W)
        view.health = lambda: {"status": "ok", "camera": {"fps": float("nan")}}
        assert _strict_json(_get(base + "/live.json")[2])["health"]["camera"]["fps"] is None
        assert _strict_json(_get(base + "/health")[2])["camera"]["fps"] is None
        view.health = lambda: 1 / 0
        assert _strict_json(_get(base + "/live.json")[2])["health"]["status"] == "unknown"
        code, ctype, page = _get(base + "/")
        assert code == 200 and ctype.startswith("text/html") and page == PAGE
    finally:
        view.stop()


def test_the_page_is_self_contained():
    page = PAGE.decode()
    refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)['"]""", page) + re.findall(r"url\(([^)]*)\)", page)
    assert refs and all(r.startswith("/") and not r.startswith("//") or r.startswith("data:") for r in refs), refs
    assert "http://" not in page and "https://" not in page and "@import" not in page and "@font-face" not in page
    for needed in ("/live.json", "/stream", "/alarms/ack", "Authorization", "Bearer"):
        assert needed in page


def test_the_stream_closes_each_frame_at_once():
    """A browser shows an MJPEG part once it has read the next part's headers: they follow each frame at
    once, so the stream shows the newest part, not the one before it."""
    from edgead.runtime.http import BOUNDARY

    live = LiveView(SPEC, VRANGE)
    view = serve(live, lambda: {"status": "ok"})
    try:
        feed = Feed(live)
        feed.one()
        with urllib.request.urlopen("http://%s:%d/stream" % view.address, timeout=5) as r:
            assert r.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
            head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n\r\n".encode()
            body = r.read(len(head))
            while body.count(head) < 2:      # the first frame and the headers after it, with no second part
                body += r.read1(65536)
        assert body.startswith(head) and body.endswith(b"\r\n" + head)
        jpeg = body[len(head):-len(head) - 2]
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape[:2] == (FRAME_H, FRAME_W) and img[3, 3, 1] > 120 > img[3, 3, 2]   # the frame, green banner
    finally:
        view.stop()
