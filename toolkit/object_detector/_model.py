"""ObjectDetector: create, predict, evaluate, save/load, Core ML export.

Design: a **frozen** EfficientNet-Lite0 backbone (ImageNet weights,
:mod:`toolkit.pretrained`) gives a 1280-channel 7x7 feature map of each
224x224 image (stretched, no letterbox); a small YOLO-style anchor head
(:mod:`._net`) is trained on those features. Features are computed once, in
streamed batches, into a float16 memory-mapped temporary file (164 KB per
image, on disk: memory does not grow with the number of images), so training
the head takes seconds to minutes on 2 CPU cores. Loss: YOLOv2's (Turi
Create's weights: xy 10, wh 10/2 Huber on log sizes, objectness 100 on
responsible anchors and 5 on background, class 2), Adam with weight decay
5e-4, learning rate 1e-3 divided by 10 at half and at three quarters of the
steps (an mxnet ``MultiFactorScheduler`` inside the optimizer, so the
schedule reaches parameter servers and resumes from the update count).

Devices, clusters and checkpoints
---------------------------------
Every random draw after the head's initialisation comes from one seeded
numpy generator: the shuffling and the dropout on the cached features, whose
masks are drawn on the host for the whole batch and passed into the head's
training graph (``_net.TrainingHead``) instead of mxnet's per-device dropout.
A batch is dealt to the devices of :mod:`toolkit.config` one image at a time
and each device's loss is divided by the whole batch's normalisers (the
number of responsible anchors, images x cells), so the summed gradients equal
one device's (tests: 1e-5). A checkpoint keeps the weights, Adam's state, the
generator's state and the shuffling order, so a resumed run ends where an
uninterrupted one does. In a parameter-server cluster each worker extracts
and trains on its own share of the images (see :func:`create`).

File versions of the ``object_detector`` task:

1. First release. *Weights* (float32, structural names): ``backbone.*``
   (EfficientNet-Lite0 without its classifier) and ``head.conv1.*``,
   ``head.fine.*``, ``head.conv2.*``, ``head.out.*`` (see :mod:`._net`). *State* (JSON):
   ``feature``, ``annotations``, ``classes``, ``model``
   (``"efficientnet-lite0-yolo"``), ``anchors`` (grid cells), ``grid_shape``,
   ``input_image_shape``, ``non_maximum_suppression_threshold``,
   ``num_classes``, ``num_examples``, ``num_bounding_boxes``, ``batch_size``,
   ``max_iterations``, ``training_iterations``, ``training_epochs``,
   ``training_loss``, ``training_time``, ``feature_extraction_time``,
   ``random_seed`` (``None`` in files written before checkpoints existed;
   since then always the seed used, drawn when none was given).
"""

import hashlib
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import _checkpoint, _images, _training, config
from .. import _validate as V
from .._model import Model
from .._mx import get_weights, mx, set_weights
from .._progress import ProgressTable, say
from ..errors import (ColumnNotFoundError, CorruptModelFileError, DataError,
                      InvalidParameterError)
from ..pretrained import _efficientnet
from . import _annotations, _detection, _net

FILE_VERSION = 1
MODELS = ("efficientnet-lite0-yolo",)
DEFAULT_MODEL = "efficientnet-lite0-yolo"
DEFAULT_BATCH_SIZE = 32
NETWORK_BATCH = 16
METRICS = ("average_precision_50", "average_precision", "mean_average_precision_50",
           "mean_average_precision")
# Loss weights (Turi Create's YOLO loss).
_LMB_XY, _LMB_WH, _LMB_OBJ, _LMB_NOOBJ, _LMB_CLASS = 10.0, 10.0, 100.0, 5.0, 2.0
_LEARNING_RATE = 1e-3


# --- image decoding -----------------------------------------------------------------------

def _decode(values, start, column, index):
    """Cells -> (uint8 (B, 224, 224, 3), [(width, height)]) ; sizes are the originals."""
    from PIL import Image
    size = _net.IMAGE_SIZE
    out = np.empty((len(values), size, size, 3), np.uint8)
    sizes = []
    for i, v in enumerate(values):
        pos = start + i
        img = _images.load_image(v, _images._where(column, index[pos], pos))
        sizes.append(img.size)
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(img, np.uint8)
    return out, sizes


def _batches(values, column, index, batch_size):
    """Yield (start, pixels, sizes), decoding the next batch in a background thread."""
    starts = list(range(0, len(values), batch_size))
    with ThreadPoolExecutor(1) as pool:
        fut = None
        for k, s in enumerate(starts):
            if fut is None:
                fut = pool.submit(_decode, values[s:s + batch_size], s, column, index)
            pixels, sizes = fut.result()
            if k + 1 < len(starts):
                n = starts[k + 1]
                fut = pool.submit(_decode, values[n:n + batch_size], n, column, index)
            yield s, pixels, sizes


def _to_input(pixels, ctx):
    return mx().nd.array(_images.to_network_input(pixels, _net.INPUT_SCALE, _net.INPUT_BIAS),
                         ctx=ctx)


def _prepare(block, n):
    sample = mx().nd.zeros((max(1, min(NETWORK_BATCH, n)), 3, _net.IMAGE_SIZE, _net.IMAGE_SIZE))
    return _efficientnet.prepare_for_inference(block, sample)


# --- the model ----------------------------------------------------------------------------

class ObjectDetector(Model):
    """A trained object detector. Create one with :func:`create`.

    Fields (also ``model['name']``): ``feature``, ``annotations``, ``classes``,
    ``num_classes``, ``model``, ``anchors``, ``grid_shape``,
    ``input_image_shape``, ``non_maximum_suppression_threshold``,
    ``num_examples``, ``num_bounding_boxes``, ``batch_size``,
    ``max_iterations``, ``training_iterations``, ``training_epochs``,
    ``training_loss``, ``training_time``, ``feature_extraction_time``.

    Examples
    --------
    >>> import toolkit as tc
    >>> train = tc.datasets.detection_scenes(200)                  # doctest: +SKIP
    >>> model = tc.object_detector.create(train)                   # doctest: +SKIP
    >>> model.predict(train.iloc[:2])                              # doctest: +SKIP
    """

    _TASK = "object_detector"
    _FILE_VERSION = FILE_VERSION
    # {v: f}: f turns a version-v file into version v + 1 (none yet).
    _MIGRATIONS = {}

    def __init__(self, state, net):
        self._state = dict(state)
        self._net = net
        self._ready = False

    def _get_state(self):
        return dict(self._state), get_weights(self._net)

    @classmethod
    def _from_state(cls, state, weights):
        _check_state(state)
        net = _net.build(len(state["anchors"]), len(state["classes"]), weights=weights)
        return cls(state, net)

    def _summary_sections(self):
        s = self._state
        rows = [("Schema", [("Model", s["model"]), ("Number of classes", s["num_classes"]),
                            ("Non-maximum suppression threshold",
                             s["non_maximum_suppression_threshold"]),
                            ("Input image shape", tuple(s["input_image_shape"]))]),
                ("Training summary", [("Training time (sec)", s.get("training_time")),
                                      ("Training epochs", s.get("training_epochs")),
                                      ("Training iterations", s.get("training_iterations")),
                                      ("Number of examples (images)", s.get("num_examples")),
                                      ("Number of bounding boxes (instances)",
                                       s.get("num_bounding_boxes")),
                                      ("Final loss (specific to model)",
                                       s.get("training_loss"))])]
        return rows

    # --- prediction ---------------------------------------------------------------------
    def _raw(self, values, column, index, verbose=False):
        """Yield (start, raw outputs (B, A(5+C), G, G) float32, sizes)."""
        if not self._ready:
            _prepare(self._net, len(values))
            self._ready = True
        from tqdm import tqdm
        with tqdm(total=len(values), desc="Predicting", unit="img", disable=not verbose,
                  mininterval=1.0) as bar:
            for s, pixels, sizes in _batches(values, column, index, NETWORK_BATCH):
                raw = self._net(_to_input(pixels, mx().cpu())).asnumpy()
                bar.update(len(pixels))
                yield s, raw, sizes

    def _detect(self, raw, size, confidence_threshold, iou_threshold):
        """One image's raw output -> annotation list (pixels), best first."""
        coords, conf = _detection.decode(raw, self._state["anchors"], len(self._state["classes"]))
        keep = _detection.non_maximum_suppression(coords, conf, iou_threshold,
                                                  confidence_threshold)
        W, H = size
        boxes = _detection.clip_relative(coords[keep]) if len(keep) else np.zeros((0, 4))
        out = []
        for k, b in zip(keep, boxes):
            c = int(np.argmax(conf[k]))
            if b[2] <= 0 or b[3] <= 0:
                continue
            out.append({"label": self._state["classes"][c], "type": "rectangle",
                        "coordinates": {"x": float(b[0] * W), "y": float(b[1] * H),
                                        "width": float(b[2] * W), "height": float(b[3] * H)},
                        "confidence": float(conf[k, c])})
        return out

    def predict(self, dataset, confidence_threshold=0.25, iou_threshold=None, verbose=False):
        """Detect objects: a list of annotations per image, most confident first.

        Parameters
        ----------
        dataset : pandas.DataFrame, pandas.Series of images, or one image
            The DataFrame needs the image column the model was trained on.
        confidence_threshold : float
            Keep boxes whose best class confidence
            (``P(object) * P(class | object)``) is at least this.
        iou_threshold : float, optional
            Non-maximum suppression: a box overlapping a more confident one
            by more than this IoU is dropped (class-agnostic, as Core ML's
            NMS does). ``None``: the model's 0.45.
        verbose : bool

        Returns
        -------
        pandas.Series of lists (one image in, one list out) of
        ``{'label', 'type': 'rectangle', 'coordinates': {'x', 'y', 'width',
        'height'}, 'confidence'}``, in pixels of the original image, x/y the
        box centre. At most 100 boxes per image.

        Examples
        --------
        >>> preds = model.predict(test)                              # doctest: +SKIP
        >>> preds[0][0]['label'], preds[0][0]['confidence']          # doctest: +SKIP
        ('face', 0.93)
        """
        import pandas as pd
        confidence_threshold = _check_fraction(confidence_threshold, "confidence_threshold")
        iou_threshold = self._iou(iou_threshold)
        values, column, index, single = _image_input(dataset, self._state["feature"])
        out = []
        for _, raw, sizes in self._raw(values, column, index, verbose):
            for r, size in zip(raw, sizes):
                out.append(self._detect(r, size, confidence_threshold, iou_threshold))
        if single:
            return out[0]
        result = pd.Series([None] * len(out), index=index, dtype=object)
        for i, v in enumerate(out):
            result.iloc[i] = v
        return result

    def _iou(self, iou_threshold):
        if iou_threshold is None:
            return float(self._state["non_maximum_suppression_threshold"])
        return _check_fraction(iou_threshold, "iou_threshold")

    def evaluate(self, dataset, metric="auto", confidence_threshold=0.001, iou_threshold=None,
                 verbose=False):
        """Average precision of the detections against the annotations.

        AP is computed with COCO's algorithm (``pycocotools``' ``COCOeval``
        for bounding boxes: 101-point interpolated precision, greedy matching
        by confidence, at most 100 detections per image and class).

        Parameters
        ----------
        dataset : pandas.DataFrame
            With the model's image and annotations columns.
        metric : str or list of str
            ``'auto'``: ``average_precision_50`` and
            ``mean_average_precision_50``; ``'all'`` adds
            ``average_precision`` and ``mean_average_precision``
            (AP averaged over IoU 0.5:0.05:0.95, COCO's main metric); or any
            of those names, or a list of them.
        confidence_threshold, iou_threshold : float
            Passed to :meth:`predict` (defaults 0.001 and the model's 0.45).

        Returns
        -------
        dict
            ``{'average_precision_50': {class: AP}, 'mean_average_precision_50':
            float, ...}``. A class without ground truth boxes is left out of
            the per-class dicts and of the means.

        Examples
        --------
        >>> scores = model.evaluate(test)                            # doctest: +SKIP
        >>> print('mAP@0.5: {:.1%}'.format(scores['mean_average_precision_50']))
        ...                                                          # doctest: +SKIP
        """
        metrics = _check_metrics(metric)
        gt, preds = self._gt_and_predictions(dataset, confidence_threshold, iou_threshold,
                                             verbose)
        classes = self._state["classes"]
        ap = _detection.average_precision(gt, preds, classes)
        present = [c for c in range(len(classes)) if not np.isnan(ap[0, c])]
        res = {}
        for m in metrics:
            table = ap[0] if m.endswith("_50") else ap.mean(axis=0)
            if m.startswith("mean_"):
                res[m] = float(np.mean(table[present])) if present else float("nan")
            else:
                res[m] = {classes[c]: float(table[c]) for c in present}
        return res

    def _gt_and_predictions(self, dataset, confidence_threshold, iou_threshold, verbose):
        V.check_dataframe(dataset, "dataset")
        ann_col = self._state["annotations"]
        if ann_col not in dataset.columns:
            raise ColumnNotFoundError(
                f"The annotations column '{ann_col}' the model was trained on is not in "
                f"'dataset' (columns: {', '.join(map(str, dataset.columns))}).")
        rows = _annotations.parse_column(dataset[ann_col], ann_col)
        confidence_threshold = _check_fraction(confidence_threshold, "confidence_threshold")
        iou_threshold = self._iou(iou_threshold)
        values, column, index, _ = _image_input(dataset, self._state["feature"])
        class_index = {c: i for i, c in enumerate(self._state["classes"])}
        counters = {"clipped": 0, "dropped": 0, "unknown": 0}
        gt, preds = [], []
        for s, raw, sizes in self._raw(values, column, index, verbose):
            for i, (r, size) in enumerate(zip(raw, sizes)):
                W, H = size
                b = _annotations.to_boxes(rows[s + i], size, class_index, counters)
                gt.append(np.column_stack([b[:, 0], b[:, 1] * W, b[:, 2] * H, b[:, 3] * W,
                                           b[:, 4] * H]))
                dets = self._detect(r, size, confidence_threshold, iou_threshold)
                preds.append(np.array([[class_index[d["label"]], d["coordinates"]["x"],
                                        d["coordinates"]["y"], d["coordinates"]["width"],
                                        d["coordinates"]["height"], d["confidence"]]
                                       for d in dets]).reshape(-1, 6))
        _annotations.warn_counters(counters, ann_col)
        return gt, preds

    def export_coreml(self, path, include_non_maximum_suppression=True, iou_threshold=None,
                      confidence_threshold=None):
        from . import _export
        return _export.export_coreml(self, path, include_non_maximum_suppression,
                                     iou_threshold, confidence_threshold)

    from ._export import export_coreml as _doc  # noqa: E402 - docstring only
    export_coreml.__doc__ = _doc.__doc__
    del _doc

    def export_onnx(self, path, iou_threshold=None, confidence_threshold=None):
        from ._onnx_export import export_onnx
        return export_onnx(self, path, iou_threshold, confidence_threshold)

    # help(model.export_onnx) shows the input contract, the NMS and the outputs.
    from ._onnx_export import export_onnx as _export_onnx_impl
    export_onnx.__doc__ = _export_onnx_impl.__doc__
    del _export_onnx_impl


# --- validation helpers --------------------------------------------------------------------

def _check_fraction(value, name):
    if not _annotations._is_number(value) or not 0.0 <= float(value) <= 1.0:
        raise InvalidParameterError(f"'{name}' must be a number in [0, 1], got {value!r}.")
    return float(value)


def _check_metrics(metric):
    if metric == "auto":
        return ["average_precision_50", "mean_average_precision_50"]
    if metric == "all":
        return list(METRICS)
    ms = [metric] if isinstance(metric, str) else metric
    if not isinstance(ms, (list, tuple)) or not ms or any(m not in METRICS for m in ms):
        raise InvalidParameterError(
            f"'metric' must be 'auto', 'all', one of {', '.join(METRICS)} or a list of them; "
            f"got {metric!r}.")
    return list(ms)


def _image_input(dataset, feature, name="dataset"):
    from ..image_classifier._model import _image_input as ic_input
    return ic_input(dataset, feature, name)


def _check_state(state):
    def bad(key, why):
        raise CorruptModelFileError(
            f"The object detector file's state field '{key}' {why}; the file is damaged or "
            "was edited.")
    if not isinstance(state, dict):
        bad("state", "is not an object")
    for key in ("feature", "annotations", "classes", "model", "anchors", "input_image_shape",
                "non_maximum_suppression_threshold", "grid_shape"):
        if key not in state:
            bad(key, "is missing")
    classes = state["classes"]
    if not (isinstance(classes, list) and len(classes) >= 1 and all(
            isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes)
            and len(set(classes)) == len(classes)):
        bad("classes", "is not a list of distinct labels (str or int)")
    if state["model"] not in MODELS:
        bad("model", f"is {state['model']!r}, not one of {', '.join(MODELS)}")
    anchors = state["anchors"]
    if not (isinstance(anchors, list) and anchors and all(
            isinstance(a, list) and len(a) == 2 and all(_annotations._is_number(v) and v > 0
                                                        for v in a) for a in anchors)):
        bad("anchors", "is not a list of [width, height] pairs > 0")
    if state["input_image_shape"] != [3, _net.IMAGE_SIZE, _net.IMAGE_SIZE]:
        bad("input_image_shape", f"is {state['input_image_shape']!r}")
    if state["grid_shape"] != [_net.GRID, _net.GRID]:
        bad("grid_shape", f"is {state['grid_shape']!r}")
    t = state["non_maximum_suppression_threshold"]
    if not (_annotations._is_number(t) and 0 <= t <= 1):
        bad("non_maximum_suppression_threshold", f"is {t!r}")


# --- create -------------------------------------------------------------------------------

def _find_annotations_column(dataset, annotations, feature):
    if annotations is not None:
        V.check_column_name(annotations, "annotations")
        V.check_columns_exist(dataset, [annotations], "annotations")
        return annotations
    cands = []
    for c in dataset.columns:
        if c == feature:
            continue
        vals = [v for v in dataset[c].head(50) if v is not None]
        if any(isinstance(v, (list, dict, tuple)) for v in vals):
            cands.append(c)
    if len(cands) != 1:
        raise DataError(
            f"Cannot pick the annotations column: {len(cands)} columns hold lists or dicts "
            f"({', '.join(map(repr, cands)) or 'none'}); name it with annotations='column'. "
            + _annotations.VALID_ANNOTATION)
    return cands[0]


def _targets(boxes_list, anchors, G, C):
    """Ground truth tensors for a batch of images' relative boxes (YOLOv2 assignment)."""
    B, A = len(boxes_list), len(anchors)
    obj = np.zeros((B, G, G, A), np.float32)
    noobj = np.ones((B, G, G, A), np.float32)
    txy = np.zeros((B, G, G, A, 2), np.float32)
    twh = np.zeros((B, G, G, A, 2), np.float32)
    cls = np.zeros((B, G, G, A), np.float32)
    for b, boxes in enumerate(boxes_list):
        for c, x, y, w, h in boxes:
            gx, gy, gw, gh = x * G, y * G, w * G, h * G
            col, row = min(int(gx), G - 1), min(int(gy), G - 1)
            inter = np.minimum(anchors[:, 0], gw) * np.minimum(anchors[:, 1], gh)
            iou = inter / (anchors[:, 0] * anchors[:, 1] + gw * gh - inter)
            resp = (iou == iou.max()) | (iou > 0.7)
            noobj[b, row, col][iou >= 0.3] = 0.0
            obj[b, row, col][resp] = 1.0
            noobj[b, row, col][resp] = 0.0
            txy[b, row, col, resp] = [gx - col, gy - row]
            twh[b, row, col, resp] = np.log(np.array([gw, gh])[None] / anchors[resp] + 1e-5)
            cls[b, row, col, resp] = c
    return obj, noobj, txy, twh, cls


def _loss(F, out, obj, noobj, txy, twh, cls, A, C, count, cells):
    """YOLOv2 loss (Turi Create's weights) of raw outputs (B, A(5+C), G, G).

    ``count`` (responsible anchors + 1e-4) and ``cells`` (images x G x G)
    normalise the sums. They are the GLOBAL batch's, computed on the host, so
    that the losses of the devices (and workers) sharing a batch add up to the
    loss of the whole batch on one device.
    """
    B, G = out.shape[0], out.shape[2]
    p = out.reshape((B, A, 5 + C, G, G)).transpose((0, 3, 4, 1, 2))   # (B, G, G, A, 5+C)
    xy = F.sigmoid(F.slice_axis(p, axis=4, begin=0, end=2))
    wh = F.slice_axis(p, axis=4, begin=2, end=4)
    to = F.slice_axis(p, axis=4, begin=4, end=5).reshape((B, G, G, A))
    logits = F.slice_axis(p, axis=4, begin=5, end=5 + C)
    o = obj.expand_dims(4)
    loss_xy = _LMB_XY * (o * (txy - xy) ** 2).sum() / count
    d = F.abs(twh - wh)
    huber = F.where(d < 1, 0.5 * d * d, d - 0.5)
    loss_wh = _LMB_WH / 2 * (o * huber).sum() / count
    bce_pos = F.relu(-to) + F.log1p(F.exp(-F.abs(to)))          # -log sigmoid(to)
    bce_neg = F.relu(to) + F.log1p(F.exp(-F.abs(to)))           # -log(1 - sigmoid(to))
    loss_conf = (_LMB_OBJ * obj * bce_pos + _LMB_NOOBJ * noobj * bce_neg).sum() / cells
    logp = F.log_softmax(logits, axis=4)
    picked = F.pick(logp, cls, axis=4)
    loss_cls = _LMB_CLASS * -(obj * picked).sum() / count
    return loss_xy + loss_wh + loss_conf + loss_cls


def _lr_schedule(iters):
    """(initial learning rate, MultiFactorScheduler steps) for ``iters`` steps.

    The learning rate drops tenfold before the 0-based steps ``iters // 2``
    and ``3 * iters // 4``. mxnet's scheduler lowers the rate once the
    update count (1-based, the step being taken) passes a listed step, so
    the listed steps are those same numbers; a drop "before step 0" (one or
    two steps in all) lowers the initial rate instead, since the scheduler
    takes only steps >= 1. The optimizer owns the schedule, so it reaches
    parameter servers and resumes from the restored update count.
    """
    drops = sorted({iters // 2, 3 * iters // 4})
    base = _LEARNING_RATE * 0.1 ** sum(d < 1 for d in drops)
    return base, [d for d in drops if d >= 1]


def create(dataset, annotations=None, feature=None, model=DEFAULT_MODEL, classes=None,
           batch_size=0, max_iterations=0, verbose=True, random_seed=None,
           checkpoint_path=None, checkpoint_every=_checkpoint.DEFAULT_EVERY, resume_from=None):
    """Train an object detector on images annotated with labelled boxes.

    Parameters
    ----------
    dataset : pandas.DataFrame
        One row per image: an image column (paths, encoded bytes, PIL
        images or numpy arrays) and an annotations column.
    annotations : str, optional
        The annotations column: per row a list of
        ``{'label': str, 'coordinates': {'x', 'y', 'width', 'height'}}`` in
        pixels of the original image, ``x, y`` the box centre, origin
        top-left; a single dict or an empty list is allowed. ``None``: the
        only column holding lists/dicts.
    feature : str, optional
        The image column; ``None``: the only image column.
    model : {'efficientnet-lite0-yolo'}
        Frozen EfficientNet-Lite0 (ImageNet) + a YOLO-style head with 9
        anchors on its 7x7 stride-32 feature map (224x224 input).
    classes : list, optional
        Classes to learn; objects with other labels are ignored (with a
        warning). ``None``: the sorted labels seen.
    batch_size : int
        Images per training step; 0 -> 32. Several devices
        (:mod:`toolkit.config`) share each batch and give the same result as
        one. In a parameter-server cluster each of the ``N`` workers trains
        on its own share of the images (rows ``rank, rank + N, ...``) with
        ``batch_size // N`` images per step, so a step still covers about
        ``batch_size`` images (``batch_size`` must be at least ``N``).
    max_iterations : int
        Training steps (optimizer updates of the head); 0 ->
        ``clip(30 epochs, 500, 3000)`` steps.
    verbose : bool
        Print progress (a table of iteration, smoothed loss, elapsed seconds).
    random_seed : int, optional
        Seed for the head's initialisation, shuffling and dropout. ``None``
        picks one, stored in the model (when resuming: the checkpoint's).
    checkpoint_path : str, optional
        Write a training checkpoint to this file (atomically, replacing the
        previous one) every ``checkpoint_every`` and after the last step. A
        checkpoint holds the current weights (``tc.load_model`` returns a
        usable detector from it) plus what resuming needs: the optimizer's
        moments, the step, the shuffling order, the random state, the
        settings and a fingerprint of the data. When resuming, the default is
        ``resume_from`` itself. In a cluster only the worker of rank 0 writes.
    checkpoint_every : int or str, default '60s'
        An int counts iterations (training steps; ``1``: after every step); a
        string such as ``'30s'``, ``'10min'`` or ``'1h'`` is wall-clock time
        since the last checkpoint, checked after each step.
    resume_from : str, optional
        A checkpoint written by this function: the image features are
        extracted again (deterministic) and training of the head continues
        after the checkpoint's step. With the same data and settings the
        result equals an uninterrupted run (up to float rounding; the tests
        kill a run with SIGKILL and check 1e-5). Rules: every setting
        (feature, annotations, classes, model, batch_size, max_iterations,
        random_seed) must equal the checkpoint's, else
        :class:`~toolkit.errors.CheckpointMismatchError` names each
        difference; other data than the checkpoint's (its fingerprint of the
        decoded images and boxes differs) only warns and training continues on
        the new data. A cluster run's optimizer moments live on its servers,
        are not in the checkpoint and restart from zero.

    Returns
    -------
    ObjectDetector

    Examples
    --------
    >>> import toolkit as tc
    >>> train = tc.datasets.detection_scenes(300, random_seed=0)      # doctest: +SKIP
    >>> model = tc.object_detector.create(train, max_iterations=300)  # doctest: +SKIP
    >>> model.evaluate(tc.datasets.detection_scenes(50, split='test'))  # doctest: +SKIP

    Checkpoint every 100 steps; after a crash, the same call with
    ``resume_from`` continues where the last checkpoint stopped:

    >>> model = tc.object_detector.create(train, max_iterations=300,
    ...     checkpoint_path='run.ckpt', checkpoint_every=100)         # doctest: +SKIP
    >>> model = tc.object_detector.create(train, max_iterations=300,
    ...     resume_from='run.ckpt')                                   # doctest: +SKIP
    """
    t_start = time.perf_counter()
    V.check_dataframe(dataset, "dataset")
    if model not in MODELS:
        raise InvalidParameterError(f"'model' must be one of {', '.join(MODELS)}, got {model!r}.")
    batch_size = V.check_int(batch_size, "batch_size", 0)
    max_iterations = V.check_int(max_iterations, "max_iterations", 0)
    verbose = V.check_bool(verbose, "verbose")
    random_seed = V.check_seed(random_seed) if random_seed is not None else None
    checkpoint_path, resume, random_seed = _checkpoint.start(
        ObjectDetector._TASK, checkpoint_path, checkpoint_every, resume_from, random_seed)
    if random_seed is not None:
        random_seed = V.check_seed(random_seed)
    # A concrete seed even when none was given, so that a resumed run draws
    # from the same stream as the interrupted one.
    seed = config.shared_seed(random_seed)
    feature = _images.find_image_column(dataset, feature,
                                        exclude=(annotations,) if annotations else ())
    if annotations is None:
        annotations = _find_annotations_column(dataset, None, feature)
        say(f"Using '{annotations}' as annotations column", verbose)
    else:
        _find_annotations_column(dataset, annotations, feature)
    rows = _annotations.parse_column(dataset[annotations], annotations)
    seen = sorted({(int(i["label"]) if isinstance(i["label"], np.integer) else i["label"])
                   for r in rows for i in r}, key=lambda v: (isinstance(v, str), v))
    if classes is None:
        classes = seen
    else:
        if not isinstance(classes, (list, tuple)) or not classes or len(set(classes)) != len(
                classes) or not all(isinstance(c, (str, int)) and not isinstance(c, bool)
                                    for c in classes):
            raise InvalidParameterError(
                f"'classes' must be a non-empty list of distinct labels (str or int), got "
                f"{classes!r}.")
        classes = list(classes)
    if not classes:
        raise DataError(f"Column '{annotations}' holds no objects at all; annotate at least "
                        "one box. " + _annotations.VALID_ANNOTATION)
    if batch_size == 0:
        batch_size = DEFAULT_BATCH_SIZE
        say(f"Setting 'batch_size' to {batch_size}", verbose)
    values, column, index, _ = _image_input(dataset, feature)
    n_all = len(values)
    if max_iterations == 0:
        iters = int(np.clip(30 * n_all // batch_size, 500, 3000))
        say(f"Setting 'max_iterations' to {iters}", verbose)
    else:
        iters = max_iterations
    run_config = {"feature": feature, "annotations": annotations, "classes": classes,
                  "model": model, "batch_size": batch_size, "max_iterations": iters,
                  "random_seed": seed}
    if resume is not None:
        # Settings first, before the (long) feature extraction; the data
        # fingerprint is compared once the images have been read.
        resume.check_compatible(run_config, resume.info["data_fingerprint"])

    # In a cluster every worker extracts and trains on its own share of the images.
    cl = config.cluster()
    rank, workers = (cl.rank, cl.num_workers) if cl is not None else (0, 1)
    local_batch = batch_size // workers
    if local_batch < 1:
        raise InvalidParameterError(
            f"'batch_size' is {batch_size} but the cluster has {workers} workers; each worker "
            f"trains on batch_size // {workers} images per step, so batch_size must be at "
            f"least {workers}.")
    if n_all < workers:
        raise DataError(f"The dataset has {n_all} images, fewer than the {workers} workers of "
                        "the cluster; each worker needs at least one.")
    if workers > 1:
        values, rows, index = values[rank::workers], rows[rank::workers], index[rank::workers]
        # Distinct dropout and shuffling streams per worker (rank 0's is the
        # one-process stream, and the one its checkpoints keep).
        rng = np.random.RandomState([seed, rank] if rank else seed)
    else:
        rng = np.random.RandomState(seed)
    mx().random.seed(seed)
    class_index = {c: i for i, c in enumerate(classes)}
    anchors = np.asarray(_net.DEFAULT_ANCHORS, np.float64)
    A, C, G = len(anchors), len(classes), _net.GRID

    # 1. Features of every image into a float16 memmap on disk (streamed).
    t0 = time.perf_counter()
    backbone = _efficientnet.build(include_top=False, prefix="backbone_")
    from ..pretrained import load_efficientnet_lite0
    w = {k: v for k, v in load_efficientnet_lite0().items() if not k.startswith("fc.")}
    set_weights(backbone, w, what="EfficientNet-Lite0")
    fmap = _net.feature_map(backbone)
    _prepare(fmap, len(values))
    n = len(values)
    tmp = tempfile.NamedTemporaryFile(prefix="toolkit-od-features-", suffix=".f16", delete=False)
    tmp.close()
    try:
        per = _net.FEATURE_CHANNELS * G * G + _net.FINE_CHANNELS * 4 * G * G
        flat = np.memmap(tmp.name, dtype=np.float16, mode="w+", shape=(n, per))
        cache = (flat[:, :_net.FEATURE_CHANNELS * G * G].reshape(n, _net.FEATURE_CHANNELS, G, G),
                 flat[:, _net.FEATURE_CHANNELS * G * G:].reshape(n, _net.FINE_CHANNELS, 2 * G,
                                                                    2 * G))
        counters = {"clipped": 0, "dropped": 0, "unknown": 0}
        boxes = []
        # The checkpoints' data fingerprint: the decoded pixels as they stream
        # through, then the parsed boxes (exact, and cheap next to the network);
        # only when a checkpoint is written or resumed.
        pixel_hash = hashlib.sha256() \
            if checkpoint_path is not None or resume is not None else None
        from tqdm import tqdm
        # Several devices: consecutive batches go to the devices in turn and run
        # concurrently (the backbone is frozen, so this is plain inference).
        ctxs = config.contexts()
        spread = config.off_default(ctxs)
        if spread:
            fmap.collect_params().reset_ctx(ctxs)
        pending = []

        def flush():
            running = [(s, pixels, sizes, fmap(_to_input(pixels, ctx)))
                       for (s, pixels, sizes), ctx in zip(pending, ctxs)]
            for s, pixels, sizes, (coarse, fine) in running:
                cache[0][s:s + len(pixels)] = coarse.asnumpy()
                cache[1][s:s + len(pixels)] = fine.asnumpy()
                for i, size in enumerate(sizes):
                    boxes.append(_annotations.to_boxes(rows[s + i], size, class_index,
                                                       counters))
                bar.update(len(pixels))
            pending.clear()
        with tqdm(total=n, desc="Extracting image features", unit="img", disable=not verbose,
                  mininterval=1.0) as bar:
            for item in _batches(values, column, index, NETWORK_BATCH):
                if pixel_hash is not None:
                    pixel_hash.update(np.ascontiguousarray(item[1]).tobytes())
                pending.append(item)
                if len(pending) == len(ctxs):
                    flush()
            flush()
        if spread:
            fmap.collect_params().reset_ctx(mx().cpu())
        _annotations.warn_counters(counters, annotations)
        num_boxes = int(sum(len(b) for b in boxes))
        if num_boxes == 0:
            raise DataError(f"No usable box of the classes {classes!r} in column "
                            f"'{annotations}'" + (f" (worker {rank}'s share of the images)"
                                                  if workers > 1 else "") + ". "
                            + _annotations.VALID_ANNOTATION)
        extraction_time = time.perf_counter() - t0
        data_fingerprint = None if pixel_hash is None else _checkpoint.fingerprint(
            pixel_hash.hexdigest(), np.array([len(b) for b in boxes], np.int64),
            np.concatenate(boxes), classes)
        if resume is not None:
            # The checkpoint (rank 0's) fingerprints rank 0's share of the images only.
            resume.check_compatible(run_config, data_fingerprint if rank == 0
                                    else resume.info["data_fingerprint"])
        state = {
            "feature": feature, "annotations": annotations, "classes": classes, "model": model,
            "anchors": [list(map(float, a)) for a in anchors], "grid_shape": [G, G],
            "input_image_shape": [3, _net.IMAGE_SIZE, _net.IMAGE_SIZE],
            "non_maximum_suppression_threshold": 0.45, "num_classes": C, "num_examples": n_all,
            "num_bounding_boxes": num_boxes, "batch_size": batch_size,
            "max_iterations": max_iterations, "training_iterations": iters,
            "training_epochs": iters * batch_size // n_all, "training_loss": None,
            "training_time": None, "feature_extraction_time": extraction_time,
            "random_seed": seed,
        }
        checkpoint = None
        if checkpoint_path is not None:
            checkpoint = {
                "schedule": _checkpoint.Schedule(checkpoint_path, checkpoint_every,
                                                 config.is_writer()),
                "config": run_config, "fingerprint": data_fingerprint, "state": state,
                "backbone": {f"backbone.{k}": v for k, v in get_weights(backbone).items()}}

        # 2. Train the head on the cached features.
        head, loss = _train_head(cache, boxes, anchors, C, local_batch, iters, rng, verbose,
                                 t_start, checkpoint=checkpoint, resume=resume)
    finally:
        cache = flat = None
        os.unlink(tmp.name)
    net = _net.build(A, C, backbone=backbone, head=head)
    state.update(training_loss=loss, training_time=time.perf_counter() - t_start)
    return ObjectDetector(state, net)


def _train_head(cache, boxes, anchors, C, batch_size, iters, rng, verbose, t_start,
                checkpoint=None, resume=None):
    """Train a head on the cached features; return (head on the CPU, smoothed loss).

    ``batch_size`` is this process's batch (in a cluster, the worker's
    share). The batch is dealt to this process's devices one image at a
    time; each device's loss is normalised by the whole batch's counts, so
    the gradients the trainer sums equal one device's. ``checkpoint``: a
    dict with ``schedule``, ``config``, ``fingerprint``, ``state`` and
    ``backbone`` (weights) to write; ``resume``: a
    :class:`toolkit._checkpoint.Checkpoint` to continue from.
    """
    nd, autograd = mx().nd, mx().autograd
    A, G, n = len(anchors), _net.GRID, len(boxes)
    head = _net.build_head(A, C, seed_bias=resume is None)
    first = 0
    if resume is not None:
        set_weights(head, {k[len("head."):]: v for k, v in resume.weights.items()
                           if k.startswith("head.")}, what="object detector head")
        first = min(int(resume.position["iteration"]), iters)
    train_net = _net.training_head(head)
    train_net.hybridize()
    base_lr, lr_steps = _lr_schedule(iters)
    # begin_num_update: the schedule continues from the checkpoint's step even
    # where the optimizer's state cannot be restored (on parameter servers).
    opt_params = {"learning_rate": base_lr, "wd": 5e-4, "begin_num_update": first}
    if lr_steps:
        opt_params["lr_scheduler"] = mx().lr_scheduler.MultiFactorScheduler(
            step=lr_steps, factor=0.1, base_lr=base_lr)
    run = _training.setup(head, "adam", opt_params)
    workers = run.num_workers
    smoothed, order, pos = None, None, 0
    if resume is not None:
        extra = resume.extra
        restored = _training.restore_optimizer(run, extra.get("optimizer"),
                                               resume.arrays_under("optimizer"))
        rng = resume.rng()
        if run.rank:
            # The checkpoint holds rank 0's stream; other workers derive their own.
            rng = np.random.RandomState([int(rng.randint(2**31)), run.rank])
        else:
            stored = np.asarray(extra.get("order", []), np.int64)
            # Another share of the images (other data, or another number of
            # workers) starts a fresh pass instead.
            if len(stored) == n and np.array_equal(np.sort(stored), np.arange(n)):
                order, pos = stored, int(extra.get("pos", 0))
        smoothed = extra.get("smoothed_loss")
        say(resume.describe(), verbose)
        if not restored:
            say("The optimizer's moments of a cluster run live on its servers and are not in "
                "the checkpoint: they restart from zero.", verbose)
    if order is None:
        order, pos = rng.permutation(n), 0
    say(f"Training on {run.describe()}.", verbose)
    table = ProgressTable(["Iteration", "Loss", "Elapsed Time"], verbose)
    started = False
    last_print = -1e9
    schedule = checkpoint["schedule"] if checkpoint else None
    ctxs = run.ctxs
    for it in range(first, iters):
        if pos + batch_size > n:
            order, pos = rng.permutation(n), 0
        idx = np.sort(order[pos:pos + batch_size])
        pos += batch_size
        B = len(idx)
        x_all = np.asarray(cache[0][idx], np.float32)
        xf_all = np.asarray(cache[1][idx], np.float32)
        targets = _targets([boxes[i] for i in idx], anchors, G, C)
        keep, keep_fine = _net.dropout_masks(rng, B)
        # The whole batch's normalisers. In a cluster the gradients of the
        # workers are summed too: each worker divides by its own counts times
        # the number of workers, so a step follows the mean of the workers'
        # losses (the one-process loss when their batches hold as many boxes).
        count = (float(targets[0].sum()) + 1e-4) * workers
        cells = float(B * G * G * workers)
        dealt = _training.split(np.arange(B), 1, len(ctxs))
        losses = []
        with autograd.record():
            for ctx, groups in zip(ctxs, dealt):
                # A device without a share this step still runs its (zero-weight)
                # backward pass, so that its gradient buffers hold zeros and
                # every copy of the weights takes the same update.
                p = np.concatenate(groups) if groups else np.arange(1)
                out = train_net(nd.array(x_all[p], ctx=ctx), nd.array(xf_all[p], ctx=ctx),
                                nd.array(keep[p], ctx=ctx), nd.array(keep_fine[p], ctx=ctx))
                loss = _loss(nd, out, *(nd.array(t[p], ctx=ctx) for t in targets), A, C,
                             count, cells)
                losses.append(loss if groups else loss * 0.0)
        autograd.backward(losses)
        run.trainer.step(1)
        value = workers * sum(float(v.asscalar()) for v in losses)
        smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
        step = it + 1
        now = time.perf_counter() - t_start
        if verbose and (it == first or now - last_print >= 5.0 or step == iters):
            if not started:
                table.start()
                started = True
            table.row(step, smoothed, f"{now:.1f}")
            last_print = now
        if schedule is not None and schedule.due(step, final=(step == iters)):
            schedule.write(lambda: _snapshot(head, run, rng, order, pos, step, iters, smoothed,
                                             checkpoint))
    if started:
        table.finish()
    # A fresh CPU head takes the final weights: copying into parameters that
    # mxnet reordered for its kernels (or placed on several devices) is unreliable.
    final = _net.build_head(A, C, seed_bias=False)
    set_weights(final, get_weights(head, ctxs[0]), what="object detector head")
    return final, (None if smoothed is None else float(smoothed))


def _snapshot(head, run, rng, order, pos, step, iters, smoothed, checkpoint):
    """Everything a resumed run needs, as keyword arguments of _checkpoint.write."""
    weights = dict(checkpoint["backbone"])
    weights.update({f"head.{k}": v for k, v in get_weights(head, run.ctxs[0]).items()})
    meta, opt = _training.optimizer_arrays(run)
    state = dict(checkpoint["state"], training_iterations=step,
                 training_loss=None if smoothed is None else float(smoothed))
    return dict(task=ObjectDetector._TASK, file_version=FILE_VERSION, state=state,
                weights=weights, position={"iteration": step, "max_iterations": iters},
                config=checkpoint["config"], data_fingerprint=checkpoint["fingerprint"],
                rng=rng, extra={"optimizer": meta, "smoothed_loss": smoothed,
                                "order": [int(i) for i in order], "pos": int(pos)},
                arrays={f"optimizer/{k}": v for k, v in opt.items()})
