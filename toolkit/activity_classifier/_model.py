"""ActivityClassifier: create, predict, evaluate, save/load.

File versions of the ``activity_classifier`` task (bump on any change of the
stored state or weights, and add a migration to ``_MIGRATIONS``):

1. First release: core weights under structural names, per-feature
   standardisation (``feature_mean``/``feature_std``) in the state.
"""

import time
import warnings

import numpy as np

from .. import _checkpoint, config
from .. import _validate as V
from .._metrics import ToolkitWarning, classifier_metrics
from .._model import Model
from .._mx import get_weights, mx, set_weights
from .._progress import say
from ..errors import (CorruptModelFileError, DataError, InvalidParameterError,
                      WeightsMismatchError)
from . import _data, _export, _net, _train
from ._data import WINDOWS_PER_CHUNK

FILE_VERSION = 1
# Turi Create 5.x's threshold. Below it, holding out 10% of the sessions costs more than
# the report is worth: on the watch data (84 sessions) per-row test accuracy fell from
# 0.821 to 0.775 (seed 0) when 8 sessions were held out.
MIN_SESSIONS_FOR_AUTO_VALIDATION = 100
_PREDICT_BATCH = 256


class ActivityClassifier(Model):
    """A trained activity classifier. Create one with :func:`create`.

    Fields (also available as ``model['name']``): ``classes``, ``features``,
    ``session_id``, ``target``, ``prediction_window``, ``num_classes``,
    ``num_features``, ``num_examples``, ``num_sessions``,
    ``training_accuracy``, ``training_log_loss``, ``validation_accuracy``,
    ``validation_log_loss``, ``training_time``, ``training_iterations``,
    ``max_iterations``, ``batch_size``, ``random_seed``.

    Examples
    --------
    >>> import toolkit as tc
    >>> data = tc.datasets.watch_sessions()
    >>> small = data[data['session_id'] < 14]
    >>> model = tc.activity_classifier.create(small, 'session_id', 'exercise',
    ...     features=['ax', 'ay', 'az', 'wx', 'wy', 'wz'], max_iterations=1,
    ...     verbose=False, random_seed=0)
    >>> model.predict(small.head(300)).shape
    (300,)
    """

    _TASK = "activity_classifier"
    _FILE_VERSION = FILE_VERSION
    # {v: f}: f turns a version-v file into version v + 1 (none yet).
    _MIGRATIONS = {}

    def __init__(self, state, weights=None):
        self._state = dict(state)
        self._core = self._pred = self._graphs = None
        self._build(weights)

    # --- networks -------------------------------------------------------
    def _build(self, weights):
        s = self._state
        self._core, self._pred, self._graphs = _net.build(
            len(s["features"]), len(s["classes"]), s["prediction_window"])
        if weights is not None:
            set_weights(self._core, weights, what="activity classifier")
        self._pred.hybridize()
        self._graphs.hybridize()

    def _get_state(self):
        return dict(self._state), get_weights(self._core)

    @classmethod
    def _from_state(cls, state, weights):
        _check_state(state)
        _check_weights_fit(state, weights)
        return cls(state, weights)

    # --- fields ---------------------------------------------------------
    def __getattr__(self, name):
        state = self.__dict__.get("_state")
        if state is not None and name in state:
            value = state[name]
            return list(value) if isinstance(value, list) else value
        raise AttributeError(f"'ActivityClassifier' object has no attribute {name!r}")

    def __getitem__(self, name):
        if name not in self._state:
            raise KeyError(f"No field {name!r}; fields: {', '.join(self._list_fields())}.")
        return getattr(self, name)

    def _list_fields(self):
        return sorted(k for k in self._state if not k.startswith("feature_"))

    def _summary_sections(self):
        s = self._state
        sections = [
            ("Schema", [("Number of examples", s["num_examples"]),
                        ("Number of sessions", s["num_sessions"]),
                        ("Number of classes", len(s["classes"])),
                        ("Number of feature columns", len(s["features"])),
                        ("Prediction window", s["prediction_window"])]),
            ("Training summary", [("Training accuracy", s.get("training_accuracy")),
                                  ("Training log loss", s.get("training_log_loss")),
                                  ("Validation accuracy", s.get("validation_accuracy")),
                                  ("Validation log loss", s.get("validation_log_loss")),
                                  ("Iterations", s.get("training_iterations")),
                                  ("Training time (sec)", s.get("training_time"))]),
        ]
        return sections

    # --- data -----------------------------------------------------------
    def _prepare(self, dataset, name="dataset", need_target=False):
        s = self._state
        V.check_dataframe(dataset, name)
        cols = [s["session_id"]] + s["features"] + ([s["target"]] if need_target else [])
        V.check_columns_exist(dataset, cols, "the model's columns", name)
        values = V.numeric_features(dataset, s["features"], name)
        sessions = _data.Sessions(dataset[s["session_id"]].to_numpy())
        values = (values[sessions.order] - np.asarray(s["feature_mean"], np.float32)) \
            / np.asarray(s["feature_std"], np.float32)
        return values, sessions

    def _window_probs(self, values, sessions):
        """Probabilities (n_chunks, 20, C) and the chunk table for sorted rows."""
        ch = _data.chunk(values, sessions, self._state["prediction_window"])
        nd = mx().nd
        out = []
        for i in range(0, len(ch["data"]), _PREDICT_BATCH):
            x = nd.array(ch["data"][i:i + _PREDICT_BATCH])
            h, c = _net.zero_states(x.shape[0])
            probs, _, _ = self._pred(x, h, c)
            out.append(probs.asnumpy())
        probs = np.concatenate(out) if out else np.zeros((0, WINDOWS_PER_CHUNK,
                                                          len(self._state["classes"])))
        return probs, ch

    def _per_row_probs(self, dataset, name="dataset"):
        values, sessions = self._prepare(dataset, name)
        probs, ch = self._window_probs(values, sessions)
        # Map each (session, window) to its chunk slot.
        n_windows = -(-sessions.lengths // self._state["prediction_window"])
        first_chunk = np.concatenate([[0], np.cumsum(-(-n_windows // WINDOWS_PER_CHUNK))[:-1]])
        srow, wrow = _data.window_of_rows(sessions, self._state["prediction_window"])
        chunk_id = first_chunk[srow] + wrow // WINDOWS_PER_CHUNK
        sorted_probs = probs[chunk_id, wrow % WINDOWS_PER_CHUNK]
        per_row = np.empty_like(sorted_probs)
        per_row[sessions.order] = sorted_probs
        return per_row, (probs, ch, sessions, n_windows)

    def _check_output_args(self, output_frequency, output_type=None, types=()):
        V.check_choice(output_frequency, "output_frequency", ("per_row", "per_window"))
        if output_type is not None:
            V.check_choice(output_type, "output_type", types)

    def _per_window_frame(self, dataset, probs_info):
        import pandas as pd
        probs, ch, sessions, n_windows = probs_info
        keep = ch["weights"] > 0
        flat = probs[keep]
        sess = np.repeat(ch["session"], WINDOWS_PER_CHUNK).reshape(keep.shape)[keep]
        frame = pd.DataFrame({"prediction_id": np.arange(len(flat)),
                              self._state["session_id"]: sessions.ids[sess]})
        return frame, flat

    # --- public API -------------------------------------------------------
    def predict(self, dataset, output_type="class", output_frequency="per_row"):
        """Predict the activity of each row (or of each window).

        Parameters
        ----------
        dataset : pandas.DataFrame
            Must hold the session column and every feature column. Rows of a
            session must be in time order; sessions need not be contiguous.
        output_type : {'class', 'probability_vector'}
        output_frequency : {'per_row', 'per_window'}
            ``'per_row'`` gives one prediction per input row (each row gets its
            window's prediction), aligned with ``dataset.index``.
            ``'per_window'`` gives one row per window with ``prediction_id`` and
            the session id.

        Returns
        -------
        pandas.Series (per_row) or pandas.DataFrame (per_window)

        Notes
        -----
        The LSTM state starts from zeros at the first window of each session and
        again every 20 windows (a chunk), exactly as in training. The Core ML
        export reproduces this when the app resets the state at the same points
        (see :meth:`export_coreml`).

        Examples
        --------
        >>> model.predict(data)                                  # doctest: +SKIP
        >>> model.predict(data, output_frequency='per_window')   # doctest: +SKIP
        """
        import pandas as pd
        self._check_output_args(output_frequency, output_type, ("class", "probability_vector"))
        per_row, info = self._per_row_probs(dataset)
        classes = np.asarray(self._state["classes"], dtype=object)
        if output_frequency == "per_row":
            if output_type == "class":
                return pd.Series(classes[per_row.argmax(axis=1)], index=dataset.index,
                                 name="class")
            return pd.Series(list(per_row), index=dataset.index, name="probability_vector")
        frame, flat = self._per_window_frame(dataset, info)
        if output_type == "class":
            frame["class"] = classes[flat.argmax(axis=1)]
        else:
            frame["probability_vector"] = list(flat)
        return frame

    def classify(self, dataset, output_frequency="per_row"):
        """Predicted class and its probability, per row or per window.

        Returns
        -------
        pandas.DataFrame with columns ``class`` and ``probability``
        (plus ``prediction_id`` and the session column per window).
        """
        import pandas as pd
        self._check_output_args(output_frequency)
        per_row, info = self._per_row_probs(dataset)
        classes = np.asarray(self._state["classes"], dtype=object)
        if output_frequency == "per_row":
            return pd.DataFrame({"class": classes[per_row.argmax(axis=1)],
                                 "probability": per_row.max(axis=1)}, index=dataset.index)
        frame, flat = self._per_window_frame(dataset, info)
        frame["class"] = classes[flat.argmax(axis=1)]
        frame["probability"] = flat.max(axis=1)
        return frame

    def predict_topk(self, dataset, output_type="probability", k=3, output_frequency="per_row"):
        """The ``k`` most likely classes of each row (or window).

        Returns
        -------
        pandas.DataFrame
            ``row_id`` (position of the input row; per window: ``prediction_id``
            and the session column), ``class``, and ``probability`` or ``rank``
            (0 for the most likely class), ``k`` rows per prediction, most
            likely first.
        """
        import pandas as pd
        self._check_output_args(output_frequency, output_type, ("probability", "rank"))
        k = V.check_int(k, "k", 1)
        k = min(k, len(self._state["classes"]))
        per_row, info = self._per_row_probs(dataset)
        if output_frequency == "per_row":
            probs, frame = per_row, pd.DataFrame({"row_id": np.arange(len(per_row))})
        else:
            frame, probs = self._per_window_frame(dataset, info)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        out = frame.loc[frame.index.repeat(k)].reset_index(drop=True)
        classes = np.asarray(self._state["classes"], dtype=object)
        out["class"] = classes[top.ravel()]
        if output_type == "probability":
            out["probability"] = np.take_along_axis(probs, top, axis=1).ravel()
        else:
            out["rank"] = np.tile(np.arange(k), len(probs))
        return out

    def evaluate(self, dataset, metric="auto"):
        """Evaluate per row against the target column.

        Parameters
        ----------
        dataset : pandas.DataFrame
            With the session, feature and target columns.
        metric : str or list of str
            ``'auto'`` (all) or any of accuracy, auc, precision, recall,
            f1_score, log_loss, confusion_matrix, roc_curve. Averages are macro
            over the model's classes.

        Returns
        -------
        EvaluationResult
            A dict of the metrics, plus ``unseen_labels`` ({label: row count}
            of labels never seen in training; they count as errors, with a
            warning). Its ``explore(path=None)`` writes an interactive HTML
            report (confusion matrix whose cells list the sessions and windows
            behind them, per-class precision and recall, per-session timelines
            of true and predicted labels over the sensor traces) and opens it
            in the browser when one can be shown.

        Examples
        --------
        >>> result = model.evaluate(test)                        # doctest: +SKIP
        >>> result['accuracy']                                   # doctest: +SKIP
        >>> result.explore('evaluation.html')                    # doctest: +SKIP
        """
        from .._explore import EvaluationResult, activity_report
        s = self._state
        V.check_dataframe(dataset)
        V.check_columns_exist(dataset, [s["target"]], "target")
        y = V.check_labels(dataset, s["target"])
        per_row, _ = self._per_row_probs(dataset)
        metrics = classifier_metrics(y, per_row, s["classes"], metric)
        # Copies taken now, so the report shows this evaluation even if the caller
        # changes the DataFrame before calling explore().
        sessions = dataset[s["session_id"]].to_numpy(copy=True)
        values = V.numeric_features(dataset, s["features"])
        predicted = np.asarray(s["classes"], dtype=object)[per_row.argmax(axis=1)]
        labels = np.array(y, dtype=object, copy=True)
        classes, features, window = list(s["classes"]), list(s["features"]), \
            s["prediction_window"]

        def report():
            return activity_report(sessions, labels, predicted, values, features, classes,
                                   window, title=f"Activity classifier: {s['target']}")
        return EvaluationResult(metrics, report)

    def fit(self, dataset, max_iterations=10, batch_size=None, verbose=True, random_seed=None):
        """Train this model further on ``dataset``, in place (a loaded model too).

        The stored classes and feature standardisation are kept, so labels must be
        among ``model.classes``. Training uses the same recipe as :func:`create`
        (random offsets, channel gains, weight averaging over the second half of
        the epochs) with a fresh optimizer; resuming an interrupted ``create``
        exactly is what checkpoints are for.

        Parameters
        ----------
        dataset : pandas.DataFrame
            With the session, feature and target columns.
        max_iterations : int, default 10
            Further epochs.
        batch_size : int, optional
            Chunks per step; default: the model's ``batch_size``.
        verbose : bool, default True
        random_seed : int, optional

        Returns
        -------
        ActivityClassifier
            ``self``, trained further.

        Examples
        --------
        >>> model = tc.load_model('exercise.model')                 # doctest: +SKIP
        >>> model.fit(more_data, max_iterations=20)                  # doctest: +SKIP
        """
        s = self._state
        max_iterations = V.check_int(max_iterations, "max_iterations", 1)
        batch_size = V.check_int(batch_size if batch_size is not None else s["batch_size"],
                                 "batch_size", 1)
        verbose = V.check_bool(verbose, "verbose")
        seed = V.check_seed(random_seed)
        V.check_dataframe(dataset)
        V.check_columns_exist(dataset, [s["target"]], "target")
        y = V.check_labels(dataset, s["target"])
        index = {c: i for i, c in enumerate(s["classes"])}
        labels = [V.norm_label(v) for v in y]
        unseen = sorted({str(v) for v in labels if v not in index})
        if unseen:
            raise DataError(
                f"Target column '{s['target']}' has labels the model was not trained on "
                f"({', '.join(unseen[:5])}); the model's classes are {s['classes']}. "
                "Train a new model with create() to add classes.")
        values, sessions = self._prepare(dataset)
        label_ids = np.array([index[v] for v in labels], np.int64)[sessions.order]
        rng = np.random.RandomState(seed)
        if seed is not None:
            mx().random.seed(seed)
        log = _train.fit(self, values, sessions, label_ids, np.ones(len(sessions), bool), None,
                         max_iterations, batch_size, rng, verbose,
                         first_iteration=int(s.get("training_iterations") or 0) + 1)
        s.update(log)
        return self

    def export_coreml(self, path):
        from ._export import export_coreml
        return export_coreml(self, path)

    # help(model.export_coreml) shows the app instructions (state, padding).
    export_coreml.__doc__ = _export.export_coreml.__doc__

    def export_onnx(self, path):
        from ._onnx_export import export_onnx
        return export_onnx(self, path)

    # help(model.export_onnx) shows the same instructions for ONNX runtimes.
    from ._onnx_export import export_onnx as _export_onnx_impl
    export_onnx.__doc__ = _export_onnx_impl.__doc__
    del _export_onnx_impl


def _check_state(state):
    """Refuse a stored state that cannot describe a model (a damaged or edited file)."""
    def bad(key, why):
        raise CorruptModelFileError(
            f"The activity classifier file's state field '{key}' {why}; the file is damaged "
            "or was edited.")
    if not isinstance(state, dict):
        bad("state", "is not an object")
    for key in ("features", "classes", "prediction_window", "feature_mean", "feature_std",
                "target", "session_id"):
        if key not in state:
            bad(key, "is missing")
    feats, classes = state["features"], state["classes"]
    if not (isinstance(feats, list) and feats and all(isinstance(f, str) for f in feats)):
        bad("features", "is not a non-empty list of column names")
    if not (isinstance(classes, list) and len(classes) >= 2 and all(
            isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes)):
        bad("classes", "is not a list of at least two labels")
    pw = state["prediction_window"]
    if not (isinstance(pw, int) and not isinstance(pw, bool) and 1 <= pw <= 400):
        bad("prediction_window", f"is {pw!r}, not an int in [1, 400]")
    for key in ("feature_mean", "feature_std"):
        v = state[key]
        if not (isinstance(v, list) and len(v) == len(feats)
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            bad(key, f"is not a list of {len(feats)} numbers")
    if any(not (x > 0) for x in state["feature_std"]):
        bad("feature_std", "has a value that is not positive")
    for key in ("target", "session_id"):
        if not isinstance(state[key], str):
            bad(key, "is not a column name")


def _check_weights_fit(state, weights):
    """Refuse settings that would build a network larger than the stored weights.

    Building the network allocates its first and last layers from
    ``features``, ``prediction_window`` and ``classes``; an edited file could
    otherwise make a 2 MB file allocate gigabytes before its weights are found
    not to fit. Smaller mismatches are left to ``set_weights``, which reports
    every difference at once.
    """
    nf, pw, nc = len(state["features"]), state["prediction_window"], len(state["classes"])
    implied = _net.CONV_FILTERS * nf * pw + (_net.DENSE_HIDDEN + 1) * nc
    stored = sum(int(np.size(w)) for w in weights.values())
    if implied > stored:
        raise WeightsMismatchError(
            f"The stored weights do not fit the activity classifier described by the file's "
            f"settings: {nf} features, prediction_window {pw} and {nc} classes need "
            f"{implied:,} parameters in the first and last layers alone, but the file stores "
            f"{stored:,} in all. The file is damaged or was edited.")


# --- create ---------------------------------------------------------------


def create(dataset, session_id, target, features=None, prediction_window=100,
           validation_set="auto", max_iterations=None, batch_size=32, verbose=True,
           random_seed=None, checkpoint_path=None, checkpoint_every=_checkpoint.DEFAULT_EVERY,
           resume_from=None):
    """Train an activity classifier on sensor time series.

    Parameters
    ----------
    dataset : pandas.DataFrame
        One row per sensor sample. Rows of a session keep their time order; a
        session's rows need not be contiguous.
    session_id : str
        Column naming the recording session of each row.
    target : str
        Column holding the activity label of each row (str or int).
    features : list of str, optional
        Numeric columns to use; ``None`` means every column but ``session_id``
        and ``target``.
    prediction_window : int, default 100
        Rows per prediction (window), in [1, 400].
    validation_set : 'auto', pandas.DataFrame or None
        ``'auto'`` holds out ~10% of sessions when there are at least 100
        sessions, otherwise trains without validation (and says so). The
        validation set is reported on, not used to pick weights.
    max_iterations : int, optional
        Epochs (passes over the training sessions). ``None`` (the default) picks
        enough epochs for about 720 optimizer steps, between 10 and 300: small
        data sets need many passes (on the watch data, 84 sessions, that is 180
        epochs, about 20 s on 2 cores); large ones few. Turi Create's fixed 10 left
        small data sets undertrained. The returned weights are the average of the
        weights after each epoch of the second half of training.
    batch_size : int, default 32
        Chunks of 20 windows per training step.
    verbose : bool, default True
        Print progress: a table with one row per iteration.
    random_seed : int, optional
        Seed for weight initialisation, validation split, shuffling,
        augmentation and dropout. ``None`` picks one (when resuming: the
        checkpoint's).
    checkpoint_path : str, optional
        Write a training checkpoint to this file (atomically, replacing the
        previous one) every ``checkpoint_every`` and after the last epoch. A
        checkpoint holds the current weights (``tc.load_model`` returns a
        usable model from it) plus what resuming needs: the optimizer's
        moments, the epoch, the running weight average, the random state, the
        settings and a fingerprint of the data. When resuming, the default is
        ``resume_from`` itself. In a cluster only the worker of rank 0 writes.
    checkpoint_every : int or str, default '60s'
        An int counts epochs (``1``: after every epoch); a string such as
        ``'30s'``, ``'10min'`` or ``'1h'`` is wall-clock time since the last
        checkpoint, checked after each epoch.
    resume_from : str, optional
        A checkpoint written by this function: training continues after its
        last completed epoch. With the same data and settings the result
        equals an uninterrupted run (up to float rounding; the tests kill a
        run with SIGKILL and check 1e-5). Rules: every setting (columns,
        prediction_window, max_iterations, batch_size, random_seed, validation
        set) must equal the checkpoint's, else
        :class:`~toolkit.errors.CheckpointMismatchError` names each difference;
        other data than the checkpoint's (its fingerprint differs) only warns
        and training continues on the new data with the checkpoint's feature
        standardisation.

    Returns
    -------
    ActivityClassifier

    Examples
    --------
    >>> import toolkit as tc
    >>> data = tc.datasets.watch_sessions()
    >>> train = data[data['subject'] <= 6].drop(columns='subject')
    >>> model = tc.activity_classifier.create(train, session_id='session_id',
    ...     target='exercise', max_iterations=2, verbose=False)     # doctest: +SKIP

    Checkpoint every 10 epochs; after a crash, the same call with
    ``resume_from`` continues where the last checkpoint stopped:

    >>> model = tc.activity_classifier.create(train, 'session_id', 'exercise',
    ...     checkpoint_path='run.ckpt', checkpoint_every=10)         # doctest: +SKIP
    >>> model = tc.activity_classifier.create(train, 'session_id', 'exercise',
    ...     resume_from='run.ckpt')                                  # doctest: +SKIP
    """
    import pandas as pd
    t_start = time.perf_counter()
    V.check_dataframe(dataset)
    V.check_column_name(session_id, "session_id")
    V.check_column_name(target, "target")
    V.check_columns_exist(dataset, [session_id], "session_id")
    V.check_columns_exist(dataset, [target], "target")
    if features is None:
        features = [c for c in dataset.columns if c not in (session_id, target)]
        if not features:
            raise DataError("The dataset has no feature columns besides "
                            f"'{session_id}' and '{target}'.")
    else:
        if isinstance(features, str) or not all(isinstance(f, str) for f in features):
            raise InvalidParameterError(
                f"'features' must be a list of column names (str), got {features!r}.")
        features = list(features)
        if not features:
            raise InvalidParameterError("'features' is an empty list; give at least one column.")
        if session_id in features or target in features:
            raise InvalidParameterError(
                "'features' must not contain the session or target column.")
    V.check_columns_exist(dataset, features, "features")
    prediction_window = V.check_int(prediction_window, "prediction_window", 1, 400)
    if max_iterations is not None:
        max_iterations = V.check_int(max_iterations, "max_iterations", 0)
    batch_size = V.check_int(batch_size, "batch_size", 1)
    verbose = V.check_bool(verbose, "verbose")
    random_seed = V.check_seed(random_seed)
    V.check_validation_set(validation_set)
    checkpoint_path, resume, random_seed = _checkpoint.start(
        ActivityClassifier._TASK, checkpoint_path, checkpoint_every, resume_from, random_seed)
    random_seed = V.check_seed(random_seed)      # a checkpoint's seed is checked too

    seed = random_seed if random_seed is not None else int(np.random.SeedSequence().entropy
                                                           % 2**32)
    rng = np.random.RandomState(seed)
    mx().random.seed(seed)

    say(f"Pre-processing {len(dataset)} samples...", verbose)
    y = V.check_labels(dataset, target)
    values = V.numeric_features(dataset, features)
    classes = V.encode_labels(y, target)
    if len(classes) < 2:
        raise DataError(f"Target column '{target}' has only one class ({classes[0]!r}); "
                        "a classifier needs at least two.")
    class_index = {c: i for i, c in enumerate(classes)}
    label_ids = np.array([class_index[V.norm_label(v)] for v in y], dtype=np.int64)
    sessions = _data.Sessions(dataset[session_id].to_numpy())
    values, label_ids = values[sessions.order], label_ids[sessions.order]
    data_fingerprint = None
    if checkpoint_path is not None or resume is not None:
        data_fingerprint = _checkpoint.fingerprint(values, sessions.lengths, label_ids, classes)
    say(f"Using sequences of size {prediction_window * WINDOWS_PER_CHUNK} for model creation.",
        verbose)

    train_mask = np.ones(len(sessions), bool)
    valid = None
    if isinstance(validation_set, str):
        if len(sessions) >= MIN_SESSIONS_FOR_AUTO_VALIDATION:
            n_valid = max(1, int(round(0.1 * len(sessions))))
            train_mask[rng.choice(len(sessions), n_valid, replace=False)] = False
            say(f"Holding out {n_valid} of {len(sessions)} sessions for validation.", verbose)
        else:
            say(f"The dataset has {len(sessions)} sessions, fewer than the "
                f"{MIN_SESSIONS_FOR_AUTO_VALIDATION} needed for an automatic validation split; "
                "continuing without a validation set.", verbose)
    mean = values[np.repeat(train_mask, sessions.lengths)].astype(np.float64).mean(axis=0)
    std = values[np.repeat(train_mask, sessions.lengths)].astype(np.float64).std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    if resume is not None and "feature_mean" in resume.state:
        # The checkpoint's weights were trained on its standardisation.
        mean = np.asarray(resume.state["feature_mean"], np.float64)
        std = np.asarray(resume.state["feature_std"], np.float64)
    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
    values = (values - mean32) / std32

    if isinstance(validation_set, pd.DataFrame):
        valid = _prepare_validation(validation_set, session_id, target, features, class_index,
                                    mean32, std32, prediction_window)
    elif isinstance(validation_set, str) and not train_mask.all():
        valid = _data.chunk(values, sessions, prediction_window, label_ids, len(classes),
                            session_mask=~train_mask)
    say(f"Processed a total of {int(train_mask.sum())} sessions.", verbose)

    state = {
        "target": target, "session_id": session_id, "features": features,
        "classes": classes, "prediction_window": prediction_window,
        "feature_mean": mean.tolist(), "feature_std": std.tolist(),
        "max_iterations": max_iterations, "batch_size": batch_size, "random_seed": seed,
        "num_examples": int(len(dataset)), "num_sessions": int(len(sessions)),
        "num_classes": len(classes), "num_features": len(features),
    }
    if max_iterations is None:
        train_windows = -(-sessions.lengths[train_mask] // prediction_window)
        max_iterations = _train.auto_iterations(
            int((-(-train_windows // WINDOWS_PER_CHUNK)).sum()), batch_size)
        say(f"Setting 'max_iterations' to {max_iterations} (about {_train.TARGET_STEPS} "
            "training steps).", verbose)
    state["max_iterations"] = max_iterations
    run_config = {
        "session_id": session_id, "target": target, "features": features,
        "classes": classes, "prediction_window": prediction_window,
        "max_iterations": max_iterations, "batch_size": batch_size, "random_seed": seed,
        "validation_set": _validation_config(validation_set, valid),
    }
    if resume is not None:
        resume.check_compatible(run_config, data_fingerprint)
        model = ActivityClassifier(state, resume.weights)
    else:
        model = ActivityClassifier(state)
    checkpoint = None
    if checkpoint_path is not None:
        checkpoint = {"schedule": _checkpoint.Schedule(checkpoint_path, checkpoint_every,
                                                       config.is_writer()),
                      "config": run_config, "fingerprint": data_fingerprint}
    log = _train.fit(model, values, sessions, label_ids, train_mask, valid, max_iterations,
                     batch_size, rng, verbose, checkpoint=checkpoint, resume=resume)
    model._state.update(log)
    model._state["training_time"] = round(time.perf_counter() - t_start, 3)
    say("Training complete", verbose)
    say(f"Total Time Spent: {model._state['training_time']:.1f}s", verbose)
    return model



def _validation_config(validation_set, valid):
    """How validation was chosen, for comparing a resumed run's settings."""
    if validation_set is None or isinstance(validation_set, str):
        return validation_set
    if valid is None:
        return "dataframe (no usable rows)"
    return "dataframe " + _checkpoint.fingerprint(valid["data"], valid["labels"])[:16]


def _prepare_validation(frame, session_id, target, features, class_index, mean, std, pw):
    name = "validation_set"
    V.check_dataframe(frame, name)
    V.check_columns_exist(frame, [session_id, target] + features, "validation_set", name)
    y = V.check_labels(frame, target, name)
    known = np.array([V.norm_label(v) in class_index for v in y], bool)
    if not known.all():
        unseen = sorted({str(v) for v in y[~known]})
        warnings.warn(f"validation_set: {int((~known).sum())} row(s) with labels not in the "
                      f"training data ({', '.join(unseen[:5])}) are left out.", ToolkitWarning,
                      stacklevel=3)
        frame = frame[known]
        y = y[known]
        if len(frame) == 0:
            return None
    values = V.numeric_features(frame, features, name)
    ids = np.array([class_index[V.norm_label(v)] for v in y], np.int64)
    sessions = _data.Sessions(frame[session_id].to_numpy())
    values = (values[sessions.order] - mean) / std
    return _data.chunk(values, sessions, pw, ids[sessions.order], len(class_index))


