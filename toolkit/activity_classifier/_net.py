"""The activity classifier's networks: one core, two graphs.

``ActivityCore`` holds every weight. ``PredictionGraph`` (softmax
probabilities and final LSTM states) and ``LossGraph`` (weighted
cross-entropy) are thin wrappers around the *same* core object, so training
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

        def hybrid_forward(self, F, x, h, c):
            # x: (batch, windows * prediction_window, features), time-major rows.
            y = F.relu(self.conv(F.swapaxes(x, 1, 2)))          # (B, 64, windows)
            y = self.drop_in(F.swapaxes(y, 1, 2))                # (B, windows, 64)
            # Begin states are always passed: a hybridized LSTM cannot be
            # called both with and without them.
            y, (h, c) = self.lstm(y, [h, c])
            y = self.drop(F.relu(self.bn(self.dense0(y))))
            return self.dense1(y), h, c                          # logits (B, windows, C)

    class PredictionGraph(gluon.HybridBlock):
        def __init__(self, core, **kwargs):
            super().__init__(**kwargs)
            self.core = core

        def hybrid_forward(self, F, x, h, c):
            logits, h, c = self.core(x, h, c)
            return F.softmax(logits, axis=-1), h, c

    class LossGraph(gluon.HybridBlock):
        def __init__(self, core, **kwargs):
            super().__init__(**kwargs)
            self.core = core

        def hybrid_forward(self, F, x, h, c, label, weight):
            logits, _, _ = self.core(x, h, c)
            logp = F.log_softmax(logits, axis=-1)
            nll = -F.pick(logp, label, axis=-1)                  # (B, windows)
            correct = F.argmax(logits, axis=-1) == label
            return nll * weight, correct * weight

    core = ActivityCore(prefix="activity_")
    core.initialize(mx().init.Xavier(), ctx=ctx or mx().cpu())
    return core, PredictionGraph(core), LossGraph(core)


def zero_states(batch, ctx=None):
    nd = mx().nd
    ctx = ctx or mx().cpu()
    return nd.zeros((1, batch, LSTM_HIDDEN), ctx=ctx), nd.zeros((1, batch, LSTM_HIDDEN), ctx=ctx)
