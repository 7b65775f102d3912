"""Utilities for activity classification data (Turi Create's ``activity_classifier.util``).

>>> import toolkit as tc
>>> data = tc.datasets.watch_sessions()
>>> train, test = tc.activity_classifier.util.random_split_by_session(
...     data, 'session_id', fraction=0.8, seed=1)
>>> set(train['session_id']).isdisjoint(test['session_id'])
True
"""

import hashlib
import numbers

import numpy as np

from .. import _validate as V
from ..errors import InvalidParameterError

#: Sessions ``create(validation_set='auto')`` needs before it holds some out (Turi
#: Create 5.x's threshold and name).
_MIN_NUM_SESSIONS_FOR_SPLIT = 100


def _session_key(value):
    """A stable byte string for one session id: equal ids, equal keys, across runs."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return b"b" + str(value).encode()
    if isinstance(value, numbers.Integral):
        return b"i" + str(int(value)).encode()
    if isinstance(value, float) and value.is_integer():
        # 3.0 and 3 are the same session for pandas' grouping; keep them together.
        return b"i" + str(int(value)).encode()
    return type(value).__name__.encode() + b":" + str(value).encode("utf-8", "surrogatepass")


def _draws(ids, seed):
    """A uniform number in [0, 1) per session id, from (seed, id) alone."""
    salt = seed.to_bytes(8, "little")
    out = np.empty(len(ids))
    for i, v in enumerate(ids):
        digest = hashlib.blake2b(_session_key(v), digest_size=8, key=salt).digest()
        out[i] = int.from_bytes(digest, "little") / 2.0 ** 64
    return out


def random_split_by_session(dataset, session_id, fraction=0.9, seed=None):
    """Split a DataFrame into two by whole sessions (no session is in both).

    Parameters
    ----------
    dataset : pandas.DataFrame
        One row per sample, with the session column.
    session_id : str
        The column naming each row's session.
    fraction : float, default 0.9
        The share of the sessions in the first part, in [0, 1]. The first part
        gets ``round(fraction * number of sessions)`` sessions exactly (Turi
        Create drew each session independently, so its counts varied).
    seed : int, optional
        Makes the split reproducible: the same seed and session ids give the
        same split, whatever the row order or the other sessions present
        (each session gets a number from a keyed hash of the seed and its id;
        the sessions with the smallest numbers go first). ``None`` draws a seed.

    Returns
    -------
    (pandas.DataFrame, pandas.DataFrame)
        The rows of the chosen sessions and the rest, each in the dataset's
        order and with its index.

    Raises
    ------
    toolkit.errors.InvalidParameterError
        ``dataset`` is not a DataFrame, ``fraction`` is not a number in [0, 1],
        or ``seed`` is not an int in [0, 2**32).
    toolkit.errors.ColumnNotFoundError
        ``session_id`` is not a column.
    toolkit.errors.DataError
        The session column has missing values.

    Examples
    --------
    >>> import toolkit as tc
    >>> data = tc.datasets.watch_sessions()
    >>> train, valid = tc.activity_classifier.util.random_split_by_session(
    ...     data, session_id='session_id', fraction=0.9, seed=0)
    >>> round(train['session_id'].nunique() / data['session_id'].nunique(), 1)
    0.9
    """
    V.check_dataframe(dataset, allow_empty=True)
    V.check_column_name(session_id, "session_id")
    V.check_columns_exist(dataset, [session_id], "session_id")
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) \
            or not 0.0 <= float(fraction) <= 1.0:
        raise InvalidParameterError(
            f"'fraction' must be a number in [0, 1] (the share of sessions in the first "
            f"part), got {type(fraction).__name__} {fraction!r}.")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % 2**32)
    seed = V.check_int(seed, "seed", 0, 2**32 - 1)
    column = dataset[session_id]
    if column.isna().any():
        from ..errors import DataError
        raise DataError(
            f"Column '{session_id}' has {int(column.isna().sum())} missing value(s); every "
            "row needs a session id.")
    codes, ids = column.factorize()
    draws = _draws(list(ids), int(seed))
    n_first = int(round(float(fraction) * len(ids)))
    keys = [_session_key(v) for v in ids]
    # Ties between 64-bit draws are practically impossible; the id breaks them anyway.
    order = sorted(range(len(ids)), key=lambda i: (draws[i], keys[i]))
    first = np.zeros(len(ids), bool)
    first[order[:n_first]] = True
    mask = first[codes] if len(codes) else np.zeros(0, bool)
    return dataset[mask], dataset[~mask]


__all__ = ["random_split_by_session"]
