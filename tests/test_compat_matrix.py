"""Compatibility across mxnet versions and mxnet run-time settings.

* The version matrix (``compat/matrix.py``): a model file saved under mxnet
  1.5.1 loads under 1.9.1 and the other way round, with the same predictions.
  It builds one virtual environment per mxnet version under ``compat/.envs/``
  on its first run (about a minute each from a package mirror, longer from
  PyPI) and reuses them afterwards.
* MKL-DNN switched off at run time (``MXNET_MKLDNN_ENABLED=0``) on the
  MKL-DNN wheels (mxnet >= 1.7): the LSTM used to fail with "rnn-inl.h Check
  failed: in_data.size() == num_inputs (4 vs. 3)"; see ``toolkit._mx``.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATRIX = os.path.join(REPO, "compat", "matrix.py")


@pytest.mark.slow
def test_oldest_and_newest_mxnet_load_each_others_files():
    try:
        r = subprocess.run([sys.executable, MATRIX, "--versions", "1.5.1,1.9.1", "--keep-going"],
                           capture_output=True, text=True, timeout=45 * 60, cwd=REPO)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the matrix ran over {e.timeout}s:\n{e.stdout}\n{e.stderr}")
    assert r.returncode == 0, f"matrix failed:\n{r.stdout}\n--- stderr (tail)\n{r.stderr[-5000:]}"
    # 2 x 2 cells for each of the three tasks.
    for task in ("activity_classifier", "image_classifier", "object_detector"):
        assert f"Task: {task}" in r.stdout, r.stdout
    assert "Result: 12 of 12 cells work" in r.stdout, r.stdout


# Run in a fresh process: MKL-DNN settings are read by mxnet's C++ side.
_PROBE = r"""
import json, sys
import numpy as np
from toolkit._mx import mx, set_weights, structural_params
from toolkit.activity_classifier import _net

core, pred, graphs = _net.build(6, 4, 10)
rng = np.random.RandomState(0)
set_weights(core, {name: rng.normal(0, 0.2, p.shape).astype(np.float32)
                   for name, p in structural_params(core).items()})
pred.hybridize()
graphs.hybridize()
nd = mx().nd
x = nd.array(rng.normal(size=(3, 200, 6)))
h, c = _net.zero_states(3)
probs = pred(x, h, c)[0].asnumpy()
label, weight = nd.array(rng.randint(0, 4, (3, 20))), nd.ones((3, 20))
keep_in, keep_out = nd.ones((3, 20, _net.CONV_FILTERS)), nd.ones((3, 20, _net.DENSE_HIDDEN))
groups = nd.full((3, 3), 1.0 / 60)          # the 3 chunks form one batch-norm group
with mx().autograd.record():
    total = graphs.loss(x, h, c, label, weight, keep_in, keep_out, groups)[0].sum()
total.backward()
grad = core.lstm.l0_i2h_weight.grad().asnumpy()
print(json.dumps({"probs": probs.tolist(), "grad_norm": float(np.linalg.norm(grad))}))
"""


def _probe(extra_env):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MXNET_MKLDNN_ENABLED", "MXNET_USE_MKLDNN_RNN")}
    env.update(extra_env)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                       timeout=300, env=env, cwd=REPO)
    assert r.returncode == 0, f"{extra_env}: {r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_lstm_works_with_mkldnn_switched_off_at_run_time():
    on = _probe({})
    off = _probe({"MXNET_MKLDNN_ENABLED": "0"})
    np.testing.assert_allclose(off["probs"], on["probs"], atol=1e-5)
    assert off["grad_norm"] == pytest.approx(on["grad_norm"], rel=1e-3)
