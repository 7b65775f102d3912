"""The image classifier's feature pooling: create(pooling='auto' | 'avg' | 'grid').

A grid model reads 11,520 features (3x3 grid of the head's 7x7 map) instead of the
1280-d global average: predict, extract_features, save/load, both exports, resume and
the 'auto' choice are checked here.
"""


import numpy as np
import pytest

import _image_data as D
import toolkit as tc
from toolkit.errors import DataError, InvalidParameterError
from toolkit.image_classifier import _data, _net, _train

from _resume_harness import check_resumed_equals_uninterrupted

GRID = _net.num_features("grid")


@pytest.fixture(scope="module")
def three_digits():
    data = D.digits()
    small = data[data["label"] < 3]
    return small.groupby("label").head(12), small.groupby("label").tail(6)


@pytest.fixture(scope="module")
def grid_model(three_digits):
    train, _ = three_digits
    return tc.image_classifier.create(train, target="label", verbose=False, random_seed=0,
                                      max_iterations=30, pooling="grid")


def _pixels(test):
    from toolkit import _images
    return [_images.to_rgb_array(img, _net.IMAGE_SIZE) for img in test["image"]] + D.photos()


def _probs(model, data):
    return np.stack(model.predict(data, output_type="probability_vector"))


def _tempered(model, factor=200.0):
    """The model with its logits divided by ``factor``: its probabilities are not saturated,
    so comparing them tests the exported classifier's columns, not just the argmax."""
    from toolkit._mx import get_weights
    from toolkit.image_classifier import ImageClassifier
    weights = get_weights(model._net)
    for name in (_net.CLASSIFIER_WEIGHT, _net.CLASSIFIER_BIAS):
        weights[name] = weights[name] / np.float32(factor)
    net = _net.build(len(model.classes), weights=weights, pooling=model.pooling)
    return ImageClassifier(model._state, net)


def test_grid_model_predicts_saves_and_loads(grid_model, three_digits, tmp_path):
    _, test = three_digits
    assert grid_model.pooling == "grid" and grid_model.num_features == GRID == 11520
    assert grid_model.feature_extractor.num_features == GRID
    assert grid_model.classifier["coefficients"].shape == (3, GRID)
    probs = _probs(grid_model, test)
    assert grid_model.evaluate(test)["accuracy"] >= 0.8
    # The features the classifier reads, given back as input, give the same predictions.
    feats = grid_model.extract_features(test)
    assert feats.shape == (len(test), GRID)
    np.testing.assert_allclose(_probs(grid_model, test.assign(image=list(feats))), probs,
                               rtol=0, atol=1e-6)
    path = str(tmp_path / "grid.model")
    grid_model.save(path)
    loaded = tc.load_model(path)
    assert loaded.pooling == "grid"
    np.testing.assert_array_equal(_probs(loaded, test), probs)
    assert "grid" in grid_model.summary(output="str")


def test_grid_features_are_the_windowed_averages_of_the_head_map(three_digits):
    """The grid is 3x3 windows (stride 2) of the 7x7 map, flattened channel-major: the
    order the classifier's columns and both exports follow."""
    _, test = three_digits
    from toolkit.pretrained import load_efficientnet_lite0
    mx = pytest.importorskip("mxnet")
    net = _net.build_backbone(weights=load_efficientnet_lite0())
    x = mx.nd.array(np.stack(_pixels(test)[:2]).transpose(0, 3, 1, 2) / 127.5 - 1)
    head = net.trace(x)["head"]                                 # (2, 1280, 7, 7)
    _net.set_pooling(net, "grid")
    grid = net(x).asnumpy()
    cells = [head[:, :, r:r + 3, c:c + 3].mean(axis=(2, 3)) for r in (0, 2, 4) for c in (0, 2, 4)]
    expected = np.stack(cells, axis=2).reshape(2, -1)           # channel-major, then cell
    np.testing.assert_allclose(grid, expected, rtol=0, atol=1e-5)
    _net.set_pooling(net, "avg+grid")
    both = net(x).asnumpy()
    np.testing.assert_allclose(both[:, :1280], head.mean(axis=(2, 3)), rtol=0, atol=1e-5)
    np.testing.assert_allclose(both[:, 1280:], grid, rtol=0, atol=1e-5)


def test_grid_onnx_export_matches_predict_and_features(grid_model, three_digits, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    _, test = three_digits
    grid_model = _tempered(grid_model)
    path = str(tmp_path / "grid.onnx")
    grid_model.export_onnx(path)
    model = onnx.load(path)
    model.graph.output.append(onnx.helper.make_tensor_value_info(
        "/pool/flat", onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString())
    pixels = _pixels(test)
    x = np.stack(pixels).transpose(0, 3, 1, 2).astype(np.float32)
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, {"image": x})))
    expected = _probs(grid_model, D.as_frame(pixels))
    assert np.abs(out["labelProbability"] - expected).max() < 1e-4
    assert ((expected > 0.01) & (expected < 0.99)).any()        # not all saturated
    feats = grid_model.extract_features(D.as_frame(pixels))
    assert np.abs(out["/pool/flat"] - feats).max() < 1e-3 * max(1.0, np.abs(feats).max())


def test_grid_coreml_export_matches_predict(grid_model, three_digits, tmp_path):
    pytest.importorskip("onnxruntime")
    from coreml_check import CoreMLRunner
    _, test = three_digits
    grid_model = _tempered(grid_model)
    path = str(tmp_path / "grid.mlmodel")
    grid_model.export_coreml(path)
    runner = CoreMLRunner(path)
    pixels = _pixels(test)
    got = np.stack([runner.run({"image": p.transpose(2, 0, 1).astype(np.float32)})
                    ["labelProbability"] for p in pixels])
    expected = _probs(grid_model, D.as_frame(pixels))
    assert ((expected > 0.01) & (expected < 0.99)).any()        # not all saturated
    assert np.abs(got - expected).max() < 1e-4


def test_auto_pooling_measures_and_reports_its_choice(capsys):
    """With 200+ training images 'auto' cross-validates both poolings (here real digits,
    where the grid wins by far); below that it keeps the global average."""
    data = D.digits()
    train = data.iloc[::15]                                      # 334 images, 10 classes
    model = tc.image_classifier.create(train, target="label", verbose=True, random_seed=0,
                                       max_iterations=30, fine_tune=False,
                                       validation_set=None)
    out = capsys.readouterr().out
    assert "pooling='auto': 'grid'" in out, out[-2000:]
    assert model.pooling == "grid"
    small = data[data["label"] < 3].groupby("label").head(12)
    model = tc.image_classifier.create(small, target="label", verbose=True, random_seed=0,
                                       max_iterations=5)
    assert model.pooling == "avg"
    assert "pooling='auto': global average (36 training images" in capsys.readouterr().out


def _settings(seed=0):
    return _data.Settings(target="y", feature="x", model=_net.DEFAULT_MODEL, l2_penalty=0.01,
                          max_iterations=40, batch_size=64, verbose=False, random_seed=seed,
                          validation_set=None, l1_penalty=0.0, class_weights=None,
                          feature_rescaling=True, convergence_threshold=None,
                          input_kind=_data.IMAGES)


@pytest.mark.parametrize("informative", ["avg", "grid"])
def test_choose_pooling_keeps_the_part_that_predicts(informative):
    """Synthetic features: the label is in one part only; the choice follows it, and the
    returned matrices are that part's columns."""
    rng = np.random.RandomState(0)
    n, avg = 240, _net.num_features("avg")
    y = rng.randint(0, 2, n)
    x = rng.normal(size=(n, _net.num_features("avg+grid"))).astype(np.float32)
    cols = slice(0, 8) if informative == "avg" else slice(avg, avg + 8)
    x[:, cols] += 3.0 * y[:, None]
    # The other part alone is noise: it cannot beat the informative one by a point.
    pooling, train, valid = _train.choose_pooling("avg+grid", x, y, x[:10], _settings(), 2)
    assert pooling == informative
    part = slice(None, avg) if informative == "avg" else slice(avg, None)
    np.testing.assert_array_equal(train, x[:, part])
    np.testing.assert_array_equal(valid, x[:10, part])
    # The user's choice is kept as it is.
    assert _train.choose_pooling("grid", x, y, None, _settings(), 2)[0] == "grid"


def test_bad_pooling_arguments_and_inputs_are_refused(grid_model, three_digits):
    train, test = three_digits
    with pytest.raises(InvalidParameterError, match="'pooling' must be one of 'auto', 'avg', "
                                                    "'grid', got 'max'"):
        tc.image_classifier.create(train, target="label", pooling="max")
    deep = train.assign(deep_features=list(tc.image_analysis.get_deep_features(train["image"])))
    with pytest.raises(InvalidParameterError, match="pooling='grid' needs images"):
        tc.image_classifier.create(deep, target="label", feature="deep_features",
                                   pooling="grid")
    # Deep features (1280) to a grid model: the message names the pooling and the length.
    with pytest.raises(DataError, match="pooling='grid'.* reads 11520"):
        grid_model.predict(deep["deep_features"])


IC_GRID_SCRIPT = """
import sys
import numpy as np
import toolkit as tc
mode, ckpt, out = sys.argv[1:4]
digits = tc.datasets.mnist_digits()
train, test = digits.iloc[::80], digits.iloc[7::160]
kw = dict(target="label", max_iterations=150, random_seed=2, verbose=False,
          validation_set=None, pooling="grid", fine_tune=False)
if mode == "full":
    model = tc.image_classifier.create(train, **kw)
elif mode == "ckpt":
    model = tc.image_classifier.create(train, checkpoint_path=ckpt, checkpoint_every=1, **kw)
else:
    assert tc.load_model(ckpt).pooling == "grid"     # the checkpoint loads as a grid model
    model = tc.image_classifier.create(train, resume_from=ckpt, **dict(kw, verbose=True))
assert model.pooling == "grid"
np.save(out, np.stack(model.predict(test, output_type="probability_vector").to_numpy()))
"""


@pytest.mark.slow
def test_grid_model_killed_and_resumed_equals_uninterrupted(tmp_path):
    check_resumed_equals_uninterrupted(IC_GRID_SCRIPT, tmp_path, kill_at=10, iterations=150)


def test_grid_model_on_two_devices_equals_one(three_digits):
    """Extraction is split over the devices; the grid features and so the model are the same."""
    train, test = three_digits
    kw = dict(target="label", max_iterations=10, verbose=False, random_seed=1,
              pooling="grid")
    tc.config.set_devices(["cpu(0)", "cpu(1)"])
    try:
        two = tc.image_classifier.create(train, **kw)
    finally:
        tc.config.set_devices(None)
    one = tc.image_classifier.create(train, **kw)
    assert two.pooling == one.pooling == "grid"
    np.testing.assert_allclose(_probs(two, test), _probs(one, test), rtol=0, atol=1e-5)
