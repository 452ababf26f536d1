"""A station's live page (several cameras behind one server) in a real headless Chromium: a button per
camera coloured by its status, the chosen camera's numbers, stream and rejects, switching on a click,
acknowledging the shown camera's alarms only, no console error."""

from __future__ import annotations

import pytest

from live_view_fixtures import SPEC, VRANGE, Chromium, Feed, Health, chromium_binary

from edgead.runtime.http import CameraViews, HttpView
from edgead.runtime.live_view import LiveView
from edgead.runtime.station import station_status

pytestmark = pytest.mark.skipif(chromium_binary() is None, reason="Debian chromium not installed (.ci/run installs it)")

PARTS = "+(document.getElementById('c-0-parts') || {}).textContent"
BUTTONS = "[...document.querySelectorAll('#cameras button')].map(b => b.dataset.camera + ':' + b.className).join(' ')"


def test_the_page_shows_one_camera_at_a_time_and_switches(tmp_path):
    lives = {"left": LiveView(SPEC, VRANGE), "right": LiveView(SPEC, VRANGE)}
    health = {"left": Health(lives["left"], alarm=False), "right": Health(lives["right"], alarm=True)}
    acked: list = []

    def station() -> dict:
        cams = {n: h() for n, h in health.items()}
        return {"status": station_status([c["status"] for c in cams.values()]), "cameras": cams}

    def ack_camera(name, key):
        acked.append(name)
        return health[name].ack(key)

    view = HttpView("127.0.0.1", 0, None, station, lambda: "", ack=lambda key: [],
                    cameras=CameraViews(lives, lambda n: health[n](), ack_camera))
    view.start()
    feeds = [Feed(lives["left"], rate=25.0), Feed(lives["right"], rate=5.0, start_seq=900000)]
    for f in feeds:
        f.start()
    try:
        with Chromium("http://%s:%d/?camera=right" % view.address, 1280, 1000) as page:
            page.wait_for(f"{PARTS} > 2 && document.querySelectorAll('#cameras button').length === 2", 15)
            buttons = page.evaluate(BUTTONS)
            assert "left:pill ok" in buttons and "right:pill alarm sel" in buttons
            assert page.evaluate("document.getElementById('stream').src").endswith("/stream?camera=right")
            assert page.evaluate("document.getElementById('cur-seq').textContent").startswith("#900")   # right's
            assert page.evaluate("document.getElementById('alarms').children.length") == 1
            page.evaluate("document.getElementById('ack-all').click()")
            page.wait_for("document.getElementById('ack-msg').textContent.startsWith('acknowledged')", 10)
            assert acked == ["right"]
            page.evaluate("document.querySelector('#cameras button[data-camera=left]').click()")
            page.wait_for("document.querySelector('#cameras button.sel').dataset.camera === 'left' && "
                          "document.getElementById('stream').src.endsWith('camera=left')", 10)
            page.wait_for("document.getElementById('cur-seq').textContent.length < 7", 10)       # left's parts
            assert page.evaluate("location.search") == "?camera=left"
            assert page.console_errors() == []
    finally:
        for f in feeds:
            f.close()
        view.stop()
