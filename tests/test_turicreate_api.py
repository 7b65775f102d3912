"""Turi Create's public API, as a Turi Create script uses it after swapping SFrames for
DataFrames: model fields and summary() on every task, config.get_num_gpus, the
activity classifier's util and fields, the image classifier's arguments, fields, deep
features and output types, the detector's fields, arguments, evaluate and util, Core ML
metadata.

Each check names the Turi Create behaviour it stands for; docs/coming_from_turicreate.md
lists every function, argument and field with its status here.
"""

import os
import platform
import warnings

import numpy as np
import pandas as pd
import pytest

import _image_data as D
import toolkit as tc
from toolkit import _coreml
from toolkit.errors import (ColumnNotFoundError, DataError, FieldNotFoundError,
                            InvalidParameterError, ToolkitError, ToolkitWarning)

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
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
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


def test_image_classifier_and_detector_export_metadata(tmp_path):
    pytest.importorskip("coremltools")
    from coreml_check import load_spec
    for task, extra in (("image_classifier", {"input_image_shape": "3,224,224"}),
                        ("object_detector", {"include_non_maximum_suppression": "True",
                                             "iou_threshold": "0.45",
                                             "confidence_threshold": "0.25"})):
        model = tc.load_model(os.path.join(FIXTURES, task, "v1", "model.model"))
        path = str(tmp_path / f"{task}.mlmodel")
        model.export_coreml(path)
        spec = load_spec(path)
        meta = dict(spec.description.metadata.userDefined)
        want = {"task": task, "file_version": str(model._FILE_VERSION),
                "platform": platform.platform(), "toolkit_version": tc.__version__,
                "model": model.model, "feature": model.feature,
                "max_iterations": str(model.max_iterations),
                "classes": ",".join(map(str, model.classes)), **extra}
        assert {k: meta.get(k) for k in want} == want, task
        # Turi Create names the backbone in the description: "Image classifier
        # (resnet-50) created by Turi Create (version X)".
        assert f"({model.model})" in spec.description.metadata.shortDescription
    assert meta["annotations"] == model.annotations
    assert meta["training_iterations"] == str(model.training_iterations)


# --- image classifier --------------------------------------------------------------------

#: The fields Turi Create's image classifier has (its create(), state dict).
TC_IC_FIELDS = {"classifier", "model", "max_iterations", "feature_extractor",
                "input_image_shape", "target", "feature", "num_features", "num_classes",
                "classes", "num_examples", "training_time", "training_loss"}


@pytest.fixture(scope="module")
def ic_fixture():
    return tc.load_model(os.path.join(FIXTURES, "image_classifier", "v1", "model.model"))


@pytest.fixture(scope="module")
def faces_deep():
    """12 + 12 real faces / non-faces to train on and 4 others, with their deep features
    (Turi Create's get_deep_features workflow)."""
    train, test = D.faces_split()
    train = train.iloc[::2]
    test = test.iloc[[0, 1, -2, -1]]
    feats = list(tc.image_analysis.get_deep_features(
        pd.concat([train["image"], test["image"]], ignore_index=True), verbose=False))
    return (train.assign(deep_features=feats[:len(train)]),
            test.assign(deep_features=feats[len(train):]))


def _deep_create(data, **kw):
    args = dict(feature="deep_features", verbose=False, seed=0, max_iterations=20)
    args.update(kw)
    return tc.image_classifier.create(data, "label", **args)


@pytest.fixture(scope="module")
def deep_model(faces_deep):
    return _deep_create(faces_deep[0])


def test_image_classifier_lists_turi_creates_fields(ic_fixture):
    assert set(ic_fixture._list_fields()) >= TC_IC_FIELDS
    # A version-1 file was trained with Turi Create's defaults of the later settings.
    assert (ic_fixture.l1_penalty, ic_fixture.class_weights, ic_fixture.feature_rescaling,
            ic_fixture.convergence_threshold) == (0.0, None, True, None)
    extractor = ic_fixture.feature_extractor
    assert (extractor.name, extractor.num_features, extractor.input_image_shape) == \
        ("efficientnet-lite0", 1280, (3, 224, 224))


def test_classifier_field_is_the_trained_softmax_layer(ic_fixture):
    images = pd.Series(list(np.load(os.path.join(FIXTURES, "image_classifier", "v1",
                                                 "input_faces.npy")))[:4])
    clf = ic_fixture.classifier
    assert clf["coefficients"].shape == (2, 1280) and clf["intercept"].shape == (2,)
    assert clf["classes"] == ic_fixture.classes and clf["l2_penalty"] == 0.01
    feats = np.stack(ic_fixture.feature_extractor.extract_features(images))
    logits = feats @ clf["coefficients"].T + clf["intercept"]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(
        probs, np.stack(ic_fixture.predict(images, output_type="probability_vector")),
        atol=1e-5)
    # A copy: editing it does not change the model.
    clf["coefficients"][:] = 0
    assert np.abs(ic_fixture.classifier["coefficients"]).sum() > 0


def test_deep_features_are_the_models_features(ic_fixture, faces_deep):
    test = faces_deep[1]
    deep = test["deep_features"]
    assert deep.iloc[0].shape == (1280,) and deep.iloc[0].dtype == np.float32
    mine = ic_fixture.feature_extractor.extract_features(test, "image")
    assert list(mine.index) == list(test.index)
    np.testing.assert_allclose(np.stack(mine), np.stack(deep), atol=1e-5)
    one = tc.image_analysis.get_deep_features(test["image"].iloc[0], verbose=False)
    np.testing.assert_allclose(one, deep.iloc[0], atol=1e-5)
    with pytest.raises(InvalidParameterError, match=r"data\['image'\]"):
        tc.image_analysis.get_deep_features(test)


def test_create_on_deep_features_predicts_on_images_and_features(deep_model, faces_deep):
    train, test = faces_deep
    assert deep_model.feature == "deep_features" and deep_model.num_examples == len(train)
    from_images = np.stack(deep_model.predict(test["image"], output_type="probability_vector"))
    from_frame = np.stack(deep_model.predict(test, output_type="probability_vector"))
    from_series = np.stack(deep_model.predict(test["deep_features"],
                                              output_type="probability_vector"))
    np.testing.assert_allclose(from_frame, from_images, atol=1e-5)
    np.testing.assert_allclose(from_series, from_images, atol=1e-5)
    assert deep_model.predict(test["deep_features"].iloc[0]) == \
        deep_model.predict(test["image"].iloc[0])
    assert deep_model.evaluate(test)["accuracy"] == 1.0
    # Turi Create's positional order: metric, verbose, batch_size.
    assert deep_model.evaluate(test, "accuracy", False, 2) == \
        deep_model.evaluate(test, metric="accuracy")


def test_deep_features_of_another_network_are_refused(faces_deep):
    train = faces_deep[0].copy()
    train["deep_features"] = [np.zeros(2048, np.float32)] * len(train)
    with pytest.raises(DataError, match=r"position 0.*2048 values.*1280"):
        _deep_create(train)
    train["deep_features"] = [np.zeros(1280)] * (len(train) - 1) + [np.full(1280, np.nan)]
    with pytest.raises(DataError, match="NaN"):
        _deep_create(train)


def test_turi_create_model_names_are_refused_naming_ours(faces_deep):
    for name in ("resnet-50", "squeezenet_v1.1", "VisionFeaturePrint_Scene"):
        with pytest.raises(InvalidParameterError, match=f"{name}.*'efficientnet-lite0'"):
            _deep_create(faces_deep[0], model=name)
        with pytest.raises(InvalidParameterError, match="model_name.*'efficientnet-lite0'"):
            tc.image_analysis.get_deep_features(faces_deep[1]["image"], model_name=name)


def test_seed_is_random_seed(faces_deep, deep_model):
    train = faces_deep[0]
    assert deep_model.random_seed == 0
    assert _deep_create(train, seed=None, random_seed=5, max_iterations=1).random_seed == 5
    assert _deep_create(train, seed=5, random_seed=5, max_iterations=1).random_seed == 5
    with pytest.raises(InvalidParameterError, match="'seed' \\(1\\) and 'random_seed' \\(2\\)"):
        _deep_create(train, seed=1, random_seed=2)


def test_turi_create_solver_options_are_accepted(faces_deep, deep_model):
    train = faces_deep[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ToolkitWarning)   # Turi Create's defaults: silent
        _deep_create(train, solver="auto", step_size=1.0, lbfgs_memory_level=11,
                     max_iterations=1)
    with pytest.warns(ToolkitWarning, match="solver='lbfgs'.*no effect.*Adam"):
        same = _deep_create(train, solver="lbfgs", lbfgs_memory_level=3)
    np.testing.assert_array_equal(same.classifier["coefficients"],
                                  deep_model.classifier["coefficients"])
    for bad in (dict(solver="sgd"), dict(step_size=0), dict(lbfgs_memory_level=0)):
        with pytest.raises(InvalidParameterError, match=list(bad)[0]):
            _deep_create(train, **bad)


def test_class_weights_weigh_the_loss(faces_deep):
    train = faces_deep[0]
    unbalanced = pd.concat([train[train["label"] == "face"].iloc[:2],
                            train[train["label"] == "not_face"]])
    auto = _deep_create(unbalanced, class_weights="auto")
    n, faces = len(unbalanced), 2
    assert auto.class_weights == pytest.approx({"face": n / (2 * faces),
                                                "not_face": n / (2 * (n - faces))})
    assert auto.classifier["class_weights"] == auto.class_weights
    # A weight multiplies its rows' loss: weight 3 trains (nearly: Adam's steps are
    # scale-free but for its epsilon) as if those rows were there three times.
    # (Raw features and no L2 penalty, so that repeated rows change nothing else.)
    kw = dict(l2_penalty=0.0, feature_rescaling=False)
    weighted = _deep_create(train, class_weights={"face": 3, "not_face": 1}, **kw)
    tripled = _deep_create(pd.concat([train] + [train[train["label"] == "face"]] * 2), **kw)
    plain = _deep_create(train, **kw)
    coef = lambda m: m.classifier["coefficients"]   # noqa: E731
    assert np.abs(coef(weighted) - coef(tripled)).max() < \
        0.1 * np.abs(coef(weighted) - coef(plain)).max()
    np.testing.assert_allclose(weighted.classifier["intercept"],
                               tripled.classifier["intercept"], atol=1e-4)
    with pytest.raises(InvalidParameterError, match="missing: 'not_face'"):
        _deep_create(train, class_weights={"face": 1})
    with pytest.raises(InvalidParameterError, match="not classes: 'cat'"):
        _deep_create(train, class_weights={"face": 1, "not_face": 1, "cat": 2})
    with pytest.raises(InvalidParameterError, match="class_weights"):
        _deep_create(train, class_weights="balanced")


def test_l1_penalty_and_feature_rescaling(faces_deep, deep_model):
    train = faces_deep[0]
    l1 = _deep_create(train, l1_penalty=0.05)
    assert l1.l1_penalty == 0.05 and l1.classifier["l1_penalty"] == 0.05
    # The penalty acts on the weights of standardised features (see create()).
    std = np.sqrt(np.stack(train["deep_features"]).var(axis=0) + 1e-3)
    size = lambda m: np.abs(m.classifier["coefficients"] * std).sum()   # noqa: E731
    assert size(l1) < size(deep_model)
    raw = _deep_create(train, feature_rescaling=False)
    assert raw.feature_rescaling is False and raw.training_accuracy == 1.0
    assert not np.allclose(raw.classifier["coefficients"],
                           deep_model.classifier["coefficients"])
    with pytest.raises(InvalidParameterError, match="l1_penalty"):
        _deep_create(train, l1_penalty=-1)
    with pytest.raises(InvalidParameterError, match="feature_rescaling"):
        _deep_create(train, feature_rescaling="yes")


def test_convergence_threshold_stops_training_early(faces_deep):
    train = faces_deep[0]
    early = _deep_create(train, convergence_threshold=0.05, max_iterations=50)
    assert 1 <= early.training_iterations < 50
    assert early.max_iterations == 50 and early.convergence_threshold == 0.05
    # Stopping after k steps gives the model of k steps.
    same = _deep_create(train, max_iterations=early.training_iterations)
    np.testing.assert_array_equal(early.classifier["coefficients"],
                                  same.classifier["coefficients"])
    assert _deep_create(train, max_iterations=30).training_iterations == 30
    with pytest.raises(InvalidParameterError, match="convergence_threshold"):
        _deep_create(train, convergence_threshold=-0.1)


def test_a_converged_checkpoint_resumes_to_the_same_model(faces_deep, tmp_path):
    train = faces_deep[0]
    kw = dict(convergence_threshold=0.05, max_iterations=50)
    path = str(tmp_path / "run.ckpt")
    first = _deep_create(train, checkpoint_path=path, checkpoint_every=1, **kw)
    again = _deep_create(train, resume_from=path, **kw)
    assert again.training_iterations == first.training_iterations < 50
    np.testing.assert_array_equal(again.classifier["coefficients"],
                                  first.classifier["coefficients"])


def test_predict_output_types_as_turi_create(deep_model, faces_deep):
    test = faces_deep[1]
    vectors = np.stack(deep_model.predict(test, output_type="probability_vector"))
    probability = deep_model.predict(test, output_type="probability")
    margin = deep_model.predict(test, output_type="margin")
    assert probability.name == "probability" and list(probability.index) == list(test.index)
    # Binary: the probability of the second class, and its logit.
    np.testing.assert_allclose(probability, vectors[:, 1], atol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-margin.to_numpy(np.float64))), vectors[:, 1],
                               atol=1e-5)
    one = test["image"].iloc[0]
    assert deep_model.predict(one) in deep_model.classes
    assert isinstance(deep_model.predict(one, output_type="probability"), float)
    assert isinstance(deep_model.predict(one, output_type="margin"), float)
    row = deep_model.classify(one)
    assert row == {"class": deep_model.predict(one),
                   "probability": pytest.approx(vectors[0].max(), abs=1e-6)}
    top = deep_model.predict_topk(one, k=2)           # Turi Create: a frame for one image too
    assert list(top.columns) == ["row_id", "class", "probability"] and len(top) == 2
    margins = deep_model.predict_topk(test, output_type="margin", k=2)
    assert list(margins.columns) == ["row_id", "class", "margin"]
    first = margins[margins["class"] == deep_model.classes[0]]["margin"]
    assert (first == 0).all()                         # margins against the first class
    second = margins[margins["class"] == deep_model.classes[1]]["margin"].to_numpy()
    np.testing.assert_allclose(second, margin.to_numpy(), atol=1e-5)


def test_probability_and_margin_need_two_classes():
    digits = D.digits()
    train = digits[digits["label"] < 3].groupby("label").head(3)
    train = train.assign(deep_features=tc.image_analysis.get_deep_features(train["image"],
                                                                           verbose=False))
    model = _deep_create(train, max_iterations=5)
    for output_type in ("probability", "margin"):
        with pytest.raises(InvalidParameterError, match="two classes.*has 3"):
            model.predict(train, output_type=output_type)
    top = model.predict_topk(train.head(1), output_type="margin", k=3)
    assert sorted(top["class"]) == [0, 1, 2]
    assert top["margin"].iloc[0] == top["margin"].max()


# --- object detector --------------------------------------------------------------------

#: Turi Create 6's object detector fields beyond those every model here has.
TC_OD_FIELDS = {"annotations", "batch_size", "classes", "feature", "grid_height",
                "grid_width", "max_iterations", "model", "num_bounding_boxes", "num_classes",
                "num_examples", "random_seed", "training_epochs", "training_iterations",
                "training_time", "training_loss", "verbose", "annotation_origin",
                "annotation_position", "annotation_scale", "_training_time_as_string"}


@pytest.fixture(scope="module")
def od_fixture():
    return tc.load_model(os.path.join(FIXTURES, "object_detector", "v1", "model.model"))


@pytest.fixture(scope="module")
def od_scenes():
    return tc.datasets.detection_scenes(4, split="test", random_seed=22)


def test_detector_lists_turi_creates_fields(od_fixture):
    assert set(od_fixture._list_fields()) >= TC_OD_FIELDS
    assert (od_fixture.grid_height, od_fixture.grid_width) == (7, 7)
    assert (od_fixture.annotation_origin, od_fixture.annotation_position,
            od_fixture.annotation_scale) == ("top_left", "center", "pixel")
    assert od_fixture.verbose is True                  # version-1 files: create()'s default
    assert od_fixture.num_validation_examples == 0
    seconds = round(od_fixture.training_time)
    assert od_fixture._training_time_as_string == f"{seconds}s"


def test_training_time_as_string():
    from toolkit.object_detector._model import seconds_as_string
    assert seconds_as_string(3725.2) == "1h 2m 5s"
    assert seconds_as_string(86400 + 41) == "1d 41s"
    assert seconds_as_string(0.2) == "1s"


def test_detector_create_stores_verbose_and_takes_its_grid_shape(tmp_path):
    scenes = tc.datasets.detection_scenes(4, random_seed=1)
    model = tc.object_detector.create(scenes, max_iterations=1, batch_size=4, verbose=False,
                                      grid_shape=[7, 7], random_seed=0)
    assert model.verbose is False and model.grid_shape == [7, 7]
    path = tmp_path / "d.model"
    model.save(path)
    assert tc.load_model(path).verbose is False


@pytest.mark.parametrize("grid, message", [([13, 13], r"\[13, 13\].*fixed at \[7, 7\]"),
                                           ((7, 9), r"\[7, 9\]"), (7, "height, width"),
                                           (["7", "7"], "two ints")])
def test_detector_refuses_other_grids(grid, message):
    scenes = tc.datasets.detection_scenes(2, random_seed=1)
    with pytest.raises(InvalidParameterError, match=message):
        tc.object_detector.create(scenes, grid_shape=grid, verbose=False)


def test_detector_refuses_darknet_naming_ours():
    scenes = tc.datasets.detection_scenes(2, random_seed=1)
    with pytest.raises(InvalidParameterError, match="darknet-yolo.*'efficientnet-lite0-yolo'"):
        tc.object_detector.create(scenes, model="darknet-yolo", verbose=False)


def test_detector_evaluate_dataframe_as_turi_create(od_fixture, od_scenes):
    scores = od_fixture.evaluate(od_scenes, metric="all")
    assert set(scores) == {"average_precision_50", "average_precision",
                           "mean_average_precision_50", "mean_average_precision"}
    # Turi Create's 'sframe' layout: a row per class, 'label' then the per-class
    # metrics; the means left out.
    for output_type in ("dataframe", "sframe"):
        frame = od_fixture.evaluate(od_scenes, metric="all", output_type=output_type)
        assert list(frame.columns) == ["label", "average_precision_50", "average_precision"]
        assert list(frame["label"]) == list(scores["average_precision_50"])
        for metric in ("average_precision_50", "average_precision"):
            assert dict(zip(frame["label"], frame[metric])) == scores[metric]
    auto = od_fixture.evaluate(od_scenes, output_type="dataframe")
    assert list(auto.columns) == ["label", "average_precision_50"]
    # Turi Create's positional order: metric, output_type, iou_threshold.
    assert od_fixture.evaluate(od_scenes, "auto", "dict", 0.45) == \
        od_fixture.evaluate(od_scenes)
    with pytest.raises(InvalidParameterError, match="output_type"):
        od_fixture.evaluate(od_scenes, output_type="json")


def test_detector_on_an_empty_frame(od_fixture, od_scenes):
    empty = od_scenes.iloc[:0]
    assert len(od_fixture.predict(empty)) == 0
    assert len(od_fixture.predict(empty["image"])) == 0
    # Turi Create: "Empty dataset should not fail with error (although it should to 0
    # metrics)".
    assert od_fixture.evaluate(empty) == {"average_precision_50": {},
                                          "mean_average_precision_50": 0.0}
    frame = od_fixture.evaluate(empty, metric="all", output_type="dataframe")
    assert len(frame) == 0 and list(frame.columns) == ["label", "average_precision_50",
                                                       "average_precision"]
    no_objects = od_scenes.assign(annotations=[[] for _ in range(len(od_scenes))])
    assert od_fixture.evaluate(no_objects, metric="mean_average_precision") == \
        {"mean_average_precision": 0.0}
    with pytest.raises(ColumnNotFoundError, match="annotations"):
        od_fixture.evaluate(empty[["image"]])
    with pytest.raises(ColumnNotFoundError, match="image"):
        od_fixture.predict(empty[["annotations"]])
