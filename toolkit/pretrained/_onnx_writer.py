"""EfficientNet-Lite0 as ONNX nodes (opset 17), shared by the image tasks' exports.

Per convolution one ``Conv`` with the BatchNorm folded into its weights and
bias, explicit (asymmetric for stride 2) TF "same" ``pads``, ``Clip`` 0..6
for ReLU6 and ``Add`` for the residuals.

Why BatchNorm is folded: it halves the number of nodes, and it is what
``predict`` computes too on an MKL-DNN build of mxnet (which fuses each
convolution with its BatchNorm); folding in float64 and rounding once to
float32 keeps the features within ~1e-5 of ``predict``'s either way.
"""

import numpy as np

from . import _efficientnet


def fold_batchnorm(conv_w, gamma, beta, mean, var, eps=_efficientnet.BN_EPSILON):
    """Conv weights (cout, ...) and BatchNorm running statistics -> (weight, bias)
    of one convolution computing conv -> BN, folded in float64, returned float32."""
    inv = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    w = np.asarray(conv_w, np.float64) * inv.reshape(-1, *([1] * (np.ndim(conv_w) - 1)))
    b = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * inv
    return w.astype(np.float32), b.astype(np.float32)


def scale_input(g, x):
    """Raw 0..255 pixels -> network input ``x * (1/127.5) + (-1)`` in float32, as
    ``toolkit._images.to_network_input`` computes it for ``predict``."""
    y = g.node("Mul", [x, g.initializer("/scale/mul", np.float32(_efficientnet.INPUT_SCALE))],
               ["/scale/scaled"])
    return g.node("Add", [y, g.initializer("/scale/add", np.float32(_efficientnet.INPUT_BIAS))],
                  ["/scale/out"])


class _Nodes:
    def __init__(self, g, weights, prefix):
        self.g = g
        self.w = weights
        self.prefix = prefix
        self._relu6 = None

    def _relu6_bounds(self):
        if self._relu6 is None:
            self._relu6 = (self.g.initializer("/relu6/min", np.float32(0.0)),
                           self.g.initializer("/relu6/max", np.float32(6.0)))
        return self._relu6

    def conv(self, prefix, x, cin, cout, kernel, stride, in_size, groups, act):
        g, w = self.g, self.w
        name = "/backbone/" + prefix.replace(".", "/")
        bn = f"{self.prefix}{prefix}.bn."
        weight, bias = fold_batchnorm(w[f"{self.prefix}{prefix}.conv.weight"], w[bn + "gamma"],
                                      w[bn + "beta"], w[bn + "running_mean"],
                                      w[bn + "running_var"])
        # TF "same" padding for the fixed 224x224 input, as the mxnet network pads.
        (before, after), _ = _efficientnet.same_padding(in_size, kernel, stride)
        y = g.node("Conv", [x, g.initializer(name + "/W", weight),
                            g.initializer(name + "/B", bias)], [name + "/conv"],
                   kernel_shape=[kernel, kernel], strides=[stride, stride],
                   pads=[before, before, after, after], dilations=[1, 1], group=groups)
        if act:
            lo, hi = self._relu6_bounds()
            y = g.node("Clip", [y, lo, hi], [name + "/relu6"])
        return y

    def add(self, i, y, x):
        return self.g.node("Add", [y, x], [f"/backbone/blocks/{i}/add"])


def write_backbone(g, x, weights, fine_block=None, prefix="backbone."):
    """Add EfficientNet-Lite0 (input in [-1, 1]) up to its head convolution's
    ReLU6 output (B, 1280, 7, 7). Returns ``(head, fine)``, ``fine`` the output
    of block ``fine_block`` (``None`` when not asked for). ``weights`` holds the
    backbone's arrays under ``prefix`` (the task network's name for it)."""
    nodes = _Nodes(g, weights, prefix)
    head, _, fine = _efficientnet.walk(nodes.conv, nodes.add, x, fine_block)
    return head, fine
