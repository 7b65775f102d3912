"""Core ML export of the activity classifier, checked numerically on real data.

The exported model is run on Linux through ONNX (``coreml_check``) window by
window, the way an app runs it, and compared with ``model.predict``.
"""

import copy
import os
import platform
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from _optional import require
import toolkit as tc
from toolkit.errors import ExportError, InvalidParameterError

require(("coremltools", "the Core ML check needs coremltools"),
        ("onnxmltools", "the Core ML check needs onnxmltools==1.11.2"),
        ("onnxruntime", "the Core ML check needs onnxruntime"))

from coreml_check import CoreMLRunner, UnsupportedForCheck, load_spec, run_coreml  # noqa: E402

FEATURES = ["ax", "ay", "az", "wx", "wy", "wz"]
TOL = 1e-4
SHORT_SESSION = 10_000    # a synthetic session shorter than one window
SHORT_ROWS = 57


@pytest.fixture(scope="module")
def trained(watch, tmp_path_factory):
    """A small real model (2 sessions per class), its export and an ONNX runner."""
    first = watch.groupby("session_id")["exercise"].first()
    train_ids = first.groupby(first).head(2).index
    train = watch[watch["session_id"].isin(train_ids)].drop(columns="subject")
    model = tc.activity_classifier.create(train, "session_id", "exercise", features=FEATURES,
                                          max_iterations=3, verbose=False, random_seed=7)
    path = str(tmp_path_factory.mktemp("coreml") / "Activity.mlmodel")
    model.export_coreml(path)
    return model, path, CoreMLRunner(path), train_ids


@pytest.fixture(scope="module")
def eval_data(watch, trained):
    """Two training sessions, the longest unseen session (> 20 windows) and a
    synthetic session shorter than one window."""
    _, _, _, train_ids = trained
    lengths = watch.groupby("session_id").size()
    unseen = lengths.drop(train_ids)
    ids = [int(train_ids[0]), int(train_ids[5]), int(unseen.idxmax()), int(unseen.idxmin())]
    parts = [watch[watch["session_id"] == i] for i in ids]
    short = watch[watch["session_id"] == ids[2]].iloc[300:300 + SHORT_ROWS].copy()
    short["session_id"] = SHORT_SESSION
    data = pd.concat(parts + [short], ignore_index=True).drop(columns="subject")
    assert lengths[ids[2]] > 20 * 100
    return data


def _coreml_probs(runner, model, rows, reset_every=20, pad="mean"):
    """Run the Core ML model over one session's raw rows, window by window,
    as the export's docstring tells an app to. Returns (n_windows, C)."""
    pw = model.prediction_window
    mean = np.asarray(model.feature_mean)
    prob_name = model.target + "Probability"
    out, state = [], {}
    for w, start in enumerate(range(0, len(rows), pw)):
        window = rows[start:start + pw]
        if len(window) < pw:
            fill = mean if pad == "mean" else np.zeros_like(mean)
            window = np.vstack([window, np.tile(fill, (pw - len(window), 1))])
        if reset_every and w % reset_every == 0:
            state = {}
        res = run_coreml(runner, {"features": window[None], **state})
        state = {"hiddenIn": res["hiddenOut"], "cellIn": res["cellOut"]}
        out.append(res[prob_name])
    return np.asarray(out)


def _reference(model, data):
    frame = model.predict(data, output_type="probability_vector", output_frequency="per_window")
    return {sid: np.stack(g["probability_vector"].to_list())
            for sid, g in frame.groupby("session_id", sort=False)}


def _max_diff(runner, model, data, **kw):
    ref = _reference(model, data)
    worst = 0.0
    for sid, expected in ref.items():
        rows = data.loc[data["session_id"] == sid, model.features].to_numpy(np.float64)
        got = _coreml_probs(runner, model, rows, **kw)
        assert got.shape == expected.shape, sid
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


# --- numerical agreement ---------------------------------------------------

def test_coreml_matches_predict_on_real_sessions(trained, eval_data):
    model, _, runner, _ = trained
    ref = _reference(model, eval_data)
    assert len(ref[SHORT_SESSION]) == 1                       # shorter than one window
    assert max(len(v) for v in ref.values()) > 20             # crosses a chunk boundary
    diff = _max_diff(runner, model, eval_data)
    print(f"max |Core ML (ONNX) - predict| = {diff:.3g}")
    assert diff < TOL


def test_label_output_is_argmax(trained, eval_data):
    model, _, runner, _ = trained
    rows = eval_data.loc[eval_data["session_id"] == SHORT_SESSION, FEATURES].to_numpy()
    window = np.vstack([rows, np.tile(model.feature_mean, (100 - len(rows), 1))])
    out = run_coreml(runner, {"features": window[None]})
    probs = out["exerciseProbability"]
    assert probs.shape == (len(model.classes),)
    assert abs(float(probs.sum()) - 1.0) < 1e-5
    assert out["exercise"].item() == model.classes[int(np.argmax(probs))]
    assert runner.class_labels == model.classes


def test_negative_control_swapped_gates_fail(trained, eval_data):
    """A check that cannot fail proves nothing: swapping two LSTM gates in a
    copy of the spec (the classic mxnet i,f,c,o vs Core ML i,f,o,c mistake)
    must be caught by the same comparison."""
    model, path, _, _ = trained
    spec = copy.deepcopy(load_spec(path))
    layer = next(l for l in spec.neuralNetworkClassifier.layers if l.name == "lstm")
    wp = layer.uniDirectionalLSTM.weightParams
    for a, b in (("outputGateWeightMatrix", "blockInputWeightMatrix"),
                 ("outputGateRecursionMatrix", "blockInputRecursionMatrix"),
                 ("outputGateBiasVector", "blockInputBiasVector")):
        va, vb = list(getattr(wp, a).floatValue), list(getattr(wp, b).floatValue)
        getattr(wp, a).ClearField("floatValue")
        getattr(wp, b).ClearField("floatValue")
        getattr(wp, a).floatValue.extend(vb)
        getattr(wp, b).floatValue.extend(va)
    diff = _max_diff(CoreMLRunner(spec), model, eval_data)
    print(f"swapped gates: max diff = {diff:.3g}")
    # Measured 0.06-0.08 over several seeds for this small model, against
    # ~5e-8 for the correct export.
    assert diff > 100 * TOL


def test_state_reset_and_padding_matter(trained, eval_data):
    """The contract in the docstring is needed: carrying the state across the
    20-window boundary, or padding a short window with raw zeros, changes the
    probabilities (so the main test really checks both)."""
    model, _, runner, _ = trained
    long_id = eval_data.groupby("session_id").size().idxmax()
    long = eval_data[eval_data["session_id"] == long_id]
    assert _max_diff(runner, model, long, reset_every=None) > 1e-3
    short = eval_data[eval_data["session_id"] == SHORT_SESSION]
    assert _max_diff(runner, model, short, pad="zeros") > 1e-3


# --- the exported interface -------------------------------------------------

def test_interface_names_shapes_and_metadata(trained):
    model, path, _, _ = trained
    spec = load_spec(path)
    desc = spec.description
    inputs = {f.name: f for f in desc.input}
    outputs = {f.name: f for f in desc.output}
    assert list(inputs) == ["features", "hiddenIn", "cellIn"]
    assert set(outputs) == {"exerciseProbability", "exercise", "hiddenOut", "cellOut"}
    assert list(inputs["features"].type.multiArrayType.shape) == [1, 100, 6]
    for name in ("hiddenIn", "cellIn"):
        assert inputs[name].type.isOptional
        assert list(inputs[name].type.multiArrayType.shape) == [200]
    assert not inputs["features"].type.isOptional
    for name in ("hiddenOut", "cellOut"):
        assert list(outputs[name].type.multiArrayType.shape) == [200]
    for f in list(desc.input) + list(desc.output):
        assert f.shortDescription, f.name
    assert "ax, ay, az, wx, wy, wz" in inputs["features"].shortDescription
    assert desc.predictedFeatureName == "exercise"
    assert desc.predictedProbabilitiesName == "exerciseProbability"
    assert list(spec.neuralNetworkClassifier.stringClassLabels.vector) == model.classes
    assert desc.metadata.shortDescription == \
        f"Activity classifier created by toolkit (version {tc.__version__})"
    meta = dict(desc.metadata.userDefined)
    assert set(meta) == {"toolkit_version", "task", "file_version", "platform", "features",
                         "prediction_window", "session_id", "target", "max_iterations",
                         "training_iterations",
                         "classes", "feature_mean", "state_reset_windows"}
    assert meta["toolkit_version"] == tc.__version__
    assert meta["task"] == "activity_classifier"
    assert meta["file_version"] == str(model._FILE_VERSION)
    assert meta["platform"] == platform.platform()
    assert meta["max_iterations"] == str(model.max_iterations)
    assert meta["classes"] == ",".join(model.classes)
    assert meta["features"] == ",".join(FEATURES)
    assert meta["prediction_window"] == "100"
    assert meta["session_id"] == "session_id"
    assert meta["target"] == "exercise"
    assert meta["state_reset_windows"] == "20"
    np.testing.assert_allclose([float(v) for v in meta["feature_mean"].split(",")],
                               model.feature_mean, rtol=1e-12)
    # Only spec-v1 layers; none of the kinds the Linux check cannot run.
    kinds = {l.WhichOneof("layer") for l in spec.neuralNetworkClassifier.layers}
    assert kinds == {"permute", "scale", "convolution", "activation", "uniDirectionalLSTM",
                     "innerProduct", "batchnorm", "softmax"}
    assert spec.specificationVersion == 1


def test_file_permissions_follow_umask(trained):
    _, path, _, _ = trained
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_int_classes_and_clashing_target(watch, tmp_path):
    data = watch[watch["session_id"] < 6].copy()
    data["label"] = data["session_id"] % 2 + 3               # int labels 3, 4
    data = data.drop(columns=["exercise", "subject"])
    model = tc.activity_classifier.create(data, "session_id", "label", features=FEATURES,
                                          max_iterations=1, verbose=False, random_seed=0)
    path = tmp_path / "int.mlmodel"
    model.export_coreml(path)                                 # os.PathLike accepted
    runner = CoreMLRunner(str(path))
    assert runner.class_labels == [3, 4]
    rows = data.loc[data["session_id"] == 1, FEATURES].to_numpy()
    ref = np.stack(model.predict(data[data["session_id"] == 1], output_type="probability_vector",
                                 output_frequency="per_window")["probability_vector"].to_list())
    got = _coreml_probs(runner, model, rows)
    assert np.abs(got - ref).max() < TOL
    out = run_coreml(runner, {"features": rows[None, :100]})
    assert int(out["label"]) in (3, 4)

    state, weights = model._get_state()
    state["target"] = "hiddenOut"
    clash = type(model)(state, weights)
    with pytest.raises(ExportError, match="hiddenOut"):
        clash.export_coreml(str(tmp_path / "clash.mlmodel"))


# --- errors ------------------------------------------------------------------

def test_missing_directory_is_an_export_error(trained, tmp_path):
    model, _, _, _ = trained
    target = tmp_path / "no" / "such" / "dir" / "Activity.mlmodel"
    with pytest.raises(ExportError, match="does not exist") as info:
        model.export_coreml(str(target))
    assert str(target.parent) in str(info.value)
    assert not target.parent.exists()


def test_bad_paths(trained, tmp_path):
    model, _, _, _ = trained
    with pytest.raises(ExportError, match="is a directory"):
        model.export_coreml(str(tmp_path))
    for bad in (None, 3, b"x.mlmodel", ""):
        with pytest.raises(InvalidParameterError):
            model.export_coreml(bad)
    assert os.listdir(tmp_path) == []                        # no stray temporary files


def test_export_replaces_existing_file(trained, tmp_path):
    model, path, _, _ = trained
    dest = tmp_path / "Activity.mlmodel"
    dest.write_bytes(b"old")
    model.export_coreml(str(dest))
    assert dest.read_bytes() == open(path, "rb").read()
    assert sorted(os.listdir(tmp_path)) == ["Activity.mlmodel"]


def test_missing_coremltools_is_an_export_error(trained, tmp_path, monkeypatch):
    import toolkit._coreml as coreml
    model, _, _, _ = trained
    monkeypatch.setattr(coreml, "_ct", None)
    monkeypatch.setitem(sys.modules, "coremltools", None)     # import fails
    with pytest.raises(ExportError, match="pip install coremltools"):
        model.export_coreml(str(tmp_path / "Activity.mlmodel"))
    assert os.listdir(tmp_path) == []


def test_import_toolkit_does_not_import_coremltools():
    code = ("import sys, toolkit, toolkit.activity_classifier, "
            "toolkit.activity_classifier._export, toolkit._coreml; "
            "sys.exit('coremltools' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- the check itself ----------------------------------------------------------

def _tiny_spec(clip=True, softmax=True, float16=True, slice_layer=False):
    """conv 1x1 (3 -> 4 channels) [-> clip] [-> softmax over C] on a (3, 2, 5) input."""
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    rng = np.random.RandomState(0)
    w, b = rng.randn(4, 3).astype(np.float32), rng.randn(4).astype(np.float32)
    builder = NeuralNetworkBuilder([("x", datatypes.Array(3, 2, 5))], [("y", None)])
    builder.add_convolution("conv", 3, 4, 1, 1, 1, 1, "valid", 1, w.T.reshape(1, 1, 3, 4), b,
                            True, input_name="x", output_name="b0")
    last = "b0"
    if clip:
        builder.add_clip("clip", last, "b1", min_value=-0.5, max_value=0.8)
        last = "b1"
    if slice_layer:
        builder.add_slice("slice", last, "b2", axis="channel", start_index=0, end_index=2)
        last = "b2"
    if softmax:
        builder.add_softmax("out", last, "y")
    else:
        builder.add_activation("out", "LINEAR", last, "y", params=[1.0, 0.0])
    spec = builder.spec
    if float16:
        weights = spec.neuralNetwork.layers[0].convolution.weights
        half = np.asarray(weights.floatValue, np.float32).astype(np.float16)
        weights.ClearField("floatValue")
        weights.float16Value = half.tobytes()
        w = w.astype(np.float16).astype(np.float32)

    def reference(x):
        y = np.einsum("oc,chw->ohw", w, x) + b[:, None, None]
        y = np.clip(y, -0.5, 0.8) if clip else y
        if softmax:
            e = np.exp(y - y.max(axis=0))
            y = e / e.sum(axis=0)                     # Core ML: over C only
        return y
    return spec, reference


def test_coreml_check_works_around_converter_defects():
    """float16 weights, softmax over C of a (C, H, W) blob and clip: the three
    converter defects the helper fixes, checked against numpy."""
    spec, reference = _tiny_spec()
    x = np.random.RandomState(1).randn(3, 2, 5)
    out = run_coreml(spec, {"x": x})["y"]
    assert out.shape == (4, 2, 5)
    np.testing.assert_allclose(out, reference(x), atol=1e-5)


def test_coreml_check_refuses_slice_layers():
    spec, _ = _tiny_spec(clip=False, softmax=False, float16=False, slice_layer=True)
    with pytest.raises(UnsupportedForCheck, match="slice"):
        CoreMLRunner(spec)
