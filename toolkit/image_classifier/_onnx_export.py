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
                   (``pooling='grid'``: ``AveragePool`` 3x3 stride 2, ``Flatten``  (B, 11520)
classifier         ``Gemm`` features -> C                                      (B, C)
softmax            ``Softmax`` axis 1 -> ``<target>Probability``               (B, C)
label              ``ArgMax`` -> ``<target>Index`` (int64), ``Gather`` of the  (B,)
                   class labels -> ``<target>`` (str, or int64 for int labels)
=================  ==========================================================  ================

The backbone is written by :mod:`toolkit.pretrained._onnx_writer` (shared with
the object detector's export; it says why BatchNorm is folded). The backbone
and pooling (:func:`write_features`) also make the in-memory graph that
``predict`` and ``extract_features`` run on onnxruntime (:func:`features_model`,
see :mod:`toolkit._ort`).
"""

import numpy as np

from .. import _onnx
from .._mx import get_weights
from ..errors import ExportError
from ..pretrained import _efficientnet, _onnx_writer
from . import _net
from ._export import TASK_TITLE

BATCH = "batch"


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
    labels, label_dtype = _onnx.labels_of(classes)
    n_classes, size = len(classes), _net.IMAGE_SIZE
    w = get_weights(model._net)

    g = _onnx.GraphBuilder("image_classifier")
    x = g.input(feature, np.float32, [BATCH, 3, size, size],
                f"RGB image, channels first, pixel values 0-255, {size}x{size} (stretch the "
                "photo to fill, bilinear; EXIF orientation applied, alpha dropped)")
    y = write_features(g, _onnx_writer.scale_input(g, x), w, s["pooling"])
    y = g.node("Gemm", [y, g.initializer("/classifier/W", w[_net.CLASSIFIER_WEIGHT]),
                        g.initializer("/classifier/B", w[_net.CLASSIFIER_BIAS])],
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


def write_features(g, x, weights, pooling):
    """Add the backbone and the model's pooling on the network input ``x`` (in [-1, 1]).

    Returns the name of the (B, :func:`._net.num_features`) features, those
    the classifier layer reads. ``weights``: the network's arrays under their
    stored names (``backbone.*``).
    """
    head, _ = _onnx_writer.write_backbone(g, x, weights, prefix=_net.BACKBONE_PREFIX)
    if pooling == "grid":
        k, st = _efficientnet.GRID_KERNEL, _efficientnet.GRID_STRIDE
        y = g.node("AveragePool", [head], ["/pool/out"], kernel_shape=[k, k], strides=[st, st])
    else:
        y = g.node("GlobalAveragePool", [head], ["/pool/out"])
    return g.node("Flatten", [y], ["/pool/flat"], axis=1)


def features_model(weights, pooling, task, file_version):
    """The in-memory ONNX model that ``predict`` runs on onnxruntime: network input
    (B, 3, 224, 224) float32 in [-1, 1], already scaled as ``predict`` scales it,
    -> features (B, :func:`._net.num_features`). Not written to a file."""
    size = _net.IMAGE_SIZE
    g = _onnx.GraphBuilder("image_classifier_features")
    x = g.input("network_input", np.float32, [BATCH, 3, size, size], "pixels scaled to [-1, 1]")
    g.output(write_features(g, x, weights, pooling), np.float32,
             [BATCH, _net.num_features(pooling)], "features")
    return _onnx.make_model(g, task, file_version, {"pooling": pooling})
