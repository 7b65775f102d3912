"""EfficientNet-Lite0 as a Gluon ``HybridBlock``.

EfficientNet-Lite (Tan & Le; the TensorFlow "lite" variants) is EfficientNet-B0
made friendly to integer accelerators: **no squeeze-and-excitation**, **ReLU6**
instead of swish, and a stem (32 filters) and head (1280 filters) that do not
scale. Lite0 has width and depth multipliers 1.0, input 224x224 RGB scaled to
[-1, 1] (``x / 127.5 - 1``).

Layout (16 MBConv blocks in 7 stages)::

    stem      conv 3x3 /2, 32  -> BN -> ReLU6                         112x112
    stage 1   1 block  k3 /1 expand 1  32 -> 16                       112x112
    stage 2   2 blocks k3 /2 expand 6  16 -> 24                        56x56
    stage 3   2 blocks k5 /2 expand 6  24 -> 40                        28x28
    stage 4   3 blocks k3 /2 expand 6  40 -> 80                        14x14
    stage 5   3 blocks k5 /1 expand 6  80 -> 112                       14x14
    stage 6   4 blocks k5 /2 expand 6 112 -> 192                        7x7
    stage 7   1 block  k3 /1 expand 6 192 -> 320                        7x7
    head      conv 1x1, 1280 -> BN -> ReLU6 -> pooling (see POOLINGS)  1280
    fc        dense 1000 (ImageNet classes; only with ``include_top``)

An MBConv block is: [expand 1x1 conv -> BN -> ReLU6] (absent when the
expansion is 1) -> depthwise kxk conv -> BN -> ReLU6 -> project 1x1 conv -> BN,
plus the input when the stride is 1 and the channel counts match. Convolutions
have no bias; BatchNorm epsilon is 1e-3.

Padding is TensorFlow's "same", computed statically from the 224x224 input
size as the ported weights were trained with: for each convolution
``pad = max((ceil(in / s) - 1) * s + k - in, 0)``, ``floor(pad / 2)`` before
and the rest after. For stride 1 that is symmetric (done by the convolution
itself); for stride 2 on an even input it is asymmetric (0 before / 1 after
for k=3, 1 / 2 for k=5) and done by an explicit pad before a 'valid'
convolution.

Structural weight names (the toolkit's own; see :mod:`toolkit._mx`)::

    stem.conv.weight, stem.bn.{gamma,beta,running_mean,running_var}
    blocks.<i>.expand.conv.weight, blocks.<i>.expand.bn.*      (i = 1..15)
    blocks.<i>.depthwise.conv.weight, blocks.<i>.depthwise.bn.*
    blocks.<i>.project.conv.weight, blocks.<i>.project.bn.*
    head.conv.weight, head.bn.*
    fc.weight, fc.bias                                          (include_top only)
"""

from .._mx import mx

IMAGE_SIZE = 224
NUM_FEATURES = 1280
NUM_IMAGENET_CLASSES = 1000
BN_EPSILON = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#: Input scaling: network input = pixel * INPUT_SCALE + INPUT_BIAS, i.e. (x / 255 - 0.5) / 0.5,
#: the [-1, 1] range the ImageNet weights were trained on.
INPUT_SCALE = 1.0 / 127.5
INPUT_BIAS = -1.0

#: How the head's 7x7 map becomes a feature vector (``build(pooling=...)``):
#:
#: * ``'avg'``: global average (1280 features), what the ImageNet top was trained on;
#: * ``'grid'``: averages over a 3x3 grid of overlapping 3x3 windows (stride 2: rows and
#:   columns 0-2, 2-4, 4-6), flattened channel-major (1280 x 9 = 11,520 features). It keeps
#:   where in the image a pattern is, which a global average throws away: on MNIST digits
#:   (and the same digits downscaled to 8x8) a linear classifier on these features made
#:   about a third fewer errors than on the global average (measured, see the image
#:   classifier's README section);
#: * ``'avg+grid'``: both, concatenated (12,800), so that one pass feeds a comparison.
POOLINGS = ("avg", "grid", "avg+grid")
GRID_KERNEL = 3
GRID_STRIDE = 2


def grid_cells(size=7):
    """Grid cells per side for a ``size`` x ``size`` head map (3 at 224x224)."""
    return (size - GRID_KERNEL) // GRID_STRIDE + 1


def num_features(pooling="avg"):
    """Length of the feature vector for ``pooling`` (one of :data:`POOLINGS`)."""
    grid = HEAD_CHANNELS * grid_cells() ** 2
    return {"avg": HEAD_CHANNELS, "grid": grid, "avg+grid": HEAD_CHANNELS + grid}[pooling]


def pool(F, x, pooling):
    """The head's (N, 1280, 7, 7) map -> (N, :func:`num_features`) as ``pooling`` says."""
    if pooling == "avg":
        return F.mean(x, axis=(2, 3))
    grid = F.flatten(F.Pooling(x, kernel=(GRID_KERNEL, GRID_KERNEL),
                               stride=(GRID_STRIDE, GRID_STRIDE), pool_type="avg"))
    return grid if pooling == "grid" else F.concat(F.mean(x, axis=(2, 3)), grid, dim=1)


# (repeats, kernel, first stride, expansion, in channels, out channels)
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def block_specs():
    """One ``(kernel, stride, expansion, in_channels, out_channels)`` per MBConv block."""
    specs = []
    for repeats, k, s, e, cin, cout in STAGES:
        for r in range(repeats):
            specs.append((k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
    return specs


def same_padding(size, kernel, stride):
    """TF "same" padding ``(before, after)`` and output size for one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2), out


def layer_plan(image_size=IMAGE_SIZE):
    """Spatial size and padding of every convolution with a spatial kernel.

    Returns a list of ``(name, kernel, stride, in_size, (before, after))``:
    ``stem`` then ``blocks.<i>.depthwise``.
    """
    plan = []
    pads, size = same_padding(image_size, 3, 2)
    plan.append(("stem", 3, 2, image_size, pads))
    for i, (k, s, _e, _cin, _cout) in enumerate(block_specs()):
        pads, out = same_padding(size, k, s)
        plan.append((f"blocks.{i}.depthwise", k, s, size, pads))
        size = out
    return plan


def walk(conv, add, x, fine_block=None):
    """Trace the feature extractor layer by layer, for writers of other formats.

    ``conv(prefix, x, cin, cout, kernel, stride, in_size, groups, act)`` adds
    one convolution + BatchNorm (+ ReLU6 when ``act``) whose weights are
    ``backbone.<prefix>.conv.weight`` and ``backbone.<prefix>.bn.*`` and
    returns its output; ``add(i, y, x)`` adds block ``i``'s residual sum.
    Returns ``(head, size, fine)``: the head convolution's ReLU6 output
    (1280 channels, ``size`` x ``size``) and the output of block
    ``fine_block`` (``None`` when not asked for). The Core ML and ONNX
    exports of every image task write the backbone through this one walk.
    """
    size = IMAGE_SIZE
    x = conv("stem", x, 3, STEM_CHANNELS, 3, 2, size, 1, True)
    _, size = same_padding(size, 3, 2)
    fine = None
    for i, (k, s, e, cin, cout) in enumerate(block_specs()):
        mid = cin * e
        y = x
        if e != 1:
            y = conv(f"blocks.{i}.expand", y, cin, mid, 1, 1, size, 1, True)
        y = conv(f"blocks.{i}.depthwise", y, mid, mid, k, s, size, mid, True)
        _, out_size = same_padding(size, k, s)
        y = conv(f"blocks.{i}.project", y, mid, cout, 1, 1, out_size, 1, False)
        if s == 1 and cin == cout:
            y = add(i, y, x)
        x, size = y, out_size
        if i == fine_block:
            fine = x
    head = conv("head", x, STAGES[-1][5], HEAD_CHANNELS, 1, 1, size, 1, True)
    return head, size, fine


_CLASSES = None


def _classes():
    """Define the Gluon block classes once, on first use (mxnet is imported lazily)."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    gluon = mx().gluon
    nn = gluon.nn

    class ConvBN(gluon.HybridBlock):
        """conv (no bias) -> BN [-> ReLU6], with TF "same" padding for the given input size."""

        def __init__(self, cin, cout, kernel, stride, in_size, groups=1, act=True, **kwargs):
            super().__init__(**kwargs)
            (before, after), _ = same_padding(in_size, kernel, stride)
            self._act = act
            # Symmetric padding is done by the convolution; otherwise an explicit pad.
            self._pad = None if before == after else (0, 0, 0, 0, before, after, before, after)
            conv_pad = before if before == after else 0
            with self.name_scope():
                self.conv = nn.Conv2D(cout, kernel_size=kernel, strides=stride,
                                      padding=conv_pad, groups=groups, use_bias=False,
                                      in_channels=cin)
                self.bn = nn.BatchNorm(epsilon=BN_EPSILON, in_channels=cout)

        def hybrid_forward(self, F, x):
            if self._pad is not None:
                x = F.pad(x, mode="constant", pad_width=self._pad, constant_value=0)
            x = self.bn(self.conv(x))
            return F.clip(x, 0.0, 6.0) if self._act else x

    class MBConv(gluon.HybridBlock):
        def __init__(self, kernel, stride, expansion, cin, cout, in_size, **kwargs):
            super().__init__(**kwargs)
            mid = cin * expansion
            self._residual = stride == 1 and cin == cout
            with self.name_scope():
                self.expand = (ConvBN(cin, mid, 1, 1, in_size) if expansion != 1 else None)
                self.depthwise = ConvBN(mid, mid, kernel, stride, in_size, groups=mid)
                _, out_size = same_padding(in_size, kernel, stride)
                self.project = ConvBN(mid, cout, 1, 1, out_size, act=False)

        def hybrid_forward(self, F, x):
            y = self.expand(x) if self.expand is not None else x
            y = self.project(self.depthwise(y))
            return y + x if self._residual else y

    class EfficientNetLite0(gluon.HybridBlock):
        """EfficientNet-Lite0; ``forward(x)`` takes (N, 3, 224, 224) in [-1, 1].

        Returns the pooled features (1280-d with the default ``pooling='avg'``,
        see :data:`POOLINGS`), or the 1000 ImageNet logits when built with
        ``include_top=True``. ``pooling`` is a plain attribute: after changing
        it, call ``_clear_cached_op()`` (and hybridize again) on a hybridized net.
        """

        def __init__(self, include_top=False, image_size=IMAGE_SIZE, pooling="avg", **kwargs):
            super().__init__(**kwargs)
            self.include_top = include_top
            self.pooling = pooling
            self.image_size = image_size
            size = image_size
            with self.name_scope():
                self.stem = ConvBN(3, STEM_CHANNELS, 3, 2, size)
                _, size = same_padding(size, 3, 2)
                self.blocks = nn.HybridSequential()
                with self.blocks.name_scope():
                    for k, s, e, cin, cout in block_specs():
                        self.blocks.add(MBConv(k, s, e, cin, cout, size))
                        _, size = same_padding(size, k, s)
                self.head = ConvBN(STAGES[-1][5], HEAD_CHANNELS, 1, 1, size)
                self.fc = (nn.Dense(NUM_IMAGENET_CLASSES, in_units=HEAD_CHANNELS)
                           if include_top else None)

        def hybrid_forward(self, F, x):
            x = self.head(self.blocks(self.stem(x)))
            if self.fc is not None:
                return self.fc(F.mean(x, axis=(2, 3)))
            return pool(F, x, self.pooling)

        def trace(self, x, n_blocks=None):
            """Outputs of the stem, of each of the first ``n_blocks`` blocks, and of the
            head and pooling (when all blocks run), as numpy arrays keyed by structural
            name. For tests and debugging; runs imperatively."""
            out = {}
            y = self.stem(x)
            out["stem"] = y.asnumpy()
            blocks = list(self.blocks)
            for i, block in enumerate(blocks[:n_blocks]):
                y = block(y)
                out[f"blocks.{i}"] = y.asnumpy()
            if n_blocks is None or n_blocks >= len(blocks):
                y = self.head(y)
                out["head"] = y.asnumpy()
                out["pool"] = y.mean(axis=(2, 3)).asnumpy()
            return out

    _CLASSES = {"ConvBN": ConvBN, "MBConv": MBConv, "EfficientNetLite0": EfficientNetLite0}
    return _CLASSES


def build(include_top=False, weights=None, ctx=None, prefix="efficientnet_lite0_",
          pooling="avg"):
    """Build an EfficientNet-Lite0 network, optionally with weights.

    Parameters
    ----------
    include_top : bool
        Add the 1000-class ImageNet layer ``fc`` (the network then returns
        logits instead of the 1280-d features).
    weights : dict, optional
        Structural name -> array, e.g. from
        :func:`toolkit.pretrained.load_efficientnet_lite0`. Names of ``fc`` are
        ignored when ``include_top`` is False. Without weights the network is
        randomly initialised.
    ctx : mxnet context, optional (CPU by default)
    prefix : str
        Gluon's name prefix (the stored names are structural and do not use it).
    pooling : {'avg', 'grid', 'avg+grid'}
        How the features are pooled (:data:`POOLINGS`); ignored with ``include_top``.

    Returns
    -------
    EfficientNetLite0 (a ``gluon.HybridBlock``, not hybridized)

    Examples
    --------
    >>> from toolkit import pretrained
    >>> net = pretrained.build_efficientnet_lite0(
    ...     include_top=True, weights=pretrained.load_efficientnet_lite0())  # doctest: +SKIP
    >>> logits = net(x)          # x: (N, 3, 224, 224) RGB in [-1, 1]     # doctest: +SKIP
    >>> logits.shape                                                      # doctest: +SKIP
    (1, 1000)
    """
    from .._mx import set_weights
    net = _classes()["EfficientNetLite0"](include_top=include_top, prefix=prefix,
                                          pooling=pooling)
    net.initialize(mx().init.Xavier(), ctx=ctx or mx().cpu())
    if weights is not None:
        if not include_top:
            weights = {k: v for k, v in weights.items() if not k.startswith("fc.")}
        set_weights(net, weights, what="EfficientNet-Lite0")
    return net


def _mkldnn_available():
    import os
    if os.environ.get("MXNET_MKLDNN_ENABLED", "").strip().lower() in ("0", "false"):
        return False
    if os.environ.get("TOOLKIT_FUSE_LAYERS", "").strip().lower() in ("0", "false"):
        return False
    try:
        return bool(mx().runtime.Features().is_enabled("MKLDNN"))
    except Exception:  # noqa: BLE001 - old mxnet without runtime features
        return False


def prepare_for_inference(net, sample):
    """Hybridize ``net`` for fast inference on batches shaped like ``sample`` (an NDArray).

    With an MKL-DNN build of mxnet (1.8+), the graph is partitioned for the
    MKL-DNN backend, which fuses each convolution with its BatchNorm and
    activation: about twice as fast on CPU, same results to ~2e-5 on the
    features. Otherwise (older mxnet, MKL-DNN switched off with
    ``MXNET_MKLDNN_ENABLED=0``, or ``TOOLKIT_FUSE_LAYERS=0``) a plain
    ``hybridize``. The parameters are not changed either way. Other batch
    sizes still work.

    Returns the string ``'mkldnn'`` or ``'hybridize'``.
    """
    if _mkldnn_available() and hasattr(net, "optimize_for"):
        try:
            net.optimize_for(sample, backend="MKLDNN", static_alloc=True, static_shape=True)
            return "mkldnn"
        except Exception:  # noqa: BLE001 - fall back to the portable path
            pass
    net.hybridize(static_alloc=True, static_shape=True)
    return "hybridize"
