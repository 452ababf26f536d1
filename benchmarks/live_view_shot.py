"""The README's screenshot of the live view (docs/live-view.png), from synthetic parts (no model, no camera).

    python benchmarks/live_view_shot.py                     # writes docs/live-view.png
    python benchmarks/live_view_shot.py --out /tmp/shot.png --width 1280 --height 1000

A LiveView is filled with a few minutes of a line (a slow upward drift of the scores, a defect every
few parts, an occasional safe action), then fed live while headless Chromium (Debian `chromium`)
opens the page on a loopback HttpView; the /health document is the run's shape with one output down
and its alarm active. The shot is taken just after a reject, and re-encoded small (under 300 KB).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from live_view_fixtures import BANNER_RED, SPEC, VRANGE, Chromium, Feed, Health, serve  # noqa: E402

from edgead.runtime.live_view import LiveView  # noqa: E402


class Clock:
    """Wall time, or a time in the past while the history is filled."""

    def __init__(self) -> None:
        self.fixed: float | None = None

    def __call__(self) -> float:
        return time.time() if self.fixed is None else self.fixed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "live-view.png"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1140)
    ap.add_argument("--history", type=int, default=560, help="parts before the screenshot (2 per second)")
    args = ap.parse_args()

    clock = Clock()
    live = LiveView(SPEC, VRANGE, clock=clock)
    health = Health(live, outputs=True, alarm=True, fps=2.0, uptime_s=3600.0 + args.history * 0.5)
    feed = Feed(live, rate=2.0, reject_every=9, safe_every=97, seed=3)
    now = time.time()
    for i in range(args.history):            # minutes of a line, half a second apart
        clock.fixed = now - (args.history - i) * 0.5
        feed.one()
    clock.fixed = None
    view = serve(live, health, ack=health.ack)
    feed.start()
    try:
        with Chromium("http://%s:%d/" % view.address, args.width, args.height) as page:
            page.wait_for("+document.body.getAttribute('data-polls') >= 3 && "
                          "[...document.querySelectorAll('#rejects .thumb img')].every(i => i.naturalWidth > 0)", 20)
            # a reject on the page and in the stream at once (the page polls every second, the stream is live)
            page.wait_for(f"document.getElementById('cur-decision').textContent === 'REJECT' && {BANNER_RED}", 60)
            errors = page.console_errors()
            png = page.screenshot()
    finally:
        feed.close()
        view.stop()
    if errors:
        print("the page logged errors:", *errors, sep="\n  ", file=sys.stderr)
        return 1
    data = small_png(png)
    Path(args.out).write_bytes(data)
    h, w = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    print(f"{args.out}: {w}x{h}, {len(data) / 1024:.0f} KB")
    return 0


def small_png(png: bytes) -> bytes:
    """256 colours (Pillow's octree, no dithering: a third of the bytes, the page's flat colours kept) when
    Pillow is installed (matplotlib brings it), else OpenCV's highest PNG compression."""
    try:
        from PIL import Image
    except ImportError:
        ok, buf = cv2.imencode(".png", cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR),
                               [cv2.IMWRITE_PNG_COMPRESSION, 9])
        assert ok
        return buf.tobytes()
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(
        out, "PNG", optimize=True)
    return out.getvalue()


if __name__ == "__main__":
    sys.exit(main())
