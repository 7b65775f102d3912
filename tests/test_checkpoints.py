"""Resumable training (checkpoints) of the activity and image classifiers.

The object detector's checkpoint tests live in test_object_detector_training.py.
"""

import shutil
import subprocess
import sys

import numpy as np
import pytest

import toolkit as tc
from toolkit import _checkpoint, _model, _model_file
from toolkit.errors import CheckpointMismatchError, InvalidParameterError, UnsupportedVersionError

from _resume_harness import check_resumed_equals_uninterrupted
from conftest import WATCH_FEATURES

AC_SCRIPT = """
import sys
import numpy as np
import toolkit as tc
mode, ckpt, out = sys.argv[1:4]
data = tc.datasets.watch_sessions()
ids = sorted(data["session_id"].unique())[:8]
train = data[data["session_id"].isin(ids)].drop(columns="subject").reset_index(drop=True)
test = data[data["session_id"].isin(sorted(data["session_id"].unique())[-3:])]
test = test.drop(columns="subject")
kw = dict(session_id="session_id", target="exercise", prediction_window=20,
          max_iterations=20, batch_size=16, random_seed=5, verbose=False)
if mode == "full":
    model = tc.activity_classifier.create(train, **kw)
elif mode == "ckpt":
    model = tc.activity_classifier.create(train, checkpoint_path=ckpt, checkpoint_every=1, **kw)
else:
    model = tc.activity_classifier.create(train, resume_from=ckpt, **dict(kw, verbose=True))
np.save(out, np.stack(model.predict(test, output_type="probability_vector").to_numpy()))
"""

IC_SCRIPT = """
import sys
import numpy as np
import toolkit as tc
mode, ckpt, out = sys.argv[1:4]
digits = tc.datasets.mnist_digits()
train, test = digits.iloc[::80], digits.iloc[7::160]
kw = dict(target="label", max_iterations=150, random_seed=2, verbose=False,
          validation_set=None)
if mode == "full":
    model = tc.image_classifier.create(train, **kw)
elif mode == "ckpt":
    model = tc.image_classifier.create(train, checkpoint_path=ckpt, checkpoint_every=1, **kw)
else:
    model = tc.image_classifier.create(train, resume_from=ckpt, **dict(kw, verbose=True))
np.save(out, np.stack(model.predict(test, output_type="probability_vector").to_numpy()))
"""


# Killed before the weight averaging of the second half starts, and during it (the
# running average is restored from the checkpoint onto the device).
@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [4, 14])
def test_activity_classifier_killed_and_resumed_equals_uninterrupted(tmp_path, kill_at):
    check_resumed_equals_uninterrupted(AC_SCRIPT, tmp_path, kill_at=kill_at, iterations=20)


@pytest.mark.slow
def test_image_classifier_killed_and_resumed_equals_uninterrupted(tmp_path):
    check_resumed_equals_uninterrupted(IC_SCRIPT, tmp_path, kill_at=10, iterations=150)


# --- in-process behaviour (activity classifier: fast) -------------------------------------

AC_KW = dict(session_id="session_id", target="exercise", features=WATCH_FEATURES,
             prediction_window=20, max_iterations=4, batch_size=16, random_seed=0,
             verbose=False)


@pytest.fixture(scope="module")
def ac_checkpoint(watch_small, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "run.ckpt"
    model = tc.activity_classifier.create(watch_small, checkpoint_path=str(path),
                                          checkpoint_every=1, **AC_KW)
    return str(path), model


def test_checkpointing_does_not_change_training(watch_small, ac_checkpoint):
    _, with_checkpoints = ac_checkpoint
    plain = tc.activity_classifier.create(watch_small, **AC_KW)
    a = np.stack(plain.predict(watch_small, output_type="probability_vector"))
    b = np.stack(with_checkpoints.predict(watch_small, output_type="probability_vector"))
    np.testing.assert_array_equal(a, b)


def test_resuming_a_finished_checkpoint_returns_the_same_model(watch_small, ac_checkpoint,
                                                               capsys, tmp_path):
    model = ac_checkpoint[1]
    path = str(tmp_path / "copy.ckpt")            # resuming writes to the file it resumes
    shutil.copy(ac_checkpoint[0], path)
    again = tc.activity_classifier.create(watch_small, resume_from=path,
                                          **dict(AC_KW, verbose=True))
    assert "Resuming from checkpoint" in capsys.readouterr().out
    np.testing.assert_allclose(
        np.stack(again.predict(watch_small, output_type="probability_vector")),
        np.stack(model.predict(watch_small, output_type="probability_vector")),
        rtol=0, atol=1e-6)


def test_checkpoint_loads_as_a_model_for_prediction(watch_small, ac_checkpoint):
    path, _ = ac_checkpoint
    model = tc.load_model(path)
    assert isinstance(model, tc.activity_classifier.ActivityClassifier)
    probs = np.stack(model.predict(watch_small, output_type="probability_vector"))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert _model.open_model_file(path).kind == "checkpoint"


def test_info_shows_the_training_position(ac_checkpoint):
    path, _ = ac_checkpoint
    out = subprocess.run([sys.executable, "-m", "toolkit", "info", path], capture_output=True,
                         text=True, check=True).stdout
    assert "kind                : checkpoint" in out or "checkpoint" in out
    assert "training position" in out and "iteration 4 of 4" in out


@pytest.mark.parametrize("change, name", [({"batch_size": 8}, "batch_size"),
                                          ({"prediction_window": 10}, "prediction_window"),
                                          ({"max_iterations": 9}, "max_iterations"),
                                          ({"random_seed": 1}, "random_seed")])
def test_resume_with_other_settings_is_refused(watch_small, ac_checkpoint, change, name):
    path, _ = ac_checkpoint
    with pytest.raises(CheckpointMismatchError) as e:
        tc.activity_classifier.create(watch_small, resume_from=path, **dict(AC_KW, **change))
    msg = str(e.value)
    assert name in msg and f"given {change[name]}" in msg and path in msg


def test_resume_on_other_data_warns_and_trains(watch_small, ac_checkpoint, tmp_path):
    # A copy: resuming writes checkpoints to the file it resumes from.
    path = str(tmp_path / "copy.ckpt")
    shutil.copy(ac_checkpoint[0], path)
    # The same sessions with the last 100 rows of one of them gone.
    first = watch_small["session_id"].iloc[0]
    last_rows = watch_small.index[watch_small["session_id"] == first][-100:]
    other = watch_small.drop(index=last_rows)
    with pytest.warns(tc.errors.ToolkitWarning, match="differs from the data"):
        model = tc.activity_classifier.create(other, resume_from=path, **AC_KW)
    assert model.training_iterations == AC_KW["max_iterations"]


def test_resume_from_a_model_file_or_another_task_is_refused(watch_small, tiny_model_path,
                                                             tmp_path):
    with pytest.raises(CheckpointMismatchError, match="not a training checkpoint"):
        tc.activity_classifier.create(watch_small, resume_from=tiny_model_path, **AC_KW)
    digits = tc.datasets.mnist_digits().iloc[::250]
    path = tmp_path / "ic.ckpt"
    tc.image_classifier.create(digits, target="label", max_iterations=2, verbose=False,
                               checkpoint_path=str(path), checkpoint_every=1)
    with pytest.raises(CheckpointMismatchError, match="checkpoint of the image_classifier task"):
        tc.activity_classifier.create(watch_small, resume_from=str(path), **AC_KW)


def _rewrite_checkpoint_info(src, dst, **changes):
    mf = _model.open_model_file(src)
    header = dict(mf.header)
    header["checkpoint"] = dict(header["checkpoint"], **changes)
    header.pop("sections")
    _model_file.atomic_write(dst, _model_file.serialize(header, dict(mf.sections)))


def test_newer_checkpoint_layout_is_refused_with_upgrade_advice(watch_small, ac_checkpoint,
                                                                tmp_path):
    path, _ = ac_checkpoint
    newer = tmp_path / "newer.ckpt"
    _rewrite_checkpoint_info(path, newer, version=_checkpoint.CHECKPOINT_VERSION + 1)
    with pytest.raises(UnsupportedVersionError) as e:
        tc.activity_classifier.create(watch_small, resume_from=str(newer), **AC_KW)
    msg = str(e.value)
    assert f"version {_checkpoint.CHECKPOINT_VERSION + 1}" in msg and "pip install -U" in msg
    # The model part is still readable: load_model only needs the weights.
    assert tc.load_model(str(newer)) is not None


def test_older_checkpoint_layouts_go_through_the_migration_chain(ac_checkpoint, tmp_path,
                                                                 monkeypatch):
    path, _ = ac_checkpoint
    seen = []

    def v1_to_v2(info, arrays):
        seen.append(info["version"])
        return dict(info, renamed=True), arrays
    monkeypatch.setattr(_checkpoint, "CHECKPOINT_VERSION", 2)
    monkeypatch.setitem(_checkpoint._MIGRATIONS, 1, v1_to_v2)
    ckpt = _checkpoint.read(path, "activity_classifier")
    assert seen == [1] and ckpt.info["renamed"] and ckpt.info["version"] == 2


def test_upgrade_command_keeps_the_training_state(ac_checkpoint, tmp_path):
    path, _ = ac_checkpoint
    dst = tmp_path / "copy.ckpt"
    subprocess.run([sys.executable, "-m", "toolkit", "upgrade", path, str(dst)], check=True,
                   capture_output=True)
    a = _checkpoint.read(path, "activity_classifier")
    b = _checkpoint.read(str(dst), "activity_classifier")
    assert a.position == b.position and a.config == b.config
    assert sorted(a.arrays) == sorted(b.arrays)
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k])


@pytest.mark.parametrize("bad", [0, -1, 1.5, "soon", "10 parsecs", True, None])
def test_bad_checkpoint_every_is_refused(watch_small, tmp_path, bad):
    with pytest.raises(InvalidParameterError, match="checkpoint_every"):
        tc.activity_classifier.create(watch_small, checkpoint_path=str(tmp_path / "c"),
                                      checkpoint_every=bad, **AC_KW)


def test_unwritable_checkpoint_path_is_refused_before_training(watch_small, tmp_path):
    with pytest.raises(InvalidParameterError, match="is a directory"):
        tc.activity_classifier.create(watch_small, checkpoint_path=str(tmp_path), **AC_KW)
    with pytest.raises(InvalidParameterError, match="does not exist"):
        tc.activity_classifier.create(watch_small, checkpoint_path=str(tmp_path / "no" / "c"),
                                      **AC_KW)


def test_missing_resume_file_is_a_clear_error(watch_small, tmp_path):
    with pytest.raises(tc.errors.ModelFileNotFoundError):
        tc.activity_classifier.create(watch_small, resume_from=str(tmp_path / "gone.ckpt"),
                                      **AC_KW)


def test_checkpoint_every_accepts_times():
    assert _checkpoint.parse_every("30s") == ("seconds", 30)
    assert _checkpoint.parse_every("10min") == ("seconds", 600)
    assert _checkpoint.parse_every("1h") == ("seconds", 3600)
    assert _checkpoint.parse_every(3) == ("iterations", 3)


def test_checkpoint_every_in_seconds_writes_on_time(watch_small, tmp_path):
    path = tmp_path / "timed.ckpt"
    tc.activity_classifier.create(watch_small, checkpoint_path=str(path),
                                  checkpoint_every="3600s", **AC_KW)
    # Never due within the run: only the final checkpoint is written.
    assert _checkpoint.read(str(path), "activity_classifier").position["iteration"] == 4


# --- several devices --------------------------------------------------------------------

@pytest.fixture
def two_cpus():
    tc.config.set_devices(["cpu(0)", "cpu(1)"])
    try:
        yield
    finally:
        tc.config.set_devices(None)


def test_activity_classifier_on_two_devices_equals_one(watch_small, two_cpus):
    two = tc.activity_classifier.create(watch_small, **AC_KW)
    tc.config.set_devices(None)
    one = tc.activity_classifier.create(watch_small, **AC_KW)
    np.testing.assert_allclose(
        np.stack(two.predict(watch_small, output_type="probability_vector")),
        np.stack(one.predict(watch_small, output_type="probability_vector")),
        rtol=0, atol=1e-5)
    from conftest import weights_of
    wa, wb = weights_of(one), weights_of(two)
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=0, atol=1e-5, err_msg=k)


def test_image_classifier_on_two_devices_equals_one(two_cpus):
    digits = tc.datasets.mnist_digits()
    train, test = digits.iloc[::125], digits.iloc[3::100]
    kw = dict(target="label", max_iterations=20, verbose=False, validation_set=None)
    two = tc.image_classifier.create(train, **kw)
    tc.config.set_devices(None)
    one = tc.image_classifier.create(train, **kw)
    # Probabilities, not raw weights: the stored weights act on raw features, i.e. are
    # divided by each feature's spread, which magnifies rounding where it is tiny.
    np.testing.assert_allclose(
        np.stack(two.predict(test, output_type="probability_vector")),
        np.stack(one.predict(test, output_type="probability_vector")), rtol=0, atol=1e-5)


def _lstm_optimizer_run():
    """A one-step Adam run over the activity network, whose LSTM packs four stored arrays
    in one parameter."""
    from toolkit import _training
    from toolkit._mx import mx
    from toolkit.activity_classifier import _net
    core, _, _ = _net.build(3, 4, 5)
    run = _training.setup(core, "adam", {"learning_rate": 1e-3}, use_cluster=False)
    with mx().autograd.record():
        total = sum((p.data() ** 2).sum() for p in core.collect_params().values()
                    if p.grad_req != "null")
    total.backward()
    run.trainer.step(1)
    return run


def test_packed_optimizer_state_is_stored_per_array_and_restored_whole():
    """Adam's moments of the packed LSTM vector go into checkpoints under the four stored
    arrays' names (as before the packing) and come back into one vector; a checkpoint
    missing one of them is refused with the name, not a KeyError."""
    from toolkit import _training
    from toolkit.errors import CheckpointError
    meta, arrays = _training.optimizer_arrays(_lstm_optimizer_run())
    names = {k.rsplit("/", 1)[0] for k in arrays}
    assert {"lstm.l0_i2h_weight", "lstm.l0_h2h_weight", "lstm.l0_i2h_bias",
            "lstm.l0_h2h_bias"} <= names and not any("packed" in n for n in names)
    assert arrays["lstm.l0_h2h_weight/1"].shape == (800, 200)
    fresh = _lstm_optimizer_run()
    assert _training.restore_optimizer(fresh, meta, arrays)
    meta2, arrays2 = _training.optimizer_arrays(fresh)
    assert meta2 == meta and arrays2.keys() == arrays.keys()
    for k in arrays:
        np.testing.assert_array_equal(arrays2[k], arrays[k])
    broken = {k: v for k, v in arrays.items() if k != "lstm.l0_h2h_bias/1"}
    with pytest.raises(CheckpointError, match="lstm.l0_h2h_bias/1"):
        _training.restore_optimizer(_lstm_optimizer_run(), meta, broken)
