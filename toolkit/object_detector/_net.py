"""The object detector's prediction network.

``ObjectDetectorNet`` = EfficientNet-Lite0 backbone (frozen, ImageNet weights,
:mod:`toolkit.pretrained`) up to its 1x1 head convolution, i.e. the 1280-channel
feature map at stride 32 (7x7 for the 224x224 input), then a small YOLO-style
head trained on it:

* ``head.conv1``: 1x1 convolution 1280 -> 256 (bias), LeakyReLU(0.1);
* ``head.fine``: 3x3 stride-2 convolution (padding 1) 112 -> 128 (bias) on the
  stride-16 map (output of block 10, 14x14), LeakyReLU(0.1): finer detail
  for localisation;
* ``head.conv2``: 3x3 convolution of both, concatenated, 384 -> 256 (bias,
  padding 1), LeakyReLU(0.1);
* ``head.out``: 1x1 convolution 256 -> A * (5 + C) (bias).

Output channel ``a * (5 + C) + k`` is, for anchor ``a``: k = 0, 1 ``tx, ty``
(box centre offset in the cell, through a sigmoid), k = 2, 3 ``tw, th``
(``exp(t) * anchor``), k = 4 the objectness logit, then C class logits.

Weight names (structural, as :func:`toolkit._mx.get_weights` derives them from
the attributes ``backbone`` and ``head`` of ``ObjectDetectorNet``): ``backbone.*``
(see :mod:`toolkit.pretrained._efficientnet`) and :func:`head_weight` of each of
:data:`HEAD_LAYERS`, e.g. ``head.conv1.weight``, ``head.conv1.bias``. This
module owns these names: training (checkpoints) and the exporters get them
from :data:`BACKBONE`, :data:`HEAD`, :func:`head_weight`,
:func:`join_weights` and :func:`head_weights`.
"""

import numpy as np

from .._mx import mx, set_weights
from ..pretrained import _efficientnet

IMAGE_SIZE = _efficientnet.IMAGE_SIZE
STRIDE = 32
GRID = IMAGE_SIZE // STRIDE
FEATURE_CHANNELS = _efficientnet.HEAD_CHANNELS
HIDDEN = 256
#: The stride-16 map: output of block 10 (end of stage 5), 112 channels, 14x14.
FINE_BLOCK = 10
FINE_CHANNELS = 112
FINE_HIDDEN = 128
#: Dropout on the backbone's features while training the head (masks drawn on the
#: host, see :func:`dropout_masks`).
DROPOUT = 0.3
INPUT_SCALE = _efficientnet.INPUT_SCALE
INPUT_BIAS = _efficientnet.INPUT_BIAS
#: Anchor (width, height) in grid cells: sizes 1, 2 and 4 cells (32, 64, 128 px at 224)
#: times aspect ratios 1:2, 1:1 and 2:1.
DEFAULT_ANCHORS = ((0.7, 1.4), (1.0, 1.0), (1.4, 0.7), (1.4, 2.8), (2.0, 2.0), (2.8, 1.4),
                   (2.8, 5.6), (4.0, 4.0), (5.6, 2.8))

#: Title of the task in exported models' descriptions.
TASK_TITLE = "Object detector"
#: Prefixes of the stored weight names: the attributes of ``ObjectDetectorNet``.
BACKBONE = "backbone"
HEAD = "head"
#: The head's layers (attributes of ``DetectorHead``), each with a weight and a bias.
HEAD_LAYERS = ("conv1", "fine", "conv2", "out")

_CLASSES = None


def head_weight(layer, kind="weight"):
    """Stored name of a head layer's ``'weight'`` or ``'bias'``, e.g. ``head.conv1.weight``."""
    return f"{HEAD}.{layer}.{kind}"


def join_weights(backbone=None, head=None):
    """One weight dict with stored names from the backbone's and the head's own names."""
    out = {f"{BACKBONE}.{k}": v for k, v in (backbone or {}).items()}
    out.update({f"{HEAD}.{k}": v for k, v in (head or {}).items()})
    return out


def head_weights(weights):
    """The head's own weights (names without ``head.``) out of a stored weight dict."""
    prefix = HEAD + "."
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def _classes():
    global _CLASSES
    if _CLASSES is None:
        gluon = mx().gluon
        nn = gluon.nn

        class DetectorHead(gluon.HybridBlock):
            """Feature maps (N, 1280, G, G) and (N, 112, 2G, 2G) -> (N, A * (5 + C), G, G)."""

            def __init__(self, num_outputs, **kwargs):
                super().__init__(**kwargs)
                with self.name_scope():
                    self.conv1 = nn.Conv2D(HIDDEN, 1, in_channels=FEATURE_CHANNELS)
                    self.fine = nn.Conv2D(FINE_HIDDEN, 3, strides=2, padding=1,
                                          in_channels=FINE_CHANNELS)
                    self.conv2 = nn.Conv2D(HIDDEN, 3, padding=1, in_channels=HIDDEN + FINE_HIDDEN)
                    self.out = nn.Conv2D(num_outputs, 1, in_channels=HIDDEN)

            def hybrid_forward(self, F, x, fine):
                # Dropout is the identity at prediction time; training does not use
                # this path but TrainingHead, with dropout masks drawn on the host.
                return _layers(F, self, F.Dropout(x, p=DROPOUT), F.Dropout(fine, p=DROPOUT))

        class TrainingHead(gluon.HybridBlock):
            """The head's training forward pass: dropout by masks given as inputs.

            ``keep`` and ``keep_fine`` are the inputs' shapes, 0 or ``1 / (1 -
            DROPOUT)``, drawn with numpy by the trainer from its seeded generator
            for the whole global batch, so a step does not depend on the devices
            that share it (mxnet's own dropout draws on each device's generator,
            whose state no checkpoint can restore). The parameters are the
            wrapped head's own.
            """

            def __init__(self, head, **kwargs):
                super().__init__(**kwargs)
                self.head = head

            def hybrid_forward(self, F, x, fine, keep, keep_fine):
                return _layers(F, self.head, x * keep, fine * keep_fine)

        def _maps(b, x):
            blocks = list(b.blocks)
            for blk in blocks[:FINE_BLOCK + 1]:
                x = blk(x)
            fine = x
            for blk in blocks[FINE_BLOCK + 1:]:
                x = blk(x)
            return b.head(x), fine

        class ObjectDetectorNet(gluon.HybridBlock):
            """image (N, 3, 224, 224) in [-1, 1] -> raw head outputs (N, A(5+C), 7, 7)."""

            def __init__(self, backbone, head, **kwargs):
                super().__init__(**kwargs)
                self.backbone = backbone
                self.head = head

            def hybrid_forward(self, F, x):
                coarse, fine = _maps(self.backbone, self.backbone.stem(x))
                return self.head(coarse, fine)

        class FeatureMap(gluon.HybridBlock):
            """The backbone's two feature maps (stride 32 and 16), for caching."""

            def __init__(self, backbone, **kwargs):
                super().__init__(**kwargs)
                self.backbone = backbone

            def hybrid_forward(self, F, x):
                return _maps(self.backbone, self.backbone.stem(x))

        _CLASSES = (DetectorHead, ObjectDetectorNet, FeatureMap, TrainingHead)
    return _CLASSES


def _layers(F, head, x, fine):
    """The head's layers on (already dropped-out) feature maps."""
    x = F.LeakyReLU(head.conv1(x), slope=0.1)
    y = F.LeakyReLU(head.fine(fine), slope=0.1)
    x = F.LeakyReLU(head.conv2(F.concat(x, y, dim=1)), slope=0.1)
    return head.out(x)


def build_head(num_anchors, num_classes, ctx=None, seed_bias=True):
    """A freshly initialised head; the objectness biases start at -4 (low confidence)."""
    head = _classes()[0](num_anchors * (5 + num_classes), prefix="head_")
    head.initialize(mx().init.Xavier(), ctx=ctx or mx().cpu())
    if seed_bias:
        bias = np.zeros(num_anchors * (5 + num_classes), np.float32)
        bias[4::5 + num_classes] = -4.0
        head.out.bias.set_data(mx().nd.array(bias, ctx=ctx or mx().cpu()))
    return head


def build(num_anchors, num_classes, weights=None, backbone=None, head=None, ctx=None):
    """Return an ``ObjectDetectorNet`` (from stored ``weights``, or from ready parts)."""
    if backbone is None:
        backbone = _efficientnet.build(include_top=False, ctx=ctx, prefix="backbone_")
    if head is None:
        head = build_head(num_anchors, num_classes, ctx=ctx, seed_bias=weights is None)
    net = _classes()[1](backbone, head, prefix="object_detector_")
    if weights is not None:
        set_weights(net, weights, what="object detector")
    return net


def training_head(head):
    """The training forward pass of ``head`` with dropout masks as inputs (shares its weights).

    Returns a block ``(x, fine, keep, keep_fine) -> raw outputs``; see
    :func:`dropout_masks`.
    """
    return _classes()[3](head, prefix="object_detector_training_")


def dropout_masks(rng, n):
    """Inverted-dropout masks for ``n`` images: (n, 1280, G, G) and (n, 112, 2G, 2G).

    Each entry is 0 with probability ``DROPOUT``, else ``1 / (1 - DROPOUT)``,
    as mxnet's ``Dropout`` in training mode, but drawn from the numpy
    generator ``rng`` (whose state checkpoints keep).
    """
    scale = np.float32(1.0 / (1.0 - DROPOUT))
    keep = (rng.random_sample((n, FEATURE_CHANNELS, GRID, GRID)) >= DROPOUT) * scale
    keep_fine = (rng.random_sample((n, FINE_CHANNELS, 2 * GRID, 2 * GRID)) >= DROPOUT) * scale
    return keep.astype(np.float32), keep_fine.astype(np.float32)


def pretrained_backbone():
    """The frozen EfficientNet-Lite0 backbone with its ImageNet weights (no classifier)."""
    from ..pretrained import load_efficientnet_lite0
    return _efficientnet.build(include_top=False, weights=load_efficientnet_lite0(),
                               prefix="backbone_")


def prepare(block, batch):
    """Make ``block`` (a network taking images) fast for batches of ``batch`` images."""
    sample = mx().nd.zeros((max(1, batch), 3, IMAGE_SIZE, IMAGE_SIZE))
    return _efficientnet.prepare_for_inference(block, sample)


def feature_map(backbone):
    """A block computing the backbone's (N, 1280, 7, 7) and (N, 112, 14, 14) maps."""
    return _classes()[2](backbone, prefix="object_detector_features_")
