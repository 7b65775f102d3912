"""COCO's box metrics, shared by the object detector's ``evaluate`` and its report.

Boxes are ``(x, y, width, height)`` with x/y the centre, in any one unit. The
rules are those of ``pycocotools.cocoeval.COCOeval`` for ``iouType='bbox'``:
IoU without the +1 of older tools, greedy matching of the most confident
detection first to the free box of highest IoU (the last of equal IoUs), and
precision made monotone and read at 101 recall points.
"""

import numpy as np

#: COCO's maxDets: the most confident detections per image and class that are scored.
MAX_DETECTIONS = 100
#: The 101 recall points of COCO's interpolated precision.
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def iou(detections, boxes):
    """IoU matrix (len(detections), len(boxes)) of centre boxes, as pycocotools computes it."""
    d = np.asarray(detections, np.float64).reshape(-1, 4)
    g = np.asarray(boxes, np.float64).reshape(-1, 4)
    dx0, dy0 = d[:, 0] - d[:, 2] / 2, d[:, 1] - d[:, 3] / 2
    gx0, gy0 = g[:, 0] - g[:, 2] / 2, g[:, 1] - g[:, 3] / 2
    dx1, dy1 = dx0 + d[:, 2], dy0 + d[:, 3]
    gx1, gy1 = gx0 + g[:, 2], gy0 + g[:, 3]
    iw = np.clip(np.minimum(dx1[:, None], gx1[None]) - np.maximum(dx0[:, None], gx0[None]),
                 0, None)
    ih = np.clip(np.minimum(dy1[:, None], gy1[None]) - np.maximum(dy0[:, None], gy0[None]),
                 0, None)
    inter = iw * ih
    union = (d[:, 2] * d[:, 3])[:, None] + (g[:, 2] * g[:, 3])[None] - inter
    return inter / np.maximum(union, np.finfo(np.float64).tiny)


def greedy_match(ious, threshold):
    """The box each detection matches (-1: none), detections most confident first.

    Each detection (a row of ``ious``, rows already in descending confidence)
    takes the free box of highest IoU at least ``threshold``; ``>=`` keeps the
    last of equal IoUs, as COCOeval does.
    """
    floor = min(threshold, 1 - 1e-10)
    taken = np.zeros(ious.shape[1], bool)
    matched = np.full(ious.shape[0], -1, np.int64)
    for i in range(ious.shape[0]):
        best, m = floor, -1
        for j in range(ious.shape[1]):
            if taken[j] or ious[i, j] < best:
                continue
            best, m = ious[i, j], j
        if m >= 0:
            taken[m] = True
            matched[i] = m
    return matched


def precision_recall(scored, num_boxes):
    """``(order, precision, recall)`` of ``scored`` rows ``(score, true positive)``.

    Rows in image order; ``order`` sorts them by descending score (stable, so
    ties keep image order, as COCOeval does); precision and recall follow it.
    """
    scored = np.asarray(scored, np.float64).reshape(-1, 2)
    order = np.argsort(-scored[:, 0], kind="mergesort")
    tp = np.cumsum(scored[order, 1])
    fp = np.cumsum(1 - scored[order, 1])
    recall = tp / num_boxes if num_boxes else np.zeros(len(tp))
    return order, tp / np.maximum(tp + fp, np.spacing(1)), recall


def average_precision(precision, recall):
    """COCO's AP: precision made monotone, read at :data:`RECALL_POINTS`, averaged."""
    if not len(precision):
        return 0.0
    envelope = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    q = np.zeros(len(RECALL_POINTS))
    ok = idx < len(envelope)
    q[ok] = envelope[idx[ok]]
    return float(q.mean())
