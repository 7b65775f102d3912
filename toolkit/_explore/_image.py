"""The image classifier's report: confusion matrix with thumbnails per cell."""

import numpy as np

from . import _page

_SCRIPT = r"""
const D = DATA;
const ov = section('overview', 'Evaluation', false);
ov.appendChild(el('p', {text: `${D.n_images} images, ${D.classes.length} classes; accuracy ${fmt(D.accuracy)}.`}));
notes(ov, D.notes);
const cmBox = section('matrix', 'Confusion matrix (click a cell)', false);
const detail = section('cell-details', 'Images in the selected cell', false);
detail.style.maxWidth = '560px';
const detailBody = el('div', {id: 'cell-images', text: 'Click a cell of the matrix (or a confusion) to see its images.'});
detail.appendChild(detailBody);
const side = section('confusions', 'Top confusions', false);
const mBox = section('metrics', 'Per-class metrics', false);
metricsTable(mBox, D.per_class);
function show(i, j){
  detailBody.textContent = '';
  const c = D.cells[`${i},${j}`] || {shown: [], total: 0};
  const diag = D.row_labels[i] === D.classes[j];
  detailBody.appendChild(el('p', {text: `true ${D.row_labels[i]}, predicted ${D.classes[j]}: ${c.total} image(s)` +
    (c.total > c.shown.length ? `; showing ${c.shown.length}, the ${diag ? 'least' : 'most'} confident first` : '')}));
  const box = el('div', {'class': 'thumbs'});
  for (const k of c.shown) {
    const im = D.images[k];
    box.appendChild(el('div', {'class': 'thumb', 'data-index': im.index, 'data-true': D.row_labels[i], 'data-pred': D.classes[j]}, [
      el('img', {src: im.src, alt: `image ${im.name}`}),
      el('div', {text: `#${im.name}`}), el('div', {text: `${short(D.classes[j], 14)} ${fmt(im.confidence, 2)}`})]));
  }
  detailBody.appendChild(box);
}
const cm = drawMatrix(cmBox, D.row_labels, D.classes, D.counts, show);
function select(i, j){ cm.querySelector(`.cm-cell[data-row="${i}"][data-col="${j}"]`).dispatchEvent(new MouseEvent('click')); }
if (D.top_confusions.length === 0) side.appendChild(el('p', {text: 'No misclassified images.'}));
const ol = el('ol', {id: 'top-confusions'});
for (const [i, j, n] of D.top_confusions) {
  ol.appendChild(el('li', {}, [el('span', {'class': 'clickable', text: `${D.row_labels[i]} \u2192 ${D.classes[j]}`, onclick: () => select(i, j)}),
                               document.createTextNode(`: ${n}`)]));
}
side.appendChild(ol);
"""


def _caps(counts, diagonal, max_per_cell, max_images):
    """Thumbnails per cell: ``max_per_cell``, lowered (diagonal cells first) to fit the budget."""
    off_cap, diag_cap = max_per_cell, max_per_cell

    def total():
        return int(np.minimum(counts, np.where(diagonal, diag_cap, off_cap)).sum())
    while total() > max_images and (diag_cap > 1 or off_cap > 1):
        if diag_cap > 1 and (diag_cap >= off_cap or off_cap <= 1):
            diag_cap -= 1
        else:
            off_cap -= 1
    return off_cap, diag_cap


def image_report(images, labels, probabilities, classes, title="Image classifier evaluation",
                 index=None, max_per_cell=20, max_images=600, thumbnail_size=96):
    """The HTML report of an image classifier's evaluation.

    Parameters
    ----------
    images : sequence
        One image per example, anything the toolkit reads (file path, encoded
        bytes, PIL image, uint8 array). Only the sampled ones are decoded.
    labels : array-like (n,)
        True labels; labels the model does not know get their own matrix rows.
    probabilities : ndarray (n, C)
        Class probabilities in ``classes`` order; the prediction is the argmax.
    classes : list
        The model's classes.
    index : array-like (n,), optional
        Names shown under the thumbnails (e.g. ``dataset.index``); default the
        positions 0..n-1.
    max_per_cell : int
        Thumbnails per matrix cell: the most confident mistakes off the diagonal,
        the least confident correct predictions on it.
    max_images : int
        Thumbnails in the whole file (keeps it to a few MB); the per-cell number
        is lowered, diagonal cells first, to fit.
    thumbnail_size : int
        Longest side of a thumbnail in pixels (JPEG).

    Returns
    -------
    str
        The HTML document.

    Examples
    --------
    >>> import numpy as np
    >>> from toolkit._explore import image_report, write_report
    >>> images = [np.full((8, 8, 3), v, np.uint8) for v in (0, 128, 255)]
    >>> probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    >>> html = image_report(images, ['dark', 'light', 'light'], probs, ['dark', 'light'])
    >>> html.startswith('<!DOCTYPE html>')
    True
    >>> write_report(html, 'images.html', open_browser=False)   # doctest: +SKIP
    """
    probabilities = np.asarray(probabilities, np.float64)
    n = len(probabilities)
    images = _page.positional(images)
    classes = [_page.label_str(c) for c in classes]
    labels = [_page.label_str(v) for v in labels]
    unknown = sorted(set(labels) - set(classes))
    row_labels = classes + unknown
    r_index = {c: i for i, c in enumerate(row_labels)}
    t = np.array([r_index[v] for v in labels], np.int64)
    p = probabilities.argmax(axis=1) if n else np.zeros(0, np.int64)
    conf = probabilities[np.arange(n), p] if n else np.zeros(0)
    counts = np.zeros((len(row_labels), len(classes)), np.int64)
    np.add.at(counts, (t, p), 1)
    diagonal = np.array([[r == c for c in classes] for r in row_labels], bool).reshape(
        counts.shape)
    off_cap, diag_cap = _caps(counts, diagonal, max_per_cell, max_images)
    names = list(range(n)) if index is None else [_page.label_str(v) for v in index]

    cells, chosen = {}, []
    for i in range(len(row_labels)):
        for j in range(len(classes)):
            members = np.flatnonzero((t == i) & (p == j))
            if not len(members):
                continue
            key = conf[members] if diagonal[i, j] else -conf[members]
            members = members[np.argsort(key, kind="stable")]
            cap = diag_cap if diagonal[i, j] else off_cap
            shown = members[:cap]
            cells[f"{i},{j}"] = {"total": int(len(members)),
                                 "shown": list(range(len(chosen), len(chosen) + len(shown)))}
            chosen.extend(int(k) for k in shown)
    thumbs = []
    for k in chosen:
        src, _ = _page.image_data_uri(images[k], thumbnail_size, quality=75,
                                      where=f"row {names[k]}")
        thumbs.append({"index": k, "name": names[k], "src": src,
                       "confidence": float(conf[k])})

    off = [(int(i), int(j), int(counts[i, j])) for i in range(len(row_labels))
           for j in range(len(classes)) if not diagonal[i, j] and counts[i, j]]
    off.sort(key=lambda x: -x[2])
    notes = []
    if len(chosen) < n:
        notes.append(f"Thumbnails: {len(chosen)} of {n} images are embedded, at most "
                     f"{off_cap} per misclassification cell (the most confident mistakes) and "
                     f"{diag_cap} per correct cell (the least confident), to keep the file "
                     "small; counts and metrics cover every image.")
    if unknown:
        notes.append(f"True labels the model does not know ({', '.join(unknown)}) have their "
                     "own rows; they always count as errors.")
    payload = {
        "classes": classes, "row_labels": row_labels, "counts": counts.tolist(),
        "per_class": _page.per_class_metrics(counts, row_labels, classes),
        # Model classes come first among the rows, so row j is class j.
        "accuracy": float(np.mean(t == p)) if n else float("nan"),
        "n_images": n, "cells": cells, "images": thumbs, "top_confusions": off[:10],
        "notes": notes,
    }
    return _page.page(title, "image_classifier", payload, _SCRIPT,
                      subtitle=f"{n} images, {len(classes)} classes")
