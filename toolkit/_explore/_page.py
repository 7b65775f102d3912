"""The page shell shared by the reports: one HTML file, data as JSON, plain SVG + JS.

A report is ``page(title, kind, payload, script)``: the payload is embedded as a
JSON ``<script>`` block and drawn by the shared helpers below plus a task
script. Nothing is fetched: images are ``data:`` URIs and a Content Security
Policy forbids every other source, so a report opened from disk (or mailed)
shows the same thing everywhere and cannot call out.
"""

import base64
import io
import json
import math

import numpy as np

#: Class colours (Tableau 10, then greys); JS picks ``COLORS[i % n]``.
COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
          "#ff9da7", "#9c755f", "#bab0ac")

_CSS = r"""
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#26323f;color:#fff;padding:10px 18px}
header h1{font-size:18px;margin:0}
header .sub{opacity:.8;font-size:12px}
main{padding:10px 18px;display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 12px}
section h2{font-size:15px;margin:0 0 8px 0}
.note{font-size:12px;color:#555;margin:4px 0}
.wide{flex:1 1 100%}
table.metrics{border-collapse:collapse;font-size:13px}
table.metrics td,table.metrics th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}
table.metrics td:first-child,table.metrics th:first-child{text-align:left}
.bar{display:inline-block;height:8px;background:#4e79a7;vertical-align:middle;margin-left:4px}
.cm-cell{cursor:pointer}
.cm-cell:hover rect{stroke:#222;stroke-width:1.5}
.cm-cell.selected rect{stroke:#d00;stroke-width:3}
.thumbs{display:flex;flex-wrap:wrap;gap:6px}
.thumb{font-size:11px;text-align:center;width:100px}
.thumb img{display:block;width:96px;height:96px;object-fit:contain;background:#eee;border:1px solid #ccc}
.clickable{cursor:pointer;color:#1f5fa8;text-decoration:underline}
.swatch{display:inline-block;width:10px;height:10px;margin-right:3px;vertical-align:middle}
select,input{font:inherit}
.det{display:inline-block;margin:4px;vertical-align:top;font-size:11px}
"""

_BASE_JS = r"""
const DATA = JSON.parse(document.getElementById('report-data').textContent);
const COLORS = %COLORS%;
const SVGNS = 'http://www.w3.org/2000/svg';
function color(i){return COLORS[((i % COLORS.length) + COLORS.length) % COLORS.length];}
// Build DOM nodes; text always goes in as textContent, never as HTML.
function el(tag, attrs, children){
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') n.textContent = v; else if (k === 'onclick') n.onclick = v;
    else n.setAttribute(k, v);
  }
  for (const c of children || []) if (c !== null && c !== undefined) n.appendChild(c);
  return n;
}
function svg(tag, attrs, children){
  const n = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') n.textContent = v; else if (k === 'onclick') n.onclick = v;
    else n.setAttribute(k, v);
  }
  for (const c of children || []) if (c) n.appendChild(c);
  return n;
}
function fmt(x, d){ return (x === null || x === undefined || Number.isNaN(x)) ? '-' : Number(x).toFixed(d === undefined ? 3 : d); }
function short(s, n){ s = String(s); return s.length > n ? s.slice(0, n - 1) + '\u2026' : s; }
// Confusion matrix: rows true labels, columns predicted; shade = share of the row.
function drawMatrix(box, rows, cols, counts, onSelect){
  const cell = Math.max(26, Math.min(56, Math.floor(520 / Math.max(rows.length, cols.length))));
  const left = 120, top = 100;
  const W = left + cell * cols.length + 10, H = top + cell * rows.length + 30;
  const s = svg('svg', {width: W, height: H, id: 'confusion-matrix', 'font-size': 11});
  cols.forEach((c, j) => {
    const x = left + j * cell + cell / 2;
    s.appendChild(svg('text', {x: x, y: top - 6, transform: `rotate(-45 ${x} ${top - 6})`,
                               text: short(c, 16)}));
  });
  rows.forEach((r, i) => s.appendChild(svg('text', {x: left - 6, y: top + i * cell + cell / 2 + 4,
                                                   'text-anchor': 'end', text: short(r, 16)})));
  s.appendChild(svg('text', {x: left + cell * cols.length / 2, y: H - 8, 'text-anchor': 'middle',
                             'font-weight': 'bold', text: 'predicted'}));
  s.appendChild(svg('text', {x: 12, y: top - 20, 'font-weight': 'bold', text: 'true \u2193'}));
  rows.forEach((r, i) => {
    const total = counts[i].reduce((a, b) => a + b, 0) || 1;
    cols.forEach((c, j) => {
      const n = counts[i][j], f = n / total;
      const diag = rows[i] === cols[j];
      const fill = n === 0 ? '#fff' : (diag ? `rgba(78,121,167,${0.15 + 0.85 * f})`
                                            : `rgba(225,87,89,${0.15 + 0.85 * f})`);
      const g = svg('g', {'class': 'cm-cell', 'data-row': i, 'data-col': j, 'data-count': n,
                          'data-true': r, 'data-pred': c});
      g.appendChild(svg('rect', {x: left + j * cell, y: top + i * cell, width: cell, height: cell,
                                 fill: fill, stroke: '#ccc'}));
      g.appendChild(svg('text', {x: left + j * cell + cell / 2, y: top + i * cell + cell / 2 + 4,
                                 'text-anchor': 'middle', fill: f > 0.6 ? '#fff' : '#222',
                                 text: n}));
      g.appendChild(svg('title', {text: `true ${r}, predicted ${c}: ${n} (${fmt(100 * f, 1)}% of the row)`}));
      g.onclick = () => {
        for (const o of s.querySelectorAll('.cm-cell.selected')) o.classList.remove('selected');
        g.classList.add('selected');
        onSelect(i, j);
      };
      s.appendChild(g);
    });
  });
  box.appendChild(s);
  return s;
}
// Per-class precision / recall / F1 / support table, with bars.
function metricsTable(box, perClass){
  const t = el('table', {'class': 'metrics', id: 'per-class-metrics'});
  t.appendChild(el('tr', {}, ['class', 'precision', 'recall', 'F1', 'support'].map(h => el('th', {text: h}))));
  for (const m of perClass) {
    const bar = v => el('span', {'class': 'bar', style: `width:${Math.round(60 * (v || 0))}px`});
    t.appendChild(el('tr', {'data-class': m.label}, [
      el('td', {text: m.label}),
      el('td', {}, [document.createTextNode(fmt(m.precision)), bar(m.precision)]),
      el('td', {}, [document.createTextNode(fmt(m.recall)), bar(m.recall)]),
      el('td', {text: fmt(m.f1)}), el('td', {text: m.support})]));
  }
  box.appendChild(t);
}
function section(id, title, wide){
  const s = el('section', {id: id, 'class': wide ? 'wide' : ''}, [el('h2', {text: title})]);
  document.querySelector('main').appendChild(s);
  return s;
}
function notes(box, lines){ for (const l of lines || []) box.appendChild(el('p', {'class': 'note sampling-note', text: l})); }
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; \
style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title><style>%CSS%</style></head>
<body data-report="%KIND%"><header><h1>%TITLE%</h1><div class="sub">%SUBTITLE%</div></header>
<main></main>
<script type="application/json" id="report-data">%DATA%</script>
<script>%BASE%
(function(){
%SCRIPT%
})();
document.body.setAttribute('data-ready', '1');
</script></body></html>
"""


def _escape_html(text):
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if not math.isfinite(float(o)) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _clean(o):
    """NaN/inf -> None (JSON has no NaN), recursively."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def to_json(payload):
    """JSON safe to put inside a <script> element (no '</' can end it early)."""
    text = json.dumps(_clean(payload), default=_json_default, separators=(",", ":"),
                      allow_nan=False)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def page(title, kind, payload, script, subtitle=""):
    """The whole HTML document of one report."""
    return (_TEMPLATE.replace("%CSS%", _CSS)
            .replace("%BASE%", _BASE_JS.replace("%COLORS%", json.dumps(list(COLORS))))
            .replace("%SCRIPT%", script)
            .replace("%KIND%", kind)
            .replace("%SUBTITLE%", _escape_html(subtitle))
            .replace("%TITLE%", _escape_html(title))
            .replace("%DATA%", to_json(payload)))


def image_data_uri(value, max_side, quality=80, where="the image"):
    """Any image the toolkit reads -> (JPEG ``data:`` URI of at most max_side px, (W, H))."""
    from PIL import Image
    from .. import _images
    img = _images.load_image(value, where)
    size = img.size
    scale = min(1.0, max_side / max(size))
    if scale < 1.0:
        img = img.resize((max(1, round(size[0] * scale)), max(1, round(size[1] * scale))),
                         Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), size


def positional(values):
    """``values[k]`` by position, also for a pandas Series whose index is not 0..n-1."""
    return values.iloc if hasattr(values, "iloc") else values


def label_str(v):
    """A label as the page shows and matches it: the model file's form (int for numbers)."""
    from .._validate import norm_label
    return str(norm_label(v))


def per_class_metrics(counts, row_labels, col_labels):
    """Precision, recall, F1 and support per model class from a confusion count table.

    ``counts[i, j]``: rows with true label ``row_labels[i]`` predicted ``col_labels[j]``;
    rows whose true label is not a model class count against precision only.
    """
    counts = np.asarray(counts, np.int64)
    out = []
    predicted = counts.sum(axis=0)
    for j, c in enumerate(col_labels):
        i = row_labels.index(c) if c in row_labels else None
        tp = int(counts[i, j]) if i is not None else 0
        support = int(counts[i].sum()) if i is not None else 0
        p = tp / predicted[j] if predicted[j] else 0.0
        r = tp / support if support else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        out.append({"label": c, "precision": p, "recall": r, "f1": f, "support": support})
    return out
