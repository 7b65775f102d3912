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


def lstm_pieces(hidden, input_size):
    """The LSTM's stored arrays in the order mxnet's fused ``RNN`` operator reads
    them from its one flat weight vector (suffixes of ``lstm.``; gates i, f, c, o)."""
    return (("l0_i2h_weight", (4 * hidden, input_size)), ("l0_h2h_weight", (4 * hidden, hidden)),
            ("l0_i2h_bias", (4 * hidden,)), ("l0_h2h_bias", (4 * hidden,)))


WEIGHT_NAMES = (CONV_WEIGHT, CONV_BIAS, LSTM_I2H_WEIGHT, LSTM_H2H_WEIGHT, LSTM_I2H_BIAS,
                LSTM_H2H_BIAS, DENSE0_WEIGHT, DENSE0_BIAS, BN_GAMMA, BN_BETA, BN_MEAN, BN_VAR,
                DENSE1_WEIGHT, DENSE1_BIAS)


def build(num_features, num_classes, prediction_window, ctx=None):
    """Return ``(core, prediction_graph, graphs)`` sharing one set of weights.

    ``graphs`` holds the training-side graphs (:class:`Graphs`). The blocks
    live in :mod:`._graphs`, imported here so that importing the package does
    not load mxnet.
    """
    from . import _graphs
    core = _graphs.ActivityCore(num_features, num_classes, prediction_window, prefix="activity_")
    core.initialize(mx().init.Xavier(), ctx=ctx or mx().cpu())
    return core, _graphs.PredictionGraph(core), Graphs(
        _graphs.LossGraph(core), _graphs.LossGraph(core, statistics=False),
        _graphs.EvalGraph(core), _graphs.TrunkGraph(core))


class Graphs:
    """The training-side graphs over one core: ``loss`` (which also returns the
    sums for batch norm's running statistics), ``loss_only`` (which does not),
    ``eval``, ``trunk``."""

    def __init__(self, loss, loss_only, eval_, trunk):
        self.loss, self.loss_only, self.eval, self.trunk = loss, loss_only, eval_, trunk

    def hybridize(self):
        # The loss graphs run every training step with the same shapes: memory
        # planned once (static_alloc/static_shape) made a step 0.93x as long,
        # measured side by side. The others run once per epoch or at the end.
        for g in (self.loss, self.loss_only):
            g.hybridize(static_alloc=True, static_shape=True)
        for g in (self.eval, self.trunk):
            g.hybridize()


def set_bn_statistics(core, mean, var):
    """Batch norm's running mean and variance, into a network whose prediction graph
    has not run yet (its other weights may have moved into mxnet's own layouts)."""
    nd = mx().nd
    for param, value in ((core.bn.running_mean, mean), (core.bn.running_var, var)):
        param.set_data(nd.array(value.astype("float32")))


def zero_states(batch, ctx=None):
    nd = mx().nd
    ctx = ctx or mx().cpu()
    return nd.zeros((1, batch, LSTM_HIDDEN), ctx=ctx), nd.zeros((1, batch, LSTM_HIDDEN), ctx=ctx)
