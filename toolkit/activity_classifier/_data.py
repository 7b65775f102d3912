"""Sessions -> windows -> chunks, vectorised with numpy.

A *window* is ``prediction_window`` consecutive rows of one session and gets one
label (the most frequent label of its rows; ties go to the first class in
sorted order). A *chunk* is up to ``WINDOWS_PER_CHUNK`` consecutive windows of
one session: the sequence the LSTM sees. The last window and the last chunk of
a session are zero-padded; padded windows get weight 0.
"""

import numpy as np
import pandas as pd

WINDOWS_PER_CHUNK = 20


class Sessions:
    """Rows grouped by session, in order of first appearance, time order kept.

    Attributes
    ----------
    order : ndarray
        ``values[i]`` is input row ``order[i]`` (a stable sort by session).
    starts, lengths : ndarray
        Start row (in sorted order) and row count of each session.
    ids : ndarray
        The session id of each session.
    """

    def __init__(self, session_values):
        codes, uniques = pd.factorize(pd.Series(session_values), sort=False)
        # factorize gives codes in order of first appearance; a stable sort
        # keeps each session's rows in their original (time) order.
        self.order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=len(uniques))
        self.lengths = counts.astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.ids = np.asarray(uniques)

    def __len__(self):
        return len(self.lengths)


def chunk(values, sessions, prediction_window, labels=None, num_classes=None, offsets=None,
          session_mask=None):
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

    Returns
    -------
    dict with ``data`` (n_chunks, 20*pw, F), ``weights`` (n_chunks, 20),
    ``session`` (n_chunks,) session index, ``first_window`` (n_chunks,) index
    of the chunk's first window within its session, and ``labels``
    (n_chunks, 20) when labels are given.
    """
    pw = prediction_window
    L = pw * WINDOWS_PER_CHUNK
    idx = np.arange(len(sessions))
    if session_mask is not None:
        idx = idx[session_mask]
    off = np.zeros(len(sessions), np.int64) if offsets is None else np.asarray(offsets, np.int64)
    starts = sessions.starts[idx] + off[idx]
    lengths = np.maximum(sessions.lengths[idx] - off[idx], 0)
    n_windows = -(-lengths // pw)
    n_chunks = -(-n_windows // WINDOWS_PER_CHUNK)
    chunk_session = np.repeat(idx, n_chunks)
    first_chunk = np.concatenate([[0], np.cumsum(n_chunks)[:-1]])
    within = np.arange(n_chunks.sum()) - np.repeat(first_chunk, n_chunks)
    rel = within[:, None] * L + np.arange(L)[None, :]
    chunk_len = np.repeat(lengths, n_chunks)
    valid = rel < chunk_len[:, None]
    rows = np.where(valid, np.repeat(starts, n_chunks)[:, None] + rel, 0)
    data = values[rows] * valid[:, :, None]
    windows_valid = valid.reshape(len(rel), WINDOWS_PER_CHUNK, pw).any(axis=2)
    out = {
        "data": data.astype(np.float32, copy=False),
        "weights": windows_valid.astype(np.float32),
        "session": chunk_session,
        "first_window": within * WINDOWS_PER_CHUNK,
    }
    if labels is not None:
        onehot = np.zeros((len(rel), L, num_classes), np.float32)
        r, c = np.nonzero(valid)
        onehot[r, c, labels[rows[r, c]]] = 1.0
        counts = onehot.reshape(len(rel), WINDOWS_PER_CHUNK, pw, num_classes).sum(axis=2)
        out["labels"] = counts.argmax(axis=2).astype(np.float32)
    return out


def window_of_rows(sessions, prediction_window):
    """For each row (sorted order): (session index, window index within the session)."""
    session_of_row = np.repeat(np.arange(len(sessions)), sessions.lengths)
    pos = np.arange(sessions.lengths.sum()) - np.repeat(sessions.starts, sessions.lengths)
    return session_of_row, pos // prediction_window
