"""Training the object detector's head: feature cache, targets, loss, schedule, loop.

A **frozen** EfficientNet-Lite0 backbone gives each 224x224 image (stretched,
no letterbox) a 1280-channel 7x7 and a 112-channel 14x14 feature map; only the
small YOLO-style head of :mod:`._net` is trained, on those maps. They are
computed once, in streamed batches, into a float16 memory-mapped temporary
file (:class:`FeatureCache`, about 165 KiB per image, on disk: memory does not
grow with the number of images), so training the head takes seconds to
minutes on 2 CPU cores. Loss (:func:`yolo_loss`): YOLOv2's with Turi Create's
weights (xy 10, wh 10/2 Huber on log sizes, objectness 100 on responsible
anchors and 5 on background, class 2); Adam with weight decay 5e-4, learning
rate 1e-3 divided by 10 at half and at three quarters of the steps
(:func:`lr_schedule`: an mxnet ``MultiFactorScheduler`` inside the optimizer,
so the schedule reaches parameter servers and resumes from the update count).

Devices, clusters and checkpoints
---------------------------------
Every random draw after the head's initialisation comes from one seeded
numpy generator: the shuffling and the dropout on the cached features, whose
masks are drawn on the host for the whole batch and passed into the head's
training graph (``_net.TrainingHead``) instead of mxnet's per-device dropout.
A batch is dealt to the devices of :mod:`toolkit.config` one image at a time
and each device's loss is divided by the whole batch's normalisers (the
number of responsible anchors, images x cells), so the summed gradients equal
one device's (tests: 1e-5). A checkpoint keeps the weights, Adam's state, the
generator's state and the shuffling order, so a resumed run ends where an
uninterrupted one does. In a parameter-server cluster each worker extracts
and trains on its own share of the images (:func:`._data.worker_share`).
"""

import hashlib
import os
import tempfile
import time

import numpy as np

from .. import _checkpoint, _training, config
from .._mx import get_weights, mx, set_weights
from .._progress import ProgressTable, say
from . import _annotations, _data, _net

# Loss weights (Turi Create's YOLO loss).
LMB_XY, LMB_WH, LMB_OBJ, LMB_NOOBJ, LMB_CLASS = 10.0, 10.0, 100.0, 5.0, 2.0
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 5e-4
#: Seconds between two rows of the progress table.
PRINT_EVERY = 5.0


def auto_iterations(num_images, batch_size):
    """``max_iterations=0``: about 30 epochs, at least 500 and at most 3000 steps."""
    return int(np.clip(30 * num_images // batch_size, 500, 3000))


def generator(seed, rank):
    """The shuffling and dropout generator of worker ``rank`` (rank 0: the one-process one).

    Workers draw distinct streams; rank 0's is the stream its checkpoints keep.
    """
    return np.random.RandomState([seed, rank] if rank else seed)


# --- feature extraction -------------------------------------------------------------------

class FeatureCache:
    """Both feature maps of ``num_images`` images, float16, in a memory-mapped temporary file.

    ``coarse`` (n, 1280, G, G) and ``fine`` (n, 112, 2G, 2G) are views of one
    file. Where the system allows it (POSIX) the file is unlinked as soon as it
    is mapped: it has no name left, and the kernel frees its blocks when the
    mapping goes, even if the process is killed (SIGKILL, out of memory) in
    the middle of a run. Elsewhere it is deleted when the ``with`` block ends.
    """

    def __init__(self, num_images):
        grid = _net.GRID
        tmp = tempfile.NamedTemporaryFile(prefix="toolkit-od-features-", suffix=".f16",
                                          delete=False)
        tmp.close()
        self.path = tmp.name
        coarse_size = _net.FEATURE_CHANNELS * grid * grid
        per_image = coarse_size + _net.FINE_CHANNELS * 4 * grid * grid
        try:
            flat = np.memmap(self.path, dtype=np.float16, mode="w+",
                             shape=(num_images, per_image))
        except BaseException:
            os.unlink(self.path)
            raise
        try:
            os.unlink(self.path)
            self.path = None
        except OSError:            # Windows: an open file cannot be unlinked
            pass
        self.coarse = flat[:, :coarse_size].reshape(num_images, _net.FEATURE_CHANNELS, grid,
                                                    grid)
        self.fine = flat[:, coarse_size:].reshape(num_images, _net.FINE_CHANNELS, 2 * grid,
                                                  2 * grid)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.coarse = self.fine = None
        if self.path is not None:
            os.unlink(self.path)


def extract_features(backbone, cache, share, class_index, hash_pixels, verbose):
    """Fill ``cache`` with the feature maps of ``share``'s images, on every configured device.

    Consecutive batches go to the devices in turn and run concurrently (the
    backbone is frozen, so this is plain inference). Returns ``(boxes,
    counters, pixel_digest)``: per image its relative boxes
    (:func:`._annotations.to_boxes`), the counters of clipped, dropped and
    ignored boxes, and the SHA-256 of the decoded pixels (``None`` unless
    ``hash_pixels``: the checkpoints' data fingerprint needs it).
    """
    from tqdm import tqdm
    fmap = _net.feature_map(backbone)
    num_images = len(share.values)
    _net.prepare(fmap, min(_data.NETWORK_BATCH, num_images))
    counters, boxes = _annotations.new_counters(), []
    pixel_hash = hashlib.sha256() if hash_pixels else None
    ctxs = config.contexts()
    spread = config.off_default(ctxs)
    if spread:
        fmap.collect_params().reset_ctx(ctxs)
    pending = []

    def flush():
        running = [(s, pixels, sizes, fmap(_data.to_input(pixels, ctx)))
                   for (s, pixels, sizes), ctx in zip(pending, ctxs)]
        for s, pixels, sizes, (coarse, fine) in running:
            cache.coarse[s:s + len(pixels)] = coarse.asnumpy()
            cache.fine[s:s + len(pixels)] = fine.asnumpy()
            for i, size in enumerate(sizes):
                boxes.append(_annotations.to_boxes(share.rows[s + i], size, class_index,
                                                   counters))
            bar.update(len(pixels))
        pending.clear()

    with tqdm(total=num_images, desc="Extracting image features", unit="img",
              disable=not verbose, mininterval=1.0) as bar:
        for item in _data.batches(share.values, share.column, share.index):
            if pixel_hash is not None:
                pixel_hash.update(np.ascontiguousarray(item[1]).tobytes())
            pending.append(item)
            if len(pending) == len(ctxs):
                flush()
        flush()
    if spread:
        fmap.collect_params().reset_ctx(mx().cpu())
    return boxes, counters, None if pixel_hash is None else pixel_hash.hexdigest()


def data_fingerprint(pixel_digest, boxes, classes):
    """The checkpoints' fingerprint of the training images and boxes (None without pixels)."""
    if pixel_digest is None:
        return None
    return _checkpoint.fingerprint(pixel_digest, np.array([len(b) for b in boxes], np.int64),
                                   np.concatenate(boxes), classes)


# --- targets, loss, schedule --------------------------------------------------------------

def targets(boxes_list, anchors, grid, num_classes):
    """Ground truth tensors for a batch of images' relative boxes (YOLOv2 assignment).

    Returns ``(obj, noobj, txy, twh, cls)``, shaped (B, G, G, A[, 2]): the
    responsible anchors (the best IoU with the box's shape, or above 0.7),
    the background anchors (IoU below 0.3), the centre offsets in the cell,
    the log size ratios to the anchor and the class index.
    """
    num_images, num_anchors = len(boxes_list), len(anchors)
    obj = np.zeros((num_images, grid, grid, num_anchors), np.float32)
    noobj = np.ones((num_images, grid, grid, num_anchors), np.float32)
    txy = np.zeros((num_images, grid, grid, num_anchors, 2), np.float32)
    twh = np.zeros((num_images, grid, grid, num_anchors, 2), np.float32)
    cls = np.zeros((num_images, grid, grid, num_anchors), np.float32)
    for b, boxes in enumerate(boxes_list):
        for c, x, y, w, h in boxes:
            gx, gy, gw, gh = x * grid, y * grid, w * grid, h * grid
            col, row = min(int(gx), grid - 1), min(int(gy), grid - 1)
            inter = np.minimum(anchors[:, 0], gw) * np.minimum(anchors[:, 1], gh)
            iou = inter / (anchors[:, 0] * anchors[:, 1] + gw * gh - inter)
            resp = (iou == iou.max()) | (iou > 0.7)
            noobj[b, row, col][iou >= 0.3] = 0.0
            obj[b, row, col][resp] = 1.0
            noobj[b, row, col][resp] = 0.0
            txy[b, row, col, resp] = [gx - col, gy - row]
            twh[b, row, col, resp] = np.log(np.array([gw, gh])[None] / anchors[resp] + 1e-5)
            cls[b, row, col, resp] = c
    return obj, noobj, txy, twh, cls


def yolo_loss(F, out, obj, noobj, txy, twh, cls, num_anchors, num_classes, count, cells):
    """YOLOv2 loss (Turi Create's weights) of raw outputs (B, A(5+C), G, G).

    ``count`` (responsible anchors + 1e-4) and ``cells`` (images x G x G)
    normalise the sums. They are the GLOBAL batch's, computed on the host, so
    that the losses of the devices (and workers) sharing a batch add up to the
    loss of the whole batch on one device.
    """
    num_images, grid = out.shape[0], out.shape[2]
    p = out.reshape((num_images, num_anchors, 5 + num_classes, grid, grid)).transpose(
        (0, 3, 4, 1, 2))                                             # (B, G, G, A, 5+C)
    xy = F.sigmoid(F.slice_axis(p, axis=4, begin=0, end=2))
    wh = F.slice_axis(p, axis=4, begin=2, end=4)
    to = F.slice_axis(p, axis=4, begin=4, end=5).reshape((num_images, grid, grid, num_anchors))
    logits = F.slice_axis(p, axis=4, begin=5, end=5 + num_classes)
    o = obj.expand_dims(4)
    loss_xy = LMB_XY * (o * (txy - xy) ** 2).sum() / count
    d = F.abs(twh - wh)
    huber = F.where(d < 1, 0.5 * d * d, d - 0.5)
    loss_wh = LMB_WH / 2 * (o * huber).sum() / count
    bce_pos = F.relu(-to) + F.log1p(F.exp(-F.abs(to)))          # -log sigmoid(to)
    bce_neg = F.relu(to) + F.log1p(F.exp(-F.abs(to)))           # -log(1 - sigmoid(to))
    loss_conf = (LMB_OBJ * obj * bce_pos + LMB_NOOBJ * noobj * bce_neg).sum() / cells
    logp = F.log_softmax(logits, axis=4)
    picked = F.pick(logp, cls, axis=4)
    loss_cls = LMB_CLASS * -(obj * picked).sum() / count
    return loss_xy + loss_wh + loss_conf + loss_cls


def lr_schedule(iters):
    """(initial learning rate, MultiFactorScheduler steps) for ``iters`` steps.

    The learning rate drops tenfold before the 0-based steps ``iters // 2``
    and ``3 * iters // 4``. mxnet's scheduler lowers the rate once the
    update count (1-based, the step being taken) passes a listed step, so
    the listed steps are those same numbers; a drop "before step 0" (one or
    two steps in all) lowers the initial rate instead, since the scheduler
    takes only steps >= 1. The optimizer owns the schedule, so it reaches
    parameter servers and resumes from the restored update count.
    """
    drops = sorted({iters // 2, 3 * iters // 4})
    base = LEARNING_RATE * 0.1 ** sum(d < 1 for d in drops)
    return base, [d for d in drops if d >= 1]


def _optimizer_params(iters, first):
    base_lr, lr_steps = lr_schedule(iters)
    # begin_num_update: the schedule continues from the checkpoint's step even
    # where the optimizer's state cannot be restored (on parameter servers).
    params = {"learning_rate": base_lr, "wd": WEIGHT_DECAY, "begin_num_update": first}
    if lr_steps:
        params["lr_scheduler"] = mx().lr_scheduler.MultiFactorScheduler(
            step=lr_steps, factor=0.1, base_lr=base_lr)
    return params


# --- the training loop --------------------------------------------------------------------

def checkpoint_plan(path, every, task, file_version, run_config, fingerprint, state, backbone):
    """What :func:`train_head` needs to write checkpoints (``None`` without a ``path``)."""
    if path is None:
        return None
    return {"schedule": _checkpoint.Schedule(path, every, config.is_writer()),
            "task": task, "file_version": file_version, "config": run_config,
            "fingerprint": fingerprint, "state": state, "backbone": get_weights(backbone)}


def train_head(cache, boxes, anchors, num_classes, batch_size, iters, rng, verbose, t_start,
               checkpoint=None, resume=None):
    """Train a head on the cached features; return (head on the CPU, smoothed loss).

    ``batch_size`` is this process's batch (in a cluster, the worker's
    share). The batch is dealt to this process's devices one image at a
    time; each device's loss is normalised by the whole batch's counts, so
    the gradients the trainer sums equal one device's. ``checkpoint``: a
    dict from :func:`checkpoint_plan`; ``resume``: a
    :class:`toolkit._checkpoint.Checkpoint` to continue from.
    """
    num_anchors, num_images = len(anchors), len(boxes)
    head = _net.build_head(num_anchors, num_classes, seed_bias=resume is None)
    first = 0
    if resume is not None:
        set_weights(head, _net.head_weights(resume.weights), what="object detector head")
        first = min(int(resume.position["iteration"]), iters)
    train_net = _net.training_head(head)
    train_net.hybridize()
    run = _training.setup(head, "adam", _optimizer_params(iters, first))
    smoothed, order, pos = None, None, 0
    if resume is not None:
        rng, order, pos, smoothed = _restore(resume, run, num_images, verbose)
    if order is None:
        order, pos = rng.permutation(num_images), 0
    say(f"Training on {run.describe()}.", verbose)
    progress = _Progress(verbose, t_start, first, iters)
    schedule = checkpoint["schedule"] if checkpoint else None
    for it in range(first, iters):
        if pos + batch_size > num_images:
            order, pos = rng.permutation(num_images), 0
        idx = np.sort(order[pos:pos + batch_size])
        pos += batch_size
        value = _step(train_net, run, cache, idx, [boxes[i] for i in idx], anchors,
                      num_classes, rng)
        smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
        step = it + 1
        progress.row(it, step, smoothed)
        if schedule is not None and schedule.due(step, final=(step == iters)):
            schedule.write(lambda: _snapshot(head, run, rng, order, pos, step, iters, smoothed,
                                             checkpoint))
    progress.finish()
    # A fresh CPU head takes the final weights: copying into parameters that
    # mxnet reordered for its kernels (or placed on several devices) is unreliable.
    final = _net.build_head(num_anchors, num_classes, seed_bias=False)
    set_weights(final, get_weights(head, run.ctxs[0]), what="object detector head")
    return final, (None if smoothed is None else float(smoothed))


def _restore(resume, run, num_images, verbose):
    """A checkpoint's optimizer state (into ``run``); returns (rng, order, pos, smoothed loss).

    ``order`` is None where the shuffling starts afresh.
    """
    extra = resume.extra
    restored = _training.restore_optimizer(run, extra.get("optimizer"),
                                           resume.arrays_under("optimizer"))
    resume.check_all_used()
    rng = resume.rng()
    order, pos = None, 0
    if run.rank:
        # The checkpoint holds rank 0's stream; other workers derive their own.
        rng = np.random.RandomState([int(rng.randint(2**31)), run.rank])
    else:
        stored = np.asarray(extra.get("order", []), np.int64)
        # Another share of the images (other data, or another number of
        # workers) starts a fresh pass instead.
        if len(stored) == num_images and np.array_equal(np.sort(stored),
                                                         np.arange(num_images)):
            order, pos = stored, int(extra.get("pos", 0))
    say(resume.describe(), verbose)
    if not restored:
        say("The optimizer's moments of a cluster run live on its servers and are not in "
            "the checkpoint: they restart from zero.", verbose)
    return rng, order, pos, extra.get("smoothed_loss")


def _step(train_net, run, cache, idx, boxes, anchors, num_classes, rng):
    """One optimizer step on the cached images ``idx``; returns the loss (workers' sum).

    ``boxes`` are those images' relative boxes.
    """
    nd, autograd = mx().nd, mx().autograd
    num_images, grid, workers, ctxs = len(idx), _net.GRID, run.num_workers, run.ctxs
    x_all = np.asarray(cache.coarse[idx], np.float32)
    xf_all = np.asarray(cache.fine[idx], np.float32)
    truth = targets(boxes, anchors, grid, num_classes)
    keep, keep_fine = _net.dropout_masks(rng, num_images)
    # The whole batch's normalisers. In a cluster the gradients of the
    # workers are summed too: each worker divides by its own counts times
    # the number of workers, so a step follows the mean of the workers'
    # losses (the one-process loss when their batches hold as many boxes).
    count = (float(truth[0].sum()) + 1e-4) * workers
    cells = float(num_images * grid * grid * workers)
    dealt = _training.split(np.arange(num_images), 1, len(ctxs))
    losses = []
    with autograd.record():
        for ctx, groups in zip(ctxs, dealt):
            # A device without a share this step still runs its (zero-weight)
            # backward pass, so that its gradient buffers hold zeros and
            # every copy of the weights takes the same update.
            p = np.concatenate(groups) if groups else np.arange(1)
            out = train_net(nd.array(x_all[p], ctx=ctx), nd.array(xf_all[p], ctx=ctx),
                            nd.array(keep[p], ctx=ctx), nd.array(keep_fine[p], ctx=ctx))
            loss = yolo_loss(nd, out, *(nd.array(t[p], ctx=ctx) for t in truth),
                             len(anchors), num_classes, count, cells)
            losses.append(loss if groups else loss * 0.0)
    autograd.backward(losses)
    run.trainer.step(1)
    return workers * sum(float(v.asscalar()) for v in losses)


class _Progress:
    """The table of iteration, smoothed loss and elapsed time: a row every few seconds."""

    def __init__(self, verbose, t_start, first, iters):
        self.verbose, self.t_start, self.first, self.iters = verbose, t_start, first, iters
        self.table = ProgressTable(["Iteration", "Loss", "Elapsed Time"], verbose)
        self.started = False
        self.last_print = -1e9

    def row(self, it, step, smoothed):
        now = time.perf_counter() - self.t_start
        if self.verbose and (it == self.first or now - self.last_print >= PRINT_EVERY
                             or step == self.iters):
            if not self.started:
                self.table.start()
                self.started = True
            self.table.row(step, smoothed, f"{now:.1f}")
            self.last_print = now

    def finish(self):
        if self.started:
            self.table.finish()


def _snapshot(head, run, rng, order, pos, step, iters, smoothed, checkpoint):
    """Everything a resumed run needs, as keyword arguments of _checkpoint.write."""
    weights = _net.join_weights(backbone=checkpoint["backbone"],
                                head=get_weights(head, run.ctxs[0]))
    meta, opt = _training.optimizer_arrays(run)
    state = dict(checkpoint["state"], training_iterations=step,
                 training_loss=None if smoothed is None else float(smoothed))
    return dict(task=checkpoint["task"], file_version=checkpoint["file_version"], state=state,
                weights=weights, position={"iteration": step, "max_iterations": iters},
                config=checkpoint["config"], data_fingerprint=checkpoint["fingerprint"],
                rng=rng, extra={"optimizer": meta, "smoothed_loss": smoothed,
                                "order": [int(i) for i in order], "pos": int(pos)},
                arrays={f"optimizer/{k}": v for k, v in opt.items()})
