"""Core ML export of the object detector.

The pipeline (network + NonMaximumSuppression) cannot be converted to ONNX,
so it is checked in two parts: the network model (``spec.pipeline.models[0]``)
runs through ``coreml_check`` (Core ML -> ONNX -> onnxruntime) and must give
the decoded boxes of ``predict``; the NMS stage is replayed with a numpy
implementation of Core ML's NonMaximumSuppression that reads its thresholds
and class labels from the spec, and must keep exactly ``predict``'s boxes. A
negative control (objectness rows of two anchors swapped in the spec) must not
match.
"""

import copy

import numpy as np
import pytest

from _optional import require
import toolkit as tc
from toolkit.errors import ExportError, InvalidParameterError
from toolkit.object_detector import _detection

require(("coremltools", "the Core ML check needs coremltools"),
        ("onnxmltools", "the Core ML check needs onnxmltools==1.11.2"),
        ("onnxruntime", "the Core ML check needs onnxruntime"))

from coreml_check import CoreMLRunner, load_spec  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    train = tc.datasets.detection_scenes(24, random_seed=11)
    model = tc.object_detector.create(train, max_iterations=60, verbose=False, random_seed=0)
    scenes = tc.datasets.detection_scenes(4, split="test", random_seed=12)
    folder = tmp_path_factory.mktemp("odcoreml")
    path = str(folder / "Detector.mlmodel")
    model.export_coreml(path, iou_threshold=0.4, confidence_threshold=0.05)
    spec = load_spec(path)
    runner = CoreMLRunner(spec.pipeline.models[0])
    return model, scenes, spec, runner, folder


def _raw(model, scenes):
    return np.concatenate([r for _, r, _ in model._raw(scenes.image.to_numpy(), "image",
                                                        scenes.index)])


def _coreml_nms(conf, coords, nms_spec, iou=None, conf_t=None):
    """Core ML's NonMaximumSuppression (class-agnostic), thresholds from the spec."""
    p = nms_spec.nonMaximumSuppression
    iou = p.iouThreshold if iou is None else iou
    conf_t = p.confidenceThreshold if conf_t is None else conf_t
    score = conf.max(axis=1)
    order = [i for i in np.argsort(-score, kind="mergesort") if score[i] >= conf_t]
    kept = []
    for i in order:
        if all(_detection.iou_matrix(coords[i:i + 1], coords[j:j + 1])[0, 0] <= iou
               for j in kept):
            kept.append(i)
    labels = list(p.stringClassLabels.vector)
    return conf[kept], coords[kept], labels


def test_pipeline_structure_and_metadata(setup):
    model, _, spec, _, _ = setup
    assert spec.WhichOneof("Type") == "pipeline" and spec.specificationVersion == 3
    nn, nms = spec.pipeline.models
    assert nn.WhichOneof("Type") == "neuralNetwork"
    assert nms.WhichOneof("Type") == "nonMaximumSuppression"
    assert [f.name for f in spec.description.input] == ["image", "iouThreshold",
                                                        "confidenceThreshold"]
    assert [f.name for f in spec.description.output] == ["confidence", "coordinates"]
    assert spec.description.input[1].type.isOptional
    p = nms.nonMaximumSuppression
    assert abs(p.iouThreshold - 0.4) < 1e-12 and abs(p.confidenceThreshold - 0.05) < 1e-12
    assert list(p.stringClassLabels.vector) == model.classes
    meta = spec.description.metadata.userDefined
    assert meta["task"] == "object_detector" and meta["classes"] == ",".join(model.classes)
    assert meta["include_non_maximum_suppression"] == "True"
    assert "Boxes" in spec.description.output[1].shortDescription
    N = 9 * 7 * 7
    assert list(nn.description.output[0].type.multiArrayType.shape) == [N, len(model.classes)]


def test_network_part_equals_predict_decoding(setup):
    model, scenes, _, runner, _ = setup
    raws = _raw(model, scenes)
    worst = 0.0
    for img, raw in zip(scenes.image, raws):
        out = runner.run({"image": img.transpose(2, 0, 1).astype(np.float32)})
        coords, conf = _detection.decode(raw, model.anchors, len(model.classes))
        got_coords = out["raw_coordinates"].reshape(coords.shape)
        got_conf = out["raw_confidence"].reshape(conf.shape)
        worst = max(worst, np.abs(got_coords - coords).max(), np.abs(got_conf - conf).max())
    assert worst < 1e-3, worst


def test_nms_stage_keeps_predict_boxes(setup):
    model, scenes, spec, runner, _ = setup
    preds = model.predict(scenes, confidence_threshold=0.05, iou_threshold=0.4)
    total = 0
    for img, dets in zip(scenes.image, preds):
        out = runner.run({"image": img.transpose(2, 0, 1).astype(np.float32)})
        conf, coords, labels = _coreml_nms(out["raw_confidence"].reshape(-1, len(model.classes)),
                                           out["raw_coordinates"].reshape(-1, 4),
                                           spec.pipeline.models[1])
        assert len(conf) == len(dets)
        total += len(dets)
        clipped = _detection.clip_relative(coords) * 224   # apps clip to the image, as predict
        for d, c, b in zip(dets, conf, clipped):
            assert labels[int(np.argmax(c))] == d["label"]
            assert abs(c.max() - d["confidence"]) < 1e-4
            np.testing.assert_allclose(
                b, [d["coordinates"][k] for k in ("x", "y", "width", "height")], atol=0.05)
    assert total > 0


def test_negative_control_swapped_anchor_rows_differ(setup):
    model, scenes, spec, _, _ = setup
    nn = copy.deepcopy(spec.pipeline.models[0])
    layers = {l.name: l for l in nn.neuralNetwork.layers}
    a, b = layers["out_obj0"].convolution, layers["out_obj4"].convolution
    wa, wb = list(a.weights.floatValue), list(b.weights.floatValue)
    a.weights.ClearField("floatValue")
    a.weights.floatValue.extend(wb)
    b.weights.ClearField("floatValue")
    b.weights.floatValue.extend(wa)
    img = scenes.image[0]
    out = CoreMLRunner(nn).run({"image": img.transpose(2, 0, 1).astype(np.float32)})
    _, conf = _detection.decode(_raw(model, scenes.iloc[:1])[0], model.anchors,
                                len(model.classes))
    assert np.abs(out["raw_confidence"].reshape(conf.shape) - conf).max() > 1e-3


def test_export_without_nms_and_errors(setup):
    model, scenes, _, _, folder = setup
    path = str(folder / "Raw.mlmodel")
    model.export_coreml(path, include_non_maximum_suppression=False)
    spec = load_spec(path)
    assert spec.WhichOneof("Type") == "neuralNetwork"
    assert [f.name for f in spec.description.output] == ["confidence", "coordinates"]
    out = CoreMLRunner(spec).run({"image": scenes.image[1].transpose(2, 0, 1)
                                  .astype(np.float32)})
    assert out["confidence"].reshape(-1, len(model.classes)).shape[0] == 441
    with pytest.raises(ExportError, match="does not exist"):
        model.export_coreml(str(folder / "missing" / "x.mlmodel"))
    with pytest.raises(InvalidParameterError, match="iou_threshold"):
        model.export_coreml(str(folder / "y.mlmodel"), iou_threshold=2)
    with pytest.raises(InvalidParameterError, match="include_non_maximum_suppression"):
        model.export_coreml(str(folder / "y.mlmodel"), include_non_maximum_suppression="yes")
