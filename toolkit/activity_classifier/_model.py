"""ActivityClassifier: create, predict, evaluate, save/load.

File versions of the ``activity_classifier`` task (bump on any change of the
stored state or weights, and add a migration to ``_MIGRATIONS``):

1. First release: core weights under structural names, per-feature
   standardisation (``feature_mean``/``feature_std``) in the state.
2. Turi Create's fields: ``verbose``, ``use_data_augmentation``,
   ``num_validation_sessions``/``num_validation_examples``, and per-row metrics of
   the final model on the training (and validation) rows: ``training_accuracy``,
   ``training_log_loss``, ``training_auc``, ``training_precision``,
   ``training_recall``, ``training_f1_score``, ``training_confusion_matrix``,
   ``training_roc_curve`` (frames stored as ``{column: [values]}``) and their
   ``validation_*`` twins. ``num_sessions``/``num_examples`` count the training
   data only (version 1 counted held-out validation sessions too); ``progress``
   (the training table's rows, ``{column: [values]}``, shown as a DataFrame;
   absent in files written before it, which read as None). Weights unchanged.
   See :func:`_v1_to_v2_state` for what version-1 files get.
"""

import time

import numpy as np

from .. import _checkpoint, config
from .. import _validate as V
from .._metrics import classifier_metrics, report_by_class
from .._model import Model, VersionStep, task_method
from .._mx import get_weights, mx, set_weights
from .._progress import say
from ..errors import DataError, WeightsMismatchError
from . import _data, _export, _net, _onnx_export, _train
from ._data import WINDOWS_PER_CHUNK

FILE_VERSION = 2
_PREDICT_BATCH = 256
#: Scalar metrics stored per prefix ('training_', 'validation_'), besides the frames.
_SCALAR_METRICS = ("accuracy", "log_loss", "auc", "precision", "recall", "f1_score")
_FRAME_METRICS = ("confusion_matrix", "roc_curve")
#: The stored ROC curve keeps at most this many points per class (an exact subset of
#: evaluate()'s curve: the first, the last and evenly spaced ones between), so that a
#: model of a large data set keeps a small file.
ROC_POINTS_PER_CLASS = 1000


class ActivityClassifier(Model):
    """A trained activity classifier. Create one with :func:`create`.

    Fields (``model.name``, ``model['name']``, ``model.get('name')``; all listed
    by ``model._list_fields()``): ``classes``, ``features``, ``session_id``,
    ``target``, ``prediction_window``, ``num_classes``, ``num_features``,
    ``num_examples`` and ``num_sessions`` (training data only),
    ``num_validation_examples``, ``num_validation_sessions``, ``training_time``,
    ``training_iterations``, ``max_iterations``, ``batch_size``, ``random_seed``,
    ``verbose``, ``use_data_augmentation`` (always True here: training cuts windows
    at random offsets and scales channels; Turi Create's default was False), and
    the per-row metrics of the final model on the training rows:
    ``training_accuracy``, ``training_log_loss``, ``training_auc``,
    ``training_precision``, ``training_recall``, ``training_f1_score``,
    ``training_confusion_matrix``, ``training_roc_curve`` (at most
    ``ROC_POINTS_PER_CLASS`` points per class), ``training_report_by_class``;
    with a validation set, the same ``validation_*`` fields on its rows.
    ``feature_mean`` and ``feature_std`` (the standardisation) are readable
    but not listed.

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
    # {v: f}: f turns a version-v file into version v + 1.
    _MIGRATIONS = {}   # filled below the class
    _PRIVATE_STATE = ("feature_mean", "feature_std")

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
        # Memory planned once per input shape: the network took 0.89-0.97x the time,
        # measured side by side on the watch data, and was no slower when successive
        # calls alternate between two batch sizes.
        self._pred.hybridize(static_alloc=True, static_shape=True)
        self._graphs.hybridize()

    def _get_state(self):
        return dict(self._state), get_weights(self._core)

    @classmethod
    def _from_state(cls, state, weights):
        _check_state(state)
        _check_weights_fit(state, weights)
        return cls(state, weights)

    # --- fields ---------------------------------------------------------
    def _fields(self):
        fields = super()._fields()
        # Turi Create lists validation_* only when a validation set was used.
        used = fields.get("validation_accuracy") is not None
        for prefix in ("training_", "validation_"):
            for name in _SCALAR_METRICS + _FRAME_METRICS:
                key = prefix + name
                if prefix == "validation_" and not used:
                    fields.pop(key, None)
                    continue
                if name in _FRAME_METRICS:
                    fields[key] = self._decoded(key, name)
                else:
                    fields.setdefault(key, None)
            if prefix == "training_" or used:
                fields[prefix + "report_by_class"] = self._decoded(prefix + "confusion_matrix",
                                                                   "report_by_class")
        fields["progress"] = self._progress()
        return fields

    def _progress(self):
        """The training table's rows as a DataFrame (None in files that predate it)."""
        import pandas as pd
        rows = self._state.get("progress")
        if rows is None:
            return None
        # JSON sorts the keys: the table's own column order first.
        order = [c for c in _train.PROGRESS_COLUMNS if c in rows]
        return pd.DataFrame(rows)[order + sorted(set(rows) - set(order))]

    def _decoded(self, key, name):
        """The DataFrame of a stored metrics table (a fresh copy; None if not stored).

        Decoded once per stored object: every attribute lookup builds the field dict.
        """
        data = self._state.get(key)
        if data is None:
            return None
        cache = self.__dict__.setdefault("_frames", {})
        hit = cache.get((key, name))
        if hit is None or hit[0] is not data:
            frame = _frame_from_json(data, "confusion_matrix" if name == "report_by_class"
                                     else name)
            if name == "report_by_class":
                frame = report_by_class(frame)
            hit = cache[(key, name)] = (data, frame)
        return hit[1].copy()

    def _summary_sections(self):
        s = self._state
        sections = [
            ("Schema", [("Number of examples", s["num_examples"]),
                        ("Number of sessions", s["num_sessions"]),
                        ("Number of validation examples", s.get("num_validation_examples")),
                        ("Number of validation sessions", s.get("num_validation_sessions")),
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
    def _reader(self, dataset, name="dataset", need_target=False):
        """A :class:`_data.FeatureReader` of the features (standardised on demand), and
        the Sessions."""
        s = self._state
        V.check_dataframe(dataset, name)
        cols = [s["session_id"]] + s["features"] + ([s["target"]] if need_target else [])
        V.check_columns_exist(dataset, cols, "the model's columns", name)
        reader = _data.FeatureReader(dataset, s["features"], s["feature_mean"],
                                     s["feature_std"], name)
        try:
            ids = V.check_session_ids(dataset, s["session_id"], name)
        except DataError:
            # The features' values are read later, batch by batch; their errors came
            # first when all were read up front, and still do.
            V.numeric_features(dataset, s["features"], name)
            raise
        return reader, _data.Sessions(ids)

    def _read(self, dataset, name="dataset", need_target=False):
        """Standardised float32 features in input row order, and the Sessions."""
        reader, sessions = self._reader(dataset, name, need_target)
        return reader.read(), sessions

    def _prepare(self, dataset, name="dataset", need_target=False):
        """Standardised float32 features in ``sessions`` order, and the Sessions."""
        values, sessions = self._read(dataset, name, need_target)
        if not sessions.grouped:
            values = values[sessions.order]
        return values, sessions

    def _network(self, data):
        """The prediction network's probabilities (n_chunks, 20, C) of chunk data."""
        return self._run_batches(len(data), lambda start, stop: data[start:stop])

    def _run_batches(self, n_chunks, make):
        """The prediction network's probabilities (n_chunks, 20, C) of the chunks that
        ``make(start, stop)`` gives, ``_PREDICT_BATCH`` at a time.

        mxnet computes on its own worker thread and ``asnumpy`` waits for it; each
        batch is made and queued before the previous one's result is read, so the
        host prepares batch i + 1 while the network runs batch i. At most two
        batches' chunks are alive at a time. (A small first batch, to start the
        network early on inputs of one batch, was measured: no faster on this
        2-core machine under load, up to 1.15x slower, so the cut stays at
        ``_PREDICT_BATCH``.)
        """
        if n_chunks == 0:
            return np.zeros((0, WINDOWS_PER_CHUNK, len(self._state["classes"])))
        nd = mx().nd
        out = pending = None
        for start in range(0, n_chunks, _PREDICT_BATCH):
            stop = min(start + _PREDICT_BATCH, n_chunks)
            # Zero-copy: mxnet reads the chunks in place (and marks them read-only).
            x = nd.from_numpy(np.ascontiguousarray(make(start, stop), np.float32))
            h, c = self._zero_states(stop - start)
            probs, _, _ = self._pred(x, h, c)
            if pending is not None:
                if out is None:
                    out = np.empty((n_chunks,) + probs.shape[1:], np.float32)
                out[pending[0]:pending[1]] = pending[2].asnumpy()
            pending = (start, stop, probs)
        if out is None:
            return pending[2].asnumpy()
        out[pending[0]:pending[1]] = pending[2].asnumpy()
        return out

    def _zero_states(self, batch):
        """The LSTM's zero start states for ``batch`` chunks, made once per size.

        The network only reads them, so every call can share them; making them
        (two mxnet calls) took about 2% of a ``predict`` call on the watch data.
        """
        cache = self.__dict__.setdefault("_zeros", {})
        states = cache.get(batch)
        if states is None:
            if len(cache) >= 4:         # the full batch and a few last partial ones
                cache.clear()
            states = cache[batch] = _net.zero_states(batch)
        return states

    def _input_probs(self, dataset, name="dataset"):
        """``(probabilities (n_chunks, 20, C), chunk table, Sessions)`` of a DataFrame.

        Each batch's rows are read, standardised and written straight into its
        chunks (no sorted copy of the features) while the network runs the batch
        before; :meth:`_to_rows` maps per-window results back to the input rows.
        """
        reader, sessions = self._reader(dataset, name)
        plan = _data.ChunkPlan(sessions, self._state["prediction_window"])
        probs = self._run_batches(plan.n_chunks,
                                  lambda start, stop: plan.fill(reader.read, start, stop))
        return probs, plan.table, sessions

    def _to_rows(self, window_values, ch, sessions):
        """Each input row's entry of a per-window array (``probs.reshape(-1, C)`` order)."""
        return _data.to_rows(window_values, ch, sessions, self._state["prediction_window"])

    def _per_row_probs(self, dataset, name="dataset"):
        probs, ch, sessions = self._input_probs(dataset, name)
        per_row = self._to_rows(probs.reshape(-1, probs.shape[2]), ch, sessions)
        return per_row, (probs, ch, sessions)

    def _check_output_args(self, output_frequency, output_type=None, types=()):
        V.check_choice(output_frequency, "output_frequency", ("per_row", "per_window"))
        if output_type is not None:
            V.check_choice(output_type, "output_type", types)

    def _per_window_frame(self, dataset, probs_info):
        import pandas as pd
        probs, ch, sessions = probs_info
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
        probs, ch, sessions = self._input_probs(dataset)
        classes = np.asarray(self._state["classes"], dtype=object)
        if output_frequency == "per_row":
            if output_type == "class":
                # argmax and the class once per window, then spread to the rows.
                labels = classes[probs.argmax(axis=2).reshape(-1)]
                # dtype given: pandas would otherwise scan every object for dates.
                return pd.Series(self._to_rows(labels, ch, sessions), index=dataset.index,
                                 name="class", dtype=object)
            per_row = self._to_rows(probs.reshape(-1, probs.shape[2]), ch, sessions)
            return pd.Series(list(per_row), index=dataset.index, name="probability_vector")
        frame, flat = self._per_window_frame(dataset, (probs, ch, sessions))
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
            f1_score, log_loss, confusion_matrix, roc_curve; ``'report'`` (Turi
            Create 6) adds report_by_class (per class: actual_count,
            predicted_correctly, predicted_this_incorrectly,
            missed_predicting_this, precision, recall). Averages are macro over
            the model's classes.

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
        y = V.normalised_labels(V.check_labels(dataset, s["target"], allow_bool=True))
        windows = _Windows.of_input(self, self._input_probs(dataset))
        metrics = windows.metrics(None, y, metric)
        # Copies taken now, so the report shows this evaluation even if the caller
        # changes the DataFrame before calling explore().
        sessions = dataset[s["session_id"]].to_numpy(copy=True)
        values = V.numeric_features(dataset, s["features"])
        predicted = windows.predicted()
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
            ``None`` picks one; in a cluster every worker uses rank 0's.

        Returns
        -------
        ActivityClassifier
            ``self``, trained further. Its ``training_*`` fields, ``num_examples``
            and ``num_sessions`` then describe ``dataset``, and the
            ``validation_*`` fields are dropped (they described an earlier model).

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
        y = V.check_labels(dataset, s["target"], allow_bool=True)
        ids = V.label_positions(y, s["classes"])
        unseen = sorted({str(v) for v in V.normalised_labels(y[ids < 0])})
        if unseen:
            raise DataError(
                f"Target column '{s['target']}' has labels the model was not trained on "
                f"({', '.join(unseen[:5])}); the model's classes are {s['classes']}. "
                "Train a new model with create() to add classes.")
        values, sessions = self._prepare(dataset)
        label_ids = ids[sessions.order]
        seed = config.shared_seed(seed)       # the same on every worker of a cluster
        rng = np.random.RandomState(seed)
        mx().random.seed(seed)
        log = _train.fit(self, values, sessions, label_ids, np.ones(len(sessions), bool), None,
                         max_iterations, batch_size, rng, verbose,
                         first_iteration=int(s.get("training_iterations") or 0) + 1)
        s.update(log)
        # The training_* fields describe the latest training data; the validation set
        # of create() played no part in this training, so its fields go.
        s.update(_Windows.of_rows(self, values, sessions).metric_state(
            "training_", label_ids, np.ones(len(sessions), bool)))
        for name in _SCALAR_METRICS + _FRAME_METRICS:
            s["validation_" + name] = None
        s.update(num_examples=int(len(dataset)), num_sessions=int(len(sessions)),
                 num_validation_examples=0, num_validation_sessions=0)
        return self

    export_coreml = task_method(_export.export_coreml)
    export_onnx = task_method(_onnx_export.export_onnx)


def _check_state(state):
    """Refuse a stored state that cannot describe a model (a damaged or edited file)."""
    check = V.StateCheck(state, "activity classifier")
    check.require("features", "classes", "prediction_window", "feature_mean", "feature_std",
                  "target", "session_id")
    feats = state["features"]
    if not (isinstance(feats, list) and feats and all(isinstance(f, str) for f in feats)):
        check.bad("features", "is not a non-empty list of column names")
    check.classes(minimum=2, allow_bool=True).column_names("target", "session_id")
    pw = state["prediction_window"]
    if not (isinstance(pw, int) and not isinstance(pw, bool) and 1 <= pw <= 400):
        check.bad("prediction_window", f"is {pw!r}, not an int in [1, 400]")
    for key in ("feature_mean", "feature_std"):
        v = state[key]
        if not (isinstance(v, list) and len(v) == len(feats)
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            check.bad(key, f"is not a list of {len(feats)} numbers")
    if any(not (x > 0) for x in state["feature_std"]):
        check.bad("feature_std", "has a value that is not positive")
    for prefix in ("training_", "validation_"):
        for name, cols in _FRAME_COLUMNS.items():
            v = state.get(prefix + name)
            if v is None:
                continue
            if not (isinstance(v, dict) and set(v) == set(cols)
                    and all(isinstance(v[c], list) for c in cols)
                    and len({len(v[c]) for c in cols}) == 1):
                check.bad(prefix + name, f"is not a table with columns {list(cols)}")


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
        Column holding the activity label of each row: str or int (floats
        with integer values count as ints), or bool (then ``model.classes``
        is ``[False, True]`` and predictions are booleans, as in
        scikit-learn; Core ML and ONNX exports label them ``'False'`` and
        ``'True'``). Labels of mixed kinds, lists and other values are
        refused.
    features : list of str, optional
        Numeric (real) columns to use, each once; ``None`` means every column
        but ``session_id`` and ``target`` (their names must then be str).
        Session ids must be present (no NaN/None) and of one kind (all str or
        all int, ...): ``0``, ``0.0`` and ``False`` are equal in Python and
        would merge sessions, so such a column is refused.
    prediction_window : int, default 100
        Rows per prediction (window), in [1, 400].
    validation_set : 'auto', pandas.DataFrame or None
        ``'auto'`` holds out ~10% of sessions when there are at least 100
        sessions, otherwise trains without validation (and says so). The
        validation set is reported on, not used to pick weights.
    max_iterations : int, optional
        Epochs (passes over the training sessions). ``None`` (the default) or
        ``0`` (Turi Create's "automatic", as in every task here) picks
        enough epochs for about 720 optimizer steps, between 10 and 300: small
        data sets need many passes (on the watch data, 84 sessions, that is 180
        epochs, about 20 s on 2 cores); large ones few. Turi Create's fixed 10 left
        small data sets undertrained. The returned weights are the average of the
        weights after each epoch of the second half of training. When resuming,
        automatic means the checkpoint's value.
    batch_size : int, default 32
        Chunks of 20 windows per training step.
    verbose : bool, default True
        Print progress: a table with one row per iteration.
    random_seed : int, optional
        Seed for weight initialisation, validation split, shuffling,
        augmentation and dropout. ``None`` picks one (when resuming: the
        checkpoint's); in a cluster rank 0 picks it and every worker uses that
        one (``model.random_seed`` tells which).
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
    t_start = time.perf_counter()
    settings = _data.check_arguments(dataset, session_id, target, features, prediction_window,
                                     validation_set, max_iterations, batch_size, verbose,
                                     random_seed)
    checkpoint_path, resume, random_seed = _checkpoint.start(
        ActivityClassifier._TASK, checkpoint_path, checkpoint_every, resume_from,
        settings.random_seed)
    # Before any data step: in a cluster every worker must split, shuffle and
    # augment alike, so all of them take rank 0's seed (a checkpoint's is checked too).
    seed = config.shared_seed(V.check_seed(random_seed))
    rng = np.random.RandomState(seed)
    mx().random.seed(seed)
    data = _data.prepare(dataset, settings, rng, resume,
                         fingerprint=checkpoint_path is not None or resume is not None)
    settings = settings._replace(random_seed=seed,
                                 max_iterations=_resolve_iterations(settings, data, resume))
    run_config = _run_config(settings, data)
    if resume is not None:
        resume.check_compatible(run_config, data.fingerprint)
    model = ActivityClassifier(_initial_state(settings, data),
                               resume.weights if resume is not None else None)
    checkpoint = None
    if checkpoint_path is not None:
        checkpoint = {"schedule": _checkpoint.Schedule(checkpoint_path, checkpoint_every,
                                                       config.is_writer()),
                      "config": run_config, "fingerprint": data.fingerprint}
    log = _train.fit(model, data.values, data.sessions, data.label_ids, data.train_mask,
                     data.valid, settings.max_iterations, settings.batch_size, rng,
                     settings.verbose, checkpoint=checkpoint, resume=resume)
    model._state.update(log)
    model._state.update(_recorded_metrics(model, data, settings.target))
    model._state["training_time"] = round(time.perf_counter() - t_start, 3)
    say("Training complete", settings.verbose)
    say(f"Total Time Spent: {model._state['training_time']:.1f}s", settings.verbose)
    return model


def _resolve_iterations(settings, data, resume):
    """``max_iterations``, an automatic one resolved."""
    if settings.max_iterations is not None:
        return settings.max_iterations
    if resume is not None and resume.setting("max_iterations") is not None:
        # 'Automatic' resumes with the checkpoint's choice: recomputing it could
        # give another number (other data) and refuse a resume the user did not
        # constrain.
        return resume.setting("max_iterations")
    iterations = _train.auto_iterations(data.num_train_chunks, settings.batch_size)
    say(f"Setting 'max_iterations' to {iterations} (about {_train.TARGET_STEPS} "
        "training steps).", settings.verbose)
    return iterations


def _initial_state(settings, data):
    """The new model's state, but for what training adds."""
    train, lengths = data.train_mask, data.sessions.lengths
    state = {
        "target": settings.target, "session_id": settings.session_id,
        "features": settings.features, "classes": data.classes,
        "prediction_window": settings.prediction_window,
        "feature_mean": data.mean.tolist(), "feature_std": data.std.tolist(),
        "max_iterations": settings.max_iterations, "batch_size": settings.batch_size,
        "random_seed": settings.random_seed,
        # Training data only, as Turi Create counts it; validation has its own fields.
        "num_examples": int(lengths[train].sum()), "num_sessions": int(train.sum()),
        "num_validation_examples": 0, "num_validation_sessions": 0,
        "num_classes": len(data.classes), "num_features": len(settings.features),
        "verbose": settings.verbose, "use_data_augmentation": True,
    }
    if data.valid_frame is not None:
        state.update(num_validation_examples=int(len(data.valid_frame)),
                     num_validation_sessions=int(
                         data.valid_frame[settings.session_id].nunique()))
    elif data.valid is not None:
        state.update(num_validation_examples=int(lengths[~train].sum()),
                     num_validation_sessions=int((~train).sum()))
    return state


def _run_config(settings, data):
    """The settings a resumed run must share with its checkpoint."""
    return {
        "session_id": settings.session_id, "target": settings.target,
        "features": settings.features, "classes": data.classes,
        "prediction_window": settings.prediction_window,
        "max_iterations": settings.max_iterations, "batch_size": settings.batch_size,
        "random_seed": settings.random_seed,
        "validation_set": _data.validation_config(settings.validation_set, data.valid),
    }


def _recorded_metrics(model, data, target):
    """Turi Create's training_* / validation_* fields: evaluate() of the final model on
    the training rows and the validation rows (per row, as evaluate() does)."""
    windows = _Windows.of_rows(model, data.values, data.sessions)
    out = windows.metric_state("training_", data.label_ids, data.train_mask)
    if data.valid_frame is not None:
        y = V.normalised_labels(data.valid_frame[target].to_numpy())
        out.update(_Windows.of_input(model, model._input_probs(
            data.valid_frame, "validation_set")).metrics("validation_", y))
    elif data.valid is not None:
        out.update(windows.metric_state("validation_", data.label_ids, ~data.train_mask))
    return out


# --- metrics fields ---------------------------------------------------------------


class _Windows:
    """Per-window probabilities and each row's window, for per-row metrics.

    Every row of a window has the window's probabilities, so the per-row
    metrics are those of the runs of consecutive rows that share a window and
    a label, weighted by the runs' lengths (``classifier_metrics``' ``counts``):
    the same values from about ``prediction_window`` times fewer entries.
    """

    def __init__(self, model, probs, row_windows, session_lengths=None):
        self.classes = model._state["classes"]
        self.probs = probs.reshape(-1, probs.shape[-1])      # (windows, C)
        self.row_windows = row_windows                        # each row's window
        self.session_lengths = session_lengths                # rows in sessions order

    @classmethod
    def of_input(cls, model, probs_info):
        """Windows of ``_input_probs``' result (rows in input order)."""
        probs, ch, sessions = probs_info
        return cls(model, probs, model._to_rows(np.arange(probs.shape[0] * probs.shape[1]),
                                                ch, sessions))

    @classmethod
    def of_rows(cls, model, values, sessions):
        """Windows of standardised ``values`` in ``sessions`` order (rows in that order)."""
        pw = model._state["prediction_window"]
        probs = model._network(_data.chunk(values, sessions, pw)["data"])
        windows = _data.sorted_slots(sessions, pw)
        windows //= pw
        return cls(model, probs, windows, sessions.lengths)

    def predicted(self):
        """Each row's predicted class."""
        classes = np.asarray(self.classes, dtype=object)
        return classes[self.probs.argmax(axis=1)][self.row_windows]

    def metrics(self, prefix, y, metric="auto"):
        """``classifier_metrics`` of the rows' labels ``y`` as state entries (``prefix``
        given) or, with ``prefix=None``, as it returns them."""
        codes, uniques = V.factorize(y)
        return self._of_codes(prefix, codes, uniques, metric, self.row_windows)

    def metric_state(self, prefix, label_ids, session_mask):
        """State entries of the rows of the sessions in ``session_mask`` (rows in
        sessions order, ``label_ids`` their classes' positions)."""
        windows = self.row_windows
        if not session_mask.all():
            rows = np.repeat(session_mask, self.session_lengths)
            windows, label_ids = windows[rows], label_ids[rows]
        return self._of_codes(prefix, label_ids, self.classes, "auto", windows)

    def _of_codes(self, prefix, codes, uniques, metric, windows):
        starts, counts = _runs(windows, codes)
        m = classifier_metrics(np.asarray(uniques, dtype=object)[codes[starts]],
                               self.probs[windows[starts]], self.classes, metric, counts)
        return m if prefix is None else _state_entries(prefix, m)


def _runs(*keys):
    """``(starts, lengths)`` of the runs of consecutive equal entries of ``keys``."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    change = np.zeros(n, bool)
    change[0] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(change)
    return starts, np.diff(np.append(starts, n))


def _state_entries(prefix, m):
    out = {prefix + name: (float(m[name]) if np.isfinite(m[name]) else None)
           for name in _SCALAR_METRICS}
    out[prefix + "confusion_matrix"] = _frame_to_json(m["confusion_matrix"])
    out[prefix + "roc_curve"] = _frame_to_json(_thin_roc(m["roc_curve"]))
    return out


def _thin_roc(roc):
    """At most ROC_POINTS_PER_CLASS rows per class: the first, the last, evenly spaced."""
    parts = []
    for _, part in roc.groupby("class", sort=False):
        if len(part) > ROC_POINTS_PER_CLASS:
            keep = np.unique(np.round(np.linspace(0, len(part) - 1,
                                                  ROC_POINTS_PER_CLASS)).astype(int))
            part = part.iloc[keep]
        parts.append(part)
    if not parts:
        return roc
    import pandas as pd
    return pd.concat(parts, ignore_index=True)


_FRAME_COLUMNS = {"confusion_matrix": ("target_label", "predicted_label", "count"),
                  "roc_curve": ("class", "threshold", "fpr", "tpr", "p", "n")}
_INT_COLUMNS = ("count", "p", "n")


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None     # JSON has no inf/NaN: only ROC's first threshold (inf) is affected
    return v


def _frame_to_json(frame):
    """A metrics DataFrame as ``{column: [values]}`` for the JSON state."""
    return {c: [_plain(v) for v in frame[c].tolist()] for c in frame.columns}


def _frame_from_json(data, name):
    """The DataFrame stored by _frame_to_json (None stays None)."""
    if data is None:
        return None
    import pandas as pd
    frame = pd.DataFrame({c: data[c] for c in _FRAME_COLUMNS[name]})
    for c in _INT_COLUMNS:
        if c in frame:
            frame[c] = frame[c].astype(np.int64)
    if name == "roc_curve":
        # Thresholds are float32 probabilities, as evaluate() gives them (stored exactly).
        frame["threshold"] = frame["threshold"].astype(float).fillna(np.inf).astype(np.float32)
        for c in ("fpr", "tpr"):
            frame[c] = frame[c].astype(float)
    return frame


# --- file versions ----------------------------------------------------------------


def _v1_to_v2_state(state):
    """A version-1 file gets: ``verbose`` True (create()'s default; v1 did not record it),
    ``use_data_augmentation`` True (v1 training augmented too), the new metrics None
    (not recorded; v1's ``training_accuracy``/``training_log_loss`` were per window
    and are kept), and validation counts 0 when it had no validation set, else None
    (unknown: v1's num_sessions/num_examples then included the validation sessions).
    """
    state.setdefault("verbose", True)
    state.setdefault("use_data_augmentation", True)
    had_validation = state.get("validation_accuracy") is not None
    for key in ("num_validation_examples", "num_validation_sessions"):
        state.setdefault(key, None if had_validation else 0)
    for name in _SCALAR_METRICS + _FRAME_METRICS:
        state.setdefault("training_" + name, None)
        state.setdefault("validation_" + name, None)
    return state


ActivityClassifier._MIGRATIONS = {
    1: VersionStep(state=_v1_to_v2_state, doc=(
        "Version 2 adds Turi Create's fields (verbose, use_data_augmentation, validation "
        "counts, per-row training/validation metrics); num_sessions/num_examples count "
        "training data only.")),
}


