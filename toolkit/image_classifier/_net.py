"""The image classifier's prediction network and the names of its stored weights.

``ImageClassifierNet`` = EfficientNet-Lite0 backbone (frozen, ImageNet
weights; :mod:`toolkit.pretrained`) -> pooled features (the model's
``pooling``: 1280-d global average, or 11,520-d over a 3x3 grid, see
:data:`POOLINGS`) -> dense layer (``num_classes``) -> softmax. Its weights, under structural names, are what a
model file stores:

* ``backbone.*`` (:data:`BACKBONE_PREFIX`): the backbone
  (``backbone.stem.conv.weight``, ``backbone.blocks.3.depthwise.bn.running_var``,
  ... see :mod:`toolkit.pretrained._efficientnet`), stored so that a saved
  model predicts without the weights package;
* ``classifier.weight`` (num_classes, :func:`num_features`) and ``classifier.bias``
  (num_classes) (:data:`CLASSIFIER_WEIGHT`, :data:`CLASSIFIER_BIAS`): the
  trained softmax regression, acting on the raw features (the feature
  standardisation used in training is folded in).

A training checkpoint also stores the training layer's own weights, which act
on standardised features (:data:`CHECKPOINT_WEIGHT`, :data:`CHECKPOINT_BIAS`):
resuming continues from those, not from the folded ones.

The exporters and the training code take these names from here.
"""

import numpy as np

from .._mx import get_weights, mx, set_weights
from ..pretrained import _efficientnet

#: The pretrained feature extractors ``create(model=...)`` accepts.
MODELS = ("efficientnet-lite0",)
DEFAULT_MODEL = "efficientnet-lite0"
NUM_FEATURES = _efficientnet.NUM_FEATURES
#: The poolings a model can have (``create(pooling=...)`` also takes 'auto');
#: see :data:`toolkit.pretrained._efficientnet.POOLINGS`.
POOLINGS = ("avg", "grid")
DEFAULT_POOLING = "avg"


def num_features(pooling=DEFAULT_POOLING):
    """Features the classifier reads for ``pooling`` (1280 or 11,520)."""
    return _efficientnet.num_features(pooling)


IMAGE_SIZE = _efficientnet.IMAGE_SIZE
INPUT_SCALE = _efficientnet.INPUT_SCALE
INPUT_BIAS = _efficientnet.INPUT_BIAS

# Structural names follow ImageClassifierNet's attributes (``backbone``, ``classifier``).
BACKBONE_PREFIX = "backbone."
CLASSIFIER_WEIGHT = "classifier.weight"
CLASSIFIER_BIAS = "classifier.bias"
CHECKPOINT_WEIGHT = "classifier/weight"
CHECKPOINT_BIAS = "classifier/bias"

#: Images run through the network at once. Activations of EfficientNet-Lite0 at 224x224
#: take ~25 MB per image at their widest (block 2's 96 x 112 x 112 expansion); CPU
#: throughput is flat from 8 to 64 images, so larger batches only cost memory (measured
#: peak RSS: ~0.7 GB at 16, ~1.8 GB at 64).
NETWORK_BATCH = 16

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


def build_backbone(weights=None, ctx=None, pooling=DEFAULT_POOLING):
    """The EfficientNet-Lite0 feature extractor (``weights``: the pretrained arrays)."""
    return _efficientnet.build(include_top=False, weights=weights, ctx=ctx, prefix="backbone_",
                               pooling=pooling)


def set_pooling(backbone, pooling):
    """Switch a backbone's pooling (its compiled graph, if any, is dropped: prepare it again)."""
    if backbone.pooling != pooling:
        backbone.pooling = pooling
        backbone._clear_cached_op()


def build_classifier(num_classes, weight=None, bias=None, ctx=None, features=None):
    """A fresh dense layer ``features`` -> num_classes, optionally with given weights.

    ``features``: the input size; by default the width of ``weight``, else 1280.
    """
    if features is None:
        features = np.shape(weight)[1] if weight is not None else NUM_FEATURES
    dense = mx().gluon.nn.Dense(num_classes, in_units=features, prefix="classifier_")
    dense.initialize(mx().init.Zero(), ctx=ctx or mx().cpu())
    if weight is not None:
        set_weights(dense, {"weight": np.asarray(weight, np.float32),
                            "bias": np.asarray(bias, np.float32)}, what="image classifier layer")
    return dense


def build(num_classes, weights=None, backbone=None, classifier=None, ctx=None,
          pooling=DEFAULT_POOLING):
    """Return an ``ImageClassifierNet``.

    Either pass ``weights`` (all structural names, e.g. from a model file) and
    ``pooling`` to rebuild every part fresh, or pass ready ``backbone`` and
    ``classifier`` blocks (as ``create`` does).
    """
    if backbone is None:
        backbone = build_backbone(ctx=ctx, pooling=pooling)
    if classifier is None:
        classifier = build_classifier(num_classes, ctx=ctx,
                                      features=num_features(backbone.pooling))
    net = _net_class()(backbone, classifier, prefix="image_classifier_")
    if weights is not None:
        set_weights(net, weights, what="image classifier")
    return net


def classifier_arrays(net):
    """``(weight, bias)`` of the net's classifier layer as numpy arrays."""
    w = get_weights(net.classifier)
    return w["weight"], w["bias"]


def backbone_weights(backbone, ctx=None):
    """The backbone's arrays under their model-file names (``backbone.*``)."""
    return {BACKBONE_PREFIX + k: v for k, v in get_weights(backbone, ctx).items()}


def classifier_weights(weight, bias):
    """The classifier layer's arrays under their model-file names."""
    return {CLASSIFIER_WEIGHT: weight, CLASSIFIER_BIAS: bias}


def network_batch(batch_size):
    """Images per forward pass for a decoding batch of ``batch_size``."""
    return max(1, min(batch_size, NETWORK_BATCH))


def prepare_backbone(backbone, batch_size, num_images):
    """Make ``backbone`` fast for inference on sub-batches of :func:`network_batch` images."""
    sample = mx().nd.zeros((max(1, min(network_batch(batch_size), num_images)), 3, IMAGE_SIZE,
                            IMAGE_SIZE))
    return _efficientnet.prepare_for_inference(backbone, sample)


# --- fine-tuning: the backbone split into a frozen front and a trained tail ---------------

#: MBConv blocks of EfficientNet-Lite0 (``backbone.blocks.0`` .. ``blocks.15``).
NUM_BLOCKS = len(_efficientnet.block_specs())
#: Blocks the fine-tune path trains by default (with the head convolution): the last one,
#: at 7x7. Measured on 1,000 MNIST digits downscaled to 8x8 (2 loaded CPU cores): an epoch
#: of the last block + head took ~7 s on cached activations, the last 5 blocks (from the
#: 14x14 stage) ~44 s, which leaves no room for several epochs in the 5-minute budget.
FINE_TUNE_BLOCKS = 1

_SPLIT_CLASSES = None


def _split_classes():
    global _SPLIT_CLASSES
    if _SPLIT_CLASSES is None:
        gluon = mx().gluon

        class Front(gluon.HybridBlock):
            """stem -> blocks[:cut]: the part of the backbone fine-tuning leaves frozen."""

            def __init__(self, backbone, cut, **kwargs):
                super().__init__(**kwargs)
                # Plain attributes: the parameters stay registered in the backbone only.
                self._parts = [backbone.stem] + list(backbone.blocks)[:cut]
                for i, part in enumerate(self._parts):
                    self.register_child(part, f"_p{i}")

            def hybrid_forward(self, F, x):
                for part in self._parts:
                    x = part(x)
                return x

        class Tail(gluon.HybridBlock):
            """blocks[cut:] -> head -> pooling: the trained part (the backbone's pooling)."""

            def __init__(self, backbone, cut, **kwargs):
                super().__init__(**kwargs)
                # Read through a function: a Block attribute (or a list holding one) would
                # make the whole backbone a child (or draw mxnet's container warning).
                self._pooling = lambda: backbone.pooling
                self._parts = list(backbone.blocks)[cut:] + [backbone.head]
                for i, part in enumerate(self._parts):
                    self.register_child(part, f"_p{i}")

            def hybrid_forward(self, F, x):
                for part in self._parts:
                    x = part(x)
                return _efficientnet.pool(F, x, self._pooling())

        _SPLIT_CLASSES = (Front, Tail)
    return _SPLIT_CLASSES


def split_backbone(backbone, blocks):
    """``(front, tail, cut)``: blocks sharing ``backbone``'s parameters, for fine-tuning.

    ``front`` maps a (N, 3, 224, 224) input to block ``cut - 1``'s output
    (``cut = NUM_BLOCKS - blocks``); ``tail`` maps that to the pooled
    features (``backbone.pooling``, read at each hybridization). ``backbone`` must be a fresh (not hybridized) one, used for training only.

    The tail's BatchNorm layers are switched to ``use_global_stats``: mxnet's
    BatchNorm backward otherwise differentiates through *batch* statistics even
    when the forward pass used the running ones (``train_mode=False``), so a
    sample's gradient would depend on the others in its batch (and on how a
    batch is split between devices), and the backward pass nudges the running
    statistics (measured: 1e-7 per step).
    """
    cut = NUM_BLOCKS - blocks
    for part in list(backbone.blocks)[cut:] + [backbone.head]:
        for block in _batchnorms(part):
            block._kwargs["use_global_stats"] = True
    front_cls, tail_cls = _split_classes()
    return front_cls(backbone, cut, prefix="front_"), tail_cls(backbone, cut, prefix="tail_"), cut


def _batchnorms(block):
    found = [block] if isinstance(block, mx().gluon.nn.BatchNorm) else []
    for child in block._children.values():
        found += _batchnorms(child)
    return found


def tail_params(backbone, blocks):
    """``{model-file name: Parameter}`` that fine-tuning trains (no BatchNorm running stats).

    The trained blocks' BatchNorm layers keep their ImageNet running statistics (see
    :mod:`._finetune`), so ``running_mean``/``running_var`` are not trained.
    """
    from .._mx import structural_params
    cut = NUM_BLOCKS - blocks
    keep = tuple(f"blocks.{i}." for i in range(cut, NUM_BLOCKS)) + ("head.",)
    return {BACKBONE_PREFIX + k: p for k, p in structural_params(backbone).items()
            if k.startswith(keep) and not k.endswith(("running_mean", "running_var"))}
