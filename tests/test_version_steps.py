"""One declaration of a file-version step migrates model files and checkpoints alike.

The trainable test task (tests/_trainable_task.py) goes from version 1 to version 2 by
renaming a layer. A run checkpointed under version 1 and resumed under version 2 must end
where an uninterrupted run ends; a step that renames only the weights (the old way) must
make resuming stop with a CheckpointError naming the arrays, never train on silently.
"""

import numpy as np
import pytest

import toolkit as tc
from toolkit import _model
from toolkit.errors import CheckpointError

import _trainable_task as T

ITERS, HALF = 30, 12


@pytest.fixture
def xy():
    return T.data()


@pytest.fixture
def v1_checkpoint(xy, tmp_path, monkeypatch):
    v1 = T.task_class(1)
    T.register(monkeypatch, v1)
    path = str(tmp_path / "v1.ckpt")
    assert T.create(v1, *xy, ITERS, checkpoint_path=path, stop_after=HALF) is None
    return path


def test_v1_checkpoint_resumed_under_v2_equals_the_uninterrupted_run(xy, v1_checkpoint,
                                                                     monkeypatch):
    v2 = T.task_class(2)
    T.register(monkeypatch, v2)
    whole = T.create(v2, *xy, ITERS)
    resumed = T.create(v2, *xy, ITERS, resume_from=v1_checkpoint)
    np.testing.assert_allclose(resumed.predict(xy[0]), whole.predict(xy[0]), rtol=0, atol=1e-5)
    assert sorted(resumed._get_state()[1]) == ["layer1.bias", "layer1.weight", "out.bias",
                                                "out.weight"]


def test_the_same_step_migrates_the_checkpoint_arrays_and_counts(v1_checkpoint, monkeypatch):
    from toolkit import _checkpoint
    T.register(monkeypatch, T.task_class(2))
    ckpt = _checkpoint.read(v1_checkpoint, T.TASK)
    assert "optimizer/layer1.weight/0" in ckpt.arrays
    assert not any("hidden" in k for k in ckpt.arrays)
    assert "layer1.weight" in ckpt.extra["optimizer"]["counts"]
    assert sorted(ckpt.weights)[:2] == ["layer1.bias", "layer1.weight"]


def test_a_weights_only_step_makes_resuming_refuse_instead_of_training_wrong(
        xy, v1_checkpoint, monkeypatch):
    old_style = T.task_class(2, step=T._rename_weights_only)
    T.register(monkeypatch, old_style)
    # The model side of the file still migrates...
    assert tc.load_model(v1_checkpoint).predict(xy[0]).shape == (len(xy[0]), 3)
    # ...but the optimizer's arrays keep their old names: refused, naming them.
    with pytest.raises(CheckpointError, match="hidden.weight"):
        T.create(old_style, *xy, ITERS, resume_from=v1_checkpoint)


def test_stray_training_arrays_are_refused(xy, v1_checkpoint, monkeypatch, tmp_path):
    from toolkit import _checkpoint
    T.register(monkeypatch, T.task_class(1))
    ckpt = _checkpoint.read(v1_checkpoint, T.TASK)
    arrays = dict(ckpt.arrays, **{"average/hidden.weight": ckpt.weights["hidden.weight"]})
    path = str(tmp_path / "extra.ckpt")
    mf = _model.open_model_file(v1_checkpoint)
    _checkpoint.write(path, T.TASK, 1, mf.state, ckpt.weights, ckpt.position, ckpt.config,
                      ckpt.info["data_fingerprint"], rng=ckpt.rng(), extra=ckpt.extra,
                      arrays=arrays)
    with pytest.raises(CheckpointError, match="average/hidden.weight"):
        T.create(T.task_class(1), *xy, ITERS, resume_from=path)


def test_v1_model_file_loads_under_v2_with_the_same_predictions(xy, tmp_path, monkeypatch):
    v1 = T.task_class(1)
    T.register(monkeypatch, v1)
    model = T.create(v1, *xy, 5)
    path = str(tmp_path / "m.model")
    model.save(path)
    T.register(monkeypatch, T.task_class(2))
    loaded = tc.load_model(path)
    np.testing.assert_array_equal(loaded.predict(xy[0]), model.predict(xy[0]))
    assert "layer1.weight" in loaded._get_state()[1]


def test_upgrade_command_renames_the_checkpoint_arrays_too(xy, v1_checkpoint, monkeypatch,
                                                           tmp_path):
    import io
    from toolkit import __main__ as cli
    v2 = T.task_class(2)
    T.register(monkeypatch, v2)
    upgraded = str(tmp_path / "v2.ckpt")
    out = io.StringIO()
    cli.upgrade(v1_checkpoint, upgraded, out=out)
    assert "version 1 -> 2: The hidden layer is called layer1." in out.getvalue()
    assert _model.open_model_file(upgraded).file_version == 2
    whole = T.create(v2, *xy, ITERS)
    resumed = T.create(v2, *xy, ITERS, resume_from=upgraded)
    np.testing.assert_allclose(resumed.predict(xy[0]), whole.predict(xy[0]), rtol=0, atol=1e-5)
