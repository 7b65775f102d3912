"""Lazy mxnet access and the toolkit's structural parameter names.

mxnet is imported on first use only, so ``import toolkit`` stays fast and
works for ``python -m toolkit info`` without mxnet.

Gluon names parameters with process-global prefixes (``lstm0_``,
``hybridsequential3_``) that change with mxnet versions and with how many
blocks a process created before. Model files never contain those names: they
use *structural* names built from the attribute path of each parameter inside
the network (``conv.weight``, ``lstm.l0_i2h_weight``), which depend only on
the toolkit's own code.
"""

import os

import numpy as np

from .errors import WeightsMismatchError

_mx = None


def mx():
    """Import and return the mxnet module (once)."""
    global _mx
    if _mx is None:
        # Keep mxnet from spawning more OpenMP threads than the machine has
        # before its first import; harmless if the user set it already.
        os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")
        _avoid_mkldnn_rnn_state_mixup()
        import mxnet
        _mx = mxnet
    return _mx


def _avoid_mkldnn_rnn_state_mixup():
    """Make the LSTM work when MKL-DNN is switched off at run time.

    The mxnet 1.7-1.9 wheels are built with MKL-DNN. With it switched off
    (``MXNET_MKLDNN_ENABLED=0``, a common workaround for MKL-DNN bugs), the RNN
    operator still creates its MKL-DNN state (that choice reads only
    ``MXNET_USE_MKLDNN_RNN``) but then runs the plain CPU kernel on it, and
    every LSTM forward fails with "rnn-inl.h Check failed: in_data.size() ==
    num_inputs (4 vs. 3)". Switching MKL-DNN's RNN off as well makes the
    operator create the plain state. Builds without MKL-DNN (the 1.5.1 and
    1.6.0 wheels) never hit this, and an explicit user setting is kept.
    """
    if os.environ.get("MXNET_MKLDNN_ENABLED", "").strip().lower() in ("0", "false"):
        os.environ.setdefault("MXNET_USE_MKLDNN_RNN", "0")


def cpu():
    return mx().cpu()


def structural_params(block, prefix=""):
    """Return ``{structural_name: Parameter}`` for a Gluon block.

    Walks the block's own registered parameters and its named children.
    Children whose attribute name starts with ``_`` are implementation details
    of mxnet (e.g. the unfused cells of an LSTM in mxnet 1.9) and are skipped;
    their parameters are the same objects as the parent's anyway.
    """
    out = {}
    for name, param in block._reg_params.items():
        out[prefix + name] = param
    for name, child in block._children.items():
        if name.startswith("_"):
            continue
        out.update(structural_params(child, prefix + name + "."))
    seen, unique = set(), {}
    for name, param in out.items():
        if id(param) not in seen:
            seen.add(id(param))
            unique[name] = param
    return unique


#: Attribute of a Parameter that holds several stored arrays in one flat array
#: (see :func:`pack_pieces`).
_PIECES = "_toolkit_pieces"


def pack_pieces(param, pieces):
    """Declare that ``param`` (1-D) holds the arrays ``pieces`` back to back.

    ``pieces``: ``((suffix, shape), ...)`` in storage order; each is stored
    under the structural name of ``param`` with its last part replaced by the
    suffix (``lstm.packed`` -> ``lstm.l0_i2h_weight``). Model files,
    checkpoints and exporters then see the pieces, not the flat array: a
    network may hold an operator's weights in the operator's own packed form
    (mxnet's fused ``RNN`` takes one flat vector) without changing its files.
    """
    size = sum(int(np.prod(shape)) for _, shape in pieces)
    if tuple(param.shape) != (size,):
        raise WeightsMismatchError(
            f"Parameter {param.name} has shape {param.shape}, but its pieces "
            f"{[s for s, _ in pieces]} hold {size} values: the network's code is "
            "inconsistent (a bug in the toolkit; please report it).")
    setattr(param, _PIECES, tuple((suffix, tuple(shape)) for suffix, shape in pieces))


def stored_pieces(name, param):
    """``[(stored name, shape)]`` of one parameter: itself, or the pieces it packs."""
    pieces = getattr(param, _PIECES, None)
    if pieces is None:
        return [(name, tuple(param.shape))]
    base = name.rpartition(".")[0]
    return [(f"{base}.{suffix}" if base else suffix, shape) for suffix, shape in pieces]


def unpack(name, param, array):
    """``{stored name: array}`` of one parameter's value (or a same-shaped state)."""
    if getattr(param, _PIECES, None) is None:
        return {name: array}
    out, start, flat = {}, 0, array.reshape(-1)
    for stored, shape in stored_pieces(name, param):
        size = int(np.prod(shape))
        out[stored] = flat[start:start + size].reshape(shape)
        start += size
    return out


def pack(name, param, arrays):
    """One parameter's value from ``{stored name: array}`` (the inverse of unpack)."""
    if getattr(param, _PIECES, None) is None:
        return np.asarray(arrays[name], dtype=np.float32)
    return np.concatenate([np.asarray(arrays[stored], dtype=np.float32).reshape(-1)
                           for stored, _ in stored_pieces(name, param)])


def stored_shapes(block):
    """``{stored name: shape}``: the arrays a model file holds for ``block``."""
    out = {}
    for name, p in structural_params(block).items():
        out.update(stored_pieces(name, p))
    return out


def get_weights(block, ctx=None):
    """Stored name -> float32 numpy array of every parameter of ``block``.

    ``ctx``: the device to read from when the parameters live on several
    (their copies are equal between optimizer steps); default: the first.
    """
    out = {}
    for name, p in structural_params(block).items():
        data = p.data(ctx) if ctx is not None else p.list_data()[0]
        out.update(unpack(name, p, data.asnumpy().astype(np.float32)))
    return out


def set_weights(block, weights, what="model"):
    """Copy named arrays into ``block`` strictly.

    Every missing name, unexpected name and shape mismatch is collected and
    reported in one :class:`WeightsMismatchError`; nothing is copied unless
    everything fits. ``block`` must be freshly initialised (never run): mxnet's
    CPU kernels may keep weights of a network that has run in an internal
    layout that a plain copy does not handle.
    """
    params = structural_params(block)
    shapes = stored_shapes(block)
    missing = sorted(set(shapes) - set(weights))
    unexpected = sorted(set(weights) - set(shapes))
    wrong = []
    for name in sorted(set(shapes) & set(weights)):
        expected = shapes[name]
        got = tuple(np.shape(weights[name]))
        if expected != got and not (0 in expected and len(expected) == len(got)):
            wrong.append(f"{name}: expected {expected}, got {got}")
    if missing or unexpected or wrong:
        from ._validate import name_differences
        raise WeightsMismatchError(
            f"The stored weights do not fit the {what} network rebuilt from the file's settings "
            f"({name_differences(missing, unexpected, wrong)}). The file is damaged or was "
            "edited.")
    nd = mx().nd
    for name, p in params.items():
        # Networks are built with every input size given, so parameters are
        # never deferred and set_data works right after initialize().
        p.set_data(nd.array(pack(name, p, weights)))
