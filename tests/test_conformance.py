"""One conformance suite over every task, in the spirit of scikit-learn's estimator checks.

Each task gives a small real data set and how to call it; every check below runs on
every task: bad input gets the documented error naming the culprit, create/predict/
evaluate leave the caller's DataFrame untouched, and a loaded model predicts exactly
as the model that was saved.
"""

import json

import numpy as np
import pandas as pd
import pytest

import toolkit as tc
from toolkit.errors import ColumnNotFoundError, DataError, InvalidParameterError, ToolkitError


def _ac_data():
    data = tc.datasets.watch_sessions()
    ids = sorted(data["session_id"].unique())[:6]
    return data[data["session_id"].isin(ids)].drop(columns="subject").reset_index(drop=True)


def _ic_data():
    faces = tc.datasets.lfw_faces()
    return faces.iloc[[0, 10, 20, 30, 100, 110, 120, 130]].reset_index(drop=True)


def _od_data():
    return tc.datasets.detection_scenes(6, random_seed=5)


def _nan_ac(d):
    d = d.copy()
    d.loc[d.index[3], "ax"] = np.nan
    return d


def _nan_ic(d):
    d = d.copy()
    img = d.at[d.index[2], "image"].copy()
    img[0, 0] = np.nan
    d.at[d.index[2], "image"] = img
    return d


def _nan_od(d):
    d = d.copy()
    ann = json.loads(json.dumps(d.at[d.index[1], "annotations"]))
    ann[0]["coordinates"]["x"] = float("nan")
    d.at[d.index[1], "annotations"] = ann
    return d


TASKS = {
    "activity_classifier": dict(
        data=_ac_data, target="exercise",
        create=lambda d, **kw: tc.activity_classifier.create(
            d, "session_id", "exercise", features=["ax", "ay", "az", "wx", "wy", "wz"],
            prediction_window=20,
            **{"max_iterations": 2, "random_seed": 0, "verbose": False, **kw}),
        missing=lambda d: d.drop(columns="wx"), missing_name="wx",
        nan=_nan_ac, one_class=lambda d: d.assign(exercise="ROW"),
        unseen=lambda d: d.assign(exercise=["JUMP"] * 50 + list(d["exercise"][50:])),
        predict=lambda m, d: np.stack(m.predict(d, output_type="probability_vector"))),
    "image_classifier": dict(
        data=_ic_data, target="label",
        create=lambda d, **kw: tc.image_classifier.create(
            d, "label", **{"max_iterations": 5, "random_seed": 0, "verbose": False, **kw}),
        missing=lambda d: d.drop(columns="label"), missing_name="label",
        nan=_nan_ic, one_class=lambda d: d.assign(label="face"),
        unseen=lambda d: d.assign(label=["cat"] + list(d["label"][1:])),
        predict=lambda m, d: np.stack(m.predict(d, output_type="probability_vector"))),
    "object_detector": dict(
        data=_od_data, target="annotations",
        create=lambda d, **kw: tc.object_detector.create(
            d, **{"max_iterations": 5, "random_seed": 0, "verbose": False, **kw}),
        missing=lambda d: d.drop(columns="image"), missing_name="image column",
        nan=_nan_od, one_class=None, unseen=None,
        predict=lambda m, d: np.concatenate(
            [r for _, r, _ in m._raw(d["image"].to_numpy(), "image", d.index)])),
}


@pytest.fixture(scope="module", params=sorted(TASKS))
def task(request):
    spec = dict(TASKS[request.param])
    spec["name"] = request.param
    spec["frame"] = spec["data"]()
    spec["model"] = spec["create"](spec["frame"])
    return spec


def test_empty_frame(task):
    with pytest.raises(DataError, match="empty"):
        task["create"](task["frame"].iloc[:0])


def test_not_a_dataframe(task):
    with pytest.raises(InvalidParameterError, match="DataFrame"):
        task["create"](task["frame"].to_dict("list"))


def test_missing_column_is_named(task):
    # A named column that is absent is a ColumnNotFoundError; a column the task
    # finds by itself (the detector's image column) is a DataError naming what it
    # looked for. Both list the columns present.
    with pytest.raises(DataError, match=task["missing_name"]) as e:
        task["create"](task["missing"](task["frame"]))
    if task["name"] != "object_detector":
        assert isinstance(e.value, ColumnNotFoundError)


@pytest.mark.parametrize("kw, name", [({"max_iterations": "10"}, "max_iterations"),
                                      ({"max_iterations": -3}, "max_iterations"),
                                      ({"batch_size": -1}, "batch_size"),
                                      ({"batch_size": 2.5}, "batch_size"),
                                      ({"random_seed": "seven"}, "random_seed")])
def test_wrong_argument_types_and_values(task, kw, name):
    with pytest.raises(InvalidParameterError, match=name):
        task["create"](task["frame"], **kw)


def test_nan_is_refused_with_the_culprit(task):
    with pytest.raises(ToolkitError) as e:
        task["create"](task["nan"](task["frame"]))
    assert "nan" in str(e.value).lower() or "missing" in str(e.value).lower()


def test_one_class(task):
    if task["one_class"] is None:
        pytest.skip("a detector with one class is valid (one kind of object)")
    with pytest.raises(DataError, match="one class"):
        task["create"](task["one_class"](task["frame"]))


def test_unseen_labels_in_evaluate_are_reported(task):
    if task["unseen"] is None:
        pytest.skip("the detector's evaluate reports per class; unknown labels have no class")
    with pytest.warns(UserWarning):
        result = task["model"].evaluate(task["unseen"](task["frame"]))
    assert result["unseen_labels"]


def test_inputs_are_not_mutated(task):
    frame = task["frame"]
    snapshot = frame.copy(deep=True)
    task["create"](frame, max_iterations=1)
    task["model"].predict(frame)
    task["model"].evaluate(frame)
    pd.testing.assert_frame_equal(frame, snapshot)
    for col in frame.columns:  # object cells (arrays, annotation lists) compared by value
        for a, b in zip(frame[col], snapshot[col]):
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b)
            else:
                assert json.dumps(a, default=str) == json.dumps(b, default=str)


def test_loaded_model_predicts_as_before_save(task, tmp_path):
    path = tmp_path / f"{task['name']}.model"
    task["model"].save(path)
    loaded = tc.load_model(path)
    assert type(loaded) is type(task["model"])
    np.testing.assert_array_equal(task["predict"](task["model"], task["frame"]),
                                  task["predict"](loaded, task["frame"]))
