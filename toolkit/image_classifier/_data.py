"""Input of the image classifier: argument checks, labels, images, the validation split.

``create`` calls, in order: :func:`check_arguments` (every argument, before
any work), then :func:`prepare` (labels encoded, the image column read, the
validation images chosen). :func:`extract` streams images through a network
in batches; prediction and training both use it.

The ``feature`` column may also hold **deep features** instead of images: the
1280-d vectors :func:`toolkit.image_analysis.get_deep_features` returns
(Turi Create's extract-once, train-many workflow). :func:`deep_features_input`
recognises them wherever images are accepted and :func:`deep_feature_matrix`
checks and stacks them; such rows skip the backbone.
"""

import warnings
from collections import namedtuple

import numpy as np

from .. import _images
from .. import _validate as V
from .._mx import mx
from ..errors import DataError, InvalidParameterError, ToolkitWarning
from . import _finetune, _net

#: 'auto' validation: hold out VALIDATION_FRACTION of the rows when there are at least this many.
MIN_ROWS_FOR_AUTO_VALIDATION = 100
VALIDATION_FRACTION = 0.05

#: The checked arguments of ``create``.
Settings = namedtuple("Settings", "target feature model l2_penalty max_iterations batch_size "
                                  "verbose random_seed validation_set l1_penalty class_weights "
                                  "feature_rescaling convergence_threshold input_kind fine_tune "
                                  "pooling",
                      defaults=(_finetune.DEFAULTS, "auto"))

#: Turi Create's names of its feature extractors; refused with a message naming ours.
TURI_CREATE_MODELS = ("resnet-50", "squeezenet_v1.1", "VisionFeaturePrint_Scene",
                      "VisionFeaturePrint_Screen")

#: Turi Create's solvers; any of them is accepted (see :func:`check_solver_options`).
TURI_CREATE_SOLVERS = ("auto", "newton", "lbfgs", "fista")
#: Turi Create's defaults of its solver options, which the Adam fit here has no use for.
DEFAULT_STEP_SIZE = 1.0
DEFAULT_LBFGS_MEMORY_LEVEL = 11

#: What the image classifier reads its ``feature`` column as.
IMAGES, DEEP_FEATURES = "images", "deep_features"


class TrainingData:
    """The decoded input of a training run.

    ``values``/``index``: the image cells of the dataset and their row labels;
    ``label_ids``: each row's position in ``classes``; ``train_rows``: the rows
    to train on (the others, if any, are the automatic validation hold-out);
    ``valid``: a ``validation_set`` DataFrame's usable images as ``(values,
    label_ids, index)``, or None. ``values`` (of either) is a float32 (n, 1280)
    matrix instead of image cells when the column holds deep features
    (:func:`is_feature_matrix`).
    """

    def __init__(self, classes, label_ids, values, index, train_rows, valid):
        self.classes, self.label_ids = classes, label_ids
        self.values, self.index = values, index
        self.train_rows, self.valid = train_rows, valid

    @property
    def held_out_rows(self):
        """The rows of the automatic validation hold-out (empty without one)."""
        return np.setdiff1d(np.arange(len(self.values)), self.train_rows)


def check_model(model, argument="model"):
    """``model`` checked: our feature extractor; Turi Create's names get a clear refusal."""
    if isinstance(model, str) and model in TURI_CREATE_MODELS:
        raise InvalidParameterError(
            f"'{argument}' is {model!r}, a Turi Create feature extractor that this toolkit does "
            f"not have (its weights are not on PyPI; VisionFeaturePrint is part of macOS). "
            f"The feature extractor here is {_net.DEFAULT_MODEL!r} ({_net.NUM_FEATURES}-d "
            "features, ImageNet weights): leave the argument out or pass "
            f"{argument}={_net.DEFAULT_MODEL!r}.")
    return V.check_choice(model, argument, _net.MODELS)


def _check_penalty(value, argument):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)) \
            or not np.isfinite(value) or value < 0:
        raise InvalidParameterError(
            f"'{argument}' must be a finite number >= 0, got {value!r}.")
    return float(value)


def check_seeds(seed, random_seed):
    """Turi Create's ``seed`` and this toolkit's ``random_seed``: one seed, or an error."""
    if seed is not None:
        seed = V.check_int(seed, "seed", 0, 2**32 - 1)
    random_seed = V.check_seed(random_seed)
    if seed is not None and random_seed is not None and seed != random_seed:
        raise InvalidParameterError(
            f"'seed' ({seed}) and 'random_seed' ({random_seed}) differ; they are two names of "
            "the same setting (Turi Create's and this toolkit's). Pass one of them.")
    return random_seed if random_seed is not None else seed


def check_solver_options(solver, step_size, lbfgs_memory_level):
    """Turi Create's solver options, accepted for its scripts but not used here.

    The classifier is fitted by full-batch Adam (see :func:`._train.fit_classifier`):
    the objective, and so the model, is the one Turi Create's solvers minimise, only
    the path to it differs. A value other than Turi Create's default warns that it
    has no effect; a value Turi Create itself refuses is refused.
    """
    V.check_choice(solver, "solver", TURI_CREATE_SOLVERS)
    if isinstance(step_size, (bool, np.bool_)) or not isinstance(
            step_size, (int, float, np.integer, np.floating)) or not np.isfinite(step_size) \
            or step_size <= 0:
        raise InvalidParameterError(f"'step_size' must be a number > 0, got {step_size!r}.")
    V.check_int(lbfgs_memory_level, "lbfgs_memory_level", 1)
    ignored = [f"{name}={value!r}" for name, value, default in (
        ("solver", solver, "auto"), ("step_size", step_size, DEFAULT_STEP_SIZE),
        ("lbfgs_memory_level", lbfgs_memory_level, DEFAULT_LBFGS_MEMORY_LEVEL))
        if value != default]
    if ignored:
        warnings.warn(
            f"{', '.join(ignored)} has no effect: Turi Create's solver options choose how its "
            "L-BFGS/Newton/FISTA solvers reach the classifier; this toolkit fits the same "
            "objective with full-batch Adam (tune max_iterations or convergence_threshold "
            "instead).", ToolkitWarning, stacklevel=4)


def check_class_weights(class_weights):
    """``None``, ``'auto'`` or a dict {class: weight >= 0}; matched to the classes later."""
    if class_weights is None or (isinstance(class_weights, str) and class_weights == "auto"):
        return class_weights
    if not isinstance(class_weights, dict) or not class_weights:
        raise InvalidParameterError(
            "'class_weights' must be None, 'auto' or a dict {class: weight}, got "
            f"{type(class_weights).__name__} {class_weights!r:.60}.")
    out = {}
    for label, weight in class_weights.items():
        if isinstance(weight, (bool, np.bool_)) or not isinstance(
                weight, (int, float, np.integer, np.floating)) or not np.isfinite(weight) \
                or weight < 0:
            raise InvalidParameterError(
                f"'class_weights' must map each class to a finite number >= 0; class "
                f"{label!r} has {weight!r}.")
        out[V.norm_label(label)] = float(weight)
    return out


def resolve_class_weights(class_weights, classes, label_ids):
    """Per-class weights (a list in ``classes`` order), or None for equal weights.

    ``'auto'``: ``n / (num_classes * count)`` over the training rows, so every class
    carries the same total weight and the mean weight of a row is 1.
    """
    if class_weights is None:
        return None
    if isinstance(class_weights, str):
        counts = np.bincount(label_ids, minlength=len(classes)).astype(np.float64)
        return [float(len(label_ids) / (len(classes) * c)) if c else 0.0 for c in counts]
    unknown = [k for k in class_weights if k not in classes]
    missing = [c for c in classes if c not in class_weights]
    if unknown or missing:
        raise InvalidParameterError(
            "'class_weights' must give a weight to every class and only to classes: "
            + "; ".join(p for p in (
                f"not classes: {', '.join(map(repr, unknown))}" if unknown else "",
                f"missing: {', '.join(map(repr, missing))}" if missing else "") if p)
            + f" (the classes are {', '.join(map(repr, classes))}).")
    weights = [class_weights[c] for c in classes]
    if not any(w > 0 for w in np.asarray(weights)[np.unique(label_ids)]):
        raise InvalidParameterError("'class_weights' gives every training row weight 0.")
    return weights


def check_convergence_threshold(value):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)) or not np.isfinite(value) or value < 0:
        raise InvalidParameterError(
            f"'convergence_threshold' must be None or a number >= 0, got {value!r}.")
    return float(value)


def check_arguments(dataset, target, feature, model, l2_penalty, max_iterations, batch_size,
                    verbose, random_seed, validation_set, l1_penalty=0.0, class_weights=None,
                    feature_rescaling=True, convergence_threshold=None, fine_tune="auto",
                    pooling="auto"):
    """Check ``create``'s arguments; return them as :data:`Settings` (``feature`` found).

    ``feature`` may name a column of deep features (``input_kind``
    :data:`DEEP_FEATURES`) instead of images.
    """
    V.check_dataframe(dataset)
    V.check_column_name(target, "target")
    V.check_columns_exist(dataset, [target], "target")
    kind = IMAGES
    if isinstance(feature, str) and feature in dataset.columns:
        V.check_columns_exist(dataset, [feature], "feature")   # refuses a duplicated name
        if column_holds_deep_features(dataset[feature]):
            kind = DEEP_FEATURES
    if kind == IMAGES:
        feature = _images.find_image_column(dataset, feature, exclude=(target,))
    if feature == target:
        raise InvalidParameterError("'feature' and 'target' must be different columns.")
    check_model(model)
    pooling = check_pooling(pooling, kind, feature)
    return Settings(target=target, feature=feature, model=model,
                    l2_penalty=_check_penalty(l2_penalty, "l2_penalty"),
                    max_iterations=V.check_max_iterations(max_iterations),
                    batch_size=V.check_int(batch_size, "batch_size", 1),
                    verbose=V.check_bool(verbose, "verbose"),
                    random_seed=V.check_seed(random_seed),
                    validation_set=V.check_validation_set(validation_set),
                    l1_penalty=_check_penalty(l1_penalty, "l1_penalty"),
                    class_weights=check_class_weights(class_weights),
                    feature_rescaling=V.check_bool(feature_rescaling, "feature_rescaling"),
                    convergence_threshold=check_convergence_threshold(convergence_threshold),
                    input_kind=kind, fine_tune=_finetune.check_option(fine_tune),
                    pooling=pooling)


def check_pooling(pooling, kind=IMAGES, feature=None):
    """``create(pooling=...)``: 'auto' or one of :data:`._net.POOLINGS`."""
    choices = ("auto",) + _net.POOLINGS
    if not isinstance(pooling, str) or pooling not in choices:
        raise InvalidParameterError(
            f"'pooling' must be one of {', '.join(map(repr, choices))}, got {pooling!r}.")
    if pooling == "grid" and kind == DEEP_FEATURES:
        raise InvalidParameterError(
            f"pooling='grid' needs images, but '{feature}' holds deep features (already "
            "pooled globally). Train on the image column, or use pooling='avg'.")
    return pooling


# --- deep features ------------------------------------------------------------------------

def is_deep_feature_vector(value):
    """Whether one cell is a vector of numbers (a deep feature), not an image.

    Images are 2-d or 3-d arrays, paths, bytes or PIL images; a deep feature is a
    1-d numeric array, or a list/tuple of numbers (first few checked, cheaply).
    """
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.dtype.kind in "iuf"
    if isinstance(value, (list, tuple)) and value:
        head = value[:8]
        return all(isinstance(v, (int, float, np.integer, np.floating))
                   and not isinstance(v, (bool, np.bool_)) for v in head)
    return False


def column_holds_deep_features(series):
    """Whether a column's first non-missing value is a deep-feature vector."""
    if series.dtype != object:
        return False
    first = next((v for v in series if v is not None and not (isinstance(v, float)
                                                             and np.isnan(v))), None)
    return first is not None and is_deep_feature_vector(first)


def deep_feature_matrix(series, column, name="dataset", pooling=_net.DEFAULT_POOLING):
    """The column's deep features as float32 (n, features), every cell checked.

    ``pooling``: the model's, which sets the length (1280 for 'avg', 11,520 for
    'grid'). Refuses a missing cell, a vector of another length (features of
    another network or pooling), a non-numeric or non-finite value, naming the row.
    """
    n = _net.num_features(pooling)
    out = np.empty((len(series), n), np.float32)
    for pos, (label, value) in enumerate(series.items()):
        where = f"column '{column}' of '{name}', row {label!r} (position {pos})"
        if not is_deep_feature_vector(value):
            raise DataError(
                f"The value at {where} is not a deep-feature vector ({type(value).__name__} "
                f"{_images._short(value)}); the column holds deep features (its first value "
                "is a vector of numbers), so every row must.")
        try:
            vec = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            vec = None
        if vec is None or vec.ndim != 1:
            raise DataError(f"The deep-feature vector at {where} is not a flat list of numbers.")
        if vec.shape[0] != n and pooling != _net.DEFAULT_POOLING:
            raise DataError(
                f"The deep-feature vector at {where} has {vec.shape[0]} values; this model "
                f"pools its features over a grid (pooling={pooling!r}) and reads {n}. Pass "
                "the images, or features from model.extract_features(images).")
        if vec.shape[0] != n:
            raise DataError(
                f"The deep-feature vector at {where} has {vec.shape[0]} values; "
                f"{_net.DEFAULT_MODEL} features have {n}. Extract them with "
                "tc.image_analysis.get_deep_features(images) (features of another network, "
                "such as Turi Create's resnet-50 with 2048, cannot be used).")
        if not np.isfinite(vec).all():
            raise DataError(f"The deep-feature vector at {where} holds NaN or infinite values.")
        out[pos] = vec
    return out


def deep_features_input(dataset, feature, name="dataset", pooling=_net.DEFAULT_POOLING):
    """``(features, index, single)`` when ``dataset`` holds deep features, else None.

    Accepts what prediction accepts for images: a DataFrame whose column
    ``feature`` holds deep features, a Series of them, or one vector (then
    ``single`` is True). ``pooling``: the model's (:func:`deep_feature_matrix`).
    """
    import pandas as pd
    if isinstance(dataset, pd.DataFrame):
        if feature not in dataset.columns or not len(dataset):
            return None
        V.check_columns_exist(dataset, [feature], "feature", name)
        if column_holds_deep_features(dataset[feature]):
            return (deep_feature_matrix(dataset[feature], feature, name, pooling),
                    dataset.index, False)
        return None
    if isinstance(dataset, pd.Series):
        if len(dataset) and column_holds_deep_features(dataset):
            column = dataset.name if dataset.name is not None else feature
            return deep_feature_matrix(dataset, column, name, pooling), dataset.index, False
        return None
    if is_deep_feature_vector(dataset):
        one = pd.Series([None], dtype=object)
        one.iloc[0] = dataset
        return deep_feature_matrix(one, feature, name, pooling), pd.RangeIndex(1), True
    return None


def prepare(dataset, settings):
    """Encode the labels, read the image column and choose the validation images.

    ``settings.random_seed`` (an int) draws the automatic hold-out. Refuses a
    single class, in the dataset or among the rows left to train on.
    """
    import pandas as pd
    target, feature = settings.target, settings.feature
    y = V.check_labels(dataset, target, allow_bool=True)
    classes, label_ids = V.class_ids(y, target)
    if settings.input_kind == DEEP_FEATURES:
        values, index = deep_feature_matrix(dataset[feature], feature), dataset.index
    else:
        values, _, index, _ = _images.image_input(dataset, feature)
    valid = None
    if isinstance(settings.validation_set, pd.DataFrame):
        valid = prepare_validation(settings.validation_set, feature, target,
                                   {c: i for i, c in enumerate(classes)})
    held = V.auto_hold_out(len(values), "images", settings.validation_set,
                           np.random.RandomState(settings.random_seed), VALIDATION_FRACTION,
                           MIN_ROWS_FOR_AUTO_VALIDATION, settings.verbose)
    train_rows = np.flatnonzero(~held)
    if len(np.unique(label_ids[train_rows])) < 2:
        raise DataError("After holding out the validation images only one class is left to "
                        "train on; pass validation_set=None or add images.")
    return TrainingData(classes, label_ids, values, index, train_rows, valid)


def is_feature_matrix(values):
    """Whether decoded input ``values`` are deep features (a 2-d float matrix), not images."""
    return isinstance(values, np.ndarray) and values.ndim == 2


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
    if len(frame) and column_holds_deep_features(frame[feature]):
        values, index = deep_feature_matrix(frame[feature], feature, name), frame.index
    else:
        values, _, index, _ = _images.image_input(frame, feature, name)
    ids = np.array([class_index[v] for v, k in zip(labels, known) if k], np.int64)
    return values, ids, index


def extract(backbone, values, column, index, batch_size, verbose, reduce=None, ctxs=None,
            runner=None):
    """Run the backbone over images in streamed batches.

    Each batch of ``batch_size`` images is decoded and resized (in a
    background thread, one batch ahead), run through the network in
    sub-batches of at most :data:`._net.NETWORK_BATCH` images, and reduced with
    ``reduce(features) -> array`` (``None`` keeps the features), so memory
    holds two decoded batches, one sub-batch of activations and the reduced
    outputs only. Shows a tqdm progress bar (count, images/s, ETA) when
    ``verbose``. With several devices (``ctxs``, the backbone's parameters
    already on all of them) consecutive sub-batches go to the devices in
    turn and run concurrently. ``runner`` (a :class:`toolkit._ort.Runner`,
    numpy network input -> numpy features) replaces the backbone and devices.
    """
    from tqdm import tqdm
    step = _net.network_batch(batch_size)
    outputs = []
    with tqdm(total=len(values), desc="Extracting image features", unit="img",
              disable=not verbose, mininterval=1.0, smoothing=0.1) as bar:
        for _, batch in _images.iter_batches(values, _net.IMAGE_SIZE, batch_size, column,
                                             index):
            parts = [batch[s:s + step] for s in range(0, len(batch), step)]
            if runner is not None:
                for part in parts:
                    feats = runner(_images.to_network_input(part, _net.INPUT_SCALE,
                                                            _net.INPUT_BIAS))
                    outputs.append(reduce(feats) if reduce is not None else feats)
                    bar.update(len(part))
                continue
            nd = mx().nd
            ctxs = ctxs or [mx().cpu()]
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
