"""The activity classifier's report: matrix -> sessions/windows -> timeline with traces."""

import numpy as np

from . import _page

_SCRIPT = r"""
const D = DATA;
const top = section('overview', 'Evaluation', false);
top.appendChild(el('p', {text: `${D.n_rows} rows, ${D.sessions.length} sessions, prediction window ${D.prediction_window} rows; accuracy ${fmt(D.accuracy)} (per row).`}));
notes(top, D.notes);
const cmBox = section('matrix', 'Confusion matrix (rows; click a cell)', false);
const detail = section('cell-details', 'Sessions behind the selected cell', false);
detail.style.maxWidth = '520px';
const detailBody = el('div', {id: 'cell-sessions', text: 'Click a cell of the matrix.'});
detail.appendChild(detailBody);
const mBox = section('metrics', 'Per-class precision and recall (rows)', false);
metricsTable(mBox, D.per_class);
// [0, 1, 2, 5] -> "0-2, 5"
function ranges(ws){
  const out = [];
  for (let i = 0; i < ws.length; i++) {
    let j = i; while (j + 1 < ws.length && ws[j + 1] === ws[j] + 1) j++;
    out.push(j > i ? `${ws[i]}-${ws[j]}` : `${ws[i]}`); i = j;
  }
  return out.join(', ');
}
const tl = section('timeline', 'Session timeline', true);
const pick = el('select', {id: 'session-select'});
D.sessions.forEach((s, k) => pick.appendChild(el('option', {value: k, text: `${s.id} (${s.n_rows} rows, ${s.errors} misclassified)`})));
tl.appendChild(el('p', {}, [document.createTextNode('Session: '), pick]));
const legend = el('p', {'class': 'note'});
D.classes.forEach((c, i) => { legend.appendChild(el('span', {'class': 'swatch', style: `background:${color(i)}`})); legend.appendChild(document.createTextNode(c + '  ')); });
if (D.row_labels.length > D.classes.length) legend.appendChild(document.createTextNode('(grey: a label the model does not know)'));
tl.appendChild(legend);
const tlBox = el('div', {id: 'timeline-view'});
tl.appendChild(tlBox);
let highlight = [];
function drawTimeline(k){
  const S = D.sessions[k];
  tlBox.textContent = '';
  const W = 1100, left = 90, plotW = W - left - 10, band = 18;
  const feats = S.traces ? S.traces.values.length : 0, lane = 46;
  const H = 20 + 2 * (band + 6) + feats * lane + 24;
  const s = svg('svg', {width: W, height: H, id: 'timeline-svg', 'data-session': S.id, 'font-size': 11});
  const xs = r => left + plotW * r / Math.max(1, S.n_rows);
  const rowY = [20, 20 + band + 6];
  ['true', 'predicted'].forEach((name, b) => {
    s.appendChild(svg('text', {x: left - 6, y: rowY[b] + 13, 'text-anchor': 'end', text: name}));
    for (const [a, e, c] of (b === 0 ? S.true_runs : S.pred_runs)) {
      const lab = b === 0 ? D.row_labels[c] : D.classes[c];
      const known = b === 1 || c < D.classes.length;
      s.appendChild(svg('rect', {x: xs(a), y: rowY[b], width: Math.max(0.5, xs(e) - xs(a)), height: band,
                                 fill: known ? color(c) : '#999', 'class': b === 0 ? 'run-true' : 'run-pred'},
                        [svg('title', {text: `${name}: ${lab}, rows ${a}-${e - 1}`})]));
    }
  });
  const y0 = 20 + 2 * (band + 6);
  if (S.traces) {
    const tr = S.traces;
    tr.values.forEach((vals, f) => {
      const yTop = y0 + f * lane;
      s.appendChild(svg('text', {x: left - 6, y: yTop + lane / 2 + 4, 'text-anchor': 'end', text: short(D.features[f], 12)}));
      s.appendChild(svg('line', {x1: left, x2: left + plotW, y1: yTop + lane - 2, y2: yTop + lane - 2, stroke: '#eee'}));
      const pts = vals.map((v, i) => `${xs(tr.rows[i]).toFixed(1)},${(yTop + 2 + (lane - 6) * (1 - v / 999)).toFixed(1)}`).join(' ');
      s.appendChild(svg('polyline', {points: pts, fill: 'none', stroke: '#333', 'stroke-width': 0.8, 'class': 'trace'},
                        [svg('title', {text: `${D.features[f]}: ${fmt(tr.lo[f])} .. ${fmt(tr.hi[f])}`})]));
    });
  } else {
    s.appendChild(svg('text', {x: left, y: y0 + 14, fill: '#777', text: 'Sensor traces not embedded for this session (see the note at the top).'}));
  }
  for (const w of highlight.filter(h => h[0] === k)) {
    for (const wi of w[1]) {
      const a = wi * D.prediction_window, e = Math.min(S.n_rows, a + D.prediction_window);
      s.appendChild(svg('rect', {x: xs(a), y: 14, width: Math.max(1, xs(e) - xs(a)), height: H - 34,
                                 fill: 'rgba(255,200,0,0.25)', stroke: '#d90', 'class': 'window-highlight',
                                 'data-window': wi}));
    }
  }
  s.appendChild(svg('text', {x: left, y: H - 6, fill: '#555', text: `row 0`}));
  s.appendChild(svg('text', {x: left + plotW, y: H - 6, 'text-anchor': 'end', fill: '#555', text: `row ${S.n_rows - 1}`}));
  tlBox.appendChild(s);
}
pick.onchange = () => drawTimeline(Number(pick.value));
drawMatrix(cmBox, D.row_labels, D.classes, D.counts, (i, j) => {
  detailBody.textContent = '';
  const items = D.cells[`${i},${j}`] || [];
  detailBody.appendChild(el('p', {text: `true ${D.row_labels[i]}, predicted ${D.classes[j]}: ${D.counts[i][j]} rows in ${items.length} session(s)`}));
  if (D.cells_truncated[`${i},${j}`]) detailBody.appendChild(el('p', {'class': 'note', text: `Showing the ${items.length} sessions with the most rows in this cell, of ${D.cells_truncated[`${i},${j}`]}.`}));
  const list = el('ul', {'class': 'cell-session-list'});
  highlight = items.map(it => [it[0], it[2]]);
  for (const [k, n, wins, more] of items) {
    const S = D.sessions[k];
    const li = el('li', {'class': 'cell-session', 'data-session': S.id, 'data-rows': n}, [
      el('span', {'class': 'clickable', text: `session ${S.id}`, onclick: () => { pick.value = k; drawTimeline(k); }}),
      document.createTextNode(`: ${n} rows; window${wins.length + more > 1 ? 's' : ''} ${ranges(wins)}${more ? ` and ${more} more` : ''}`)]);
    list.appendChild(li);
  }
  detailBody.appendChild(list);
  if (items.length) { pick.value = items[0][0]; drawTimeline(items[0][0]); }
});
drawTimeline(0);
"""


def _runs(codes):
    """Run-length encoding: [[start, end, code], ...] with end exclusive."""
    codes = np.asarray(codes)
    if len(codes) == 0:
        return []
    change = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(codes)]])
    return [[int(a), int(e), int(codes[a])] for a, e in zip(starts, ends)]


def _trace(values, points):
    """Min/max envelope of each column over at most ``points`` stretches, scaled to 0..999.

    Two points per stretch (at its first and last row), the extreme that comes first in
    time first, keep the spikes that plain subsampling would drop.
    """
    n, F = values.shape
    buckets = max(1, min(points, n))
    edges = np.unique(np.linspace(0, n, buckets + 1).astype(np.int64))
    a, e = edges[:-1], edges[1:]
    lo_v = np.minimum.reduceat(values, a, axis=0)
    hi_v = np.maximum.reduceat(values, a, axis=0)
    # Whether the minimum comes before the maximum, per stretch and column.
    idx = np.arange(n)[:, None]
    lo_at = np.minimum.reduceat(np.where(values == np.repeat(lo_v, e - a, axis=0), idx, n),
                                a, axis=0)
    hi_at = np.minimum.reduceat(np.where(values == np.repeat(hi_v, e - a, axis=0), idx, n),
                                a, axis=0)
    first = np.where(lo_at <= hi_at, lo_v, hi_v)
    second = np.where(lo_at <= hi_at, hi_v, lo_v)
    pts = np.stack([first, second], axis=1).reshape(-1, F)        # (2B, F)
    rows = np.stack([a, e - 1], axis=1).reshape(-1)
    finite = np.where(np.isfinite(pts), pts, np.nan)
    lo = np.nan_to_num(np.nanmin(finite, axis=0)) if np.isfinite(pts).any() else np.zeros(F)
    hi = np.nan_to_num(np.nanmax(finite, axis=0)) if np.isfinite(pts).any() else np.ones(F)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = np.nan_to_num(np.round((finite - lo) / span * 999), nan=0).astype(np.int64)
    return {"rows": rows.tolist(), "values": scaled.T.tolist(), "lo": lo.tolist(),
            "hi": hi.tolist()}


def activity_report(session_ids, labels, predictions, features, feature_names, classes,
                    prediction_window, title="Activity classifier evaluation",
                    max_trace_sessions=40, trace_points=300, max_sessions_per_cell=100,
                    max_windows_listed=30):
    """The HTML report of an activity classifier's per-row evaluation.

    Parameters
    ----------
    session_ids : array-like (n,)
        Session of each row; a session's rows in time order (sessions may interleave).
    labels, predictions : array-like (n,)
        True and predicted label of each row. Predictions must be among ``classes``;
        true labels may include labels the model does not know (their own matrix rows).
    features : ndarray (n, F)
        The raw sensor values, drawn as traces.
    feature_names : list of str
    classes : list
        The model's classes (matrix columns, colours).
    prediction_window : int
        Rows per window: row ``r`` of a session (counting from 0) lies in window
        ``r // prediction_window``.
    max_trace_sessions : int
        Sensor traces are embedded for at most this many sessions (those with
        the most misclassified rows); every session keeps its label timeline.
    trace_points : int
        Buckets per trace (a min/max envelope, so two points per bucket).
    max_sessions_per_cell, max_windows_listed : int
        Bounds on what a matrix cell lists.

    Returns
    -------
    str
        The HTML document.

    Examples
    --------
    >>> import numpy as np
    >>> from toolkit._explore import activity_report
    >>> html = activity_report(session_ids=[1] * 6 + [2] * 4,
    ...                        labels=['walk'] * 6 + ['run'] * 4,
    ...                        predictions=['walk'] * 4 + ['run'] * 6,
    ...                        features=np.arange(20.0).reshape(10, 2),
    ...                        feature_names=['ax', 'ay'], classes=['run', 'walk'],
    ...                        prediction_window=2)
    >>> '"counts":[[4,0],[2,4]]' in html      # rows: true run, walk; columns: predicted
    True
    """
    import pandas as pd
    session_ids = np.asarray(session_ids)
    labels = np.asarray([_page.label_str(v) for v in labels], dtype=object)
    predictions = np.asarray([_page.label_str(v) for v in predictions], dtype=object)
    features = np.asarray(features, np.float64).reshape(len(session_ids), -1)
    classes = [_page.label_str(c) for c in classes]
    unknown = sorted(set(labels) - set(classes))
    row_labels = classes + unknown
    r_index = {c: i for i, c in enumerate(row_labels)}
    c_index = {c: i for i, c in enumerate(classes)}
    t = np.array([r_index[v] for v in labels], np.int64)
    p = np.array([c_index[v] for v in predictions], np.int64)
    codes, uniques = pd.factorize(pd.Series(session_ids), sort=False)
    order = np.argsort(codes, kind="stable")
    lengths = np.bincount(codes, minlength=len(uniques))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pos = np.empty(len(codes), np.int64)
    pos[order] = np.arange(len(codes)) - np.repeat(starts, lengths)
    window = pos // prediction_window

    counts = np.zeros((len(row_labels), len(classes)), np.int64)
    np.add.at(counts, (t, p), 1)
    errors = np.bincount(codes, weights=(t != p) if len(t) else None,
                         minlength=len(uniques)).astype(np.int64)
    traced = set(np.argsort(-errors, kind="stable")[:max_trace_sessions].tolist())
    sessions = []
    for k in range(len(uniques)):
        rows = order[starts[k]:starts[k] + lengths[k]]
        sessions.append({
            "id": _page.label_str(uniques[k]), "n_rows": int(lengths[k]),
            "errors": int(errors[k]),
            "true_runs": _runs(t[rows]), "pred_runs": _runs(p[rows]),
            "traces": _trace(features[rows], trace_points) if k in traced and len(rows) else None})

    # cell -> sessions: group rows by (true, pred, session, window).
    frame = pd.DataFrame({"t": t, "p": p, "s": codes, "w": window})
    cells, truncated = {}, {}
    for (ti, pi), g in frame.groupby(["t", "p"], sort=False):
        per_session = g.groupby("s")["w"].agg(["size", "unique"]).sort_values(
            "size", ascending=False, kind="mergesort")
        if len(per_session) > max_sessions_per_cell:
            truncated[f"{ti},{pi}"] = len(per_session)
            per_session = per_session.iloc[:max_sessions_per_cell]
        items = []
        for s, row in per_session.iterrows():
            wins = sorted(int(w) for w in row["unique"])
            items.append([int(s), int(row["size"]), wins[:max_windows_listed],
                          max(0, len(wins) - max_windows_listed)])
        cells[f"{ti},{pi}"] = items

    n_rows = int(len(t))
    notes = []
    if len(uniques) > max_trace_sessions:
        notes.append(f"Sensor traces are embedded for {max_trace_sessions} of {len(uniques)} "
                     "sessions (those with the most misclassified rows); every session has "
                     "its label timeline.")
    notes.append(f"Traces are drawn from at most {2 * trace_points} points per session and "
                 "feature (the minimum and maximum of each stretch), each feature scaled to "
                 "its own lane.")
    if unknown:
        notes.append(f"True labels the model does not know ({', '.join(unknown)}) have their "
                     "own rows; they always count as errors.")
    payload = {
        "classes": classes, "row_labels": row_labels, "counts": counts.tolist(),
        "per_class": _page.per_class_metrics(counts, row_labels, classes),
        "accuracy": float(np.mean(t == p)) if n_rows else float("nan"),
        "n_rows": n_rows, "prediction_window": int(prediction_window),
        "features": [str(f) for f in feature_names], "sessions": sessions,
        "cells": cells, "cells_truncated": truncated, "notes": notes,
    }
    return _page.page(title, "activity_classifier", payload, _SCRIPT,
                      subtitle=f"{n_rows} rows, {len(uniques)} sessions")
