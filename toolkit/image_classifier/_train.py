"""Training of the image classifier.

``create`` runs one training path. Each path takes the backbone of
:func:`pretrained_backbone` (on the configured devices), the decoded input
(:class:`._data.TrainingData`), the checked settings and, optionally,
:class:`Snapshots` and a checkpoint to resume from; it returns ``(weight, bias,
results)``: the classifier layer acting on raw features, and the results to
merge into the model's state. A path that changes the backbone trains it in
place. Paths:

* :func:`train_frozen`: the backbone stays frozen. Its
  features are extracted once (:func:`training_features`: on every device; in a
  cluster each worker extracts its share and the rows are gathered; a column of
  deep features is used as it is), then a softmax regression is fitted on them
  (:func:`fit_classifier`: full-batch Adam, on standardised features unless
  ``feature_rescaling=False``, with optional L1/L2 penalties, class weights and
  a convergence test).
* :func:`train_finetune` (``create(fine_tune=...)``, chosen by :func:`use_finetune`): the
  last block(s) of the backbone and its head convolution are trained with the
  classifier, on augmented cached activations (:mod:`._finetune`).

Checkpoints (:class:`Snapshots`) are model files the training path fills in:
the model so far plus what resuming needs.
"""

import time
from collections import namedtuple

import numpy as np

from .. import _checkpoint, _training, config
from .._mx import mx
from .._progress import ProgressTable, say
from . import _data, _finetune, _net

# Classifier training: full-batch Adam on standardised features.
_LEARNING_RATE = 0.01
_STD_EPSILON = 1e-3
_GRAD_CHUNK = 8192
# Key-value store key for gathering features in a cluster; far from the trainer's keys
# (parameter indices 0, 1, ...).
_GATHER_KEY = 900001
# Checkpoint arrays holding the optimizer's state are named OPTIMIZER/<name>.
_OPTIMIZER = "optimizer"

#: Features of a training run: ``train``/``train_ids`` the rows trained on,
#: ``valid``/``valid_ids`` the validation rows (None without validation),
#: ``seconds`` the time extraction took.
Features = namedtuple("Features", "train train_ids valid valid_ids seconds")


def pretrained_backbone(batch_size, num_images):
    """``(backbone, ctxs, cluster)``: EfficientNet-Lite0 with ImageNet weights, on the devices.

    The backbone is prepared for inference and its parameters live on every
    configured device (``ctxs``); :func:`release` moves them back to the CPU.
    """
    from ..pretrained import load_efficientnet_lite0
    backbone = _net.build_backbone(weights=load_efficientnet_lite0())
    _net.prepare_backbone(backbone, batch_size, num_images)
    ctxs, cluster = config.contexts(), config.cluster()
    if config.off_default(ctxs):
        backbone.collect_params().reset_ctx(ctxs)
    return backbone, ctxs, cluster


def release(backbone, ctxs):
    """Move a trained backbone's parameters back to the CPU, where models predict."""
    if config.off_default(ctxs):
        backbone.collect_params().reset_ctx(mx().cpu())


# --- the frozen-feature path -------------------------------------------------

def train_frozen(backbone, data, settings, ctxs, cluster, snapshots=None, resume=None):
    """Fit the classifier on features of the frozen backbone.

    ``settings``: :data:`._data.Settings` with the seed the run uses. Returns
    ``(weight, bias, results)`` (see the module docstring); ``results`` holds
    the training log, ``num_validation_examples`` and ``feature_extraction_time``.
    """
    verbose = settings.verbose
    trial = pooling_trial(settings, data, resume)
    if trial != backbone.pooling:
        _net.set_pooling(backbone, trial)
        _efficientnet_prepare(backbone, settings.batch_size, len(data.values))
    feats = training_features(backbone, data, settings, ctxs, cluster)
    class_weights = _data.resolve_class_weights(settings.class_weights, data.classes,
                                                feats.train_ids)
    pooling, train_x, valid_x = choose_pooling(trial, feats.train, feats.train_ids, feats.valid,
                                               settings, len(data.classes), class_weights)
    feats = feats._replace(train=train_x, valid=valid_x)
    if pooling != backbone.pooling:
        _net.set_pooling(backbone, pooling)
        _efficientnet_prepare(backbone, settings.batch_size, len(data.values))
    run_config = {"target": settings.target, "feature": settings.feature,
                  "classes": data.classes, "model": settings.model,
                  "l2_penalty": settings.l2_penalty, "max_iterations": settings.max_iterations,
                  "random_seed": settings.random_seed,
                  "validation_set": validation_config(settings.validation_set, feats.valid,
                                                      feats.valid_ids)}
    # Settings added after checkpoints existed enter the run's configuration only when
    # they differ from what runs did before them, so older checkpoints still resume.
    for key, value, before in (("l1_penalty", settings.l1_penalty, 0.0),
                               ("class_weights", class_weights, None),
                               ("feature_rescaling", settings.feature_rescaling, True),
                               ("convergence_threshold", settings.convergence_threshold, None),
                               ("input_kind", settings.input_kind, _data.IMAGES),
                               ("pooling", pooling, _net.DEFAULT_POOLING)):
        if value != before:
            run_config[key] = value
    data_fingerprint = None
    if snapshots is not None or resume is not None:
        # Features rounded to 1e-3: the same images give the same fingerprint on any
        # device, where float arithmetic differs in the last bits.
        data_fingerprint = _checkpoint.fingerprint(np.round(feats.train, 3), feats.train_ids,
                                                   data.classes)
    if resume is not None:
        resume.check_compatible(run_config, data_fingerprint)
    if snapshots is not None:
        snapshots.state.update(pooling=pooling, num_features=_net.num_features(pooling))
        snapshots.begin(run_config, data_fingerprint, _net.backbone_weights(backbone, ctxs[0]))
    say("Training the classifier...", verbose)
    weight, bias, log = fit_classifier(feats.train, feats.train_ids, feats.valid,
                                       feats.valid_ids, len(data.classes), settings.l2_penalty,
                                       settings.max_iterations, verbose, snapshots, resume,
                                       l1_penalty=settings.l1_penalty,
                                       class_weights=class_weights,
                                       feature_rescaling=settings.feature_rescaling,
                                       convergence_threshold=settings.convergence_threshold)
    log["class_weights"] = class_weights
    log["pooling"], log["num_features"] = pooling, _net.num_features(pooling)
    log["num_validation_examples"] = int(0 if feats.valid is None else len(feats.valid))
    log["feature_extraction_time"] = round(feats.seconds, 3)
    return weight, bias, log


def training_features(backbone, data, settings, ctxs, cluster):
    """The :data:`Features` of the training and validation images.

    Deep features (a column of them, see :mod:`._data`) are used as given.
    """
    verbose, batch_size, feature = settings.verbose, settings.batch_size, settings.feature
    t_start = time.perf_counter()
    if _data.is_feature_matrix(data.values):
        say(f"Using the {settings.model} deep features of column '{feature}' "
            f"({len(data.values)} rows); no images to read.", verbose)
        feats = data.values
    else:
        say(f"Extracting {settings.model} features of {len(data.values)} images "
            f"(resized to {_net.IMAGE_SIZE}x{_net.IMAGE_SIZE}) on "
            f"{config.describe(ctxs, cluster)}...", verbose)
        feats = gather_features(backbone, data.values, feature, data.index, batch_size,
                                verbose, ctxs, cluster)
    valid_feats = valid_ids = None
    if data.valid is not None and len(data.valid[0]):
        valid_values, valid_ids, valid_index = data.valid
        if _data.is_feature_matrix(valid_values):
            valid_feats = valid_values
        else:
            say(f"Extracting features of {len(valid_values)} validation images...", verbose)
            valid_feats = _data.extract(backbone, valid_values, feature, valid_index,
                                        batch_size, verbose, ctxs=ctxs)
    elif len(data.train_rows) < len(data.values):
        held = data.held_out_rows
        valid_feats, valid_ids = feats[held], data.label_ids[held]
    return Features(feats[data.train_rows], data.label_ids[data.train_rows], valid_feats,
                    valid_ids, time.perf_counter() - t_start)


def gather_features(backbone, values, column, index, batch_size, verbose, ctxs, cluster):
    """Features of the training images, on every device and cluster worker.

    In a cluster each worker extracts every ``num_workers``-th image starting
    at its rank, and the rows are gathered through the key-value store (a
    push of each worker's rows, zeros elsewhere, sums to the whole matrix),
    so every worker ends with the same features. This runs before any
    trainer exists: the servers then add pushes up instead of applying an
    optimizer.
    """
    if cluster is None:
        return _data.extract(backbone, values, column, index, batch_size, verbose, ctxs=ctxs)
    nd = mx().nd
    n = len(values)
    rows = np.arange(cluster.rank, n, cluster.num_workers)
    mine = _data.extract(backbone, values[rows], column, index[rows], batch_size,
                         verbose, ctxs=ctxs)
    full = np.zeros((n, _net.num_features(backbone.pooling)), np.float32)
    full[rows] = mine
    key = _GATHER_KEY
    cluster.kvstore.init(key, nd.zeros(full.shape))
    cluster.kvstore.push(key, nd.array(full))
    out = nd.zeros(full.shape)
    cluster.kvstore.pull(key, out=out)
    return out.asnumpy()


#: ``pooling='auto'`` tries the grid only with at least this many training images (below,
#: cross-validation cannot tell the two apart reliably) and at most this many images in
#: all (the two feature sets take 51 KB per image while they are compared).
POOLING_AUTO_MIN_TRAIN = 200
POOLING_AUTO_MAX_IMAGES = 10000
#: Folds of the comparison, and the most training rows it uses (a random subset beyond).
POOLING_FOLDS = 3
POOLING_CV_ROWS = 3000
#: The grid is chosen when its cross-validated accuracy is higher by at least this much:
#: it has 9x the classifier's weights and gives up the average's translation invariance.
POOLING_MARGIN = 0.01


def pooling_trial(settings, data, resume=None):
    """The pooling to extract features with: the user's, or for ``'auto'`` either the
    checkpoint's (when resuming), ``'avg'`` (deep features, fewer than
    :data:`POOLING_AUTO_MIN_TRAIN` training or more than
    :data:`POOLING_AUTO_MAX_IMAGES` images) or ``'avg+grid'``, which
    :func:`choose_pooling` then decides between."""
    if settings.pooling != "auto":
        return settings.pooling
    if resume is not None:
        return resume.config.get("pooling", _net.DEFAULT_POOLING)
    n_train = len(data.train_rows)
    if settings.input_kind == _data.DEEP_FEATURES:
        return _net.DEFAULT_POOLING
    if n_train < POOLING_AUTO_MIN_TRAIN or len(data.values) > POOLING_AUTO_MAX_IMAGES:
        say(f"pooling='auto': global average ({n_train} training images; the grid is tried "
            f"from {POOLING_AUTO_MIN_TRAIN} to {POOLING_AUTO_MAX_IMAGES} images). Pass "
            "pooling='grid' to use it anyway.", settings.verbose)
        return _net.DEFAULT_POOLING
    return "avg+grid"


def choose_pooling(trial, train, train_ids, valid, settings, num_classes, class_weights=None):
    """``(pooling, train, valid)``: the pooling and the features of its columns.

    For ``trial == 'avg+grid'`` (both feature sets side by side) the
    classifier is cross-validated on each (:data:`POOLING_FOLDS` folds of at most
    :data:`POOLING_CV_ROWS` training rows, drawn from the run's seed, with the
    run's settings) and the grid is kept when it is more accurate by at least
    :data:`POOLING_MARGIN`. Validation images are not used: they judge the
    fine-tune path afterwards. Deterministic, so cluster workers agree.
    """
    if trial != "avg+grid":
        return trial, train, valid
    split = _net.num_features("avg")
    rng = np.random.RandomState([settings.random_seed, 2])
    rows = rng.permutation(len(train))[:POOLING_CV_ROWS]
    folds = np.array_split(rows, POOLING_FOLDS)
    correct = {"avg": 0, "grid": 0}
    say(f"pooling='auto': comparing global-average and grid features ({POOLING_FOLDS}-fold "
        f"cross-validation on {len(rows)} training images)...", settings.verbose)
    for k, test in enumerate(folds):
        fit_rows = np.concatenate([f for j, f in enumerate(folds) if j != k])
        for name, cols in (("avg", slice(None, split)), ("grid", slice(split, None))):
            w, b, _ = fit_classifier(train[fit_rows, cols], train_ids[fit_rows], None, None,
                                     num_classes, settings.l2_penalty, settings.max_iterations,
                                     False, l1_penalty=settings.l1_penalty,
                                     class_weights=class_weights,
                                     feature_rescaling=settings.feature_rescaling,
                                     convergence_threshold=settings.convergence_threshold)
            pred = (train[test, cols] @ w.T + b).argmax(axis=1)
            correct[name] += int((pred == train_ids[test]).sum())
    acc = {k: v / max(1, len(rows)) for k, v in correct.items()}
    pooling = "grid" if acc["grid"] >= acc["avg"] + POOLING_MARGIN else "avg"
    say(f"pooling='auto': {pooling!r} (cross-validated accuracy: global average "
        f"{acc['avg']:.4f}, grid {acc['grid']:.4f}).", settings.verbose)
    cols = slice(None, split) if pooling == "avg" else slice(split, None)
    return (pooling, np.ascontiguousarray(train[:, cols]),
            None if valid is None else np.ascontiguousarray(valid[:, cols]))


def validation_config(validation_set, valid_feats, valid_ids):
    """How validation was chosen, for comparing a resumed run's settings."""
    if validation_set is None or isinstance(validation_set, str):
        return validation_set
    if valid_feats is None:
        return "dataframe (no usable rows)"
    return "dataframe " + _checkpoint.fingerprint(np.round(valid_feats, 3), valid_ids)[:16]


def fit_classifier(X, y, Xv, yv, num_classes, l2_penalty, max_iterations, verbose,
                   snapshots=None, resume=None, l1_penalty=0.0, class_weights=None,
                   feature_rescaling=True, convergence_threshold=None):
    """Softmax regression, full-batch Adam in mxnet.

    Minimises ``sum_i(c_i * log loss_i) / n + l2_penalty * ||W||^2 + l1_penalty *
    ||W||_1`` (``c_i`` the weight of row i's class in ``class_weights``, 1 without;
    the L1 term by its subgradient, so small weights shrink towards 0 but are not
    set to exactly 0). The weights act on standardised features (mean 0, standard
    deviation 1 over the training rows) when ``feature_rescaling``, else on the raw
    features. Starts from zeros, so it is deterministic. ``convergence_threshold``:
    stop after the first step that changed the objective by less than this (up
    or down: Adam's objective is not monotone); ``None`` runs all
    ``max_iterations`` steps. Returns ``(weight,
    bias, log)``: the weights acting on *raw* features (the standardisation
    folded in) and the final metrics (``training_iterations``: the steps taken).

    It runs on the first configured device only: it takes about a second,
    and splitting the rows between devices would only change the rounding of
    the summed gradient, which Adam magnifies for near-constant features (seen:
    probabilities 1.7e-4 apart on two CPU devices). Feature extraction, the
    expensive part, uses every device. A cluster does not take part here:
    every worker holds all the features (see :func:`gather_features`) and
    computes the same deterministic steps.
    ``snapshots``: :class:`Snapshots` (begun) to write checkpoints with;
    ``resume``: a :class:`toolkit._checkpoint.Checkpoint` to continue from.
    """
    nd = mx().nd
    if feature_rescaling:
        mean = X.mean(axis=0, dtype=np.float64)
        std = np.sqrt(X.var(axis=0, dtype=np.float64) + _STD_EPSILON)
    else:
        mean, std = np.zeros(X.shape[1]), np.ones(X.shape[1])
    Xvs = nd.array(((Xv - mean) / std).astype(np.float32)) if Xv is not None else None
    dense, run, first = _training_layer(num_classes, X.shape[1], resume, verbose)
    ctx0 = run.ctxs[0]
    Xs = nd.array(((X - mean) / std).astype(np.float32), ctx=ctx0)
    yn = nd.array(y.astype(np.float32), ctx=ctx0)
    penalties = _Penalties(l2_penalty, l1_penalty,
                           None if class_weights is None
                           else nd.array(np.asarray(class_weights, np.float32), ctx=ctx0))
    # The convergence test carries over a resumed checkpoint: its last objective, and
    # whether the interrupted run had already stopped.
    previous = stopped = None
    if resume is not None and convergence_threshold is not None:
        previous = resume.extra.get("objective")
        stopped = resume.extra.get("stopped_at")
    done = stopped if stopped is not None else first - 1

    cols = ["Iteration", "Train Accuracy", "Train Loss"]
    if Xvs is not None:
        cols += ["Validation Accuracy", "Validation Loss"]
    table = ProgressTable(cols + ["Elapsed Time"], verbose)
    table.start()
    report_every = max(1, max_iterations // 10)

    def contents():
        return (_net.classifier_weights(*_folded(dense, ctx0, mean, std)),
                _training.optimizer_arrays(run),
                {_net.CHECKPOINT_WEIGHT: dense.weight.data(ctx0).asnumpy(),
                 _net.CHECKPOINT_BIAS: dense.bias.data(ctx0).asnumpy()})

    def extra():
        if convergence_threshold is None:
            return None
        return {"objective": previous, "stopped_at": stopped}

    for it in range(first, max_iterations + 1 if stopped is None else first):
        total_loss, correct, objective = _step(dense, run, Xs, yn, penalties)
        if convergence_threshold is not None and previous is not None \
                and abs(previous - objective) < convergence_threshold:
            # The last step changed the objective by less than the threshold: stop
            # before this one is applied; the model is the one after step it - 1.
            # (Adam's objective is not monotone: a rise larger than the threshold
            # is an oscillation, not convergence, so training goes on.)
            stopped = done = it - 1
            for p in dense.collect_params().values():
                p.zero_grad()
            table.row(*([it - 1, correct / len(X), max(total_loss / len(X), 0.0)]
                        + (list(_evaluate(dense, ctx0, Xvs, yv)) if Xvs is not None else [])),
                      f"{table.elapsed():.1f}")
            say(f"Converged after {done} iterations: the objective changed by "
                f"{objective - previous:+.2e} in the last one, less than "
                f"convergence_threshold={convergence_threshold:g}.", verbose)
            if snapshots is not None:
                snapshots.write_if_due(done, done, contents, extra=extra())
            break
        run.trainer.step(1)
        for p in dense.collect_params().values():
            p.zero_grad()
        previous, done = objective, it
        if it == 1 or it % report_every == 0 or it == max_iterations:
            row = [it, correct / len(X), max(total_loss / len(X), 0.0)]
            if Xvs is not None:
                row += list(_evaluate(dense, ctx0, Xvs, yv))
            table.row(*row, f"{table.elapsed():.1f}")
        if snapshots is not None:
            snapshots.write_if_due(it, max_iterations, contents, extra=extra())
    table.finish()
    train_acc, train_loss = _evaluate(dense, ctx0, Xs, y)
    log = {"training_iterations": int(done),
           "training_accuracy": round(train_acc, 6), "training_loss": round(train_loss, 6),
           "validation_accuracy": None, "validation_loss": None}
    if Xvs is not None:
        vacc, vloss = _evaluate(dense, ctx0, Xvs, yv)
        log.update(validation_accuracy=round(vacc, 6), validation_loss=round(vloss, 6))
    w_raw, b_raw = _folded(dense, ctx0, mean, std)
    return w_raw, b_raw, log


#: The terms of the objective besides the mean log loss: ``l2``, ``l1`` (floats) and
#: ``class_weights`` (an NDArray of one weight per class, or None).
_Penalties = namedtuple("_Penalties", "l2 l1 class_weights")


def _training_layer(num_classes, num_features, resume, verbose):
    """``(dense, run, first_iteration)``: the layer trained on standardised features.

    Zeros, or the resumed checkpoint's layer and optimizer state. Gradients
    accumulate (``grad_req='add'``) over the chunks of the full batch.
    """
    nd = mx().nd
    dense = mx().gluon.nn.Dense(num_classes, in_units=num_features, prefix="train_classifier_")
    dense.initialize(mx().init.Zero())
    if resume is not None:
        dense.weight.set_data(nd.array(resume.array(_net.CHECKPOINT_WEIGHT)))
        dense.bias.set_data(nd.array(resume.array(_net.CHECKPOINT_BIAS)))
    run = _training.setup(dense, "adam", {"learning_rate": _LEARNING_RATE}, use_cluster=False,
                          ctxs=config.contexts()[:1])
    for p in dense.collect_params().values():
        p.grad_req = "add"
    first = 1
    if resume is not None:
        _training.restore_optimizer(run, resume.extra.get("optimizer"),
                                    resume.arrays_under(_OPTIMIZER))
        resume.check_all_used()
        first = int(resume.position["iteration"]) + 1
        say(resume.describe(), verbose)
    return dense, run, first


def _step(dense, run, Xs, yn, penalties):
    """Gradients of the full-batch objective at the current weights (not applied).

    Returns ``(summed log loss, correct count, objective)`` at those weights; the
    caller applies the step (``run.trainer.step(1)``) or, when training has
    converged, drops it.
    """
    autograd, nd = mx().autograd, mx().nd
    n = Xs.shape[0]
    ctx0 = run.ctxs[0]
    total_loss = correct = objective = 0.0
    for s in range(0, n, _GRAD_CHUNK):
        # mxnet 1.5 refuses an NDArray slice that ends past the array: clamp.
        e = min(s + _GRAD_CHUNK, n)
        xb, yb = Xs[s:e], yn[s:e]
        with autograd.record():
            logits = dense(xb)
            nll = -nd.pick(nd.log_softmax(logits, axis=-1), yb, axis=-1)
            if penalties.class_weights is None:
                loss = nll.sum() / n
            else:
                loss = (nll * nd.take(penalties.class_weights, yb)).sum() / n
            if s == 0 and penalties.l2 > 0:
                loss = loss + penalties.l2 * (dense.weight.data(ctx0) ** 2).sum()
            if s == 0 and penalties.l1 > 0:
                loss = loss + penalties.l1 * nd.abs(dense.weight.data(ctx0)).sum()
        loss.backward()
        objective += float(loss.asscalar())
        total_loss += float(nll.sum().asscalar())
        correct += float((logits.argmax(axis=-1) == yb).sum().asscalar())
    return total_loss, correct, objective


def _evaluate(dense, ctx, data, labels):
    """``(accuracy, mean log loss)`` of the layer on standardised features."""
    nd = mx().nd
    logp = nd.log_softmax(dense(data.as_in_context(ctx)), axis=-1).asnumpy()
    return (float(np.mean(logp.argmax(axis=1) == labels)),
            max(float(-np.mean(logp[np.arange(len(labels)), labels])), 0.0))


def _folded(dense, ctx, mean, std):
    """The dense layer's weights acting on raw features (standardisation folded in)."""
    w = dense.weight.data(ctx).asnumpy().astype(np.float64)
    b = dense.bias.data(ctx).asnumpy().astype(np.float64)
    w_raw = w / std
    b_raw = b - w_raw @ mean
    return w_raw.astype(np.float32), b_raw.astype(np.float32)


# --- the fine-tune path -------------------------------------------------------

#: Adam's learning rate for the trained blocks and the (warm-started) classifier: small,
#: so that the ImageNet weights move little. Measured on 500 MNIST digits downscaled to
#: 8x8 (8 epochs, 500 test images): 1e-3 -> 0.840, 3e-4 -> 0.850, frozen 0.866.
_FT_LEARNING_RATE = 1e-4
#: Images per optimizer step of the fine-tune path.
_FT_BATCH = 32
#: Images per forward pass when running the trained tail over cached activations.
_TAIL_CHUNK = 128


def use_finetune(settings, data, cluster, resume=None):
    """Whether ``create`` takes the fine-tune path (``settings.fine_tune``: options).

    ``True``: always, except in a parameter-server cluster (refused: the path
    trains on every worker's cached activations, which are not gathered).
    ``'auto'``: only where validation can show that fine-tuning pays: at least
    :data:`._finetune.MIN_AUTO_TRAIN` training and :data:`._finetune.MIN_AUTO_VALID`
    validation images and no cluster; the path then compares fine-tuned and
    frozen validation accuracy at its end. When resuming, the checkpoint's path.
    """
    from ..errors import InvalidParameterError
    mode = settings.fine_tune.mode
    if mode is True and cluster is not None:
        raise InvalidParameterError(
            "fine_tune=True is not supported in a parameter-server cluster (each worker "
            "would fine-tune on its own share of the images). Use fine_tune=False or 'auto' "
            "(frozen features) in a cluster, or train on one machine.")
    deep = settings.input_kind == _data.DEEP_FEATURES
    if mode is True and deep:
        raise InvalidParameterError(
            f"fine_tune=True needs images, but '{settings.feature}' holds deep features "
            "(the network's output, which cannot be fine-tuned). Train on the image column, "
            "or use fine_tune=False.")
    if mode != "auto":
        return bool(mode)
    if deep:
        return False
    if cluster is not None:
        say("fine_tune='auto': frozen features (the fine-tune path does not run in a "
            "cluster).", settings.verbose)
        return False
    if resume is not None:
        return resume.config.get("training_path") == "fine_tune"
    n_valid = len(data.valid[0]) if data.valid is not None else \
        len(data.values) - len(data.train_rows)
    n_train = len(data.train_rows)
    if n_train >= _finetune.MIN_AUTO_TRAIN and n_valid >= _finetune.MIN_AUTO_VALID:
        return True
    say(f"fine_tune='auto': frozen features ({n_train} training and {n_valid} validation "
        f"images; fine-tuning is tried from {_finetune.MIN_AUTO_TRAIN} and "
        f"{_finetune.MIN_AUTO_VALID}). Pass fine_tune=True to fine-tune anyway.",
        settings.verbose)
    return False


def _tail_features(tail, maps, ctx):
    nd = mx().nd
    out = [tail(nd.array(maps[s:s + _TAIL_CHUNK], ctx=ctx)).asnumpy()
           for s in range(0, len(maps), _TAIL_CHUNK)]
    return np.concatenate(out)      # never empty: every run has training images


def _accuracy(net, maps, labels, ctx):
    """``(accuracy, mean log loss)`` of the train net (logits) on cached activations."""
    nd = mx().nd
    logp = np.concatenate([nd.log_softmax(net(nd.array(maps[s:s + _TAIL_CHUNK], ctx=ctx)),
                                          axis=-1).asnumpy()
                           for s in range(0, len(maps), _TAIL_CHUNK)])
    return (float(np.mean(logp.argmax(axis=1) == labels)),
            max(float(-np.mean(logp[np.arange(len(labels)), labels])), 0.0))


def train_finetune(backbone, data, settings, ctxs, cluster, snapshots=None, resume=None):
    """Fine-tune the last block(s) of the backbone with the classifier (see :mod:`._finetune`).

    1. The frozen front (stem .. the first trained block) runs once over the
       training and validation images; its activations are kept in memory.
    2. The frozen path's classifier is fitted on the tail's features of those
       activations (:func:`fit_classifier`, seconds): the warm start, and the
       frozen validation accuracy ``'auto'`` compares against.
    3. Epochs of Adam (learning rate 1e-4, batches of 32) on the trained
       blocks, the head convolution and the classifier, on augmented
       activations, each batch split over the devices. One iteration is one
       epoch; a checkpoint after an epoch holds every weight, Adam's state and
       the generator's state, so a resumed run equals an uninterrupted one.
    4. ``'auto'`` keeps the fine-tuned weights only when they classify more
       validation images correctly than the frozen ones; otherwise the
       backbone is left as it was and the frozen classifier is returned.

    The backbone is trained in place when the fine-tuned weights are kept.
    Returns ``(weight, bias, results)`` like :func:`train_frozen`; ``results``
    adds ``fine_tuned`` (bool) and ``fine_tune_epochs``.
    """
    from .._mx import get_weights, set_weights
    verbose, opts, ctx0 = settings.verbose, settings.fine_tune, ctxs[0]
    trial = pooling_trial(settings, data, resume)
    fresh = _net.build_backbone(weights=get_weights(backbone, ctx0), pooling=trial)
    if config.off_default(ctxs):
        fresh.collect_params().reset_ctx(ctxs)
    front, tail, cut = _net.split_backbone(fresh, opts.blocks)
    epochs = _finetune_epochs(opts, resume, len(data.train_rows))
    opts = opts._replace(epochs=epochs)

    # 1. The frozen front's activations, once; the pooling ('auto': compared on them).
    say(f"Running the frozen part of {settings.model} (up to block {cut}) over "
        f"{len(data.values)} images on {config.describe(ctxs, cluster)}...", verbose)
    t_start = time.perf_counter()
    maps = _front_activations(front, data, settings, ctxs)
    tail.hybridize()
    feats = _tail_features(tail, maps.train, ctx0)
    valid_feats = None if maps.valid is None else _tail_features(tail, maps.valid, ctx0)
    seconds = time.perf_counter() - t_start
    pooling, feats, valid_feats = choose_pooling(trial, feats, maps.train_ids, valid_feats,
                                                 settings, len(data.classes))
    _net.set_pooling(fresh, pooling)
    tail._clear_cached_op()

    # 2. The frozen classifier: warm start and the baseline of 'auto'.
    say("Training the classifier on the frozen features (warm start)...", verbose)
    w0, b0, frozen_log = fit_classifier(feats, maps.train_ids, valid_feats, maps.valid_ids,
                                        len(data.classes), settings.l2_penalty,
                                        settings.max_iterations, verbose)
    frozen_log.update(pooling=pooling, num_features=_net.num_features(pooling))
    run_config = _finetune_config(settings, data, opts, valid_feats, maps.valid_ids, pooling)
    data_fingerprint = None
    if snapshots is not None or resume is not None:
        data_fingerprint = _checkpoint.fingerprint(np.round(feats, 3), maps.train_ids,
                                                   data.classes)
    if resume is not None:
        resume.check_compatible(run_config, data_fingerprint)

    # 3. Fine-tuning.
    dense = _net.build_classifier(len(data.classes), w0, b0)
    net = mx().gluon.nn.HybridSequential(prefix="finetune_")
    net.add(tail, dense)
    params = dict(_net.tail_params(fresh, opts.blocks))
    params[_net.CLASSIFIER_WEIGHT], params[_net.CLASSIFIER_BIAS] = dense.weight, dense.bias
    run = _training.setup(net, "adam", {"learning_rate": _FT_LEARNING_RATE}, params=params,
                          use_cluster=False, ctxs=ctxs)
    net.hybridize()
    rng, first = np.random.RandomState([settings.random_seed, 1]), 1
    if resume is not None:
        rng, first = _finetune_restore(resume, fresh, dense, run, verbose)
    if snapshots is not None:
        snapshots.state.update(fine_tuned=True, fine_tune_epochs=epochs, pooling=pooling,
                               num_features=_net.num_features(pooling))
        snapshots.begin(run_config, data_fingerprint, {})

    def contents():
        weights = dict(_net.backbone_weights(fresh, ctx0), **_net.classifier_weights(
            dense.weight.data(ctx0).asnumpy(), dense.bias.data(ctx0).asnumpy()))
        return weights, _training.optimizer_arrays(run), {}

    say(f"Fine-tuning the last {opts.blocks} block(s), the head and the classifier for "
        f"{epochs} epochs (augmentation: " + (", ".join(
            k for k in ("crop", "flip", "jitter") if getattr(opts, k)) or "none") + ")...",
        verbose)
    cols = ["Epoch", "Train Accuracy", "Train Loss"]
    if maps.valid is not None:
        cols += ["Validation Accuracy", "Validation Loss"]
    table = ProgressTable(cols + ["Elapsed Time"], verbose)
    table.start()
    for epoch in range(first, epochs + 1):
        correct, total_loss = _finetune_epoch(net, run, maps.train, maps.train_ids, opts, rng,
                                              ctxs)
        n = len(maps.train)
        row = [epoch, correct / n, total_loss / n]
        if maps.valid is not None:
            row += list(_accuracy(net, maps.valid, maps.valid_ids, ctx0))
        table.row(*row, f"{table.elapsed():.1f}")
        if snapshots is not None:
            snapshots.write_if_due(epoch, epochs, contents, rng=rng)
    table.finish()

    # 4. Keep or drop the fine-tuned weights.
    results = _finetune_results(net, maps, frozen_log, seconds, epochs, ctx0)
    _net.set_pooling(backbone, pooling)
    if not _keep_finetuned(settings, results, frozen_log, maps):
        frozen_log.update(num_validation_examples=results["num_validation_examples"],
                          feature_extraction_time=results["feature_extraction_time"],
                          fine_tuned=False, fine_tune_epochs=int(epochs))
        _efficientnet_prepare(backbone, settings.batch_size, len(data.values))
        return w0, b0, frozen_log
    set_weights(backbone, get_weights(fresh, ctx0), what="fine-tuned backbone")
    # The backbone's compiled graph was built for the old weights: build it again.
    _efficientnet_prepare(backbone, settings.batch_size, len(data.values))
    return (dense.weight.data(ctx0).asnumpy(), dense.bias.data(ctx0).asnumpy(), results)


def _finetune_epochs(opts, resume, num_train):
    """Epochs of the fine-tune path: the option, else the checkpoint's when resuming,
    else :func:`._finetune.auto_epochs`."""
    epochs = opts.epochs
    if epochs is None and resume is not None:     # automatic: the checkpoint's
        epochs = (resume.setting("fine_tune") or {}).get("epochs")
    return int(epochs or _finetune.auto_epochs(num_train))


#: The frozen front's activations of the training and validation images, with labels.
_Maps = namedtuple("_Maps", "train train_ids valid valid_ids")


def _front_activations(front, data, settings, ctxs):
    """Run the frozen front once over the images: a :data:`_Maps`."""
    _efficientnet_prepare(front, settings.batch_size, len(data.values))
    maps = _data.extract(front, data.values, settings.feature, data.index,
                         settings.batch_size, settings.verbose, ctxs=ctxs)
    valid_maps = valid_ids = None
    if data.valid is not None and len(data.valid[0]):
        valid_values, valid_ids, valid_index = data.valid
        valid_maps = _data.extract(front, valid_values, settings.feature, valid_index,
                                   settings.batch_size, settings.verbose, ctxs=ctxs)
    elif len(data.train_rows) < len(data.values):
        held = data.held_out_rows
        valid_maps, valid_ids = maps[held], data.label_ids[held]
    return _Maps(maps[data.train_rows], data.label_ids[data.train_rows], valid_maps, valid_ids)


def _finetune_config(settings, data, opts, valid_feats, valid_ids, pooling):
    """The settings a resumed fine-tune run must share with its checkpoint."""
    config_ = {} if pooling == _net.DEFAULT_POOLING else {"pooling": pooling}
    return {**config_, "target": settings.target, "feature": settings.feature,
            "classes": data.classes, "model": settings.model,
            "l2_penalty": settings.l2_penalty, "max_iterations": settings.max_iterations,
            "random_seed": settings.random_seed, "training_path": "fine_tune",
            "fine_tune": _finetune.as_config(opts),
            "validation_set": validation_config(settings.validation_set, valid_feats,
                                                valid_ids)}


def _finetune_restore(resume, fresh, dense, run, verbose):
    """A checkpoint's weights and optimizer state; returns (generator, first epoch)."""
    from .._mx import set_weights
    stored = resume.weights
    set_weights(fresh, {k[len(_net.BACKBONE_PREFIX):]: v for k, v in stored.items()
                        if k.startswith(_net.BACKBONE_PREFIX)}, what="checkpoint backbone")
    set_weights(dense, {"weight": stored[_net.CLASSIFIER_WEIGHT],
                        "bias": stored[_net.CLASSIFIER_BIAS]}, what="checkpoint classifier")
    _training.restore_optimizer(run, resume.extra.get("optimizer"),
                                resume.arrays_under(_OPTIMIZER))
    resume.check_all_used()
    say(resume.describe(), verbose)
    return resume.rng(), int(resume.position["iteration"]) + 1


def _finetune_epoch(net, run, train_maps, train_ids, opts, rng, ctxs):
    """One epoch of Adam on augmented activations; returns (correct, summed loss)."""
    autograd, nd = mx().autograd, mx().nd
    n = len(train_maps)
    order = rng.permutation(n)
    total_loss = correct = 0.0
    for s in range(0, n, _FT_BATCH):
        idx = order[s:s + _FT_BATCH]
        x = _finetune.augment(train_maps[idx], opts, rng)
        y = train_ids[idx].astype(np.float32)
        dealt = _training.split(np.arange(len(idx)), 1, len(ctxs))
        losses, outs = [], []
        # BatchNorm: running statistics in the forward and the backward pass (see
        # _net.split_backbone); train_mode=False as well, so nothing updates them.
        with autograd.record(train_mode=False):
            for ctx, groups in zip(ctxs, dealt):
                p = np.concatenate(groups) if groups else np.arange(1)
                logits = net(nd.array(x[p], ctx=ctx))
                nll = -nd.pick(nd.log_softmax(logits, axis=-1), nd.array(y[p], ctx=ctx),
                               axis=-1)
                loss = nll.sum() / len(idx)
                losses.append(loss if groups else loss * 0.0)
                outs.append((groups, logits, nll, p))
        autograd.backward(losses)
        run.trainer.step(1)
        for groups, logits, nll, p in outs:
            if groups:
                total_loss += float(nll.sum().asscalar())
                correct += float((logits.argmax(axis=-1).asnumpy() == y[p]).sum())
    return correct, total_loss


def _finetune_results(net, maps, frozen_log, seconds, epochs, ctx0):
    """The fine-tuned model's training log (the state fields the path fills in)."""
    train_acc, train_loss = _accuracy(net, maps.train, maps.train_ids, ctx0)
    results = {"training_iterations": frozen_log["training_iterations"],
               "training_accuracy": round(train_acc, 6), "training_loss": round(train_loss, 6),
               "validation_accuracy": None, "validation_loss": None,
               "num_validation_examples": int(0 if maps.valid is None else len(maps.valid)),
               "feature_extraction_time": round(seconds, 3),
               "fine_tuned": True, "fine_tune_epochs": int(epochs),
               "pooling": frozen_log["pooling"], "num_features": frozen_log["num_features"]}
    if maps.valid is not None:
        vacc, vloss = _accuracy(net, maps.valid, maps.valid_ids, ctx0)
        results.update(validation_accuracy=round(vacc, 6), validation_loss=round(vloss, 6))
    return results


def _keep_finetuned(settings, results, frozen_log, maps):
    """Whether to keep the fine-tuned weights: always, except that ``'auto'`` keeps them
    only when they classify more validation images correctly than the frozen ones."""
    if maps.valid is None:
        return True
    vacc, frozen_acc = results["validation_accuracy"], frozen_log["validation_accuracy"]
    gained = int(round((vacc - frozen_acc) * len(maps.valid_ids)))
    if settings.fine_tune.mode == "auto" and gained <= 0:
        say(f"fine_tune='auto': kept the frozen backbone (validation accuracy "
            f"{frozen_acc:.4f} frozen, {vacc:.4f} fine-tuned).", settings.verbose)
        return False
    say(f"fine_tune={settings.fine_tune.mode!r}: using the fine-tuned backbone "
        f"(validation accuracy {vacc:.4f}, frozen {frozen_acc:.4f}).", settings.verbose)
    return True


def _efficientnet_prepare(block, batch_size, num_images):
    """Hybridize ``block`` (a fresh compiled graph) for inference on sub-batches."""
    block._clear_cached_op()
    _net.prepare_backbone(block, batch_size, num_images)


# --- checkpoints --------------------------------------------------------------

class Snapshots:
    """The checkpoints of one training run: when to write one, and what it holds.

    A checkpoint is a model file (``tc.load_model`` reads it) of the model so
    far: the ``state`` given here (what ``create`` knows before training) and
    every weight under its model-file name. It also holds what resuming needs:
    the iteration, the run's settings, the data's fingerprint and the arrays
    of the training path (its optimizer's state, its own layers).

    The training path calls :meth:`begin` once before its first iteration and
    :meth:`write_if_due` after each.
    """

    def __init__(self, path, every, task, file_version, state):
        self.path, self.every = path, every
        self.task, self.file_version, self.state = task, file_version, dict(state)
        self.schedule = self.run_config = self.data_fingerprint = None
        self.fixed_weights = {}

    def begin(self, run_config, data_fingerprint, fixed_weights):
        """Start the schedule's clock; ``fixed_weights``: weights training leaves alone."""
        self.run_config, self.data_fingerprint = run_config, data_fingerprint
        self.fixed_weights = fixed_weights
        self.schedule = _checkpoint.Schedule(self.path, self.every, config.is_writer())

    def write_if_due(self, iteration, max_iterations, contents, rng=None, extra=None):
        """Write after ``iteration`` when due; ``contents()`` -> ``(weights, optimizer, arrays)``.

        ``weights``: the trained weights under model-file names; ``optimizer``:
        :func:`toolkit._training.optimizer_arrays`; ``arrays``: more arrays to
        resume from. Called only when a checkpoint is written. ``rng``: the numpy
        generator whose state a resumed run continues from; ``extra``: more JSON for the
        checkpoint's ``extra`` (e.g. the convergence test's state).
        """
        if self.schedule.due(iteration, final=(iteration == max_iterations)):
            self.schedule.write(lambda: self._snapshot(iteration, max_iterations, *contents(),
                                                       rng=rng, extra=extra))

    def _snapshot(self, iteration, max_iterations, weights, optimizer, arrays, rng=None,
                  extra=None):
        meta, opt = optimizer
        arrays = dict(arrays, **{f"{_OPTIMIZER}/{k}": v for k, v in opt.items()})
        return dict(task=self.task, file_version=self.file_version, state=self.state,
                    weights=dict(self.fixed_weights, **weights),
                    position={"iteration": iteration, "max_iterations": max_iterations},
                    config=self.run_config, data_fingerprint=self.data_fingerprint,
                    rng=rng, extra=dict(extra or {}, optimizer=meta), arrays=arrays)
