"""The inference backend (toolkit.config.set_inference_backend, toolkit._ort).

The image classifier and the object detector predict through onnxruntime when
it is installed ('auto'). These tests run the same models on real images
(MNIST digits, LFW faces, photos, detection scenes) with the backend forced to
'mxnet' and to 'onnxruntime' and require the outputs users see to agree
within the ONNX export tests' tolerances; they check the choice ('auto', the
environment variable, a missing onnxruntime), the first-batch safety net with a
deliberately wrong graph, the thread setting, and that ``import toolkit`` does
not import onnxruntime.
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest

import _image_data as D
from _optional import require
import toolkit as tc
from toolkit import _ort
from toolkit.errors import BackendNotAvailableError, InvalidParameterError, ToolkitWarning

require(("onnx", "the onnxruntime backend needs onnx"),
        ("onnxruntime", "the onnxruntime backend needs onnxruntime"))

#: The export tests' tolerances: probabilities and confidences absolute, box
#: coordinates as a fraction of the image size.
PROB_TOL = 1e-4
COORD_TOL = 1e-4
#: Features and raw outputs: relative to their scale (max |value|, at least 1).
FEATURE_TOL = 1e-4


@pytest.fixture(autouse=True)
def _default_backend(monkeypatch):
    monkeypatch.delenv("TOOLKIT_INFERENCE_BACKEND", raising=False)
    monkeypatch.delenv("TOOLKIT_DEVICES", raising=False)
    yield
    tc.config.set_inference_backend(None)
    tc.config.set_devices(None)


def _close(got, expected, tol=FEATURE_TOL):
    diff, scale = _ort.difference(got, expected)
    return diff <= tol * scale


def _on_both(model, run):
    """``{backend: run(model)}`` for 'mxnet' then 'onnxruntime' (which must not fall back)."""
    out = {}
    for backend in ("mxnet", "onnxruntime"):
        tc.config.set_inference_backend(backend)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ToolkitWarning)
            out[backend] = run(model)
    runners = model.__dict__.get("_inference_runners", {})
    assert runners and all(r.backend == "onnxruntime" for r in runners.values())
    return out


# --- image classifier ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_split():
    data = D.digits()
    small = data[data["label"] < 3]
    return small.groupby("label").head(8), small.groupby("label").tail(4)


@pytest.fixture(scope="module", params=["avg", "grid"])
def classifier(request, digits_split):
    train, _ = digits_split
    return tc.image_classifier.create(train, target="label", verbose=False, random_seed=0,
                                      max_iterations=20, pooling=request.param)


@pytest.fixture(scope="module")
def mixed_images(digits_split):
    """Held-out digits, LFW faces and colour photos of several sizes, labelled."""
    _, test = digits_split
    faces = D.faces()["image"]
    photos = [tc.datasets.sample_photo(n) for n in ("chelsea", "astronaut")]
    images = list(test["image"]) + [faces.iloc[0], faces.iloc[150]] + photos
    frame = D.as_frame(images)
    frame["label"] = list(test["label"]) + [0, 1, 2, 0]
    return frame


def test_classifier_outputs_equal_on_both_backends(classifier, mixed_images):
    def run(model):
        return {"features": model.extract_features(mixed_images, batch_size=5),
                "probs": np.stack(model.predict(mixed_images, output_type="probability_vector")),
                "classes": list(model.predict(mixed_images)),
                "topk": model.predict_topk(mixed_images, k=2),
                "classify": model.classify(mixed_images),
                "accuracy": model.evaluate(mixed_images)["accuracy"]}

    out = _on_both(classifier, run)
    mx_out, ort_out = out["mxnet"], out["onnxruntime"]
    assert mx_out["features"].shape == (len(mixed_images),
                                        {"avg": 1280, "grid": 11520}[classifier.pooling])
    assert _close(ort_out["features"], mx_out["features"])
    assert np.abs(ort_out["probs"] - mx_out["probs"]).max() <= PROB_TOL
    assert ort_out["classes"] == mx_out["classes"]
    assert list(ort_out["topk"]["class"]) == list(mx_out["topk"]["class"])
    assert np.abs(ort_out["topk"]["probability"].to_numpy()
                  - mx_out["topk"]["probability"].to_numpy()).max() <= PROB_TOL
    assert list(ort_out["classify"]["class"]) == list(mx_out["classify"]["class"])
    assert ort_out["accuracy"] == mx_out["accuracy"]


def test_feature_extractor_and_deep_features_equal_on_both_backends(mixed_images):
    model = D.faces_model()
    images = mixed_images["image"]
    out = {}
    for backend in ("mxnet", "onnxruntime"):
        tc.config.set_inference_backend(backend)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ToolkitWarning)
            out[backend] = (np.stack(model.feature_extractor.extract_features(
                                mixed_images, "image")),
                            np.stack(tc.image_analysis.get_deep_features(images,
                                                                         verbose=False)))
    for mx_feats, ort_feats in zip(out["mxnet"], out["onnxruntime"]):
        assert mx_feats.shape == (len(images), 1280)
        assert _close(ort_feats, mx_feats)


# --- object detector ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def detector():
    train = tc.datasets.detection_scenes(16, random_seed=11)
    return tc.object_detector.create(train, max_iterations=30, verbose=False, random_seed=0)


@pytest.fixture(scope="module")
def detection_images():
    scenes = tc.datasets.detection_scenes(6, split="test", random_seed=12)
    photos = [tc.datasets.sample_photo(n) for n in ("chelsea", "rocket")]
    frame = D.as_frame(list(scenes["image"]) + photos)
    frame["annotations"] = list(scenes["annotations"]) + [[], []]
    return frame


def test_detector_outputs_equal_on_both_backends(detector, detection_images):
    values = detection_images["image"].to_numpy()

    def run(model):
        raw = np.concatenate([r for _, r, _ in model._raw(values, "image",
                                                          detection_images.index)])
        return {"raw": raw,
                "boxes": model.predict(detection_images, confidence_threshold=0.05),
                "map": model.evaluate(detection_images)["mean_average_precision_50"]}

    out = _on_both(detector, run)
    mx_out, ort_out = out["mxnet"], out["onnxruntime"]
    assert _close(ort_out["raw"], mx_out["raw"])
    assert sum(map(len, mx_out["boxes"])) > 10            # low threshold: many boxes
    sizes = [(img.shape[1], img.shape[0]) for img in values]
    for exp, got, (width, height) in zip(mx_out["boxes"], ort_out["boxes"], sizes):
        assert [d["label"] for d in got] == [d["label"] for d in exp]
        for e, g in zip(exp, got):
            assert abs(e["confidence"] - g["confidence"]) <= PROB_TOL
            for key, size in (("x", width), ("y", height), ("width", width),
                              ("height", height)):
                assert abs(e["coordinates"][key] - g["coordinates"][key]) <= COORD_TOL * size
    assert abs(ort_out["map"] - mx_out["map"]) <= 1e-6


# --- choosing the backend -----------------------------------------------------------------

def test_auto_picks_onnxruntime_when_installed_and_mxnet_for_gpus():
    assert tc.config.get_inference_backend() == "auto"
    assert tc.config.get_inference_backend(resolve=True) == "onnxruntime"
    tc.config.set_devices(["gpu(0)", "gpu(1)"])
    assert tc.config.get_inference_backend(resolve=True) == "mxnet"
    tc.config.set_devices(["cpu(0)", "cpu(1)"])
    assert tc.config.get_inference_backend(resolve=True) == "onnxruntime"


def test_environment_variable_and_bad_values(monkeypatch):
    monkeypatch.setenv("TOOLKIT_INFERENCE_BACKEND", "mxnet")
    assert tc.config.get_inference_backend(resolve=True) == "mxnet"
    tc.config.set_inference_backend("onnxruntime")             # the call wins over the variable
    assert tc.config.get_inference_backend() == "onnxruntime"
    tc.config.set_inference_backend(None)
    monkeypatch.setenv("TOOLKIT_INFERENCE_BACKEND", "tensorrt")
    with pytest.raises(InvalidParameterError, match="TOOLKIT_INFERENCE_BACKEND.*tensorrt"):
        tc.config.get_inference_backend()
    with pytest.raises(InvalidParameterError, match="'auto', 'mxnet', 'onnxruntime'"):
        tc.config.set_inference_backend("gpu")


def test_forcing_onnxruntime_without_it_says_how_to_install(monkeypatch, mixed_images):
    model = D.faces_model()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)       # import fails
    with pytest.raises(BackendNotAvailableError, match="pip install onnxruntime onnx"):
        tc.config.set_inference_backend("onnxruntime")
    assert issubclass(BackendNotAvailableError, ImportError)
    monkeypatch.setenv("TOOLKIT_INFERENCE_BACKEND", "onnxruntime")
    with pytest.raises(BackendNotAvailableError, match="pip install onnxruntime onnx"):
        model.predict(mixed_images)
    monkeypatch.setenv("TOOLKIT_INFERENCE_BACKEND", "auto")     # 'auto' quietly uses mxnet
    assert tc.config.get_inference_backend(resolve=True) == "mxnet"
    assert len(model.predict(mixed_images)) == len(mixed_images)


def test_import_toolkit_does_not_import_onnxruntime():
    code = ("import sys, toolkit; toolkit.config.get_inference_backend(); "
            "sys.exit('onnxruntime' in sys.modules or 'onnx' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_session_threads_follow_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _ort.intra_op_threads() == 1
    model = D.faces_model()
    fresh = type(model)(model._state, model._net)
    tc.config.set_inference_backend("onnxruntime")
    fresh.predict(D.as_frame(D.photos()[:1]))
    session = fresh._inference_runners[model.pooling]._session
    assert session.get_session_options().intra_op_num_threads == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert _ort.intra_op_threads() == 0                         # onnxruntime's default
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    assert _ort.intra_op_threads() == 0


# --- the safety net -----------------------------------------------------------------------

def _fresh(model):
    """The same network in a new model object: no runner built or checked yet."""
    return type(model)(model._state, model._net)


def test_a_wrong_graph_falls_back_to_mxnet_with_one_warning(monkeypatch, mixed_images):
    from toolkit.image_classifier import _onnx_export
    model = D.faces_model()
    tc.config.set_inference_backend("mxnet")
    expected = model.extract_features(mixed_images, batch_size=4)

    real = _onnx_export.features_model

    def stem_weights_halved(weights, pooling, *args):
        # (Not red and blue swapped: the first batch holds grey digits, on which that
        # changes nothing.)
        weights = dict(weights)
        stem = "backbone.stem.conv.weight"
        weights[stem] = weights[stem] * np.float32(0.5)
        return real(weights, pooling, *args)

    monkeypatch.setattr(_onnx_export, "features_model", stem_weights_halved)
    tc.config.set_inference_backend("onnxruntime")
    fresh = _fresh(model)
    with pytest.warns(ToolkitWarning, match="predicts with mxnet instead of onnxruntime.*"
                                            "differ from mxnet's.*set_inference_backend"):
        got = fresh.extract_features(mixed_images, batch_size=4)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert fresh._inference_runners[model.pooling].backend == "mxnet"
    with warnings.catch_warnings():                             # once per model
        warnings.simplefilter("error", ToolkitWarning)
        np.testing.assert_allclose(fresh.extract_features(mixed_images), expected,
                                   rtol=0, atol=1e-6)


def test_a_graph_that_cannot_be_built_falls_back_to_mxnet(monkeypatch, detector,
                                                          detection_images):
    from toolkit.object_detector import _onnx_export
    tc.config.set_inference_backend("mxnet")
    expected = detector.predict(detection_images, confidence_threshold=0.05)

    def broken(*args):
        raise RuntimeError("no graph today")

    monkeypatch.setattr(_onnx_export, "network_model", broken)
    tc.config.set_inference_backend("onnxruntime")
    fresh = _fresh(detector)
    with pytest.warns(ToolkitWarning, match="could not be run.*no graph today"):
        got = fresh.predict(detection_images, confidence_threshold=0.05)
    assert [[d["label"] for d in g] for g in got] == [[d["label"] for d in e] for e in expected]
    np.testing.assert_allclose([d["confidence"] for g in got for d in g],
                               [d["confidence"] for e in expected for d in e], atol=1e-6)


def test_safety_net_tolerance_is_relative_to_the_outputs_scale():
    base = np.array([[0.0, 10.0], [3.0, -2.0]], np.float32)
    assert _close(base + 5e-4, base)                            # 5e-4 <= 1e-4 * 10
    assert not _close(base + 2e-3, base)
    assert not _close(base[:1], base)                           # another shape
    assert not _close(np.where(base > 5, np.nan, base), base)   # NaN where mxnet has none
