"""Sessions -> windows -> chunks, vectorised with numpy.

A *window* is ``prediction_window`` consecutive rows of one session and gets one
label (the most frequent label of its rows; ties go to the first class in
sorted order). A *chunk* is up to ``WINDOWS_PER_CHUNK`` consecutive windows of
one session: the sequence the LSTM sees. The last window and the last chunk of
a session are zero-padded; padded windows get weight 0.
"""

import warnings
from collections import namedtuple

import numpy as np
import pandas as pd

from .. import _checkpoint
from .. import _validate as V
from .._progress import say
from ..errors import DataError, ToolkitWarning

WINDOWS_PER_CHUNK = 20


class Sessions:
    """Rows grouped by session, in order of first appearance, time order kept.

    Attributes
    ----------
    order : ndarray
        ``values[i]`` is input row ``order[i]`` (a stable sort by session).
    grouped : bool
        True when the input rows already are grouped by session (``order`` is then
        ``arange(n)`` and callers may skip sorting).
    starts, lengths : ndarray
        Start row (in sorted order) and row count of each session.
    ids : ndarray
        The session id of each session.
    """

    def __init__(self, session_values):
        session_values = np.asarray(session_values)
        if session_values.dtype.kind in "iuf" and self._from_runs(session_values):
            return
        codes, uniques = pd.factorize(pd.Series(session_values), sort=False)
        # Codes count up in order of first appearance, so the rows are grouped exactly
        # when the codes never decrease; a stable sort keeps each session's rows in their
        # original (time) order otherwise.
        self.grouped = bool((codes[1:] >= codes[:-1]).all())
        self.order = np.arange(len(codes)) if self.grouped \
            else np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=len(uniques))
        self.lengths = counts.astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.ids = np.asarray(uniques)

    def _from_runs(self, values):
        """Numbers already grouped by session: the runs of equal ids are the sessions.

        One comparison pass instead of hashing every row; False (nothing set) when an
        id comes back after another session's rows, or there are no rows.
        """
        if len(values) == 0:
            return False
        firsts = np.concatenate([[0], np.flatnonzero(values[1:] != values[:-1]) + 1])
        ids = values[firsts]
        if len(pd.unique(ids)) != len(ids):
            return False
        self.grouped = True
        self.order = np.arange(len(values))
        self.starts = firsts.astype(np.int64)
        self.lengths = np.diff(np.append(firsts, len(values))).astype(np.int64)
        self.ids = ids
        return True

    def __len__(self):
        return len(self.lengths)


class FeatureReader:
    """The feature columns, standardised to float32 on demand, a block of rows at a time.

    ``read(rows)`` equals standardising :func:`toolkit._validate.numeric_features`'
    array in place (``float32(x) - float32(mean)``, then ``/ float32(std)``,
    elementwise) for those rows, and refuses the same inputs with the same errors,
    but reads each column once: the float32 arithmetic runs on one contiguous column
    at a time and a single sum of the block stands in for the per-column checks.
    NaN or inf in the input (also a value beyond float32's range, which becomes inf)
    makes that sum non-finite; only then does ``numeric_features`` run, over the
    whole dataset, to say which column and row (the same error whichever block
    found it). It raises nothing when finite input only overflowed in the sum or in
    the standardisation, which was accepted before too.

    The column dtypes are checked on creation. Reading block by block lets
    ``predict`` standardise the rows of one batch of chunks while the network
    computes the previous batch, and never holds all the rows standardised at once.
    """

    def __init__(self, dataset, features, mean, std, name="dataset"):
        self._dataset, self._features, self._name = dataset, features, name
        self._columns = []
        for series in V.numeric_columns(dataset, features):
            # numpy-backed columns are indexed in place (no float64 copy of an int
            # column); extension arrays (nullable, Arrow) convert per block as
            # ``Series.to_numpy`` converts them.
            plain = isinstance(series.dtype, np.dtype)
            self._columns.append((plain, series.to_numpy() if plain else series.array))
        self._mean = np.asarray(mean, np.float32)
        self._std = np.asarray(std, np.float32)
        self._checked = False

    def read(self, rows=slice(None)):
        """``(len(rows), F)`` float32: the standardised features of input rows ``rows``
        (a slice or an index array)."""
        n = len(range(len(self._dataset))[rows]) if isinstance(rows, slice) else len(rows)
        values = np.empty((n, len(self._columns)), np.float32)
        scratch = np.empty(n, np.float32)
        with np.errstate(all="ignore"):     # NaN and inf are judged by the check below
            for j, (plain, column) in enumerate(self._columns):
                block = column[rows]
                block = np.asarray(block, np.float64) if plain \
                    else block.to_numpy(dtype=np.float64, na_value=np.nan)
                np.subtract(block, self._mean[j], out=scratch, dtype=np.float32)
                np.divide(scratch, self._std[j], out=scratch)
                values[:, j] = scratch
            finite = n == 0 or np.isfinite(values.sum())
        if not finite and not self._checked:
            V.numeric_features(self._dataset, self._features, self._name)
            # Passed: no value anywhere is NaN, inf or too large; later blocks whose
            # sums overflow need no second look.
            self._checked = True
        return values


def standardised_features(dataset, features, mean, std, name="dataset"):
    """``(values - mean) / std`` in float32 of the feature columns, as an (n, F) array
    (every row of :class:`FeatureReader`)."""
    return FeatureReader(dataset, features, mean, std, name).read()


def chunk(values, sessions, prediction_window, labels=None, num_classes=None, offsets=None,
          session_mask=None, gains=None):
    """Cut sessions into zero-padded chunks.

    Parameters
    ----------
    values : ndarray (n_rows, F)
        Feature rows in ``sessions`` (sorted) order, already standardised.
    sessions : Sessions
    prediction_window : int
    labels : ndarray of int, optional
        Class id of each row (sorted order).
    offsets : ndarray of int, optional
        Rows to skip at the start of each session (training augmentation).
    session_mask : ndarray of bool, optional
        Which sessions to use.
    gains : ndarray (n_sessions, F), optional
        Each session's rows are multiplied by its row of gains (float32 products;
        training augmentation). Padding stays zero.

    Returns
    -------
    dict with ``data`` (n_chunks, 20*pw, F), ``weights`` (n_chunks, 20),
    ``session`` (n_chunks,) session index, ``first_window`` (n_chunks,) index
    of the chunk's first window within its session, and ``labels``
    (n_chunks, 20) when labels are given.
    """
    pw = prediction_window
    L = pw * WINDOWS_PER_CHUNK
    idx = np.arange(len(sessions)) if session_mask is None else np.flatnonzero(session_mask)
    off = 0 if offsets is None else np.asarray(offsets, np.int64)[idx]
    starts = sessions.starts[idx] + off
    lengths = np.maximum(sessions.lengths[idx] - off, 0)
    n_windows = -(-lengths // pw)
    n_chunks = -(-n_windows // WINDOWS_PER_CHUNK)
    first_chunk = np.concatenate([[0], np.cumsum(n_chunks)[:-1]]).astype(np.int64)
    values = np.asarray(values, np.float32)
    f = values.shape[1]
    data = np.zeros((int(n_chunks.sum()), L, f), np.float32)
    flat = data.reshape(-1, f)
    # Each session's rows are one block of ``values`` and one block of the chunks.
    dst = first_chunk * L
    scale = None if gains is None else np.asarray(gains, np.float32)[idx]
    # Label counts per window (bincounts, no one-hot array); argmax then gives ties
    # to the first class in sorted order.
    counts = None
    if labels is not None:
        labels = np.asarray(labels)
        counts = np.zeros(len(data) * WINDOWS_PER_CHUNK * num_classes, np.int64)
    if len(values) >= _MIN_ROWS_PER_SLICE * max(len(idx), 1):
        # Long sessions: a copy (and a bincount) per session, no index per row.
        for s, (d, a, n) in enumerate(zip(dst.tolist(), starts.tolist(), lengths.tolist())):
            if scale is None:
                flat[d:d + n] = values[a:a + n]
            else:
                np.multiply(values[a:a + n], scale[s], out=flat[d:d + n])
            if counts is not None and n:
                size = -(-n // pw) * num_classes
                first = d // pw * num_classes
                counts[first:first + size] += np.bincount(
                    np.arange(n) // pw * num_classes + labels[a:a + n], minlength=size)
    else:
        # Many short sessions: where every row comes from and goes to, in one pass.
        taken = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        step = np.arange(int(lengths.sum()), dtype=np.int64)
        keep = lengths > 0
        src = _repeat_runs((starts - taken)[keep], lengths[keep]) + step
        to = _repeat_runs((dst - taken)[keep], lengths[keep]) + step
        del step
        item = np.dtype((np.void, values.itemsize * f))
        np.put(flat.view(item).reshape(-1), to,
               np.ascontiguousarray(values).view(item).reshape(-1)[src])
        if scale is not None:
            data *= scale[np.repeat(np.arange(len(idx)), n_chunks)][:, None, :]
        if counts is not None:
            counts += np.bincount((to // pw) * num_classes + labels[src],
                                  minlength=len(counts))
    within = np.arange(len(data)) - np.repeat(first_chunk, n_chunks)
    windows_left = np.repeat(n_windows, n_chunks) - within * WINDOWS_PER_CHUNK
    out = {
        "data": data,
        "weights": (np.arange(WINDOWS_PER_CHUNK)[None, :] < windows_left[:, None])
        .astype(np.float32),
        "session": np.repeat(idx, n_chunks),
        "first_window": within * WINDOWS_PER_CHUNK,
    }
    if counts is not None:
        out["labels"] = counts.reshape(len(data), WINDOWS_PER_CHUNK, num_classes) \
            .argmax(axis=2).astype(np.float32)
    return out


def _chunk_counts(sessions, prediction_window):
    """``(chunks per session, first chunk of each session)``."""
    n_chunks = -(-(-(-sessions.lengths // prediction_window)) // WINDOWS_PER_CHUNK)
    first_chunk = np.concatenate([[0], np.cumsum(n_chunks)[:-1]]).astype(np.int64)
    return n_chunks, first_chunk


def sorted_slots(sessions, prediction_window):
    """The flat chunk row (see :func:`chunk_rows`) of each row in ``sessions`` order.

    Divided by ``prediction_window`` it is the row's window in (n_chunks * 20) order.
    """
    _, first_chunk = _chunk_counts(sessions, prediction_window)
    shift = first_chunk * (prediction_window * WINDOWS_PER_CHUNK) - sessions.starts
    rows = _repeat_runs(shift, sessions.lengths)
    rows += np.arange(len(rows))
    return rows


def _repeat_runs(values, lengths):
    """``np.repeat(values, lengths)`` for int64 values and lengths >= 1 (sessions).

    A cumulative sum of the steps between runs: numpy 1.23's ``repeat`` copies
    element by element, 5x as long for the watch data's 104k rows in 56 runs.
    """
    out = np.zeros(int(lengths.sum()), np.int64)
    if len(out):
        out[np.cumsum(lengths[:-1])] = np.diff(values)
        out[0] += values[0]
        np.cumsum(out, out=out)
    return out


#: Grouped rows are copied session by session (one slice each) when the sessions
#: average at least this many rows; below it the per-session Python step costs more
#: than scattering every row by its index.
_MIN_ROWS_PER_SLICE = 512


class ChunkPlan:
    """Where each input row goes in the inference chunks, decided before any value is
    read, so the chunks can be filled a batch at a time (:meth:`fill`).

    Attributes
    ----------
    n_chunks : int
    table : dict
        :func:`chunk`'s ``weights``, ``session`` and ``first_window`` and, unless the
        rows are grouped by session and copied a session at a time, ``rows``
        (n_rows,): where each input row goes in the flat ``(n_chunks * 20 * pw, F)``
        chunks. :func:`to_rows` maps per-window results back to the input rows
        with it.
    """

    def __init__(self, sessions, prediction_window):
        pw = prediction_window
        L = pw * WINDOWS_PER_CHUNK
        n_chunks, first_chunk = _chunk_counts(sessions, pw)
        self.sessions, self._L, self._first_chunk = sessions, L, first_chunk
        self.n_chunks = int(n_chunks.sum())
        within = np.arange(self.n_chunks) - np.repeat(first_chunk, n_chunks)
        windows_left = np.repeat(-(-sessions.lengths // pw), n_chunks) \
            - within * WINDOWS_PER_CHUNK
        self.table = {
            "weights": (np.arange(WINDOWS_PER_CHUNK)[None, :] < windows_left[:, None])
            .astype(np.float32),
            "session": np.repeat(np.arange(len(sessions)), n_chunks),
            "first_window": within * WINDOWS_PER_CHUNK,
        }
        n = int(sessions.lengths.sum())
        # Rows of chunk i are the rows bounds[i]:bounds[i + 1] in sessions order: a
        # batch of chunks needs one range of them.
        self._bounds = np.append(np.repeat(sessions.starts, n_chunks) + within * L, n)
        # Each session's rows are one block of the input and one block of the chunks:
        # a copy per session, no index per row, when sessions are long enough.
        self._by_slice = sessions.grouped and n >= _MIN_ROWS_PER_SLICE * len(sessions)
        if not self._by_slice:
            rows = sorted_slots(sessions, pw)
            if not sessions.grouped:
                in_order = np.empty_like(rows)
                in_order[sessions.order] = rows
                rows = in_order
            self.table["rows"] = rows

    def fill(self, read, start, stop):
        """Chunks ``start:stop``, ``(stop - start, 20 * pw, F)`` float32, zero-padded.

        ``read(rows)`` gives the (standardised float32) feature rows of input rows
        ``rows``, a slice or an index array.
        """
        s, L = self.sessions, self._L
        lo, hi = int(self._bounds[start]), int(self._bounds[stop])
        values = read(slice(lo, hi) if s.grouped else s.order[lo:hi])
        f = values.shape[1]
        data = np.zeros((stop - start, L, f), np.float32)
        flat = data.reshape(-1, f)
        if self._by_slice:
            first = int(np.searchsorted(s.starts, lo, side="right")) - 1
            last = int(np.searchsorted(s.starts, hi, side="left"))
            for begin, n, chunk0 in zip(s.starts[first:last].tolist(),
                                        s.lengths[first:last].tolist(),
                                        self._first_chunk[first:last].tolist()):
                a, b = max(begin, lo), min(begin + n, hi)
                dst = (chunk0 - start) * L + a - begin
                flat[dst:dst + b - a] = values[a - lo:b - lo]
        else:
            rows = self.table["rows"]
            slots = (rows[lo:hi] if s.grouped else rows[s.order[lo:hi]]) - start * L
            # Each row moved as one opaque item: numpy's fancy assignment of (F,) float
            # rows loops per element and took 3x as long.
            item = np.dtype((np.void, values.itemsize * f))
            np.put(flat.view(item).reshape(-1), slots,
                   np.ascontiguousarray(values).view(item).reshape(-1))
        return data


def chunk_rows(values, sessions, prediction_window):
    """Inference chunks of rows in input order, cut without sorting the rows.

    The result equals ``chunk(values[sessions.order], sessions, prediction_window)``;
    each row is written straight to its place in the chunks.

    Parameters
    ----------
    values : ndarray (n_rows, F)
        Standardised float32 feature rows in input order.
    sessions : Sessions
    prediction_window : int

    Returns
    -------
    dict with :func:`chunk`'s ``data``, and :attr:`ChunkPlan.table`'s entries.
    """
    values = np.ascontiguousarray(values, np.float32)
    plan = ChunkPlan(sessions, prediction_window)
    out = dict(plan.table)
    out["data"] = plan.fill(lambda rows: values[rows], 0, plan.n_chunks)
    return out


def to_rows(window_values, chunks, sessions, prediction_window):
    """Each input row's entry of a per-window array.

    Parameters
    ----------
    window_values : ndarray (n_chunks * 20, ...)
        One entry per window, in ``chunks['weights'].reshape(-1)`` order.
    chunks : dict
        :func:`chunk_rows`' result for these ``sessions``.
    sessions : Sessions
    prediction_window : int

    Returns
    -------
    ndarray (n_rows, ...): row ``i`` holds the entry of input row ``i``'s window.
    """
    rows = chunks.get("rows")
    if rows is not None:
        return window_values[rows // prediction_window]
    # Rows grouped by session (and copied a session at a time, so there are few
    # sessions): the windows with rows are in row order, each covering
    # prediction_window rows but the last of a session. Each session's full windows
    # fill its rows as one broadcast assignment; no index per row (building one and
    # gathering by it, or np.repeat, took 1.3-1.8x as long on the watch data).
    pw = prediction_window
    per_window = window_values[np.flatnonzero(chunks["weights"].reshape(-1))]
    out = np.empty((int(sessions.lengths.sum()),) + per_window.shape[1:], per_window.dtype)
    first = 0
    for start, n in zip(sessions.starts.tolist(), sessions.lengths.tolist()):
        full = n // pw
        out[start:start + full * pw].reshape((full, pw) + out.shape[1:])[:] = \
            per_window[first:first + full, None]
        if full * pw < n:
            out[start + full * pw:start + n] = per_window[first + full]
        first += -(-n // pw)
    return out


# --- create()'s input -----------------------------------------------------------------------

#: 'auto' validation: hold out VALIDATION_FRACTION of the sessions when there are at least
#: this many (Turi Create 5.x's threshold). Below it, holding out 10% of the sessions costs
#: more than the report is worth: on the watch data (84 sessions) per-row test accuracy fell
#: from 0.821 to 0.775 (seed 0) when 8 sessions were held out.
MIN_SESSIONS_FOR_AUTO_VALIDATION = 100
VALIDATION_FRACTION = 0.1

#: The checked arguments of ``create`` (``features`` resolved, ``max_iterations`` None when
#: automatic).
Settings = namedtuple("Settings", "session_id target features prediction_window "
                                  "max_iterations batch_size verbose random_seed validation_set")


def check_arguments(dataset, session_id, target, features, prediction_window, validation_set,
                    max_iterations, batch_size, verbose, random_seed):
    """Check ``create``'s arguments; return them as :data:`Settings`."""
    V.check_dataframe(dataset)
    V.check_column_name(session_id, "session_id")
    V.check_column_name(target, "target")
    V.check_distinct({"session_id": session_id, "target": target})
    V.check_columns_exist(dataset, [session_id], "session_id")
    V.check_columns_exist(dataset, [target], "target")
    if features is None:
        features = [c for c in dataset.columns if c not in (session_id, target)]
        if not features:
            raise DataError("The dataset has no feature columns besides "
                            f"'{session_id}' and '{target}'.")
        V.check_str_columns(features)
        features = list(dict.fromkeys(features))
    else:
        features = V.check_column_list(features, "features",
                                       {"session_id": session_id, "target": target})
    V.check_columns_exist(dataset, features, "features")
    return Settings(session_id=session_id, target=target, features=features,
                    prediction_window=V.check_int(prediction_window, "prediction_window", 1,
                                                  400),
                    max_iterations=V.check_max_iterations(max_iterations),
                    batch_size=V.check_int(batch_size, "batch_size", 1),
                    verbose=V.check_bool(verbose, "verbose"),
                    random_seed=V.check_seed(random_seed),
                    validation_set=V.check_validation_set(validation_set))


class TrainingData:
    """The prepared input of a training run.

    ``values``: standardised float32 features, rows in ``sessions`` order;
    ``label_ids``: each row's position in ``classes``; ``train_mask``: the
    sessions to train on (the others are the automatic validation hold-out);
    ``valid``: validation chunks or None, ``valid_frame``: a validation_set
    DataFrame's usable rows or None; ``mean``/``std``: the standardisation
    (float64); ``fingerprint``: of the data, for checkpoints (or None).
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)

    @property
    def num_train_chunks(self):
        windows = -(-self.sessions.lengths[self.train_mask] // self.prediction_window)
        return int((-(-windows // WINDOWS_PER_CHUNK)).sum())


def prepare(dataset, settings, rng, resume=None, fingerprint=False):
    """Labels, sessions, the validation hold-out and the standardisation.

    ``rng`` draws the automatic hold-out; a ``resume`` checkpoint's
    standardisation is kept (its weights were trained on it).
    """
    target, pw, verbose = settings.target, settings.prediction_window, settings.verbose
    say(f"Pre-processing {len(dataset)} samples...", verbose)
    y = V.check_labels(dataset, target, allow_bool=True)
    values = V.numeric_features(dataset, settings.features)
    classes, label_ids = V.class_ids(y, target)
    sessions = Sessions(V.check_session_ids(dataset, settings.session_id))
    values, label_ids = values[sessions.order], label_ids[sessions.order]
    digest = _checkpoint.fingerprint(values, sessions.lengths, label_ids, classes) \
        if fingerprint else None
    say(f"Using sequences of size {pw * WINDOWS_PER_CHUNK} for model creation.", verbose)
    train_mask = ~V.auto_hold_out(len(sessions), "sessions", settings.validation_set, rng,
                                  VALIDATION_FRACTION, MIN_SESSIONS_FOR_AUTO_VALIDATION, verbose)
    mean, std = standardisation(values, np.repeat(train_mask, sessions.lengths), resume)
    # In place (``values`` is this function's own sorted copy): the same float32
    # arithmetic as (values - mean) / std without two more arrays of the data's size.
    values -= mean.astype(np.float32)
    values /= std.astype(np.float32)
    valid = valid_frame = None
    if isinstance(settings.validation_set, pd.DataFrame):
        valid, valid_frame = prepare_validation(settings.validation_set, settings, classes,
                                                mean, std)
    elif not train_mask.all():
        valid = chunk(values, sessions, pw, label_ids, len(classes), session_mask=~train_mask)
    say(f"Processed a total of {int(train_mask.sum())} sessions.", verbose)
    return TrainingData(values=values, sessions=sessions, label_ids=label_ids, classes=classes,
                        train_mask=train_mask, valid=valid, valid_frame=valid_frame, mean=mean,
                        std=std, fingerprint=digest, prediction_window=pw)


def standardisation(values, train_rows, resume=None):
    """Per-feature ``(mean, std)`` (float64) of the training rows; a constant feature
    gets std 1. A resumed run keeps its checkpoint's."""
    if resume is not None and "feature_mean" in resume.state:
        return (np.asarray(resume.state["feature_mean"], np.float64),
                np.asarray(resume.state["feature_std"], np.float64))
    # Column by column: a float64 copy of every training row would cost twice the
    # float32 data's memory.
    every = bool(train_rows.all())
    mean, std = np.empty(values.shape[1]), np.empty(values.shape[1])
    for j in range(values.shape[1]):
        column = (values[:, j] if every else values[train_rows, j]).astype(np.float64)
        mean[j], std[j] = column.mean(), column.std()
    return mean, np.where(std > 1e-12, std, 1.0)


def prepare_validation(frame, settings, classes, mean, std):
    """``(chunks, usable rows)`` of a validation DataFrame; rows with labels unseen in
    training are left out with a warning; ``(None, None)`` when none is left."""
    name = "validation_set"
    session_id, target, features = settings.session_id, settings.target, settings.features
    V.check_dataframe(frame, name)
    V.check_columns_exist(frame, [session_id, target] + features, "validation_set", name)
    y = V.check_labels(frame, target, name, allow_bool=True)
    ids = V.label_positions(y, classes)
    known = ids >= 0
    if not known.all():
        unseen = sorted({str(v) for v in y[~known]})
        warnings.warn(f"validation_set: {int((~known).sum())} row(s) with labels not in the "
                      f"training data ({', '.join(unseen[:5])}) are left out.", ToolkitWarning,
                      stacklevel=4)
        frame, ids = frame[known], ids[known]
        if len(frame) == 0:
            return None, None
    values = V.numeric_features(frame, features, name)
    sessions = Sessions(V.check_session_ids(frame, session_id, name))
    values = values[sessions.order]
    values -= mean.astype(np.float32)
    values /= std.astype(np.float32)
    return chunk(values, sessions, settings.prediction_window, ids[sessions.order],
                 len(classes)), frame


def validation_config(validation_set, valid):
    """How validation was chosen, for comparing a resumed run's settings."""
    if validation_set is None or isinstance(validation_set, str):
        return validation_set
    if valid is None:
        return "dataframe (no usable rows)"
    return "dataframe " + _checkpoint.fingerprint(valid["data"], valid["labels"])[:16]
