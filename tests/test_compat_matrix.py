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
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATRIX = os.path.join(REPO, "compat", "matrix.py")


def _run_matrix(args, timeout):
    """Run compat/matrix.py; its progress lines go live to the terminal.

    pytest captures a test's output, and the matrix can take many minutes (building
    its environments the first time), so each line the matrix logs is written to
    ``sys.__stderr__``, the terminal, prefixed with ``[compat matrix]``. The matrix
    runs in a process group of its own that is killed whatever happens (timeout,
    Ctrl-C, a failed assert), so none of its workers outlive the test.
    """
    proc = subprocess.Popen([sys.executable, MATRIX, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    err_lines, out = [], []

    def relay():
        for line in proc.stderr:
            err_lines.append(line)
            try:
                sys.__stderr__.write("[compat matrix] " + line)
                sys.__stderr__.flush()
            except (OSError, ValueError, AttributeError):
                pass

    relay_thread = threading.Thread(target=relay, daemon=True)
    out_thread = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    relay_thread.start()
    out_thread.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the matrix ran over {timeout}s:\n{''.join(err_lines)[-5000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)      # stragglers of the group, if any
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        relay_thread.join(timeout=10)
        out_thread.join(timeout=10)
    return proc.returncode, "".join(out), "".join(err_lines)


@pytest.mark.slow
def test_oldest_and_newest_mxnet_load_each_others_files():
    rc, stdout, stderr = _run_matrix(["--versions", "1.5.1,1.9.1", "--keep-going"],
                                     timeout=45 * 60)
    assert rc == 0, f"matrix failed:\n{stdout}\n--- stderr (tail)\n{stderr[-5000:]}"
    # 2 x 2 cells for each of the three tasks.
    for task in ("activity_classifier", "image_classifier", "object_detector"):
        assert f"Task: {task}" in stdout, stdout
    assert "Result: 12 of 12 cells work" in stdout, stdout


# Run in a fresh process: MKL-DNN settings are read by mxnet's C++ side.
_PROBE = r"""
import json, sys
import numpy as np
from toolkit._mx import mx, set_weights, stored_shapes
from toolkit.activity_classifier import _net

core, pred, graphs = _net.build(6, 4, 10)
rng = np.random.RandomState(0)
set_weights(core, {name: rng.normal(0, 0.2, shape).astype(np.float32)
                   for name, shape in stored_shapes(core).items()})
pred.hybridize()
graphs.hybridize()
nd = mx().nd
x = nd.array(rng.normal(size=(3, 200, 6)))
h, c = _net.zero_states(3)
probs = pred(x, h, c)[0].asnumpy()
label, weight = nd.array(rng.randint(0, 4, (3, 20))), nd.ones((3, 20))
keep_in, keep_out = nd.ones((3, 20, _net.CONV_FILTERS)), nd.ones((3, 20, _net.DENSE_HIDDEN))
with mx().autograd.record():    # the 3 chunks form one batch-norm group
    total = graphs.loss(x, h, c, label, weight, keep_in, keep_out, 3)[0].sum()
total.backward()
grad = core.lstm.packed.grad().asnumpy()[:800 * 64]     # the input-to-hidden weights
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


# Stands in for the interpreter the matrix builds environments with: it starts a
# grandchild, records both pids and sleeps, like a long pip install.
_FAKE_PYTHON = """#!{python}
import os, subprocess, sys, time
child = subprocess.Popen([{python!r}, "-c", "import time; time.sleep(600)"])
with open({pids!r}, "w") as f:
    f.write("%d %d" % (os.getpid(), child.pid))
time.sleep(600)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_matrix_leaves_no_process_behind(tmp_path, sig):
    # A Ctrl-C used to leave a compat worker running; every child now runs in a
    # process group of its own that the matrix kills on the way out.
    pids_file = tmp_path / "pids"
    fake = tmp_path / "fake-python"
    fake.write_text(_FAKE_PYTHON.format(python=sys.executable, pids=str(pids_file)))
    fake.chmod(0o755)
    proc = subprocess.Popen([sys.executable, MATRIX, "--versions", "1.9.1", "--envs-dir",
                             str(tmp_path / "envs"), "--python", str(fake)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        until = time.monotonic() + 120          # generous: the machine may be busy
        while not (pids_file.exists() and len(pids_file.read_text().split()) == 2):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < until, "the fake build never started"
            time.sleep(0.1)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    started = [int(p) for p in pids_file.read_text().split()]
    until = time.monotonic() + 30
    while any(_alive(p) for p in started) and time.monotonic() < until:
        time.sleep(0.1)
    assert [p for p in started if _alive(p)] == [], err


def test_a_matrix_step_over_its_timeout_is_stopped_with_its_children(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "compat"))
    try:
        import matrix
    finally:
        sys.path.remove(os.path.join(REPO, "compat"))
    pids_file = tmp_path / "pids"
    code = (f"import os, subprocess, time\n"
            f"c = subprocess.Popen([{sys.executable!r}, '-c', 'import time; time.sleep(600)'])\n"
            f"open({str(pids_file)!r}, 'w').write('%d %d' % (os.getpid(), c.pid))\n"
            f"time.sleep(600)\n")
    with pytest.raises(subprocess.TimeoutExpired):
        matrix.run([sys.executable, "-c", code], timeout=30)
    started = [int(p) for p in pids_file.read_text().split()]
    until = time.monotonic() + 30
    while any(_alive(p) for p in started) and time.monotonic() < until:
        time.sleep(0.1)
    assert [p for p in started if _alive(p)] == []
    assert matrix.run([sys.executable, "-c", "print('hi')"], timeout=60).stdout == "hi\n"
