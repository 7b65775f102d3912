"""The activity classifier's networks: one core, two graphs.

``ActivityCore`` holds every weight. ``PredictionGraph`` (softmax
probabilities and final LSTM states), ``LossGraph`` (weighted cross-entropy
with caller-drawn dropout masks and grouped batch norm), ``EvalGraph`` and
``TrunkGraph`` are thin wrappers around the *same* core object, so training
the loss graph trains the prediction graph. Only the core's weights are saved,
under structural names such as ``conv.weight`` and ``lstm.l0_i2h_weight``.

Architecture (Turi Create's, a proven design): 1-D convolution (64 filters,
kernel = stride = prediction_window) -> ReLU -> dropout 0.2 -> LSTM(200) ->
dense 128 -> batch norm -> ReLU -> dropout 0.5 -> dense(num_classes).
"""

from .._mx import mx

CONV_FILTERS = 64
LSTM_HIDDEN = 200
DENSE_HIDDEN = 128
BN_EPSILON = 1e-3

# The stored weights' names: the attribute paths of ActivityCore's parameters
# (toolkit._mx.structural_params). Exporters, training and checkpoints use these
# names, so renaming a layer is an edit here plus a toolkit._model.VersionStep.
CONV_WEIGHT, CONV_BIAS = "conv.weight", "conv.bias"
LSTM_I2H_WEIGHT, LSTM_H2H_WEIGHT = "lstm.l0_i2h_weight", "lstm.l0_h2h_weight"
LSTM_I2H_BIAS, LSTM_H2H_BIAS = "lstm.l0_i2h_bias", "lstm.l0_h2h_bias"
DENSE0_WEIGHT, DENSE0_BIAS = "dense0.weight", "dense0.bias"
BN_GAMMA, BN_BETA = "bn.gamma", "bn.beta"
BN_MEAN, BN_VAR = "bn.running_mean", "bn.running_var"
DENSE1_WEIGHT, DENSE1_BIAS = "dense1.weight", "dense1.bias"
WEIGHT_NAMES = (CONV_WEIGHT, CONV_BIAS, LSTM_I2H_WEIGHT, LSTM_H2H_WEIGHT, LSTM_I2H_BIAS,
                LSTM_H2H_BIAS, DENSE0_WEIGHT, DENSE0_BIAS, BN_GAMMA, BN_BETA, BN_MEAN, BN_VAR,
                DENSE1_WEIGHT, DENSE1_BIAS)


def _blocks():
    gluon = mx().gluon
    return gluon, gluon.nn, gluon.rnn


def build(num_features, num_classes, prediction_window, ctx=None):
    """Return ``(core, prediction_graph, loss_graph)`` sharing one set of weights."""
    gluon, nn, rnn = _blocks()

    class ActivityCore(gluon.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
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
            if F is mx().nd:
                weight, bias = self.conv.weight.data(x.context), self.conv.bias.data(x.context)
            else:
                weight, bias = self.conv.weight.var(), self.conv.bias.var()
            weight = F.reshape(F.swapaxes(weight, 1, 2), shape=(0, -1))   # (64, pw * F)
            x = F.reshape(x, shape=(0, -1, prediction_window * num_features))
            return F.FullyConnected(x, weight, bias, num_hidden=CONV_FILTERS, flatten=False)

        def top(self, F, z, mask_out=None):
            """ReLU, dropout and the output layer, after batch norm."""
            z = F.relu(z)
            z = self.drop(z) if mask_out is None else z * mask_out
            return self.dense1(z)                                # logits (B, windows, C)

        def hybrid_forward(self, F, x, h, c):
            z, h, c = self.trunk(F, x, h, c)
            return self.top(F, self.bn(z)), h, c

    class PredictionGraph(gluon.HybridBlock):
        def __init__(self, core, **kwargs):
            super().__init__(**kwargs)
            self.core = core

        def hybrid_forward(self, F, x, h, c):
            logits, h, c = self.core(x, h, c)
            return F.softmax(logits, axis=-1), h, c

    class LossGraph(gluon.HybridBlock):
        """Training graph: dropout masks and batch-norm groups come from outside.

        Dropout masks are drawn by the caller (numpy, seeded) and batch norm
        normalises each *group* of chunks with that group's own statistics
        (``groups[i, j] = 1 / (windows in i's group)`` when chunks i and j
        share a group, else 0). Nothing in a step then depends on which device
        computes which group, so several devices or workers give the result
        of one device (see toolkit/activity_classifier/_train.py).
        """

        def __init__(self, core, **kwargs):
            super().__init__(**kwargs)
            self.core = core

        def hybrid_forward(self, F, x, h, c, label, weight, mask_in, mask_out, groups):
            core = self.core
            z, _, _ = core.trunk(F, x, h, c, mask_in)            # (B, windows, H)
            if F is mx().nd:
                gamma, beta = core.bn.gamma.data(x.context), core.bn.beta.data(x.context)
            else:
                gamma, beta = core.bn.gamma.var(), core.bn.beta.var()
            mean = F.expand_dims(F.dot(groups, F.sum(z, axis=1)), axis=1)
            d = F.broadcast_sub(z, mean)
            var = F.expand_dims(F.dot(groups, F.sum(F.square(d), axis=1)), axis=1)
            zn = F.broadcast_div(d, F.sqrt(var + BN_EPSILON))
            zn = F.broadcast_add(F.broadcast_mul(zn, gamma), beta)
            logits = core.top(F, zn, mask_out)
            logp = F.log_softmax(logits, axis=-1)
            nll = -F.pick(logp, label, axis=-1)                  # (B, windows)
            correct = F.argmax(logits, axis=-1) == label
            return (nll * weight, correct * weight, F.sum(z, axis=(0, 1)),
                    F.sum(F.square(z), axis=(0, 1)))

    class EvalGraph(gluon.HybridBlock):
        """Inference-mode loss and accuracy with the given batch-norm statistics."""

        def __init__(self, core, **kwargs):
            super().__init__(**kwargs)
            self.core = core

        def hybrid_forward(self, F, x, h, c, label, weight, bn_mean, bn_var, keep_in,
                           keep_out):
            # keep_in/keep_out: all-ones dropout masks. Passing them lets the caller
            # run this graph in training mode (see _train.evaluate_chunks).
            core = self.core
            z, _, _ = core.trunk(F, x, h, c, keep_in)
            if F is mx().nd:
                gamma, beta = core.bn.gamma.data(x.context), core.bn.beta.data(x.context)
            else:
                gamma, beta = core.bn.gamma.var(), core.bn.beta.var()
            zn = F.broadcast_div(F.broadcast_sub(z, bn_mean), F.sqrt(bn_var + BN_EPSILON))
            logits = core.top(F, F.broadcast_add(F.broadcast_mul(zn, gamma), beta), keep_out)
            nll = -F.pick(F.log_softmax(logits, axis=-1), label, axis=-1)
            correct = F.argmax(logits, axis=-1) == label
            return nll * weight, correct * weight

    class TrunkGraph(gluon.HybridBlock):
        """The dense layer's outputs before batch norm, to estimate its statistics."""

        def __init__(self, core, **kwargs):
            super().__init__(**kwargs)
            self.core = core

        def hybrid_forward(self, F, x, h, c):
            z, _, _ = self.core.trunk(F, x, h, c)
            return z

    core = ActivityCore(prefix="activity_")
    core.initialize(mx().init.Xavier(), ctx=ctx or mx().cpu())
    return core, PredictionGraph(core), Graphs(LossGraph(core), EvalGraph(core), TrunkGraph(core))


class Graphs:
    """The training-side graphs over one core: ``loss``, ``eval``, ``trunk``."""

    def __init__(self, loss, eval_, trunk):
        self.loss, self.eval, self.trunk = loss, eval_, trunk

    def hybridize(self):
        for g in (self.loss, self.eval, self.trunk):
            g.hybridize()


def zero_states(batch, ctx=None):
    nd = mx().nd
    ctx = ctx or mx().cpu()
    return nd.zeros((1, batch, LSTM_HIDDEN), ctx=ctx), nd.zeros((1, batch, LSTM_HIDDEN), ctx=ctx)
