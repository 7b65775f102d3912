"""Frozen fixtures: every file version that ever shipped loads and predicts as recorded."""

import glob
import hashlib
import os

import numpy as np
import pandas as pd
import pytest

import toolkit as tc
from toolkit import _model

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
AC_DIRS = sorted(glob.glob(os.path.join(FIXTURES, "activity_classifier", "v*")))
ALL_DIRS = sorted(os.path.dirname(p) for p in
                  glob.glob(os.path.join(FIXTURES, "*", "v*", "SHA256SUMS")))


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_every_task_has_a_fixture_of_its_current_version():
    for task in _model._TASKS:
        cls = _model._task_class(task)
        folder = os.path.join(FIXTURES, task, f"v{cls._FILE_VERSION}")
        assert os.path.isfile(os.path.join(folder, "SHA256SUMS")), \
            f"no frozen fixture for {task} file version {cls._FILE_VERSION} in {folder}"


@pytest.mark.parametrize("folder", ALL_DIRS, ids=lambda p: os.path.relpath(p, FIXTURES))
def test_fixture_files_are_unchanged(folder):
    with open(os.path.join(folder, "SHA256SUMS")) as f:
        sums = [line.split() for line in f if line.strip()]
    assert sums
    for digest, name in sums:
        assert _sha256(os.path.join(folder, name)) == digest, \
            f"{name} changed: fixtures are frozen, never regenerated"


@pytest.mark.parametrize("folder", AC_DIRS, ids=os.path.basename)
def test_activity_classifier_fixture_reproduces_recorded_outputs(folder):
    model = tc.load_model(os.path.join(folder, "model.model"))
    data = pd.read_csv(os.path.join(folder, "input.csv"))
    expected = np.load(os.path.join(folder, "expected_probabilities.npy"), allow_pickle=False)
    got = np.stack(model.predict(data, output_type="probability_vector"))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    with open(os.path.join(folder, "expected_classes.txt")) as f:
        classes = f.read().split()
    assert list(map(str, model.predict(data))) == classes


# --- checkpoint layouts -------------------------------------------------------------------

CKPT_DIRS = sorted(os.path.dirname(p) for p in
                   glob.glob(os.path.join(FIXTURES, "checkpoint", "*", "v*", "SHA256SUMS")))
# Raw detector outputs are logits and box terms up to ~20, compared like the detector's
# model fixture; the classifiers' outputs are probabilities.
_LOAD_ATOL = {"object_detector": 1e-4}
_RESUME_ATOL = {"object_detector": 1e-3}


@pytest.mark.parametrize("task", sorted(_model._TASKS))
def test_every_task_has_a_checkpoint_fixture_of_the_current_layout(task):
    from toolkit import _checkpoint
    folder = os.path.join(FIXTURES, "checkpoint", task, f"v{_checkpoint.CHECKPOINT_VERSION}")
    assert os.path.isfile(os.path.join(folder, "SHA256SUMS")), folder


@pytest.mark.parametrize("folder", CKPT_DIRS, ids=lambda p: os.path.relpath(p, FIXTURES))
def test_checkpoint_fixture_files_are_unchanged(folder):
    test_fixture_files_are_unchanged(folder)


@pytest.mark.parametrize("folder", CKPT_DIRS, ids=lambda p: os.path.relpath(p, FIXTURES))
def test_checkpoint_fixture_loads_and_resumes_as_recorded(folder, tmp_path):
    import shutil
    import sys
    sys.path.insert(0, FIXTURES)
    import make_checkpoint_fixture as maker
    task = os.path.basename(os.path.dirname(folder))
    spec = maker.TASKS[task]
    # As a model for prediction.
    model = tc.load_model(os.path.join(folder, "checkpoint.ckpt"))
    expected = np.load(os.path.join(folder, "expected_probabilities.npy"), allow_pickle=False)
    np.testing.assert_allclose(spec.predict(model, folder), expected, rtol=0,
                               atol=_LOAD_ATOL.get(task, 1e-5))
    # Resumed to the end (on a copy: resuming writes checkpoints to the same path).
    copy = tmp_path / "copy.ckpt"
    shutil.copy(os.path.join(folder, "checkpoint.ckpt"), copy)
    resumed = spec.create(spec.train_data(folder), resume_from=str(copy), **spec.settings)
    expected = np.load(os.path.join(folder, "expected_resumed_probabilities.npy"),
                       allow_pickle=False)
    # More training on another CPU may round differently in the last bits; the
    # tolerance still catches any change in what is restored (measured on the
    # activity classifier's fixture: resuming without the optimizer state is 0.46 off,
    # with another random state 0.19 off).
    np.testing.assert_allclose(spec.predict(resumed, folder), expected, rtol=0,
                               atol=_RESUME_ATOL.get(task, 1e-4))


@pytest.mark.parametrize("task", sorted(_model._TASKS))
def test_a_file_of_a_newer_version_is_refused_for_every_task(task, tmp_path):
    """The current fixture of each task, relabelled as the next version by a newer
    toolkit: refused with both versions named and the upgrade command."""
    from test_model_file import _parts, _rebuild
    cls = _model._task_class(task)
    with open(os.path.join(FIXTURES, task, f"v{cls._FILE_VERSION}", "model.model"), "rb") as f:
        _, header, payload = _parts(f.read())
    header["file_version"] = cls._FILE_VERSION + 1
    header["written_by"]["toolkit"] = "9.1.0"
    path = tmp_path / "newer.model"
    path.write_bytes(_rebuild(header, payload))
    with pytest.raises(tc.errors.UnsupportedVersionError) as e:
        tc.load_model(str(path))
    msg = str(e.value)
    for part in (task, f"version {cls._FILE_VERSION + 1}", "9.1.0",
                 f"up to version {cls._FILE_VERSION}", "pip install -U"):
        assert part in msg, (part, msg)


# --- the image tasks: every version folder ------------------------------------------------

IC_DIRS = sorted(glob.glob(os.path.join(FIXTURES, "image_classifier", "v*")))
OD_DIRS = sorted(glob.glob(os.path.join(FIXTURES, "object_detector", "v*")))


@pytest.mark.parametrize("folder", IC_DIRS, ids=os.path.basename)
def test_image_classifier_fixture_reproduces_recorded_outputs(folder):
    """Each tests/fixtures/image_classifier/v*/ (see its PROVENANCE.md) loads and
    predicts as recorded when it was made."""
    import _image_data as D
    model = tc.load_model(os.path.join(folder, "model.model"))
    images = list(np.load(os.path.join(folder, "input_faces.npy"))) + \
        [np.load(os.path.join(folder, "input_photo.npy"))]
    frame = D.as_frame(images)
    expected = np.load(os.path.join(folder, "expected_probabilities.npy"))
    np.testing.assert_allclose(np.stack(model.predict(frame, output_type="probability_vector")),
                               expected, rtol=0, atol=1e-4)
    features = np.load(os.path.join(folder, "expected_features_first16.npy"))
    np.testing.assert_allclose(model.extract_features(frame)[:, :16], features, rtol=0,
                               atol=1e-4)
    with open(os.path.join(folder, "expected_classes.txt")) as f:
        assert list(map(str, model.predict(frame))) == f.read().split()


@pytest.mark.parametrize("folder", OD_DIRS, ids=os.path.basename)
def test_object_detector_fixture_reproduces_recorded_outputs(folder):
    import json
    model = tc.load_model(os.path.join(folder, "model.model"))
    images = np.load(os.path.join(folder, "input_scenes.npy"))
    col = np.empty(len(images), dtype=object)
    for i, im in enumerate(images):
        col[i] = im
    raw = np.concatenate([r for _, r, _ in model._raw(col, "image", pd.RangeIndex(len(col)))])
    np.testing.assert_allclose(raw, np.load(os.path.join(folder, "expected_raw_outputs.npy")),
                               rtol=0, atol=1e-4)
    with open(os.path.join(folder, "expected_predictions.json")) as f:
        expected = json.load(f)
    got = model.predict(pd.DataFrame({"image": col}), confidence_threshold=0.1)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert [d["label"] for d in e] == [d["label"] for d in g]
        np.testing.assert_allclose([d["confidence"] for d in e], [d["confidence"] for d in g],
                                   atol=1e-5)
        np.testing.assert_allclose(
            np.array([[d["coordinates"][k] for k in ("x", "y", "width", "height")]
                      for d in e]).reshape(-1, 4),
            np.array([[d["coordinates"][k] for k in ("x", "y", "width", "height")]
                      for d in g]).reshape(-1, 4), atol=1e-3)


def test_every_fixture_folder_is_checked_by_a_task_test():
    """A new v*/ folder of any task is picked up by the globs above (none is skipped)."""
    for task, dirs in (("activity_classifier", AC_DIRS), ("image_classifier", IC_DIRS),
                       ("object_detector", OD_DIRS)):
        on_disk = sorted(glob.glob(os.path.join(FIXTURES, task, "v*")))
        assert dirs == on_disk and dirs, task
