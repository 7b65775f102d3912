"""Input of the image classifier: argument checks, labels, images, the validation split.

``create`` calls, in order: :func:`check_arguments` (every argument, before
any work), then :func:`prepare` (labels encoded, the image column read, the
validation images chosen). :func:`extract` streams images through a network
in batches; prediction and training both use it.
"""

import warnings
from collections import namedtuple

import numpy as np

from .. import _images
from .. import _validate as V
from .._mx import mx
from .._progress import say
from ..errors import DataError, InvalidParameterError, ToolkitWarning
from . import _finetune, _net

#: 'auto' validation: hold out VALIDATION_FRACTION of the rows when there are at least this many.
MIN_ROWS_FOR_AUTO_VALIDATION = 100
VALIDATION_FRACTION = 0.05

#: The checked arguments of ``create``.
Settings = namedtuple("Settings", "target feature model l2_penalty max_iterations batch_size "
                                  "verbose random_seed validation_set fine_tune",
                      defaults=(_finetune.DEFAULTS,))


class TrainingData:
    """The decoded input of a training run.

    ``values``/``index``: the image cells of the dataset and their row labels;
    ``label_ids``: each row's position in ``classes``; ``train_rows``: the rows
    to train on (the others, if any, are the automatic validation hold-out);
    ``valid``: a ``validation_set`` DataFrame's usable images as ``(values,
    label_ids, index)``, or None.
    """

    def __init__(self, classes, label_ids, values, index, train_rows, valid):
        self.classes, self.label_ids = classes, label_ids
        self.values, self.index = values, index
        self.train_rows, self.valid = train_rows, valid

    @property
    def held_out_rows(self):
        """The rows of the automatic validation hold-out (empty without one)."""
        return np.setdiff1d(np.arange(len(self.values)), self.train_rows)


def check_arguments(dataset, target, feature, model, l2_penalty, max_iterations, batch_size,
                    verbose, random_seed, validation_set, fine_tune="auto"):
    """Check ``create``'s arguments; return them as :data:`Settings` (``feature`` found)."""
    V.check_dataframe(dataset)
    V.check_column_name(target, "target")
    V.check_columns_exist(dataset, [target], "target")
    feature = _images.find_image_column(dataset, feature, exclude=(target,))
    if feature == target:
        raise InvalidParameterError("'feature' and 'target' must be different columns.")
    V.check_choice(model, "model", _net.MODELS)
    if isinstance(l2_penalty, bool) or not isinstance(l2_penalty, (int, float, np.floating)) \
            or not np.isfinite(l2_penalty) or l2_penalty < 0:
        raise InvalidParameterError(
            f"'l2_penalty' must be a finite number >= 0, got {l2_penalty!r}.")
    return Settings(target=target, feature=feature, model=model, l2_penalty=float(l2_penalty),
                    max_iterations=V.check_max_iterations(max_iterations),
                    batch_size=V.check_int(batch_size, "batch_size", 1),
                    verbose=V.check_bool(verbose, "verbose"),
                    random_seed=V.check_seed(random_seed),
                    validation_set=V.check_validation_set(validation_set),
                    fine_tune=_finetune.check_option(fine_tune))


def prepare(dataset, settings):
    """Encode the labels, read the image column and choose the validation images.

    ``settings.random_seed`` (an int) draws the automatic hold-out. Refuses a
    single class, in the dataset or among the rows left to train on.
    """
    import pandas as pd
    target, feature = settings.target, settings.feature
    y = V.check_labels(dataset, target, allow_bool=True)
    classes, label_ids = V.class_ids(y, target)
    values, _, index, _ = _images.image_input(dataset, feature)
    valid = None
    if isinstance(settings.validation_set, pd.DataFrame):
        valid = prepare_validation(settings.validation_set, feature, target,
                                   {c: i for i, c in enumerate(classes)})
    train_rows = _hold_out(len(values), settings.validation_set,
                           np.random.RandomState(settings.random_seed), settings.verbose)
    if len(np.unique(label_ids[train_rows])) < 2:
        raise DataError("After holding out the validation images only one class is left to "
                        "train on; pass validation_set=None or add images.")
    return TrainingData(classes, label_ids, values, index, train_rows, valid)


def _hold_out(num_rows, validation_set, rng, verbose):
    """The rows to train on: all but a random VALIDATION_FRACTION for ``'auto'``."""
    train_rows = np.arange(num_rows)
    if not isinstance(validation_set, str):
        return train_rows
    if num_rows < MIN_ROWS_FOR_AUTO_VALIDATION:
        say(f"The dataset has {num_rows} images, fewer than the "
            f"{MIN_ROWS_FOR_AUTO_VALIDATION} needed for an automatic validation set; "
            "continuing without one.", verbose)
        return train_rows
    n_valid = max(1, int(round(VALIDATION_FRACTION * num_rows)))
    held = np.sort(rng.choice(num_rows, n_valid, replace=False))
    say(f"Holding out {n_valid} of {num_rows} images ({VALIDATION_FRACTION:.0%}) at "
        "random for validation. Set validation_set=None to train on all of them.", verbose)
    return np.setdiff1d(train_rows, held)


def prepare_validation(frame, feature, target, class_index):
    """``(values, label_ids, index)`` of a validation DataFrame's rows with known labels.

    Rows whose label is not a training class are left out with a warning;
    None when no row is left.
    """
    name = "validation_set"
    V.check_dataframe(frame, name)
    V.check_columns_exist(frame, [feature, target], "validation_set", name)
    y = V.check_labels(frame, target, name, allow_bool=True)
    labels = [V.norm_label(v) for v in y]
    known = np.array([v in class_index for v in labels], bool)
    if not known.all():
        unseen = sorted({str(v) for v, k in zip(labels, known) if not k})
        warnings.warn(f"validation_set: {int((~known).sum())} row(s) with labels not in the "
                      f"training data ({', '.join(unseen[:5])}) are left out.", ToolkitWarning,
                      stacklevel=4)
        frame = frame[known]
        if len(frame) == 0:
            return None
    values, _, index, _ = _images.image_input(frame, feature, name)
    ids = np.array([class_index[v] for v, k in zip(labels, known) if k], np.int64)
    return values, ids, index


def extract(backbone, values, column, index, batch_size, verbose, reduce=None, ctxs=None):
    """Run the backbone over images in streamed batches.

    Each batch of ``batch_size`` images is decoded and resized (in a
    background thread, one batch ahead), run through the network in
    sub-batches of at most :data:`._net.NETWORK_BATCH` images, and reduced with
    ``reduce(features) -> array`` (``None`` keeps the features), so memory
    holds two decoded batches, one sub-batch of activations and the reduced
    outputs only. Shows a tqdm progress bar (count, images/s, ETA) when
    ``verbose``. With several devices (``ctxs``, the backbone's parameters
    already on all of them) consecutive sub-batches go to the devices in
    turn and run concurrently.
    """
    from tqdm import tqdm
    nd = mx().nd
    ctxs = ctxs or [mx().cpu()]
    step = _net.network_batch(batch_size)
    outputs = []
    with tqdm(total=len(values), desc="Extracting image features", unit="img",
              disable=not verbose, mininterval=1.0, smoothing=0.1) as bar:
        for _, batch in _images.iter_batches(values, _net.IMAGE_SIZE, batch_size, column,
                                             index):
            parts = [batch[s:s + step] for s in range(0, len(batch), step)]
            for r in range(0, len(parts), len(ctxs)):
                # Start every device's sub-batch before waiting for any result.
                running = [backbone(nd.array(_images.to_network_input(
                    part, _net.INPUT_SCALE, _net.INPUT_BIAS), ctx=ctx))
                    for part, ctx in zip(parts[r:r + len(ctxs)], ctxs)]
                for part, out in zip(parts[r:r + len(ctxs)], running):
                    feats = out.asnumpy()
                    outputs.append(reduce(feats) if reduce is not None else feats)
                    bar.update(len(part))
    return np.concatenate(outputs) if outputs else np.zeros((0, _net.NUM_FEATURES), np.float32)
