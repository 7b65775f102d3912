"""ObjectDetector: create, predict, evaluate, save/load, Core ML export.

Design: a **frozen** EfficientNet-Lite0 backbone (ImageNet weights,
:mod:`toolkit.pretrained`) and a small YOLO-style anchor head trained on its
cached feature maps (see :mod:`._train` for the loss, schedule, devices,
clusters and checkpoints).

The package reads top-down: :mod:`._data` (columns, classes, image batches,
cluster shares) and :mod:`._annotations` (the annotation format) ->
:mod:`._net` (the network and its weight names) -> :mod:`._train` (feature
cache, targets, loss, schedule, the head's training loop and checkpoints) ->
this module (the public class and :func:`create`) -> :mod:`._export` (Core ML)
and :mod:`._onnx_export` (ONNX), which the class calls. :mod:`._detection`
holds the numpy decoding, NMS and mAP that prediction and the tests share.

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
   since then always the seed used, drawn when none was given), ``verbose``
   (create()'s argument; added later without a version bump since nothing
   reads it to predict: files without it read as True, create()'s default).

   Fields computed from the state, not stored: ``grid_height``/``grid_width``
   (``grid_shape``), ``annotation_origin`` (``'top_left'``),
   ``annotation_position`` (``'center'``), ``annotation_scale``
   (``'pixel'``) and ``_training_time_as_string``.
"""

import time

import numpy as np

from .. import _checkpoint, _images, _ort, config
from .. import _validate as V
from .._model import Model, task_method
from .._mx import get_weights, mx
from .._progress import say
from ..errors import ColumnNotFoundError, InvalidParameterError
from . import _annotations, _data, _detection, _export, _net, _onnx_export, _train

FILE_VERSION = 1
MODELS = ("efficientnet-lite0-yolo",)
DEFAULT_MODEL = "efficientnet-lite0-yolo"
DEFAULT_BATCH_SIZE = 32
METRICS = ("average_precision_50", "average_precision", "mean_average_precision_50",
           "mean_average_precision")
#: ``evaluate(output_type=...)``; ``'sframe'`` is Turi Create's name of ``'dataframe'``.
OUTPUT_TYPES = ("dict", "dataframe", "sframe")
#: How annotations give boxes (Turi Create 6's fields): pixels of the original image,
#: x/y the box centre, origin at the top left corner. The only convention here.
ANNOTATION_CONVENTION = {"annotation_origin": "top_left", "annotation_position": "center",
                         "annotation_scale": "pixel"}


def seconds_as_string(seconds):
    """``3725.2`` -> ``'1h 2m 5s'``: whole seconds (at least 1) in days, hours, minutes,
    seconds, zero units left out (Turi Create's ``_training_time_as_string``)."""
    left = max(int(round(seconds)), 1)
    parts = []
    for suffix, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count}{suffix}")
    return " ".join(parts)


# --- the model ----------------------------------------------------------------------------

class ObjectDetector(Model):
    """A trained object detector. Create one with :func:`create`.

    Fields (also ``model['name']``): ``feature``, ``annotations``, ``classes``,
    ``num_classes``, ``model``, ``anchors``, ``grid_shape``, ``grid_height``,
    ``grid_width``, ``input_image_shape``,
    ``non_maximum_suppression_threshold``, ``num_examples``,
    ``num_bounding_boxes``, ``batch_size``, ``max_iterations``,
    ``training_iterations``, ``training_epochs``, ``training_loss``,
    ``training_time``, ``_training_time_as_string`` (``'1h 2m 5s'``),
    ``feature_extraction_time``, ``random_seed``, ``verbose``,
    ``num_validation_examples`` (always 0: no validation set), and
    ``annotation_origin`` (``'top_left'``), ``annotation_position``
    (``'center'``), ``annotation_scale`` (``'pixel'``): the annotation
    convention, Turi Create 6's fields.

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

    def _fields(self):
        fields = super()._fields()
        grid = self._state["grid_shape"]
        fields.update(grid_height=int(grid[0]), grid_width=int(grid[1]),
                      **ANNOTATION_CONVENTION)
        # Files written before create() stored it were made with its default.
        fields.setdefault("verbose", True)
        # Every task counts its validation rows apart; the detector has none.
        fields.setdefault("num_validation_examples", 0)
        seconds = self._state.get("training_time")
        fields["_training_time_as_string"] = None if seconds is None \
            else seconds_as_string(seconds)
        return fields

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
        runner = self._runner()
        forward = runner if runner is not None else self._mx_raw
        from tqdm import tqdm
        with tqdm(total=len(values), desc="Predicting", unit="img", disable=not verbose,
                  mininterval=1.0) as bar:
            for s, pixels, sizes in _data.batches(values, column, index):
                raw = forward(_data.network_input(pixels))
                bar.update(len(pixels))
                yield s, raw, sizes

    def _mx_raw(self, x):
        """The mxnet network on network input ``x`` (numpy) -> raw outputs (numpy)."""
        if not self._ready:
            _net.prepare(self._net, min(_data.NETWORK_BATCH, len(x)))
            self._ready = True
        return self._net(mx().nd.array(x, ctx=mx().cpu())).asnumpy()

    def _network_graph(self):
        num_outputs = len(self._state["anchors"]) * (5 + len(self._state["classes"]))
        return _onnx_export.network_model(get_weights(self._net), num_outputs, self._TASK,
                                          self._FILE_VERSION)

    def _runner(self):
        """The onnxruntime runner of the network (None: mxnet runs it), see toolkit._ort."""
        return _ort.runner_for(self, "network", "object detector", self._network_graph,
                               self._mx_raw)

    def _detect(self, raw, size, confidence_threshold, iou_threshold):
        """One image's raw output -> annotation list (pixels), best first."""
        return _detection.detect(raw, size, self._state["anchors"], self._state["classes"],
                                 confidence_threshold, iou_threshold)

    def predict(self, dataset, confidence_threshold=_detection.DEFAULT_CONFIDENCE_THRESHOLD,
                iou_threshold=None, verbose=False):
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
        box centre. At most 100 boxes per image. An empty DataFrame (with the
        image column) or Series gives an empty Series, as in Turi Create.

        Examples
        --------
        >>> preds = model.predict(test)                              # doctest: +SKIP
        >>> preds[0][0]['label'], preds[0][0]['confidence']          # doctest: +SKIP
        ('face', 0.93)
        """
        import pandas as pd
        confidence_threshold = V.check_fraction(confidence_threshold, "confidence_threshold")
        iou_threshold = self._iou(iou_threshold)
        empty = self._empty_input(dataset)
        if empty is not None:
            return pd.Series([], index=empty, dtype=object)
        values, column, index, single = _images.image_input(dataset, self._state["feature"])
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

    def _empty_input(self, dataset, columns=()):
        """The index of an empty DataFrame or Series (its columns checked), else None."""
        import pandas as pd
        if isinstance(dataset, pd.DataFrame) and len(dataset) == 0:
            for column, what in ((self._state["feature"], "image"),) + tuple(columns):
                if column not in dataset.columns:
                    raise ColumnNotFoundError(
                        f"The {what} column '{column}' the model was trained on is not in "
                        f"'dataset' (columns: {', '.join(map(str, dataset.columns))}).")
            return dataset.index
        if isinstance(dataset, pd.Series) and len(dataset) == 0:
            return dataset.index
        return None

    def _iou(self, iou_threshold):
        if iou_threshold is None:
            return float(self._state["non_maximum_suppression_threshold"])
        return V.check_fraction(iou_threshold, "iou_threshold")

    def _thresholds(self, iou_threshold, confidence_threshold):
        """The exports' default thresholds: ``None`` -> ``predict``'s defaults."""
        if confidence_threshold is None:
            confidence_threshold = _detection.DEFAULT_CONFIDENCE_THRESHOLD
        return (self._iou(iou_threshold),
                V.check_fraction(confidence_threshold, "confidence_threshold"))

    def evaluate(self, dataset, metric="auto", output_type="dict", iou_threshold=None,
                 confidence_threshold=0.001, verbose=False):
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
        output_type : {'dict', 'dataframe', 'sframe'}
            ``'dict'``: see Returns. ``'dataframe'`` (``'sframe'``, Turi
            Create's name, gives the same): one row per class with ground truth
            boxes, columns ``label`` and the per-class metrics asked for
            (``average_precision_50``, ``average_precision``); the means are
            left out, as in Turi Create.
        iou_threshold : float, optional
            Non-maximum suppression of the predictions (default: the model's
            0.45), as in :meth:`predict`.
        confidence_threshold : float, default 0.001
            Predictions kept for scoring, as in :meth:`predict`.
        verbose : bool, default False

        Returns
        -------
        EvaluationResult or pandas.DataFrame
            ``output_type='dict'``: a dict ``{'average_precision_50': {class: AP},
            'mean_average_precision_50': float, ...}``. A class without ground
            truth boxes is left out of the per-class dicts and of the means; when
            no class has any (an empty DataFrame, or images without objects) the
            dicts are empty and the means 0.0, as in Turi Create, never NaN. Its
            ``explore(path=None)`` writes an interactive HTML report (per-class
            AP and precision-recall curves, images with predicted and true boxes,
            false positives and misses marked, filterable by class) and opens it
            in the browser when one can be shown. ``'dataframe'``: one row per
            class (``label`` and the per-class metrics), as Turi Create's SFrame.

        Examples
        --------
        >>> scores = model.evaluate(test)                            # doctest: +SKIP
        >>> print('mAP@0.5: {:.1%}'.format(scores['mean_average_precision_50']))
        ...                                                          # doctest: +SKIP
        >>> model.evaluate(test, metric='all', output_type='dataframe')  # doctest: +SKIP
        """
        import pandas as pd
        metrics = _check_metrics(metric)
        V.check_choice(output_type, "output_type", OUTPUT_TYPES)
        classes = self._state["classes"]
        V.check_fraction(confidence_threshold, "confidence_threshold")
        self._iou(iou_threshold)
        if self._empty_input(dataset, ((self._state["annotations"], "annotations"),)) \
                is not None and isinstance(dataset, pd.DataFrame):
            ap = np.full((len(_detection.IOU_THRESHOLDS), len(classes)), np.nan)
        else:
            gt, preds = self._gt_and_predictions(dataset, confidence_threshold, iou_threshold,
                                                 verbose)
            ap = _detection.average_precision(gt, preds, classes)
        present = [c for c in range(len(classes)) if not np.isnan(ap[0, c])]
        res = {}
        for m in metrics:
            table = ap[0] if m.endswith("_50") else ap.mean(axis=0)
            if m.startswith("mean_"):
                res[m] = float(np.mean(table[present])) if present else 0.0
            else:
                res[m] = {classes[c]: float(table[c]) for c in present}
        if output_type != "dict":
            frame = pd.DataFrame({"label": pd.Series([classes[c] for c in present],
                                                     dtype=object)})
            for m in metrics:
                if not m.startswith("mean_"):
                    frame[m] = np.array([res[m][classes[c]] for c in present], np.float64)
            return frame
        from .._explore import EvaluationResult, detection_boxes_from_arrays, detection_report
        # The boxes just scored (true boxes clipped to their image, every detection down
        # to confidence_threshold), so the report's AP@0.5 is average_precision_50.
        images = list(dataset[self._state["feature"]])
        index, classes = dataset.index.copy(), list(classes)
        title = f"Object detector: {self._state['annotations']}"
        return EvaluationResult(res, lambda: detection_report(
            images, detection_boxes_from_arrays(gt, classes),
            detection_boxes_from_arrays(preds, classes), classes, title=title, index=index))

    def _gt_and_predictions(self, dataset, confidence_threshold, iou_threshold, verbose):
        V.check_dataframe(dataset, "dataset")
        ann_col = self._state["annotations"]
        if ann_col not in dataset.columns:
            raise ColumnNotFoundError(
                f"The annotations column '{ann_col}' the model was trained on is not in "
                f"'dataset' (columns: {', '.join(map(str, dataset.columns))}).")
        rows = _annotations.parse_column(dataset[ann_col], ann_col)
        confidence_threshold = V.check_fraction(confidence_threshold, "confidence_threshold")
        iou_threshold = self._iou(iou_threshold)
        values, column, index, _ = _images.image_input(dataset, self._state["feature"])
        class_index = {c: i for i, c in enumerate(self._state["classes"])}
        counters = _annotations.new_counters()
        gt, preds = [], []
        for s, raw, sizes in self._raw(values, column, index, verbose):
            for i, (r, size) in enumerate(zip(raw, sizes)):
                boxes = _annotations.to_boxes(rows[s + i], size, class_index, counters)
                gt.append(_annotations.to_pixels(boxes, size))
                dets = self._detect(r, size, confidence_threshold, iou_threshold)
                preds.append(_detection.as_rows(dets, class_index))
        _annotations.warn_counters(counters, ann_col)
        return gt, preds

    export_coreml = task_method(_export.export_coreml)
    export_onnx = task_method(_onnx_export.export_onnx)


# --- validation helpers --------------------------------------------------------------------

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


def _check_state(state):
    """Refuse a stored state that cannot describe a model (a damaged or edited file)."""
    check = V.StateCheck(state, "object detector")
    check.require("feature", "annotations", "classes", "model", "anchors", "input_image_shape",
                  "non_maximum_suppression_threshold", "grid_shape")
    check.classes(minimum=1).one_of("model", MODELS)
    anchors = state["anchors"]
    if not (isinstance(anchors, list) and anchors and all(
            isinstance(a, list) and len(a) == 2 and all(_annotations.is_number(v) and v > 0
                                                        for v in a) for a in anchors)):
        check.bad("anchors", "is not a list of [width, height] pairs > 0")
    check.equals("input_image_shape", [3, _net.IMAGE_SIZE, _net.IMAGE_SIZE])
    check.equals("grid_shape", [_net.GRID, _net.GRID])
    t = state["non_maximum_suppression_threshold"]
    if not (_annotations.is_number(t) and 0 <= t <= 1):
        check.bad("non_maximum_suppression_threshold", f"is {t!r}")


# --- create -------------------------------------------------------------------------------

def create(dataset, annotations=None, feature=None, model=DEFAULT_MODEL, classes=None,
           batch_size=0, max_iterations=0, verbose=True, grid_shape=None, random_seed=None,
           checkpoint_path=None, checkpoint_every=_checkpoint.DEFAULT_EVERY, resume_from=None):
    """Train an object detector on images annotated with labelled boxes.

    The arguments are Turi Create 6's, in its order, plus the checkpoint
    arguments; docs/coming_from_turicreate.md lists each with its status.

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
        anchors on its 7x7 stride-32 feature map (224x224 input). Turi
        Create's ``'darknet-yolo'`` is refused with a message naming this one.
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
        Training steps (optimizer updates of the head); 0 or None (automatic)
        -> ``clip(30 epochs, 500, 3000)`` steps, or the checkpoint's when resuming.
    verbose : bool
        Print progress (a table of iteration, smoothed loss, elapsed seconds).
        Stored in the model (``model.verbose``).
    grid_shape : [int, int], optional
        ``[height, width]`` of the output grid. The grid here is fixed by the
        network: 7x7 (224x224 input, stride 32). ``None`` or ``[7, 7]`` is
        accepted; another shape (Turi Create's default was ``[13, 13]`` at
        416x416) is refused with an error that says so.
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
    batch_size, max_iterations, verbose = _check_arguments(dataset, model, batch_size,
                                                           max_iterations, verbose)
    _check_grid_shape(grid_shape)
    checkpoint_path, resume, seed = _start(checkpoint_path, checkpoint_every, resume_from,
                                           random_seed)
    feature, annotations = _data.find_columns(dataset, feature, annotations, verbose)
    rows = _annotations.parse_column(dataset[annotations], annotations)
    classes = _data.choose_classes(rows, classes, annotations)
    if batch_size == 0:
        # Automatic: a resumed run keeps the checkpoint's choice.
        batch_size = (resume.setting("batch_size") if resume is not None else None) \
            or DEFAULT_BATCH_SIZE
        say(f"Setting 'batch_size' to {batch_size}", verbose)
    values, column, index, _ = _images.image_input(dataset, feature)
    iters = max_iterations or (resume.setting("max_iterations") if resume is not None
                               else None) or _train.auto_iterations(len(values), batch_size)
    if not max_iterations:
        say(f"Setting 'max_iterations' to {iters}", verbose)
    run_config = {"feature": feature, "annotations": annotations, "classes": classes,
                  "model": model, "batch_size": batch_size, "max_iterations": iters,
                  "random_seed": seed}
    if resume is not None:
        # Settings first, before the (long) feature extraction; the data
        # fingerprint is compared once the images have been read.
        resume.check_compatible(run_config, resume.info["data_fingerprint"])
    # In a cluster every worker extracts and trains on its own share of the images.
    share = _data.worker_share(values, column, index, rows, batch_size, config.cluster())
    rng = _train.generator(seed, share.rank)
    mx().random.seed(seed)
    anchors = np.asarray(_net.DEFAULT_ANCHORS, np.float64)
    with _train.FeatureCache(len(share.values)) as cache:
        t0 = time.perf_counter()
        backbone = _net.pretrained_backbone()
        boxes, pixel_digest = _extract(backbone, cache, share, classes, annotations,
                                       checkpoint_path is not None or resume is not None,
                                       verbose)
        state = _new_state(run_config, anchors, max_iterations, len(values), boxes,
                           time.perf_counter() - t0)
        state["verbose"] = verbose
        fingerprint = _train.data_fingerprint(pixel_digest, boxes, classes)
        if resume is not None:
            # The checkpoint (rank 0's) fingerprints rank 0's share of the images only.
            resume.check_compatible(run_config, fingerprint if share.rank == 0
                                    else resume.info["data_fingerprint"])
        checkpoint = _train.checkpoint_plan(
            checkpoint_path, checkpoint_every, ObjectDetector._TASK, FILE_VERSION, run_config,
            fingerprint, state, backbone)
        head, loss = _train.train_head(cache, boxes, anchors, len(classes), share.batch, iters,
                                       rng, verbose, t_start, checkpoint=checkpoint,
                                       resume=resume)
    net = _net.build(len(anchors), len(classes), backbone=backbone, head=head)
    state.update(training_loss=loss, training_time=time.perf_counter() - t_start)
    return ObjectDetector(state, net)


def _check_arguments(dataset, model, batch_size, max_iterations, verbose):
    """create's plain arguments, checked; returns (batch_size, max_iterations, verbose)."""
    V.check_dataframe(dataset, "dataset")
    if model == "darknet-yolo":
        raise InvalidParameterError(
            "'model' is 'darknet-yolo', Turi Create's detector network, which this toolkit does "
            f"not have; its detector is {DEFAULT_MODEL!r} (the default): leave 'model' out.")
    if model not in MODELS:
        raise InvalidParameterError(f"'model' must be one of {', '.join(MODELS)}, got {model!r}.")
    return (V.check_int(batch_size, "batch_size", 0),
            V.check_max_iterations(max_iterations) or 0,
            V.check_bool(verbose, "verbose"))


def _check_grid_shape(grid_shape):
    """``grid_shape`` must be None or the network's grid, [7, 7]."""
    if grid_shape is None:
        return
    ok = isinstance(grid_shape, (list, tuple)) and len(grid_shape) == 2 and all(
        isinstance(g, (int, np.integer)) and not isinstance(g, bool) for g in grid_shape)
    if not ok:
        raise InvalidParameterError(
            f"'grid_shape' must be [height, width] (two ints), got {grid_shape!r}.")
    if list(map(int, grid_shape)) != [_net.GRID, _net.GRID]:
        raise InvalidParameterError(
            f"'grid_shape' is {list(map(int, grid_shape))}, but this detector's grid is fixed at "
            f"[{_net.GRID}, {_net.GRID}]: its network reads {_net.IMAGE_SIZE}x{_net.IMAGE_SIZE} "
            f"images at stride {_net.STRIDE} (Turi Create's [13, 13] came from 416x416 input). "
            "Leave grid_shape out.")


def _start(checkpoint_path, checkpoint_every, resume_from, random_seed):
    """The checkpoint arguments and the seed; returns (checkpoint_path, resume, seed).

    ``seed`` is concrete even when none was given, so that a resumed run draws
    from the same stream as the interrupted one.
    """
    random_seed = V.check_seed(random_seed) if random_seed is not None else None
    checkpoint_path, resume, random_seed = _checkpoint.start(
        ObjectDetector._TASK, checkpoint_path, checkpoint_every, resume_from, random_seed)
    if random_seed is not None:
        random_seed = V.check_seed(random_seed)
    # Drawn when none was given; in a cluster rank 0's, shared with every worker.
    return checkpoint_path, resume, config.shared_seed(random_seed)


def _extract(backbone, cache, share, classes, annotations, hash_pixels, verbose):
    """Features into ``cache`` and the boxes of ``share``'s images; returns (boxes, digest).

    Warns about clipped, dropped and ignored boxes, and refuses a share
    without a usable box.
    """
    boxes, counters, pixel_digest = _train.extract_features(
        backbone, cache, share, {c: i for i, c in enumerate(classes)}, hash_pixels, verbose)
    _annotations.warn_counters(counters, annotations)
    _data.require_boxes(int(sum(len(b) for b in boxes)), classes, annotations, share)
    return boxes, pixel_digest


def _new_state(run_config, anchors, max_iterations, num_examples, boxes, extraction_time):
    """The new model's state, but for the training loss and time."""
    iters, batch_size = run_config["max_iterations"], run_config["batch_size"]
    return {
        "feature": run_config["feature"], "annotations": run_config["annotations"],
        "classes": run_config["classes"], "model": run_config["model"],
        "anchors": [list(map(float, a)) for a in anchors], "grid_shape": [_net.GRID] * 2,
        "input_image_shape": [3, _net.IMAGE_SIZE, _net.IMAGE_SIZE],
        "non_maximum_suppression_threshold": _detection.DEFAULT_IOU_THRESHOLD,
        "num_classes": len(run_config["classes"]), "num_examples": num_examples,
        "num_bounding_boxes": int(sum(len(b) for b in boxes)), "batch_size": batch_size,
        "max_iterations": max_iterations, "training_iterations": iters,
        "training_epochs": iters * batch_size // num_examples, "training_loss": None,
        "training_time": None, "feature_extraction_time": extraction_time,
        "random_seed": run_config["random_seed"],
    }
