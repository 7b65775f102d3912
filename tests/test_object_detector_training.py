"""Object detector training: checkpoints and resuming (#8), several devices and a
parameter-server cluster (#10).

Tiny data (12 generated scenes) and a few steps keep each training to seconds; the
kill-and-resume test runs three trainings in subprocesses (tests/_resume_harness.py).
Predictions are compared as every anchor's decoded box (relative coordinates, clipped to
the image) and class confidences.
"""

import os
import sys
import textwrap

import numpy as np
import pytest

import toolkit as tc
from toolkit import _model
from toolkit.errors import ToolkitWarning
from toolkit.errors import CheckpointMismatchError
from toolkit.object_detector import _detection

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _resume_harness import kill_and_resume  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_SCENES, DATA_SEED, ITERS, BATCH = 12, 3, 24, 8


@pytest.fixture(scope="module")
def scenes():
    return tc.datasets.detection_scenes(N_SCENES, random_seed=DATA_SEED)


def decoded(model, images):
    """Every anchor's box and class confidences for ``images``: (N, boxes, 4 + C).

    Boxes clipped to the image as ``predict`` reports them (an untrained anchor's
    raw size can be exp(9) cells, where float32 rounding alone moves it by 1e-2).
    """
    out = []
    for _, raw, _ in model._raw(images.to_numpy(), "image", images.index):
        for r in raw:
            coords, conf = _detection.decode(r, model.anchors, len(model.classes))
            out.append(np.concatenate([_detection.clip_relative(coords), conf], axis=1))
    return np.stack(out)


def train(scenes, **kw):
    return tc.object_detector.create(scenes, **{"max_iterations": 6, "batch_size": BATCH,
                                                "random_seed": 0, "verbose": False, **kw})


SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import toolkit as tc
from test_object_detector_training import decoded

mode, ckpt, out = sys.argv[1:4]
data = tc.datasets.detection_scenes({n}, random_seed={data_seed})
kw = dict(max_iterations={iters}, batch_size={batch}, random_seed=7, verbose=True)
if mode == "ckpt":
    kw.update(checkpoint_path=ckpt, checkpoint_every=1)
elif mode == "resume":
    kw.update(resume_from=ckpt)
model = tc.object_detector.create(data, **kw)
if mode != "ckpt":
    np.save(out, decoded(model, data.image))
"""


def test_killed_run_resumes_to_the_same_model(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(root=ROOT, tests=os.path.dirname(os.path.abspath(__file__)),
                                    n=N_SCENES, data_seed=DATA_SEED, iters=ITERS, batch=BATCH))
    full, resumed, killed_at, log = kill_and_resume(script, tmp_path, kill_at=ITERS // 3)
    assert killed_at is not None and 0 < killed_at < ITERS, killed_at
    assert f"Resuming from checkpoint '{tmp_path / 'run.ckpt'}' at iteration {killed_at} " \
           f"of {ITERS}" in log
    assert full.shape == resumed.shape
    assert np.abs(full - resumed).max() <= 1e-5


def test_two_devices_train_the_same_model_as_one(scenes):
    one = train(scenes, max_iterations=10)
    try:
        tc.config.set_devices(["cpu(0)", "cpu(1)"])
        two = train(scenes, max_iterations=10)
    finally:
        tc.config.set_devices(None)
    a, b = decoded(one, scenes.image), decoded(two, scenes.image)
    assert np.abs(a - b).max() <= 1e-5
    # More devices than images in a batch: the idle ones take zero-weight steps.
    small = scenes.iloc[:3]
    try:
        tc.config.set_devices(["cpu(0)", "cpu(1)", "cpu(2)", "cpu(3)"])
        four = train(small, max_iterations=3)
    finally:
        tc.config.set_devices(None)
    assert np.abs(decoded(train(small, max_iterations=3), small.image)
                  - decoded(four, small.image)).max() <= 1e-5


def test_checkpoint_loads_as_a_detector_and_settings_must_match(scenes, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    model = train(scenes, checkpoint_path=str(ckpt), checkpoint_every=100)
    # Written after the last step although checkpoint_every was never reached.
    mf = _model.open_model_file(str(ckpt))
    assert mf.kind == "checkpoint"
    info = mf.header["checkpoint"]
    assert info["position"] == {"iteration": 6, "max_iterations": 6}
    assert info["config"]["random_seed"] == 0 and info["config"]["batch_size"] == BATCH
    loaded = tc.load_model(str(ckpt))
    assert isinstance(loaded, tc.object_detector.ObjectDetector)
    assert np.abs(decoded(loaded, scenes.image[:3]) - decoded(model, scenes.image[:3])).max() \
        <= 1e-6
    assert isinstance(loaded.predict(scenes.iloc[:2]).iloc[0], list)

    with pytest.raises(CheckpointMismatchError, match=r"batch_size: checkpoint 8, given 4"):
        train(scenes, batch_size=4, resume_from=str(ckpt))
    # Without a seed the checkpoint's is used; a resume at the end trains no more.
    again = train(scenes, random_seed=None, resume_from=str(ckpt))
    assert again.random_seed == 0
    assert np.abs(decoded(again, scenes.image[:3]) - decoded(model, scenes.image[:3])).max() \
        <= 1e-6
    # Automatic settings (0 or None) take the checkpoint's values instead of being
    # chosen again (before: "max_iterations: checkpoint 6, given 500" and batch 32 vs 8).
    auto = tc.object_detector.create(scenes, max_iterations=None, batch_size=0, verbose=False,
                                     resume_from=str(ckpt))
    assert auto.training_iterations == 6 and auto.batch_size == BATCH
    assert np.abs(decoded(auto, scenes.image[:3]) - decoded(model, scenes.image[:3])).max() \
        <= 1e-6
    # Other data only warns.
    with pytest.warns(ToolkitWarning, match="differs"):
        train(scenes.iloc[:10], resume_from=str(ckpt))


def test_a_model_file_or_another_tasks_checkpoint_is_refused(scenes, tmp_path, watch_small):
    path = tmp_path / "plain.model"
    train(scenes, max_iterations=1).save(str(path))
    with pytest.raises(CheckpointMismatchError, match="not a training checkpoint"):
        train(scenes, resume_from=str(path))
    other = tmp_path / "ac.ckpt"
    tc.activity_classifier.create(watch_small, "session_id", "exercise",
                                  features=["ax", "ay", "az", "wx", "wy", "wz"],
                                  prediction_window=20,
                                  max_iterations=1, verbose=False, random_seed=0,
                                  checkpoint_path=str(other))
    with pytest.raises(CheckpointMismatchError,
                       match="checkpoint of the activity_classifier task"):
        train(scenes, resume_from=str(other))


def test_random_seed_none_is_resolved_and_stored(scenes):
    model = train(scenes.iloc[:4], max_iterations=1, random_seed=None)
    assert isinstance(model.random_seed, int)


CLUSTER_SCRIPT = """
import contextlib, io, sys
import numpy as np
sys.path.insert(0, {root!r})
import toolkit as tc
out = sys.argv[1]
data = tc.datasets.detection_scenes(8, random_seed=1)
log = io.StringIO()
with contextlib.redirect_stdout(log):
    # Unseeded: rank 0 draws the seed and every worker receives it.
    model = tc.object_detector.create(data, max_iterations=4, batch_size=4, verbose=True)
rank = tc.config.cluster().rank
open(out + "/seed-%d.txt" % rank, "w").write(str(model.random_seed))
model.save(out + "/model-from-rank-%d.model" % rank)
raw = np.concatenate([r for _, r, _ in model._raw(data.image.to_numpy(), "image", data.index)])
np.save(out + "/raw-%d.npy" % rank, raw)
open(out + "/log-%d.txt" % rank, "w").write(log.getvalue())
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc") or os.name != "posix",
                    reason="the launcher needs POSIX process groups")
def test_two_worker_cluster_trains_and_rank_0_alone_writes(tmp_path):
    from toolkit.distributed import launch
    script = tmp_path / "cluster.py"
    script.write_text(textwrap.dedent(CLUSTER_SCRIPT.format(root=ROOT)))
    launch([sys.executable, str(script), str(tmp_path)], num_workers=2, num_servers=1,
           timeout=240, verbose=False)
    written = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".model")
    assert written == ["model-from-rank-0.model"]
    model = tc.load_model(str(tmp_path / "model-from-rank-0.model"))
    assert model.training_iterations == 4 and model.num_examples == 8
    assert "worker 0 of 2 (parameter-server cluster" in (tmp_path / "log-0.txt").read_text()
    # Both workers pull the servers' weights after every step: the same model.
    raw0, raw1 = np.load(tmp_path / "raw-0.npy"), np.load(tmp_path / "raw-1.npy")
    assert np.abs(raw0 - raw1).max() <= 1e-6
    seeds = [(tmp_path / f"seed-{r}.txt").read_text() for r in (0, 1)]
    assert seeds[0] == seeds[1] == str(model.random_seed), seeds
