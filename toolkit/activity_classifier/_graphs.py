"""The activity classifier's Gluon blocks: one core, four graphs over it.

Imported by :func:`._net.build` only: importing this module loads mxnet, and
``import toolkit`` must not. See :mod:`._net` for the architecture and the
stored weight names.
"""

import numpy as np

from .._mx import mx, pack_pieces
from ..errors import InvalidParameterError
from ._net import BN_EPSILON, CONV_FILTERS, DENSE_HIDDEN, LSTM_HIDDEN, lstm_pieces

gluon = mx().gluon
nn = gluon.nn


def _value(F, param, x):
    """A parameter inside a forward pass: its data imperatively, its symbol in a graph."""
    return param.data(x.context) if F is mx().nd else param.var()


class _PackedInit(mx().init.Initializer):
    """Initialises a packed LSTM vector piece by piece: the weights with the
    initializer given to ``initialize()`` (as Gluon's ``rnn.LSTM`` does, in the
    same order, so a seed gives the same initial weights), the biases zero."""

    def __init__(self, pieces):
        super().__init__()
        self._pieces = pieces

    def _init_weight(self, desc, arr):
        nd, start = mx().nd, 0
        for suffix, shape in self._pieces:
            size = int(np.prod(shape))
            piece = nd.zeros(shape, dtype=arr.dtype)
            if suffix.endswith("weight"):
                desc.global_init._init_weight(mx().init.InitDesc(suffix), piece)
            arr[start:start + size] = piece.reshape(-1)
            start += size


class PackedLSTM(gluon.HybridBlock):
    """One LSTM layer (layout NTC) on mxnet's fused ``RNN`` operator, its weights
    held as the operator's flat vector.

    Gluon's ``rnn.LSTM`` keeps four arrays and concatenates them into that
    vector on every call (and splits the gradient back): about 2.8 ms of a
    training step of 20 ms, measured with mxnet's profiler; the same operator
    on a flat vector, forward and backward, took 1.02-1.05x the time of
    PyTorch's ``nn.LSTM`` against 1.27-1.34x for Gluon's layer. The
    vector holds the arrays Gluon's layer stores, in the order it
    concatenates them, and is stored as those arrays under the same names
    (:func:`toolkit._mx.pack_pieces`): model files and checkpoints do not change.
    """

    def __init__(self, hidden, input_size, **kwargs):
        super().__init__(**kwargs)
        self._hidden = hidden
        pieces = lstm_pieces(hidden, input_size)
        size = sum(int(np.prod(shape)) for _, shape in pieces)
        with self.name_scope():
            self.packed = self.params.get("packed", shape=(size,), init=_PackedInit(pieces))
        pack_pieces(self.packed, pieces)

    def hybrid_forward(self, F, x, h, c, packed):
        y, h, c = F.RNN(F.swapaxes(x, 0, 1), packed, h, c, state_size=self._hidden,
                        num_layers=1, mode="lstm", state_outputs=True)
        return F.swapaxes(y, 0, 1), h, c


class ActivityCore(gluon.HybridBlock):
    """Every weight of the network; the graphs below share one core."""

    def __init__(self, num_features, num_classes, prediction_window, **kwargs):
        super().__init__(**kwargs)
        self.num_features, self.prediction_window = num_features, prediction_window
        with self.name_scope():
            self.conv = nn.Conv1D(CONV_FILTERS, kernel_size=prediction_window,
                                  strides=prediction_window, in_channels=num_features,
                                  layout="NCW")
            self.drop_in = nn.Dropout(0.2)
            self.lstm = PackedLSTM(LSTM_HIDDEN, CONV_FILTERS)
            self.dense0 = nn.Dense(DENSE_HIDDEN, in_units=LSTM_HIDDEN, flatten=False)
            self.bn = nn.BatchNorm(axis=2, epsilon=BN_EPSILON, momentum=0.9,
                                   in_channels=DENSE_HIDDEN)
            self.drop = nn.Dropout(0.5)
            self.dense1 = nn.Dense(num_classes, in_units=DENSE_HIDDEN, flatten=False)

    def trunk(self, F, x, h, c, mask_in=None):
        """Layers up to the dense layer before batch norm; its output and LSTM states."""
        # x: (batch, windows * prediction_window, features), time-major rows.
        y = F.relu(self._windows_conv(F, x))                # (B, windows, 64)
        y = self.drop_in(y) if mask_in is None else y * mask_in
        y, h, c = self.lstm(y, h, c)
        return self.dense0(y), h, c

    def _windows_conv(self, F, x):
        """The convolution (kernel = stride = prediction_window), computed as one
        dense layer over each window's rows.

        A window is ``pw`` consecutive rows of ``x``, so reshaped to
        ``(B, windows, pw * features)`` each window is one vector, and the
        convolution's weight ``(64, features, pw)``, its two last axes swapped,
        is that dense layer's weight. The same sums as ``self.conv`` on
        ``swapaxes(x, 1, 2)`` (in another order: the last float bits may differ),
        without transposing the large input and the output; measured side by
        side, a training step took 0.90-0.96x the time of the transposing version.
        """
        weight = F.reshape(F.swapaxes(_value(F, self.conv.weight, x), 1, 2),
                           shape=(0, -1))                   # (64, pw * F)
        x = F.reshape(x, shape=(0, -1, self.prediction_window * self.num_features))
        return F.FullyConnected(x, weight, _value(F, self.conv.bias, x),
                                num_hidden=CONV_FILTERS, flatten=False)

    def scale_shift(self, F, zn, x):
        """``gamma * zn + beta`` with the batch norm's own parameters."""
        return F.broadcast_add(F.broadcast_mul(zn, _value(F, self.bn.gamma, x)),
                               _value(F, self.bn.beta, x))

    def top(self, F, z, mask_out=None):
        """ReLU, dropout and the output layer, after batch norm."""
        z = F.relu(z)
        z = self.drop(z) if mask_out is None else z * mask_out
        return self.dense1(z)                                # logits (B, windows, C)

    def hybrid_forward(self, F, x, h, c):
        z, h, c = self.trunk(F, x, h, c)
        return self.top(F, self.bn(z)), h, c


class _OverCore(gluon.HybridBlock):
    def __init__(self, core, **kwargs):
        super().__init__(**kwargs)
        self.core = core


class PredictionGraph(_OverCore):
    """Softmax probabilities and the final LSTM states."""

    def hybrid_forward(self, F, x, h, c):
        logits, h, c = self.core(x, h, c)
        return F.softmax(logits, axis=-1), h, c


class LossGraph(_OverCore):
    """Training graph: dropout masks and batch-norm groups come from outside.

    Called as ``loss(x, h, c, label, weight, mask_in, mask_out, group_size)``
    with NDArrays and an int. Dropout masks are drawn by the caller (numpy,
    seeded) and batch norm normalises each *group* of ``group_size``
    consecutive chunks (the last group may be shorter) with that group's own
    statistics. Nothing in a step then depends on which device computes
    which group, so several devices or workers give the result of one device
    (see toolkit/activity_classifier/_train.py).

    Returns ``(nll * weight, correct * weight, sum of z, sum of z**2)``: per
    window, then the dense layer's outputs summed over chunks and windows
    (for the running statistics kept during training). With
    ``statistics=False`` only the first two: the sums (and their backward,
    which mxnet runs for every output of a graph) made a step about 1.09x as
    long (medians of 4 alternated runs of benchmarks/lstm_floor.py), and nothing
    reads them when training keeps no validation set or checkpoint.
    """

    def __init__(self, core, statistics=True, **kwargs):
        super().__init__(core, **kwargs)
        self._buffers = {}
        self._statistics = statistics

    def forward(self, x, h, c, label, weight, mask_in, mask_out, group_size):
        n = x.shape[0]
        if group_size < 1:
            raise InvalidParameterError(f"group_size must be at least 1, got {group_size}")
        full = n - n % group_size if group_size < n else 0
        # Always training mode: batch norm must use the group's statistics,
        # also when the loss is only evaluated (outside autograd.record()).
        with mx().autograd.train_mode():
            if full in (0, n):
                return self._call(x, h, c, label, weight, mask_in, mask_out,
                                  min(group_size, n))
            # A shorter last group: equal groups are one reshape in the graph,
            # so the short group is a second call (same sums, added here).
            nd = mx().nd
            head = self._call(*_rows((x, h, c, label, weight, mask_in, mask_out), 0, full),
                              group_size)
            tail = self._call(*_rows((x, h, c, label, weight, mask_in, mask_out), full, n),
                              n - full)
            return (nd.concat(head[0], tail[0], dim=0), nd.concat(head[1], tail[1], dim=0)) \
                + tuple(a + b for a, b in zip(head[2:], tail[2:]))

    def _call(self, x, h, c, label, weight, mask_in, mask_out, group_size):
        groups = len(x) // group_size
        key = (groups, group_size, x.context)
        if key not in self._buffers:
            nd = mx().nd
            self._buffers[key] = (nd.zeros((groups, group_size), ctx=x.context),
                                  nd.zeros((groups * DENSE_HIDDEN,), ctx=x.context))
        shape, scratch = self._buffers[key]
        return super().forward(x, h, c, label, weight, mask_in, mask_out, shape, scratch)

    def hybrid_forward(self, F, x, h, c, label, weight, mask_in, mask_out, shape, scratch):
        core = self.core
        z, _, _ = core.trunk(F, x, h, c, mask_in)            # (B, windows, H)
        zn = _ghost_norm(F, z, shape, scratch, _value(F, core.bn.gamma, x),
                         _value(F, core.bn.beta, x))
        logits = core.top(F, zn, mask_out)
        logp = F.log_softmax(logits, axis=-1)
        nll = -F.pick(logp, label, axis=-1)                  # (B, windows)
        correct = F.argmax(logits, axis=-1) == label
        if not self._statistics:
            return nll * weight, correct * weight
        return (nll * weight, correct * weight, F.sum(z, axis=(0, 1)),
                F.sum(F.square(z), axis=(0, 1)))


def _rows(arrays, start, stop):
    """Chunks ``start:stop`` of each input (the LSTM states hold chunks on axis 1)."""
    nd = mx().nd
    return tuple(nd.slice_axis(a, axis=1 if i in (1, 2) else 0, begin=start, end=stop)
                 for i, a in enumerate(arrays))


def _ghost_norm(F, z, shape, scratch, gamma, beta):
    """``gamma * (z - mean) / sqrt(var + eps) + beta`` with each group's mean and
    (biased) variance; ``z`` is (B, windows, H).

    ``shape`` is a (groups, group size) array (only its shape is read) and the
    batch is ``groups`` consecutive runs of chunks. The statistics are those
    of mxnet's fused ``BatchNorm`` with one channel per (group, feature), on
    the outputs laid out as (group size * windows, groups * H), and the
    operator also applies ``gamma`` and ``beta`` (repeated for each group):
    forward and backward are then one operator each instead of broadcast
    arithmetic whose backward reductions dominated the step after the LSTM.
    ``scratch`` (groups * H,) stands in for the operator's running
    statistics, which mxnet requires to be graph inputs; the operator updates
    it in place and never reads it in training mode (the running statistics
    kept during training come from the sums the loss graph returns).
    """
    zg = F.reshape(F.reshape_like(z, shape, lhs_begin=0, lhs_end=1, rhs_begin=0, rhs_end=2),
                   shape=(0, -3, 0))                        # (G, g * windows, H)
    zc = F.reshape(F.swapaxes(zg, 0, 1), shape=(0, -3))      # (g * windows, G * H)
    grid = F.reshape(scratch, shape=(-1, DENSE_HIDDEN))      # (G, H)

    def per_group(p):
        return F.reshape(F.broadcast_like(F.reshape(p, shape=(1, -1)), grid), shape=(-1,))

    y = F.BatchNorm(zc, per_group(gamma), per_group(beta), scratch, scratch, eps=BN_EPSILON,
                    fix_gamma=False, use_global_stats=False, axis=1)
    y = F.swapaxes(F.reshape(y, shape=(0, -4, -1, DENSE_HIDDEN)), 0, 1)
    return F.reshape_like(y, z)


class EvalGraph(_OverCore):
    """Inference-mode loss and accuracy with the given batch-norm statistics."""

    def hybrid_forward(self, F, x, h, c, label, weight, bn_mean, bn_var, keep_in, keep_out):
        # keep_in/keep_out: all-ones dropout masks. Passing them lets the caller
        # run this graph in training mode (see _train.evaluate_chunks).
        core = self.core
        z, _, _ = core.trunk(F, x, h, c, keep_in)
        zn = F.broadcast_div(F.broadcast_sub(z, bn_mean), F.sqrt(bn_var + BN_EPSILON))
        logits = core.top(F, core.scale_shift(F, zn, x), keep_out)
        nll = -F.pick(F.log_softmax(logits, axis=-1), label, axis=-1)
        correct = F.argmax(logits, axis=-1) == label
        return nll * weight, correct * weight


class TrunkGraph(_OverCore):
    """The dense layer's outputs before batch norm, to estimate its statistics."""

    def hybrid_forward(self, F, x, h, c):
        z, _, _ = self.core.trunk(F, x, h, c)
        return z
