"""`edgead demo --quick` end to end: the report's content, its numbers against report.json, and the
page in a real headless Chromium (Debian `chromium`, installed by .ci/run)."""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgead.cli import main
from edgead.demo.conveyor import Part, score_run, stage_latencies
from edgead.demo.demo import split_good
from edgead.errors import EdgeADError


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["demo", "--quick", "--epochs", "1", "--out", str(root / "work"), "--report", str(root / "report")])
    assert code == 0
    report = json.loads((root / "report" / "report.json").read_text())
    page = (root / "report" / "index.html").read_text(encoding="utf-8")
    return {"root": root, "out": buf.getvalue(), "report": report, "html": page}


def _data_uris(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]+)"', page)


def test_demo_runs_every_stage_and_prints_a_five_line_summary(demo):
    out, r = demo["out"], demo["report"]
    for step in ("synthetic product", "training", "evaluation", "build-engine", "calibration", "run loop"):
        assert f"[demo] {step}:" in out and step in r["steps_s"]
    tail = out.strip().splitlines()[-5:]
    assert tail[0] == f"report: {demo['root'] / 'report' / 'index.html'}"
    assert tail[1].startswith("model: image AUROC") and tail[3].startswith("conveyor:")
    from edgead.backends.tensorrt import usable

    if usable():                                      # says which backend it built, on either kind of machine
        assert "TensorRT not usable here" not in out and r["engine"]["backend"].startswith("tensorrt/")
    else:
        assert "TensorRT not usable here" in out and r["engine"]["backend"] == "onnxruntime/fp32"


def test_every_part_on_the_conveyor_is_decided_and_scored_against_the_truth(demo):
    r = demo["report"]
    c = r["conveyor"]
    truth = json.loads((Path(r["paths"]["work"]) / "conveyor" / "truth.json").read_text())
    assert c["parts"] == len(truth["parts"]) == c["good"] + c["defective"] == c["decided"]
    assert c["missing_decisions"] == []
    events = [json.loads(x) for x in Path(r["paths"]["events"]).read_text().splitlines()]
    assert sorted(e["seq"] for e in events) == list(range(c["parts"]))          # one line per part
    decisions = [json.loads(x) for x in Path(r["paths"]["decisions"]).read_text().splitlines() if '"seq"' in x]
    assert len(decisions) == c["parts"]                                          # the log output saw them all
    rejected = {e["seq"] for e in events if e["decision"] != "pass"}
    labels = {p["frame"]: p["label"] for p in truth["parts"]}
    assert c["false_rejects"] == sum(1 for s in rejected if labels[s] == 0)
    assert c["escapes"] == sum(1 for s, lab in labels.items() if lab == 1 and s not in rejected)
    assert len(r["rejected"]) == len(rejected) and len(r["escaped"]) == c["escapes"]
    assert r["images"]["calibration"] >= 50 and r["calibration"]["n_good"] == r["images"]["calibration"]


def test_report_shows_the_json_numbers_and_embeds_every_image(demo):
    r, page = demo["report"], demo["html"]
    ev, c = r["evaluation"], r["conveyor"]
    for text in (f"{ev['image_auroc']:.3f}", f"{ev['pixel_auroc']:.3f}", f"{c['false_rejects']} / {c['good']}",
                 f"{c['escapes']} / {c['defective']}", f"{r['calibration']['threshold']:.4f}",
                 f"{c['latency_ms']['total']['p50']:.1f} ms"):
        assert text in page, text
    for stage in ("preprocess", "infer", "total"):
        assert f"<td>{stage}</td>" in page
    assert "edgead calibrate --engine" in page and "edgead run --engine" in page
    # self-contained: no scripts, no external resources
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(https?:)?//', page)
    srcs = _data_uris(page)
    n_cards = len(r["rejected"]) + len(r["escaped"]) + len(r["hardest_good"])
    assert len(srcs) == n_cards + len(r["figures"])        # + the figures (tests/demo/test_report_figures.py)
    assert r["figures"][:3] == ["calibration histogram", "belt scores", "ROC with operating point"]
    assert r["calibration"]["defects"]["n"] == c["defective"]   # defect scores shown on the histogram
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        img = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] > 10
    assert html.escape(r["title"]) in page


_PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.target && e.target.src)), true);
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({images: imgs.length, broken, errors: window.__errors,
                                    height: document.body.scrollHeight});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium_with_all_images_loaded(demo, tmp_path):
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(demo["html"].replace("<head>", "<head>" + _PROBE, 1), encoding="utf-8")
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
           "--dump-dom", probe_page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["errors"] == [] and probe["broken"] == 0
    assert probe["images"] == len(_data_uris(demo["html"])) and probe["height"] > 1000
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600",
                    f"--screenshot={shot}", demo["root"].joinpath("report", "index.html").as_uri()],
                   capture_output=True, timeout=120)
    img = cv2.imread(str(shot))
    assert img is not None and img.std() > 10      # something was drawn, not a blank page


def test_score_run_never_counts_a_missing_decision_as_a_pass():
    parts = [Part(0, 0, "good", "a", None), Part(1, 1, "scratch", "b", None), Part(2, 1, "scratch", "c", None),
             Part(3, 0, "good", "d", None)]
    events = [{"seq": 0, "decision": "pass"}, {"seq": 1, "decision": "safe_reject"}, {"seq": 3, "decision": "reject"}]
    s = score_run(parts, events)
    assert s["missing_decisions"] == [2] and s["escapes"] == 1 and s["escape_frames"] == [2]
    assert s["false_rejects"] == 1 and s["false_reject_rate"] == 0.5 and s["safe_actions"] == 1
    lat = stage_latencies([{"latency_ms": {"total": float(i), "infer": 1.0}} for i in range(101)])
    assert lat["total"]["p50"] == 50.0 and lat["total"]["p99"] == 99.0 and lat["infer"]["n"] == 101


def test_demo_data_with_too_few_good_images_says_how_many(tmp_path):
    good = tmp_path / "train" / "good"
    good.mkdir(parents=True)
    for i in range(55):
        cv2.imwrite(str(good / f"{i:03d}.png"), np.full((32, 32), i, np.uint8))
    with pytest.raises(EdgeADError) as e:
        split_good(good, tmp_path / "split", 0)
    assert "55 good images" in str(e.value) and "at least 60" in e.value.hint


def test_demo_on_the_users_own_folder_with_mixed_image_sizes(tmp_path, capsys):
    """--data: the same story on an MVTec-layout folder; parts of two sizes go on the belt as a folder."""
    from edgead.data.synth import generate_product

    root = generate_product(tmp_path / "mine", "brick", seed=5, n_train=62, n_test_good=4, n_test_defect=4,
                            size=(64, 64))
    odd = next((root / "test" / "good").glob("*.png"))
    cv2.imwrite(str(odd), cv2.resize(cv2.imread(str(odd)), (80, 64)))          # another camera setting
    code = main(["demo", "--data", str(root), "--epochs", "1", "--size", "64", "64", "--out", str(tmp_path / "w"),
                 "--report", str(tmp_path / "r")])
    assert code == 0
    r = json.loads((tmp_path / "r" / "report.json").read_text())
    assert r["product"] == str(root) and r["images"] == {"train": 12, "calibration": 50, "test_good": 4,
                                                         "test_defective": 4}
    assert r["conveyor"]["kind"] == "folder" and r["conveyor"]["decided"] == 8
    assert "demo --data my_part" in (tmp_path / "r" / "index.html").read_text()
