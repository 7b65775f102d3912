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


from .. import _coreml
from .._mx import get_weights
from ..errors import ExportError
from ..pretrained import _coreml_writer, _efficientnet
from . import _net

TASK_TITLE = "Image classifier"


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
    (``image_classifier``), ``file_version``, ``platform``, and the create()
    settings as Turi Create writes them: ``model`` (``efficientnet-lite0``),
    ``target``, ``feature``, ``max_iterations``, ``classes`` (comma-joined),
    plus ``input_image_shape`` (``3,224,224``). The short description reads
    "Image classifier (efficientnet-lite0) created by toolkit (version X)".

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
    labels = _coreml.class_labels(s["classes"])
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
        head, head_size, _ = _coreml_writer.write_backbone(builder, weights, feature,
                                                           prefix=_net.BACKBONE_PREFIX)
        if s["pooling"] == "grid":
            # 3x3 windows, stride 2, then flattened channel-major: the order of mxnet's
            # flatten, which the classifier's columns follow.
            k, st = _efficientnet.GRID_KERNEL, _efficientnet.GRID_STRIDE
            builder.add_pooling("pool", height=k, width=k, stride_height=st, stride_width=st,
                                layer_type="AVERAGE", padding_type="VALID", input_name=head,
                                output_name="pooled")
            builder.add_flatten("flatten", mode=0, input_name="pooled", output_name="features")
        else:
            builder.add_pooling("pool", height=head_size, width=head_size, stride_height=1,
                                stride_width=1, layer_type="AVERAGE", padding_type="VALID",
                                input_name=head, output_name="features", is_global=True)
        builder.add_inner_product("classifier", W=weights[_net.CLASSIFIER_WEIGHT],
                                  b=weights[_net.CLASSIFIER_BIAS],
                                  input_channels=_net.num_features(s["pooling"]),
                                  output_channels=n_classes,
                                  has_bias=True, input_name="features", output_name="classifier")
        builder.add_softmax("softmax", "classifier", prob_name)
        builder.set_class_labels(labels, predicted_feature_name=target,
                                 prediction_blob=prob_name)
        _coreml_writer.set_image_input(builder, feature)
    except (ValueError, TypeError, KeyError) as e:
        raise ExportError(f"Cannot build the Core ML network: {e}") from e

    spec = builder.spec
    # The create() settings (model, target, feature, max_iterations, classes) come from
    # the model's state; the short description names the backbone.
    _coreml.set_model_metadata(spec, model, {
        "input_image_shape": list(s["input_image_shape"]),
    }, task_title=TASK_TITLE)
    _coreml.describe_features(spec, {
        feature: (f"Input image: RGB, {size}x{size} (scale the photo to fill; pixel values "
                  "0-255 are scaled to [-1, 1] by the model)"),
        prob_name: f"Probability of each {target} class",
        target: f"Most likely {target} class",
    })
    _coreml.save_spec(spec, full_path)
