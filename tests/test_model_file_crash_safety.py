"""Saving is crash-safe: SIGKILL at random moments, and concurrent savers.

A worker process loads two different models (A and B) once, then for each
round forks a child that saves A, B, A, B... over the same path without end;
the test SIGKILLs the child after a random delay (saves take ~10-100 ms, so
kills land in every stage: serialising, writing the temporary file, fsync,
rename). After every kill the path must load as exactly A or exactly B (all
weights compared), and while the child runs, readers must only ever see A or
B. Temporary files left by killed savers never affect loading. Two savers
writing the same path at once leave one complete model and no temporary
files. (Forking after the models are loaded keeps each round cheap: mxnet
restarts its engine in a forked child.)
"""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import toolkit as tc
from toolkit import _model
from toolkit.errors import ToolkitError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")

KILLS = 30
MAX_DELAY = 0.25  # seconds between the child's start and its SIGKILL

WORKER = textwrap.dedent("""
    import os, sys
    import toolkit
    a = toolkit.load_model(sys.argv[1])
    b = toolkit.load_model(sys.argv[2])
    a.save(os.path.join(os.path.dirname(sys.argv[1]), "warm-up.model"))

    def saver(path, models, times):
        try:
            i = 0
            while times is None or i < times:
                models[i % len(models)].save(path)
                i += 1
        finally:
            os._exit(0)

    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "loop":              # fork a child saving A, B, A, ... forever
            pid = os.fork()
            if pid == 0:
                saver(cmd[1], [a, b], None)
            print(pid, flush=True)
        elif cmd[0] == "reap":
            _, status = os.waitpid(int(cmd[1]), 0)
            print(status, flush=True)
        elif cmd[0] == "race":            # two children: one saves A n times, one B
            n = int(cmd[2])
            pids = []
            for model in (a, b):
                pid = os.fork()
                if pid == 0:
                    saver(cmd[1], [model], n)
                pids.append(pid)
            print(" ".join(str(os.waitpid(p, 0)[1]) for p in pids), flush=True)
        elif cmd[0] == "quit":
            break
""")


def _weights(model):
    from toolkit._mx import get_weights
    return get_weights(model._core)


def _same(w1, w2):
    return sorted(w1) == sorted(w2) and all(
        w1[k].shape == w2[k].shape and w1[k].tobytes() == w2[k].tobytes() for k in w1)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Paths and weights of two different models, A (trained) and B (other weights)."""
    from toolkit.activity_classifier._model import ActivityClassifier
    data = tc.datasets.watch_sessions()
    small = data[data["session_id"] < 6].drop(columns="subject")
    a = tc.activity_classifier.create(small, "session_id", "exercise",
                                      features=["ax", "ay", "az", "wx", "wy", "wz"],
                                      prediction_window=10, max_iterations=1, verbose=False,
                                      random_seed=0)
    wa = _weights(a)
    wb = {k: (v * 1.5 + 0.25).astype(np.float32) for k, v in wa.items()}
    b = ActivityClassifier._from_state(dict(a._state), wb)
    folder = tmp_path_factory.mktemp("crash")
    a.save(folder / "a.model")
    b.save(folder / "b.model")
    assert not _same(wa, wb)
    return str(folder / "a.model"), str(folder / "b.model"), wa, wb


class Worker:
    def __init__(self, folder, a_path, b_path):
        script = os.path.join(folder, "save_worker.py")
        with open(script, "w") as f:
            f.write(WORKER)
        self.proc = subprocess.Popen([sys.executable, script, a_path, b_path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.ask(None) == "ready"

    def ask(self, command):
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the save worker died"
        return line.strip()

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(scope="module")
def worker(two_models, tmp_path_factory):
    a_path, b_path, _, _ = two_models
    w = Worker(str(tmp_path_factory.mktemp("worker")), a_path, b_path)
    yield w
    w.close()


def _which(path, wa, wb, full=True):
    """'A' or 'B' for a file holding exactly one of the two models; fails otherwise."""
    if full:
        w = _weights(tc.load_model(path))
    else:
        w = _model.open_model_file(path).tensors()
    if _same(w, wa):
        return "A"
    if _same(w, wb):
        return "B"
    raise AssertionError(f"{path} holds neither model A nor model B: a mix")


def test_sigkill_mid_save_leaves_the_old_or_the_new_model(two_models, worker, tmp_path):
    a_path, b_path, wa, wb = two_models
    folder = tmp_path / "target"
    folder.mkdir()
    target = str(folder / "m.model")
    tc.load_model(a_path).save(target)
    rng = random.Random()
    seen, reads = [], 0
    for _ in range(KILLS):
        pid = int(worker.ask(f"loop {target}"))
        deadline = time.monotonic() + rng.uniform(0, MAX_DELAY)
        while time.monotonic() < deadline:      # readers during saves: A or B, never a mix
            _which(target, wa, wb, full=False)
            reads += 1
        os.kill(pid, signal.SIGKILL)
        status = int(worker.ask(f"reap {pid}"))
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        seen.append(_which(target, wa, wb))
    leftovers = sorted(set(os.listdir(folder)) - {"m.model"})
    # Killed savers may leave temporary files: hidden, named after the target, and
    # never read by load_model (it reads exactly the path it is given).
    for name in leftovers:
        assert name.startswith(".m.model.") and name.endswith(".tmp"), name
    assert _which(target, wa, wb) in ("A", "B")
    assert reads > 0
    print(f"{KILLS} kills: final file A {seen.count('A')} times, B {seen.count('B')} times; "
          f"{reads} reads during saves; {len(leftovers)} temporary files left by killed savers")
    # Saves did complete between kills: both models ended up in place at some point
    # (all 30 rounds ending on the same model has probability ~2e-9).
    assert set(seen) == {"A", "B"}, seen


def test_temporary_files_of_killed_savers_are_ignored(two_models, tmp_path):
    a_path, _, wa, wb = two_models
    target = tmp_path / "m.model"
    tc.load_model(a_path).save(target)
    good = target.read_bytes()
    # What a killed saver leaves: partial and complete temp files beside the target.
    (tmp_path / ".m.model.abc123.tmp").write_bytes(good[: len(good) // 2])
    (tmp_path / ".m.model.def456.tmp").write_bytes(open(two_models[1], "rb").read())
    assert _which(str(target), wa, wb) == "A"
    with pytest.raises(ToolkitError):
        tc.load_model(tmp_path / ".m.model.abc123.tmp")
    # A later normal save works and cleans up only its own temporary file.
    tc.load_model(a_path).save(target)
    assert sorted(os.listdir(tmp_path)) == [".m.model.abc123.tmp", ".m.model.def456.tmp",
                                            "m.model"]


def test_normal_save_leaves_no_temporary_files(two_models, tmp_path):
    a_path, b_path, wa, wb = two_models
    target = tmp_path / "m.model"
    for path in (a_path, b_path, a_path):
        tc.load_model(path).save(target)
        assert os.listdir(tmp_path) == ["m.model"]
    assert _which(str(target), wa, wb) == "A"


def test_two_processes_saving_at_once_leave_one_complete_model(two_models, worker, tmp_path):
    _, _, wa, wb = two_models
    target = str(tmp_path / "race" / "m.model")
    os.mkdir(os.path.dirname(target))
    for _ in range(3):
        statuses = worker.ask(f"race {target} 8").split()
        assert statuses == ["0", "0"], statuses
        assert _which(target, wa, wb) in ("A", "B")
        assert os.listdir(os.path.dirname(target)) == ["m.model"]
