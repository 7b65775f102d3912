"""ONNX export of the object detector (network, decoding and NMS in one graph),
checked against ``predict`` on real images.

Images are prepared the way the export's docstring tells an app to (Pillow:
EXIF orientation, RGB, bilinear stretch to 224x224, channels first, 0..255)
and run through onnxruntime in one batch; the kept boxes, scaled back to each
original image's pixels, must be ``predict``'s: same count, order, labels,
coordinates and confidences within a small tolerance. Real images: scenes of
real objects on real textures (held-out split), three sample photos of other
sizes and the quokka photo (a JPEG file). A low confidence threshold (0.05,
fed through the ``confidenceThreshold`` input) gives many overlapping boxes of
different classes, so the class-agnostic NMS is exercised. Negative controls
(anchor widths and heights swapped, a per-class NMS) show that the comparison
can fail.
"""

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _optional import require
import toolkit as tc
from toolkit.errors import ExportError, InvalidParameterError
from toolkit.object_detector import _detection

require(("onnx", "the ONNX export needs onnx"),
        ("onnxruntime", "the ONNX check needs onnxruntime"))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import numpy_helper  # noqa: E402

#: Coordinates: fraction of the image size (1e-4 of a 960-pixel photo is 0.1 px).
COORD_TOL = 1e-4
CONF_TOL = 1e-4
LOW = 0.05          # a low confidence threshold: many boxes, NMS across classes


def _session(model_or_path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3          # the overridable thresholds make ORT warn once
    data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") \
        else model_or_path
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def prepare(value):
    """The docstring's recipe, written independently of toolkit._images:
    ((3, 224, 224) float32 pixels, (width, height) of the original)."""
    from PIL import Image, ImageOps
    img = Image.fromarray(value) if isinstance(value, np.ndarray) else Image.open(value)
    img = ImageOps.exif_transpose(img).convert("RGB")
    size = img.size
    img = img.resize((224, 224), Image.BILINEAR)
    return np.asarray(img, np.float32).transpose(2, 0, 1), size


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A briefly trained detector (as in the Core ML tests, ~5 s), real images, the export."""
    import pandas as pd
    train = tc.datasets.detection_scenes(24, random_seed=11)
    model = tc.object_detector.create(train, max_iterations=60, verbose=False, random_seed=0)
    scenes = tc.datasets.detection_scenes(8, split="test", random_seed=12)
    photos = [tc.datasets.sample_photo(n) for n in ("chelsea", "astronaut", "rocket")]
    values = list(scenes["image"]) + photos + [tc.datasets.quokka()["image"][0]]
    column = np.empty(len(values), dtype=object)
    column[:] = values
    data = pd.DataFrame({"image": column})
    path = str(tmp_path_factory.mktemp("od_onnx") / "detector.onnx")
    model.export_onnx(path)
    x, sizes = zip(*[prepare(v) for v in values])
    return model, data, path, _session(path), np.stack(x), sizes


def _onnx_boxes(sess, x, sizes, feeds=None):
    """Per image: the kept boxes as predict's dicts (pixels), from one batched run."""
    coords, score, label, image = sess.run(
        ["coordinates", "score", "label", "imageIndex"], {"image": x, **(feeds or {})})
    out = [[] for _ in sizes]
    for b, s, lab, i in zip(coords, score, label, image):
        W, H = sizes[i]
        out[i].append({"label": lab.decode() if isinstance(lab, bytes) else lab,
                       "coordinates": {"x": b[0] * W, "y": b[1] * H, "width": b[2] * W,
                                       "height": b[3] * H},
                       "confidence": float(s)})
    return out


def _compare(expected, got, sizes):
    """(same boxes, max coordinate diff as a fraction of the image size, max
    confidence diff). Same boxes: same count, labels in the same order and
    coordinates and confidences within the tolerances."""
    same, worst_xy, worst_c = True, 0.0, 0.0
    for exp, got_i, (W, H) in zip(expected, got, sizes):
        if len(exp) != len(got_i) or [d["label"] for d in exp] != [d["label"] for d in got_i]:
            same = False
            continue
        for e, g in zip(exp, got_i):
            scale = np.array([W, H, W, H], np.float64)
            keys = ("x", "y", "width", "height")
            diff = np.abs(np.array([e["coordinates"][k] for k in keys])
                          - np.array([g["coordinates"][k] for k in keys])) / scale
            worst_xy = max(worst_xy, float(diff.max()))
            worst_c = max(worst_c, abs(e["confidence"] - g["confidence"]))
    same = same and worst_xy <= COORD_TOL and worst_c <= CONF_TOL
    return same, worst_xy, worst_c


# --- numerical agreement ---------------------------------------------------

@pytest.mark.parametrize("threshold", [None, LOW], ids=["default_0.25", "low_0.05"])
def test_onnx_boxes_equal_predict(setup, threshold):
    model, data, _, sess, x, sizes = setup
    if threshold is None:
        expected, feeds = list(model.predict(data)), None
    else:
        expected = list(model.predict(data, confidence_threshold=threshold))
        feeds = {"confidenceThreshold": np.array(threshold, np.float32)}
    got = _onnx_boxes(sess, x, sizes, feeds)
    same, dxy, dc = _compare(expected, got, sizes)
    counts = [len(e) for e in expected]
    print(f"threshold {threshold}: boxes per image {counts}; max coordinate diff {dxy:.2g} "
          f"of the image size, max confidence diff {dc:.2g}")
    assert same
    assert sum(counts) >= len(sizes)                 # boxes to compare, on most images
    assert sum(c > 0 for c in counts) >= len(sizes) // 2
    if threshold == LOW:
        # Overlapping boxes of different classes: the case where a per-class NMS
        # would keep more boxes than predict (see the negative control).
        assert max(counts) >= 3


def test_raw_outputs_match_predicts_decoding(setup):
    """Before NMS: all 441 decoded boxes of each image equal _detection.decode
    of the raw network output predict uses."""
    model, data, _, sess, x, _ = setup
    raw = np.concatenate([r for _, r, _ in model._raw(data["image"].to_numpy(), "image",
                                                       data.index)])
    coords, conf = sess.run(["raw_coordinates", "raw_confidence"], {"image": x})
    assert coords.shape == (len(x), 441, 4) and conf.shape == (len(x), 441, 3)
    for i, r in enumerate(raw):
        c, p = _detection.decode(r, model.anchors, len(model.classes))
        assert np.abs(coords[i] - c).max() <= COORD_TOL
        assert np.abs(conf[i] - p).max() <= CONF_TOL


def test_iou_threshold_input_and_export_defaults(setup, tmp_path):
    """iouThreshold fed at run time, and thresholds chosen at export time, give
    predict's boxes with the same thresholds."""
    model, data, _, sess, x, sizes = setup
    expected = list(model.predict(data, confidence_threshold=LOW, iou_threshold=0.2))
    got = _onnx_boxes(sess, x, sizes, {"confidenceThreshold": np.array(LOW, np.float32),
                                       "iouThreshold": np.array(0.2, np.float32)})
    assert _compare(expected, got, sizes)[0]
    path = tmp_path / "d.onnx"
    model.export_onnx(path, iou_threshold=0.2, confidence_threshold=LOW)
    assert _compare(expected, _onnx_boxes(_session(str(path)), x, sizes), sizes)[0]
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["iou_threshold"] == "0.2" and meta["confidence_threshold"] == str(LOW)


def test_single_image_and_empty_result(setup):
    model, data, _, sess, x, sizes = setup
    expected = model.predict(data["image"][9])                  # one image in, one list out
    got = _onnx_boxes(sess, x[9:10], sizes[9:10])
    assert _compare([expected], got, sizes[9:10])[0]
    outs = sess.run(None, {"image": x[:2], "confidenceThreshold": np.array(1.0, np.float32)})
    named = dict(zip([o.name for o in sess.get_outputs()], outs))
    assert named["coordinates"].shape == (0, 4) and named["label"].shape == (0,)
    assert named["confidence"].shape == (0, 3) and named["imageIndex"].shape == (0,)


# --- negative controls -------------------------------------------------------

def test_negative_control_swapped_anchor_sizes_fail(setup):
    """A check that cannot fail proves nothing: the export with each anchor's
    width and height swapped (still a valid model) must be caught."""
    model, data, path, _, x, sizes = setup
    m = onnx.load(path)
    inits = {t.name: t for t in m.graph.initializer}
    w = numpy_helper.to_array(inits["/decode/anchor_w"]).copy()
    h = numpy_helper.to_array(inits["/decode/anchor_h"]).copy()
    inits["/decode/anchor_w"].CopyFrom(numpy_helper.from_array(h, "/decode/anchor_w"))
    inits["/decode/anchor_h"].CopyFrom(numpy_helper.from_array(w, "/decode/anchor_h"))
    onnx.checker.check_model(m, full_check=True)
    expected = list(model.predict(data))
    same, dxy, _ = _compare(expected, _onnx_boxes(_session(m), x, sizes), sizes)
    print(f"anchors swapped: same boxes {same}, max coordinate diff {dxy:.3g}")
    assert not same


def _per_class_nms(onnx_model):
    """A copy whose NonMaxSuppression gets one score row per class (per-class NMS,
    ONNX's usual use) instead of each box's best class."""
    m = copy.deepcopy(onnx_model)
    nodes = list(m.graph.node)
    (nms,) = [n for n in nodes if n.op_type == "NonMaxSuppression"]
    transpose = onnx.helper.make_node("Transpose", ["raw_confidence"], ["/test/per_class"],
                                      perm=[0, 2, 1])
    nms.input[1] = "/test/per_class"
    at = nodes.index(nms)
    m.graph.ClearField("node")
    m.graph.node.extend(nodes[:at] + [transpose] + nodes[at:])   # kept in topological order
    onnx.checker.check_model(m, full_check=True)
    return m


def test_negative_control_per_class_nms_fails(setup):
    """The NMS semantics matter: a per-class NMS keeps overlapping boxes of
    different classes that predict suppresses."""
    model, data, path, _, x, sizes = setup
    broken = _per_class_nms(onnx.load(path))
    sess = _session(broken)
    expected = list(model.predict(data, confidence_threshold=LOW))
    got = _onnx_boxes(sess, x, sizes, {"confidenceThreshold": np.array(LOW, np.float32)})
    same, _, _ = _compare(expected, got, sizes)
    extra = sum(len(g) for g in got) - sum(len(e) for e in expected)
    print(f"per-class NMS: same boxes {same}, {extra} more boxes than predict")
    assert not same and extra > 0


# --- the exported interface -------------------------------------------------

def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_interface_names_shapes_and_metadata(setup):
    model, _, path, sess, _, _ = setup
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 17)]
    assert m.ir_version == 8 and m.producer_version == tc.__version__
    assert m.doc_string.startswith(f"Object detector created by toolkit (version {tc.__version__})")
    T = onnx.TensorProto
    inputs = {vi.name: (vi.type.tensor_type.elem_type, _dims(vi)) for vi in m.graph.input}
    outputs = {vi.name: (vi.type.tensor_type.elem_type, _dims(vi)) for vi in m.graph.output}
    assert inputs == {"image": (T.FLOAT, ["batch", 3, 224, 224]),
                      "iouThreshold": (T.FLOAT, []), "confidenceThreshold": (T.FLOAT, [])}
    assert outputs == {"coordinates": (T.FLOAT, ["boxes", 4]),
                       "confidence": (T.FLOAT, ["boxes", 3]),
                       "score": (T.FLOAT, ["boxes"]), "labelIndex": (T.INT64, ["boxes"]),
                       "label": (T.STRING, ["boxes"]), "imageIndex": (T.INT64, ["boxes"]),
                       "raw_coordinates": (T.FLOAT, ["batch", 441, 4]),
                       "raw_confidence": (T.FLOAT, ["batch", 441, 3])}
    for vi in list(m.graph.input) + list(m.graph.output):
        assert vi.doc_string, vi.name
    # The thresholds are optional: defaults stored as initializers of the same name.
    defaults = {t.name: float(numpy_helper.to_array(t)) for t in m.graph.initializer
                if t.name in ("iouThreshold", "confidenceThreshold")}
    assert defaults == pytest.approx({"iouThreshold": 0.45, "confidenceThreshold": 0.25})
    assert [i.name for i in sess.get_inputs()] == ["image"]
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["task"] == "object_detector" and meta["file_version"] == "1"
    assert json.loads(meta["classes"]) == model.classes == ["cat", "digit", "face"]
    assert json.loads(meta["anchors"]) == [list(a) for a in model.anchors]
    assert meta["feature"] == "image" and meta["annotations"] == "annotations"
    assert meta["coordinates"] == "relative_center_xywh"
    assert meta["non_maximum_suppression"] == "class_agnostic"
    assert meta["max_detections"] == "100" and meta["input_layout"] == "NCHW"
    assert json.loads(meta["input_image_shape"]) == [3, 224, 224]
    (nms,) = [n for n in m.graph.node if n.op_type == "NonMaxSuppression"]
    assert len(nms.input) == 4                          # no score_threshold: see the module doc
    assert {a.name: a.i for a in nms.attribute} == {"center_point_box": 1}


def test_help_loaded_model_and_errors(setup, tmp_path):
    from toolkit.object_detector._onnx_export import export_onnx
    model, _, path, _, _, _ = setup
    assert model.export_onnx.__doc__ == export_onnx.__doc__
    assert "class-agnostic" in export_onnx.__doc__
    model.save(tmp_path / "m.model")
    loaded = tc.load_model(str(tmp_path / "m.model"))
    loaded.export_onnx(tmp_path / "again.onnx")
    assert (tmp_path / "again.onnx").read_bytes() == open(path, "rb").read()
    state, weights = model._get_state()
    for bad in ("coordinates", "confidenceThreshold", "raw_confidence"):
        state["feature"] = bad
        with pytest.raises(ExportError, match=bad):
            type(model)._from_state(state, weights).export_onnx(str(tmp_path / "x.onnx"))
    for kw in ({"iou_threshold": 1.5}, {"confidence_threshold": -0.1},
               {"confidence_threshold": "high"}):
        with pytest.raises(InvalidParameterError):
            model.export_onnx(str(tmp_path / "x.onnx"), **kw)
    with pytest.raises(ExportError, match="is a directory"):
        model.export_onnx(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["again.onnx", "m.model"]


def test_import_does_not_import_onnx():
    code = ("import sys, toolkit, toolkit.object_detector, "
            "toolkit.object_detector._onnx_export; "
            "sys.exit('onnx' in sys.modules or 'onnxruntime' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
