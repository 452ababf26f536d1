"""The operator's live page (`GET /`): one self-contained HTML document, CSS and JavaScript inline.

Nothing external (no CDN, no web font, no image but our own /stream and /rejects/N.jpg), so it
works on a line with no internet. It polls /live.json (the view's numbers and the /health document)
about once a second and shows: the camera frame with the anomaly overlay and its colour legend in
score units, the current part (score, threshold, margin), counters since start / this hour / last
hour, the last rejects (click to enlarge), a score-over-time chart with the threshold line, the
outputs, the camera, the active alarms (Acknowledge: POST /alarms/ack; a 403 asks for the run's
http.token and retries with it), a clock (the box's) and the uptime. Every field of /health is read
defensively: a missing or older-shaped one shows "-", never an error. A station (several cameras)
lists its cameras in /live.json: the page then shows a button per camera, coloured by its status, and
everything below is the chosen camera's (`/?camera=NAME` opens on one).
"""

from __future__ import annotations

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#15191e;color:#d8dee6;font:14px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
header{display:flex;align-items:center;gap:14px;padding:8px 14px;background:#0d1014;border-bottom:1px solid #2a313a}
header h1{font-size:17px;margin:0;font-weight:600;letter-spacing:.02em}
.pill{padding:2px 10px;border-radius:11px;font-weight:700;font-size:13px;background:#444;color:#fff;text-transform:uppercase}
.ok{background:#1f7a36}.alarm{background:#b3261e}.degraded{background:#c76b00}.starting,.unknown,.stopping,.stopped{background:#56606b}
#clock{font:600 20px ui-monospace,Menlo,Consolas,monospace;margin-left:auto}
.muted{color:#8b96a3}.small{font-size:12px}
main{display:grid;grid-template-columns:minmax(0,3fr) minmax(320px,2fr);gap:12px;padding:12px}
.card{background:#1d232a;border:1px solid #2a313a;border-radius:6px;padding:10px 12px}
.card h2{font-size:12px;text-transform:uppercase;letter-spacing:.08em;color:#8b96a3;margin:0 0 8px;font-weight:600}
.card h2 span{text-transform:none;letter-spacing:0;font-weight:400}
.col{display:flex;flex-direction:column;gap:12px;min-width:0}
#stream{display:block;width:100%;max-height:56vh;object-fit:contain;background:#000;border-radius:4px}
#current{display:flex;align-items:baseline;gap:18px;flex-wrap:wrap;margin:8px 0 4px}
#cur-decision{font-size:22px;font-weight:800;padding:0 10px;border-radius:4px;background:#333}
.pass{background:#1f7a36!important}.reject{background:#b3261e!important}.safe_reject{background:#c76b00!important}
.kv b{font:600 17px ui-monospace,Menlo,Consolas,monospace;color:#fff}
#legend-wrap{position:relative;margin-top:6px}
#legend{display:block;width:100%;height:16px;border-radius:3px}
#legend-labels{position:relative;height:16px;font-size:12px}
#legend-labels span{position:absolute;top:0;transform:translateX(-50%);white-space:nowrap}
#legend-vmin{transform:none!important}#legend-vmax{transform:translateX(-100%)!important}
#legend-thr{color:#fff;font-weight:700}
#chart{display:block;width:100%;height:170px}
table{border-collapse:collapse;width:100%}
th,td{padding:3px 6px;text-align:right;border-bottom:1px solid #2a313a;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
th{color:#8b96a3;font-weight:600;font-size:12px}
td.num{font-family:ui-monospace,Menlo,Consolas,monospace}
.up{color:#4cc06b;font-weight:700}.down{color:#ff6b5f;font-weight:700}
#alarms{list-style:none;margin:0;padding:0}
#alarms li{display:flex;gap:8px;align-items:center;padding:5px 0;border-bottom:1px solid #2a313a}
#alarms li .reason{flex:1;min-width:0;overflow-wrap:anywhere}
button{background:#2f3a46;color:#fff;border:1px solid #4a5868;border-radius:4px;padding:4px 10px;font:inherit;cursor:pointer}
button:hover{background:#3b4856}button.primary{background:#b3261e;border-color:#d9463c}
#token-row{display:none;gap:6px;margin-top:8px;align-items:center}
#token{flex:1;background:#0d1014;color:#fff;border:1px solid #4a5868;border-radius:4px;padding:4px 6px}
#ack-msg{margin-top:6px}
#rejects-card{grid-column:1/-1}
#rejects{display:flex;gap:8px;overflow-x:auto;padding-bottom:4px;min-height:40px}
.thumb{flex:0 0 auto;width:132px;cursor:pointer;background:#0d1014;border:1px solid #2a313a;border-radius:4px;padding:3px}
.thumb img{display:block;width:124px;height:93px;object-fit:contain;background:#000}
.thumb .noimg{width:124px;height:93px;display:flex;align-items:center;justify-content:center;color:#8b96a3;font-size:12px}
.thumb div.cap{font-size:11px;font-family:ui-monospace,Menlo,Consolas,monospace;margin-top:2px}
#lightbox{display:none;position:fixed;inset:0;background:rgba(0,0,0,.82);align-items:center;justify-content:center;z-index:10;flex-direction:column}
#lightbox.open{display:flex}
#lb-img{height:min(80vh,69vw);max-width:92vw;object-fit:contain;background:#000}
#lb-caption{margin-top:8px;font:15px ui-monospace,Menlo,Consolas,monospace;color:#fff}
#conn{font-size:12px}
#cameras{display:flex;gap:6px;flex-wrap:wrap}
#cameras button{padding:2px 10px;border-radius:11px;font-size:13px;font-weight:600;opacity:.75}
#cameras button.sel{opacity:1;outline:2px solid #fff}
@media (max-width:900px){main{grid-template-columns:1fr}}
"""

_BODY = """
<header>
  <h1>edgead live</h1>
  <span id="status" class="pill starting">starting</span>
  <span id="cameras"></span>
  <span id="cam-title" class="muted"></span>
  <span id="conn" class="muted">connecting...</span>
  <span class="muted">up <b id="uptime">-</b></span>
  <span id="clock">--:--:--</span>
</header>
<main>
  <div class="col">
    <section class="card">
      <h2>Camera frame and anomaly map</h2>
      <img id="stream" src="/stream" alt="camera frame with the anomaly overlay">
      <div id="current">
        <span id="cur-decision">no part yet</span>
        <span class="kv">part <b id="cur-seq">-</b></span>
        <span class="kv">score <b id="cur-score">-</b></span>
        <span class="kv">threshold <b id="cur-threshold">-</b></span>
        <span class="kv">margin <b id="cur-margin">-</b></span>
        <span id="cur-reason" class="muted"></span>
      </div>
      <div id="legend-wrap">
        <canvas id="legend" width="600" height="16"></canvas>
        <div id="legend-labels"><span id="legend-vmin" style="left:0">-</span><span id="legend-thr">threshold</span><span id="legend-vmax" style="left:100%">-</span></div>
        <div class="muted small">overlay colour scale, in anomaly-map score units (fixed, so colours compare between parts)</div>
      </div>
    </section>
    <section class="card">
      <h2>Score over time <span class="muted" id="chart-info"></span></h2>
      <canvas id="chart" width="800" height="170"></canvas>
    </section>
  </div>
  <div class="col">
    <section class="card">
      <h2>Counters</h2>
      <table id="counts">
        <thead><tr><th></th><th>since start</th><th>this hour</th><th>last hour</th></tr></thead>
        <tbody></tbody>
      </table>
    </section>
    <section class="card">
      <h2>Active alarms <span id="alarm-count" class="muted">0</span></h2>
      <ul id="alarms"></ul>
      <div id="no-alarms" class="muted">none</div>
      <div style="margin-top:8px"><button id="ack-all" class="primary" type="button">Acknowledge all</button></div>
      <div id="token-row"><input id="token" type="password" placeholder="http.token of this run" autocomplete="off"><button id="token-send" type="button">Acknowledge</button></div>
      <div id="ack-msg" class="muted small"></div>
    </section>
    <section class="card">
      <h2>Camera</h2>
      <table id="camera"><tbody>
        <tr><td>name</td><td id="cam-name">-</td></tr>
        <tr><td>state</td><td id="cam-state">-</td></tr>
        <tr><td>fps</td><td id="cam-fps" class="num">-</td></tr>
        <tr><td>frames / lost</td><td class="num"><span id="cam-frames">-</span> / <span id="cam-lost">-</span></td></tr>
        <tr><td>reconnects / errors</td><td class="num"><span id="cam-reconnects">-</span> / <span id="cam-errors">-</span></td></tr>
        <tr><td>last frame</td><td id="cam-age" class="num">-</td></tr>
      </tbody></table>
    </section>
    <section class="card">
      <h2>Outputs</h2>
      <table id="outputs">
        <thead><tr><th>output</th><th>state</th><th>last delivery</th><th>delivered</th><th>undelivered</th></tr></thead>
        <tbody></tbody>
      </table>
      <div id="no-outputs" class="muted">no outputs configured</div>
    </section>
  </div>
  <section class="card" id="rejects-card">
    <h2>Last rejects <span class="muted" id="rejects-info"></span></h2>
    <div id="rejects"></div>
  </section>
</main>
<div id="lightbox" role="dialog" aria-modal="true"><img id="lb-img" alt="reject"><div id="lb-caption"></div><div class="muted small">click or Esc to close</div></div>
"""

_JS = r"""
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var offset = 0, uptimeBase = null, uptimeAt = 0, token = null, live = null, polls = 0, shownRejects = '';
  var cam = new URLSearchParams(location.search).get('camera'), shownCams = '';
  function camQuery(sep) { return cam ? sep + 'camera=' + encodeURIComponent(cam) : ''; }
  var ROWS = [['parts', 'parts'], ['inspected', 'inspected'], ['passed', 'passed'], ['rejected', 'rejected'],
              ['safe_actions', 'safe actions'], ['reject_rate', 'reject rate']];

  function isNum(x) { return typeof x === 'number' && isFinite(x); }
  function fmt(x, d) { return isNum(x) ? Number(x.toPrecision(d || 4)).toString() : '-'; }
  function signed(x) { return isNum(x) ? (x > 0 ? '+' : '') + fmt(x) : '-'; }
  function pct(x) { return isNum(x) ? (x * 100).toFixed(x < 0.1 ? 2 : 1) + ' %' : '-'; }
  function obj(x) { return x && typeof x === 'object' && !Array.isArray(x) ? x : {}; }
  function arr(x) { return Array.isArray(x) ? x : []; }
  function text(el, s) { if (el && el.textContent !== String(s)) el.textContent = String(s); }
  function pad(n) { return (n < 10 ? '0' : '') + n; }
  function hms(ms) { var d = new Date(ms); return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()); }
  function dur(s) {
    if (!isNum(s) || s < 0) return '-';
    s = Math.floor(s);
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    return (d ? d + ' d ' : '') + pad(h) + ':' + pad(m) + ':' + pad(s % 60);
  }
  function ago(t) {
    if (!isNum(t)) return 'never';
    var s = (Date.now() + offset) / 1000 - t;
    return s < 1 ? 'now' : s < 120 ? Math.round(s) + ' s ago' : s < 7200 ? Math.round(s / 60) + ' min ago' : hms(t * 1000);
  }
  function el(tag, cls, content) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (content !== undefined) e.textContent = String(content);
    return e;
  }

  function tick() {
    text($('clock'), hms(Date.now() + offset));
    if (uptimeBase !== null) text($('uptime'), dur(uptimeBase + (Date.now() - uptimeAt) / 1000));
  }

  function legend(lg) {
    var c = $('legend'), colors = arr(lg.colors);
    if (!colors.length) return;
    var w = c.clientWidth || 600;
    if (c.width !== w) c.width = w;
    var g = c.getContext('2d'), grad = g.createLinearGradient(0, 0, c.width, 0);
    colors.forEach(function (col, i) { grad.addColorStop(i / Math.max(1, colors.length - 1), col); });
    g.fillStyle = grad; g.fillRect(0, 0, c.width, c.height);
    var lo = lg.vmin, hi = lg.vmax, t = lg.threshold;
    text($('legend-vmin'), fmt(lo)); text($('legend-vmax'), fmt(hi));
    if (isNum(lo) && isNum(hi) && isNum(t) && hi > lo) {
      var f = Math.min(1, Math.max(0, (t - lo) / (hi - lo)));
      g.fillStyle = '#fff'; g.fillRect(Math.round(f * c.width) - 1, 0, 3, c.height);
      $('legend-thr').style.left = (f * 100) + '%';
      text($('legend-thr'), 'threshold ' + fmt(t));
    }
    c.setAttribute('data-drawn', String(colors.length));
  }

  function current(cur) {
    var d = $('cur-decision');
    if (!cur) { text(d, 'no part yet'); return; }
    text(d, String(cur.decision || '-').replace('_', ' ').toUpperCase());
    d.className = String(cur.decision || '');
    text($('cur-seq'), '#' + cur.seq); text($('cur-score'), fmt(cur.score));
    text($('cur-threshold'), fmt(cur.threshold)); text($('cur-margin'), signed(cur.margin));
    text($('cur-reason'), cur.reason || '');
  }

  function counts(c) {
    var body = $('counts').tBodies[0], cols = [obj(c.since_start), obj(c.this_hour), obj(c.last_hour)];
    if (body.rows.length !== ROWS.length) {
      body.textContent = '';
      ROWS.forEach(function (r) {
        var tr = el('tr'); tr.appendChild(el('td', '', r[1]));
        for (var i = 0; i < 3; i++) { var td = el('td', 'num', '-'); td.id = 'c-' + i + '-' + r[0]; tr.appendChild(td); }
        body.appendChild(tr);
      });
    }
    ROWS.forEach(function (r) {
      for (var i = 0; i < 3; i++) {
        var v = cols[i][r[0]];
        text($('c-' + i + '-' + r[0]), r[0] === 'reject_rate' ? pct(v) : (isNum(v) ? v : '-'));
      }
    });
  }

  function chart(history, thr) {
    var c = $('chart'), w = c.clientWidth || 800, h = c.clientHeight || 170;
    if (c.width !== w) c.width = w;
    if (c.height !== h) c.height = h;
    var g = c.getContext('2d'), L = 52, R = 8, T = 8, B = 20;
    g.clearRect(0, 0, w, h);
    g.fillStyle = '#11161b'; g.fillRect(0, 0, w, h);
    var pts = history.filter(function (p) { return Array.isArray(p) && isNum(p[0]); });
    var scores = pts.map(function (p) { return p[1]; }).filter(isNum);
    if (isNum(thr)) scores.push(thr);
    c.setAttribute('data-points', String(pts.length));
    if (!pts.length || !scores.length) {
      g.fillStyle = '#8b96a3'; g.font = '13px sans-serif'; g.fillText('no parts yet', L, h / 2); return;
    }
    var lo = Math.min.apply(null, scores), hi = Math.max.apply(null, scores);
    var span = hi - lo || Math.abs(hi) || 1; lo -= span * 0.08; hi += span * 0.08;
    var t1 = pts[pts.length - 1][0], t0 = Math.min(pts[0][0], t1 - 10);
    var X = function (t) { return L + (w - L - R) * (t - t0) / ((t1 - t0) || 1); };
    var Y = function (s) { return T + (h - T - B) * (1 - (s - lo) / (hi - lo)); };
    g.strokeStyle = '#2a313a'; g.fillStyle = '#8b96a3'; g.font = '11px sans-serif'; g.lineWidth = 1;
    for (var i = 0; i <= 4; i++) {
      var s = lo + (hi - lo) * i / 4, y = Math.round(Y(s)) + 0.5;
      g.beginPath(); g.moveTo(L, y); g.lineTo(w - R, y); g.stroke(); g.fillText(fmt(s, 3), 4, y + 4);
    }
    g.fillText(hms(t0 * 1000), L, h - 5);
    g.fillText(hms(t1 * 1000), w - R - 52, h - 5);
    g.strokeStyle = '#5f8fc7'; g.beginPath();
    var first = true;
    pts.forEach(function (p) { if (!isNum(p[1])) { first = true; return; }
      if (first) g.moveTo(X(p[0]), Y(p[1])); else g.lineTo(X(p[0]), Y(p[1])); first = false; });
    g.stroke();
    pts.forEach(function (p) {
      if (p[2] === 'pass') return;
      var y = isNum(p[1]) ? Y(p[1]) : T + 4;
      g.fillStyle = p[2] === 'reject' ? '#ff5b4f' : '#ffa53a';
      g.beginPath(); g.arc(X(p[0]), y, 3, 0, 7); g.fill();
    });
    if (isNum(thr)) {
      var ty = Math.round(Y(thr)) + 0.5;
      g.strokeStyle = '#ff5b4f'; g.setLineDash([6, 4]); g.beginPath(); g.moveTo(L, ty); g.lineTo(w - R, ty); g.stroke();
      g.setLineDash([]); g.fillStyle = '#ff5b4f'; g.fillText('threshold ' + fmt(thr), w - R - 110, ty - 4);
    }
    text($('chart-info'), pts.length + ' parts, ' + dur(t1 - pts[0][0]));
  }

  function rejects(list, run) {   // keyed by the view's start too: a restarted run numbers its rejects anew
    var kOf = function (r) { return run + '/' + r.id + ':' + (r.url ? 1 : 0); };
    var key = list.map(kOf).join(',');
    text($('rejects-info'), list.length ? '(' + list.length + ', newest first; click to enlarge)' : '(none yet)');
    if (key === shownRejects) return;
    shownRejects = key;
    var box = $('rejects'), keep = {};
    Array.prototype.forEach.call(box.children, function (c) { keep[c.getAttribute('data-key')] = c; });
    var frag = document.createDocumentFragment();
    list.forEach(function (r) {
      var k = kOf(r), t = keep[k];
      if (!t) {
        t = el('div', 'thumb'); t.setAttribute('data-key', k); t.title = 'part #' + r.seq + ' ' + (r.reason || '');
        if (r.url) { var im = el('img'); im.alt = 'reject #' + r.seq; im.src = r.url; t.appendChild(im); }
        else t.appendChild(el('div', 'noimg', r.image === 'none' ? 'no image' : 'image not kept'));
        t.appendChild(el('div', 'cap', fmt(r.score) + '  ' + hms((r.t || 0) * 1000)));
        t.addEventListener('click', function () { openBox(r); });
      }
      frag.appendChild(t);
    });
    box.textContent = ''; box.appendChild(frag);
  }

  function openBox(r) {
    var img = $('lb-img');
    if (r.url) { img.src = r.url; img.style.display = ''; } else img.style.display = 'none';
    text($('lb-caption'), 'part #' + r.seq + '  ' + String(r.decision || '').replace('_', ' ') + '  score ' + fmt(r.score) +
         '  threshold ' + fmt(r.threshold) + '  margin ' + signed(r.margin) + '  ' + hms((r.t || 0) * 1000) +
         (r.reason ? '  (' + r.reason + ')' : ''));
    $('lightbox').className = 'open';
  }
  function closeBox() { $('lightbox').className = ''; }

  function camera(h) {
    var c = h.camera, cam = typeof c === 'string' ? {name: c} : obj(c);
    text($('cam-name'), cam.name || '-'); text($('cam-title'), cam.name || '');
    var st = $('cam-state');
    if (typeof cam.ok === 'boolean') {
      text(st, (cam.ok ? 'up' : 'down') + (cam.detail ? ' - ' + cam.detail : '')); st.className = cam.ok ? 'up' : 'down';
    } else text(st, '-');
    text($('cam-fps'), fmt(cam.fps, 3)); text($('cam-frames'), isNum(cam.frames) ? cam.frames : '-');
    text($('cam-lost'), isNum(cam.frames_lost) ? cam.frames_lost : '-');
    text($('cam-reconnects'), isNum(cam.reconnects) ? cam.reconnects : '-');
    text($('cam-errors'), isNum(cam.errors) ? cam.errors : '-');
    text($('cam-age'), isNum(cam.last_frame_age_s) ? fmt(cam.last_frame_age_s, 3) + ' s ago' : '-');
  }

  function outputs(h) {
    var list = arr(h.outputs), body = $('outputs').tBodies[0];
    $('no-outputs').style.display = list.length ? 'none' : '';
    $('outputs').style.display = list.length ? '' : 'none';
    while (body.rows.length > list.length) body.deleteRow(-1);
    while (body.rows.length < list.length) { var tr = body.insertRow(-1); for (var i = 0; i < 5; i++) tr.insertCell(-1).className = i ? 'num' : ''; }
    list.forEach(function (o, i) {
      o = obj(o); var cells = body.rows[i].cells;
      text(cells[0], (o.name || '?') + (o.type && o.type !== o.name ? ' (' + o.type + ')' : ''));
      cells[0].title = o.target || '';
      text(cells[1], o.ok === true ? 'up' : o.ok === false ? 'down' : '-');
      cells[1].className = o.ok === true ? 'up' : o.ok === false ? 'down' : '';
      cells[1].title = o.detail || '';
      text(cells[2], ago(o.last_delivery));
      text(cells[3], isNum(o.delivered) ? o.delivered : '-');
      text(cells[4], (isNum(o.undelivered) ? o.undelivered : '-') + (isNum(o.pending) && o.pending ? ' (' + o.pending + ' pending)' : ''));
    });
  }

  function alarms(h) {
    var list = arr(h.alarms).map(obj), ul = $('alarms');
    text($('alarm-count'), list.length);
    $('no-alarms').style.display = list.length ? 'none' : '';
    $('ack-all').style.display = list.length ? '' : 'none';
    var key = JSON.stringify(list.map(function (a) { return [a.key, a.count, a.reason]; }));
    if (ul.getAttribute('data-key') === key) return;
    ul.setAttribute('data-key', key); ul.textContent = '';
    list.forEach(function (a) {
      var li = el('li'), since = a.since ? new Date(a.since) : null;
      li.appendChild(el('span', 'reason', a.reason || a.key || 'alarm'));
      li.appendChild(el('span', 'muted small', (a.kind || '') + (isNum(a.count) && a.count > 1 ? ' x' + a.count : '') +
                        (since && !isNaN(since.getTime()) ? ' since ' + hms(since.getTime()) : '')));
      var b = el('button', '', 'Acknowledge'); b.type = 'button';
      b.addEventListener('click', function () { ack(a.key); });
      li.appendChild(b); ul.appendChild(li);
    });
  }

  function ack(key) {
    var url = '/alarms/ack' + (key ? '?key=' + encodeURIComponent(key) : '') + camQuery(key ? '&' : '?');
    var headers = token ? {'Authorization': 'Bearer ' + token} : {};
    fetch(url, {method: 'POST', headers: headers}).then(function (r) {
      if (r.status === 403) {
        $('token-row').style.display = 'flex'; $('token-send').setAttribute('data-key', key || '');
        text($('ack-msg'), token ? 'the token was refused' : 'not on the box itself: enter the run\u2019s http.token');
        token = null; return null;
      }
      return r.json().then(function (b) {
        var acked = arr(obj(b).acked);
        if (r.ok) $('token-row').style.display = 'none';
        text($('ack-msg'), r.ok ? 'acknowledged: ' + (acked.join(', ') || 'nothing active') : 'refused: ' + (obj(b).error || r.status));
        if (r.ok) poll(true);
      });
    }).catch(function (e) { text($('ack-msg'), 'acknowledge failed: ' + e); });
  }

  function health(h) {
    var st = String(h.status || 'unknown'), pill = $('status');
    text(pill, st); pill.className = 'pill ' + st.replace(/[^a-z_]/g, '');
    if (isNum(h.uptime_s)) { uptimeBase = h.uptime_s; uptimeAt = Date.now(); }
    camera(h); outputs(h); alarms(h);
  }

  function cameras(list, shown) {   // a station: one button per camera, coloured by its status
    var box = $('cameras'), key = JSON.stringify([list, shown]);
    if (!list.length || key === shownCams) return;
    shownCams = key; box.textContent = '';
    list.forEach(function (c) {
      c = obj(c);
      var b = el('button', 'pill ' + String(c.status || 'unknown').replace(/[^a-z_]/g, '') + (c.name === shown ? ' sel' : ''),
                 c.name);
      b.type = 'button'; b.setAttribute('data-camera', c.name);
      b.addEventListener('click', function () { pick(c.name); });
      box.appendChild(b);
    });
  }

  function pick(name) {
    if (name === cam) return;
    cam = name; shownRejects = ''; shownCams = '';
    history.replaceState(null, '', '?camera=' + encodeURIComponent(name));
    $('stream').src = '/stream' + camQuery('?');
    poll(true);
  }

  function show(d) {
    d = obj(d); live = d; polls++;
    if (typeof d.camera === 'string' && d.camera) {
      if (!cam) { cam = d.camera; $('stream').src = '/stream' + camQuery('?'); }
      cameras(arr(d.cameras), d.camera);
    }
    if (isNum(d.now)) offset = d.now * 1000 - Date.now();
    var h = obj(d.health);
    if (!isNum(h.uptime_s) && isNum(d.now) && isNum(d.started)) { uptimeBase = d.now - d.started; uptimeAt = Date.now(); }
    legend(obj(d.legend)); current(d.current); counts(obj(d.counts));
    chart(arr(d.history), d.threshold); rejects(arr(d.rejects).map(obj), String(d.started) + '/' + (d.camera || '')); health(h); tick();
    text($('conn'), 'updated ' + hms(Date.now() + offset)); $('conn').className = 'muted';
    document.body.setAttribute('data-polls', String(polls));
  }

  var timer = null;
  function poll(now) {
    if (timer) { clearTimeout(timer); timer = null; }
    fetch('/live.json' + camQuery('?'), {cache: 'no-store'}).then(function (r) { return r.json(); }).then(show)
      .catch(function () { text($('conn'), 'connection lost: retrying'); $('conn').className = 'down'; })
      .then(function () { if (!timer) timer = setTimeout(poll, 1000); });
  }

  $('ack-all').addEventListener('click', function () { ack(null); });
  $('token-send').addEventListener('click', function () {
    token = $('token').value.trim() || null; ack($('token-send').getAttribute('data-key') || null);
  });
  $('token').addEventListener('keydown', function (e) { if (e.key === 'Enter') $('token-send').click(); });
  $('lightbox').addEventListener('click', closeBox);
  document.addEventListener('keydown', function (e) { if (e.key === 'Escape') closeBox(); });
  $('stream').addEventListener('error', function () {   // the run restarted or the network blinked
    setTimeout(function () { $('stream').src = '/stream?' + (cam ? 'camera=' + encodeURIComponent(cam) + '&' : '') + Date.now(); }, 2000);
  });
  window.addEventListener('resize', function () { if (live) { legend(obj(live.legend)); chart(arr(live.history), live.threshold); } });
  if (cam) $('stream').src = '/stream' + camQuery('?');
  setInterval(tick, 250);
  poll();
})();
"""

PAGE = ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        "<title>edgead live</title><link rel='icon' href='data:,'>"
        f"<style>{_CSS}</style></head><body>{_BODY}<script>{_JS}</script></body></html>").encode("utf-8")
