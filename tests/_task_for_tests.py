"""A tiny task used only by the tests, to exercise the migration chain.

Its file format went through three versions, like a real task would:

1. weights ``w`` (4,) and ``b`` (1,); state ``{"name": str}``
2. weights renamed to structural names ``lin.weight`` / ``lin.bias``
3. ``scale`` (float) added to the state, default 1.0

``ScoreModel`` is the current (version 3) code; ``write_v1`` writes a file the
way version-1 code did (used to make the frozen fixture in
tests/fixtures/test_task/v1/).
"""

import numpy as np

from toolkit import _model_file
from toolkit._model import Model

TASK = "toolkit_test_task"


def _v1_to_v2(state, weights):
    """Weights get structural names (lin.weight, lin.bias) instead of w, b."""
    weights["lin.weight"] = weights.pop("w")
    weights["lin.bias"] = weights.pop("b")
    return state, weights


def _v2_to_v3(state, weights):
    """State gains 'scale' (multiplies the score); old files behave as scale 1.0."""
    state.setdefault("scale", 1.0)
    return state, weights


class ScoreModel(Model):
    _TASK = TASK
    _FILE_VERSION = 3
    _MIGRATIONS = {1: _v1_to_v2, 2: _v2_to_v3}

    def __init__(self, state, weights):
        self.state, self.weights = state, weights

    def _get_state(self):
        return dict(self.state), dict(self.weights)

    @classmethod
    def _from_state(cls, state, weights):
        return cls(state, weights)

    def predict(self, x):
        x = np.asarray(x, np.float32)
        return self.state["scale"] * (x @ self.weights["lin.weight"] + self.weights["lin.bias"])


def write_v1(path, name, w, b):
    header = _model_file.build_header(TASK, 1, {"name": name})
    blob = _model_file.encode_tensors({"w": np.asarray(w, np.float32),
                                       "b": np.asarray(b, np.float32)})
    _model_file.atomic_write(path, _model_file.serialize(header, {"weights": blob}))
