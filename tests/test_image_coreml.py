"""Core ML export of the image classifier, checked numerically against predict.

The exported model is converted to ONNX and run with onnxruntime
(``coreml_check``) on the same 224x224 RGB pixels that ``predict`` sees after
resizing: real photos and real digits. A negative control (the stem's
asymmetric padding mirrored) must not match, so the check can be trusted.
"""

import copy

import numpy as np
import pytest

import _image_data as D
from _optional import require
from toolkit.errors import ExportError, InvalidParameterError

require(("coremltools", "the Core ML check needs coremltools"),
        ("onnxmltools", "the Core ML check needs onnxmltools==1.11.2"),
        ("onnxruntime", "the Core ML check needs onnxruntime"))

from coreml_check import CoreMLRunner, load_spec  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 3-class digits model (int labels), its export and an ONNX runner."""
    model = D.digits_model()
    path = str(tmp_path_factory.mktemp("coreml") / "Digits.mlmodel")
    model.export_coreml(path)
    return model, path, CoreMLRunner(path)


@pytest.fixture(scope="module")
def pixels():
    """Real images as the 224x224 RGB pixels predict() works on: photos and digits."""
    from toolkit import _images
    digits = D.digits()
    picks = [digits["image"][i] for i in (0, 600, 1100, 1600, 4999)]
    return D.photos() + [_images.to_rgb_array(d, 224) for d in picks]


def _coreml_probs(runner, name, images):
    out = [runner.run({name: img.transpose(2, 0, 1).astype(np.float32)}) for img in images]
    return out


def test_export_matches_predict(exported, pixels):
    model, _, runner = exported
    expected = np.stack(model.predict(D.as_frame(pixels), output_type="probability_vector"))
    assert runner.class_labels == [0, 1, 2]
    outs = _coreml_probs(runner, "image", pixels)
    got = np.stack([o["labelProbability"] for o in outs])
    diff = np.abs(got - expected).max()
    assert diff < TOL, diff
    # The probabilities are not all saturated: the comparison is meaningful.
    assert ((expected > 0.01) & (expected < 0.99)).any()
    assert [int(o["label"]) for o in outs] == list(model.predict(D.as_frame(pixels)))


def test_export_matches_features_through_a_tempered_classifier(exported, pixels):
    """Most probabilities above are saturated; dividing the exported classifier layer by a
    temperature makes every probability soft, so the comparison sees the backbone's
    features (1280 numbers per image) through all three outputs."""
    model, path, _ = exported
    feats = model.extract_features(D.as_frame(pixels))
    logits = feats @ model._w.T + model._b
    temperature = float(np.abs(logits).max() / 2)
    spec = copy.deepcopy(load_spec(path))
    (layer,) = [la for la in spec.neuralNetworkClassifier.layers if la.name == "classifier"]
    ip = layer.innerProduct
    w = np.array(ip.weights.floatValue, np.float32) / temperature
    b = np.array(ip.bias.floatValue, np.float32) / temperature
    ip.weights.ClearField("floatValue")
    ip.weights.floatValue.extend(w.tolist())
    ip.bias.ClearField("floatValue")
    ip.bias.floatValue.extend(b.tolist())
    z = logits / temperature
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert expected.min() > 0.01                   # every probability is soft
    got = np.stack([o["labelProbability"] for o in _coreml_probs(CoreMLRunner(spec), "image",
                                                                 pixels)])
    assert np.abs(got - expected).max() < TOL


def test_spec_contract(exported):
    model, path, _ = exported
    spec = load_spec(path)
    (inp,) = spec.description.input
    assert inp.name == "image" and inp.type.WhichOneof("Type") == "imageType"
    img = inp.type.imageType
    assert (img.width, img.height) == (224, 224)
    assert img.colorSpace == img.RGB
    nn = spec.neuralNetworkClassifier
    (pre,) = nn.preprocessing
    assert pre.featureName == "image"
    assert pre.scaler.channelScale == pytest.approx(1 / 127.5)
    assert (pre.scaler.redBias, pre.scaler.greenBias, pre.scaler.blueBias) == (-1, -1, -1)
    assert [o.name for o in spec.description.output] == ["labelProbability", "label"]
    kinds = {layer.WhichOneof("layer") for layer in nn.layers}
    assert "clip" not in kinds and "padding" not in kinds and "slice" not in kinds
    meta = spec.description.metadata.userDefined
    assert meta["task"] == "image_classifier" and meta["model"] == "efficientnet-lite0"
    assert meta["target"] == "label" and meta["file_version"] == str(model._FILE_VERSION)
    assert list(nn.int64ClassLabels.vector) == [0, 1, 2]


def test_negative_control_mirrored_padding_does_not_match(exported, pixels):
    """The check notices a wrong stride-2 padding (symmetric instead of TF "same")."""
    model, path, _ = exported
    spec = copy.deepcopy(load_spec(path))
    for layer in spec.neuralNetworkClassifier.layers:
        if layer.name == "stem_conv":
            for border in layer.convolution.valid.paddingAmounts.borderAmounts:
                border.startEdgeSize, border.endEdgeSize = border.endEdgeSize, \
                    border.startEdgeSize
    runner = CoreMLRunner(spec)
    got = np.stack([o["labelProbability"] for o in _coreml_probs(runner, "image", pixels)])
    expected = np.stack(model.predict(D.as_frame(pixels), output_type="probability_vector"))
    assert np.abs(got - expected).max() > 10 * TOL


def test_string_labels_and_export_errors(tmp_path):
    model = D.faces_model()
    path = tmp_path / "Faces.mlmodel"
    model.export_coreml(path)
    spec = load_spec(str(path))
    assert list(spec.neuralNetworkClassifier.stringClassLabels.vector) == ["face", "not_face"]
    with pytest.raises(ExportError, match="does not exist"):
        model.export_coreml(tmp_path / "no_dir" / "x.mlmodel")
    with pytest.raises(InvalidParameterError):
        model.export_coreml(42)
    clash = copy.copy(model)
    clash._state = dict(model._state, feature="labelProbability")
    with pytest.raises(ExportError, match="share its name"):
        clash.export_coreml(tmp_path / "clash.mlmodel")
