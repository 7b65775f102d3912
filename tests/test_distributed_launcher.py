"""The local parameter-server cluster launcher (toolkit.distributed).

The worker scripts use mxnet's kvstore directly, so these tests do not depend on the
training loops. Each cluster (scheduler, 1 server, 2 workers on 127.0.0.1) takes a few
seconds. "No process left behind" is checked two ways: the pids the launcher reports
and the workers recorded are gone, and no process on the machine carries the test's
unique environment marker (which every process of the job, grandchildren included,
inherits).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from toolkit.distributed import launch
from toolkit.errors import DistributedError, InvalidParameterError, ToolkitError

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc") or os.name != "posix",
                                reason="needs Linux /proc to check for left-over processes")

# Rank r pushes ones * (r + 1); with two workers the pulled sum is 3 everywhere.
KV_SCRIPT = """
import json, os, sys
print('starting', os.getpid(), flush=True)       # before the rank is known
import mxnet as mx
out_dir = sys.argv[1]
kv = mx.kv.create('dist_sync')
kv.init(7, mx.nd.zeros((4,)))
kv.push(7, mx.nd.ones((4,)) * (kv.rank + 1))
got = mx.nd.zeros((4,))
kv.pull(7, out=got)
env = {k: v for k, v in os.environ.items() if k.startswith(('DMLC_', 'PS_'))}
with open(os.path.join(out_dir, 'rank%d.json' % kv.rank), 'w') as f:
    json.dump({'rank': kv.rank, 'num_workers': kv.num_workers, 'pid': os.getpid(),
               'value': got.asnumpy().tolist(), 'env': env}, f)
print('rank', kv.rank, 'done', flush=True)
"""

# Rank 1 dies by SIGKILL after its first push; rank 0 then waits on a second round
# that can never complete (mxnet would hang forever without the launcher).
KILL_SCRIPT = """
import os, signal, sys, time
import mxnet as mx
out_dir = sys.argv[1]
kv = mx.kv.create('dist_sync')
open(os.path.join(out_dir, 'pid%d' % kv.rank), 'w').write(str(os.getpid()))
kv.init(7, mx.nd.zeros((4,)))
kv.push(7, mx.nd.ones((4,)))
got = mx.nd.zeros((4,))
kv.pull(7, out=got)
got.wait_to_read()
if kv.rank == 1:
    print('rank 1 about to die', file=sys.stderr, flush=True)
    open(os.path.join(out_dir, 'died-at'), 'w').write(repr(time.time()))
    os.kill(os.getpid(), signal.SIGKILL)
kv.push(7, mx.nd.ones((4,)))
kv.pull(7, out=got)
got.wait_to_read()
open(os.path.join(out_dir, 'rank0-finished'), 'w').write('should never happen')
"""

# Each worker starts a grandchild and then sleeps forever.
SLEEP_SCRIPT = """
import os, subprocess, sys, time
out_dir = sys.argv[1]
child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)'])
open(os.path.join(out_dir, 'pids-%d' % os.getpid()), 'w').write(
    '%d %d' % (os.getpid(), child.pid))
print('sleeping', flush=True)
time.sleep(1000)
"""

FAIL_SCRIPT = """
import sys
print('about to fail', flush=True)
raise ValueError('boom-' + 'marker-42')
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def _marker_env():
    return {"TOOLKIT_LAUNCHER_TEST": uuid.uuid4().hex}


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _processes_with(marker):
    """Pids of live processes whose environment holds marker."""
    needle = ("TOOLKIT_LAUNCHER_TEST=" + marker).encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0") and _alive(int(name)):
                    found.append(int(name))
        except OSError:
            continue
    return found


def _assert_all_gone(env, pids):
    marker = env["TOOLKIT_LAUNCHER_TEST"]
    assert _processes_with(marker) == []
    assert [p for p in pids if _alive(p)] == []


def _all_pids(pids):
    return [p for role in pids.values() for p in role]


def _recorded_pids(tmp_path, pattern="pids-*"):
    pids = []
    for f in tmp_path.glob(pattern):
        pids += [int(x) for x in f.read_text().split()]
    return pids


def _wait_for_files(directory, pattern, count, limit=240):
    """Wait (generously: the machine may be busy) until ``count`` files match."""
    until = time.monotonic() + limit
    while len(list(directory.glob(pattern))) < count:
        assert time.monotonic() < until, f"no {count} files {pattern} after {limit} s"
        time.sleep(0.2)


def test_two_workers_see_the_aggregated_value(tmp_path, capsys):
    script = _write(tmp_path, "kv.py", KV_SCRIPT)
    env = _marker_env()
    t0 = time.monotonic()
    result = launch([sys.executable, script, str(tmp_path)], num_workers=2, num_servers=1,
                    timeout=120, env=env)
    elapsed = time.monotonic() - t0
    outs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, out in enumerate(outs):
        assert out["rank"] == r and out["num_workers"] == 2
        assert out["value"] == [3.0] * 4
    assert sorted(result.worker_ranks) == [0, 1]
    assert sorted(result.pids["worker"]) == sorted(o["pid"] for o in outs)
    assert len(result.pids["server"]) == 1 and len(result.pids["scheduler"]) == 1
    assert 0 < result.elapsed <= elapsed + 0.5
    printed = capsys.readouterr().out
    assert "[worker 0] rank 0 done" in printed and "[worker 1] rank 1 done" in printed
    # One prefix, the rank, also on lines printed before the worker joined the cluster.
    for out in outs:
        assert f"[worker {out['rank']}] starting {out['pid']}" in printed
    worker_lines = [line for line in printed.splitlines() if line.startswith("[worker")]
    assert len(worker_lines) == 4 and all(re.match(r"\[worker [01]\] ", line)
                                          for line in worker_lines), printed
    assert "is connected to others" not in printed
    _assert_all_gone(env, _all_pids(result.pids))


def test_killed_worker_stops_the_job_within_seconds(tmp_path):
    script = _write(tmp_path, "kill.py", KILL_SCRIPT)
    env = _marker_env()
    with pytest.raises(DistributedError) as info:
        launch([sys.executable, script, str(tmp_path)], num_workers=2, timeout=600, env=env,
               verbose=False)
    # Measured from the death, not the start (which a busy machine slows down); without
    # the launcher rank 0 would wait until the timeout.
    after_death = time.time() - float((tmp_path / "died-at").read_text())
    assert after_death < 120, after_death
    err = info.value
    assert isinstance(err, ToolkitError) and isinstance(err, RuntimeError)
    msg = str(err)
    assert "worker rank 1" in msg and "SIGKILL" in msg, msg
    assert "rank 1 about to die" in msg, msg
    assert "Fix:" in msg
    assert (err.role, err.rank, err.returncode, err.signal, err.timed_out) == \
        ("worker", 1, -signal.SIGKILL, "SIGKILL", False)
    assert not (tmp_path / "rank0-finished").exists()
    recorded = [int((tmp_path / f"pid{r}").read_text()) for r in (0, 1)]
    assert sorted(recorded) == sorted(err.pids["worker"])
    _assert_all_gone(env, _all_pids(err.pids))


def test_timeout_stops_everything_grandchildren_included(tmp_path):
    script = _write(tmp_path, "sleep.py", SLEEP_SCRIPT)
    env = _marker_env()
    t0 = time.monotonic()
    with pytest.raises(DistributedError) as info:
        launch([sys.executable, script, str(tmp_path)], num_workers=2, timeout=6, env=env,
               verbose=False)
    elapsed = time.monotonic() - t0
    assert elapsed < 6 + 60, elapsed        # the workers would sleep for 1000 s
    err = info.value
    msg = str(err)
    assert "timeout of 6 s" in msg and "raise the timeout" in msg, msg
    assert err.timed_out
    grandchildren = _recorded_pids(tmp_path)
    assert len(grandchildren) == 4, "both workers should have started their child"
    _assert_all_gone(env, _all_pids(err.pids) + grandchildren)


def test_inherited_dmlc_and_ps_variables_do_not_leak(tmp_path, monkeypatch):
    script = _write(tmp_path, "kv.py", KV_SCRIPT)
    monkeypatch.setenv("DMLC_PS_ROOT_PORT", "1")           # would make every role fail
    monkeypatch.setenv("DMLC_NUM_WORKER", "7")
    monkeypatch.setenv("DMLC_ROLE", "scheduler")
    monkeypatch.setenv("DMLC_INTERFACE", "bogus0")
    monkeypatch.setenv("PS_BOGUS_SETTING", "yes")
    env = _marker_env()
    result = launch([sys.executable, script, str(tmp_path)], num_workers=2, timeout=120,
                    env=env, verbose=False)
    for r in (0, 1):
        out = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert out["value"] == [3.0] * 4
        assert out["env"] == {
            "DMLC_ROLE": "worker", "DMLC_PS_ROOT_URI": "127.0.0.1",
            "DMLC_PS_ROOT_PORT": str(result.port), "DMLC_NUM_SERVER": "1",
            "DMLC_NUM_WORKER": "2", "DMLC_NODE_HOST": "127.0.0.1", "PS_VERBOSE": "1"}
    _assert_all_gone(env, _all_pids(result.pids))


def test_busy_port_is_retried(tmp_path, capsys):
    script = _write(tmp_path, "kv.py", KV_SCRIPT)
    env = _marker_env()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = launch([sys.executable, script, str(tmp_path)], num_workers=2, timeout=120,
                        env=env, port=port)
        assert result.port != port
        assert f"port {port} is in use" in capsys.readouterr().out
        for r in (0, 1):
            assert json.loads((tmp_path / f"rank{r}.json").read_text())["value"] == [3.0] * 4
        _assert_all_gone(env, _all_pids(result.pids))

        # With a single attempt the busy port is an error that says what to do.
        with pytest.raises(DistributedError, match=f"(?s)port {port} on 127.0.0.1 was in "
                                                   "use.*port_attempts"):
            launch([sys.executable, script, str(tmp_path)], timeout=120, env=env, port=port,
                   port_attempts=1, verbose=False)
        assert _processes_with(env["TOOLKIT_LAUNCHER_TEST"]) == []


def test_worker_exit_code_and_error_output_are_reported(tmp_path):
    script = _write(tmp_path, "fail.py", FAIL_SCRIPT)
    env = _marker_env()
    with pytest.raises(DistributedError) as info:
        launch([sys.executable, script], num_workers=2, timeout=120, env=env, verbose=False)
    msg = str(info.value)
    assert "exited with code 1" in msg and "ValueError: boom-marker-42" in msg, msg
    assert info.value.role == "worker" and info.value.returncode == 1
    _assert_all_gone(env, _all_pids(info.value.pids))


def test_missing_program_is_reported_and_nothing_is_left(tmp_path):
    env = _marker_env()
    with pytest.raises(DistributedError, match="Could not start worker #0"):
        launch([str(tmp_path / "no-such-program")], timeout=60, env=env, verbose=False)
    assert _processes_with(env["TOOLKIT_LAUNCHER_TEST"]) == []


@pytest.mark.parametrize("kwargs", [
    dict(command="python train.py"), dict(command=[]), dict(num_workers=0),
    dict(num_servers=0), dict(timeout=0), dict(timeout="10"), dict(port=70000),
    dict(env={"A": 1}), dict(num_workers=True)])
def test_bad_arguments(kwargs):
    args = dict(command=[sys.executable, "-c", "pass"])
    args.update(kwargs)
    with pytest.raises(InvalidParameterError):
        launch(args.pop("command"), **args)


def test_command_line(tmp_path):
    script = _write(tmp_path, "kv.py", KV_SCRIPT)
    run = subprocess.run([sys.executable, "-m", "toolkit.distributed", "-n", "2", "-s", "1",
                          "--timeout", "120", "--", sys.executable, script, str(tmp_path)],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "[worker 1] rank 1 done" in run.stdout and "succeeded" in run.stdout
    fail = _write(tmp_path, "fail.py", FAIL_SCRIPT)
    run = subprocess.run([sys.executable, "-m", "toolkit.distributed", "-n", "1", "-q",
                          "--", sys.executable, fail], capture_output=True, text=True,
                         timeout=180)
    assert run.returncode == 1
    assert "DistributedError" not in run.stderr and "boom-marker-42" in run.stderr


def test_module_does_not_import_mxnet():
    code = "import sys, toolkit.distributed; print('mxnet' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_terminating_the_command_line_launcher_stops_the_job(tmp_path):
    script = _write(tmp_path, "sleep.py", SLEEP_SCRIPT)
    env = dict(os.environ, **_marker_env())
    cli = subprocess.Popen([sys.executable, "-m", "toolkit.distributed", "-n", "2",
                            "--timeout", "120", "--", sys.executable, script, str(tmp_path)],
                           env=env, stdout=subprocess.PIPE, text=True)
    try:
        _wait_for_files(tmp_path, "pids-*", 2)   # both workers run (and their children)
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.stdout.close()
    grandchildren = _recorded_pids(tmp_path)
    assert len(grandchildren) == 4
    assert _processes_with(env["TOOLKIT_LAUNCHER_TEST"]) == []
    assert [p for p in grandchildren if _alive(p)] == []


# Each worker starts a child in a session of its own (out of the launcher's reach by
# process group) that keeps the worker's stdout and stderr open, then sleeps or exits.
STRAY_SCRIPT = """
import os, subprocess, sys, time
out_dir, then = sys.argv[1], sys.argv[2]
stray = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(900)'],
                         start_new_session=True)
open(os.path.join(out_dir, 'stray-%d' % os.getpid()), 'w').write('%d' % stray.pid)
print('left a stray process', flush=True)
if then == 'sleep':
    time.sleep(900)
"""


@pytest.mark.parametrize("then", ["sleep", "exit"])
def test_a_stray_process_holding_the_output_neither_holds_the_launcher_nor_survives(
        tmp_path, then):
    # The reader threads used to block on a pipe the stray process kept open, and
    # closing the pipe waited for them: the launcher overran its timeout for as long
    # as the stray process lived.
    script = _write(tmp_path, "stray.py", STRAY_SCRIPT)
    env = _marker_env()
    outcome = {}

    def run():
        try:
            outcome["result"] = launch([sys.executable, script, str(tmp_path), then],
                                       num_workers=2, timeout=8, env=env, verbose=True)
        except BaseException as exc:        # noqa: B902 - reported by the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        thread.join(timeout=8 + 150)        # generous: the machine may be busy
        assert not thread.is_alive(), "launch() did not return: it waits on a stray pipe"
    finally:
        for pid in _recorded_pids(tmp_path, "stray-*"):   # unblock a hung launcher
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    strays = _recorded_pids(tmp_path, "stray-*")
    assert len(strays) == 2
    if then == "sleep":
        assert isinstance(outcome.get("error"), DistributedError), outcome
        assert outcome["error"].timed_out
    else:
        assert "result" in outcome, outcome
    # Stopped by the launcher (the finally above only acts when the test fails).
    assert [p for p in strays if _alive(p)] == []
    assert _processes_with(env["TOOLKIT_LAUNCHER_TEST"]) == []


@pytest.mark.slow
def test_idle_workers_at_the_timeout_are_reported_as_waiting_for_a_peer(tmp_path):
    script = _write(tmp_path, "sleep.py", SLEEP_SCRIPT)
    env = _marker_env()
    with pytest.raises(DistributedError) as info:
        launch([sys.executable, script, str(tmp_path)], num_workers=2, timeout=30, env=env,
               verbose=False, idle_seconds=2)
    msg = str(info.value)
    assert info.value.timed_out
    assert "waiting for a peer" in msg and "a longer timeout would not help" in msg, msg
    assert re.search(r"Workers that did not finish: worker \d+ in launch order.*, worker "
                     r"\d+ in launch order", msg), msg
    _assert_all_gone(env, _all_pids(info.value.pids) + _recorded_pids(tmp_path))


# Rank 0 makes a second round that rank 1 never joins: the classic hang.
HANG_SCRIPT = """
import os, sys
import mxnet as mx
out_dir = sys.argv[1]
kv = mx.kv.create('dist_sync')
open(os.path.join(out_dir, 'joined-%d' % kv.rank), 'w').write(str(os.getpid()))
kv.init(7, mx.nd.zeros((4,)))
kv.push(7, mx.nd.ones((4,)))
out = mx.nd.zeros((4,))
kv.pull(7, out=out)
out.wait_to_read()
if kv.rank == 0:
    kv.push(7, mx.nd.ones((4,)))
    kv.pull(7, out=out)
    out.wait_to_read()
print('finished', flush=True)
"""


def test_a_hung_job_is_reported_while_it_runs(tmp_path):
    script = _write(tmp_path, "hang.py", HANG_SCRIPT)
    env = dict(os.environ, **_marker_env())
    cli = subprocess.Popen([sys.executable, "-m", "toolkit.distributed", "-n", "2",
                            "--timeout", "600", "--idle-seconds", "3", "--",
                            sys.executable, script, str(tmp_path)],
                           env=env, stdout=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(cli.stdout), daemon=True)
    reader.start()
    try:
        until = time.monotonic() + 300      # generous: the machine may be busy
        while not any("waiting for a peer" in line for line in lines):
            assert cli.poll() is None, "".join(lines)
            assert time.monotonic() < until, "".join(lines)
            time.sleep(0.2)
        report = next(line for line in lines if "waiting for a peer" in line)
        assert report.startswith("[launcher] no worker has used the CPU for")
        assert re.search(r"Not finished: worker rank 0 \(pid \d+\), worker rank 1", report), \
            report
        cli.send_signal(signal.SIGINT)      # Ctrl-C
        assert cli.wait(timeout=60) == 130
    finally:
        if cli.poll() is None:
            cli.kill()
    reader.join(timeout=10)
    assert _processes_with(env["TOOLKIT_LAUNCHER_TEST"]) == []


# The caller starts with SIGTERM and SIGHUP at their default action, as a script started
# from a shell does: run under nohup (or by a job runner that ignores SIGHUP), the test's
# own process would pass SIGHUP on ignored, and launch() rightly leaves an ignored signal
# alone.
LIBRARY_CALLER = """
import signal, sys
for sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, signal.SIG_DFL)
from toolkit.distributed import launch
launch([sys.executable] + sys.argv[1:], num_workers=2, timeout=600, verbose=False)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_terminating_a_script_that_calls_launch_stops_the_job(tmp_path, sig):
    script = _write(tmp_path, "sleep.py", SLEEP_SCRIPT)
    caller = _write(tmp_path, "caller.py", LIBRARY_CALLER)
    env = dict(os.environ, **_marker_env())
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(launch.__code__.co_filename)))]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.Popen([sys.executable, caller, script, str(tmp_path)], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_files(tmp_path, "pids-*", 2)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        assert proc.returncode == 128 + sig, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    grandchildren = _recorded_pids(tmp_path)
    assert len(grandchildren) == 4
    assert _processes_with(env["TOOLKIT_LAUNCHER_TEST"]) == []
    assert [p for p in grandchildren if _alive(p)] == []
