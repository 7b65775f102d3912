"""The activity classifier's Gluon blocks: one core, four graphs over it.

Imported by :func:`._net.build` only: importing this module loads mxnet, and
``import toolkit`` must not. See :mod:`._net` for the architecture and the
stored weight names.
"""

from .._mx import mx
from ._net import BN_EPSILON, CONV_FILTERS, DENSE_HIDDEN, LSTM_HIDDEN

gluon = mx().gluon
nn, rnn = gluon.nn, gluon.rnn


def _value(F, param, x):
    """A parameter inside a forward pass: its data imperatively, its symbol in a graph."""
    return param.data(x.context) if F is mx().nd else param.var()


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
            self.lstm = rnn.LSTM(LSTM_HIDDEN, layout="NTC", input_size=CONV_FILTERS)
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
        # Begin states are always passed: a hybridized LSTM cannot be
        # called both with and without them.
        y, (h, c) = self.lstm(y, [h, c])
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

    Dropout masks are drawn by the caller (numpy, seeded) and batch norm
    normalises each *group* of chunks with that group's own statistics
    (``groups[i, j] = 1 / (windows in i's group)`` when chunks i and j
    share a group, else 0). Nothing in a step then depends on which device
    computes which group, so several devices or workers give the result
    of one device (see toolkit/activity_classifier/_train.py).
    """

    def hybrid_forward(self, F, x, h, c, label, weight, mask_in, mask_out, groups):
        core = self.core
        z, _, _ = core.trunk(F, x, h, c, mask_in)            # (B, windows, H)
        mean = F.expand_dims(F.dot(groups, F.sum(z, axis=1)), axis=1)
        d = F.broadcast_sub(z, mean)
        var = F.expand_dims(F.dot(groups, F.sum(F.square(d), axis=1)), axis=1)
        zn = core.scale_shift(F, F.broadcast_div(d, F.sqrt(var + BN_EPSILON)), x)
        logits = core.top(F, zn, mask_out)
        logp = F.log_softmax(logits, axis=-1)
        nll = -F.pick(logp, label, axis=-1)                  # (B, windows)
        correct = F.argmax(logits, axis=-1) == label
        return (nll * weight, correct * weight, F.sum(z, axis=(0, 1)),
                F.sum(F.square(z), axis=(0, 1)))


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
