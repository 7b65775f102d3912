"""Kill-and-resume runner shared by the checkpoint tests of every task.

A task's test writes a small script that takes ``MODE CHECKPOINT OUTPUT``:

* ``full``: train without checkpoints, save predictions (a numpy array) to OUTPUT;
* ``ckpt``: the same training with ``checkpoint_path=CHECKPOINT, checkpoint_every=1``;
* ``resume``: the same call with ``resume_from=CHECKPOINT``; save predictions.

:func:`kill_and_resume` runs ``full``, then ``ckpt`` in a subprocess that it kills
with SIGKILL as soon as the checkpoint on disk reports iteration >= ``kill_at``,
then ``resume``, and returns both prediction arrays and the iteration the
killed run had reached, so the test can check the run really was interrupted.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np


def checkpoint_iteration(path):
    """The iteration a checkpoint file holds, or None while it is absent/being replaced."""
    from toolkit import _model
    try:
        return _model.open_model_file(path).header["checkpoint"]["position"]["iteration"]
    except Exception:   # absent, or not complete yet: the writer renames atomically
        return None


def _run(script, mode, ckpt, out, timeout):
    done = subprocess.run([sys.executable, str(script), mode, str(ckpt), str(out)],
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{mode} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def kill_and_resume(script, tmp_path, kill_at, timeout=300):
    ckpt = tmp_path / "run.ckpt"
    full, resumed = tmp_path / "full.npy", tmp_path / "resumed.npy"
    _run(script, "full", ckpt, full, timeout)
    proc = subprocess.Popen([sys.executable, str(script), "ckpt", str(ckpt),
                             str(tmp_path / "unused.npy")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            it = checkpoint_iteration(ckpt) if os.path.exists(ckpt) else None
            if it is not None and it >= kill_at:
                proc.send_signal(signal.SIGKILL)
                break
            if proc.poll() is not None:
                raise AssertionError("the checkpointing run ended before it could be killed "
                                     f"(rc {proc.returncode}): {proc.stderr.read()[-3000:]}")
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    killed_at = checkpoint_iteration(ckpt)
    log = _run(script, "resume", ckpt, resumed, timeout)
    return np.load(full), np.load(resumed), killed_at, log


def check_resumed_equals_uninterrupted(script_text, tmp_path, kill_at, iterations, atol=1e-5):
    """Write ``script_text`` (dedented) as the training script and run :func:`kill_and_resume`.

    Checks that the checkpointing run really was killed part-way (at an iteration from
    ``kill_at`` to ``iterations - 1``), that the resumed run says it continues from that
    iteration of ``iterations``, and that its predictions equal the uninterrupted run's
    within ``atol``. Returns ``(killed_at, log)`` for further checks.
    """
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(script_text))
    full, resumed, killed_at, log = kill_and_resume(script, tmp_path, kill_at=kill_at)
    assert killed_at is not None and kill_at <= killed_at < iterations, \
        f"killed at iteration {killed_at}, expected {kill_at} to {iterations - 1}"
    assert f"at iteration {killed_at} of {iterations}" in log, log[-3000:]
    np.testing.assert_allclose(resumed, full, rtol=0, atol=atol)
    return killed_at, log
