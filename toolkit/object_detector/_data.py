"""The object detector's input side: columns, classes, image batches, cluster shares.

What ``create``, ``predict`` and ``evaluate`` read from a DataFrame before any
network runs: which column holds the annotations (:func:`find_annotations_column`),
which classes to learn (:func:`choose_classes`), the images decoded in streamed
batches at the network's size with their original sizes (:func:`batches`,
:func:`to_input`) and, in a parameter-server cluster, each worker's share of
the rows (:func:`worker_share`). Parsing and converting the annotations
themselves is :mod:`._annotations`' job.
"""

import collections
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import _images
from .. import _validate as V
from .._mx import mx
from .._progress import say
from ..errors import DataError, InvalidParameterError
from . import _annotations, _net

#: Images per network call when extracting features and predicting.
NETWORK_BATCH = 16


# --- columns and classes ------------------------------------------------------------------

def find_annotations_column(dataset, annotations, feature):
    """The annotations column: ``annotations`` checked, or the only list/dict column."""
    if annotations is not None:
        V.check_column_name(annotations, "annotations")
        V.check_columns_exist(dataset, [annotations], "annotations")
        return annotations
    cands = []
    for c in dataset.columns:
        if c == feature:
            continue
        vals = [v for v in dataset[c].head(50) if v is not None]
        if any(isinstance(v, (list, dict, tuple)) for v in vals):
            cands.append(c)
    if len(cands) != 1:
        raise DataError(
            f"Cannot pick the annotations column: {len(cands)} columns hold lists or dicts "
            f"({', '.join(map(repr, cands)) or 'none'}); name it with annotations='column'. "
            + _annotations.VALID_ANNOTATION)
    return cands[0]


def find_columns(dataset, feature, annotations, verbose):
    """``(feature, annotations)``: the image and annotations columns, given or found."""
    feature = _images.find_image_column(dataset, feature,
                                        exclude=(annotations,) if annotations else ())
    if annotations is None:
        annotations = find_annotations_column(dataset, None, feature)
        say(f"Using '{annotations}' as annotations column", verbose)
    else:
        find_annotations_column(dataset, annotations, feature)
    return feature, annotations


def choose_classes(rows, classes, annotations):
    """The classes to learn: ``classes`` checked, or the sorted labels of ``rows``."""
    if classes is None:
        classes = sorted({(int(i["label"]) if isinstance(i["label"], np.integer) else i["label"])
                          for r in rows for i in r}, key=lambda v: (isinstance(v, str), v))
    else:
        if not isinstance(classes, (list, tuple)) or not classes or len(set(classes)) != len(
                classes) or not all(isinstance(c, (str, int)) and not isinstance(c, bool)
                                    for c in classes):
            raise InvalidParameterError(
                f"'classes' must be a non-empty list of distinct labels (str or int), got "
                f"{classes!r}.")
        classes = list(classes)
    if not classes:
        raise DataError(f"Column '{annotations}' holds no objects at all; annotate at least "
                        "one box. " + _annotations.VALID_ANNOTATION)
    kinds = {type(c).__name__ for c in classes}
    if len(kinds) > 1:
        # Exports hold one label type (Core ML: all int64 or all str); 1 and '1'
        # would also be two different classes that print alike.
        raise DataError(
            f"The labels in '{annotations}' mix {' and '.join(sorted(kinds))} values "
            f"({', '.join(map(repr, classes[:6]))}); use one kind, e.g. turn every label into "
            "a str.")
    return classes


# --- cluster shares -----------------------------------------------------------------------

#: A worker's rows: image cells (of the image ``column``), index labels and
#: annotation rows, with the worker's ``rank``, the number of ``workers`` and the
#: worker's ``batch`` per step.
Share = collections.namedtuple("Share", "values column index rows rank workers batch")


def worker_share(values, column, index, rows, batch_size, cluster):
    """This process's :class:`Share` of the images (all of them outside a cluster).

    In a cluster of ``W`` workers, worker ``rank`` takes rows ``rank, rank + W,
    ...`` and ``batch_size // W`` images per step.
    """
    rank, workers = (cluster.rank, cluster.num_workers) if cluster is not None else (0, 1)
    local_batch = batch_size // workers
    if local_batch < 1:
        raise InvalidParameterError(
            f"'batch_size' is {batch_size} but the cluster has {workers} workers; each worker "
            f"trains on batch_size // {workers} images per step, so batch_size must be at "
            f"least {workers}.")
    if len(values) < workers:
        raise DataError(f"The dataset has {len(values)} images, fewer than the {workers} "
                        "workers of the cluster; each worker needs at least one.")
    if workers > 1:
        values, rows, index = values[rank::workers], rows[rank::workers], index[rank::workers]
    return Share(values, column, index, rows, rank, workers, local_batch)


def require_boxes(num_boxes, classes, annotations, share):
    """Refuse a training set (or a worker's share of it) without a usable box."""
    if num_boxes == 0:
        raise DataError(f"No usable box of the classes {classes!r} in column "
                        f"'{annotations}'" + (f" (worker {share.rank}'s share of the images)"
                                              if share.workers > 1 else "") + ". "
                        + _annotations.VALID_ANNOTATION)


# --- images -------------------------------------------------------------------------------

def decode(values, start, column, index):
    """Cells -> (uint8 (B, 224, 224, 3), [(width, height)]) ; sizes are the originals."""
    from PIL import Image
    size = _net.IMAGE_SIZE
    out = np.empty((len(values), size, size, 3), np.uint8)
    sizes = []
    for i, v in enumerate(values):
        pos = start + i
        img = _images.load_image(v, _images._where(column, index[pos], pos))
        sizes.append(img.size)
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(img, np.uint8)
    return out, sizes


def batches(values, column, index, batch_size=NETWORK_BATCH):
    """Yield (start, pixels, sizes), decoding the next batch in a background thread."""
    starts = list(range(0, len(values), batch_size))
    with ThreadPoolExecutor(1) as pool:
        fut = None
        for k, s in enumerate(starts):
            if fut is None:
                fut = pool.submit(decode, values[s:s + batch_size], s, column, index)
            pixels, sizes = fut.result()
            if k + 1 < len(starts):
                n = starts[k + 1]
                fut = pool.submit(decode, values[n:n + batch_size], n, column, index)
            yield s, pixels, sizes


def network_input(pixels):
    """Decoded pixels -> the network's input, float32 numpy (B, 3, 224, 224) in [-1, 1]."""
    return _images.to_network_input(pixels, _net.INPUT_SCALE, _net.INPUT_BIAS)


def to_input(pixels, ctx):
    """Decoded pixels -> the network's input NDArray on ``ctx``."""
    return mx().nd.array(network_input(pixels), ctx=ctx)
