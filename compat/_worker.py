"""Worker of the mxnet version matrix: runs *inside* one matrix environment.

``compat/matrix.py`` starts this file with the Python of one environment (one
mxnet version)::

    python compat/_worker.py REQUEST.json RESPONSE.json

and reads the JSON it writes. Requests:

``{"action": "save", "task": T, "model_path": P, "pred_path": Q}``
    Train task T's small model (fixed data and seed), save it to P, and write
    the trained model's predictions on the task's fixed input to Q (``.npy``).

``{"action": "load", "task": T, "model_path": P, "pred_path": Q}``
    Load the file P with ``toolkit.load_model`` and write its predictions on
    the same fixed input to Q.

Every response holds ``ok`` (bool), the mxnet/numpy versions, whether mxnet
was built with MKL-DNN, the fingerprint of the fixed input (so the runner can
check that every environment predicted on the same numbers) and, on failure,
``error_type``, ``toolkit_error`` (the exception is a ``ToolkitError``) and the
traceback.

Tasks are a table (``TASKS``) so more can be added: each entry gives a
function that trains a model, one that builds the fixed input and one that
turns a model's output on that input into a 2-D float array of probability
vectors. The functions import the toolkit lazily, so ``matrix.py`` can import
this module (for the task names) from any Python without the toolkit's deps.
"""

import functools
import hashlib
import json
import os
import sys
import time
import traceback

SEED = 0


# --- activity_classifier ---------------------------------------------------------
# A handful of whole sessions of real smartwatch data, a small prediction
# window, small batches and 2 epochs: a few seconds of training, yet a real
# trained network (conv + LSTM + batch norm, every weight of the file format)
# whose predictions are far from uniform, so a wrong weight shows.
_AC_TRAIN_SESSIONS = list(range(0, 8))
# A validation set makes training keep the best epoch's weights and rebuild the
# network from them (get_weights after training, set_weights into a fresh
# network): that path runs in every environment too.
_AC_VALID_SESSIONS = [8, 9]
_AC_INPUT_SESSIONS = [20, 21, 22]
_AC_PREDICTION_WINDOW = 10


@functools.lru_cache(maxsize=1)
def _watch_all():
    import toolkit as tc
    return tc.datasets.watch_sessions()


def _watch(sessions):
    data = _watch_all()
    data = data[data["session_id"].isin(sessions)].drop(columns="subject")
    return data.reset_index(drop=True)


def _ac_train():
    import toolkit as tc
    data = _watch(_AC_TRAIN_SESSIONS)
    return tc.activity_classifier.create(
        data, session_id="session_id", target="exercise",
        features=["ax", "ay", "az", "wx", "wy", "wz"],
        prediction_window=_AC_PREDICTION_WINDOW, validation_set=_watch(_AC_VALID_SESSIONS),
        max_iterations=2, batch_size=4, verbose=False, random_seed=SEED)


def _ac_input():
    return _watch(_AC_INPUT_SESSIONS)


def _ac_predict(model, data):
    import numpy as np
    frame = model.predict(data, output_type="probability_vector",
                          output_frequency="per_window")
    return np.stack(frame["probability_vector"].to_list()).astype(np.float64)


def _ic_faces():
    import toolkit as tc
    return tc.datasets.lfw_faces()


def _ic_train():
    import toolkit as tc
    faces = _ic_faces()
    train = faces.iloc[list(range(0, 96, 12)) + list(range(100, 196, 12))]
    return tc.image_classifier.create(train, target="label", max_iterations=10,
                                      verbose=False, random_seed=SEED)


def _ic_input():
    faces = _ic_faces()
    return faces.iloc[[5, 17, 29, 105, 117, 129]][["image"]].reset_index(drop=True)


def _ic_predict(model, data):
    import numpy as np
    return np.stack(model.predict(data, output_type="probability_vector")).astype(np.float64)


def _od_train():
    import toolkit as tc
    return tc.object_detector.create(tc.datasets.detection_scenes(8, random_seed=21),
                                     max_iterations=10, verbose=False, random_seed=SEED)


def _od_input():
    import toolkit as tc
    return tc.datasets.detection_scenes(2, split="test", random_seed=22)[["image"]]


def _od_predict(model, data):
    import numpy as np
    # The raw head outputs (every anchor's box and scores), not just the boxes kept
    # after thresholds: a small drift anywhere shows up.
    raw = [r for _, r, _ in model._raw(data["image"].to_numpy(), "image", data.index)]
    return np.concatenate(raw).reshape(len(data), -1).astype(np.float64)


TASKS = {
    # name: (train() -> model, fixed_input() -> data, predict(model, data) -> 2-D array)
    "activity_classifier": {
        "train": _ac_train,
        "input": _ac_input,
        "predict": _ac_predict,
    },
    "image_classifier": {
        "train": _ic_train,
        "input": _ic_input,
        "predict": _ic_predict,
    },
    "object_detector": {
        "train": _od_train,
        "input": _od_input,
        "predict": _od_predict,
        # Raw head outputs (logits and box offsets of magnitude ~10), not probabilities:
        # the backbone's 16 convolutions differ by ~2e-5 between MKL-DNN builds
        # (1.7-1.9) and plain ones (1.5-1.6), in the last float32 digits.
        "tolerance": 1e-4,
    },
}


# --- machinery -------------------------------------------------------------------

def _fingerprint(data):
    """A hash of the fixed input, to check every environment used the same numbers."""
    import numpy as np
    h = hashlib.sha256()
    if hasattr(data, "columns"):
        for col in data.columns:
            h.update(str(col).encode())
            values = data[col].to_numpy()
            if values.dtype.kind in "biuf":
                h.update(np.ascontiguousarray(values.astype(np.float64)).tobytes())
            elif len(values) and isinstance(values[0], np.ndarray):  # image columns
                for v in values:
                    h.update(str(v.shape).encode() + np.ascontiguousarray(v).tobytes())
            else:
                h.update("\0".join(map(str, values)).encode())
    else:
        h.update(np.ascontiguousarray(np.asarray(data, dtype=np.float64)).tobytes())
    return h.hexdigest()[:16]


def _environment():
    info = {"python": sys.version.split()[0]}
    try:
        import numpy
        info["numpy"] = numpy.__version__
    except Exception as e:  # noqa: BLE001 - reported, not fatal here
        info["numpy"] = f"unavailable ({e})"
    try:
        import mxnet
        info["mxnet"] = mxnet.__version__
        try:
            from mxnet.runtime import Features
            info["mkldnn"] = bool(Features().is_enabled("MKLDNN"))
        except Exception:  # noqa: BLE001 - mxnet < 1.5 has no runtime features
            info["mkldnn"] = None
    except Exception as e:  # noqa: BLE001
        info["mxnet"] = f"unavailable ({e})"
    return info


def run(request):
    import numpy as np
    task = TASKS[request["task"]]
    t0 = time.perf_counter()
    data = task["input"]()
    out = {"fingerprint": _fingerprint(data)}
    if request["action"] == "save":
        model = task["train"]()
        out["train_s"] = round(time.perf_counter() - t0, 2)
        probs = task["predict"](model, data)
        model.save(request["model_path"])
    elif request["action"] == "load":
        import toolkit as tc
        model = tc.load_model(request["model_path"])
        probs = task["predict"](model, data)
    else:
        raise ValueError(f"unknown action {request['action']!r}")
    probs = np.asarray(probs, dtype=np.float64)
    np.save(request["pred_path"], probs)
    out["shape"] = list(probs.shape)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def main(argv):
    with open(argv[1], encoding="utf-8") as f:
        request = json.load(f)
    response = {"ok": False}
    try:
        response.update(run(request))
        response["ok"] = True
    except BaseException as e:  # noqa: BLE001 - every failure is reported to the runner
        try:
            from toolkit.errors import ToolkitError
            graceful = isinstance(e, ToolkitError)
        except Exception:  # noqa: BLE001 - the toolkit itself failed to import
            graceful = False
        response.update(error_type=f"{type(e).__module__}.{type(e).__name__}",
                        error=str(e)[:2000], toolkit_error=graceful,
                        traceback=traceback.format_exc()[-6000:])
    response["env"] = _environment()
    tmp = argv[2] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(response, f, indent=1)
    os.replace(tmp, argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
