"""The demo report: one self-contained HTML page a plant manager can open, mail or archive.

Everything is inside index.html: styles inline, images as PNG data URIs, no scripts, no fonts or
files from elsewhere, so the page looks the same offline, on a line PC or in a mail attachment.
report.json beside it carries the same numbers for machines (the tests check the page against it).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgead.data.images import read_image
from edgead.io import atomic_write_bytes, atomic_write_json, png_bytes

CARD_HEIGHT = 160      # px of each heatmap thumbnail

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2327;background:#f4f6f8}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 10px;border-bottom:2px solid #d8dee4;padding-bottom:4px}
.sub{color:#57606a;margin:0 0 18px}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:12px}
.tile{background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.tile b{display:block;font-size:24px}.tile span{color:#57606a;font-size:13px}
.ok b{color:#1a7f37}.bad b{color:#cf222e}
table{border-collapse:collapse;background:#fff;margin:6px 0 10px;font-size:14px}
td,th{padding:5px 12px;border-bottom:1px solid #e5e9ee;text-align:right}th{background:#eef1f4}td:first-child,th:first-child{text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;background:#fff;padding:6px;border-radius:6px;box-shadow:0 1px 2px rgba(0,0,0,.08);width:min-content}
figure img{height:%dpx;display:block}figcaption{font-size:12px;color:#57606a;margin-top:4px;min-width:%dpx}
img.wide{max-width:100%%;background:#fff;border-radius:6px}
img.bar{width:min(750px,100%%);display:block;margin:8px 0 2px;background:#fff;border-radius:6px}
pre{background:#1d2327;color:#e6edf3;padding:12px 14px;border-radius:6px;overflow-x:auto;font-size:13px}
.note{color:#57606a;font-size:13px}
""" % (CARD_HEIGHT, CARD_HEIGHT)


def png_data_uri(image: np.ndarray | str | Path, max_height: int | None = None) -> str:
    """An RGB array or an image file as a PNG data URI (scaled down to max_height)."""
    img = read_image(image) if isinstance(image, (str, Path)) else np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(img / (257.0 if img.dtype == np.uint16 else 1.0), 0, 255).astype(np.uint8)
    if max_height and img.shape[0] > max_height:
        w = max(1, round(img.shape[1] * max_height / img.shape[0]))
        img = cv2.resize(img, (w, max_height), interpolation=cv2.INTER_AREA)
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode("ascii")


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _tile(value: str, label: str, good: bool | None = None) -> str:
    cls = "" if good is None else (" ok" if good else " bad")
    return f'<div class="tile{cls}"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def _gallery(cards: list[dict[str, Any]], empty: str) -> str:
    if not cards:
        return f'<p class="note">{_e(empty)}</p>'
    figs = []
    for c in cards:
        caption = f"part #{c['frame']}: {c['truth']}, score {_num(c.get('score'), 3)} -> {c.get('decision')}"
        figs.append(f'<figure><img alt="{_e(caption)}" src="{png_data_uri(c["image"], CARD_HEIGHT * 2)}">'
                    f"<figcaption>{_e(caption)}</figcaption></figure>")
    return '<div class="gallery">' + "".join(figs) + "</div>"


def commands(d: dict[str, Any]) -> str:
    """The path from the user's own images to a running line, with the demo's numbers as defaults."""
    target = d["calibration"]["target_frr"]
    return "\n".join([
        "# 1. train on good parts only (a folder of images, or an MVTec-layout category)",
        "edgead train --data my_part/train/good --out models/my_part",
        "edgead eval --model models/my_part --data my_part            # if you have a test/ split",
        "# 2. engines for this machine (TensorRT FP16 on NVIDIA, ONNX Runtime elsewhere)",
        "edgead build-engine --model models/my_part --out engines/my_part",
        "# 3. the reject threshold from good parts the model has not seen",
        f"edgead calibrate --engine engines/my_part --good more_good_parts/ --target-frr {target:g} "
        "--out calibration/my_part.yaml",
        "# 4. the line: a USB/OpenCV camera, a GigE Vision camera, or a video file",
        "edgead run --engine engines/my_part --calibration calibration/my_part.yaml --camera 0 --record runs/",
        "edgead run --config run.yaml          # GigE camera + PLC output: see README, 'Run the line'",
        "# the same demo on your own MVTec-layout folder",
        "edgead demo --data my_part",
    ])


def render(d: dict[str, Any]) -> str:
    """index.html from the report data: one section after another, sections without content left out."""
    parts = [*_head(d), *_what_happened(d), *_model_quality(d), *_threshold(d), *_conveyor_run(d),
             *_galleries(d), *_roc(d), *_next_steps(d)]
    return "\n".join(p for p in parts if p)


def _head(d: dict[str, Any]) -> list[str]:
    """Document head, title line and the headline tiles."""
    return [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(d['title'])}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(d['title'])}</h1>",
        f'<p class="sub">{_e(d["created"])} &middot; {_e(d["machine"])} &middot; whole demo {d["total_s"]:.0f} s'
        f"{' &middot; quick mode' if d.get('quick') else ''}</p>",
        f'<div class="tiles">{_tiles(d)}</div>',
    ]


def _tiles(d: dict[str, Any]) -> str:
    """The numbers a plant manager looks at first: model quality, belt errors, speed."""
    ev, c, eng = d["evaluation"], d["conveyor"], d["engine"]
    total = c["latency_ms"].get("total", {})
    return "".join([
        _tile(_num(ev["image_auroc"]), "image AUROC (test split)"),
        _tile(_num(ev["pixel_auroc"]), "pixel AUROC (defect location)"),
        _tile(f"{c['false_rejects']} / {c['good']}", f"good parts rejected ({_pct(c['false_reject_rate'])})",
              c["false_rejects"] == 0),
        _tile(f"{c['escapes']} / {c['defective']}", f"defective parts passed ({_pct(c['escape_rate'])})",
              c["escapes"] == 0),
        _tile(f"{_num(total.get('p50'), 1)} ms", f"capture to decision, median (p99 {_num(total.get('p99'), 1)} ms)"),
        _tile(f"{_num(c.get('parts_per_s'), 1)} /s", f"parts per second on the belt ({eng['backend']})"),
    ])


def _what_happened(d: dict[str, Any]) -> list[str]:
    """The story in one paragraph, and the time each step took."""
    cal, c = d["calibration"], d["conveyor"]
    steps = _table(["step", "seconds"], [[k, f"{v:.1f}"] for k, v in d["steps_s"].items()]
                   + [["whole demo", f"{d['total_s']:.1f}"]])
    return [
        "<h2>What happened</h2>",
        f"<p>The model learnt what a good part looks like from {d['images']['train']} good images only. "
        f"{cal['n_good']} other good parts set the reject threshold. Then {c['parts']} parts "
        f"({c['good']} good, {c['defective']} defective, in a known order) passed the camera as a video at "
        f"{_num(c['fps'], 1)} parts per second, through the same <code>edgead run</code> loop that runs on the "
        "line, and every decision was checked against the truth.</p>",
        steps,
    ]


def _model_quality(d: dict[str, Any]) -> list[str]:
    """Test-split metrics, overall and per defect type, and the engine that produced them."""
    ev, eng = d["evaluation"], d["engine"]
    per_type = ev.get("per_type") or {}
    quality = _table(["defect type", "n", "image AUROC", "pixel AUROC", "AUPRO"],
                     [["all", d["images"]["test_good"] + d["images"]["test_defective"], _num(ev["image_auroc"]),
                       _num(ev["pixel_auroc"]), _num(ev["aupro"])]]
                     + [[k, m["n"], _num(m["image_auroc"]), _num(m["pixel_auroc"]), _num(m["aupro"])]
                        for k, m in sorted(per_type.items())])
    return [
        "<h2>Model quality on the test split</h2>", quality,
        f'<p class="note">Engine: {_e(eng["backend"])} (built: {_e(eng["built"])}, {_e(eng["precision"])}), '
        f"{_num(eng['batch1_ms'], 1)} ms per part at batch 1 on this machine.</p>",
    ]


def figure_names(d: dict[str, Any]) -> list[str]:
    """The figures the page shows, in page order (report.json lists them; the page draws exactly these)."""
    names = ["calibration histogram"] if Path(d["calibration"]["figure"]).is_file() else []
    rows = d.get("belt") or []
    if any(r["score"] is not None for r in rows):
        names.append("belt scores")
    if d.get("operating_point"):
        names.append("ROC with operating point")
    if d.get("heat_scale"):
        names += [f"colour bar: {key}" for key in ("rejected", "escaped", "hardest_good") if d[key]]
    return names


def _figure_img(png: bytes, alt: str, cls: str = "wide") -> str:
    return f'<img class="{cls}" alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _threshold(d: dict[str, Any]) -> list[str]:
    """The calibrated threshold and, where it was written, its histogram (defect scores shown, not used)."""
    cal = d["calibration"]
    cal_fig = Path(cal["figure"])
    dfx = cal.get("defects")
    shown = (f"The {dfx['n']} defective test parts' scores (orange) are drawn for judgement only: they were not used "
             f"to set the threshold; {dfx['escapes']} of them score at or below it ({_pct(dfx['escape_rate'])}). "
             "The dashed line is the threshold that would maximise F1 on these defects, for comparison."
             if dfx else "No defective parts were scored with the calibration.")
    return [
        "<h2>Threshold (calibrated on good parts only)</h2>",
        f"<p>Threshold <b>{_num(cal['threshold'], 4)}</b>, method {_e(cal['method'])}, target "
        f"{_pct(cal['target_frr'])} false rejects, from {cal['n_good']} good parts the model never saw.</p>",
        f'<img class="wide" alt="calibration histogram" src="{png_data_uri(cal_fig)}">' if cal_fig.is_file() else "",
        f'<p class="note">The threshold comes from the {cal["n_good"]} held-back good parts only (teal). '
        f"{_e(shown)}</p>" if cal_fig.is_file() else "",
    ]


def _stage_rate(stage: str, v: dict[str, Any]) -> str:
    """What the stage alone could sustain, one part at a time (blank for stages that are waits or sums)."""
    if stage in ("read", "queue", "total") or not v.get("p50"):
        return ""
    return f"{1000.0 / v['p50']:.0f}"


def _conveyor_run(d: dict[str, Any]) -> list[str]:
    """Belt counts against the truth, escapes by defect type, and latency per stage."""
    c = d["conveyor"]
    run = c["run_summary"]
    belt = _table(["", "parts"], [
        ["on the belt", c["parts"]], ["good / defective", f"{c['good']} / {c['defective']}"],
        ["decided", c["decided"]], ["rejected", run["rejects"] + run["safe_actions"]],
        ["false rejects (good parts rejected)", c["false_rejects"]],
        ["escapes (defective parts passed)", c["escapes"]],
        ["safe actions (not inspected in time: rejected)", c["safe_actions"]],
        ["late decisions", run["late_decisions"]], ["frames lost", run["frames_lost"]],
    ])
    latency = _table(["stage", "p50 ms", "p90 ms", "p99 ms", "parts/s alone (1000 / p50)"],
                     [[k, _num(v["p50"], 2), _num(v["p90"], 2), _num(v["p99"], 2), _stage_rate(k, v)]
                      for k, v in c["latency_ms"].items()])
    escapes_by_type = ", ".join(f"{k}: {v}" for k, v in c["escapes_by_type"].items() if v) or "none"
    return [
        "<h2>The conveyor run</h2>", belt,
        f'<p class="note">Escapes by defect type: {_e(escapes_by_type)}.</p>',
        *_belt_scores(d), *_catch_table(d),
        "<h3>Latency per stage (capture to decision)</h3>", latency,
    ]


def _belt_scores(d: dict[str, Any]) -> list[str]:
    """Score against part index with the threshold: where the errors sit, and how close the rest came."""
    if "belt scores" not in figure_names(d):
        return []
    from edgead.demo.figures import belt_scores_png

    return ["<h3>Score of every part, in belt order</h3>",
            _figure_img(belt_scores_png(d["belt"], d["calibration"]["threshold"]), "scores along the belt"),
            '<p class="note">Colour: what the part really is; a cross: the line rejected it, a circle: it passed. '
            "A teal cross is a false reject, a coloured circle an escape. The dashed line is the threshold.</p>"]


def _interval(r: dict[str, Any]) -> str:
    return "n/a" if r["ci95"] is None else f"{_pct(r['ci95'][0])} to {_pct(r['ci95'][1])}"


def _catch_table(d: dict[str, Any]) -> list[str]:
    """Catch rate per defect type and false-reject rate at the chosen threshold, with 95 % intervals."""
    rates = d.get("catch_rates")
    if not rates:
        return []

    def row(name: str, r: dict[str, Any]) -> list[Any]:
        return [name, r["n"], r["k"], r["n"] - r["k"], _pct(r["rate"]), _interval(r)]

    rows = [row(k, r) for k, r in rates["by_type"].items()] + [row("all defective", rates["all_defective"])]
    g = rates["good_rejected"]
    good = _table(["good parts", "on the belt", "rejected", "false-reject rate", "95 % interval (Wilson)"],
                  [["good", g["n"], g["k"], _pct(g["rate"]), _interval(g)]])
    return [f"<h3>Catch rate per defect type at threshold {_num(d['calibration']['threshold'], 4)}</h3>",
            _table(["defect type", "on the belt", "rejected", "passed", "catch rate", "95 % interval (Wilson)"],
                   rows), good,
            '<p class="note">Counted from the run loop\'s decisions (a safe action counts as a reject). The '
            "intervals say how sure a belt this short can be: with few parts of a type they are wide.</p>"]


def _galleries(d: dict[str, Any]) -> list[str]:
    """Heatmaps of the rejected parts, the escapes and the hardest good parts, each with its colour bar."""
    bar = _colour_bar(d)
    shown = figure_names(d)

    def with_bar(key: str) -> str:
        return bar if f"colour bar: {key}" in shown else ""

    return [
        f"<h2>Rejected parts ({len(d['rejected'])})</h2>",
        _gallery(d["rejected"], "No part was rejected."), with_bar("rejected"),
        f"<h2>Defective parts that passed ({len(d['escaped'])})</h2>",
        _gallery(d["escaped"], "None: every defective part was rejected."), with_bar("escaped"),
        "<h2>Hardest good parts (highest scores that still passed or were rejected)</h2>",
        _gallery(d["hardest_good"], "No good parts on the belt."), with_bar("hardest_good"),
        '<p class="note">Heatmaps share one colour scale, the bar under each gallery, in score units (a part\'s '
        "score is its map's maximum): blue is a typical good part's peak, the black line the threshold; colours "
        "are blended half over the part's image.</p>",
    ]


def _colour_bar(d: dict[str, Any]) -> str:
    """The colour bar of the heatmaps (one image, shown under every gallery), or nothing without a scale."""
    scale = d.get("heat_scale")
    if not scale:
        return ""
    from edgead.demo.figures import colorbar_png

    return _figure_img(colorbar_png(scale["lo"], scale["hi"], scale["threshold"]), "heatmap colour scale", "bar")


def _roc(d: dict[str, Any]) -> list[str]:
    """The ROC curve of the belt's scores with the chosen threshold's operating point."""
    if "ROC with operating point" not in figure_names(d):
        return []
    from edgead.demo.figures import roc_png

    op = d["operating_point"]
    return ["<h2>ROC of the belt, and where the threshold puts the line</h2>",
            _figure_img(roc_png(d["belt"], op), "ROC curve with the operating point"),
            f'<p class="note">The engine\'s scores of the {op["n_good"]} good and {op["n_defective"]} defective parts '
            f"on the belt (the test split). The star is the calibrated threshold {_num(op['threshold'], 4)}: "
            f"{_pct(op['fpr'])} of good parts rejected, {_pct(op['tpr'])} of defects caught. The evaluation's image "
            f"AUROC of the trained model on the same parts: {_num(d['evaluation']['image_auroc'])}.</p>"]


def _next_steps(d: dict[str, Any]) -> list[str]:
    """The commands for the user's own parts, where this run's files are, and the closing tags."""
    return [
        "<h2>Do the same on your parts</h2>", f"<pre>{_e(commands(d))}</pre>",
        f'<p class="note">Files of this run: {_e(d["paths"]["work"])} (model, engine, calibration, '
        "events.jsonl with one line per part).</p>",
        "</main></body></html>",
    ]


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """report.json: the numbers; images are replaced by where they came from."""
    out = dict(d)
    for key in ("rejected", "escaped", "hardest_good"):
        out[key] = [{k: v for k, v in card.items() if k != "image"} for card in d[key]]
    out["figures"] = figure_names(d)
    return out


def write_report(report_dir: str | Path, d: dict[str, Any]) -> Path:
    """Write index.html and report.json (atomically); returns the index path."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(report_dir / "report.json", _jsonable(d))
    return atomic_write_bytes(report_dir / "index.html", render(d).encode("utf-8"))
