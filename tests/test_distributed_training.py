"""Training on a local parameter-server cluster equals training in one process."""

import json
import os
import sys
import textwrap

import numpy as np
import pytest

import toolkit as tc
from toolkit.distributed import launch

# The workers run a script from a temporary directory, so Python would import the
# installed toolkit; make them import the one under test.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tc.__file__)))
WORKER_ENV = {"PYTHONPATH": os.pathsep.join(
    [_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}

WORKER = """
import sys
import numpy as np
import toolkit as tc
out = sys.argv[1]
data = tc.datasets.watch_sessions()
ids = sorted(data["session_id"].unique())[:8]
train = data[data["session_id"].isin(ids)].drop(columns="subject").reset_index(drop=True)
model = tc.activity_classifier.create(train, "session_id", "exercise", prediction_window=20,
                                      max_iterations=3, batch_size=16, random_seed=4,
                                      verbose=False, checkpoint_path=out + ".ckpt",
                                      checkpoint_every=1)
info = tc.config.cluster()
assert info is not None and info.num_workers == 2
model.save(out)          # only rank 0 writes
np.save(out + f".rank{info.rank}.npy",
        np.stack(model.predict(train, output_type="probability_vector").to_numpy()))
"""


@pytest.mark.slow
def test_two_workers_train_the_same_model_as_one_process(tmp_path, watch_small):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    out = tmp_path / "cluster.model"
    launch([sys.executable, str(script), str(out)], num_workers=2, num_servers=1, timeout=240,
           verbose=False, env=WORKER_ENV)
    # Both workers end with the same model; only rank 0 wrote files.
    r0, r1 = np.load(f"{out}.rank0.npy"), np.load(f"{out}.rank1.npy")
    np.testing.assert_array_equal(r0, r1)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".model", ".ckpt")) == \
        ["cluster.model", "cluster.model.ckpt"]

    alone = tc.activity_classifier.create(watch_small, "session_id", "exercise",
                                          prediction_window=20, max_iterations=3,
                                          batch_size=16, random_seed=4, verbose=False)
    clustered = tc.load_model(str(out))
    np.testing.assert_allclose(
        np.stack(clustered.predict(watch_small, output_type="probability_vector")),
        np.stack(alone.predict(watch_small, output_type="probability_vector")),
        rtol=0, atol=1e-5)
    from conftest import weights_of
    wa, wb = weights_of(alone), weights_of(clustered)
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=0, atol=1e-5, err_msg=k)


IC_WORKER = """
import sys
import numpy as np
import toolkit as tc
out = sys.argv[1]
digits = tc.datasets.mnist_digits()
train, test = digits.iloc[::125], digits.iloc[3::100]
model = tc.image_classifier.create(train, target="label", max_iterations=20, verbose=False,
                                   validation_set=None)
info = tc.config.cluster()
np.save(out + f".rank{info.rank}.npy",
        np.stack(model.predict(test, output_type="probability_vector").to_numpy()))
with open(out + f".rank{info.rank}.seed", "w") as f:
    f.write(str(model.random_seed))       # unseeded: rank 0's, received by every worker
"""


@pytest.mark.slow
def test_image_classifier_workers_share_extraction_and_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(IC_WORKER))
    out = tmp_path / "ic"
    launch([sys.executable, str(script), str(out)], num_workers=2, num_servers=1, timeout=240,
           verbose=False, env=WORKER_ENV)
    r0, r1 = np.load(f"{out}.rank0.npy"), np.load(f"{out}.rank1.npy")
    np.testing.assert_array_equal(r0, r1)
    seeds = [open(f"{out}.rank{r}.seed").read() for r in (0, 1)]
    assert seeds[0] == seeds[1], seeds
    digits = tc.datasets.mnist_digits()
    alone = tc.image_classifier.create(digits.iloc[::125], target="label", max_iterations=20,
                                       verbose=False, validation_set=None)
    np.testing.assert_allclose(
        r0, np.stack(alone.predict(digits.iloc[3::100], output_type="probability_vector")),
        rtol=0, atol=1e-5)


VALIDATING_WORKER = """
import toolkit as tc
data = tc.datasets.watch_sessions().drop(columns="subject")
ids = sorted(data["session_id"].unique())[:100]       # 100 sessions: 'auto' validation
model = tc.activity_classifier.create(data[data["session_id"].isin(ids)], "session_id",
                                      "exercise", max_iterations=2, random_seed=0,
                                      verbose=False)
assert model.validation_accuracy is not None
"""


@pytest.mark.slow
def test_a_worker_that_validates_each_epoch_keeps_training(tmp_path):
    # Validating between epochs in mxnet's inference mode let MKL-DNN move weights into
    # its own layout and the next pull from the servers failed ("to.IsDefaultData()");
    # the validation now runs in training mode with dropout off (_train.evaluate_chunks).
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(VALIDATING_WORKER))
    launch([sys.executable, str(script)], num_workers=1, num_servers=1, timeout=240,
           verbose=False, env=WORKER_ENV)


UNSEEDED_WORKER = """
import json, sys
import numpy as np
import toolkit as tc
out = sys.argv[1]
data = tc.datasets.watch_sessions()
ids = sorted(data["session_id"].unique())[:8]
train = data[data["session_id"].isin(ids)].drop(columns="subject").reset_index(drop=True)
model = tc.activity_classifier.create(train, "session_id", "exercise", prediction_window=20,
                                      max_iterations=3, batch_size=16, verbose=False)
rank = tc.config.cluster().rank
np.save(out + f".rank{rank}.npy",
        np.stack(model.predict(train, output_type="probability_vector").to_numpy()))
with open(out + f".rank{rank}.json", "w") as f:
    json.dump({"random_seed": model.random_seed}, f)
"""


@pytest.mark.slow
def test_unseeded_cluster_run_shares_rank_0s_seed(tmp_path, watch_small):
    # Each worker used to draw its own seed: the workers shuffled (and, with 'auto'
    # validation, split) differently, so they trained on mismatched batches or
    # deadlocked. Now rank 0's seed reaches every worker through the key-value store.
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(UNSEEDED_WORKER))
    out = tmp_path / "unseeded"
    launch([sys.executable, str(script), str(out)], num_workers=2, num_servers=1,
           timeout=240, verbose=False, env=WORKER_ENV)
    seeds = [json.loads((tmp_path / f"unseeded.rank{r}.json").read_text())["random_seed"]
             for r in (0, 1)]
    assert seeds[0] == seeds[1], seeds
    assert isinstance(seeds[0], int) and 0 <= seeds[0] < 2**32
    r0, r1 = np.load(f"{out}.rank0.npy"), np.load(f"{out}.rank1.npy")
    np.testing.assert_array_equal(r0, r1)
    alone = tc.activity_classifier.create(watch_small, "session_id", "exercise",
                                          prediction_window=20, max_iterations=3,
                                          batch_size=16, random_seed=seeds[0], verbose=False)
    np.testing.assert_allclose(
        r0, np.stack(alone.predict(watch_small, output_type="probability_vector")),
        rtol=0, atol=1e-5)


SEED_WORKER = """
import json, sys, warnings
import toolkit as tc
out = sys.argv[1]
rank = tc.config.cluster().rank
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    given = tc.config.shared_seed(None)
    other = tc.config.shared_seed(1000 + rank)       # a script that seeds by rank
with open(out + f".rank{rank}.json", "w") as f:
    json.dump({"drawn": given, "other": other, "warnings": [
        str(w.message) for w in caught if w.category.__name__ == "ToolkitWarning"]}, f)
"""


def test_shared_seed_is_rank_0s_on_every_worker(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(SEED_WORKER))
    out = tmp_path / "seed"
    launch([sys.executable, str(script), str(out)], num_workers=2, num_servers=1,
           timeout=240, verbose=False, env=WORKER_ENV)
    r0, r1 = (json.loads((tmp_path / f"seed.rank{r}.json").read_text()) for r in (0, 1))
    assert r0["drawn"] == r1["drawn"]
    assert r0["other"] == r1["other"] == 1000
    assert r0["warnings"] == []
    assert len(r1["warnings"]) == 1 and "rank 0 uses 1000" in r1["warnings"][0]
