"""ActivityClassifier: create, predict, evaluate, save/load.

File versions of the ``activity_classifier`` task (bump on any change of the
stored state or weights, and add a migration to ``_MIGRATIONS``):

1. First release: core weights under structural names, per-feature
   standardisation (``feature_mean``/``feature_std``) in the state.
"""

import time
import warnings

import numpy as np

from .. import _validate as V
from .._metrics import ToolkitWarning, classifier_metrics
from .._model import Model
from .._mx import get_weights, mx, set_weights
from .._progress import ProgressTable, say
from ..errors import CorruptModelFileError, DataError, InvalidParameterError
from . import _data, _net
from ._data import WINDOWS_PER_CHUNK

FILE_VERSION = 1
MIN_SESSIONS_FOR_AUTO_VALIDATION = 50
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
        self._core = self._pred = self._loss = None
        self._build(weights)

    # --- networks -------------------------------------------------------
    def _build(self, weights):
        s = self._state
        self._core, self._pred, self._loss = _net.build(
            len(s["features"]), len(s["classes"]), s["prediction_window"])
        if weights is not None:
            set_weights(self._core, weights, what="activity classifier")
        self._pred.hybridize()
        self._loss.hybridize()

    def _get_state(self):
        return dict(self._state), get_weights(self._core)

    @classmethod
    def _from_state(cls, state, weights):
        _check_state(state)
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

    def summary(self, output=None):
        """Describe the model: schema, training summary. Returns a str if output='str'."""
        s = self._state

        def fmt(v):
            return f"{v:.4f}" if isinstance(v, float) else str(v)
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
                                  ("Iterations (best / run)",
                                   f"{s.get('best_iteration')} / {s.get('training_iterations')}"),
                                  ("Training time (sec)", s.get("training_time"))]),
        ]
        lines = ["Class                                    : ActivityClassifier", ""]
        for title, rows in sections:
            lines += [title, "-" * len(title)]
            lines += [f"{k:<40} : {fmt(v)}" for k, v in rows]
            lines.append("")
        text = "\n".join(lines)
        if output == "str":
            return text
        print(text)

    def __repr__(self):
        return self.summary(output="str")

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
        dict
            The metrics, plus ``unseen_labels`` ({label: row count} of labels
            never seen in training; they count as errors, with a warning).

        Examples
        --------
        >>> model.evaluate(test)['accuracy']                     # doctest: +SKIP
        """
        V.check_dataframe(dataset)
        V.check_columns_exist(dataset, [self._state["target"]], "target")
        y = V.check_labels(dataset, self._state["target"])
        per_row, _ = self._per_row_probs(dataset)
        return classifier_metrics(y, per_row, self._state["classes"], metric)

    def export_coreml(self, path):
        """Export to Core ML; see :func:`toolkit.activity_classifier._export.export_coreml`."""
        from ._export import export_coreml
        return export_coreml(self, path)


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


# --- create ---------------------------------------------------------------

def _encode_labels(y, target):
    """Sorted class list of JSON-typed labels (str or int)."""
    if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
        raise DataError(f"Target column '{target}' holds non-integer numbers; labels must be "
                        "strings or integers.")
    return sorted({_norm_label(v) for v in y})


def create(dataset, session_id, target, features=None, prediction_window=100,
           validation_set="auto", max_iterations=10, batch_size=32, verbose=True,
           random_seed=None):
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
        ``'auto'`` holds out ~10% of sessions when there are at least 50
        sessions, otherwise trains without validation (and says so).
    max_iterations : int, default 10
        Epochs (passes over the training sessions).
    batch_size : int, default 32
        Chunks of 20 windows per training step.
    verbose : bool, default True
        Print progress: a table with one row per iteration.
    random_seed : int, optional
        Seed for weight initialisation, validation split and shuffling.

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
    max_iterations = V.check_int(max_iterations, "max_iterations", 0)
    batch_size = V.check_int(batch_size, "batch_size", 1)
    verbose = V.check_bool(verbose, "verbose")
    random_seed = V.check_seed(random_seed)
    if not (isinstance(validation_set, pd.DataFrame) or validation_set is None
            or (isinstance(validation_set, str) and validation_set == "auto")):
        raise InvalidParameterError(
            "'validation_set' must be 'auto', a DataFrame or None, got "
            f"{type(validation_set).__name__}.")

    seed = random_seed if random_seed is not None else int(np.random.SeedSequence().entropy
                                                           % 2**32)
    rng = np.random.RandomState(seed)
    mx().random.seed(seed)

    say(f"Pre-processing {len(dataset)} samples...", verbose)
    y = V.check_labels(dataset, target)
    values = V.numeric_features(dataset, features)
    classes = _encode_labels(y, target)
    if len(classes) < 2:
        raise DataError(f"Target column '{target}' has only one class ({classes[0]!r}); "
                        "a classifier needs at least two.")
    class_index = {c: i for i, c in enumerate(classes)}
    label_ids = np.array([class_index[_norm_label(v)] for v in y], dtype=np.int64)
    sessions = _data.Sessions(dataset[session_id].to_numpy())
    values, label_ids = values[sessions.order], label_ids[sessions.order]
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
    model = ActivityClassifier(state)
    say("Using CPU to create model", verbose)
    log = _fit(model, values, sessions, label_ids, train_mask, valid, max_iterations,
               batch_size, rng, verbose)
    model._state.update(log)
    model._state["training_time"] = round(time.perf_counter() - t_start, 3)
    say("Training complete", verbose)
    say(f"Total Time Spent: {model._state['training_time']:.1f}s", verbose)
    return model


def _norm_label(v):
    if isinstance(v, (int, np.integer, float, np.floating)) and not isinstance(v, bool):
        return int(v)
    return v if isinstance(v, str) else str(v)


def _prepare_validation(frame, session_id, target, features, class_index, mean, std, pw):
    name = "validation_set"
    V.check_dataframe(frame, name)
    V.check_columns_exist(frame, [session_id, target] + features, "validation_set", name)
    y = V.check_labels(frame, target, name)
    known = np.array([_norm_label(v) in class_index for v in y], bool)
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
    ids = np.array([class_index[_norm_label(v)] for v in y], np.int64)
    sessions = _data.Sessions(frame[session_id].to_numpy())
    values = (values[sessions.order] - mean) / std
    return _data.chunk(values, sessions, pw, ids[sessions.order], len(class_index))


# Training recipe. Experimental knobs (private); frozen values chosen by measurement.
_RECIPE = {
    "lr": 1e-3,          # Adam learning rate
    "schedule": "const", # 'const' or 'cosine' (decay to lr_min_frac*lr over max_iterations)
    "lr_min_frac": 0.0,
    "warmup": 0,         # epochs of linear warm-up
    "passes": 1,         # random-offset copies of the training sessions per epoch
    "noise": 0.0,        # std of gaussian noise added to standardised features
    "scale": 0.0,        # std of per-session, per-channel log-scale jitter
    "warp": 0.0,         # max relative time stretch (uniform in [1-warp, 1+warp])
    "wd": 0.0,           # weight decay (Adam's L2 'wd')
    "clip": None,        # gradient clipping
    "select": "best_acc",  # 'best_acc', 'best_loss', 'last', 'avg', 'best_smooth'
    "avg_from": 0.5,     # 'avg': average weights of epochs after this fraction
    "class_weight": False,
}


class _Series:
    """Minimal stand-in for :class:`_data.Sessions` (starts, lengths) of augmented data."""

    def __init__(self, lengths):
        self.lengths = np.asarray(lengths, np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    def __len__(self):
        return len(self.lengths)


def _augment(values, sessions, label_ids, idx, rng, r):
    """Randomly time-stretched, scaled and noised copies of sessions ``idx``."""
    starts, lengths = sessions.starts[idx], sessions.lengths[idx]
    if r["warp"] > 0:
        f = rng.uniform(1 - r["warp"], 1 + r["warp"], size=len(idx))
        new_len = np.maximum(np.round(lengths / f).astype(np.int64), 1)
        pos = np.concatenate([np.arange(m) * (n - 1) / max(m - 1, 1)
                              for m, n in zip(new_len, lengths)])
        base = np.repeat(starts, new_len)
        lo = np.floor(pos).astype(np.int64)
        frac = (pos - lo)[:, None].astype(np.float32)
        hi = np.minimum(lo + 1, np.repeat(lengths, new_len) - 1)
        vals = values[base + lo] * (1 - frac) + values[base + hi] * frac
        labs = label_ids[base + np.round(pos).astype(np.int64)]
        lengths = new_len
    else:
        rows = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])
        vals, labs = values[rows], label_ids[rows]
    F = values.shape[1]
    if r["scale"] > 0:
        sc = np.exp(rng.normal(0, r["scale"], size=(len(idx), F))).astype(np.float32)
        vals = vals * np.repeat(sc, lengths, axis=0)
    if r["noise"] > 0:
        vals = vals + rng.normal(0, r["noise"], size=vals.shape).astype(np.float32)
    return vals.astype(np.float32, copy=False), _Series(lengths), labs


def _run_epoch(model, chunks, batch_size, rng=None, trainer=None, class_w=None):
    """One pass; trains when a trainer is given. Returns (accuracy, log loss) per window."""
    nd, autograd = mx().nd, mx().autograd
    n = len(chunks["data"])
    order = rng.permutation(n) if rng is not None else np.arange(n)
    tot_loss = tot_correct = tot_weight = 0.0
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        w_np = chunks["weights"][idx]
        lab_np = chunks["labels"][idx]
        x, lab, w = nd.array(chunks["data"][idx]), nd.array(lab_np), nd.array(w_np)
        h, c = _net.zero_states(len(idx))
        wsum = float(w_np.sum())
        if trainer is not None:
            with autograd.record():
                nll, correct = model._loss(x, h, c, lab, w)
                if class_w is None:
                    loss = nll.sum() / max(wsum, 1e-5)
                else:
                    cw = class_w[lab_np.astype(np.int64)] * w_np
                    loss = (nll * nd.array(cw / w_np.clip(1e-12))).sum() / max(float(cw.sum()), 1e-5)
            loss.backward()
            trainer.step(1)
        else:
            nll, correct = model._loss(x, h, c, lab, w)
        tot_loss += float(nll.sum().asscalar())
        tot_correct += float(correct.sum().asscalar())
        tot_weight += wsum
    tot_weight = max(tot_weight, 1e-5)
    return tot_correct / tot_weight, tot_loss / tot_weight


def _fit(model, values, sessions, label_ids, train_mask, valid, max_iterations, batch_size,
         rng, verbose):
    gluon = mx().gluon
    r = _RECIPE
    pw = model._state["prediction_window"]
    C = len(model._state["classes"])
    opt = {"learning_rate": r["lr"], "wd": r["wd"]}
    if r["clip"]:
        opt["clip_gradient"] = r["clip"]
    trainer = gluon.Trainer(model._core.collect_params(), "adam", opt)
    cols = ["Iteration", "Train Accuracy", "Train Loss"]
    if valid is not None:
        cols += ["Validation Accuracy", "Validation Loss"]
    table = ProgressTable(cols + ["Elapsed Time"], verbose)
    table.start()
    log = {"training_accuracy": None, "training_log_loss": None,
           "validation_accuracy": None, "validation_log_loss": None,
           "training_iterations": 0, "best_iteration": None}
    best = None
    history = []
    avg, n_avg = None, 0
    idx = np.flatnonzero(train_mask)
    class_w = None
    if r["class_weight"]:
        counts = np.bincount(label_ids[np.repeat(train_mask, sessions.lengths)], minlength=C)
        class_w = (counts.sum() / np.maximum(counts, 1) / C).astype(np.float32)
    for it in range(1, max_iterations + 1):
        if r["schedule"] == "cosine":
            t = (it - 1) / max(max_iterations - 1, 1)
            lr = r["lr"] * (r["lr_min_frac"] + (1 - r["lr_min_frac"]) * 0.5 * (1 + np.cos(np.pi * t)))
        else:
            lr = r["lr"]
        if r["warmup"] and it <= r["warmup"]:
            lr = lr * it / (r["warmup"] + 1)
        trainer.set_learning_rate(lr)
        parts = []
        for _ in range(r["passes"]):
            if r["warp"] or r["scale"] or r["noise"]:
                v, s, l = _augment(values, sessions, label_ids, idx, rng, r)
                mask = None
            else:
                v, s, l, mask = values, sessions, label_ids, train_mask
            offsets = rng.randint(0, pw, size=len(s)) * (s.lengths > pw)
            parts.append(_data.chunk(v, s, pw, l, C, offsets=offsets, session_mask=mask))
        chunks = {k: np.concatenate([p[k] for p in parts]) for k in ("data", "labels", "weights")}
        acc, loss = _run_epoch(model, chunks, batch_size, rng, trainer, class_w)
        row = [it, acc, loss]
        entry = {"training_accuracy": acc, "training_log_loss": loss,
                 "training_iterations": it}
        if r["select"] == "avg" and it > r["avg_from"] * max_iterations:
            w = get_weights(model._core)
            n_avg += 1
            avg = w if avg is None else {k: avg[k] + (w[k] - avg[k]) / n_avg for k in w}
        if valid is not None:
            vacc, vloss = _run_epoch(model, valid, _PREDICT_BATCH)
            row += [vacc, vloss]
            entry.update(validation_accuracy=vacc, validation_log_loss=vloss)
            history.append((vacc, vloss))
            if r["select"] == "best_acc":
                key = (vacc, -vloss)
            elif r["select"] == "best_loss":
                key = (-vloss,)
            elif r["select"] == "best_smooth":
                h = np.array(history[-3:])
                key = (h[:, 0].mean() - 0 * h[:, 1].mean(), -vloss)
            else:
                key = None
            if key is not None and (best is None or key > best[0]):
                best = (key, it, get_weights(model._core), dict(entry))
        log.update(entry)
        table.row(*row, f"{table.elapsed():.1f}")
    table.finish()
    if avg is not None:
        model._build(avg)
        log["best_iteration"] = max_iterations
        if valid is not None:
            vacc, vloss = _run_epoch(model, valid, _PREDICT_BATCH)
            log.update(validation_accuracy=vacc, validation_log_loss=vloss)
    elif best is not None:
        # A fresh network takes the best weights: copying into parameters
        # that mxnet already reordered for its CPU kernels is unreliable.
        model._build(best[2])
        log.update(best[3])
        log["training_iterations"] = max_iterations
        log["best_iteration"] = best[1]
    else:
        log["best_iteration"] = log["training_iterations"]
    for k in ("training_accuracy", "training_log_loss", "validation_accuracy",
              "validation_log_loss"):
        if log[k] is not None:
            log[k] = round(float(log[k]), 6)
    return log
