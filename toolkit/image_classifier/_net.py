"""The image classifier's prediction network.

``ImageClassifierNet`` = EfficientNet-Lite0 backbone (frozen, ImageNet
weights; :mod:`toolkit.pretrained`) -> 1280-d pooled features -> dense layer
(``num_classes``) -> softmax. Its weights, under structural names, are what a
model file stores:

* ``backbone.*``: the backbone (``backbone.stem.conv.weight``,
  ``backbone.blocks.3.depthwise.bn.running_var``, ... see
  :mod:`toolkit.pretrained._efficientnet`), stored so that a saved model
  predicts without the weights package;
* ``classifier.weight`` (num_classes, 1280), ``classifier.bias``
  (num_classes): the trained softmax regression, acting on the raw features
  (the feature standardisation used in training is folded in).
"""

import numpy as np

from .._mx import mx, set_weights
from ..pretrained import _efficientnet

NUM_FEATURES = _efficientnet.NUM_FEATURES
IMAGE_SIZE = _efficientnet.IMAGE_SIZE
INPUT_SCALE = _efficientnet.INPUT_SCALE
INPUT_BIAS = _efficientnet.INPUT_BIAS

_CLASS = None


def _net_class():
    global _CLASS
    if _CLASS is None:
        gluon = mx().gluon

        class ImageClassifierNet(gluon.HybridBlock):
            """backbone -> classifier -> softmax; ``x``: (N, 3, 224, 224) in [-1, 1]."""

            def __init__(self, backbone, classifier, **kwargs):
                super().__init__(**kwargs)
                self.backbone = backbone
                self.classifier = classifier

            def hybrid_forward(self, F, x):
                return F.softmax(self.classifier(self.backbone(x)), axis=-1)

        _CLASS = ImageClassifierNet
    return _CLASS


def build_classifier(num_classes, weight=None, bias=None, ctx=None):
    """A fresh dense layer 1280 -> num_classes, optionally with given weights."""
    dense = mx().gluon.nn.Dense(num_classes, in_units=NUM_FEATURES, prefix="classifier_")
    dense.initialize(mx().init.Zero(), ctx=ctx or mx().cpu())
    if weight is not None:
        set_weights(dense, {"weight": np.asarray(weight, np.float32),
                            "bias": np.asarray(bias, np.float32)}, what="image classifier layer")
    return dense


def build(num_classes, weights=None, backbone=None, classifier=None, ctx=None):
    """Return an ``ImageClassifierNet``.

    Either pass ``weights`` (all structural names, e.g. from a model file) to
    rebuild every part fresh, or pass ready ``backbone`` and ``classifier``
    blocks (as ``create`` does).
    """
    if backbone is None:
        backbone = _efficientnet.build(include_top=False, ctx=ctx, prefix="backbone_")
    if classifier is None:
        classifier = build_classifier(num_classes, ctx=ctx)
    net = _net_class()(backbone, classifier, prefix="image_classifier_")
    if weights is not None:
        set_weights(net, weights, what="image classifier")
    return net
