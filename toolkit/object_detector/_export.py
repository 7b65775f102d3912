"""Core ML export of the object detector: network + NonMaximumSuppression pipeline.

The network (a Core ML ``neuralNetwork``, specification 1 layers only) holds
the whole prediction network and the box decoding:

==================  ===========================================================
part                Core ML
==================  ===========================================================
input               image, RGB, 224x224, named after the image column; scaled
                    to [-1, 1] by the preprocessing (``x / 127.5 - 1``)
backbone            EfficientNet-Lite0 up to its 1x1 head convolution, the
                    layers of the image classifier's export (1280 x 7 x 7)
head                ``head.conv1`` 1x1 + LeakyReLU(0.1); ``head.fine`` 3x3
                    stride 2 on block 10's 14x14 output + LeakyReLU(0.1);
                    concat; ``head.conv2`` 3x3 + LeakyReLU(0.1)
decoding            the rows of ``head.out`` split into 1x1 convolutions per
                    quantity (no slice layers): x and y -> sigmoid -> ``scale``
                    (1/7, plus the cell offset / 7); w and h -> ``unary`` exp ->
                    ``scale`` (anchor / 7); per anchor, class logits ->
                    softmax, objectness (repeated C times) -> sigmoid,
                    multiplied; ``reshape`` / ``permute`` to one row per box
outputs             ``confidence`` (N, C) and ``coordinates`` (N, 4) (relative
                    centre x, y, width, height), N = 9 anchors x 7 x 7 = 441
==================  ===========================================================

With ``include_non_maximum_suppression`` the network's outputs are renamed
``raw_confidence`` / ``raw_coordinates`` and fed to a
``NonMaximumSuppression`` model in a pipeline (specification 3, iOS 12 /
macOS 10.14) whose outputs ``confidence`` and ``coordinates`` hold the kept
boxes; ``iouThreshold`` and ``confidenceThreshold`` are optional inputs
overriding the stored thresholds.
"""

import numpy as np

from .. import _coreml
from .._mx import get_weights
from ..errors import ExportError, InvalidParameterError
from ..pretrained import _coreml_writer
from . import _net

#: The image column may not take these names (the model's other inputs and outputs).
RESERVED_NAMES = ("confidence", "coordinates", "raw_confidence", "raw_coordinates",
                  "iouThreshold", "confidenceThreshold")


def _conv(b, name, weight, bias, x, kernel=1, pad=0, stride=1):
    """Convolution with weights (cout, cin, k, k) and bias (cout,)."""
    cout, cin = weight.shape[:2]
    b.add_convolution(name, kernel_channels=cin, output_channels=cout, height=kernel,
                      width=kernel, stride_height=stride, stride_width=stride,
                      border_mode="valid",
                      groups=1, W=np.ascontiguousarray(weight.transpose(2, 3, 1, 0)),
                      b=np.asarray(bias, np.float32), has_bias=True, input_name=x,
                      output_name=name, padding_top=pad, padding_bottom=pad, padding_left=pad,
                      padding_right=pad)
    return name


def _head_conv(b, w, layer, x, output=None, **kwargs):
    """The head layer ``layer``'s convolution, then LeakyReLU(0.1); returns the output's name."""
    name = f"head_{layer}"
    output = output or f"{name}_leaky"
    _conv(b, name, w[_net.head_weight(layer)], w[_net.head_weight(layer, "bias")], x, **kwargs)
    b.add_activation(f"{name}_leaky", "LEAKYRELU", name, output, params=[0.1])
    return output


def build_network(model, conf_name, coord_name):
    """The Core ML neural network spec (decoded boxes, no NMS)."""
    ct = _coreml.coremltools_module()
    datatypes = ct.models.datatypes
    s = model._state
    feature = str(s["feature"])
    num_anchors, num_classes, grid = len(s["anchors"]), len(s["classes"]), _net.GRID
    num_boxes = num_anchors * grid * grid
    size = _net.IMAGE_SIZE
    b = ct.models.neural_network.NeuralNetworkBuilder(
        [(feature, datatypes.Array(3, size, size))],
        [(conf_name, datatypes.Array(num_boxes, num_classes)),
         (coord_name, datatypes.Array(num_boxes, 4))])
    w = get_weights(model._net)
    x, _, fine = _coreml_writer.write_backbone(b, w, feature, fine_block=_net.FINE_BLOCK,
                                               prefix=_net.BACKBONE + ".")
    coarse = _head_conv(b, w, "conv1", x)
    fine = _head_conv(b, w, "fine", fine, kernel=3, pad=1, stride=2)
    b.add_elementwise("head_concat", input_names=[coarse, fine], output_name="head_concat",
                      mode="CONCAT")
    hidden = _head_conv(b, w, "conv2", "head_concat", output="hidden", kernel=3, pad=1)
    out = (w[_net.head_weight("out")], w[_net.head_weight("out", "bias")])
    _write_boxes(b, out, hidden, np.asarray(s["anchors"], np.float32), num_classes, coord_name)
    _write_confidence(b, out, hidden, num_anchors, num_classes, conf_name)
    _coreml_writer.set_image_input(b, feature)
    return b.spec


def _write_boxes(b, out, hidden, anchors, num_classes, coord_name):
    """Decoded boxes (relative centre x, y, width, height), one row per box."""
    weight, bias = out
    num_anchors, grid = len(anchors), _net.GRID
    rows = lambda k: [a * (5 + num_classes) + k for a in range(num_anchors)]  # noqa: E731
    # Box centres: (cell + sigmoid(t)) / G.
    xy = rows(0) + rows(1)
    _conv(b, "out_xy", weight[xy], bias[xy], hidden)
    b.add_activation("out_xy_sigmoid", "SIGMOID", "out_xy", "out_xy_sigmoid")
    offset = np.zeros((2 * num_anchors, grid, grid), np.float32)
    offset[:num_anchors] = np.arange(grid)[None, None, :] / grid
    offset[num_anchors:] = np.arange(grid)[None, :, None] / grid
    b.add_scale("xy", W=np.array([1.0 / grid], np.float32), b=offset, has_bias=True,
                input_name="out_xy_sigmoid", output_name="xy", shape_scale=[1],
                shape_bias=[2 * num_anchors, grid, grid])
    # Box sizes: exp(t) * anchor / G.
    wh = rows(2) + rows(3)
    _conv(b, "out_wh", weight[wh], bias[wh], hidden)
    b.add_unary("out_wh_exp", "out_wh", "out_wh_exp", mode="exp")
    b.add_scale("wh", W=np.concatenate([anchors[:, 0], anchors[:, 1]]).reshape(
                    2 * num_anchors, 1, 1) / grid,
                b=None, has_bias=False, input_name="out_wh_exp", output_name="wh",
                shape_scale=[2 * num_anchors, 1, 1])
    b.add_elementwise("boxes", input_names=["xy", "wh"], output_name="boxes", mode="CONCAT")
    # (4A, G, G), channel k*A + a -> (4, N, 1) -> (N, 4, 1): row n = a*G*G + cell.
    b.add_reshape("boxes_flat", "boxes", "boxes_flat",
                  target_shape=(1, 4, num_anchors * grid * grid, 1), mode=0)
    b.add_permute("boxes_perm", dim=(0, 2, 1, 3), input_name="boxes_flat",
                  output_name=coord_name)


def _write_confidence(b, out, hidden, num_anchors, num_classes, conf_name):
    """Class confidence per box: sigmoid(objectness) * softmax(class logits)."""
    weight, bias = out
    grid = _net.GRID
    parts = []
    for a in range(num_anchors):
        base = a * (5 + num_classes)
        cls = slice(base + 5, base + 5 + num_classes)
        _conv(b, f"out_cls{a}", weight[cls], bias[cls], hidden)
        b.add_softmax(f"out_cls{a}_softmax", f"out_cls{a}", f"out_cls{a}_softmax")
        _conv(b, f"out_obj{a}", weight[[base + 4] * num_classes],
              bias[[base + 4] * num_classes], hidden)
        b.add_activation(f"out_obj{a}_sigmoid", "SIGMOID", f"out_obj{a}", f"out_obj{a}_sigmoid")
        b.add_elementwise(f"conf{a}", input_names=[f"out_cls{a}_softmax", f"out_obj{a}_sigmoid"],
                          output_name=f"conf{a}", mode="MULTIPLY")
        parts.append(f"conf{a}")
    b.add_elementwise("conf", input_names=parts, output_name="conf", mode="CONCAT")
    # (A*C, G, G), channel a*C + c -> (A, C, G*G) -> (A, G*G, C) -> (N, C, 1).
    b.add_reshape("conf_split", "conf", "conf_split",
                  target_shape=(1, num_anchors, num_classes, grid * grid), mode=0)
    b.add_permute("conf_perm", dim=(0, 1, 3, 2), input_name="conf_split",
                  output_name="conf_perm")
    b.add_reshape("conf_rows", "conf_perm", conf_name,
                  target_shape=(1, num_anchors * grid * grid, num_classes, 1), mode=0)


def export_coreml(model, path, include_non_maximum_suppression=True, iou_threshold=None,
                  confidence_threshold=None):
    """Export the detector as a Core ML model (``.mlmodel``).

    Input: an **RGB image of 224x224 pixels** named after the image column
    (stretch the photo to fill, as ``predict`` does; Vision's
    ``.scaleFill``). Outputs: ``confidence`` (boxes x classes, in
    ``model.classes`` order, also in the metadata ``classes``) and
    ``coordinates`` (boxes x [x, y, width, height], centre based, relative to
    the image size).

    With ``include_non_maximum_suppression`` (default) the model is a
    pipeline of the network and Core ML's ``NonMaximumSuppression``
    (iOS 12+, macOS 10.14+); it returns the kept boxes, which are the boxes of
    ``model.predict`` (class-agnostic NMS on each box's best class). Without
    it, all 441 decoded boxes come out unsorted, and the app does the NMS.

    Parameters
    ----------
    path : str or os.PathLike
    include_non_maximum_suppression : bool
    iou_threshold : float, optional
        Default of the NMS IoU threshold (``None``: the model's 0.45);
        overridable at prediction time with the optional input
        ``iouThreshold``.
    confidence_threshold : float, optional
        Default confidence threshold (``None``: 0.25), overridable with
        ``confidenceThreshold``.

    Raises
    ------
    toolkit.errors.ExportError, toolkit.errors.InvalidParameterError

    Notes
    -----
    ``user_defined_metadata`` holds ``toolkit_version``, ``task``
    (``object_detector``), ``file_version``, ``platform``, the create()
    settings as Turi Create writes them (``model``, ``feature``,
    ``annotations``, ``classes`` comma-joined, ``max_iterations``,
    ``training_iterations``, ``non_maximum_suppression_threshold``) and
    ``include_non_maximum_suppression``, ``iou_threshold``,
    ``confidence_threshold``. The short description reads "Object detector
    (efficientnet-lite0-yolo) with non-maximum suppression created by toolkit
    (version X)".

    Examples
    --------
    >>> model.export_coreml('Detector.mlmodel')                  # doctest: +SKIP
    """
    full_path = _coreml.check_export_path(path)
    if not isinstance(include_non_maximum_suppression, bool):
        raise InvalidParameterError("'include_non_maximum_suppression' must be True or False, "
                                    f"got {include_non_maximum_suppression!r}.")
    iou, conf_t = model._thresholds(iou_threshold, confidence_threshold)
    s = model._state
    feature = str(s["feature"])
    if feature in RESERVED_NAMES:
        raise ExportError(f"Cannot export: the image column '{feature}' clashes with a Core ML "
                          "input/output name. Rename the image column and retrain.")
    ct = _coreml.coremltools_module()
    num_classes = len(s["classes"])
    num_boxes = len(s["anchors"]) * _net.GRID ** 2
    try:
        if not include_non_maximum_suppression:
            spec = build_network(model, "confidence", "coordinates")
        else:
            nn_spec = build_network(model, "raw_confidence", "raw_coordinates")
            spec = _pipeline(ct, nn_spec, s["classes"], num_classes, num_boxes, iou, conf_t)
    except (ValueError, TypeError, KeyError) as e:
        raise ExportError(f"Cannot build the Core ML model: {e}") from e
    # The create() settings (model, feature, annotations, classes, max_iterations,
    # training_iterations, non_maximum_suppression_threshold) come from the model's
    # state; the short description names the backbone, as Turi Create's does.
    _coreml.set_model_metadata(spec, model, {
        "classes": [str(c) for c in s["classes"]],
        "include_non_maximum_suppression": include_non_maximum_suppression,
        "iou_threshold": iou, "confidence_threshold": conf_t,
    }, task_title=_net.TASK_TITLE, title_suffix=(" with non-maximum suppression"
                                                 if include_non_maximum_suppression else ""))
    desc = {feature: (f"Input image: RGB, {_net.IMAGE_SIZE}x{_net.IMAGE_SIZE} (scale the photo "
                      "to fill; pixel values 0-255 are scaled by the model)"),
            "confidence": 'Boxes × Class confidence (see user-defined metadata "classes")',
            "coordinates": "Boxes × [x, y, width, height] (relative to image size)"}
    if include_non_maximum_suppression:
        desc["iouThreshold"] = f"(optional) IOU Threshold override (default: {iou})"
        desc["confidenceThreshold"] = (
            f"(optional) Confidence Threshold override (default: {conf_t})")
    _coreml.describe_features(spec, desc)
    _coreml.save_spec(spec, full_path)


def _pipeline(ct, nn_spec, classes, num_classes, num_boxes, iou, conf_t):
    pb = ct.proto.Model_pb2
    FT = ct.proto.FeatureTypes_pb2
    nn_spec.specificationVersion = 3
    for out in nn_spec.description.output:
        out.type.multiArrayType.dataType = FT.ArrayFeatureType.DOUBLE
    nms = pb.Model()
    nms.specificationVersion = 3
    for name, shape in (("raw_confidence", (num_boxes, num_classes)),
                        ("raw_coordinates", (num_boxes, 4))):
        f = nms.description.input.add()
        f.name = name
        f.type.multiArrayType.dataType = FT.ArrayFeatureType.DOUBLE
        f.type.multiArrayType.shape.extend(shape)
    for name in ("iouThreshold", "confidenceThreshold"):
        f = nms.description.input.add()
        f.name = name
        f.type.doubleType.SetInParent()
        f.type.isOptional = True
    for name, width in (("confidence", num_classes), ("coordinates", 4)):
        f = nms.description.output.add()
        f.name = name
        t = f.type.multiArrayType
        t.dataType = FT.ArrayFeatureType.DOUBLE
        t.shape.extend([num_boxes, width])
        r = t.shapeRange.sizeRanges.add()
        r.lowerBound, r.upperBound = 0, -1
        r = t.shapeRange.sizeRanges.add()
        r.lowerBound, r.upperBound = width, width
    p = nms.nonMaximumSuppression
    p.confidenceInputFeatureName = "raw_confidence"
    p.coordinatesInputFeatureName = "raw_coordinates"
    p.confidenceOutputFeatureName = "confidence"
    p.coordinatesOutputFeatureName = "coordinates"
    p.iouThresholdInputFeatureName = "iouThreshold"
    p.confidenceThresholdInputFeatureName = "confidenceThreshold"
    p.iouThreshold = float(iou)
    p.confidenceThreshold = float(conf_t)
    if all(isinstance(c, str) for c in classes):
        p.stringClassLabels.vector.extend(classes)
    else:
        p.int64ClassLabels.vector.extend(int(c) for c in classes)
    spec = pb.Model()
    spec.specificationVersion = 3
    spec.description.input.add().CopyFrom(nn_spec.description.input[0])
    for f in nms.description.input[2:]:
        spec.description.input.add().CopyFrom(f)
    for f in nms.description.output:
        spec.description.output.add().CopyFrom(f)
    spec.pipeline.models.add().CopyFrom(nn_spec)
    spec.pipeline.models.add().CopyFrom(nms)
    return spec
