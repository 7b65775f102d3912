"""ONNX export of the image classifier, checked numerically on real images.

The exported graph runs in onnxruntime on images prepared the way its
docstring tells an app to (Pillow: EXIF orientation, RGB, bilinear stretch to
224x224, channels first, 0..255) and is compared with ``model.predict`` on the
original images: real photos of several sizes and aspect ratios, an RGBA and
a grey image, LFW faces and MNIST digits. Negative controls (red and blue
swapped in the exported stem convolution, a wrong input scaling) show that the
comparison can fail.
"""

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import _image_data as D
from _optional import require
import toolkit as tc
from toolkit.errors import ExportError, InvalidParameterError

require(("onnx", "the ONNX export needs onnx"),
        ("onnxruntime", "the ONNX check needs onnxruntime"))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import numpy_helper  # noqa: E402

TOL = 1e-4


def _session(model_or_path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") \
        else model_or_path
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def prepare(value):
    """The docstring's recipe, written independently of toolkit._images."""
    from PIL import Image, ImageOps
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":   # [0, 1], e.g. LFW
        value = np.round(value * 255.0).astype(np.uint8)
    img = Image.fromarray(value) if isinstance(value, np.ndarray) else Image.open(value)
    img = ImageOps.exif_transpose(img).convert("RGB")
    img = img.resize((224, 224), Image.BILINEAR)
    return np.asarray(img, np.float32).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def images():
    """Real images in their original sizes: 4 photos (451x300 ... 427x640), the
    astronaut as RGBA (alpha dropped) and as grey, 3 LFW faces, 3 MNIST digits."""
    photos = [tc.datasets.sample_photo(n) for n in tc.datasets.SAMPLE_PHOTOS]
    rgba = np.dstack([photos[2], np.linspace(0, 255, photos[2].size // 3).astype(np.uint8)
                      .reshape(photos[2].shape[:2])])
    grey = photos[0].mean(axis=2).astype(np.uint8)
    faces = D.faces()
    digits = D.digits()
    return (photos + [rgba, grey] + [faces["image"][i] for i in (0, 50, 150)]
            + [digits["image"][i] for i in (0, 600, 1100)])


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory):
    """A 3-class digits model (int labels), its export and a session."""
    model = D.digits_model()
    path = str(tmp_path_factory.mktemp("ic_onnx") / "digits.onnx")
    model.export_onnx(path)
    return model, path, _session(path)


@pytest.fixture(scope="module")
def faces_export(tmp_path_factory):
    """A face / not-face model (str labels), its export and a session."""
    model = D.faces_model()
    path = str(tmp_path_factory.mktemp("ic_onnx") / "faces.onnx")
    model.export_onnx(path)
    return model, path, _session(path)


def _batch(images):
    return np.stack([prepare(v) for v in images])


def _expected(model, images):
    return np.stack(model.predict(D.as_frame(images), output_type="probability_vector"))


def _max_diff(sess, model, images):
    prob = model.target + "Probability"
    got = sess.run([prob], {model.feature: _batch(images)})[0]
    return float(np.abs(got - _expected(model, images)).max())


# --- numerical agreement ---------------------------------------------------

@pytest.mark.parametrize("which", ["digits", "faces"])
def test_onnx_matches_predict_on_real_images(which, digits_export, faces_export, images):
    model, _, sess = {"digits": digits_export, "faces": faces_export}[which]
    x = _batch(images)
    expected = _expected(model, images)
    prob, target = model.target + "Probability", model.target
    probs, labels, index = sess.run([prob, target, target + "Index"], {model.feature: x})
    diff = float(np.abs(probs - expected).max())
    print(f"{which}: max |onnxruntime - predict| = {diff:.3g} over {len(images)} images")
    assert diff <= TOL
    assert list(labels) == list(model.predict(D.as_frame(images)))
    np.testing.assert_array_equal(index, expected.argmax(axis=1))
    # Not all saturated: the comparison sees real probabilities.
    assert ((expected > 0.01) & (expected < 0.99)).any()


def _with_features_output(path):
    """A copy of the export that also outputs the pooled 1280-d features."""
    m = onnx.load(path)
    m.graph.output.append(onnx.helper.make_tensor_value_info(
        "/pool/flat", onnx.TensorProto.FLOAT, ["batch", 1280]))
    return m


def test_features_match_extract_features(digits_export, images):
    """Probabilities saturate; the 1280 features per image inside the graph are a
    sharper check of the backbone (folded BatchNorm, padding, ReLU6)."""
    model, path, _ = digits_export
    feats = _session(_with_features_output(path)).run(
        ["/pool/flat"], {model.feature: _batch(images)})[0]
    expected = model.extract_features(D.as_frame(images))
    diff = float(np.abs(feats - expected).max())
    print(f"features: max diff {diff:.3g} (features up to {np.abs(expected).max():.3g})")
    assert diff <= 1e-3 * max(1.0, float(np.abs(expected).max()))


def test_batch_rows_are_independent(faces_export, images):
    model, _, sess = faces_export
    x = _batch(images)
    prob = model.target + "Probability"
    whole = sess.run([prob], {model.feature: x})[0]
    one = np.concatenate([sess.run([prob], {model.feature: x[i:i + 1]})[0]
                          for i in range(len(x))])
    assert np.abs(whole - one).max() <= 1e-6


# --- negative controls -------------------------------------------------------

def _edited(path, changes):
    """A copy of the exported file with initializers replaced: {name: fn(array)}."""
    m = onnx.load(path)
    for t in m.graph.initializer:
        if t.name in changes:
            value = np.array(changes.pop(t.name)(numpy_helper.to_array(t).copy()), np.float32)
            t.CopyFrom(numpy_helper.from_array(value, t.name))
    assert not changes
    onnx.checker.check_model(m, full_check=True)
    return m


def _feature_diff(onnx_model, model, images):
    m = copy.deepcopy(onnx_model)
    m.graph.output.append(onnx.helper.make_tensor_value_info(
        "/pool/flat", onnx.TensorProto.FLOAT, ["batch", 1280]))
    feats = _session(m).run(["/pool/flat"], {model.feature: _batch(images)})[0]
    return float(np.abs(feats - model.extract_features(D.as_frame(images))).max())


@pytest.mark.parametrize("control", ["swap_red_blue", "scale_0_1"])
def test_negative_controls_fail(control, digits_export, images):
    """A check that cannot fail proves nothing: the export with red and blue
    swapped in its first convolution, or scaling pixels to [0, 1] instead of
    [-1, 1] (both still valid models), must be caught by the same comparisons,
    of probabilities and of features. (The digits model: the faces model's
    probabilities are saturated on the colour photos, and LFW is grey.)"""
    model, path, _ = digits_export
    changes = {"swap_red_blue": {"/backbone/stem/W": lambda w: w[:, ::-1]},
               "scale_0_1": {"/scale/mul": lambda v: 1 / 255.0, "/scale/add": lambda v: 0.0}}
    broken = _edited(path, changes[control])
    diff = _max_diff(_session(broken), model, images)
    fdiff = _feature_diff(broken, model, images)
    print(f"{control}: max probability diff = {diff:.3g}, max feature diff = {fdiff:.3g}")
    # Measured 0.058 / 0.050 (probabilities) and 1.6 / 2.6 (features), against
    # ~5e-7 and ~4e-5 for the correct export.
    assert diff > 100 * TOL
    assert fdiff > 0.5


# --- the exported interface -------------------------------------------------

def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_interface_names_shapes_and_metadata(digits_export, faces_export):
    T = onnx.TensorProto
    for (model, path, sess), label_type in ((digits_export, T.INT64),
                                            (faces_export, T.STRING)):
        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        assert [(o.domain, o.version) for o in m.opset_import] == [("", 17)]
        assert m.ir_version == 8
        assert m.producer_name == "toolkit" and m.producer_version == tc.__version__
        assert m.doc_string.startswith(
            f"Image classifier created by toolkit (version {tc.__version__})")
        C = len(model.classes)
        inputs = {vi.name: (vi.type.tensor_type.elem_type, _dims(vi)) for vi in m.graph.input}
        outputs = {vi.name: (vi.type.tensor_type.elem_type, _dims(vi)) for vi in m.graph.output}
        assert inputs == {"image": (T.FLOAT, ["batch", 3, 224, 224])}
        assert outputs == {"labelProbability": (T.FLOAT, ["batch", C]),
                           "label": (label_type, ["batch"]),
                           "labelIndex": (T.INT64, ["batch"])}
        for vi in list(m.graph.input) + list(m.graph.output):
            assert vi.doc_string, vi.name
        assert "0-255" in m.graph.input[0].doc_string
        meta = {p.key: p.value for p in m.metadata_props}
        assert meta == {"toolkit_version": tc.__version__, "task": "image_classifier",
                        "file_version": str(model._FILE_VERSION),
                        "classes": json.dumps(model.classes),
                        "target": "label", "feature": "image", "model": "efficientnet-lite0",
                        "input_image_shape": "[3, 224, 224]", "input_layout": "NCHW",
                        "input_range": "[0, 255]", "max_iterations": "30"}
        ops = {n.op_type for n in m.graph.node}
        assert ops == {"Mul", "Add", "Conv", "Clip", "GlobalAveragePool", "Flatten", "Gemm",
                       "Softmax", "ArgMax", "Gather"}
        # BatchNorm folded: one Conv per convolution of the network (1 + 16 * 2 + 15 + 1).
        assert sum(n.op_type == "Conv" for n in m.graph.node) == 49
        assert [i.name for i in sess.get_inputs()] == ["image"]


def test_help_and_loaded_model_export(digits_export, tmp_path):
    from toolkit.image_classifier._onnx_export import export_onnx
    model, path, _ = digits_export
    assert model.export_onnx.__doc__ == export_onnx.__doc__
    assert "NCHW" in export_onnx.__doc__ and "BILINEAR" in export_onnx.__doc__
    model.save(tmp_path / "m.model")
    again = tmp_path / "again.onnx"
    tc.load_model(str(tmp_path / "m.model")).export_onnx(again)       # os.PathLike accepted
    assert again.read_bytes() == open(path, "rb").read()


def test_clashing_column_names_and_bad_paths(digits_export, tmp_path):
    model, _, _ = digits_export
    state, weights = model._get_state()
    for bad in ("labelProbability", "labelIndex", "label"):
        state["feature"] = bad
        with pytest.raises(ExportError, match=bad):
            type(model)._from_state(state, weights).export_onnx(str(tmp_path / "x.onnx"))
    with pytest.raises(ExportError, match="is a directory"):
        model.export_onnx(str(tmp_path))
    with pytest.raises(ExportError, match="does not exist"):
        model.export_onnx(str(tmp_path / "no" / "x.onnx"))
    for bad in (None, 3, ""):
        with pytest.raises(InvalidParameterError):
            model.export_onnx(bad)
    assert os.listdir(tmp_path) == []


def test_import_does_not_import_onnx():
    code = ("import sys, toolkit, toolkit.image_classifier, "
            "toolkit.image_classifier._onnx_export; "
            "sys.exit('onnx' in sys.modules or 'onnxruntime' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
