"""Round 2 of hostile input (docs/reliability.md, "Round 2: hostile input").

Each case was reproduced as a raw foreign exception, a silent wrong result or
an unloadable file before its fix; here each must give a clear toolkit error
or the documented handling. Data are tiny so the file runs in seconds.
"""

import errno
import os
import tempfile

import numpy as np
import pandas as pd
import pytest

import toolkit as tc
from toolkit import _checkpoint, _images
from toolkit import _validate as V
from toolkit.errors import (DataError, InvalidParameterError, ModelFileError,
                            ModelFileWriteError, ToolkitWarning)

KW = dict(prediction_window=5, max_iterations=1, verbose=False, random_seed=0)


def _frame(n_sessions=4, rows=30, seed=0):
    """Sessions of ``rows`` rows, two classes per session, two real features."""
    rng = np.random.RandomState(seed)
    n = n_sessions * rows
    return pd.DataFrame({"s": np.repeat(np.arange(n_sessions), rows),
                         "x": rng.randn(n), "z": rng.randn(n),
                         "y": np.where(np.arange(n) % rows < rows // 2, "a", "b")})


@pytest.fixture(scope="module")
def small_model():
    return tc.activity_classifier.create(_frame(), "s", "y", **KW)


# --- activity classifier: session ids -----------------------------------------------------

@pytest.mark.parametrize("missing", [np.nan, None, pd.NA])
def test_missing_session_id_is_refused_in_create_and_predict(small_model, missing):
    data = _frame()
    data["s"] = data["s"].astype(object)
    data.loc[3, "s"] = missing
    with pytest.raises(DataError, match=r"Session column 's'.*missing.*row 3"):
        tc.activity_classifier.create(data, "s", "y", **KW)
    with pytest.raises(DataError, match=r"Session column 's'.*missing.*row 3"):
        small_model.predict(data)


def test_list_session_ids_are_refused(small_model):
    data = _frame()
    data["s"] = [[v] for v in data["s"]]
    with pytest.raises(DataError, match="Session column 's'.*list values"):
        tc.activity_classifier.create(data, "s", "y", **KW)
    with pytest.raises(DataError, match="list values"):
        small_model.predict(data)


def test_session_ids_of_mixed_kinds_are_not_merged():
    # 0, 0.0 and False are equal in Python: before, they made one session.
    data = _frame(n_sessions=3)
    data["s"] = pd.Series([0] * 30 + [0.0] * 30 + [False] * 30, dtype=object)
    with pytest.raises(DataError, match="mixes bool, float, int ids.*astype\\(str\\)"):
        tc.activity_classifier.create(data, "s", "y", **KW)
    # The fix the message gives works: three sessions.
    data["s"] = data["s"].astype(str)
    assert tc.activity_classifier.create(data, "s", "y", **KW).num_sessions == 3


# --- activity classifier: columns ---------------------------------------------------------

def test_duplicate_column_names_are_refused(small_model):
    data = _frame()
    data.columns = ["s", "x", "x", "y"]
    with pytest.raises(DataError, match="column 'x' appears 2 times"):
        tc.activity_classifier.create(data, "s", "y", **KW)
    data["z"] = data["y"]
    with pytest.raises(DataError, match="column 'x' appears 2 times"):
        small_model.predict(data)


def test_integer_column_names_are_refused_at_create(tmp_path):
    # Before: the model trained and saved, and load_model called its own file corrupt.
    data = _frame()
    data.columns = ["s", 0, 1, "y"]
    with pytest.raises(DataError, match=r"not strings \(0, 1\).*rename\(columns=str\)"):
        tc.activity_classifier.create(data, "s", "y", **KW)
    model = tc.activity_classifier.create(data.rename(columns=str), "s", "y", **KW)
    model.save(tmp_path / "m.model")
    assert tc.load_model(tmp_path / "m.model").features == ["0", "1"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(features=["x", "x"]), "names column 'x' more than once"),
    (dict(features=["x", "s"]), "session_id column 's'"),
    (dict(features=["x", "y"]), "target column 'y'"),
    (dict(features=[0]), "list of column names"),
])
def test_bad_feature_lists_are_refused(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        tc.activity_classifier.create(_frame(), "s", "y", **kwargs, **KW)


def test_session_id_equal_to_target_is_refused():
    with pytest.raises(InvalidParameterError, match="'session_id' and 'target' name the same"):
        tc.activity_classifier.create(_frame(), "y", "y", features=["x"], **KW)


def test_complex_features_are_refused():
    data = _frame()
    data["x"] = data["x"] + 1j
    with pytest.raises(DataError, match="Feature column 'x' holds complex numbers"):
        tc.activity_classifier.create(data, "s", "y", **KW)


# --- activity classifier: labels ----------------------------------------------------------

def test_bool_target_round_trips_as_bools(tmp_path):
    # Before: classes became 'False'/'True' and evaluate on the same data said 0.0.
    data = _frame()
    data["y"] = data["y"] == "a"
    model = tc.activity_classifier.create(data, "s", "y", **KW)
    assert model.classes == [False, True]
    pred = model.predict(data)
    assert set(pred) <= {False, True} and all(isinstance(p, bool) for p in pred)
    result = model.evaluate(data)
    assert result["unseen_labels"] == {}
    assert result["accuracy"] == pytest.approx(np.mean(pred.to_numpy() == data["y"].to_numpy()))
    model.save(tmp_path / "b.model")
    loaded = tc.load_model(tmp_path / "b.model")
    assert loaded.classes == [False, True]
    assert loaded.predict(data).tolist() == pred.tolist()


@pytest.mark.parametrize("labels, match", [
    ([["r"], ["g"]], "holds list values"),
    ([("r",), ("g",)], "holds tuple values"),
    ([True, 2], "mixes bool, int labels"),
    (["a", 1], "mixes int, str labels"),
])
def test_labels_that_cannot_be_classes_are_refused(labels, match):
    data = _frame()
    data["y"] = pd.Series([labels[i % 2] for i in range(len(data))], dtype=object)
    with pytest.raises(DataError, match=match):
        tc.activity_classifier.create(data, "s", "y", **KW)


# --- image classifier labels (shared checks; refused before any image is decoded) ----------

def _tiny_images(labels):
    images = [np.full((8, 8), v, np.uint8) for v in (0, 255)] * 2
    return pd.DataFrame({"image": images,
                         "label": pd.Series([labels[i % 2] for i in range(4)], dtype=object)})


def test_image_classifier_refuses_list_labels():
    with pytest.raises(DataError, match="holds list values"):
        tc.image_classifier.create(_tiny_images([["r"], ["g"]]), target="label",
                                   max_iterations=1, verbose=False)


def test_image_classifier_bool_labels_round_trip_as_bools(tmp_path):
    # Before: the classes came back as the strings 'True'/'False'.
    data = _tiny_images([True, False])
    model = tc.image_classifier.create(data, target="label", max_iterations=0,
                                       verbose=False, random_seed=0)
    assert model.classes == [False, True]
    # max_iterations=0 means automatic (the default), never an untrained model.
    assert model.training_iterations == tc.image_classifier._model.DEFAULT_MAX_ITERATIONS
    pred = model.predict(data)
    assert all(isinstance(p, bool) for p in pred)
    assert model.evaluate(data)["accuracy"] == pytest.approx(np.mean(pred == data["label"]))
    model.save(tmp_path / "b.model")
    assert tc.load_model(tmp_path / "b.model").predict(data).tolist() == pred.tolist()


# --- max_iterations=0 ---------------------------------------------------------------------

def test_max_iterations_zero_means_automatic(monkeypatch):
    from toolkit.activity_classifier import _train
    monkeypatch.setattr(_train, "auto_iterations", lambda chunks, batch: 2)
    model = tc.activity_classifier.create(_frame(), "s", "y",
                                          **dict(KW, max_iterations=0))
    # Before: an untrained model with training_iterations 0.
    assert model.max_iterations == 2 and model.training_iterations == 2
    assert V.check_max_iterations(0) is None and V.check_max_iterations(None) is None
    assert V.check_max_iterations(3) == 3
    with pytest.raises(InvalidParameterError, match="max_iterations"):
        V.check_max_iterations(-1)


# --- resume: 'automatic' takes the checkpoint's value -------------------------------------

def test_automatic_max_iterations_resumes_with_the_checkpoints(tmp_path):
    path = str(tmp_path / "run.ckpt")
    data = _frame()
    first = tc.activity_classifier.create(data, "s", "y", checkpoint_path=path,
                                          checkpoint_every=1, **dict(KW, max_iterations=3))
    # Before: None resolved to the automatic 300 epochs, and the resume was refused
    # with "max_iterations: checkpoint 3, given 300" though the user gave none.
    again = tc.activity_classifier.create(data, "s", "y", resume_from=path,
                                          **dict(KW, max_iterations=None))
    assert again.max_iterations == 3 and again.training_iterations == 3
    np.testing.assert_allclose(np.stack(again.predict(data, "probability_vector")),
                               np.stack(first.predict(data, "probability_vector")), atol=1e-6)


# --- images (toolkit/_images.py) ----------------------------------------------------------

def _save(tmp_path, array, mode, name):
    from PIL import Image
    path = str(tmp_path / name)
    Image.fromarray(array, None if mode == "I;16" else mode).save(path)
    assert Image.open(path).mode == mode
    return path


def test_float_tiff_in_unit_range_is_scaled_not_black(tmp_path):
    a = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    img = np.asarray(_images.load_image(_save(tmp_path, a, "F", "f.tif")))
    np.testing.assert_array_equal(img[:, :, 0], np.round(a * 255).astype(np.uint8))
    with pytest.raises(DataError, match=r"mode F\) with values in \[0, 3\]"):
        _images.load_image(_save(tmp_path, a * 3, "F", "f3.tif"))


def test_wide_integer_grey_images(tmp_path):
    a = np.linspace(0, 65535, 32 * 32).reshape(32, 32)
    img16 = np.asarray(_images.load_image(_save(tmp_path, a.astype(np.uint16), "I;16",
                                                "i16.tif")))
    assert img16.min() == 0 and img16.max() == 255
    mask = (a > 30000).astype(np.int32)
    img = np.asarray(_images.load_image(_save(tmp_path, mask, "I", "mask.tif")))
    np.testing.assert_array_equal(img[:, :, 0], mask * 255)
    with pytest.raises(DataError, match="values in \\[0, 100000\\]"):
        _images.load_image(_save(tmp_path, (mask * 100000).astype(np.int32), "I", "big.tif"))


def test_directory_in_an_image_column_is_called_a_directory(tmp_path):
    with pytest.raises(DataError, match="are directories, not image files") as e:
        _images.check_paths(np.array([str(tmp_path)], dtype=object), "image")
    assert "do not exist" not in str(e.value)


# --- files -----------------------------------------------------------------------------------

def _fail(code):
    def raiser(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return raiser


@pytest.mark.parametrize("where, code, reason", [
    ("mkstemp", errno.EACCES, "permission denied"),
    ("mkstemp", errno.EROFS, "read-only"),
    ("fsync", errno.ENOSPC, "no space left"),
    ("replace", errno.EACCES, "permission denied"),
])
def test_failed_save_names_the_users_path_and_keeps_the_old_file(small_model, tmp_path,
                                                                 monkeypatch, where, code,
                                                                 reason):
    # CI runs as root, so the failing system call is simulated.
    path = tmp_path / "m.model"
    small_model.save(path)
    before = path.read_bytes()
    monkeypatch.setattr(tempfile if where == "mkstemp" else os, where, _fail(code))
    with pytest.raises(ModelFileWriteError) as e:
        small_model.save(path)
    monkeypatch.undo()
    msg = str(e.value)
    assert f"Cannot save to '{path}'" in msg and reason in msg and ".tmp" not in msg
    assert isinstance(e.value, ModelFileError) and isinstance(e.value, OSError)
    assert e.value.errno == code
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.model"]          # no temporary file left behind


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into a read-only directory")
def test_save_into_a_read_only_directory(small_model, tmp_path):
    os.chmod(tmp_path, 0o500)
    try:
        with pytest.raises(ModelFileWriteError, match="permission denied"):
            small_model.save(tmp_path / "m.model")
    finally:
        os.chmod(tmp_path, 0o700)


def test_saving_over_a_symlink_writes_through_it(small_model, tmp_path):
    real = tmp_path / "runs" / "7.model"
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / "latest.model"
    link.symlink_to(real)
    small_model.save(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert tc.load_model(real).classes == small_model.classes
    assert sorted(os.listdir(tmp_path / "runs")) == ["7.model"]


def test_checkpoint_path_in_an_unwritable_directory_is_refused_before_training(tmp_path,
                                                                               monkeypatch):
    trained = []
    from toolkit.activity_classifier import _train
    monkeypatch.setattr(_train, "fit", lambda *a, **k: trained.append(1))
    monkeypatch.setattr(tempfile, "mkstemp", _fail(errno.EACCES))
    with pytest.raises(InvalidParameterError, match="cannot be written: permission denied"):
        tc.activity_classifier.create(_frame(), "s", "y", checkpoint_path=str(tmp_path / "c"),
                                      **KW)
    assert not trained


def test_a_failed_checkpoint_write_does_not_lose_the_model(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) > 1:          # the disk fills up after the first checkpoint
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.warns(ToolkitWarning, match="Could not write the checkpoint at iteration 2.*"
                      "no space left.*the last one written is from iteration 1") as w:
        model = tc.activity_classifier.create(_frame(), "s", "y", checkpoint_path=str(path),
                                              checkpoint_every=1, **dict(KW, max_iterations=3))
    monkeypatch.undo()
    assert sum("Could not write the checkpoint" in str(x.message) for x in w) == 1
    assert model.training_iterations == 3
    assert _checkpoint.read(str(path), "activity_classifier").position["iteration"] == 1
    assert sorted(os.listdir(tmp_path)) == ["run.ckpt"]


def test_export_failure_names_the_users_path(small_model, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    monkeypatch.setattr(tempfile, "mkstemp", _fail(errno.ENOSPC))
    with pytest.raises(tc.errors.ExportError) as e:
        small_model.export_onnx(str(tmp_path / "m.onnx"))
    assert "no space left" in str(e.value) and ".tmp" not in str(e.value)



# --- object detector: labels and the feature file --------------------------------------------

def test_detector_refuses_labels_of_mixed_kinds():
    # Before: trained, then export_coreml failed with "invalid literal for int()".
    scenes = tc.datasets.detection_scenes(4, random_seed=0)
    first = scenes["annotations"][0]
    scenes.at[0, "annotations"] = [dict(first[0], label=7)] + list(first[1:])
    with pytest.raises(DataError, match="mix int and str"):
        tc.object_detector.create(scenes, max_iterations=1, verbose=False)


def test_killed_detector_leaves_no_feature_file(tmp_path):
    """The float16 feature cache (~165 KB per image) has no name once mapped, so a process
    killed with SIGKILL mid-run leaves nothing in the temp directory."""
    import signal
    import subprocess
    import sys
    import time
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = ("import sys, time\n"
              "from toolkit.object_detector._train import FeatureCache\n"
              "cache = FeatureCache(50).__enter__()\n"
              "cache.coarse[:] = 1\n"
              "print('mapped', flush=True)\n"
              "time.sleep(600)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=root), cwd=root)
    try:
        assert proc.stdout.readline().strip() == "mapped"
        assert os.listdir(tmp) == []             # unlinked while in use
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.1)
    assert os.listdir(tmp) == []
