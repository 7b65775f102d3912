"""Where training runs: the devices of this process and the cluster it belongs to.

Devices
-------
Every task trains data-parallel over a list of mxnet devices (contexts). The
list is chosen, in this order, by:

1. :func:`set_devices` / :func:`set_num_gpus` in this process;
2. the environment variable ``TOOLKIT_DEVICES`` (``"gpu(0),gpu(1)"``,
   ``"cpu(0),cpu(1)"``, or ``"cpu"``);
3. the default: every GPU mxnet sees, else the CPU.

Each global batch is split across the devices and their gradients are summed
before one optimizer step, so the result equals training on one device with
the same batch (the tests check 1e-5). Several CPU devices (``cpu(0)``,
``cpu(1)``) run the same code path on a machine without GPUs; they share the
machine's cores, so they are for testing, not for speed.

Clusters
--------
A process started with ``DMLC_ROLE=worker`` (by
``python -m toolkit.distributed`` or by hand, see the README) is a worker of
an mxnet parameter-server cluster: ``create`` then trains with the
``dist_sync`` key-value store, each worker computing its share of every
global batch, and only the worker of rank 0 writes model files and
checkpoints. :func:`cluster` tells a script its rank.

Every random decision of a cluster run (validation split, shuffling,
augmentation, dropout, weight initialisation) must be the same on every
worker, or their step counts and batches disagree (a deadlock or silently
mismatched gradients). :func:`shared_seed` gives every worker rank 0's seed.

Inference backend
-----------------
Prediction, evaluation and feature extraction of the image classifier and the
object detector run their network through onnxruntime or through mxnet. The
choice is made, in this order, by :func:`set_inference_backend` in this
process, the environment variable ``TOOLKIT_INFERENCE_BACKEND``, and the
default ``'auto'``: onnxruntime when ``onnx`` and ``onnxruntime`` import and
the configured devices are CPUs only, else mxnet. Training always runs in
mxnet. See :mod:`toolkit._ort` for how the two are kept equal.
"""

import os
import re
import warnings

from .errors import InvalidParameterError

_devices = None            # None: not set in this process
_ENV = "TOOLKIT_DEVICES"
_DEVICE_RE = re.compile(r"^\s*(cpu|gpu)\s*(?:\(\s*(\d+)\s*\))?\s*$")


def _mx():
    from ._mx import mx
    return mx()


def _parse(spec, where):
    if hasattr(spec, "device_type") and hasattr(spec, "device_id"):
        return (str(spec.device_type).replace("cpu_pinned", "cpu"), int(spec.device_id))
    if isinstance(spec, str):
        m = _DEVICE_RE.match(spec)
        if m:
            return (m.group(1), int(m.group(2) or 0))
    raise InvalidParameterError(
        f"{where}: {spec!r} is not a device; use 'cpu', 'cpu(1)', 'gpu(0)' or an mxnet "
        "context such as mx.gpu(0).")


def set_devices(devices):
    """Choose the devices every ``create`` trains on in this process.

    Parameters
    ----------
    devices : list of str or mxnet.Context, or None
        For example ``['gpu(0)', 'gpu(1)']`` or ``['cpu(0)', 'cpu(1)']``.
        ``None`` restores the default (``TOOLKIT_DEVICES``, else every GPU,
        else the CPU).

    Raises
    ------
    toolkit.errors.InvalidParameterError
        An entry that is not a device, a device listed twice, or an empty list.

    Examples
    --------
    >>> import toolkit as tc
    >>> tc.config.set_devices(['cpu(0)', 'cpu(1)'])
    >>> tc.config.get_devices()
    ['cpu(0)', 'cpu(1)']
    >>> tc.config.set_devices(None)
    """
    global _devices
    if devices is None:
        _devices = None
        return
    if isinstance(devices, str) or not hasattr(devices, "__iter__"):
        devices = [devices]
    parsed = [_parse(d, "set_devices") for d in devices]
    if not parsed:
        raise InvalidParameterError("set_devices: the list is empty; give at least one device "
                                    "or None for the default.")
    if len(set(parsed)) != len(parsed):
        raise InvalidParameterError(f"set_devices: a device is listed twice in {devices!r}.")
    _devices = parsed


def set_num_gpus(num_gpus):
    """Turi Create's setting: train on ``num_gpus`` GPUs (``0``: CPU, ``-1``: all).

    Parameters
    ----------
    num_gpus : int
        ``-1`` uses every GPU mxnet sees (the CPU if there is none), ``0`` the
        CPU only, ``n > 0`` the GPUs 0 to n-1.

    Raises
    ------
    toolkit.errors.InvalidParameterError
        ``num_gpus`` is not an int >= -1, or asks for more GPUs than exist
        (checked when training starts).

    Examples
    --------
    >>> import toolkit as tc
    >>> tc.config.set_num_gpus(0)      # CPU only
    >>> tc.config.get_devices()
    ['cpu(0)']
    >>> tc.config.set_devices(None)
    """
    global _devices
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < -1:
        raise InvalidParameterError(
            f"set_num_gpus: expected an int >= -1 (-1 all GPUs, 0 CPU), got {num_gpus!r}.")
    if num_gpus == -1:
        _devices = None
    elif num_gpus == 0:
        _devices = [("cpu", 0)]
    else:
        _devices = [("gpu", i) for i in range(num_gpus)]


def get_num_gpus():
    """Turi Create's setting: the number of GPUs training uses (``-1``: all, ``0``: CPU).

    Returns what :func:`set_num_gpus` set. When the devices come from
    :func:`set_devices` or ``TOOLKIT_DEVICES`` instead, returns how many GPUs
    are among them (``0`` for CPUs only); with nothing chosen, ``-1`` (every
    GPU mxnet sees, else the CPU). Nothing is imported or probed.

    Returns
    -------
    int

    Examples
    --------
    >>> import toolkit as tc
    >>> tc.config.set_num_gpus(0)
    >>> tc.config.get_num_gpus()
    0
    >>> tc.config.set_num_gpus(-1)
    >>> tc.config.get_num_gpus()
    -1
    """
    chosen = _chosen()
    if chosen is None:
        return -1
    return sum(1 for t, _ in chosen if t == "gpu")


def _chosen():
    if _devices is not None:
        return list(_devices)
    env = os.environ.get(_ENV, "").strip()
    if env:
        return [_parse(d, f"environment variable {_ENV}") for d in env.split(",") if d.strip()]
    return None


def get_devices():
    """The devices training uses now, as strings (``['cpu(0)']``, ``['gpu(0)', ...]``).

    Examples
    --------
    >>> import toolkit as tc
    >>> tc.config.get_devices()       # doctest: +SKIP
    ['cpu(0)']
    """
    return [f"{t}({i})" for t, i in _resolve()]


def _resolve():
    chosen = _chosen()
    if chosen is not None:
        return chosen
    n = _num_gpus()
    return [("gpu", i) for i in range(n)] if n else [("cpu", 0)]


def _num_gpus():
    try:
        return int(_mx().context.num_gpus())
    except Exception:   # a CPU-only build without CUDA libraries may raise here
        return 0


def contexts():
    """The chosen devices as mxnet contexts, checked against the machine."""
    devices = _resolve()
    gpus = [i for t, i in devices if t == "gpu"]
    if gpus:
        have = _num_gpus()
        missing = [i for i in gpus if i >= have]
        if missing:
            raise InvalidParameterError(
                f"Training was asked to use gpu({missing[0]}) but mxnet sees {have} GPU(s) on "
                "this machine (a CPU-only mxnet build sees none). Choose devices with "
                "toolkit.config.set_devices([...]) or set_num_gpus(0) for the CPU.")
    mx = _mx()
    return [mx.gpu(i) if t == "gpu" else mx.cpu(i) for t, i in devices]


def off_default(ctxs):
    """Whether parameters built on ``cpu(0)`` (every network's default) must move to ``ctxs``."""
    return [str(c) for c in ctxs] != ["cpu(0)"]


def describe(ctxs, cluster_info=None):
    """A short phrase for progress output: 'CPU', '2 devices (cpu(0), cpu(1))', ..."""
    names = [str(c) for c in ctxs]
    text = "CPU" if names == ["cpu(0)"] else \
        (names[0] if len(names) == 1 else f"{len(names)} devices ({', '.join(names)})")
    if cluster_info is not None:
        text += (f", worker {cluster_info.rank} of {cluster_info.num_workers} "
                 "(parameter-server cluster, dist_sync)")
    return text


# --- inference backend ---------------------------------------------------------

#: What :func:`set_inference_backend` accepts.
INFERENCE_BACKENDS = ("auto", "mxnet", "onnxruntime")
_BACKEND_ENV = "TOOLKIT_INFERENCE_BACKEND"
_backend = None            # None: not set in this process


def _check_backend(value, where):
    if not isinstance(value, str) or value.strip().lower() not in INFERENCE_BACKENDS:
        raise InvalidParameterError(
            f"{where}: expected one of {', '.join(map(repr, INFERENCE_BACKENDS))}, got "
            f"{value!r}.")
    return value.strip().lower()


def set_inference_backend(backend):
    """Choose what runs the image tasks' networks at prediction time in this process.

    ``predict``, ``classify``, ``predict_topk``, ``evaluate`` and
    ``extract_features`` of the image classifier,
    ``tc.image_analysis.get_deep_features``, and ``predict`` / ``evaluate`` of
    the object detector run the network through the backend chosen here;
    the rest (decoding, the classifier layer, box decoding, NMS) is the same
    numpy code either way. Training always runs in mxnet.

    The first time a model runs on onnxruntime in a process, its first batch
    also runs through mxnet and the two outputs are compared; if they differ
    by more than 1e-4 of their scale, a ``ToolkitWarning`` says so and that
    model keeps using mxnet.

    Parameters
    ----------
    backend : {'auto', 'mxnet', 'onnxruntime'} or None
        ``'auto'`` (the default): onnxruntime when the ``onnx`` and
        ``onnxruntime`` packages import and :func:`get_devices` lists CPUs
        only, else mxnet. ``'onnxruntime'``: always onnxruntime (about twice
        as fast as mxnet on CPU, same outputs within 1e-4); ``'mxnet'``:
        always mxnet. ``None`` restores the default (the environment
        variable ``TOOLKIT_INFERENCE_BACKEND``, else ``'auto'``).

    Raises
    ------
    toolkit.errors.InvalidParameterError
        ``backend`` is not one of the names above.
    toolkit.errors.BackendNotAvailableError
        ``'onnxruntime'`` while ``onnxruntime`` or ``onnx`` cannot be imported
        (``pip install onnxruntime onnx`` installs them).

    Notes
    -----
    onnxruntime uses ``OMP_NUM_THREADS`` threads per network call when that
    variable is set, else its default (one per physical core).

    Examples
    --------
    >>> import toolkit as tc
    >>> tc.config.set_inference_backend('mxnet')
    >>> tc.config.get_inference_backend()
    'mxnet'
    >>> tc.config.set_inference_backend(None)
    >>> tc.config.get_inference_backend() in ('auto', 'mxnet', 'onnxruntime')
    True
    """
    global _backend
    if backend is None:
        _backend = None
        return
    backend = _check_backend(backend, "set_inference_backend")
    if backend == "onnxruntime":
        from . import _ort
        _ort.require_runtime()
    _backend = backend


def get_inference_backend(resolve=False):
    """The inference backend chosen now (see :func:`set_inference_backend`).

    Parameters
    ----------
    resolve : bool, default False
        ``False``: the choice as made (``'auto'``, ``'mxnet'`` or
        ``'onnxruntime'``). ``True``: the backend that choice runs on now,
        ``'mxnet'`` or ``'onnxruntime'`` (imports onnxruntime to find out).

    Returns
    -------
    str

    Raises
    ------
    toolkit.errors.InvalidParameterError
        ``TOOLKIT_INFERENCE_BACKEND`` holds another value than the three names.
    toolkit.errors.BackendNotAvailableError
        ``resolve=True`` with ``'onnxruntime'`` chosen but not installed.

    Examples
    --------
    >>> import toolkit as tc
    >>> tc.config.set_inference_backend('mxnet')
    >>> tc.config.get_inference_backend(resolve=True)
    'mxnet'
    >>> tc.config.set_inference_backend(None)
    """
    if _backend is not None:
        choice = _backend
    else:
        env = os.environ.get(_BACKEND_ENV, "").strip()
        choice = _check_backend(env, f"environment variable {_BACKEND_ENV}") if env else "auto"
    if not resolve:
        return choice
    from . import _ort
    return _ort.resolve(choice)


def cpu_only():
    """Whether the configured devices are all CPUs (may probe mxnet for GPUs)."""
    return all(t == "cpu" for t, _ in _resolve())


# --- parameter-server clusters ----------------------------------------------

class Cluster:
    """This process's place in a parameter-server cluster (see :func:`cluster`)."""

    def __init__(self, kvstore):
        self.kvstore = kvstore
        self.rank = int(kvstore.rank)
        self.num_workers = int(kvstore.num_workers)

    def __repr__(self):
        return f"Cluster(rank={self.rank}, num_workers={self.num_workers})"


_cluster = None


def in_cluster():
    """Whether this process was started as a parameter-server worker."""
    return os.environ.get("DMLC_ROLE", "").strip() == "worker"


def cluster():
    """The cluster this process is a worker of, or ``None`` outside a cluster.

    The first call joins the cluster (creates mxnet's ``dist_sync`` key-value
    store, which waits for the scheduler); later calls return the same object.

    Returns
    -------
    Cluster or None
        With ``rank`` (0 .. num_workers-1), ``num_workers`` and ``kvstore``.

    Examples
    --------
    >>> import toolkit as tc
    >>> info = tc.config.cluster()
    >>> info is None or info.rank >= 0
    True
    """
    global _cluster
    if not in_cluster():
        return None
    if _cluster is None:
        _cluster = Cluster(_mx().kv.create("dist_sync"))
    return _cluster


# Key-value store keys for sharing seeds: one per call (a key is initialised once),
# far from the trainers' keys (parameter indices 0, 1, ...) and the image
# classifier's feature-gathering key (900001).
_SEED_KEY_BASE = 800000
_seed_calls = 0


def _draw_seed():
    import numpy as np
    return int(np.random.SeedSequence().entropy % 2**32)


def shared_seed(random_seed):
    """The seed a ``create()`` uses: the user's, else one drawn; in a cluster, rank 0's.

    Outside a cluster this returns ``random_seed``, or a seed drawn from the
    operating system's entropy when it is None. In a cluster every worker must
    call it at the same point (every ``create()`` does, before any data step):
    rank 0 resolves its ``random_seed`` the same way and every worker receives
    that value through the key-value store, so all workers split, shuffle,
    augment and initialise identically. A worker given another seed than rank
    0's uses rank 0's and warns.

    Parameters
    ----------
    random_seed : int or None
        An int in [0, 2**32 - 1] (already checked) or None.

    Returns
    -------
    int
        The seed to use, in [0, 2**32 - 1]; store it as the model's
        ``random_seed`` so that a run can be repeated.

    Examples
    --------
    >>> from toolkit import config
    >>> config.shared_seed(7)
    7
    >>> 0 <= config.shared_seed(None) < 2**32
    True
    """
    seed = _draw_seed() if random_seed is None else int(random_seed)
    info = cluster()
    if info is None:
        return seed
    global _seed_calls
    key = _SEED_KEY_BASE + _seed_calls
    _seed_calls += 1
    nd = _mx().nd
    # Two 16-bit halves: float32 (the key-value store's type) holds each exactly.
    halves = nd.array([seed >> 16, seed & 0xFFFF], dtype="float32")
    info.kvstore.init(key, halves)          # the servers keep rank 0's value
    received = nd.zeros((2,), dtype="float32")
    info.kvstore.pull(key, out=received)
    hi, lo = (int(v) for v in received.asnumpy())
    shared = (hi << 16) | lo
    if random_seed is not None and shared != seed:
        from ._metrics import ToolkitWarning
        warnings.warn(
            f"random_seed: this worker (rank {info.rank}) was given {seed} but the worker of "
            f"rank 0 uses {shared}; every worker of a cluster uses rank 0's seed, so this one "
            f"trains with {shared}. Give every worker the same random_seed.",
            ToolkitWarning, stacklevel=2)
    return shared


def is_writer():
    """Whether this process writes model files and checkpoints (rank 0, or no cluster)."""
    if not in_cluster():
        return True
    return cluster().rank == 0


__all__ = ["set_devices", "set_num_gpus", "get_num_gpus", "get_devices", "cluster", "in_cluster",
           "Cluster", "shared_seed", "set_inference_backend", "get_inference_backend",
           "INFERENCE_BACKENDS"]
