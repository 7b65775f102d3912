"""Core ML export of the image classifier: one neural network classifier.

The whole prediction network is exported, preprocessing included, so an app
passes an image and gets class probabilities:

==================  ===========================================================
part                Core ML
==================  ===========================================================
input               image, RGB, 224x224, named after the image column
preprocessing       ``channelScale`` 1/127.5, bias -1 per channel: x/127.5 - 1
                    = (x/255 - 0.5)/0.5, the [-1, 1] range the network expects
convolution         ``convolution`` (depthwise: groups = channels,
                    kernelChannels = 1), 'valid' with explicit padding
                    amounts: TF "same" padding computed for the 224x224 input,
                    symmetric for stride 1, asymmetric for stride 2 (0 before
                    / 1 after for k=3, 1 / 2 for k=5). (A separate
                    ``padding`` layer would also be exact but breaks the ONNX
                    conversion used to check exports on Linux: onnxconverter-
                    common 1.13's Pad+Conv fusion crashes on it.)
BatchNorm           ``batchnorm`` with the running statistics, epsilon 1e-3
ReLU6               ``activation`` SIGMOID_HARD (alpha 1/6, beta 0) then LINEAR
                    (alpha 6): 6 * min(max(x/6, 0), 1) = min(max(x, 0), 6).
                    Used instead of the ``clip`` layer (iOS 13+), which the
                    ONNX converter used to check exports on Linux cannot read.
residual            ``add``
pooling             global average
classifier          ``innerProduct`` 1280 -> num_classes, then ``softmax``
outputs             ``<target>Probability`` (dict class -> probability) and
                    ``<target>`` (the most likely class)
==================  ===========================================================

Only layers of the first Core ML specification are used, in float32.
"""

import numpy as np

from .. import _coreml
from .._mx import get_weights
from ..errors import ExportError
from ..pretrained import _efficientnet
from . import _net

TASK_TITLE = "Image classifier"


def _class_labels(classes):
    labels = [int(c) if isinstance(c, (int, np.integer)) and not isinstance(c, bool)
              else str(c) for c in classes]
    if len({type(c) for c in labels}) > 1:
        labels = [str(c) for c in labels]  # Core ML labels are all int64 or all str
    return labels


class _Writer:
    """Adds the backbone's layers to a builder, tracking blob names."""

    def __init__(self, builder, weights):
        self.b = builder
        self.w = weights

    def convbn(self, prefix, x, cin, cout, kernel, stride, in_size, groups=1, act=True):
        b, w = self.b, self.w
        name = prefix.replace(".", "_")
        # The same static padding as the mxnet network, as explicit amounts.
        (before, after), _ = _efficientnet.same_padding(in_size, kernel, stride)
        kernel_w = w[f"backbone.{prefix}.conv.weight"]          # (cout, cin/groups, k, k)
        b.add_convolution(
            name + "_conv", kernel_channels=cin // groups, output_channels=cout, height=kernel,
            width=kernel, stride_height=stride, stride_width=stride, border_mode="valid",
            groups=groups, W=np.ascontiguousarray(kernel_w.transpose(2, 3, 1, 0)), b=None,
            has_bias=False, input_name=x, output_name=name + "_conv", padding_top=before,
            padding_bottom=after, padding_left=before, padding_right=after)
        bn = f"backbone.{prefix}.bn."
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

    def backbone(self, x):
        size = _efficientnet.IMAGE_SIZE
        x = self.convbn("stem", x, 3, _efficientnet.STEM_CHANNELS, 3, 2, size)
        _, size = _efficientnet.same_padding(size, 3, 2)
        for i, (k, s, e, cin, cout) in enumerate(_efficientnet.block_specs()):
            mid = cin * e
            y = x
            if e != 1:
                y = self.convbn(f"blocks.{i}.expand", y, cin, mid, 1, 1, size)
            y = self.convbn(f"blocks.{i}.depthwise", y, mid, mid, k, s, size, groups=mid)
            _, out_size = _efficientnet.same_padding(size, k, s)
            y = self.convbn(f"blocks.{i}.project", y, mid, cout, 1, 1, out_size, act=False)
            if s == 1 and cin == cout:
                self.b.add_elementwise(f"blocks_{i}_add", input_names=[y, x],
                                       output_name=f"blocks_{i}_add", mode="ADD")
                y = f"blocks_{i}_add"
            x, size = y, out_size
        x = self.convbn("head", x, _efficientnet.STAGES[-1][5], _efficientnet.HEAD_CHANNELS,
                        1, 1, size)
        self.b.add_pooling("pool", height=size, width=size, stride_height=1, stride_width=1,
                           layer_type="AVERAGE", padding_type="VALID", input_name=x,
                           output_name="features", is_global=True)
        return "features"


def export_coreml(model, path):
    """Export the image classifier as one Core ML model (``.mlmodel``).

    The exported network is the whole prediction network, the pixel scaling
    included:

    * input: an **RGB image of 224x224 pixels** named after the image column
      (``model.feature``). Give it the photo scaled to 224x224 (Vision's
      ``VNImageCropAndScaleOption.scaleFill`` does what ``predict`` does:
      stretch without keeping the aspect ratio). The model scales 0..255
      pixels to [-1, 1] itself (``x / 127.5 - 1``).
    * outputs: ``<target>Probability`` (class -> probability, for every class
      of ``model.classes``) and ``<target>`` (the most likely class; int64
      labels when the classes are ints, strings otherwise).

    Given the same 224x224 RGB pixels, the probabilities equal
    ``model.predict(..., output_type='probability_vector')`` up to float
    rounding (checked in the tests through an ONNX conversion).

    Parameters
    ----------
    model : ImageClassifier
    path : str or os.PathLike
        Destination file, by convention ending in ``.mlmodel``. Its directory
        must exist; an existing file is replaced atomically.

    Raises
    ------
    toolkit.errors.InvalidParameterError
        ``path`` is not a str / path-like.
    toolkit.errors.ExportError
        The directory does not exist, ``path`` is a directory, the file cannot
        be written, coremltools is missing, or the image column's name clashes
        with an output name.

    Notes
    -----
    ``user_defined_metadata`` holds ``toolkit_version``, ``task``
    (``image_classifier``), ``file_version``, ``model``
    (``efficientnet-lite0``), ``target``, ``feature``, ``max_iterations``
    and ``input_image_shape`` (``3,224,224``).

    Examples
    --------
    >>> model.export_coreml('Faces.mlmodel')                    # doctest: +SKIP

    In Swift, with Vision: ``VNCoreMLRequest(model: ...)`` with
    ``imageCropAndScaleOption = .scaleFill``; or with coremltools on macOS:

    >>> import coremltools as ct                                 # doctest: +SKIP
    >>> from PIL import Image                                    # doctest: +SKIP
    >>> ml = ct.models.MLModel('Faces.mlmodel')                  # doctest: +SKIP
    >>> img = Image.open('photo.jpg').convert('RGB').resize((224, 224), Image.BILINEAR)
    ...                                                          # doctest: +SKIP
    >>> ml.predict({'image': img})['labelProbability']           # doctest: +SKIP
    """
    full_path = _coreml.check_export_path(path)
    ct = _coreml.coremltools_module()
    datatypes = ct.models.datatypes
    NeuralNetworkBuilder = ct.models.neural_network.NeuralNetworkBuilder

    s = model._state
    target, feature = str(s["target"]), str(s["feature"])
    prob_name = target + "Probability"
    labels = _class_labels(s["classes"])
    n_classes = len(labels)
    if feature in (target, prob_name):
        raise ExportError(
            f"Cannot export: the image column '{feature}' would share its name with the Core ML "
            f"output '{feature}'. Rename the image or target column and retrain.")
    size = _net.IMAGE_SIZE
    weights = get_weights(model._net)
    try:
        builder = NeuralNetworkBuilder([(feature, datatypes.Array(3, size, size))],
                                       [(prob_name, datatypes.Array(n_classes))],
                                       mode="classifier")
        writer = _Writer(builder, weights)
        feats = writer.backbone(feature)
        builder.add_inner_product("classifier", W=weights["classifier.weight"],
                                  b=weights["classifier.bias"],
                                  input_channels=_net.NUM_FEATURES, output_channels=n_classes,
                                  has_bias=True, input_name=feats, output_name="classifier")
        builder.add_softmax("softmax", "classifier", prob_name)
        builder.set_class_labels(labels, predicted_feature_name=target,
                                 prediction_blob=prob_name)
        builder.set_pre_processing_parameters(
            image_input_names=[feature], is_bgr=False, red_bias=_net.INPUT_BIAS,
            green_bias=_net.INPUT_BIAS, blue_bias=_net.INPUT_BIAS, image_scale=_net.INPUT_SCALE)
    except (ValueError, TypeError, KeyError) as e:
        raise ExportError(f"Cannot build the Core ML network: {e}") from e

    spec = builder.spec
    _coreml.set_metadata(spec, model._TASK, model._FILE_VERSION, {
        "model": s["model"], "target": target, "feature": feature,
        "max_iterations": s.get("max_iterations"),
        "input_image_shape": list(s["input_image_shape"]),
    }, task_title=TASK_TITLE)
    _coreml.describe_features(spec, {
        feature: (f"Input image: RGB, {size}x{size} (scale the photo to fill; pixel values "
                  "0-255 are scaled to [-1, 1] by the model)"),
        prob_name: f"Probability of each {target} class",
        target: f"Most likely {target} class",
    })
    _coreml.save_spec(spec, full_path)
