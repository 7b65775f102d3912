"""The object detector's report: per-class AP and precision-recall curves, boxes on images.

:func:`precision_recall` matches detections to ground truth the way COCO does
for AP@0.5 (per image and class, at most 100 detections, most confident first,
each to the unmatched true box of highest IoU >= 0.5), so its per-class AP is
the ``average_precision_50`` that ``evaluate`` reports, and the matches say
which drawn box is a true positive, a false positive or a miss.
"""

import numpy as np

from .. import _boxes as coco
from . import _page

_SLIDER_STEPS = np.round(np.linspace(0.0, 1.0, 101), 2)

_SCRIPT = r"""
const D = DATA;
const ov = section('overview', 'Evaluation', false);
ov.appendChild(el('p', {text: `${D.n_images} images, ${D.n_gt} true boxes, ${D.n_det} detections; mAP@${D.iou_threshold} ${fmt(D.map)}.`}));
notes(ov, D.notes);
const apBox = section('per-class-ap', `Average precision per class (IoU ${D.iou_threshold})`, false);
const t = el('table', {'class': 'metrics', id: 'ap-table'});
t.appendChild(el('tr', {}, ['class', 'AP', 'true boxes', 'detections', `P / R at threshold`].map(h => el('th', {text: h}))));
const opCells = [];
D.per_class.forEach((m, k) => {
  const op = el('td', {'class': 'operating-point'});
  opCells.push(op);
  t.appendChild(el('tr', {'data-class': m.label}, [
    el('td', {}, [el('span', {'class': 'swatch', style: `background:${color(k)}`}),
                  el('span', {'class': 'clickable', text: m.label, onclick: () => { classSel.value = m.label; render(); }})]),
    el('td', {text: fmt(m.ap)}), el('td', {text: m.n_gt}), el('td', {text: m.n_det}), op]));
});
apBox.appendChild(t);
const prBox = section('pr-curves', 'Precision-recall curves', false);
const PW = 360, PH = 300, L = 44, T = 10;
const pr = svg('svg', {width: PW + L + 20, height: PH + T + 40, id: 'pr-svg', 'font-size': 11});
pr.appendChild(svg('rect', {x: L, y: T, width: PW, height: PH, fill: '#fff', stroke: '#999'}));
for (let v = 0; v <= 1.001; v += 0.25) {
  pr.appendChild(svg('text', {x: L + v * PW, y: T + PH + 14, 'text-anchor': 'middle', text: v.toFixed(2)}));
  pr.appendChild(svg('text', {x: L - 4, y: T + (1 - v) * PH + 4, 'text-anchor': 'end', text: v.toFixed(2)}));
}
pr.appendChild(svg('text', {x: L + PW / 2, y: T + PH + 30, 'text-anchor': 'middle', text: 'recall'}));
pr.appendChild(svg('text', {x: 12, y: T + PH / 2, transform: `rotate(-90 12 ${T + PH / 2})`, 'text-anchor': 'middle', text: 'precision'}));
const dots = [];
D.per_class.forEach((m, k) => {
  if (m.recall.length) {
    const pts = m.recall.map((r, i) => `${(L + r * PW).toFixed(1)},${(T + (1 - m.precision[i]) * PH).toFixed(1)}`);
    pts.unshift(`${L},${(T + (1 - m.precision[0]) * PH).toFixed(1)}`);
    pr.appendChild(svg('polyline', {points: pts.join(' '), fill: 'none', stroke: color(k), 'stroke-width': 2,
                                    'class': 'pr-curve', 'data-class': m.label},
                       [svg('title', {text: `${m.label}: AP ${fmt(m.ap)}`})]));
  }
  const d = svg('circle', {r: 4, fill: color(k), stroke: '#000', 'class': 'pr-point', visibility: 'hidden'});
  dots.push(d); pr.appendChild(d);
});
prBox.appendChild(pr);
prBox.appendChild(el('p', {'class': 'note', text: 'Precision made monotone (as AP integrates it); dots: the confidence threshold below.'}));
const imBox = section('images', 'Images', true);
const classSel = el('select', {id: 'class-filter'}, [el('option', {value: '', text: 'all classes'})]);
D.classes.forEach(c => classSel.appendChild(el('option', {value: c, text: c})));
const thr = el('input', {id: 'threshold', type: 'range', min: D.min_confidence, max: 1, step: 0.01, value: D.threshold});
const thrText = el('span', {id: 'threshold-value'});
const errOnly = el('input', {id: 'errors-only', type: 'checkbox'});
imBox.appendChild(el('p', {}, [document.createTextNode('Class: '), classSel, document.createTextNode('  confidence \u2265 '), thr, thrText,
                               document.createTextNode('  '), errOnly, document.createTextNode(' only images with errors')]));
imBox.appendChild(el('p', {'class': 'note', text: 'Solid green: detection matching a true box (true positive); solid red: false positive; dashed grey: true box found; dashed orange, thick: missed true box.'}));
const grid = el('div', {id: 'image-grid'});
imBox.appendChild(grid);
const shownNote = el('p', {'class': 'note', id: 'shown-count'});
imBox.appendChild(shownNote);
function opPoint(k, th){
  const p = D.per_class[k].op[Math.round(th * 100)];
  return p ? [p[1], p[0]] : null;
}
function render(){
  const th = Number(thr.value), cls = classSel.value;
  thrText.textContent = ' ' + th.toFixed(2);
  D.per_class.forEach((m, k) => {
    const p = opPoint(k, th);
    opCells[k].textContent = p ? `${fmt(p[1], 2)} / ${fmt(p[0], 2)}` : '-';
    if (p) { dots[k].setAttribute('cx', L + p[0] * PW); dots[k].setAttribute('cy', T + (1 - p[1]) * PH); dots[k].setAttribute('visibility', 'visible'); }
    else dots[k].setAttribute('visibility', 'hidden');
  });
  grid.textContent = '';
  let shown = 0;
  for (const im of D.images) {
    const gts = im.gt.filter(g => !cls || D.classes[g.c] === cls);
    const dets = im.det.filter(d => d.s >= th && (!cls || D.classes[d.c] === cls));
    const misses = gts.filter(g => g.ms === null || g.ms < th).length;
    const fps = dets.filter(d => !d.tp).length;
    if (cls && !gts.length && !dets.length) continue;
    if (errOnly.checked && !misses && !fps) continue;
    shown++;
    const scale = 300 / Math.max(im.w, im.h);
    const s = svg('svg', {width: Math.round(im.w * scale), height: Math.round(im.h * scale), viewBox: `0 0 ${im.w} ${im.h}`,
                          'class': 'det-image', 'data-index': im.index});
    s.appendChild(svg('image', {href: im.src, x: 0, y: 0, width: im.w, height: im.h, preserveAspectRatio: 'none'}));
    for (const g of gts) {
      const miss = g.ms === null || g.ms < th;
      s.appendChild(svg('rect', {x: g.b[0], y: g.b[1], width: g.b[2], height: g.b[3], fill: 'none',
        stroke: miss ? '#ff8c00' : '#bbb', 'stroke-width': miss ? 3 : 1.5, 'stroke-dasharray': '5 3',
        'vector-effect': 'non-scaling-stroke', 'class': miss ? 'box-miss' : 'box-gt', 'data-label': D.classes[g.c]},
        [svg('title', {text: `${miss ? 'missed' : 'found'}: ${D.classes[g.c]}`})]));
    }
    for (const d of dets) {
      s.appendChild(svg('rect', {x: d.b[0], y: d.b[1], width: d.b[2], height: d.b[3], fill: 'none',
        stroke: d.tp ? '#2ca02c' : '#d62728', 'stroke-width': 2, 'vector-effect': 'non-scaling-stroke',
        'class': d.tp ? 'box-tp' : 'box-fp', 'data-label': D.classes[d.c], 'data-score': d.s},
        [svg('title', {text: `${d.tp ? 'true positive' : 'false positive'}: ${D.classes[d.c]} ${fmt(d.s, 2)}`})]));
      s.appendChild(svg('text', {x: d.b[0] + 2, y: d.b[1] + 11 / scale, 'font-size': 11 / scale,
        fill: d.tp ? '#2ca02c' : '#d62728', stroke: '#fff', 'stroke-width': 0.3 / scale, text: `${short(D.classes[d.c], 12)} ${fmt(d.s, 2)}`}));
    }
    grid.appendChild(el('div', {'class': 'det'}, [s, el('div', {text: `#${im.name}: ${fps} false positive(s), ${misses} miss(es)`})]));
  }
  shownNote.textContent = `${shown} of ${D.images.length} embedded images match the filters.`;
}
classSel.onchange = render; thr.oninput = render; errOnly.onchange = render;
render();
"""


def _class_of(label, index):
    return index[_page.label_str(label)]


def _boxes(items, index, with_score):
    """Annotation dicts -> (K, 5 or 6) array: class, centre x, y, w, h[, confidence]."""
    rows = []
    for a in items or []:
        c = a["coordinates"]
        row = [_class_of(a["label"], index), c["x"], c["y"], c["width"], c["height"]]
        if with_score:
            row.append(a.get("confidence", 1.0))
        rows.append(row)
    return np.asarray(rows, np.float64).reshape(-1, 6 if with_score else 5)


def precision_recall(ground_truth, predictions, classes=None, iou_threshold=0.5):
    """Match detections to true boxes (COCO's rules) and build per-class precision-recall.

    Parameters
    ----------
    ground_truth : list (per image) of lists of annotation dicts
        ``{'label', 'coordinates': {'x', 'y', 'width', 'height'}}`` in pixels,
        x/y the centre (the toolkit's annotations).
    predictions : list (per image) of lists of annotation dicts
        The same plus ``'confidence'`` (what ``model.predict`` returns).
    classes : list, optional
        Class order; labels not listed are appended (sorted). Default: every label seen.
    iou_threshold : float
        A detection is a true positive when it matches a true box of its class
        with at least this IoU.

    Returns
    -------
    dict
        ``classes``; ``per_class``: one dict per class with ``ap`` (101-point
        interpolated, as COCO; NaN without true boxes), ``n_gt``, ``scores``,
        ``precision``, ``recall`` (per detection, most confident first; the raw
        curve); ``images``: per image ``gt`` and ``det`` arrays (class, x, y,
        w, h[, confidence]) with ``det_tp`` (bool), ``det_used`` (counted: among
        the 100 most confident of its class) and ``gt_score`` (confidence of the
        detection that found the box, NaN if none).
    """
    labels = {_page.label_str(a["label"]) for rows in (ground_truth, predictions)
              for items in rows for a in (items or [])}
    classes = [_page.label_str(c) for c in (classes or [])]
    classes = classes + sorted(labels - set(classes))
    index = {c: i for i, c in enumerate(classes)}
    C = len(classes)
    per = [[] for _ in range(C)]                        # (score, tp) per used detection
    n_gt = np.zeros(C, np.int64)
    images = []
    for gts, dets in zip(ground_truth, predictions):
        g = _boxes(gts, index, False)
        d = _boxes(dets, index, True)
        det_tp = np.zeros(len(d), bool)
        det_used = np.zeros(len(d), bool)
        gt_score = np.full(len(g), np.nan)
        for c in range(C):
            gi = np.flatnonzero(g[:, 0] == c)
            di = np.flatnonzero(d[:, 0] == c)
            n_gt[c] += len(gi)
            if not len(di):
                continue
            di = di[np.argsort(-d[di, 5], kind="mergesort")][:coco.MAX_DETECTIONS]
            det_used[di] = True
            matched = coco.greedy_match(coco.iou(d[di, 1:5], g[gi, 1:5]), iou_threshold)
            for k, m in zip(di, matched):
                if m >= 0:
                    det_tp[k] = True
                    gt_score[gi[m]] = d[k, 5]
                per[c].append((d[k, 5], det_tp[k]))
        images.append({"gt": g, "det": d, "det_tp": det_tp, "det_used": det_used,
                       "gt_score": gt_score})
    out = []
    for c in range(C):
        st = np.asarray(per[c], np.float64).reshape(-1, 2)
        # Detections in image order, then a stable sort by score: COCOeval's order.
        order, precision, recall = coco.precision_recall(st, n_gt[c])
        if n_gt[c] == 0:
            ap = float("nan")
        else:
            ap = coco.average_precision(precision, recall)
        out.append({"label": classes[c], "ap": ap, "n_gt": int(n_gt[c]),
                    "scores": st[order, 0], "precision": precision, "recall": recall})
    return {"classes": classes, "per_class": out, "images": images}


def from_arrays(boxes, classes):
    """Per image arrays (class index, x, y, w, h[, confidence]) in pixels -> annotation dicts.

    The form ``ObjectDetector._gt_and_predictions`` returns, so ``evaluate`` can hand the
    boxes it scored (true boxes already clipped to the image) to the report unchanged.
    """
    out = []
    for arr in boxes:
        arr = np.asarray(arr, np.float64)
        items = []
        for row in arr.reshape(len(arr), -1) if arr.size else []:
            a = {"label": classes[int(row[0])],
                 "coordinates": {"x": float(row[1]), "y": float(row[2]),
                                 "width": float(row[3]), "height": float(row[4])}}
            if len(row) > 5:
                a["confidence"] = float(row[5])
            items.append(a)
        out.append(items)
    return out


def _thin(n, limit):
    """At most ``limit`` indices of 0..n-1, the last always included."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.concatenate([np.linspace(0, n - 1, limit).astype(np.int64), [n - 1]]))


def _corner(b):
    return [round(float(b[1] - b[3] / 2), 2), round(float(b[2] - b[4] / 2), 2),
            round(float(b[3]), 2), round(float(b[4]), 2)]


def detection_report(images, ground_truth, predictions, classes=None,
                     title="Object detector evaluation", iou_threshold=0.5, threshold=0.25,
                     min_confidence=0.05, index=None, max_images=48, image_size=320,
                     curve_points=300, random_seed=0):
    """The HTML report of an object detector's evaluation.

    Parameters
    ----------
    images : sequence
        One image per example, anything the toolkit reads (path, bytes, PIL,
        uint8 array); only the sampled ones are decoded.
    ground_truth, predictions : list (per image) of lists of annotation dicts
        As :func:`precision_recall` takes them (pixels, centre based;
        predictions with ``'confidence'``). Evaluate with all detections
        (``predict(confidence_threshold=0.001)`` as ``evaluate`` does) for
        complete curves.
    classes : list, optional
        The model's classes (order of colours and the table).
    iou_threshold : float
        IoU for a match (0.5: the AP ``evaluate`` reports as ``average_precision_50``).
    threshold : float
        Initial confidence threshold of the image view (a slider changes it).
    min_confidence : float
        Detections below this are not embedded for drawing (they still count
        in the curves and AP).
    index : array-like, optional
        Names shown under the images (e.g. ``dataset.index``).
    max_images : int
        Images embedded; when there are more, half are the images with the
        most errors at ``threshold``, the rest a random sample of the others.
    image_size : int
        Longest side of an embedded image (JPEG); boxes stay in original pixels.
    curve_points : int
        Points per drawn precision-recall curve.
    random_seed : int

    Returns
    -------
    str
        The HTML document.

    Examples
    --------
    >>> import toolkit as tc
    >>> from toolkit._explore import detection_report
    >>> scenes = tc.datasets.detection_scenes(2, random_seed=0)
    >>> guesses = [[dict(a, confidence=0.9) for a in row] for row in scenes['annotations']]
    >>> html = detection_report(scenes['image'], scenes['annotations'], guesses)
    >>> 'mAP' in html
    True
    """
    ground_truth, predictions = list(ground_truth), list(predictions)
    n = len(ground_truth)
    images = _page.positional(images)
    pr = precision_recall(ground_truth, predictions, classes, iou_threshold)
    classes = pr["classes"]
    names = list(range(n)) if index is None else [_page.label_str(v) for v in index]
    errors = np.array([
        int((~im["det_tp"] & (im["det"][:, 5] >= threshold)).sum()
            + (~(im["gt_score"] >= threshold)).sum()) for im in pr["images"]], np.int64)
    if n <= max_images:
        chosen = np.arange(n)
        sampled_note = None
    else:
        worst = np.argsort(-errors, kind="stable")
        worst = worst[errors[worst] > 0][:max_images // 2]
        rest = np.setdiff1d(np.arange(n), worst)
        rng = np.random.RandomState(random_seed)
        others = rng.choice(rest, max_images - len(worst), replace=False)
        chosen = np.sort(np.concatenate([worst, others]))
        sampled_note = (f"Images: {max_images} of {n} are embedded: the {len(worst)} with the "
                        f"most errors at confidence {threshold:g} and {len(others)} others at "
                        "random; the curves and AP cover every image.")
    shown = []
    for k in chosen:
        im = pr["images"][k]
        src, (W, H) = _page.image_data_uri(images[k], image_size, quality=80,
                                           where=f"row {names[k]}")
        keep = im["det_used"] & (im["det"][:, 5] >= min_confidence)
        shown.append({
            "index": int(k), "name": names[k], "src": src, "w": W, "h": H,
            "gt": [{"c": int(b[0]), "b": _corner(b),
                    "ms": None if np.isnan(s) else round(float(s), 4)}
                   for b, s in zip(im["gt"], im["gt_score"])],
            "det": [{"c": int(b[0]), "b": _corner(b), "s": round(float(b[5]), 4), "tp": bool(tp)}
                    for b, tp in zip(im["det"][keep], im["det_tp"][keep])]})
    per_class = []
    for m in pr["per_class"]:
        env = np.maximum.accumulate(m["precision"][::-1])[::-1] if len(m["precision"]) else \
            m["precision"]
        keep = _thin(len(env), curve_points)
        # The operating point under the slider (steps of 0.01): raw precision and
        # recall of the detections scoring at least each step.
        above = np.searchsorted(-m["scores"], -_SLIDER_STEPS, side="right")
        op = [None if a == 0 or not m["n_gt"] else
              [round(float(m["precision"][a - 1]), 4), round(float(m["recall"][a - 1]), 4)]
              for a in above]
        per_class.append({
            "label": m["label"], "ap": m["ap"], "n_gt": m["n_gt"], "n_det": len(m["scores"]),
            "recall": np.round(m["recall"][keep], 4).tolist(),
            "precision": np.round(env[keep], 4).tolist(),
            "op": op})
    present = [m["ap"] for m in pr["per_class"] if not np.isnan(m["ap"])]
    notes = [sampled_note] if sampled_note else []
    notes.append(f"Detections under confidence {min_confidence:g} are not drawn (they count in "
                 "the curves and AP).")
    payload = {
        "classes": classes, "per_class": per_class, "images": shown,
        "map": float(np.mean(present)) if present else float("nan"),
        "iou_threshold": iou_threshold, "threshold": threshold,
        "min_confidence": min_confidence, "n_images": n,
        "n_gt": int(sum(m["n_gt"] for m in pr["per_class"])),
        "n_det": int(sum(len(m["scores"]) for m in pr["per_class"])), "notes": notes,
    }
    return _page.page(title, "object_detector", payload, _SCRIPT,
                      subtitle=f"{n} images, {len(classes)} classes")
