"""ONNX export of the image classifier.

The same prediction graph as the Core ML export (:mod:`._export`): a 224x224
RGB image in, the pixel scaling inside, class probabilities out. Written with
the ``onnx`` helper API in opset 17 (see :mod:`toolkit._onnx` for why not
``mx.onnx``, and for the versions).

=================  ==========================================================  ================
node               ONNX operator                                               shape
=================  ==========================================================  ================
``<feature>``      input, RGB pixels 0..255, float32, channels first           (B, 3, 224, 224)
scale              ``Mul`` 1/127.5, ``Add`` -1: the [-1, 1] range of the       (B, 3, 224, 224)
                   network (the float32 operations ``predict`` does)
backbone           EfficientNet-Lite0: per convolution one ``Conv`` with the   (B, 1280, 7, 7)
                   BatchNorm folded into its weights and bias, explicit
                   (asymmetric for stride 2) TF "same" ``pads``, ``Clip``
                   0..6 for ReLU6, ``Add`` for the residuals
pool               ``GlobalAveragePool``, ``Flatten``                          (B, 1280)
classifier         ``Gemm`` 1280 -> C                                          (B, C)
softmax            ``Softmax`` axis 1 -> ``<target>Probability``               (B, C)
label              ``ArgMax`` -> ``<target>Index`` (int64), ``Gather`` of the  (B,)
                   class labels -> ``<target>`` (str, or int64 for int labels)
=================  ==========================================================  ================

Why BatchNorm is folded: it halves the number of nodes, and it is what
``predict`` computes too on an MKL-DNN build of mxnet (which fuses each
convolution with its BatchNorm); folding in float64 and rounding once to
float32 keeps the features within ~1e-5 of ``predict``'s either way.
:func:`write_backbone` is shared with the object detector's export.
"""

import numpy as np

from .. import _onnx
from .._mx import get_weights
from ..errors import ExportError
from ..pretrained import _efficientnet
from . import _net
from ._export import TASK_TITLE

BATCH = "batch"


def labels_of(classes):
    """(values, dtype) of a label tensor: int64 when every class is an int, else str."""
    if all(isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_))
           for c in classes):
        return [int(c) for c in classes], np.int64
    return [str(c) for c in classes], str


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
    y = g.node("Mul", [x, g.initializer("/scale/mul", np.float32(_net.INPUT_SCALE))],
               ["/scale/scaled"])
    return g.node("Add", [y, g.initializer("/scale/add", np.float32(_net.INPUT_BIAS))],
                  ["/scale/out"])


class _BackboneWriter:
    def __init__(self, g, weights):
        self.g = g
        self.w = weights
        self._relu6 = None

    def relu6_bounds(self):
        if self._relu6 is None:
            self._relu6 = (self.g.initializer("/relu6/min", np.float32(0.0)),
                           self.g.initializer("/relu6/max", np.float32(6.0)))
        return self._relu6

    def convbn(self, prefix, x, kernel, stride, in_size, groups=1, act=True):
        g, w = self.g, self.w
        name = "/backbone/" + prefix.replace(".", "/")
        bn = f"backbone.{prefix}.bn."
        weight, bias = fold_batchnorm(w[f"backbone.{prefix}.conv.weight"], w[bn + "gamma"],
                                      w[bn + "beta"], w[bn + "running_mean"],
                                      w[bn + "running_var"])
        # TF "same" padding for the fixed 224x224 input, as the mxnet network pads.
        (before, after), _ = _efficientnet.same_padding(in_size, kernel, stride)
        y = g.node("Conv", [x, g.initializer(name + "/W", weight),
                            g.initializer(name + "/B", bias)], [name + "/conv"],
                   kernel_shape=[kernel, kernel], strides=[stride, stride],
                   pads=[before, before, after, after], dilations=[1, 1], group=groups)
        if act:
            lo, hi = self.relu6_bounds()
            y = g.node("Clip", [y, lo, hi], [name + "/relu6"])
        return y


def write_backbone(g, x, weights, fine_block=None):
    """Add EfficientNet-Lite0 (input in [-1, 1]) up to its head convolution's
    ReLU6 output (B, 1280, 7, 7). Returns ``(head, fine)``, ``fine`` the output
    of block ``fine_block`` (``None`` when not asked for)."""
    wr = _BackboneWriter(g, weights)
    size = _efficientnet.IMAGE_SIZE
    x = wr.convbn("stem", x, 3, 2, size)
    _, size = _efficientnet.same_padding(size, 3, 2)
    fine = None
    for i, (k, s, e, cin, cout) in enumerate(_efficientnet.block_specs()):
        y = x
        if e != 1:
            y = wr.convbn(f"blocks.{i}.expand", y, 1, 1, size)
        y = wr.convbn(f"blocks.{i}.depthwise", y, k, s, size, groups=cin * e)
        _, out_size = _efficientnet.same_padding(size, k, s)
        y = wr.convbn(f"blocks.{i}.project", y, 1, 1, out_size, act=False)
        if s == 1 and cin == cout:
            y = g.node("Add", [y, x], [f"/backbone/blocks/{i}/add"])
        x, size = y, out_size
        if i == fine_block:
            fine = x
    return wr.convbn("head", x, 1, 1, size), fine


def export_onnx(model, path):
    """Export the image classifier as an ONNX model (``.onnx``, opset 17).

    Runs in onnxruntime (servers, Android, the web) and any runtime that
    supports ONNX opset 17. The graph is the whole prediction network, the
    pixel scaling included:

    * input named after the image column (``model.feature``, e.g.
      ``image``): float32 ``(batch, 3, 224, 224)``, **RGB pixel values
      0..255, channels first** (NCHW). The model scales them to [-1, 1]
      itself (``x / 127.5 - 1``): do not normalise before feeding.
    * outputs ``<target>Probability``: float32 ``(batch, num_classes)``,
      columns in ``model.classes`` order (also the metadata ``classes``);
      ``<target>Index``: int64 ``(batch,)``, the column of the most likely
      class; ``<target>``: ``(batch,)`` the most likely class (int64 when
      every class is an int, str otherwise).

    Preparing an image exactly as ``predict`` does is the caller's job:

    1. decode it and apply its EXIF orientation (Pillow:
       ``ImageOps.exif_transpose``);
    2. convert it to 8-bit RGB: grey is replicated, an **alpha channel is
       dropped** (not composited over a background);
    3. resize to 224x224 with **bilinear** filtering (Pillow's
       ``Image.BILINEAR``, which antialiases when shrinking), **stretching**:
       the aspect ratio is not kept, nothing is cropped;
    4. ``np.asarray(img, np.float32).transpose(2, 0, 1)`` -> (3, 224, 224).

    (A numpy image given to ``predict`` as floats in [0, 1] is first turned
    into 8-bit pixels: ``np.round(x * 255).astype(np.uint8)``.)

    Given those pixels, the probabilities equal
    ``model.predict(..., output_type='probability_vector')`` to about 1e-6
    (float rounding; the tests require 1e-4).

    Parameters
    ----------
    model : ImageClassifier
        A trained (or loaded) image classifier.
    path : str or os.PathLike
        Destination file, by convention ending in ``.onnx``. Its directory
        must exist; an existing file is replaced atomically.

    Returns
    -------
    None

    Raises
    ------
    toolkit.errors.InvalidParameterError
        ``path`` is not a str / path-like, or is empty.
    toolkit.errors.ExportError
        The directory of ``path`` does not exist, ``path`` is a directory, the
        file cannot be written, the ``onnx`` package is not installed, or the
        image column's name collides with an output name.

    Notes
    -----
    ``metadata_props`` holds ``toolkit_version``, ``task``
    (``image_classifier``), ``file_version``, ``classes`` (JSON list, the
    order of the probability columns), ``target``, ``feature``, ``model``
    (``efficientnet-lite0``), ``input_image_shape`` (``[3, 224, 224]``),
    ``input_layout`` (``NCHW``), ``input_range`` (``[0, 255]``) and
    ``max_iterations``. Opset 17 of the default domain, IR version 8; the file
    passes ``onnx.checker`` (full check) before it is written. BatchNorm is
    folded into the convolutions.

    Examples
    --------
    >>> model.export_onnx('faces.onnx')                           # doctest: +SKIP

    Classifying a photo with onnxruntime:

    >>> import numpy as np, onnxruntime as ort                    # doctest: +SKIP
    >>> from PIL import Image, ImageOps                           # doctest: +SKIP
    >>> img = ImageOps.exif_transpose(Image.open('photo.jpg')).convert('RGB')
    ...                                                           # doctest: +SKIP
    >>> img = img.resize((224, 224), Image.BILINEAR)              # doctest: +SKIP
    >>> x = np.asarray(img, np.float32).transpose(2, 0, 1)[None]  # doctest: +SKIP
    >>> sess = ort.InferenceSession('faces.onnx')                 # doctest: +SKIP
    >>> probs, label = sess.run(['labelProbability', 'label'], {'image': x})
    ...                                                           # doctest: +SKIP
    >>> label[0], probs[0]                                        # doctest: +SKIP
    ('face', array([0.98, 0.02], dtype=float32))
    """
    full_path = _onnx.check_export_path(path)
    _onnx.onnx_module()

    s = model._state
    target, feature = str(s["target"]), str(s["feature"])
    prob_name, index_name = target + "Probability", target + "Index"
    if feature in (target, prob_name, index_name):
        raise ExportError(
            f"Cannot export: the image column '{feature}' would share its name with the ONNX "
            f"output '{feature}'. Rename the image or target column and retrain.")
    classes = list(s["classes"])
    labels, label_dtype = labels_of(classes)
    n_classes, size = len(classes), _net.IMAGE_SIZE
    w = get_weights(model._net)

    g = _onnx.GraphBuilder("image_classifier")
    x = g.input(feature, np.float32, [BATCH, 3, size, size],
                f"RGB image, channels first, pixel values 0-255, {size}x{size} (stretch the "
                "photo to fill, bilinear; EXIF orientation applied, alpha dropped)")
    head, _ = write_backbone(g, scale_input(g, x), w)
    y = g.node("GlobalAveragePool", [head], ["/pool/out"])
    y = g.node("Flatten", [y], ["/pool/flat"], axis=1)
    y = g.node("Gemm", [y, g.initializer("/classifier/W", w["classifier.weight"]),
                        g.initializer("/classifier/B", w["classifier.bias"])],
               ["/classifier/out"], transB=1)
    probs = g.node("Softmax", [y], [prob_name], axis=1)
    index = g.node("ArgMax", [probs], [index_name], axis=1, keepdims=0)
    g.node("Gather", [g.initializer("/labels", labels, label_dtype), index], [target], axis=0)

    g.output(prob_name, np.float32, [BATCH, n_classes],
             f"Probability of each {target} class, columns in the order of the 'classes' "
             "metadata")
    g.output(target, label_dtype, [BATCH], f"Most likely {target} class")
    g.output(index_name, np.int64, [BATCH],
             f"Position of the most likely {target} class in the 'classes' metadata")

    extra = {
        "classes": labels,
        "target": target,
        "feature": feature,
        "model": str(s["model"]),
        "input_image_shape": [int(v) for v in s["input_image_shape"]],
        "input_layout": "NCHW",
        "input_range": [0, 255],
    }
    if s.get("max_iterations") is not None:
        extra["max_iterations"] = int(s["max_iterations"])
    onnx_model = _onnx.make_model(g, model._TASK, model._FILE_VERSION, extra,
                                  task_title=TASK_TITLE, doc=(
        f"Input: RGB pixels 0-255, float32 (batch, 3, {size}, {size}), the photo stretched to "
        f"{size}x{size} with bilinear filtering. See help(model.export_onnx)."))
    _onnx.save_model(onnx_model, full_path)
