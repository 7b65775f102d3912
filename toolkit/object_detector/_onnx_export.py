"""ONNX export of the object detector: network, box decoding and NMS in one graph.

The network and decoding are those of the Core ML export (:mod:`._export`);
the non-maximum suppression that Core ML runs as a second pipeline stage is
ONNX's ``NonMaxSuppression`` (opset 10+) in the same graph, set up to take
``predict``'s decisions. Written with the ``onnx`` helper API in opset 17
(see :mod:`toolkit._onnx` for why not ``mx.onnx``, and for the versions).
The network part (:func:`write_network`) also makes the in-memory graph that
``predict`` and ``evaluate`` run on onnxruntime (:func:`network_model`, see
:mod:`toolkit._ort`).

==================  ========================================================  ================
part                ONNX operators                                            shape
==================  ========================================================  ================
``<feature>``       input, RGB pixels 0..255, float32, channels first         (B, 3, 224, 224)
scale, backbone     the image classifier's export (BatchNorm folded) up to    (B, 1280, 7, 7),
                    the head convolution, plus block 10's output              (B, 112, 14, 14)
head                ``Conv`` + ``LeakyRelu`` 0.1 (conv1, fine), ``Concat``,   (B, A(5+C), 7, 7)
                    ``Conv`` + ``LeakyRelu`` (conv2), ``Conv`` (out)
decoding            ``Reshape`` (B, A, 5+C, 49), ``Split``; x, y:             (B, N, 4),
                    (``Sigmoid`` + cell) / 7; w, h: ``Exp`` * anchor / 7;     (B, N, C)
                    ``Sigmoid`` (objectness) * ``Softmax`` (classes);
                    -> ``raw_coordinates``, ``raw_confidence``, N = A * 49
NMS                 ``ReduceMax`` over classes (each box's best class),       (K, 3)
                    ``NonMaxSuppression`` with that single score row
                    (class-agnostic), centre boxes, ``iouThreshold``, at
                    most 100 boxes per image, no score threshold
selection           ``GatherND`` of the kept rows; ``Clip`` to the image;     (K', ...)
                    ``Compress`` keeps score >= ``confidenceThreshold`` and
                    width, height > 0 -> ``coordinates``, ``confidence``,
                    ``score``, ``labelIndex``, ``label``, ``imageIndex``
==================  ========================================================  ================

Why NonMaxSuppression gets no ``score_threshold``: onnxruntime drops boxes
whose score is *not above* the threshold, ``predict`` keeps boxes *at least*
as confident. Boxes under the threshold score below every box over it, so
they come after all of them in the greedy order and cannot suppress them;
running NMS on all boxes and dropping the low ones afterwards keeps exactly
``predict``'s boxes, ``>=`` included, and the same 100-box limit (which
``predict`` applies to the candidates over the threshold, which come first).
"""

import numpy as np

from .. import _onnx
from .._mx import get_weights
from ..errors import ExportError
from ..pretrained import _onnx_writer
from . import _detection, _net

BATCH = "batch"
KEPT = "boxes"
INPUT_NAMES = ("iouThreshold", "confidenceThreshold")
OUTPUT_NAMES = ("coordinates", "confidence", "score", "labelIndex", "label", "imageIndex",
                "raw_coordinates", "raw_confidence")


def export_onnx(model, path, iou_threshold=None, confidence_threshold=None):
    """Export the detector as an ONNX model (``.onnx``, opset 17), NMS included.

    Runs in onnxruntime (servers, Android, the web) and any runtime that
    supports ONNX opset 17. The graph holds the network, the box decoding and
    the non-maximum suppression, so an image goes in and ``predict``'s boxes
    come out.

    Inputs:

    * named after the image column (``model.feature``, e.g. ``image``):
      float32 ``(batch, 3, 224, 224)``, **RGB pixel values 0..255, channels
      first** (NCHW). The model scales them itself; prepare each image as
      ``predict`` does: EXIF orientation applied, converted to 8-bit RGB
      (alpha dropped, not composited), **stretched** to 224x224 with
      bilinear filtering (Pillow's ``Image.BILINEAR``; aspect ratio not
      kept, no letterbox, no crop). A numpy image given to ``predict`` as
      floats in [0, 1] is first turned into ``np.round(x * 255)`` as uint8.
    * ``iouThreshold``, ``confidenceThreshold``: optional float32 scalars
      (defaults stored in the file: ``iou_threshold`` and
      ``confidence_threshold`` of this call), the same as ``predict``'s
      arguments.

    Outputs, one row per kept box, the boxes of all images of the batch
    together (image by image, most confident first within an image):

    * ``coordinates``: float32 ``(boxes, 4)``: centre x, centre y, width,
      height, **relative** to the image (0..1), clipped to the image;
      multiply x and width by the original image's width, y and height by
      its height to get ``predict``'s pixel ``coordinates``;
    * ``confidence``: float32 ``(boxes, num_classes)``, every class's
      confidence ``P(object) * P(class | object)`` (columns in
      ``model.classes`` order), as in the Core ML export;
    * ``score``: float32 ``(boxes,)``, the best class's confidence
      (``predict``'s ``'confidence'``); ``labelIndex``: int64 ``(boxes,)``;
      ``label``: ``(boxes,)`` the class (str, or int64 for int classes);
    * ``imageIndex``: int64 ``(boxes,)``, the batch row each box belongs to;
    * ``raw_coordinates`` float32 ``(batch, N, 4)`` and ``raw_confidence``
      float32 ``(batch, N, num_classes)``: all N = 441 decoded boxes before
      NMS (not clipped), for apps with their own NMS.

    The NMS is ``predict``'s: class-agnostic on each box's best class (a box
    suppresses any less confident box overlapping it by an IoU above
    ``iouThreshold``, whatever their classes); boxes with a best-class
    confidence of at least ``confidenceThreshold`` are kept; at most 100 per
    image; boxes are clipped to the image afterwards (a box left with no
    width or height is dropped). Measured against ``predict`` on real
    images: the same boxes and labels, coordinates within about 1e-5 of the
    image size, confidences within about 1e-6.

    Parameters
    ----------
    model : ObjectDetector
        A trained (or loaded) detector.
    path : str or os.PathLike
        Destination file, by convention ending in ``.onnx``. Its directory
        must exist; an existing file is replaced atomically.
    iou_threshold : float, optional
        Default of the ``iouThreshold`` input (``None``: the model's
        ``non_maximum_suppression_threshold``, 0.45, as ``predict``).
    confidence_threshold : float, optional
        Default of the ``confidenceThreshold`` input (``None``: 0.25, as
        ``predict``).

    Returns
    -------
    None

    Raises
    ------
    toolkit.errors.InvalidParameterError
        ``path`` is not a str / path-like or is empty, or a threshold is not
        a number in [0, 1].
    toolkit.errors.ExportError
        The directory of ``path`` does not exist, ``path`` is a directory, the
        file cannot be written, the ``onnx`` package is not installed, or the
        image column's name collides with an input or output name.

    Notes
    -----
    ``metadata_props`` holds ``toolkit_version``, ``task``
    (``object_detector``), ``file_version``, ``classes`` (JSON list),
    ``feature``, ``annotations``, ``model``, ``anchors``, ``grid_shape``,
    ``input_image_shape`` (``[3, 224, 224]``), ``input_layout`` (``NCHW``),
    ``input_range`` (``[0, 255]``), ``coordinates``
    (``relative_center_xywh``), ``non_maximum_suppression`` (``class_agnostic``),
    ``iou_threshold``, ``confidence_threshold`` (the defaults) and
    ``max_detections`` (100). Opset 17 of the default domain, IR version 8;
    the file passes ``onnx.checker`` (full check) before it is written. If
    two boxes have exactly the same score, their order (and so which one
    suppresses the other) is up to the runtime. onnxruntime logs a warning when
    it loads the file that ``iouThreshold`` and ``confidenceThreshold`` are
    initializers listed as graph inputs: that is what makes them optional
    inputs with defaults (silence it with ``SessionOptions.log_severity_level
    = 3``).

    Examples
    --------
    >>> model.export_onnx('detector.onnx')                        # doctest: +SKIP

    Detecting objects in a photo with onnxruntime, boxes in pixels as
    ``predict`` returns them:

    >>> import numpy as np, onnxruntime as ort                    # doctest: +SKIP
    >>> from PIL import Image, ImageOps                           # doctest: +SKIP
    >>> img = ImageOps.exif_transpose(Image.open('photo.jpg')).convert('RGB')
    ...                                                           # doctest: +SKIP
    >>> W, H = img.size                                           # doctest: +SKIP
    >>> x = np.asarray(img.resize((224, 224), Image.BILINEAR), np.float32)
    ...                                                           # doctest: +SKIP
    >>> sess = ort.InferenceSession('detector.onnx')              # doctest: +SKIP
    >>> boxes, score, label = sess.run(['coordinates', 'score', 'label'],
    ...                                {'image': x.transpose(2, 0, 1)[None]})  # doctest: +SKIP
    >>> [{'label': l, 'confidence': float(s),
    ...   'coordinates': {'x': b[0] * W, 'y': b[1] * H, 'width': b[2] * W, 'height': b[3] * H}}
    ...  for b, s, l in zip(boxes, score, label)]                # doctest: +SKIP

    Other thresholds at prediction time:
    ``sess.run(None, {'image': x, 'confidenceThreshold': np.array(0.5, np.float32)})``.
    """
    full_path = _onnx.check_export_path(path)
    iou, conf_t = model._thresholds(iou_threshold, confidence_threshold)
    _onnx.onnx_module()

    s = model._state
    feature = str(s["feature"])
    if feature in INPUT_NAMES + OUTPUT_NAMES:
        raise ExportError(
            f"Cannot export: the image column '{feature}' clashes with an ONNX input/output "
            f"name ({', '.join(INPUT_NAMES + OUTPUT_NAMES)}). Rename the image column and "
            "retrain.")
    labels, label_dtype = _onnx.labels_of(list(s["classes"]))
    anchors = np.asarray(s["anchors"], np.float64)
    num_classes, size = len(s["classes"]), _net.IMAGE_SIZE
    w = get_weights(model._net)

    g = _onnx.GraphBuilder("object_detector")
    x = g.input(feature, np.float32, [BATCH, 3, size, size],
                f"RGB image, channels first, pixel values 0-255, {size}x{size} (stretch the "
                "photo to fill, bilinear; EXIF orientation applied, alpha dropped)")
    iou_in = g.input("iouThreshold", np.float32, [],
                     f"(optional) NMS IoU threshold (default: {iou})", default=iou)
    conf_in = g.input("confidenceThreshold", np.float32, [],
                      f"(optional) confidence threshold (default: {conf_t})", default=conf_t)
    raw = write_network(g, _onnx_writer.scale_input(g, x), w)   # (B, A(5+C), G, G)
    coords, conf = _write_decoding(g, raw, anchors, num_classes)
    _write_selection(g, coords, conf, iou_in, conf_in, labels, label_dtype)
    _declare_outputs(g, len(anchors) * _net.GRID ** 2, num_classes, label_dtype)

    onnx_model = _onnx.make_model(g, model._TASK, model._FILE_VERSION, {
        "classes": labels,
        "feature": feature,
        "annotations": str(s["annotations"]),
        "model": str(s["model"]),
        "anchors": [[float(a) for a in pair] for pair in anchors],
        "grid_shape": [_net.GRID, _net.GRID],
        "input_image_shape": [3, size, size],
        "input_layout": "NCHW",
        "input_range": [0, 255],
        "coordinates": "relative_center_xywh",
        "non_maximum_suppression": "class_agnostic",
        "iou_threshold": iou,
        "confidence_threshold": conf_t,
        "max_detections": _detection.MAX_DETECTIONS,
    }, task_title=_net.TASK_TITLE, doc=(
        f"Input: RGB pixels 0-255, float32 (batch, 3, {size}, {size}), the photo stretched to "
        f"{size}x{size} with bilinear filtering. Outputs: the boxes predict() keeps, relative "
        "centre x, y, width, height. See help(model.export_onnx)."))
    _onnx.save_model(onnx_model, full_path)


def write_network(g, x, weights):
    """Add the backbone and the head on the network input ``x`` (in [-1, 1]).

    Returns the name of the raw outputs (B, A(5+C), G, G), what the mxnet
    ``ObjectDetectorNet`` returns. ``weights``: the network's arrays under
    their stored names.
    """
    coarse, fine = _onnx_writer.write_backbone(g, x, weights, fine_block=_net.FINE_BLOCK,
                                               prefix=_net.BACKBONE + ".")
    return _write_head(g, weights, coarse, fine)


def network_model(weights, num_outputs, task, file_version):
    """The in-memory ONNX model that ``predict`` runs on onnxruntime: network input
    (B, 3, 224, 224) float32 in [-1, 1], already scaled as ``predict`` scales it,
    -> raw outputs (B, ``num_outputs`` = A(5+C), G, G), decoded by numpy as
    before. Not written to a file."""
    size, grid = _net.IMAGE_SIZE, _net.GRID
    g = _onnx.GraphBuilder("object_detector_network")
    x = g.input("network_input", np.float32, [BATCH, 3, size, size], "pixels scaled to [-1, 1]")
    g.output(write_network(g, x, weights), np.float32, [BATCH, num_outputs, grid, grid],
             "raw head outputs")
    return _onnx.make_model(g, task, file_version)


def _write_head(g, w, coarse, fine):
    """The head's layers on the backbone's two maps; returns the raw output's name."""
    def conv(name, inp, kernel=1, stride=1, pad=0):
        weight = g.initializer(f"/head/{name}/W", w[_net.head_weight(name)])
        bias = g.initializer(f"/head/{name}/B", w[_net.head_weight(name, "bias")])
        return g.node("Conv", [inp, weight, bias], [f"/head/{name}/conv"],
                      kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4,
                      dilations=[1, 1], group=1)

    def leaky(name, inp):
        return g.node("LeakyRelu", [inp], [f"/head/{name}/leaky"], alpha=0.1)

    # Dropout is the identity at prediction time and is left out.
    y1 = leaky("conv1", conv("conv1", coarse))
    y2 = leaky("fine", conv("fine", fine, kernel=3, stride=2, pad=1))
    y = g.node("Concat", [y1, y2], ["/head/concat"], axis=1)
    y = leaky("conv2", conv("conv2", y, kernel=3, pad=1))
    return conv("out", y)


def _write_decoding(g, raw, anchors, num_classes):
    """The numpy of ``_detection.decode``, in float32; returns (coordinates, confidence).

    Row n = a * G * G + row * G + col: the order of predict's decode and of Core ML.
    """
    num_anchors, grid = len(anchors), _net.GRID
    r = g.node("Reshape", [raw, g.initializer("/decode/shape", [0, num_anchors, 5 + num_classes,
                                                                grid * grid], np.int64)],
               ["/decode/rows"])
    tx, ty, tw, th, to, cls = g.node(
        "Split", [r, g.initializer("/decode/split", [1, 1, 1, 1, 1, num_classes], np.int64)],
        [f"/decode/{n}" for n in ("tx", "ty", "tw", "th", "tobj", "tcls")], axis=2)
    cell = np.arange(grid * grid)
    bx = g.node("Add", [g.node("Sigmoid", [tx], ["/decode/sx"]),
                        g.initializer("/decode/col", (cell % grid).reshape(1, 1, 1, -1))],
                ["/decode/cx"])
    by = g.node("Add", [g.node("Sigmoid", [ty], ["/decode/sy"]),
                        g.initializer("/decode/row", (cell // grid).reshape(1, 1, 1, -1))],
                ["/decode/cy"])
    g_init = g.initializer("/decode/grid", np.float32(grid))
    bx = g.node("Div", [bx, g_init], ["/decode/x"])
    by = g.node("Div", [by, g_init], ["/decode/y"])
    anchor_w = g.initializer("/decode/anchor_w",
                             (anchors[:, 0] / float(grid)).reshape(1, num_anchors, 1, 1))
    anchor_h = g.initializer("/decode/anchor_h",
                             (anchors[:, 1] / float(grid)).reshape(1, num_anchors, 1, 1))
    bw = g.node("Mul", [g.node("Exp", [tw], ["/decode/ew"]), anchor_w], ["/decode/w"])
    bh = g.node("Mul", [g.node("Exp", [th], ["/decode/eh"]), anchor_h], ["/decode/h"])
    box = g.node("Concat", [bx, by, bw, bh], ["/decode/boxes"], axis=2)        # (B, A, 4, GG)
    box = g.node("Transpose", [box], ["/decode/boxes_t"], perm=[0, 1, 3, 2])
    coords = g.node("Reshape", [box, g.initializer("/decode/shape4", [0, -1, 4], np.int64)],
                    ["raw_coordinates"])
    conf = g.node("Mul", [g.node("Softmax", [cls], ["/decode/class_prob"], axis=2),
                          g.node("Sigmoid", [to], ["/decode/objectness"])], ["/decode/conf"])
    conf = g.node("Transpose", [conf], ["/decode/conf_t"], perm=[0, 1, 3, 2])
    conf = g.node("Reshape", [conf, g.initializer("/decode/shapeC", [0, -1, num_classes],
                                                  np.int64)], ["raw_confidence"])
    return coords, conf


def _write_selection(g, coords, conf, iou_in, conf_in, labels, label_dtype):
    """NMS, class-agnostic on each box's best class, clipping and the threshold."""
    best = g.node("ReduceMax", [conf], ["/nms/best"], axes=[2], keepdims=0)   # (B, N)
    best = g.node("Unsqueeze", [best, g.initializer("/nms/axis1", [1], np.int64)],
                  ["/nms/scores"])                                             # (B, 1, N)
    iou_1 = g.node("Reshape", [iou_in, g.initializer("/nms/one", [1], np.int64)],
                   ["/nms/iou"])
    selected = g.node("NonMaxSuppression", [
        coords, best, g.initializer("/nms/max_boxes", [_detection.MAX_DETECTIONS], np.int64),
        iou_1], ["/nms/selected"], center_point_box=1)                        # (K, 3)
    pick = g.node("Gather", [selected, g.initializer("/nms/cols", [0, 2], np.int64)],
                  ["/nms/pick"], axis=1)                                       # (K, 2)
    image_index = g.node("Gather", [selected, g.initializer("/nms/col0", np.int64(0), np.int64)],
                         ["/nms/image"], axis=1)                               # (K,)
    k_coords = g.node("GatherND", [coords, pick], ["/select/coords"])
    k_conf = g.node("GatherND", [conf, pick], ["/select/conf"])
    k_score = g.node("ReduceMax", [k_conf], ["/select/score"], axes=[1], keepdims=0)
    k_label = g.node("ArgMax", [k_conf], ["/select/label"], axis=1, keepdims=0)
    clipped, positive = _write_clip(g, k_coords)
    confident = g.node("GreaterOrEqual", [k_score, conf_in], ["/select/confident"])
    keep = g.node("And", [confident, positive], ["/select/keep"])
    for src, out in ((clipped, "coordinates"), (k_conf, "confidence"), (k_score, "score"),
                     (k_label, "labelIndex"), (image_index, "imageIndex")):
        g.node("Compress", [src, keep], [out], axis=0)
    g.node("Gather", [g.initializer("/labels", labels, label_dtype), "labelIndex"], ["label"],
           axis=0)


def _write_clip(g, k_coords):
    """Clip to the image as predict does (corners clipped to [0, 1], then back to centre/size).

    Returns the names of the clipped boxes and of the flags "width and height > 0".
    """
    starts = {n: g.initializer(f"/clip/{n}", v, np.int64)
              for n, v in (("s0", [0]), ("s2", [2]), ("s4", [4]), ("ax1", [1]))}
    cxy = g.node("Slice", [k_coords, starts["s0"], starts["s2"], starts["ax1"]], ["/clip/xy"])
    wh = g.node("Slice", [k_coords, starts["s2"], starts["s4"], starts["ax1"]], ["/clip/wh"])
    half = g.node("Div", [wh, g.initializer("/clip/two", np.float32(2.0))], ["/clip/half"])
    zero, one = g.initializer("/clip/zero", np.float32(0.0)), g.initializer("/clip/one",
                                                                            np.float32(1.0))
    lo = g.node("Clip", [g.node("Sub", [cxy, half], ["/clip/lo_raw"]), zero, one], ["/clip/lo"])
    hi = g.node("Clip", [g.node("Add", [cxy, half], ["/clip/hi_raw"]), zero, one], ["/clip/hi"])
    centre = g.node("Div", [g.node("Add", [lo, hi], ["/clip/sum"]), "/clip/two"],
                    ["/clip/centre"])
    extent = g.node("Sub", [hi, lo], ["/clip/extent"])
    clipped = g.node("Concat", [centre, extent], ["/clip/boxes"], axis=1)
    positive = g.node("Greater", [g.node("ReduceMin", [extent], ["/clip/min_extent"], axes=[1],
                                         keepdims=0), zero], ["/select/positive"])
    return clipped, positive


def _declare_outputs(g, num_boxes, num_classes, label_dtype):
    g.output("coordinates", np.float32, [KEPT, 4],
             "Kept boxes x [x, y, width, height]: centre based, relative to the image size, "
             "clipped to the image")
    g.output("confidence", np.float32, [KEPT, num_classes],
             "Kept boxes x class confidence P(object) * P(class | object), columns in the order "
             "of the 'classes' metadata")
    g.output("score", np.float32, [KEPT], "Confidence of each kept box's best class")
    g.output("labelIndex", np.int64, [KEPT],
             "Position of each kept box's class in the 'classes' metadata")
    g.output("label", label_dtype, [KEPT], "Class of each kept box")
    g.output("imageIndex", np.int64, [KEPT], "Batch row (image) each kept box belongs to")
    g.output("raw_coordinates", np.float32, [BATCH, num_boxes, 4],
             "All decoded boxes before NMS: [x, y, width, height], centre based, relative, "
             "not clipped")
    g.output("raw_confidence", np.float32, [BATCH, num_boxes, num_classes],
             "Class confidences of all decoded boxes before NMS")
