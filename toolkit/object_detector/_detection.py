"""Numpy parts of the detector: decoding the head's output, NMS, and mAP.

Everything here works on **relative** boxes ``(x, y, width, height)``, centre
based, in [0, 1] of the image, except :func:`average_precision`, which takes
pixel boxes.
"""

import numpy as np

from .. import _boxes

MAX_DETECTIONS = 100
#: ``predict``'s and the exports' default thresholds (the IoU one is stored in each
#: model as ``non_maximum_suppression_threshold``).
DEFAULT_CONFIDENCE_THRESHOLD = 0.25
DEFAULT_IOU_THRESHOLD = 0.45
#: The IoU thresholds of COCO's AP@[0.5:0.95] (the rest of COCO's rules: toolkit._boxes).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def decode(raw, anchors, num_classes):
    """Raw head output (A*(5+C), G, G) of one image -> (coords (N, 4), confidence (N, C)).

    Box ``n = a * G * G + row * G + col`` (the order of the Core ML export).
    ``confidence[n, c] = sigmoid(objectness) * softmax(class logits)[c]``;
    ``coords`` are relative centre x, y, width, height.
    """
    anchors = np.asarray(anchors, np.float64)
    grid = raw.shape[-1]
    r = raw.astype(np.float64).reshape(len(anchors), 5 + num_classes, grid, grid)
    cols = np.arange(grid)[None, None, :]
    rows = np.arange(grid)[None, :, None]
    x = (cols + _sigmoid(r[:, 0])) / grid
    y = (rows + _sigmoid(r[:, 1])) / grid
    w = np.exp(r[:, 2]) * anchors[:, 0, None, None] / grid
    h = np.exp(r[:, 3]) * anchors[:, 1, None, None] / grid
    obj = _sigmoid(r[:, 4])
    logits = r[:, 5:]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    conf = obj[:, None] * probs                                   # (A, C, G, G)
    coords = np.stack([x, y, w, h], axis=-1).reshape(-1, 4)
    confidence = conf.transpose(0, 2, 3, 1).reshape(-1, num_classes)
    return coords, confidence


def iou_matrix(a, b):
    """IoU of centre-based boxes a (N, 4) against b (M, 4) -> (N, M)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ax0, ay0 = a[:, 0] - a[:, 2] / 2, a[:, 1] - a[:, 3] / 2
    ax1, ay1 = a[:, 0] + a[:, 2] / 2, a[:, 1] + a[:, 3] / 2
    bx0, by0 = b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2
    bx1, by1 = b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2
    iw = np.clip(np.minimum(ax1[:, None], bx1[None]) - np.maximum(ax0[:, None], bx0[None]),
                 0, None)
    ih = np.clip(np.minimum(ay1[:, None], by1[None]) - np.maximum(ay0[:, None], by0[None]),
                 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def non_maximum_suppression(coords, confidence, iou_threshold, confidence_threshold,
                            max_boxes=MAX_DETECTIONS):
    """Class-agnostic greedy NMS, as Core ML's ``NonMaximumSuppression`` model does it.

    Each box scores its highest class confidence; boxes scoring below
    ``confidence_threshold`` are dropped; going down the scores, a box is kept
    unless its IoU with an already kept box exceeds ``iou_threshold``; at most
    ``max_boxes`` are kept. Returns the kept indices, best first.
    """
    score = confidence.max(axis=1) if len(confidence) else np.zeros(0)
    cand = np.flatnonzero(score >= confidence_threshold)
    cand = cand[np.argsort(-score[cand], kind="mergesort")]
    keep = []
    for i in cand:
        if len(keep) >= max_boxes:
            break
        if keep and iou_matrix(coords[i:i + 1], coords[keep]).max() > iou_threshold:
            continue
        keep.append(int(i))
    return np.asarray(keep, dtype=np.int64)


def clip_relative(coords):
    """Clip centre-based relative boxes to the image [0, 1]^2."""
    x0 = np.clip(coords[:, 0] - coords[:, 2] / 2, 0, 1)
    y0 = np.clip(coords[:, 1] - coords[:, 3] / 2, 0, 1)
    x1 = np.clip(coords[:, 0] + coords[:, 2] / 2, 0, 1)
    y1 = np.clip(coords[:, 1] + coords[:, 3] / 2, 0, 1)
    return np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=1)


def detect(raw, size, anchors, classes, confidence_threshold, iou_threshold):
    """One image's raw head output -> ``predict``'s annotation list (pixels), best first.

    ``size`` is the original image's (width, height); boxes are clipped to
    the image and those left without area are dropped.
    """
    coords, conf = decode(raw, anchors, len(classes))
    keep = non_maximum_suppression(coords, conf, iou_threshold, confidence_threshold)
    width, height = size
    boxes = clip_relative(coords[keep]) if len(keep) else np.zeros((0, 4))
    out = []
    for k, b in zip(keep, boxes):
        c = int(np.argmax(conf[k]))
        if b[2] <= 0 or b[3] <= 0:
            continue
        out.append({"label": classes[c], "type": "rectangle",
                    "coordinates": {"x": float(b[0] * width), "y": float(b[1] * height),
                                    "width": float(b[2] * width),
                                    "height": float(b[3] * height)},
                    "confidence": float(conf[k, c])})
    return out


def as_rows(detections, class_index):
    """``detect``'s annotation list -> (K, 6) class index, x, y, width, height, confidence."""
    return np.array([[class_index[d["label"]], d["coordinates"]["x"], d["coordinates"]["y"],
                      d["coordinates"]["width"], d["coordinates"]["height"], d["confidence"]]
                     for d in detections]).reshape(-1, 6)


# --- mean average precision (COCO's algorithm) ---------------------------------------------

def average_precision(ground_truth, predictions, classes, iou_thresholds=IOU_THRESHOLDS):
    """Per class and IoU threshold average precision, with COCO's algorithm.

    ``ground_truth`` and ``predictions`` are per image lists of
    ``(class_index, x, y, width, height[, confidence])`` in pixels (centre
    based). Per image and class, the ``100`` most confident predictions are
    matched greedily (most confident first) to the unmatched ground truth box
    of highest IoU >= threshold; over all images, precision is made monotone
    and read at 101 recall points (0, 0.01, ..., 1) and averaged, exactly as
    ``pycocotools.cocoeval.COCOeval`` does for ``iouType='bbox'``, area 'all'
    and ``maxDets=100``. Returns ``(T, C)`` AP values, NaN for a class
    without ground truth.
    """
    num_classes, num_thresholds = len(classes), len(iou_thresholds)
    # Per class and threshold: (score, true positive) rows.
    scores = [[[] for _ in range(num_thresholds)] for _ in range(num_classes)]
    n_gt = np.zeros(num_classes, np.int64)
    for gts, dts in zip(ground_truth, predictions):
        gts = np.asarray(gts, np.float64).reshape(-1, 5)
        dts = np.asarray(dts, np.float64).reshape(-1, 6)
        for c in range(num_classes):
            g = gts[gts[:, 0] == c]
            d = dts[dts[:, 0] == c]
            n_gt[c] += len(g)
            if len(d) == 0:
                continue
            d = d[np.argsort(-d[:, 5], kind="mergesort")][:_boxes.MAX_DETECTIONS]
            ious = _boxes.iou(d[:, 1:5], g[:, 1:5])
            for t, thr in enumerate(iou_thresholds):
                tp = (_boxes.greedy_match(ious, thr) >= 0).astype(np.float64)
                scores[c][t].append(np.stack([d[:, 5], tp], axis=1))
    ap = np.full((num_thresholds, num_classes), np.nan)
    for c in range(num_classes):
        if n_gt[c] == 0:
            continue
        for t in range(num_thresholds):
            if not scores[c][t]:
                ap[t, c] = 0.0
                continue
            _, precision, recall = _boxes.precision_recall(np.concatenate(scores[c][t]),
                                                           n_gt[c])
            ap[t, c] = _boxes.average_precision(precision, recall)
    return ap
