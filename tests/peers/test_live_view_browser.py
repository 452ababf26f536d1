"""The operator's live page in a real headless Chromium (Debian `chromium`, installed by .ci/run),
driven over its DevTools protocol, against a real HttpView fed synthetic parts (no model).

Before the first part and with no output configured it renders with no console error; once parts
flow, every element the operator needs is there and its value moves between two reads; a reject
enlarges on click; Acknowledge asks for the token when the box refuses it (403) and succeeds with it;
the screenshot is not blank. Under EDGEAD_REQUIRE_PEERS=1 a missing chromium fails (tests/conftest.py).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from live_view_fixtures import BANNER_RED, FRAME_W, SPEC, VRANGE, Chromium, Feed, Health, chromium_binary, serve

import edgead.runtime.http as http_mod
from edgead.runtime.live_view import LiveView

pytestmark = pytest.mark.skipif(chromium_binary() is None, reason="Debian chromium not installed (.ci/run installs it)")

TOKEN = "s3cret-token-for-the-line"
IDS = ("status", "clock", "uptime", "stream", "cur-decision", "cur-seq", "cur-score", "cur-threshold", "cur-margin",
       "legend", "legend-vmin", "legend-vmax", "legend-thr", "chart", "counts", "alarms", "ack-all", "cam-name",
       "cam-state", "cam-fps", "cam-frames", "cam-lost", "cam-reconnects", "cam-age", "outputs", "rejects", "lightbox")
# What the page shows, read in one go: the texts of the elements above and what the canvases and images hold.
STATE = """JSON.stringify((() => {
  const $ = id => document.getElementById(id), t = id => $(id) ? $(id).textContent : null;
  const texts = {};
  for (const id of %s) texts[id] = t(id);
  for (const td of document.querySelectorAll('#counts td[id]')) texts[td.id] = td.textContent;
  const thumbs = [...document.querySelectorAll('#rejects .thumb img')];
  return {texts, missing: %s.filter(id => !$(id)), polls: +document.body.getAttribute('data-polls'),
          points: +$('chart').getAttribute('data-points'), legend: +$('legend').getAttribute('data-drawn'),
          stream: $('stream').naturalWidth, thumbs: thumbs.length, thumbs_loaded: thumbs.filter(i => i.naturalWidth > 0).length,
          outputs: $('outputs').tBodies[0].rows.length, no_outputs: getComputedStyle($('no-outputs')).display !== 'none',
          alarm_items: $('alarms').children.length, token_row: getComputedStyle($('token-row')).display !== 'none',
          lightbox: getComputedStyle($('lightbox')).display !== 'none', caption: t('lb-caption'),
          lb_loaded: $('lb-img').naturalWidth, ack_msg: t('ack-msg')};
})())""" % (json.dumps(IDS), json.dumps(IDS))

def _state(page) -> dict:
    return json.loads(page.evaluate(STATE))


def test_live_page_in_headless_chromium(monkeypatch, tmp_path):
    live = LiveView(SPEC, VRANGE)
    health = Health(live, outputs=True, alarm=True, fps=25.0)
    current = {"health": lambda: {"status": "starting"}}
    view = serve(live, lambda: current["health"](), ack=health.ack, token=TOKEN)
    feed = Feed(live, rate=25.0)
    try:
        with Chromium("http://%s:%d/" % view.address, 1280, 1100) as page:
            # before the first part, no output configured, a run still starting
            page.wait_for("document.body && +document.body.getAttribute('data-polls') >= 2", 15)
            s = _state(page)
            assert s["missing"] == [] and page.console_errors() == []
            assert s["texts"]["cur-decision"] == "no part yet" and s["points"] == 0 and s["thumbs"] == 0
            assert s["no_outputs"] and s["texts"]["status"] == "starting" and s["legend"] > 0
            assert s["texts"]["legend-thr"].startswith("threshold ")

            current["health"] = health
            feed.start()
            page.wait_for("+(document.getElementById('c-0-parts') || {}).textContent > 10 && "
                          "document.querySelectorAll('#rejects .thumb img').length > 0 && "
                          f"document.getElementById('stream').naturalWidth == {FRAME_W}", 15)   # the camera frame
            a = _state(page)
            page.pump(1.6)
            b = _state(page)
            assert page.console_errors() == []
            assert b["polls"] >= a["polls"] + 1
            for moving in ("clock", "uptime", "cur-seq", "c-0-parts", "c-1-parts", "c-0-passed", "cam-fps"):
                assert a["texts"][moving] != b["texts"][moving], moving
            assert int(b["texts"]["c-0-rejected"]) >= int(a["texts"]["c-0-rejected"]) > 0
            assert b["points"] > a["points"] > 0 and b["stream"] == FRAME_W     # the camera frame, not 64 px
            assert b["texts"]["status"] == "alarm" and b["alarm_items"] == 1 and b["outputs"] == 2
            assert not b["no_outputs"] and b["texts"]["cam-name"] == "gige:Line1-Cam"
            assert b["texts"]["cur-threshold"] == "1.5" and b["texts"]["cur-margin"] not in ("", "-")
            page.wait_for("[...document.querySelectorAll('#rejects .thumb img')].every(i => i.naturalWidth > 0)", 10)

            page.evaluate("document.querySelector('#rejects .thumb').click()")
            page.wait_for("document.getElementById('lb-img').naturalWidth > 0", 10)
            s = _state(page)
            assert s["lightbox"] and "score " in s["caption"] and "threshold 1.5" in s["caption"]
            page.evaluate("document.getElementById('lightbox').click()")
            assert not _state(page)["lightbox"]
            assert page.console_errors() == []

            # the line stops on a reject: the stream shows that part (not the one before), the page agrees
            feed.close()
            while True:
                last = feed.one()
                if last.decision == "reject":
                    break
            page.wait_for(f"document.getElementById('cur-seq').textContent === '#{last.seq}'", 10)
            page.wait_for(BANNER_RED, 5)
            assert _state(page)["texts"]["cur-decision"] == "REJECT"

            # from another machine (the box refuses it without the token): 403, the page asks, then retries
            monkeypatch.setattr(http_mod, "is_loopback", lambda host: False)
            page.evaluate("document.getElementById('ack-all').click()")
            page.wait_for("getComputedStyle(document.getElementById('token-row')).display !== 'none'", 10)
            assert health.acked == [] and health.alarms
            page.evaluate(f"document.getElementById('token').value = {json.dumps(TOKEN)}; "
                          "document.getElementById('token-send').click()")
            page.wait_for("document.getElementById('alarms').children.length === 0", 10)
            s = _state(page)
            assert health.acked == [None] and "acknowledged: output_failure:plc" in s["ack_msg"]
            assert not s["token_row"] and s["texts"]["status"] == "ok"
            errors = page.console_errors()
            assert errors and all("403" in e for e in errors), errors   # the refused attempt, nothing else

            shot = cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), cv2.IMREAD_COLOR)
        assert shot is not None and shot.shape[:2] == (1100, 1280) and shot.std() > 20
    finally:
        feed.close()
        view.stop()
