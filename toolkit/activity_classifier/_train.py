"""Training of the activity classifier: the loss graph, augmentation, weight averaging.

The recipe was chosen by measurement on the seglearn watch data (train subjects 1-6,
test subjects 7-10, per-row accuracy, 5-10 seeds each; see
benchmarks/activity_classifier.py):

* features standardised with the training data's mean/std (done by ``create``);
* every epoch, each training session is cut into windows at a random offset in
  ``[0, prediction_window)`` and each of its channels is scaled by a random factor
  ``exp(N(0, 0.3))`` (a sensor's gain and a person's amplitude vary);
* chunks are shuffled every epoch (Turi Create did not; on class-sorted data its
  BatchNorm statistics followed the last batches and accuracy collapsed);
* Adam, learning rate 1e-3, weighted cross-entropy over the real windows;
* the returned weights are the running average of the weights after each epoch of
  the second half of training. On this data picking the "best" epoch by a
  validation set of 8 sessions was noisy and averaging generalised better;
* batch norm's running statistics of the returned model are estimated once, at
  the end, from the averaged weights on the (unaugmented) training windows.

Devices and reproducibility
---------------------------
A step must compute the same thing whether one device, several, or several
cluster workers share its batch (toolkit.config). Two parts of the network
depend on the batch, so both are defined independently of who computes what:

* dropout masks are drawn with numpy from the run's seeded generator, for the
  whole global batch, and passed into the loss graph;
* batch norm normalises groups of ``BN_GROUP`` consecutive chunks of the
  (shuffled) batch with the group's own statistics ("ghost" batch norm), and a
  batch is dealt to devices and workers in whole groups
  (toolkit._training.split).

Gradients are divided by the weight of the whole global batch on every
device and summed by the trainer's key-value store, so the update equals one
device's up to float rounding (tests: 1e-5). Because every random draw comes
from the numpy generator and its state is saved, a run resumed from a
checkpoint continues exactly where it stopped.

Group size, measured with create()'s defaults (per-row accuracy on subjects
7-10): one group per batch of 32 (standard batch norm, which cannot be split
between devices) 0.810 [0.794, 0.826] over seeds 0-7; groups of 16 0.811
[0.772, 0.834] over the same seeds; groups of 8 0.801 and of 4 0.801 over
seeds 0-2 (0.811 for 32 on those). 16 keeps the accuracy and lets two devices
share the default batch.

Measured with this loop and create()'s defaults (180 epochs there), mean [min, max]
over seeds 0-2, per-row accuracy on subjects 7-10: 0.811 [0.801, 0.821], against
0.800 [0.794, 0.813] for seglearn's segment + features + random forest on the same
split, run side by side (benchmarks/activity_classifier.py). For comparison, from the
exploration that led here (an earlier version of this loop): Turi Create's recipe
about 0.69; standardisation and random offsets with the best validation epoch, 30
epochs, 0.77 (one seed); averaging, 90 epochs, 0.790 [0.754, 0.809] (5 seeds); plus
channel gains, 120 epochs, 0.797 [0.750, 0.830] (10 seeds); 240 epochs, no validation
split, 0.811 [0.790, 0.831] (10 seeds) against 0.783 [0.758, 0.801] without the channel
gains and 0.791 [0.753, 0.831] with the last epoch's weights instead of the average.
Not kept because they did not beat this within the seeds' spread there: gaussian
noise (0.05), filling chunk padding with the session's own rows, averaging only the
last quarter, batch 16, learning rate 2e-3.
"""

import contextlib
import math
import warnings

import numpy as np

from .. import _training
from .._mx import get_weights, mx, pack, stored_shapes, structural_params, unpack
from .._progress import ProgressTable, say
from . import _data, _net

LEARNING_RATE = 1e-3
CHANNEL_SCALE_STD = 0.3
AVERAGE_FROM = 0.5
#: Chunks per batch-norm group (see the module docstring). With the default batch of 32,
#: two devices or workers get a group each; more need a larger batch_size to all work.
BN_GROUP = 16
BN_MOMENTUM = 0.9
DROPOUT_IN, DROPOUT_OUT = 0.2, 0.5
#: ``max_iterations=None`` trains for about this many optimizer steps, in whole epochs,
#: clipped to [MIN_AUTO_ITERATIONS, MAX_AUTO_ITERATIONS].
TARGET_STEPS = 720
MIN_AUTO_ITERATIONS = 10
MAX_AUTO_ITERATIONS = 300
EVAL_BATCH = 256
#: The training table's columns (stored as the model's ``progress``).
PROGRESS_COLUMNS = ("Iteration", "Train Accuracy", "Train Loss", "Validation Accuracy",
                    "Validation Loss", "Elapsed Time")
_T = _data.WINDOWS_PER_CHUNK


def auto_iterations(num_train_chunks, batch_size):
    """Epochs for about TARGET_STEPS steps: small data sets need many passes, large few."""
    steps_per_epoch = max(1, math.ceil(num_train_chunks / batch_size))
    return int(min(MAX_AUTO_ITERATIONS,
                   max(MIN_AUTO_ITERATIONS, math.ceil(TARGET_STEPS / steps_per_epoch))))


def augmented_chunks(values, sessions, label_ids, train_mask, prediction_window,
                     num_classes, rng):
    """One epoch's training chunks: random window offsets and per-channel gains."""
    gains = np.exp(rng.normal(0.0, CHANNEL_SCALE_STD, size=(len(sessions), values.shape[1])))
    offsets = rng.randint(0, prediction_window, size=len(sessions)) \
        * (sessions.lengths > prediction_window)
    return _data.chunk(values, sessions, prediction_window, label_ids, num_classes,
                       offsets=offsets, session_mask=train_mask, gains=gains)


def _dropout_masks(rng, n):
    keep_in = rng.random_sample((n, _T, _net.CONV_FILTERS)) >= DROPOUT_IN
    keep_out = rng.random_sample((n, _T, _net.DENSE_HIDDEN)) >= DROPOUT_OUT
    return ((keep_in / (1.0 - DROPOUT_IN)).astype(np.float32),
            (keep_out / (1.0 - DROPOUT_OUT)).astype(np.float32))


class _Stats:
    """Running batch-norm statistics of training (for validation during training)."""

    def __init__(self, mean, var):
        self.mean, self.var = np.asarray(mean, np.float64), np.asarray(var, np.float64)

    def update(self, s1, s2, count):
        if count <= 0:
            return
        mean = s1 / count
        var = np.maximum(s2 / count - mean ** 2, 0.0)
        self.mean = BN_MOMENTUM * self.mean + (1 - BN_MOMENTUM) * mean
        self.var = BN_MOMENTUM * self.var + (1 - BN_MOMENTUM) * var


def _train_epoch(graphs, run, chunks, batch_size, rng, stats):
    """One shuffled pass of optimizer steps.

    Returns local ``(correct, loss, weight)`` of every step but the last, and the
    last step's outputs, not yet read (:func:`_add_step` adds them): the caller
    prepares the next epoch while mxnet's engine computes that step. ``stats``:
    the running batch-norm statistics to update, or None to keep none.
    """
    nd, autograd = mx().nd, mx().autograd
    loss = graphs.loss if stats is not None else graphs.loss_only
    n = len(chunks["data"])
    order = rng.permutation(n)
    totals = (0.0, 0.0, 0.0)
    pending = None
    mine = run.my_slots()
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        mask_in, mask_out = _dropout_masks(rng, len(idx))
        wsum = max(float(chunks["weights"][idx].sum()), 1e-5)
        dealt = _training.split(np.arange(len(idx)), BN_GROUP, run.slots)
        heads, outs = [], []
        with autograd.record():
            for ctx, slot in zip(run.ctxs, mine):
                groups = dealt[slot]
                if groups:
                    pos = np.concatenate(groups)
                    sel = idx[pos]
                    data, lab, w = chunks["data"][sel], chunks["labels"][sel], \
                        chunks["weights"][sel]
                    mi, mo = mask_in[pos], mask_out[pos]
                else:
                    # A device without a share this step still contributes (zero)
                    # gradients, so every copy of the weights takes the same update.
                    data = np.zeros((1,) + chunks["data"].shape[1:], np.float32)
                    lab = np.zeros((1, _T), np.float32)
                    w = np.zeros((1, _T), np.float32)
                    mi, mo = mask_in[:1], mask_out[:1]
                h, c = _net.zero_states(len(data), ctx)
                out = loss(nd.array(data, ctx=ctx), h, c, nd.array(lab, ctx=ctx),
                           nd.array(w, ctx=ctx), nd.array(mi, ctx=ctx), nd.array(mo, ctx=ctx),
                           BN_GROUP)
                # The sums read later are made now: an operation made when reading
                # would queue behind this step's backward pass and wait for it.
                loss_sum = out[0].sum()
                heads.append(loss_sum / wsum)
                outs.append(((loss_sum, out[1].sum()) + tuple(out[2:]), float(w.sum()),
                             len(data) if groups else 0))
        autograd.backward(heads)
        run.trainer.step(1)
        # The previous step's metrics are read only now, after this step is queued:
        # reading them waits for mxnet's engine, and waiting before preparing the next
        # batch (masks, copies) kept the engine idle meanwhile. Same values, same order.
        if pending is not None:
            totals = _add_step(pending, totals, stats)
        pending = outs
    return totals, pending


def _add_step(outs, totals, stats):
    """``totals`` (correct, loss, weight) plus one step's, and its batch-norm statistics
    folded into ``stats``."""
    if outs is None:
        return totals
    tot_correct, tot_loss, tot_weight = totals
    s1_all = s2_all = 0.0
    count = 0
    for out, wl, nl in outs:
        tot_loss += float(out[0].asscalar())
        tot_correct += float(out[1].asscalar())
        tot_weight += wl
        if nl and stats is not None:
            s1_all = s1_all + out[2].asnumpy().astype(np.float64)
            s2_all = s2_all + out[3].asnumpy().astype(np.float64)
            count += nl * _T
    if stats is not None:
        stats.update(s1_all, s2_all, count)
    return tot_correct, tot_loss, tot_weight


def evaluate_chunks(graphs, chunks, bn_mean, bn_var, ctx=None):
    """(accuracy, log loss) per real window of ``chunks``, as the prediction graph has them.

    Batch norm uses the given statistics and dropout is off (all-ones masks),
    so this computes what prediction does, but mxnet runs it in *training*
    mode: in inference mode MKL-DNN may move weights into its own memory layout,
    and a parameter-server worker's next pull of the weights then fails
    ("Check failed: to.IsDefaultData()").
    """
    nd, autograd = mx().nd, mx().autograd
    ctx = ctx or mx().cpu()
    mean = nd.array(np.asarray(bn_mean, np.float32), ctx=ctx)
    var = nd.array(np.asarray(bn_var, np.float32), ctx=ctx)
    tot_loss = tot_correct = tot_weight = 0.0
    for i in range(0, len(chunks["data"]), EVAL_BATCH):
        sl = slice(i, i + EVAL_BATCH)
        w_np = chunks["weights"][sl]
        n = len(w_np)
        h, c = _net.zero_states(n, ctx)
        with autograd.train_mode():
            nll, correct = graphs.eval(
                nd.array(chunks["data"][sl], ctx=ctx), h, c,
                nd.array(chunks["labels"][sl], ctx=ctx), nd.array(w_np, ctx=ctx), mean, var,
                nd.ones((n, _T, _net.CONV_FILTERS), ctx=ctx),
                nd.ones((n, _T, _net.DENSE_HIDDEN), ctx=ctx))
        tot_loss += float(nll.sum().asscalar())
        tot_correct += float(correct.sum().asscalar())
        tot_weight += float(w_np.sum())
    tot_weight = max(tot_weight, 1e-5)
    return tot_correct / tot_weight, tot_loss / tot_weight


def estimate_bn(graphs, chunks):
    """Mean and variance of the dense layer's outputs over the real windows of ``chunks``."""
    nd = mx().nd
    s1 = s2 = 0.0
    count = 0.0
    for i in range(0, len(chunks["data"]), EVAL_BATCH):
        sl = slice(i, i + EVAL_BATCH)
        w = chunks["weights"][sl]
        h, c = _net.zero_states(len(w))
        z = graphs.trunk(nd.array(chunks["data"][sl]), h, c).asnumpy().astype(np.float64)
        z = z[w > 0]
        s1 = s1 + z.sum(axis=0)
        s2 = s2 + (z ** 2).sum(axis=0)
        count += len(z)
    if count == 0:
        return None
    mean = s1 / count
    return mean, np.maximum(s2 / count - mean ** 2, 0.0)


@contextlib.contextmanager
def _quiet_gluon():
    """Gluon warns that the graphs leave some of the shared core's weights unused.

    Each graph uses only part of the core on purpose (the loss graph does its
    own batch norm; the trunk graph stops before it).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Parameter .* is not used by any computation")
        yield


def fit(model, values, sessions, label_ids, train_mask, valid, max_iterations, batch_size,
        rng, verbose, first_iteration=1, checkpoint=None, resume=None):
    """Train ``model`` in place; return the log: ``training_iterations``, ``progress``
    and the final metrics' fields, None (see the end of :func:`_fit`).

    ``values`` are standardised rows in ``sessions`` order; ``valid`` is a chunk
    table (or None), evaluated after each epoch for the progress table. The final
    weights are the average described in the module docstring, with batch norm's
    statistics estimated on them; the caller measures the final model's metrics.
    ``checkpoint``: a dict with ``schedule`` (a :class:`toolkit._checkpoint.Schedule`)
    and the JSON ``config`` and ``fingerprint`` to write; ``resume``: a
    :class:`toolkit._checkpoint.Checkpoint` whose position training continues
    from (the model already holds its weights).
    """
    with _quiet_gluon():
        return _fit(model, values, sessions, label_ids, train_mask, valid, max_iterations,
                    batch_size, rng, verbose, first_iteration, checkpoint, resume)


def _fit(model, values, sessions, label_ids, train_mask, valid, max_iterations, batch_size,
         rng, verbose, first_iteration, checkpoint, resume):
    pw = model._state["prediction_window"]
    C = len(model._state["classes"])
    core, graphs = model._core, model._graphs
    # Batch norm subtracts every group's mean right after dense0, so dense0's bias
    # cannot change the loss: its gradient is rounding noise, which Adam (dividing by
    # the gradient's own scale) would turn into steps of the learning rate's size that
    # differ between devices. It stays at its initial value (zero) instead.
    core.dense0.bias.grad_req = "null"
    params = {k: p for k, p in structural_params(core).items() if p.grad_req != "null"}
    run = _training.setup(core, "adam", {"learning_rate": LEARNING_RATE}, params=params)
    # Running batch-norm statistics serve the validation after each epoch and the
    # checkpoints (a checkpoint loads as a model); the final model's are estimated
    # at the end. Without either, training keeps none (a cheaper loss graph).
    stats = _Stats(core.bn.running_mean.data(run.ctxs[0]).asnumpy(),
                   core.bn.running_var.data(run.ctxs[0]).asnumpy()) \
        if valid is not None or checkpoint is not None else None
    last = first_iteration + max_iterations - 1
    avg, n_avg = None, 0
    if resume is not None:
        extra = resume.extra
        restored = _training.restore_optimizer(run, extra.get("optimizer"),
                                               resume.arrays_under("optimizer"))
        n_avg = int(extra.get("averaged", 0))
        if n_avg:
            stored = resume.arrays_under("average")
            _training.check_names(stored, stored_shapes(core), "running weight average",
                                  resume.path)
            avg = _on_device(stored, core, run.ctxs[0])
        resume.check_all_used()
        rng = resume.rng()
        first_iteration = int(resume.position["iteration"]) + 1
        say(resume.describe(), verbose)
        if not restored:
            say("The optimizer's moments of a cluster run live on its servers and are not in "
                "the checkpoint: they restart from zero.", verbose)
    say(f"Training on {run.describe()}.", verbose)
    cols = [c for c in PROGRESS_COLUMNS if valid is not None or "Validation" not in c]
    table = ProgressTable(cols, verbose)
    if resume is not None:
        table.restore(resume.extra.get("progress"))
    table.start()
    schedule = checkpoint["schedule"] if checkpoint else None
    upcoming = None
    for it in range(first_iteration, last + 1):
        chunks = upcoming if upcoming is not None else augmented_chunks(
            values, sessions, label_ids, train_mask, pw, C, rng)
        totals, pending = _train_epoch(graphs, run, chunks, batch_size, rng, stats)
        chunks = upcoming = None    # freed before the next epoch's are cut
        # The next epoch's chunks are cut while the engine computes this epoch's last
        # step (the random draws keep their order); a checkpoint of this epoch keeps
        # the random state from before them, where a resumed run continues.
        position = rng.get_state()
        if it < last:
            upcoming = augmented_chunks(values, sessions, label_ids, train_mask, pw, C, rng)
        correct, loss, weight = _add_step(pending, totals, stats)
        weight = max(weight, 1e-5)
        row = [it, correct / weight, loss / weight]
        if valid is not None:
            row += list(evaluate_chunks(graphs, valid, stats.mean, stats.var, run.ctxs[0]))
        if it - (last - max_iterations) > AVERAGE_FROM * max_iterations:
            n_avg += 1
            avg = _average_in(avg, n_avg, core, run.ctxs[0])
        table.row(*row, f"{table.elapsed():.1f}")
        if schedule is not None and schedule.due(it, final=(it == last)):
            schedule.write(lambda: _snapshot(model, run, stats, avg, n_avg,
                                             _rng_at(position), it, last, checkpoint,
                                             table.history))
    table.finish()
    final = _stored(avg, core) if avg is not None else get_weights(core, run.ctxs[0])
    # A fresh network takes the final weights: copying into parameters that
    # mxnet already reordered for its CPU kernels is unreliable.
    model._build(final)
    plain = _data.chunk(values, sessions, pw, session_mask=train_mask)
    estimated = estimate_bn(model._graphs, plain)
    if estimated is not None:
        # Batch norm's statistics go into the same network: the trunk graph that
        # just ran never reads them, so mxnet has not moved them.
        _net.set_bn_statistics(model._core, *estimated)
    # The metrics of the final model are evaluate()'s, per row, measured by the
    # caller (_model._recorded_metrics), which replaces these Nones.
    return {"training_accuracy": None, "training_log_loss": None, "validation_accuracy": None,
            "validation_log_loss": None, "training_iterations": last,
            "progress": table.history}


def _average_in(avg, n_avg, core, ctx):
    """The running average of the weights (``{structural name: NDArray}``) with the
    current weights folded in as the ``n_avg``-th.

    Kept on the device as mxnet operations: reading the weights into numpy would
    wait for the epoch's last update, with the engine idle until the next
    epoch's first step is prepared. Same float32 arithmetic as numpy's.
    """
    params = structural_params(core)
    if avg is None:
        return {k: p.data(ctx).copy() for k, p in params.items()}
    return {k: avg[k] + (params[k].data(ctx) - avg[k]) / n_avg for k in params}


def _stored(avg, core):
    """A running average as stored weights (``{stored name: float32 array}``)."""
    params = structural_params(core)
    out = {}
    for k, a in avg.items():
        out.update(unpack(k, params[k], a.asnumpy().astype(np.float32)))
    return out


def _on_device(stored, core, ctx):
    """Stored weights (a checkpoint's running average) as :func:`_average_in` keeps them."""
    nd = mx().nd
    return {k: nd.array(pack(k, p, stored), ctx=ctx)
            for k, p in structural_params(core).items()}


def _rng_at(state):
    """A generator at ``state`` (a checkpoint records where the run continues)."""
    rng = np.random.RandomState()
    rng.set_state(state)
    return rng


def _snapshot(model, run, stats, avg, n_avg, rng, iteration, last, checkpoint, progress):
    """Everything a resumed run needs, as keyword arguments of _checkpoint.write."""
    weights = get_weights(model._core, run.ctxs[0])
    weights[_net.BN_MEAN] = stats.mean.astype(np.float32)
    weights[_net.BN_VAR] = stats.var.astype(np.float32)
    meta, opt = _training.optimizer_arrays(run)
    arrays = {f"optimizer/{k}": v for k, v in opt.items()}
    if avg is not None:
        arrays.update({f"average/{k}": v for k, v in _stored(avg, model._core).items()})
    return dict(task=model._TASK, file_version=model._FILE_VERSION, state=dict(model._state),
                weights=weights, position={"iteration": iteration, "max_iterations": last},
                config=checkpoint["config"], data_fingerprint=checkpoint["fingerprint"],
                rng=rng, extra={"optimizer": meta, "averaged": n_avg, "progress": progress},
                arrays=arrays)
