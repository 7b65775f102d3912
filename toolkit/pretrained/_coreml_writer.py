"""EfficientNet-Lite0 as Core ML NeuralNetwork layers, shared by the image tasks' exports.

Each convolution becomes a Core ML convolution with the network's static TF
"same" padding as explicit amounts, an unfused batchnorm layer with the
running statistics, and ReLU6 written as ``6 * hard_sigmoid(x / 6)``
(``SIGMOID_HARD`` with alpha 1/6, then ``LINEAR`` times 6), which Core ML
NeuralNetwork models have no single layer for.
"""

import numpy as np

from . import _efficientnet


class _Layers:
    def __init__(self, builder, weights, prefix):
        self.b = builder
        self.w = weights
        self.prefix = prefix

    def conv(self, prefix, x, cin, cout, kernel, stride, in_size, groups, act):
        b, w = self.b, self.w
        name = prefix.replace(".", "_")
        (before, after), _ = _efficientnet.same_padding(in_size, kernel, stride)
        kernel_w = w[f"{self.prefix}{prefix}.conv.weight"]          # (cout, cin/groups, k, k)
        b.add_convolution(
            name + "_conv", kernel_channels=cin // groups, output_channels=cout, height=kernel,
            width=kernel, stride_height=stride, stride_width=stride, border_mode="valid",
            groups=groups, W=np.ascontiguousarray(kernel_w.transpose(2, 3, 1, 0)), b=None,
            has_bias=False, input_name=x, output_name=name + "_conv", padding_top=before,
            padding_bottom=after, padding_left=before, padding_right=after)
        bn = f"{self.prefix}{prefix}.bn."
        b.add_batchnorm(name + "_bn", channels=cout, gamma=w[bn + "gamma"], beta=w[bn + "beta"],
                        mean=w[bn + "running_mean"], variance=w[bn + "running_var"],
                        input_name=name + "_conv", output_name=name + "_bn",
                        epsilon=_efficientnet.BN_EPSILON)
        out = name + "_bn"
        if act:
            b.add_activation(name + "_relu6a", "SIGMOID_HARD", out, name + "_relu6a",
                             params=[1.0 / 6.0, 0.0])
            b.add_activation(name + "_relu6", "LINEAR", name + "_relu6a", name + "_relu6",
                             params=[6.0, 0.0])
            out = name + "_relu6"
        return out

    def add(self, i, y, x):
        self.b.add_elementwise(f"blocks_{i}_add", input_names=[y, x],
                               output_name=f"blocks_{i}_add", mode="ADD")
        return f"blocks_{i}_add"


def write_backbone(builder, weights, x, fine_block=None, prefix="backbone."):
    """Add the backbone to a ``NeuralNetworkBuilder``, reading ``x`` (in [-1, 1]).

    ``weights`` holds the backbone's arrays under ``prefix`` (the task network's
    name for its backbone, from the task's ``_net``). Returns ``(head, size,
    fine)`` as :func:`toolkit.pretrained._efficientnet.walk`: blob names of the
    1280-channel head output (``size`` x ``size``) and of block
    ``fine_block``'s output.
    """
    layers = _Layers(builder, weights, prefix)
    return _efficientnet.walk(layers.conv, layers.add, x, fine_block)


def set_image_input(builder, feature):
    """Make ``feature`` an RGB image input scaled to the network's [-1, 1] range."""
    bias = _efficientnet.INPUT_BIAS
    builder.set_pre_processing_parameters(
        image_input_names=[feature], is_bgr=False, red_bias=bias, green_bias=bias,
        blue_bias=bias, image_scale=_efficientnet.INPUT_SCALE)
