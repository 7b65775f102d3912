"""Turi Create's public API, as a Turi Create script uses it after swapping SFrames for
DataFrames: model fields and summary() on every task, config.get_num_gpus, the
activity classifier's util and fields, the detector's util, Core ML metadata.

Each check names the Turi Create behaviour it stands for; docs/coming_from_turicreate.md
lists every function, argument and field with its status here.
"""

import os
import platform

import numpy as np
import pandas as pd
import pytest

import toolkit as tc
from toolkit import _coreml
from toolkit.errors import (ColumnNotFoundError, DataError, FieldNotFoundError,
                            InvalidParameterError, ToolkitError)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
FEATURES = ["ax", "ay", "az", "wx", "wy", "wz"]

#: The fields Turi Create 6 lists for an activity classifier trained without a
#: validation set (its test_activity_classifier.py, test__list_fields).
TC_AC_FIELDS = {
    "features", "training_time", "target", "verbose", "session_id", "prediction_window",
    "training_accuracy", "training_log_loss", "max_iterations", "num_sessions",
    "num_features", "num_examples", "num_classes", "batch_size", "classes",
    "training_report_by_class", "training_iterations", "random_seed", "training_precision",
    "training_confusion_matrix", "use_data_augmentation", "training_f1_score",
    "training_auc", "training_roc_curve", "training_recall"}
METRIC_NAMES = ("accuracy", "log_loss", "auc", "precision", "recall", "f1_score",
                "confusion_matrix", "roc_curve", "report_by_class")


def _same(a, b):
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b)
    else:
        assert a == b


def _create(data, **kw):
    args = dict(features=FEATURES, prediction_window=20, max_iterations=1, verbose=False,
                random_seed=0)
    args.update(kw)
    return tc.activity_classifier.create(data, "session_id", "exercise", **args)


# --- every task: fields and summary ---------------------------------------------------

@pytest.fixture(scope="module", params=["activity_classifier", "image_classifier",
                                        "object_detector"])
def any_model(request, tiny_model):
    """A model of each task: the tiny activity classifier, the others' frozen fixtures
    (loading them is fast; training is covered by their own tests)."""
    if request.param == "activity_classifier":
        return tiny_model
    return tc.load_model(os.path.join(FIXTURES, request.param, "v1", "model.model"))


def test_summary_prints_returns_str_or_dict(any_model, capsys):
    text = any_model.summary(output="str")
    assert isinstance(text, str) and type(any_model).__name__ in text
    assert any_model.summary() is None
    assert capsys.readouterr().out == text + "\n"
    assert any_model.summary("stdout") is None
    assert capsys.readouterr().out == text + "\n"
    d = any_model.summary("dict")
    # Turi Create's structure: ordered section titles and (label, value) rows.
    assert set(d) == {"section_titles", "sections"}
    assert len(d["section_titles"]) == len(d["sections"]) >= 2
    for title, rows in zip(d["section_titles"], d["sections"]):
        assert title in text
        for label, value in rows:
            assert label in text
            if isinstance(value, float):
                assert value == round(value, 4)


@pytest.mark.parametrize("bad", ["bad", "STR", 0, {}, ["str"]])
def test_summary_refuses_any_other_output(any_model, bad, capsys):
    with pytest.raises(InvalidParameterError, match="output") as e:
        any_model.summary(bad)
    assert isinstance(e.value, ToolkitError)
    assert capsys.readouterr().out == ""


def test_every_listed_field_is_reachable_four_ways(any_model):
    fields = any_model._list_fields()
    assert fields == sorted(fields) and "classes" in fields
    for name in fields:
        value = any_model.get(name)
        _same(value, any_model._get(name))
        _same(value, any_model[name])
        _same(value, getattr(any_model, name))
        assert name in dir(any_model)


def test_unknown_field_is_a_clear_error(any_model):
    with pytest.raises(FieldNotFoundError, match="no_such_field.*classes"):
        any_model.get("no_such_field")
    with pytest.raises(KeyError):
        any_model["no_such_field"]
    with pytest.raises(AttributeError):
        any_model.no_such_field
    assert not hasattr(any_model, "no_such_field")


def test_repr_and_str_are_the_summary(any_model):
    assert repr(any_model) == str(any_model) == any_model.summary("str")


# --- config ------------------------------------------------------------------------------

def test_get_num_gpus_returns_what_set_num_gpus_set():
    try:
        tc.config.set_devices(None)
        assert tc.config.get_num_gpus() in (-1, 0)  # -1 unless TOOLKIT_DEVICES says CPU
        for n in (0, 2, -1):
            tc.config.set_num_gpus(n)
            assert tc.config.get_num_gpus() == n
        tc.config.set_devices(["cpu(0)", "cpu(1)"])
        assert tc.config.get_num_gpus() == 0
        tc.config.set_devices(["gpu(0)", "gpu(3)"])
        assert tc.config.get_num_gpus() == 2
    finally:
        tc.config.set_devices(None)


# --- activity classifier: util --------------------------------------------------------

def test_random_split_by_session_is_reproducible_and_disjoint(watch):
    split = tc.activity_classifier.util.random_split_by_session
    train, valid = split(watch, "session_id", fraction=0.9, seed=7)
    n = watch["session_id"].nunique()
    assert train["session_id"].nunique() == round(0.9 * n)
    assert set(train["session_id"]).isdisjoint(valid["session_id"])
    assert len(train) + len(valid) == len(watch)
    assert list(train.index) == sorted(train.index)          # rows keep their order
    again, _ = split(watch, "session_id", 0.9, 7)
    pd.testing.assert_frame_equal(train, again)
    # The same seed picks the same sessions whatever the row order.
    shuffled, _ = split(watch.sample(frac=1.0, random_state=0), "session_id", 0.9, 7)
    assert set(shuffled["session_id"]) == set(train["session_id"])
    other, _ = split(watch, "session_id", 0.9, 8)
    assert set(other["session_id"]) != set(train["session_id"])
    everything, nothing = split(watch, "session_id", 1.0)
    assert len(everything) == len(watch) and len(nothing) == 0


def test_random_split_by_session_errors(watch):
    split = tc.activity_classifier.util.random_split_by_session
    with pytest.raises(ColumnNotFoundError, match="no_column"):
        split(watch, "no_column")
    for bad in (1.5, -0.1, "0.9", True, None):
        with pytest.raises(InvalidParameterError, match="fraction"):
            split(watch, "session_id", fraction=bad)
    with pytest.raises(InvalidParameterError, match="seed"):
        split(watch, "session_id", seed=-1)
    with pytest.raises(InvalidParameterError, match="DataFrame"):
        split(watch.to_dict("list"), "session_id")
    assert tc.activity_classifier.util._MIN_NUM_SESSIONS_FOR_SPLIT == 100


# --- activity classifier: fields --------------------------------------------------------

def test_activity_classifier_lists_turi_creates_fields(tiny_model):
    # Turi Create's set, plus the validation counts every task has here and the
    # training table (progress).
    assert set(tiny_model._list_fields()) == \
        TC_AC_FIELDS | {"num_validation_examples", "num_validation_sessions", "progress"}
    assert tiny_model.verbose is False and tiny_model.use_data_augmentation is True
    assert tiny_model.num_validation_sessions == 0
    assert tiny_model.feature_mean == tiny_model["feature_mean"]   # readable, not listed


def _check_metrics_equal(model, prefix, result):
    for name in METRIC_NAMES:
        got = model.get(prefix + name)
        want = result[name]
        if isinstance(want, pd.DataFrame):
            pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9)
        else:
            assert got == pytest.approx(want, rel=1e-9), name


def test_training_metrics_are_evaluate_on_the_training_rows(tiny_model, watch_small):
    _check_metrics_equal(tiny_model, "training_", tiny_model.evaluate(watch_small, "report"))
    report = tiny_model.training_report_by_class
    assert list(report.columns) == ["class", "actual_count", "predicted_correctly",
                                    "predicted_this_incorrectly", "missed_predicting_this",
                                    "precision", "recall"]
    assert report["actual_count"].sum() == tiny_model.num_examples == len(watch_small)


def test_counts_leave_out_the_auto_validation_sessions(watch_small, monkeypatch):
    # Turi Create counts training data in num_sessions/num_examples; this toolkit
    # counted the held-out sessions too.
    from toolkit.activity_classifier import _data
    monkeypatch.setattr(_data, "MIN_SESSIONS_FOR_AUTO_VALIDATION", 5)
    model = _create(watch_small)
    n = watch_small["session_id"].nunique()
    assert (model.num_sessions, model.num_validation_sessions) == (n - 1, 1)
    assert model.num_examples + model.num_validation_examples == len(watch_small)
    assert set(model._list_fields()) >= {"validation_" + m for m in METRIC_NAMES}


def test_validation_fields_are_evaluate_on_the_validation_set(watch, watch_small, tmp_path):
    other = watch[watch["session_id"].isin([100, 101])].drop(columns="subject")
    model = _create(watch_small, validation_set=other)
    assert (model.num_sessions, model.num_examples) == (8, len(watch_small))
    assert (model.num_validation_sessions, model.num_validation_examples) == (2, len(other))
    result = model.evaluate(other, "report")
    _check_metrics_equal(model, "validation_", result)
    # Everything survives a save and a load (the ROC curve's infinite threshold too).
    path = tmp_path / "v.model"
    model.save(path)
    loaded = tc.load_model(path)
    assert loaded._list_fields() == model._list_fields()
    for name in model._list_fields():
        _same(loaded.get(name), model.get(name))
    assert np.isinf(loaded.training_roc_curve["threshold"].iloc[0])


def test_fit_updates_the_training_fields(tiny_model_path, watch_small):
    model = tc.load_model(tiny_model_path)
    data = watch_small[watch_small["session_id"] != watch_small["session_id"].iloc[0]]
    model.fit(data, max_iterations=1, verbose=False, random_seed=1)
    assert (model.num_examples, model.num_sessions) == (len(data), 7)
    _check_metrics_equal(model, "training_", model.evaluate(data, "report"))


def test_version_1_files_get_the_documented_values():
    model = tc.load_model(os.path.join(FIXTURES, "activity_classifier", "v1", "model.model"))
    assert model.verbose is True and model.use_data_augmentation is True
    assert (model.num_validation_sessions, model.num_validation_examples) == (0, 0)
    assert model.training_auc is None and model.training_roc_curve is None
    assert model.training_report_by_class is None
    assert 0 <= model.training_accuracy <= 1            # v1's own (per window) value kept
    assert set(model._list_fields()) >= TC_AC_FIELDS


def test_a_damaged_stored_metrics_table_is_refused(tiny_model, tmp_path):
    from toolkit import _model_file
    from toolkit.errors import CorruptModelFileError
    state, weights = tiny_model._get_state()
    state["training_confusion_matrix"] = {"target_label": [1], "count": [1, 2]}
    header = _model_file.build_header("activity_classifier", tiny_model._FILE_VERSION, state)
    path = tmp_path / "bad.model"
    _model_file.atomic_write(path, _model_file.serialize(
        header, {"weights": _model_file.encode_tensors(weights)}))
    with pytest.raises(CorruptModelFileError, match="training_confusion_matrix"):
        tc.load_model(path)


# --- object detector: util -------------------------------------------------------------

PREDS = pd.Series([
    [{"label": "cat", "type": "rectangle", "confidence": 0.67,
      "coordinates": {"x": 150, "y": 183, "width": 129, "height": 101}},
     {"label": "dog", "type": "rectangle", "confidence": 0.98,
      "coordinates": {"x": 123, "y": 128, "width": 80, "height": 182}}],
    [],
    [{"label": "dog", "type": "rectangle", "confidence": 0.8,
      "coordinates": {"x": 50, "y": 432, "width": 65, "height": 98}}],
    [],
], index=[10, 11, 12, 13])


def test_stack_annotations_one_row_per_object():
    stacked = tc.object_detector.util.stack_annotations(PREDS)
    assert list(stacked.columns) == ["row_id", "confidence", "label", "x", "y", "width",
                                     "height"]
    assert stacked["row_id"].tolist() == [0, 0, 2]          # positions, not the index
    assert stacked["label"].tolist() == ["cat", "dog", "dog"]
    assert stacked["x"].tolist() == [150.0, 123.0, 50.0]
    truth = tc.datasets.detection_scenes(3, random_seed=1)["annotations"]
    plain = tc.object_detector.util.stack_annotations(truth)
    assert "confidence" not in plain.columns
    assert len(plain) == sum(len(a) for a in truth)
    empty = tc.object_detector.util.stack_annotations(pd.Series([[], None]))
    assert len(empty) == 0 and list(empty.columns) == ["row_id", "label", "x", "y", "width",
                                                       "height"]
    with pytest.raises(DataError, match="position 1"):
        tc.object_detector.util.stack_annotations([[], [{"label": "a"}]])


def test_unstack_annotations_reverses_stack():
    util = tc.object_detector.util
    back = util.unstack_annotations(util.stack_annotations(PREDS), num_rows=len(PREDS))
    assert list(back.index) == [0, 1, 2, 3]
    assert back[1] == [] and back[3] == []
    # Highest confidence first, as Turi Create sorts them; coordinates as floats.
    assert [o["label"] for o in back[0]] == ["dog", "cat"]
    assert back[2] == [{"label": "dog", "type": "rectangle", "confidence": 0.8,
                        "coordinates": {"x": 50.0, "y": 432.0, "width": 65.0,
                                        "height": 98.0}}]
    assert len(util.unstack_annotations(util.stack_annotations(PREDS))) == 3  # max row_id + 1
    truth = tc.datasets.detection_scenes(3, random_seed=1)["annotations"]
    again = util.unstack_annotations(util.stack_annotations(truth), num_rows=3)
    for a, b in zip(truth, again):
        assert [(o["label"], {k: float(v) for k, v in o["coordinates"].items()}) for o in a] \
            == [(o["label"], o["coordinates"]) for o in b]


def test_unstack_annotations_errors():
    util = tc.object_detector.util
    stacked = util.stack_annotations(PREDS)
    with pytest.raises(DataError, match="row_id.*2.*num_rows=2"):
        util.unstack_annotations(stacked, num_rows=2)
    with pytest.raises(ColumnNotFoundError, match="height"):
        util.unstack_annotations(stacked.drop(columns="height"))
    with pytest.raises(InvalidParameterError, match="num_rows"):
        util.unstack_annotations(stacked, num_rows=-1)


def test_draw_bounding_boxes_over_a_column():
    scenes = tc.datasets.detection_scenes(3, random_seed=2)
    scenes.index = [5, 6, 7]
    drawn = tc.object_detector.util.draw_bounding_boxes(scenes["image"], scenes["annotations"])
    assert isinstance(drawn, pd.Series) and list(drawn.index) == [5, 6, 7]
    for img, ann, out in zip(scenes["image"], scenes["annotations"], drawn):
        one = tc.object_detector.util.draw_bounding_boxes(img, ann)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(one))
        assert not np.array_equal(np.asarray(out), np.asarray(img))   # boxes were drawn
    with pytest.raises(InvalidParameterError, match="3 element.*2"):
        tc.object_detector.util.draw_bounding_boxes(scenes["image"],
                                                    list(scenes["annotations"])[:2])
    with pytest.raises(DataError, match="position 1"):
        tc.object_detector.util.draw_bounding_boxes(scenes["image"], [[], [{"x": 1}], []])


# --- Core ML metadata ------------------------------------------------------------------

def test_metadata_holds_the_create_settings_as_turi_create_writes_them():
    state = {"target": "exercise", "features": ["ax", "ay"], "prediction_window": 50,
             "max_iterations": 10, "session_id": "s", "model": None, "batch_size": 32}
    meta = _coreml.model_metadata("activity_classifier", 2, {"target": "t2"}, settings=state)
    assert meta == {"toolkit_version": tc.__version__, "task": "activity_classifier",
                    "file_version": "2", "platform": platform.platform(), "target": "t2",
                    "features": "ax,ay", "prediction_window": "50", "max_iterations": "10",
                    "session_id": "s"}
    with pytest.raises(ValueError, match="platform"):
        _coreml.model_metadata("activity_classifier", 2, {"platform": "x"})
    assert _coreml.short_description("Object detector", "darknet-yolo",
                                     " with non-maximum suppression") == \
        ("Object detector (darknet-yolo) with non-maximum suppression created by toolkit "
         f"(version {tc.__version__})")
    assert _coreml.short_description("Activity classifier") == \
        f"Activity classifier created by toolkit (version {tc.__version__})"


def test_activity_classifier_export_metadata(tiny_model, tmp_path):
    pytest.importorskip("coremltools")
    from coreml_check import load_spec
    path = str(tmp_path / "a.mlmodel")
    tiny_model.export_coreml(path)
    meta = dict(load_spec(path).description.metadata.userDefined)
    want = {"task": "activity_classifier", "file_version": str(tiny_model._FILE_VERSION),
            "platform": platform.platform(), "target": "exercise", "session_id": "session_id",
            "prediction_window": "20", "features": ",".join(FEATURES),
            "max_iterations": str(tiny_model.max_iterations),
            "toolkit_version": tc.__version__}
    assert {k: meta.get(k) for k in want} == want


def test_progress_is_the_training_table_and_survives_save_and_resume(watch_small, tmp_path,
                                                                     monkeypatch):
    import shutil
    from toolkit import _checkpoint
    path, half = tmp_path / "run.ckpt", tmp_path / "half.ckpt"
    write = _checkpoint.write

    def keep_iteration_2(target, **kw):        # the checkpoint a crash after epoch 2 leaves
        write(target, **kw)
        if kw["position"]["iteration"] == 2:
            shutil.copy(target, half)
    monkeypatch.setattr(_checkpoint, "write", keep_iteration_2)
    whole = _create(watch_small, max_iterations=4, checkpoint_path=str(path),
                    checkpoint_every=1)
    progress = whole.progress
    assert list(progress["Iteration"]) == [1, 2, 3, 4]
    assert progress["Train Accuracy"].between(0, 1).all()
    whole.save(tmp_path / "m.model")
    assert tc.load_model(tmp_path / "m.model").progress.equals(progress)
    # The resumed run keeps the rows from before the checkpoint: the same curve.
    resumed = _create(watch_small, max_iterations=4, resume_from=str(half))
    assert list(resumed.progress["Iteration"]) == [1, 2, 3, 4]
    np.testing.assert_allclose(resumed.progress["Train Accuracy"], progress["Train Accuracy"],
                               atol=1e-6)
