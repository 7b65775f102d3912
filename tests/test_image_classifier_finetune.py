"""The image classifier's fine-tune path: create(fine_tune=...), resume, exports, 'auto'."""


import numpy as np
import pytest

import _image_data as D
import toolkit as tc
from toolkit.errors import InvalidParameterError
from toolkit.image_classifier import _finetune, _net

from _resume_harness import check_resumed_equals_uninterrupted

FT = {"epochs": 2}


@pytest.fixture(scope="module")
def three_digits():
    data = D.digits()
    small = data[data["label"] < 3]
    return small.groupby("label").head(12), small.groupby("label").tail(6)


@pytest.fixture(scope="module")
def tuned(three_digits):
    train, _ = three_digits
    return tc.image_classifier.create(train, target="label", verbose=False, random_seed=0,
                                      max_iterations=30, validation_set=None, fine_tune=FT)


def test_fine_tune_trains_the_last_block_and_predicts(tuned, three_digits, tmp_path):
    from toolkit.pretrained import load_efficientnet_lite0
    _, test = three_digits
    assert tuned.fine_tuned is True and tuned.fine_tune_epochs == 2
    pretrained = load_efficientnet_lite0()
    weights = tuned._get_state()[1]
    last = "blocks.15.project.conv.weight"
    first = "blocks.0.depthwise.conv.weight"
    # The trained block moved; the frozen front and the BN running statistics did not.
    assert np.abs(weights["backbone." + last] - pretrained[last]).max() > 1e-5
    np.testing.assert_array_equal(weights["backbone." + first], pretrained[first])
    np.testing.assert_array_equal(weights["backbone.blocks.15.project.bn.running_var"],
                                  pretrained["blocks.15.project.bn.running_var"])
    assert tuned.evaluate(test)["accuracy"] >= 0.7        # 3 classes: chance is 0.33
    # Stored like any model; the loaded one predicts the same.
    path = str(tmp_path / "tuned.model")
    tuned.save(path)
    loaded = tc.load_model(path)
    assert loaded.fine_tuned is True
    np.testing.assert_allclose(np.stack(loaded.predict(test, output_type="probability_vector")),
                               np.stack(tuned.predict(test, output_type="probability_vector")),
                               atol=1e-5)


def test_predict_uses_the_fine_tuned_weights(tuned, three_digits):
    """The compiled prediction graph is rebuilt after training: predict() equals a fresh
    network built from the stored weights, not the pretrained backbone."""
    _, test = three_digits
    state, weights = tuned._get_state()
    fresh = _net.build(3, weights=weights)
    from toolkit import _images
    x = _images.to_network_input(np.stack([_images.to_rgb_array(v, 224)
                                           for v in test["image"]]))
    expected = fresh(tc._mx.mx().nd.array(x)).asnumpy()
    got = np.stack(tuned.predict(test, output_type="probability_vector"))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_auto_keeps_tiny_data_on_the_frozen_path(three_digits, capsys):
    train, _ = three_digits
    model = tc.image_classifier.create(train, target="label", verbose=True, random_seed=0,
                                       max_iterations=5)
    assert model.fine_tuned is False and model.fine_tune_epochs is None
    assert "fine_tune='auto': frozen features (36 training" in capsys.readouterr().out
    assert _finetune.MIN_AUTO_TRAIN > len(train)


@pytest.mark.parametrize("bad, name", [("yes", "fine_tune"), ({"flop": True}, "flop"),
                                       ({"flip": 1}, "flip"), ({"blocks": 0}, "blocks"),
                                       ({"epochs": -1}, "epochs"), ({"mode": "x"}, "mode")])
def test_bad_fine_tune_options_are_refused_before_training(three_digits, bad, name):
    train, _ = three_digits
    with pytest.raises(InvalidParameterError, match=name):
        tc.image_classifier.create(train, target="label", verbose=False, fine_tune=bad)


def test_options_and_augmentation_are_deterministic():
    opts = _finetune.check_option({"flip": True})
    assert opts.mode is True and opts.flip and opts.crop and opts.jitter
    assert _finetune.check_option("auto").flip is False   # digits are not mirror-safe
    maps = np.random.RandomState(0).rand(4, 3, 7, 7).astype(np.float32)
    a = _finetune.augment(maps, opts, np.random.RandomState(1))
    b = _finetune.augment(maps, opts, np.random.RandomState(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == maps.shape and not np.allclose(a, maps)
    off = opts._replace(flip=False, crop=False, jitter=False)
    np.testing.assert_array_equal(_finetune.augment(maps, off, np.random.RandomState(1)), maps)
    # A full-area crop at the origin is the identity resampling.
    m = _finetune._resample_matrices(np.zeros(1), np.full(1, 7.0), 7)
    np.testing.assert_allclose(m[0], np.eye(7))


def test_fine_tune_true_is_refused_in_a_cluster(three_digits):
    from types import SimpleNamespace
    from toolkit.image_classifier import _data, _train
    settings = _data.Settings._make([None] * len(_data.Settings._fields))._replace(
        fine_tune=_finetune.check_option(True))
    with pytest.raises(InvalidParameterError, match="cluster"):
        _train.use_finetune(settings, None, SimpleNamespace(rank=0, num_workers=2))
    auto = settings._replace(fine_tune=_finetune.check_option("auto"))
    assert _train.use_finetune(auto, None, SimpleNamespace(rank=0, num_workers=2)) is False


# --- exports of a fine-tuned model --------------------------------------------------------

def test_onnx_export_of_a_fine_tuned_model_matches_predict(tuned, three_digits, tmp_path):
    pytest.importorskip("onnxruntime")
    from test_image_onnx import _session, prepare
    _, test = three_digits
    images = list(test["image"]) + D.photos()[:2]
    path = str(tmp_path / "tuned.onnx")
    tuned.export_onnx(path)
    got = _session(path).run([tuned.target + "Probability"],
                             {tuned.feature: np.stack([prepare(v) for v in images])})[0]
    expected = np.stack(tuned.predict(D.as_frame(images), output_type="probability_vector"))
    assert np.abs(got - expected).max() < 1e-4


def test_coreml_export_of_a_fine_tuned_model_matches_predict(tuned, three_digits, tmp_path):
    pytest.importorskip("coremltools")
    pytest.importorskip("onnxmltools")
    pytest.importorskip("onnxruntime")
    from coreml_check import CoreMLRunner
    from toolkit import _images
    _, test = three_digits
    pixels = [_images.to_rgb_array(v, 224) for v in test["image"]] + D.photos()[:2]
    path = str(tmp_path / "Tuned.mlmodel")
    tuned.export_coreml(path)
    runner = CoreMLRunner(path)
    got = np.stack([runner.run({"image": p.transpose(2, 0, 1).astype(np.float32)})
                    ["labelProbability"] for p in pixels])
    expected = np.stack(tuned.predict(D.as_frame(pixels), output_type="probability_vector"))
    assert np.abs(got - expected).max() < 1e-4


# --- exact resume ---------------------------------------------------------------------------

FT_SCRIPT = """
import sys
import numpy as np
import toolkit as tc
mode, ckpt, out = sys.argv[1:4]
digits = tc.datasets.mnist_digits()
train, test = digits.iloc[::100], digits.iloc[7::250]
kw = dict(target="label", max_iterations=20, random_seed=3, verbose=False,
          validation_set=None, fine_tune={"epochs": 6, "flip": True})
if mode == "full":
    model = tc.image_classifier.create(train, **kw)
elif mode == "ckpt":
    model = tc.image_classifier.create(train, checkpoint_path=ckpt, checkpoint_every=1, **kw)
else:
    assert tc.load_model(ckpt).fine_tuned       # the killed run's checkpoint loads as a model
    model = tc.image_classifier.create(train, resume_from=ckpt, **dict(kw, verbose=True))
assert model.fine_tuned
np.save(out, np.stack(model.predict(test, output_type="probability_vector").to_numpy()))
"""


@pytest.mark.slow
def test_fine_tune_killed_and_resumed_equals_uninterrupted(tmp_path):
    check_resumed_equals_uninterrupted(FT_SCRIPT, tmp_path, kill_at=2, iterations=6)


def test_fine_tune_on_two_devices_equals_one(three_digits):
    """Each batch is split over the devices with the whole batch's normaliser and BatchNorm
    keeps its running statistics, so two devices train the same model as one."""
    train, test = three_digits
    kw = dict(target="label", max_iterations=2, verbose=False, validation_set=None,
              random_seed=4, fine_tune={"epochs": 2, "flip": True})
    tc.config.set_devices(["cpu(0)", "cpu(1)"])
    try:
        two = tc.image_classifier.create(train, **kw)
    finally:
        tc.config.set_devices(None)
    one = tc.image_classifier.create(train, **kw)
    assert two.fine_tuned and one.fine_tuned
    np.testing.assert_allclose(
        np.stack(two.predict(test, output_type="probability_vector")),
        np.stack(one.predict(test, output_type="probability_vector")), rtol=0, atol=1e-5)
