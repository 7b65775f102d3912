"""Small real-data fixtures shared by the test files."""

import os

import numpy as np
import pytest

# Keep mxnet to the CI machine's 2 cores and quiet.
os.environ.setdefault("OMP_NUM_THREADS", "2")

WATCH_FEATURES = ["ax", "ay", "az", "wx", "wy", "wz"]


@pytest.fixture(scope="session")
def watch():
    import toolkit as tc
    return tc.datasets.watch_sessions()


@pytest.fixture(scope="session")
def watch_small(watch):
    """Eight real sessions (at least two classes), subject column dropped."""
    ids = sorted(watch["session_id"].unique())[:8]
    return watch[watch["session_id"].isin(ids)].drop(columns="subject").reset_index(drop=True)


@pytest.fixture(scope="session")
def tiny_model(watch_small):
    """A briefly trained activity classifier (prediction_window 20), ~1 s to train."""
    import toolkit as tc
    return tc.activity_classifier.create(watch_small, "session_id", "exercise",
                                         features=WATCH_FEATURES, prediction_window=20,
                                         max_iterations=2, verbose=False, random_seed=0)


@pytest.fixture(scope="session")
def tiny_model_path(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.model"
    tiny_model.save(path)
    return str(path)


def weights_of(model):
    from toolkit._mx import get_weights
    return get_weights(model._core)


def assert_same_weights(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
