"""Object detector: generated scenes, create/predict/evaluate, pycocotools agreement,
save/load, bad input, drawing, the quokka photo and the frozen v1 fixture."""

import ast
import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import toolkit as tc
from toolkit import _model_file
from toolkit.errors import ToolkitWarning
from toolkit.errors import (ColumnNotFoundError, CorruptModelFileError, DataError,
                            InvalidParameterError)
from toolkit.object_detector import _detection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def scenes():
    return tc.datasets.detection_scenes(48, random_seed=0)


@pytest.fixture(scope="module")
def test_scenes():
    return tc.datasets.detection_scenes(16, split="test", random_seed=5)


@pytest.fixture(scope="module")
def model(scenes):
    return tc.object_detector.create(scenes, max_iterations=150, verbose=False, random_seed=0)


@pytest.fixture(scope="module")
def predictions(model, test_scenes):
    return model.predict(test_scenes, confidence_threshold=0.001)


# --- generated data -----------------------------------------------------------------------

def test_detection_scenes_boxes_are_exact_and_deterministic(tmp_path):
    a = tc.datasets.detection_scenes(6, random_seed=3)
    b = tc.datasets.detection_scenes(6, random_seed=3)
    assert list(a.columns) == ["image", "annotations"]
    for img1, img2, ann1, ann2 in zip(a.image, b.image, a.annotations, b.annotations):
        np.testing.assert_array_equal(img1, img2)
        assert ann1 == ann2
        assert img1.shape == (224, 224, 3) and img1.dtype == np.uint8
        assert 1 <= len(ann1) <= 3
        for inst in ann1:
            c = inst["coordinates"]
            assert inst["label"] in tc.datasets.DETECTION_CLASSES
            assert 0 <= c["x"] - c["width"] / 2 and c["x"] + c["width"] / 2 <= 224
            assert 0 <= c["y"] - c["height"] / 2 and c["y"] + c["height"] / 2 <= 224
    # Paths mode writes the same pixels to PNG files.
    c = tc.datasets.detection_scenes(6, random_seed=3, directory=str(tmp_path))
    from PIL import Image
    np.testing.assert_array_equal(np.asarray(Image.open(c.image[2])), a.image[2])
    # The pasted object is really there: a digit box differs from the plain background.
    with pytest.raises(InvalidParameterError, match="split"):
        tc.datasets.detection_scenes(2, split="val")


# --- create / predict ---------------------------------------------------------------------

def test_create_fields_and_progress_table(scenes, capsys):
    m = tc.object_detector.create(scenes.iloc[:8], max_iterations=3, verbose=True,
                                  random_seed=1)
    out = capsys.readouterr().out
    assert "Using 'annotations' as annotations column" in out
    assert "Setting 'batch_size' to 32" in out
    assert "| Iteration" in out and "| Loss" in out and "| Elapsed Time" in out
    assert m.classes == sorted({i["label"] for r in scenes.annotations[:8] for i in r})
    assert m.training_iterations == 3 and m.num_examples == 8
    assert m.num_bounding_boxes == sum(len(r) for r in scenes.annotations[:8])
    assert m.feature == "image" and m.annotations == "annotations"
    assert "ObjectDetector" in repr(m)


def test_learns_to_detect_held_out_objects(model, test_scenes):
    # A tiny model (48 scenes, 150 steps) already finds held-out objects on unseen
    # backgrounds; the benchmark trains a real one (mAP@0.5 >= 0.8).
    scores = model.evaluate(test_scenes)
    assert set(scores) == {"average_precision_50", "mean_average_precision_50"}
    assert scores["mean_average_precision_50"] > 0.3
    assert set(scores["average_precision_50"]) <= set(model.classes)


def test_predict_format(model, test_scenes, predictions):
    preds = model.predict(test_scenes)
    assert isinstance(preds, pd.Series) and len(preds) == len(test_scenes)
    assert (preds.index == test_scenes.index).all()
    assert sum(len(p) for p in preds) > 0
    for dets in preds:
        confs = [d["confidence"] for d in dets]
        assert confs == sorted(confs, reverse=True) and all(c >= 0.25 for c in confs)
        for d in dets:
            assert set(d) == {"label", "type", "coordinates", "confidence"}
            assert d["label"] in model.classes
            c = d["coordinates"]
            assert c["width"] > 0 and c["height"] > 0
            assert -1e-6 <= c["x"] - c["width"] / 2 and c["x"] + c["width"] / 2 <= 224 + 1e-6
        # Non-maximum suppression: no two kept boxes overlap more than 0.45 (NMS runs
        # before clipping to the image, so boxes touching the border are left out).
        boxes = np.array([[d["coordinates"][k] for k in ("x", "y", "width", "height")]
                          for d in dets]).reshape(-1, 4)
        inside = (boxes[:, 0] - boxes[:, 2] / 2 > 1e-6) & (boxes[:, 1] - boxes[:, 3] / 2 > 1e-6) \
            & (boxes[:, 0] + boxes[:, 2] / 2 < 224 - 1e-6) \
            & (boxes[:, 1] + boxes[:, 3] / 2 < 224 - 1e-6)
        boxes = boxes[inside]
        if len(boxes) > 1:
            iou = _detection.iou_matrix(boxes, boxes)
            np.fill_diagonal(iou, 0)
            assert iou.max() <= 0.45 + 1e-9
    # Lower thresholds give supersets; one image in, one list out.
    assert all(len(a) >= len(b) for a, b in zip(predictions, preds))
    single = model.predict(test_scenes.image[0])
    assert single == preds.iloc[0]
    # Coordinates scale with the image: the same scene at twice the size.
    from PIL import Image
    big = np.asarray(Image.fromarray(test_scenes.image[0]).resize((448, 448), Image.BILINEAR))
    assert len(model.predict(big)) >= 0


def test_save_load_round_trip(model, test_scenes, predictions, tmp_path):
    path = tmp_path / "det.model"
    model.save(path)
    mf = _model_file.read_model_file(path)
    assert mf.task == "object_detector" and mf.file_version == 1
    names = set(mf.tensors("weights"))
    assert {"head.conv1.weight", "head.out.bias", "backbone.stem.conv.weight"} <= names
    assert all(n.startswith(("backbone.", "head.")) for n in names)
    assert b"pickle" not in open(path, "rb").read()[:4096]
    loaded = tc.load_model(path)
    assert isinstance(loaded, tc.object_detector.ObjectDetector)
    assert loaded.classes == model.classes and loaded.anchors == model.anchors
    again = loaded.predict(test_scenes, confidence_threshold=0.001)
    for a, b in zip(predictions, again):
        assert [d["label"] for d in a] == [d["label"] for d in b]
        np.testing.assert_allclose([d["confidence"] for d in a], [d["confidence"] for d in b],
                                   atol=1e-5)


# --- evaluation vs pycocotools --------------------------------------------------------------

def _coco_ap(gt, preds, num_classes):
    """Per class AP@0.5 and AP@[.5:.95] with pycocotools' COCOeval."""
    import contextlib
    import io
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    images, anns, dets = [], [], []
    for i, (g, p) in enumerate(zip(gt, preds)):
        images.append({"id": i + 1, "width": 1000, "height": 1000})
        for c, x, y, w, h in np.asarray(g).reshape(-1, 5):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                         "bbox": [x - w / 2, y - h / 2, w, h], "area": w * h, "iscrowd": 0})
        for c, x, y, w, h, s in np.asarray(p).reshape(-1, 6):
            dets.append({"image_id": i + 1, "category_id": int(c) + 1,
                         "bbox": [x - w / 2, y - h / 2, w, h], "score": s})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        cdt = coco.loadRes(dets) if dets else COCO()
        ev = COCOeval(coco, cdt, "bbox")
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, 2]          # (T, R, K)
    out = np.full((10, num_classes), np.nan)
    for k in range(num_classes):
        p = prec[:, :, k]
        if (p > -1).any():
            out[:, k] = [np.mean(row[row > -1]) if (row > -1).any() else np.nan for row in p]
    return out


def test_average_precision_matches_pycocotools_on_random_boxes():
    pytest.importorskip("pycocotools")
    rng = np.random.RandomState(0)
    gt, preds = [], []
    for _ in range(30):
        g = []
        for _ in range(rng.randint(0, 5)):
            g.append([rng.randint(3), *rng.uniform(50, 400, 2), *rng.uniform(20, 150, 2)])
        gt.append(np.array(g).reshape(-1, 5))
        p = []
        for c, x, y, w, h in g:           # noisy copies of the truth, plus clutter
            for _ in range(rng.randint(0, 3)):
                p.append([c if rng.rand() < 0.8 else rng.randint(3),
                          x + rng.normal(0, 8), y + rng.normal(0, 8), w * rng.uniform(0.8, 1.2),
                          h * rng.uniform(0.8, 1.2), rng.uniform()])
        for _ in range(rng.randint(0, 4)):
            p.append([rng.randint(3), *rng.uniform(50, 400, 2), *rng.uniform(20, 150, 2),
                      rng.uniform()])
        preds.append(np.array(p).reshape(-1, 6))
    ours = _detection.average_precision(gt, preds, ["a", "b", "c"])
    theirs = _coco_ap(gt, preds, 3)
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, theirs, atol=1e-3)
    assert 0.2 < ours[0].mean() < 1.0 and ours[-1].mean() < ours[0].mean()


def test_evaluate_matches_pycocotools_on_model_predictions(model, test_scenes):
    pytest.importorskip("pycocotools")
    scores = model.evaluate(test_scenes, metric="all")
    gt, preds = model._gt_and_predictions(test_scenes, 0.001, None, False)
    theirs = _coco_ap(gt, preds, len(model.classes))
    for k, c in enumerate(model.classes):
        if c in scores["average_precision_50"]:
            assert abs(scores["average_precision_50"][c] - theirs[0, k]) <= 1e-3
            assert abs(scores["average_precision"][c] - theirs[:, k].mean()) <= 1e-3
    present = ~np.isnan(theirs[0])
    assert abs(scores["mean_average_precision_50"] - theirs[0, present].mean()) <= 1e-3
    assert abs(scores["mean_average_precision"] - theirs[:, present].mean()) <= 1e-3
    assert set(model.evaluate(test_scenes, metric="mean_average_precision")) == {
        "mean_average_precision"}
    with pytest.raises(InvalidParameterError, match="metric"):
        model.evaluate(test_scenes, metric="accuracy")


def test_average_precision_edge_cases():
    # Perfect predictions -> 1; no predictions -> 0; class without truth -> NaN (left out).
    gt = [np.array([[0, 50, 50, 20, 20]]), np.array([[0, 80, 80, 30, 10]])]
    perfect = [np.array([[0, 50, 50, 20, 20, 0.9]]), np.array([[0, 80, 80, 30, 10, 0.8]])]
    ap = _detection.average_precision(gt, perfect, ["a", "b"])
    np.testing.assert_allclose(ap[:, 0], 1.0)
    assert np.isnan(ap[:, 1]).all()
    none = [np.zeros((0, 6)), np.zeros((0, 6))]
    assert _detection.average_precision(gt, none, ["a"])[0, 0] == 0.0


# --- bad input ------------------------------------------------------------------------------

def _frame(scenes, anns):
    return pd.DataFrame({"image": list(scenes.image[:len(anns)]), "annotations": anns})


def test_malformed_annotations_list_up_to_five_rows(scenes):
    good = {"label": "face", "coordinates": {"x": 50, "y": 50, "width": 20, "height": 20}}
    bad = [[{"label": "face"}], "face", [{"label": "a", "coordinates": {"x": 1, "y": 1}}],
           [{"coordinates": {"x": 1, "y": 1, "width": 2, "height": 2}}],
           [{"label": "a", "coordinates": {"x": 1, "y": 1, "width": "2", "height": 2}}],
           [{"label": "a", "coordinates": {"x": 1, "y": 1, "width": 0, "height": 2}}],
           [good]]
    with pytest.raises(DataError) as e:
        tc.object_detector.create(_frame(scenes, bad), verbose=False)
    msg = str(e.value)
    assert "6 bad row(s)" in msg and "(and 1 more)" in msg
    assert "row 0" in msg and "row 4" in msg and "row 5" not in msg
    assert "A valid annotation is a dictionary" in msg and "'coordinates'" in msg
    # Zero-size box alone: reported too.
    with pytest.raises(DataError, match="zero or negative box size"):
        tc.object_detector.create(_frame(scenes, [[good], bad[5]]), verbose=False)


def test_single_dict_empty_list_clipping_and_unknown_labels(scenes):
    inside = {"label": "face", "coordinates": {"x": 60, "y": 60, "width": 40, "height": 40}}
    outside = {"label": "face", "coordinates": {"x": 220, "y": 60, "width": 40, "height": 40}}
    gone = {"label": "face", "coordinates": {"x": 400, "y": 60, "width": 40, "height": 40}}
    other = {"label": "dog", "coordinates": {"x": 60, "y": 60, "width": 40, "height": 40}}
    frame = _frame(scenes, [inside, [], [outside, gone], [other, inside]])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m = tc.object_detector.create(frame, classes=["face"], max_iterations=2, verbose=False)
    texts = [str(x.message) for x in w if issubclass(x.category, ToolkitWarning)]
    assert any("2 box(es)" in t and "clipped" in t and "1 of them" in t for t in texts), texts
    assert any("1 object(s)" in t and "not in 'classes'" in t for t in texts), texts
    assert m.classes == ["face"] and m.num_bounding_boxes == 3


def test_missing_columns_unreadable_images_and_empty_frame(scenes, model, tmp_path):
    frame = scenes.iloc[:4]
    with pytest.raises(ColumnNotFoundError):
        tc.object_detector.create(frame, feature="picture", verbose=False)
    with pytest.raises(DataError, match="No image column"):
        tc.object_detector.create(frame[["annotations"]], verbose=False)
    with pytest.raises(DataError, match="annotations column"):
        tc.object_detector.create(frame[["image"]], verbose=False)
    with pytest.raises(DataError, match="empty|0 rows"):
        tc.object_detector.create(frame.iloc[:0], verbose=False)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    broken = pd.DataFrame({"image": [str(bad)] + list(frame.image[1:]),
                           "annotations": list(frame.annotations)})
    with pytest.raises(DataError, match="broken.png"):
        tc.object_detector.create(broken, verbose=False)
    with pytest.raises(DataError, match="broken.png"):
        model.predict(broken)
    with pytest.raises(ColumnNotFoundError, match="image"):
        model.predict(frame.rename(columns={"image": "img"}))
    with pytest.raises(ColumnNotFoundError, match="annotations"):
        model.evaluate(frame[["image"]])
    with pytest.raises(DataError, match="no objects"):
        tc.object_detector.create(_frame(scenes, [[], []]), annotations="annotations",
                                  verbose=False)
    with pytest.raises(InvalidParameterError, match="confidence_threshold"):
        model.predict(frame, confidence_threshold=1.5)
    with pytest.raises(InvalidParameterError, match="model"):
        tc.object_detector.create(frame, model="darknet-yolo", verbose=False)


# --- drawing, quokka, fixture ---------------------------------------------------------------

def test_draw_bounding_boxes(scenes, model):
    from PIL import Image
    img = scenes.image[0]
    drawn = tc.object_detector.util.draw_bounding_boxes(img, scenes.annotations[0])
    assert isinstance(drawn, Image.Image) and drawn.size == (224, 224)
    assert (np.asarray(drawn) != img).any()
    np.testing.assert_array_equal(np.asarray(tc.object_detector.util.draw_bounding_boxes(
        img, [])), img)
    with pytest.raises(DataError, match="valid annotation"):
        tc.object_detector.util.draw_bounding_boxes(img, [{"label": "x"}])


def test_quokka_photo_predict_smoke(model):
    try:
        q = tc.datasets.quokka()
    except tc.datasets.DatasetNotAvailableError:
        pytest.skip("imgaug (pip install --no-deps imgaug==0.4.0) is not installed")
    box = q.annotations[0][0]
    assert box["label"] == "animal" and box["coordinates"]["width"] == 402.0
    preds = model.predict(q, confidence_threshold=0.01)
    assert len(preds) == 1
    for d in preds.iloc[0]:      # boxes in the photo's own pixels (960 wide, 643 high)
        c = d["coordinates"]
        assert c["x"] + c["width"] / 2 <= 960 + 1e-6 and c["y"] + c["height"] / 2 <= 643 + 1e-6
    # The one annotated photo is a valid (if tiny) training set.
    m = tc.object_detector.create(q, max_iterations=2, verbose=False)
    assert m.classes == ["animal"]


def test_damaged_stored_state_is_refused_naming_the_field():
    folder = os.path.join(ROOT, "tests", "fixtures", "object_detector", "v1")
    state, weights = tc.load_model(os.path.join(folder, "model.model"))._get_state()
    edits = {"classes": [state["classes"][0]] * 2, "model": "yolo-9000",
             "anchors": [[1.0, -2.0]], "grid_shape": [13, 13],
             "input_image_shape": [3, 416, 416], "non_maximum_suppression_threshold": 1.5}
    for key, value in edits.items():
        with pytest.raises(CorruptModelFileError, match=f"object detector.*'{key}'"):
            tc.object_detector.ObjectDetector._from_state(dict(state, **{key: value}), weights)
    missing = {k: v for k, v in state.items() if k != "annotations"}
    with pytest.raises(CorruptModelFileError, match="'annotations' is missing"):
        tc.object_detector.ObjectDetector._from_state(missing, weights)


def test_trains_and_predicts_from_image_files(tmp_path, model):
    files = tc.datasets.detection_scenes(6, random_seed=4, directory=str(tmp_path))
    assert isinstance(files.image[0], str) and files.image[0].endswith(".png")
    m = tc.object_detector.create(files, max_iterations=2, verbose=False, random_seed=0)
    assert m.num_examples == 6
    arrays = tc.datasets.detection_scenes(6, random_seed=4)
    by_path = model.predict(files, confidence_threshold=0.1)
    by_array = model.predict(arrays, confidence_threshold=0.1)
    assert [[d["label"] for d in p] for p in by_path] == \
        [[d["label"] for d in p] for p in by_array]


# --- package layout -------------------------------------------------------------------------

def _sibling_imports(path):
    """Modules of the same package that the module at ``path`` imports (any nesting)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module] if node.module else [a.name for a in node.names])
    return found


def test_package_imports_run_one_way_and_not_into_other_tasks():
    package = os.path.join(ROOT, "toolkit", "object_detector")
    graph = {name[:-3]: _sibling_imports(os.path.join(package, name))
             for name in os.listdir(package) if name.endswith(".py")}
    # No circle: repeatedly drop the modules that import nothing left.
    left = dict(graph)
    while left:
        leaves = [m for m, deps in left.items() if not deps & set(left)]
        assert leaves, f"import circle among {sorted(left)}"
        for m in leaves:
            del left[m]
    for exporter in ("_export", "_onnx_export"):
        assert not graph[exporter] & {"_model", "_train", "_data"}, graph[exporter]
    assert not graph["_net"] & {"_model", "_train", "_data", "_export", "_onnx_export"}
    code = ("import sys, toolkit.object_detector as od, toolkit.object_detector._train, "
            "toolkit.object_detector._onnx_export; "
            "sys.exit('toolkit.image_classifier' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
