"""ONNX export of the activity classifier, checked numerically on real data.

The exported graph runs in onnxruntime window by window, the way a service
runs it (and several sessions batched in one call), and is compared with
``model.predict``. A copy with two LSTM gates swapped shows that the
comparison can fail.
"""

import copy
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from _optional import require
import toolkit as tc
from toolkit.errors import ExportError, InvalidParameterError

require(("onnx", "the ONNX export needs onnx"),
        ("onnxruntime", "the ONNX check needs onnxruntime"))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import numpy_helper  # noqa: E402

FEATURES = ["ax", "ay", "az", "wx", "wy", "wz"]
PW = 25
TOL = 1e-4
SHORT_SESSION = 10_000    # a synthetic session shorter than one window
SHORT_ROWS = 17
HIDDEN = 200


def _session(model_or_path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") \
        else model_or_path
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def trained(watch, tmp_path_factory):
    """A small real model (12 sessions, all 7 classes seen), its export and a session."""
    first = watch.groupby("session_id")["exercise"].first()
    train_ids = first.groupby(first).head(2).index[:12]
    train = watch[watch["session_id"].isin(train_ids)].drop(columns="subject")
    model = tc.activity_classifier.create(train, "session_id", "exercise", features=FEATURES,
                                          prediction_window=PW, max_iterations=5,
                                          verbose=False, random_seed=3)
    path = str(tmp_path_factory.mktemp("onnx") / "activity.onnx")
    model.export_onnx(path)
    return model, path, _session(path), train_ids


@pytest.fixture(scope="module")
def eval_data(watch, trained):
    """Two training sessions, the longest unseen session (> 40 windows) and a
    synthetic session shorter than one window."""
    _, _, _, train_ids = trained
    lengths = watch.groupby("session_id").size()
    unseen = lengths.drop(train_ids)
    ids = [int(train_ids[0]), int(train_ids[5]), int(unseen.idxmax()), int(unseen.idxmin())]
    parts = [watch[watch["session_id"] == i] for i in ids]
    short = watch[watch["session_id"] == ids[2]].iloc[500:500 + SHORT_ROWS].copy()
    short["session_id"] = SHORT_SESSION
    data = pd.concat(parts + [short], ignore_index=True).drop(columns="subject")
    assert lengths[ids[2]] > 40 * PW
    assert any(lengths[i] % PW for i in ids)                  # a partial last window
    return data


def _windows(model, rows, pad="mean"):
    """(n_windows, pw, F) float32 raw windows of one session, the last one padded."""
    pw = model.prediction_window
    fill = np.asarray(model.feature_mean) if pad == "mean" else np.zeros(len(model.features))
    n = -(-len(rows) // pw)
    padded = np.vstack([rows, np.tile(fill, (n * pw - len(rows), 1))])
    return padded.reshape(n, pw, -1).astype(np.float32)


def _onnx_probs(sess, model, rows, reset_every=20, pad="mean"):
    """Run the export over one session's raw rows, one window per call, as the
    docstring tells a service to. Returns (n_windows, C)."""
    out = []
    zeros = np.zeros((1, HIDDEN), np.float32)
    h = c = zeros
    for w, window in enumerate(_windows(model, rows, pad)):
        if reset_every and w % reset_every == 0:
            h = c = zeros
        probs, h, c = sess.run([model.target + "Probability", "hiddenOut", "cellOut"],
                               {"features": window[None], "hiddenIn": h, "cellIn": c})
        out.append(probs[0])
    return np.asarray(out)


def _reference(model, data):
    frame = model.predict(data, output_type="probability_vector", output_frequency="per_window")
    return {sid: np.stack(g["probability_vector"].to_list())
            for sid, g in frame.groupby("session_id", sort=False)}


def _rows(model, data, sid):
    return data.loc[data["session_id"] == sid, model.features].to_numpy(np.float64)


def _max_diff(sess, model, data, **kw):
    ref = _reference(model, data)
    worst = 0.0
    for sid, expected in ref.items():
        got = _onnx_probs(sess, model, _rows(model, data, sid), **kw)
        assert got.shape == expected.shape, sid
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


# --- numerical agreement ---------------------------------------------------

def test_onnx_matches_predict_on_real_sessions(trained, eval_data):
    model, _, sess, _ = trained
    ref = _reference(model, eval_data)
    assert len(ref[SHORT_SESSION]) == 1                       # shorter than one window
    assert max(len(v) for v in ref.values()) > 40             # crosses two chunk boundaries
    diff = _max_diff(sess, model, eval_data)
    print(f"max |onnxruntime - predict| = {diff:.3g}")
    assert diff <= TOL


def test_batched_sessions_in_one_call(trained, eval_data):
    """A server's view: the k-th window of every session still running goes in
    one call (one row per session, each row with its own state)."""
    model, _, sess, _ = trained
    ref = _reference(model, eval_data)
    sids = list(ref)
    wins = {sid: _windows(model, _rows(model, eval_data, sid)) for sid in sids}
    state = {sid: (np.zeros(HIDDEN, np.float32),) * 2 for sid in sids}
    got = {sid: [] for sid in sids}
    batch_sizes = []
    for k in range(max(len(w) for w in wins.values())):
        active = [sid for sid in sids if k < len(wins[sid])]
        batch_sizes.append(len(active))
        if k % 20 == 0:
            state.update({sid: (np.zeros(HIDDEN, np.float32),) * 2 for sid in active})
        probs, labels, index, h, c = sess.run(
            ["exerciseProbability", "exercise", "exerciseIndex", "hiddenOut", "cellOut"],
            {"features": np.stack([wins[sid][k] for sid in active]),
             "hiddenIn": np.stack([state[sid][0] for sid in active]),
             "cellIn": np.stack([state[sid][1] for sid in active])})
        assert probs.shape == (len(active), len(model.classes))
        assert list(labels) == [model.classes[i] for i in probs.argmax(axis=1)]
        np.testing.assert_array_equal(index, probs.argmax(axis=1))
        for j, sid in enumerate(active):
            got[sid].append(probs[j])
            state[sid] = (h[j], c[j])
    assert max(batch_sizes) == len(sids) and min(batch_sizes) == 1
    diff = max(float(np.abs(np.asarray(got[sid]) - ref[sid]).max()) for sid in sids)
    print(f"batched: max |onnxruntime - predict| = {diff:.3g}")
    assert diff <= TOL


def _permute_gates(onnx_model, order):
    """A copy whose LSTM gate blocks (ONNX order i, o, f, c) are rearranged:
    new block k = old block ``order[k]``, in W, R and both halves of B."""
    broken = copy.deepcopy(onnx_model)
    inits = {t.name: t for t in broken.graph.initializer}
    for name in ("/lstm/W", "/lstm/R", "/lstm/B"):
        arr = numpy_helper.to_array(inits[name])
        halves = np.split(arr, 2, axis=1) if name == "/lstm/B" else [arr]
        fixed = []
        for half in halves:
            blocks = np.split(half, 4, axis=1)
            fixed += [blocks[k] for k in order]
        inits[name].CopyFrom(numpy_helper.from_array(np.concatenate(fixed, axis=1), name))
    return broken


@pytest.mark.parametrize("order", [
    (0, 1, 3, 2),   # forget gate and cell candidate swapped
    (0, 2, 3, 1),   # mxnet's i, f, c, o written without reordering
], ids=["swap_f_c", "mxnet_order"])
def test_negative_control_wrong_gate_order_fails(trained, eval_data, order):
    """A check that cannot fail proves nothing: a copy of the exported graph
    with its LSTM gates in the wrong order (still a valid model) must be
    caught by the same comparison, by a wide margin."""
    model, path, _, _ = trained
    broken = _permute_gates(onnx.load(path), order)
    onnx.checker.check_model(broken, full_check=True)
    diff = _max_diff(_session(broken), model, eval_data)
    print(f"gates in order {order}: max diff = {diff:.3g}")
    # Measured 0.28-0.35 (random seeds 0-5) for this small model, against ~2e-7
    # for the correct export.
    assert diff > 300 * TOL


def test_state_reset_and_padding_matter(trained, eval_data):
    """The contract in the docstring is needed: carrying the state across the
    20-window boundary, or padding a short window with raw zeros, changes the
    probabilities (so the main test really checks both)."""
    model, _, sess, _ = trained
    long_id = eval_data.groupby("session_id").size().idxmax()
    long = eval_data[eval_data["session_id"] == long_id]
    assert _max_diff(sess, model, long, reset_every=None) > 1e-3
    short = eval_data[eval_data["session_id"] == SHORT_SESSION]
    assert _max_diff(sess, model, short, pad="zeros") > 1e-3


def test_loaded_model_exports_the_same_file(trained, tmp_path):
    model, path, _, _ = trained
    model.save(tmp_path / "m.model")
    again = tmp_path / "again.onnx"
    tc.load_model(str(tmp_path / "m.model")).export_onnx(again)
    assert again.read_bytes() == open(path, "rb").read()


# --- the exported interface -------------------------------------------------

def test_interface_names_shapes_and_metadata(trained):
    model, path, sess, _ = trained
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 17)]
    assert m.ir_version == 8
    assert m.producer_name == "toolkit" and m.producer_version == tc.__version__
    assert m.model_version == model._FILE_VERSION
    assert m.doc_string.startswith(
        f"Activity classifier created by toolkit (version {tc.__version__})")

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
    T = onnx.TensorProto
    inputs = {vi.name: (vi.type.tensor_type.elem_type, dims(vi)) for vi in m.graph.input}
    outputs = {vi.name: (vi.type.tensor_type.elem_type, dims(vi)) for vi in m.graph.output}
    C = len(model.classes)
    assert inputs == {"features": (T.FLOAT, ["batch", PW, 6]),
                      "hiddenIn": (T.FLOAT, ["batch", HIDDEN]),
                      "cellIn": (T.FLOAT, ["batch", HIDDEN])}
    assert list(inputs) == ["features", "hiddenIn", "cellIn"]
    assert outputs == {"exerciseProbability": (T.FLOAT, ["batch", C]),
                       "exercise": (T.STRING, ["batch"]),
                       "exerciseIndex": (T.INT64, ["batch"]),
                       "hiddenOut": (T.FLOAT, ["batch", HIDDEN]),
                       "cellOut": (T.FLOAT, ["batch", HIDDEN])}
    for vi in list(m.graph.input) + list(m.graph.output):
        assert vi.doc_string, vi.name
    assert "ax, ay, az, wx, wy, wz" in m.graph.input[0].doc_string
    assert {i.name for i in sess.get_inputs()} == set(inputs)     # no hidden extra inputs

    meta = {p.key: p.value for p in m.metadata_props}
    assert set(meta) == {"toolkit_version", "task", "file_version", "classes", "features",
                         "prediction_window", "session_id", "target", "feature_mean",
                         "state_size", "state_reset_windows"}
    import json
    assert meta["toolkit_version"] == tc.__version__
    assert meta["task"] == "activity_classifier"
    assert meta["file_version"] == str(model._FILE_VERSION)
    assert json.loads(meta["classes"]) == model.classes
    assert json.loads(meta["features"]) == FEATURES
    assert meta["prediction_window"] == str(PW)
    assert meta["session_id"] == "session_id"
    assert meta["target"] == "exercise"
    assert meta["state_size"] == "200"
    assert meta["state_reset_windows"] == "20"
    assert json.loads(meta["feature_mean"]) == [float(v) for v in model.feature_mean]
    ops = {n.op_type for n in m.graph.node}
    assert ops == {"Sub", "Div", "Transpose", "Conv", "Relu", "Unsqueeze", "LSTM", "Squeeze",
                   "Gemm", "BatchNormalization", "Softmax", "ArgMax", "Gather"}


def test_help_shows_the_service_instructions(trained):
    from toolkit.activity_classifier._onnx_export import export_onnx
    model = trained[0]
    assert model.export_onnx.__doc__ == export_onnx.__doc__
    assert "every 20th" in export_onnx.__doc__ and "feature means" in export_onnx.__doc__


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
                                          prediction_window=PW, max_iterations=1,
                                          verbose=False, random_seed=0)
    path = tmp_path / "int.onnx"
    model.export_onnx(path)                                   # os.PathLike accepted
    m = onnx.load(str(path))
    out = {vi.name: vi.type.tensor_type.elem_type for vi in m.graph.output}
    assert out["label"] == onnx.TensorProto.INT64
    assert {p.key: p.value for p in m.metadata_props}["classes"] == "[3, 4]"
    sess = _session(str(path))
    one = data[data["session_id"] == 1]
    ref = _reference(model, one)[1]
    got = _onnx_probs(sess, model, _rows(model, one, 1))
    assert np.abs(got - ref).max() <= TOL
    window = _windows(model, _rows(model, one, 1))[:3]
    zeros = np.zeros((3, HIDDEN), np.float32)
    probs, label = sess.run(["labelProbability", "label"],
                            {"features": window, "hiddenIn": zeros, "cellIn": zeros})
    assert label.dtype == np.int64
    assert list(label) == [model.classes[i] for i in probs.argmax(axis=1)]

    state, weights = model._get_state()
    for bad in ("hiddenOut", "features"):
        state["target"] = bad
        with pytest.raises(ExportError, match=bad):
            type(model)(state, weights).export_onnx(str(tmp_path / "clash.onnx"))
    state["target"] = "/bn/out"                               # an internal tensor name
    with pytest.raises(ExportError, match="used twice"):
        type(model)(state, weights).export_onnx(str(tmp_path / "clash.onnx"))
    assert sorted(os.listdir(tmp_path)) == ["int.onnx"]


# --- errors ------------------------------------------------------------------

def test_missing_directory_is_an_export_error(trained, tmp_path):
    model, _, _, _ = trained
    target = tmp_path / "no" / "such" / "dir" / "activity.onnx"
    with pytest.raises(ExportError, match="does not exist") as info:
        model.export_onnx(str(target))
    assert str(target.parent) in str(info.value)
    assert not target.parent.exists()


def test_bad_paths(trained, tmp_path):
    model, _, _, _ = trained
    with pytest.raises(ExportError, match="is a directory"):
        model.export_onnx(str(tmp_path))
    for bad in (None, 3, b"x.onnx", ""):
        with pytest.raises(InvalidParameterError):
            model.export_onnx(bad)
    assert os.listdir(tmp_path) == []                        # no stray temporary files


def test_export_replaces_existing_file(trained, tmp_path):
    model, path, _, _ = trained
    dest = tmp_path / "activity.onnx"
    dest.write_bytes(b"old")
    model.export_onnx(str(dest))
    assert dest.read_bytes() == open(path, "rb").read()
    assert sorted(os.listdir(tmp_path)) == ["activity.onnx"]


def test_unwritable_directory_is_an_export_error(trained, tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    model, _, _, _ = trained
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ExportError, match="Cannot write"):
            model.export_onnx(str(tmp_path / "activity.onnx"))
    finally:
        tmp_path.chmod(0o700)
    assert os.listdir(tmp_path) == []


def test_missing_onnx_is_an_export_error(trained, tmp_path, monkeypatch):
    import toolkit._onnx as tk_onnx
    model, _, _, _ = trained
    monkeypatch.setattr(tk_onnx, "_onnx", None)
    monkeypatch.setitem(sys.modules, "onnx", None)            # import fails
    with pytest.raises(ExportError, match="pip install 'onnx"):
        model.export_onnx(str(tmp_path / "activity.onnx"))
    assert os.listdir(tmp_path) == []


def test_invalid_graph_is_refused_before_writing(tmp_path):
    """save_model runs the checker: a broken graph is an ExportError, no file."""
    from toolkit import _onnx
    g = _onnx.GraphBuilder("broken")
    g.input("x", np.float32, ["batch", 3])
    g.node("Relu", ["not_a_tensor"], ["y"])                   # input that nothing produces
    g.output("y", np.float32, ["batch", 3])
    with pytest.raises(ExportError, match="onnx.checker"):
        _onnx.save_model(_onnx.make_model(g, "test", 1), tmp_path / "b.onnx")
    assert os.listdir(tmp_path) == []


def test_graph_builder_refuses_duplicate_names():
    from toolkit import _onnx
    g = _onnx.GraphBuilder("g")
    x = g.input("x", np.float32, [1])
    with pytest.raises(ExportError, match="used twice"):
        g.node("Relu", [x], ["x"])
    with pytest.raises(ExportError, match="produced by no node"):
        g.output("y", np.float32, [1])
    with pytest.raises(ValueError, match="reserved"):
        _onnx.model_metadata("t", 1, {"task": "x"})


def test_import_toolkit_does_not_import_onnx():
    code = ("import sys, toolkit, toolkit.activity_classifier, "
            "toolkit.activity_classifier._onnx_export, toolkit._onnx; "
            "sys.exit('onnx' in sys.modules or 'onnxruntime' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
