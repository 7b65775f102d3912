"""Training machinery shared by the tasks: devices, trainers, optimizer state.

* :func:`setup` places a network's parameters on the chosen devices
  (:mod:`toolkit.config`) and builds a Gluon ``Trainer`` that sums the
  gradients of every device (and, in a parameter-server cluster, of every
  worker through the ``dist_sync`` key-value store) before one update;
* :func:`optimizer_arrays` / :func:`restore_optimizer` move an optimizer's
  state (Adam's moments and step counts) in and out of plain named float32
  arrays for checkpoints. mxnet's own ``Trainer.save_states`` writes a pickle,
  which model files never contain;
* :func:`split` deals a global batch out to workers and devices in whole
  groups, so that the arithmetic of a step does not depend on how many
  devices share it.

Local devices use ``update_on_kvstore=False``: the optimizer state then lives
in this process (one copy per device, updated identically) where checkpoints
can read it. In a cluster the state lives on the servers (mxnet's
``dist_sync`` updates there), so a checkpoint written by rank 0 holds the
weights and position but not the moments; resuming a cluster run restarts
them (and says so).
"""

import numpy as np

from . import config
from ._mx import mx, pack, stored_pieces, structural_params, unpack


class Setup:
    """Devices, cluster and trainer of one training run (see :func:`setup`)."""

    def __init__(self, ctxs, cluster, params, trainer):
        self.ctxs, self.cluster, self.params, self.trainer = ctxs, cluster, params, trainer
        self.rank = cluster.rank if cluster else 0
        self.num_workers = cluster.num_workers if cluster else 1

    @property
    def slots(self):
        """Number of (worker, device) pairs a global batch is dealt to."""
        return self.num_workers * len(self.ctxs)

    def my_slots(self):
        """The slot numbers of this process's devices, in ``ctxs`` order."""
        d = len(self.ctxs)
        return list(range(self.rank * d, (self.rank + 1) * d))

    def describe(self):
        return config.describe(self.ctxs, self.cluster)


def setup(block, optimizer, optimizer_params, params=None, use_cluster=True, ctxs=None):
    """Put ``block``'s parameters on the chosen devices and build its trainer.

    ``params``: ``{structural name: Parameter}`` to train (default: all of
    ``block``'s). The trainer's parameter order is that dict's order, which
    :func:`optimizer_arrays` relies on. ``use_cluster=False``: train locally
    even in a cluster (for steps every worker computes identically); ``ctxs``:
    these devices instead of the configured ones.
    """
    gluon = mx().gluon
    ctxs = list(ctxs) if ctxs is not None else config.contexts()
    cl = config.cluster() if use_cluster else None
    params = params if params is not None else structural_params(block)
    if config.off_default(ctxs):
        block.collect_params().reset_ctx(ctxs)
    if cl is not None:
        kvstore, update_on_kvstore = cl.kvstore, True
    elif len(ctxs) > 1:
        kvstore, update_on_kvstore = "device", False
    else:
        kvstore, update_on_kvstore = None, None
    trainer = gluon.Trainer(list(params.values()), optimizer, dict(optimizer_params),
                            kvstore=kvstore, update_on_kvstore=update_on_kvstore)
    return Setup(ctxs, cl, params, trainer)


def split(positions, group, slots):
    """Deal ``positions`` (one global batch) to ``slots`` in whole groups.

    The batch is cut into consecutive groups of ``group`` items (the last may
    be shorter) and the groups into ``slots`` contiguous runs. Returns a list
    of ``slots`` lists of groups (each group an index array); a slot may get
    none when there are more slots than groups.
    """
    groups = [positions[i:i + group] for i in range(0, len(positions), group)]
    bounds = np.linspace(0, len(groups), slots + 1).round().astype(int)
    return [groups[bounds[s]:bounds[s + 1]] for s in range(slots)]


def _updaters(trainer):
    trainer._init_kvstore()
    return trainer._updaters


def _counts(optimizer):
    """Per-device ``{index: step count}`` dicts of an mxnet optimizer (1.5-1.9)."""
    every = getattr(optimizer, "_all_index_update_counts", None)
    return every if every is not None else {0: optimizer._index_update_count}


def _state_arrays(state):
    if state is None:
        return []
    if isinstance(state, (list, tuple)):
        out = []
        for s in state:
            out.extend(_state_arrays(s))
        return out
    return [state]


def optimizer_arrays(setup_):
    """The optimizer's state as ``(json, {name: float32 array})``.

    Names are ``"<parameter>/<k>"`` (``k``-th state array of that parameter,
    e.g. Adam's mean then variance). Returns ``(None, {})`` in a cluster,
    where the state lives on the servers.
    """
    if setup_.cluster is not None:
        return None, {}
    updater = _updaters(setup_.trainer)[0]
    arrays, counts = {}, {}
    optimizer = updater.optimizer
    device_counts = _counts(optimizer)
    per_device = device_counts.get(setup_.ctxs[0].device_id, device_counts.get(0, {}))
    # Stored under the weights' stored names: a parameter that packs several
    # stored arrays (toolkit._mx.pack_pieces) has its state split the same way.
    for idx, (name, param) in enumerate(setup_.params.items()):
        stored = [n for n, _ in stored_pieces(name, param)]
        if idx in updater.states:
            for k, a in enumerate(_state_arrays(updater.states[idx])):
                for piece, v in unpack(name, param, a.asnumpy().astype(np.float32)).items():
                    arrays[f"{piece}/{k}"] = v
        if idx in per_device:
            counts.update({n: int(per_device[idx]) for n in stored})
    meta = {"optimizer": type(optimizer).__name__.lower(), "num_update": int(optimizer.num_update),
            "counts": counts}
    return meta, arrays


def check_names(stored, expected, what, path="the checkpoint"):
    """Refuse stored per-parameter arrays whose names differ from the network's."""
    from .errors import CheckpointError
    stray, missing = sorted(set(stored) - set(expected)), sorted(set(expected) - set(stored))
    if stray or missing:
        raise CheckpointError(
            f"Cannot resume from '{path}': its {what} does not fit this network (stored for "
            f"unknown parameter(s): {', '.join(stray[:6]) or 'none'}; missing for: "
            f"{', '.join(missing[:6]) or 'none'}). It was written by another version of the "
            "training code; a file-version step (toolkit._model.VersionStep) must rename "
            "these arrays with the weights.")


def _check_optimizer_names(names, meta, arrays):
    """Every stored optimizer array and step count must belong to a parameter of
    this run, and every parameter that was updated must find its arrays: a
    partial match would silently restart some of Adam's moments."""
    from .errors import CheckpointError
    known = set(names)
    stored = {k.rsplit("/", 1)[0] for k in arrays}
    counted = set(meta.get("counts", {}))
    stray = sorted((stored | counted) - known)
    # A parameter with a step count but no arrays lost its moments; one with
    # neither was never updated (frozen), which is fine.
    missing = sorted(n for n in counted & known if n not in stored)
    if stray or missing:
        raise CheckpointError(
            "The checkpoint's optimizer state does not fit this network: "
            + (f"stored for unknown parameter(s) {', '.join(stray[:6])}"
               + (f" ... ({len(stray)} in all)" if len(stray) > 6 else "") if stray else "")
            + ("; " if stray and missing else "")
            + (f"missing for parameter(s) {', '.join(missing[:6])}"
               + (f" ... ({len(missing)} in all)" if len(missing) > 6 else "")
               if missing else "")
            + ". It was written by another version of the training code; a file-version "
            "step (toolkit._model.VersionStep) must rename these arrays with the weights.")


def restore_optimizer(setup_, meta, arrays):
    """Load what :func:`optimizer_arrays` returned into a fresh trainer.

    Returns False (nothing restored) in a cluster or when ``meta`` is None.
    """
    if meta is None or setup_.cluster is not None:
        return False
    nd = mx().nd
    pieces = {name: [n for n, _ in stored_pieces(name, p)] for name, p in setup_.params.items()}
    _check_optimizer_names([n for names in pieces.values() for n in names], meta, arrays)
    for updater, ctx in zip(_updaters(setup_.trainer), setup_.ctxs):
        optimizer = updater.optimizer
        for idx, (name, param) in enumerate(setup_.params.items()):
            first = pieces[name][0]
            count = sum(1 for k in range(len(arrays)) if f"{first}/{k}" in arrays)
            if not count:
                continue
            gaps = [f"{n}/{k}" for k in range(count) for n in pieces[name]
                    if f"{n}/{k}" not in arrays]
            if gaps:
                from .errors import CheckpointError
                raise CheckpointError(
                    f"The checkpoint's optimizer state is incomplete: {', '.join(gaps[:6])} "
                    f"missing (the state of {name} is stored as {len(pieces[name])} arrays "
                    "per slot). The file is damaged or was edited; resume from another "
                    "checkpoint or start again.")
            stored = [pack(name, param, {n: arrays[f"{n}/{k}"] for n in pieces[name]})
                      for k in range(count)]
            weight = param.data(ctx)
            fresh = optimizer.create_state_multi_precision(idx, weight)
            slots = _state_arrays(fresh)
            for dst, src in zip(slots, stored):
                dst[:] = nd.array(src, ctx=ctx)
            updater.states[idx] = fresh
            updater.states_synced[idx] = True
        every = getattr(optimizer, "_all_index_update_counts", None)
        target = every.setdefault(ctx.device_id, {}) if every is not None \
            else optimizer._index_update_count
        for idx, name in enumerate(setup_.params):
            if pieces[name][0] in meta["counts"]:
                target[idx] = int(meta["counts"][pieces[name][0]])
        optimizer.num_update = int(meta["num_update"])
    return True
