"""Data-parallel training on a parameter-server cluster (mxnet's ``dist_sync`` kvstore).

A parameter-server job has three roles: one **scheduler** (it introduces the others
to each other), one or more **servers** (they hold the weights and add up the
workers' gradients) and one or more **workers** (each runs the same training script
on its part of the work). mxnet picks the role from environment variables
(:func:`role_environment` lists them); the scheduler and the servers need no script:
``python -c "import mxnet"`` with their role set runs that role and exits when the
job ends.

:func:`launch` (or ``python -m toolkit.distributed``) runs such a job on this machine,
all roles on 127.0.0.1::

    python -m toolkit.distributed -n 2 -s 1 --timeout 600 -- python train.py

It picks a free port (and tries another when the port turns out to be taken),
gives every process exactly the variables of its role (inherited ``DMLC_*`` and
``PS_*`` variables are dropped), streams the workers' output prefixed with
``[worker N]``, and, because mxnet never notices a dead peer (the others wait for it
forever), stops the whole job as soon as one process fails or the timeout passes,
raising :class:`toolkit.errors.DistributedError`. No process outlives the call.

Only POSIX systems are supported (process groups are used to stop whole trees).
This module does not import mxnet.
"""

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from .errors import DistributedError, InvalidParameterError

__all__ = ["launch", "role_environment", "LaunchResult", "main"]

#: Every process of a local cluster listens on the loopback interface only.
HOST = "127.0.0.1"

#: Lines of output kept per process for error messages.
TAIL_LINES = 20

#: Seconds between SIGTERM and SIGKILL when stopping the job.
GRACE_SECONDS = 3.0

#: Seconds the scheduler and servers may take to exit after every worker succeeded.
EXIT_WAIT_SECONDS = 10.0

_POLL = 0.05
_INHERITED_PREFIXES = ("DMLC_", "PS_")
_INFRA_CODE = "import mxnet"

# ps-lite's own log lines (PS_VERBOSE=1), used to see the scheduler bind its port and
# to learn each worker's kvstore rank; they are not echoed to the user.
# ps-lite logs "Bind to ... port=-1" just before failing on a busy port.
_SCHEDULER_BOUND = re.compile(r"Bind to role=scheduler\b.*\bport=\d")
_BIND_FAILED = "bind failed"
_WORKER_CONNECTED = re.compile(r"\bW\[(\d+)\] is connected to others")
_PS_NOISE = re.compile(r"ps-lite/src/\S+:\d+: (Bind to role=|[WSH]\[\d+\] is "
                       r"(connected to others|stopping|stopped))")

LaunchResult = collections.namedtuple("LaunchResult", "port elapsed pids worker_ranks")
LaunchResult.__doc__ = """What :func:`launch` returns after a successful job.

port : int
    The scheduler's port on 127.0.0.1.
elapsed : float
    Seconds from the start of the scheduler to the end of the last process.
pids : dict
    ``{'scheduler': [pid], 'server': [pids], 'worker': [pids]}`` (launch order).
worker_ranks : list
    Each worker's kvstore rank (``kv.rank``), in launch order; None where it was not
    seen. Launch order and rank need not agree: the scheduler assigns the ranks.
"""


def role_environment(role, root_uri, root_port, num_workers, num_servers,
                     node_host=None):
    """The environment variables mxnet's parameter server needs for one role.

    Parameters
    ----------
    role : {'scheduler', 'server', 'worker'}
    root_uri : str
        Address of the scheduler's machine, reachable from every machine.
    root_port : int
        The scheduler's port (free on its machine).
    num_workers, num_servers : int
        The sizes of the whole job (the same for every process).
    node_host : str, optional
        The address this server or worker listens on, reachable from the other
        machines (``DMLC_NODE_HOST``). Without it ps-lite guesses an interface, which
        fails in sandboxes and containers; on one machine use ``'127.0.0.1'``.

    Returns
    -------
    dict
        Variable name -> value (strings), to add to an environment from which every
        other ``DMLC_*``/``PS_*`` variable was removed.

    Examples
    --------
    >>> from toolkit.distributed import role_environment
    >>> env = role_environment('worker', '10.0.0.1', 9091, num_workers=2,
    ...                        num_servers=1, node_host='10.0.0.2')
    >>> for name in sorted(env):
    ...     print(name, env[name])
    DMLC_NODE_HOST 10.0.0.2
    DMLC_NUM_SERVER 1
    DMLC_NUM_WORKER 2
    DMLC_PS_ROOT_PORT 9091
    DMLC_PS_ROOT_URI 10.0.0.1
    DMLC_ROLE worker
    """
    if role not in ("scheduler", "server", "worker"):
        raise InvalidParameterError(
            f"role must be 'scheduler', 'server' or 'worker', not {role!r}.")
    env = {"DMLC_ROLE": role, "DMLC_PS_ROOT_URI": str(root_uri),
           "DMLC_PS_ROOT_PORT": str(int(root_port)),
           "DMLC_NUM_SERVER": str(int(num_servers)), "DMLC_NUM_WORKER": str(int(num_workers))}
    if node_host is not None and role != "scheduler":
        env["DMLC_NODE_HOST"] = str(node_host)
    return env


def launch(command, num_workers=2, num_servers=1, timeout=600, env=None, verbose=True,
           port=None, port_attempts=5):
    """Run ``command`` as every worker of a parameter-server job on this machine.

    Starts a scheduler, ``num_servers`` servers and ``num_workers`` workers on
    127.0.0.1, each in its own process group, and waits for the workers. The workers
    all run ``command``; a script using ``mx.kv.create('dist_sync')`` (or a toolkit
    ``create()``, which does so when it sees ``DMLC_ROLE=worker``) then trains on the
    cluster. ``kv.rank`` tells a worker its rank: let only rank 0 write files such as
    the model.

    The job succeeds when every worker exits with code 0. It fails, and every process
    is stopped (SIGTERM, then SIGKILL after a few seconds), as soon as any process
    exits with a non-zero code or is killed by a signal, or when ``timeout`` passes:
    mxnet never notices a dead peer, so without this the others would wait forever.

    Parameters
    ----------
    command : list of str
        The worker's argv, e.g. ``[sys.executable, 'train.py', '--epochs', '5']``.
    num_workers : int, default 2
        Number of worker processes.
    num_servers : int, default 1
        Number of server processes.
    timeout : float or None, default 600
        Seconds the whole job may take, start-up included; None for no limit (a
        hung worker then hangs the call).
    env : dict, optional
        Variables added to every process's environment. The inherited environment
        is used without its ``DMLC_*`` and ``PS_*`` variables; the role's own
        variables are then set by the launcher and win over ``env``. Workers also
        get ``PYTHONUNBUFFERED=1`` unless it is set, so their output streams.
    verbose : bool, default True
        Print the cluster's start and the workers' output, each line prefixed with
        ``[worker RANK]`` (``[worker #I]``, I the launch order, until the rank is
        known). When False nothing is printed; errors still carry the output's last
        lines.
    port : int, optional
        The scheduler's first port to try; by default a free one is picked. When the
        port is taken another free port is tried, ``port_attempts`` times in all.
    port_attempts : int, default 5
        How many ports to try for the scheduler.

    Returns
    -------
    LaunchResult
        ``port``, ``elapsed`` seconds, ``pids`` per role and the workers' kvstore
        ranks.

    Raises
    ------
    toolkit.errors.DistributedError
        A process failed, the timeout passed, a command could not be started or no
        port could be bound. The message names the process (role, rank, pid), its
        exit code or signal, the last lines of its error output and what to do.
        The attributes ``role``, ``rank``, ``returncode``, ``signal``,
        ``timed_out``, ``stderr_tail`` and ``pids`` hold the same facts.

    Examples
    --------
    >>> import sys, textwrap, tempfile, os
    >>> from toolkit.distributed import launch
    >>> script = os.path.join(tempfile.mkdtemp(), 'sum.py')
    >>> with open(script, 'w') as f:
    ...     _ = f.write(textwrap.dedent('''
    ...         import mxnet as mx
    ...         kv = mx.kv.create('dist_sync')
    ...         kv.init(0, mx.nd.zeros(2))
    ...         kv.push(0, mx.nd.ones(2) * (kv.rank + 1))
    ...         out = mx.nd.zeros(2)
    ...         kv.pull(0, out=out)
    ...         print('rank', kv.rank, 'sees', out.asnumpy().tolist())
    ...     '''))
    >>> result = launch([sys.executable, script], num_workers=2, timeout=120,
    ...                 verbose=False)
    >>> sorted(result.worker_ranks)
    [0, 1]
    """
    command = _check_command(command)
    num_workers = _check_int(num_workers, "num_workers", 1)
    num_servers = _check_int(num_servers, "num_servers", 1)
    port_attempts = _check_int(port_attempts, "port_attempts", 1)
    if port is not None:
        port = _check_int(port, "port", 1)
        if port > 65535:
            raise InvalidParameterError(f"port must be at most 65535, not {port}.")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not timeout > 0:
            raise InvalidParameterError(
                f"timeout must be a positive number of seconds or None, not {timeout!r}.")
    if env is not None:
        if not hasattr(env, "items") or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise InvalidParameterError("env must be a dict of str to str.")
    if os.name != "posix":
        raise DistributedError("The local cluster launcher needs a POSIX system "
                               "(Linux, macOS): it stops process groups.")
    cluster = _Cluster(command, num_workers, num_servers, timeout, dict(env or {}),
                       verbose, port, port_attempts)
    try:
        cluster.run()
    finally:
        cluster.stop()
    if cluster.failure is not None:
        raise cluster.error()
    return LaunchResult(cluster.port, cluster.elapsed(), cluster.pids(),
                        [w.kv_rank for w in cluster.workers])


# --- internals ---------------------------------------------------------------

def _check_int(value, name, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidParameterError(f"{name} must be an integer >= {low}, not {value!r}.")
    return value


def _check_command(command):
    if isinstance(command, (str, bytes)):
        raise InvalidParameterError(
            "command must be a list of arguments, e.g. [sys.executable, 'train.py'], "
            f"not the string {command!r}.")
    try:
        command = [os.fspath(a) for a in command]
    except TypeError:
        raise InvalidParameterError(
            f"command must be a list of str arguments, not {command!r}.") from None
    if not command or not all(isinstance(a, str) for a in command):
        raise InvalidParameterError(
            f"command must be a non-empty list of str arguments, not {command!r}.")
    return command


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _Proc:
    """One process of the job, its output readers and the tail of its output."""

    def __init__(self, role, index, argv, env, verbose, lock):
        self.role, self.index, self.verbose, self._lock = role, index, verbose, lock
        self.kv_rank = None
        self.bound = threading.Event()
        self.bind_failed = False
        self.tail = collections.deque(maxlen=TAIL_LINES)      # stderr (all output: infra)
        self.out_tail = collections.deque(maxlen=TAIL_LINES)  # a worker's stdout
        self.started = time.monotonic()
        worker = role == "worker"
        self.popen = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if worker else subprocess.STDOUT,
            start_new_session=True, text=True, encoding="utf-8", errors="replace",
            bufsize=1)
        self.pid = self.popen.pid
        self.threads = [threading.Thread(target=self._read, args=(self.popen.stdout, "out"),
                                         daemon=True)]
        if worker:
            self.threads.append(threading.Thread(
                target=self._read, args=(self.popen.stderr, "err"), daemon=True))
        for t in self.threads:
            t.start()

    def label(self):
        if self.role == "worker":
            if self.kv_rank is not None:
                return f"worker rank {self.kv_rank} (pid {self.pid})"
            return f"worker #{self.index} (launch order; rank not known yet; pid {self.pid})"
        if self.role == "server":
            return f"server #{self.index} (pid {self.pid})"
        return f"scheduler (pid {self.pid})"

    def prefix(self):
        return (f"[worker {self.kv_rank}] " if self.kv_rank is not None
                else f"[worker #{self.index}] ")

    def _read(self, pipe, which):
        try:
            for line in iter(pipe.readline, ""):
                line = line.rstrip("\n")
                if self.role == "scheduler":
                    if _SCHEDULER_BOUND.search(line):
                        self.bound.set()
                    if _BIND_FAILED in line:
                        self.bind_failed = True
                if self.role == "worker" and which == "err":
                    m = _WORKER_CONNECTED.search(line)
                    if m:
                        # ps-lite numbers workers 9, 11, 13... (rank * 2 + 9).
                        self.kv_rank = (int(m.group(1)) - 9) // 2
                if _PS_NOISE.search(line):
                    continue
                (self.out_tail if self.role == "worker" and which == "out"
                 else self.tail).append(line)
                if self.role == "worker" and self.verbose:
                    stream = sys.stdout if which == "out" else sys.stderr
                    with self._lock:
                        try:
                            stream.write(self.prefix() + line + "\n")
                            stream.flush()
                        except (OSError, ValueError):
                            pass
        except (OSError, ValueError):
            pass

    def tail_block(self, limit=TAIL_LINES):
        """The last lines of the error output (of the output if that was empty)."""
        if self.role != "worker":
            return _tail_block(f"Last lines of the output of {self.label()}:", self.tail, limit)
        if self.tail or not self.out_tail:
            return _tail_block(f"Last lines of the error output of {self.label()}:",
                               self.tail, limit)
        return _tail_block(f"Last lines of the output of {self.label()} (its error output "
                           "was empty):", self.out_tail, limit)

    def poll(self):
        return self.popen.poll()

    def signal_group(self, sig):
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def group_alive(self):
        if self.popen.poll() is None:
            return True
        try:
            os.killpg(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def close(self):
        for t in self.threads:
            t.join(timeout=2.0)
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass


class _Cluster:
    def __init__(self, command, num_workers, num_servers, timeout, env, verbose, port,
                 port_attempts):
        self.command, self.num_workers, self.num_servers = command, num_workers, num_servers
        self.timeout, self.user_env, self.verbose = timeout, env, verbose
        self.first_port, self.port_attempts = port, port_attempts
        self.port = None
        self.scheduler, self.servers, self.workers = None, [], []
        self.all = []
        self.failure = None          # (kind, proc or None, detail)
        self.busy_ports = []
        self.lingering = []
        self._lock = threading.Lock()
        self.t0 = time.monotonic()
        self.t_end = None
        self.deadline = None if timeout is None else self.t0 + timeout

    # -- environment ----------------------------------------------------------
    def _env(self, role):
        env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIXES)}
        env.update(self.user_env)
        env.update(role_environment(role, HOST, self.port, self.num_workers,
                                    self.num_servers,
                                    node_host=None if role == "scheduler" else HOST))
        if role in ("scheduler", "worker"):
            # Needed to see the scheduler bind and to learn the workers' ranks.
            try:
                level = int(env.get("PS_VERBOSE", "0"))
            except ValueError:
                level = 0
            env["PS_VERBOSE"] = str(max(level, 1))
        if role == "worker":
            env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _say(self, message):
        if self.verbose:
            with self._lock:
                print(f"[launcher] {message}", flush=True)

    def _start(self, role, index, argv):
        try:
            proc = _Proc(role, index, argv, self._env(role), self.verbose, self._lock)
        except OSError as exc:
            self.failure = ("start", None, (role, index, argv, exc))
            return None
        self.all.append(proc)
        return proc

    def _timed_out(self):
        return self.deadline is not None and time.monotonic() > self.deadline

    # -- running ----------------------------------------------------------------
    def run(self):
        if not self._start_scheduler():
            return
        infra = [sys.executable, "-c", _INFRA_CODE]
        for i in range(self.num_servers):
            proc = self._start("server", i, infra)
            if proc is None:
                return
            self.servers.append(proc)
        for i in range(self.num_workers):
            proc = self._start("worker", i, self.command)
            if proc is None:
                return
            self.workers.append(proc)
        self._say(f"scheduler on {HOST}:{self.port}, {self.num_servers} server(s), "
                  f"{self.num_workers} worker(s) running {' '.join(self.command)}")
        self._watch()

    def _start_scheduler(self):
        infra = [sys.executable, "-c", _INFRA_CODE]
        for attempt in range(self.port_attempts):
            if attempt == 0 and self.first_port is not None:
                self.port = self.first_port
            else:
                self.port = _free_port()
            proc = self._start("scheduler", 0, infra)
            if proc is None:
                return False
            self.scheduler = proc
            while not proc.bound.wait(_POLL):
                rc = proc.poll()
                if rc is not None:
                    proc.close()
                    if proc.bind_failed:
                        self.busy_ports.append(self.port)
                        self._say(f"port {self.port} is in use; trying another one")
                        break
                    self.failure = ("exit", proc, rc)
                    return False
                if self._timed_out():
                    self.failure = ("timeout", None, ("the scheduler was starting", []))
                    return False
            else:
                return True
        self.failure = ("ports", None, list(self.busy_ports))
        return False

    def _watch(self):
        while True:
            done = True
            for proc in self.workers + self.servers + [self.scheduler]:
                rc = proc.poll()
                if rc is not None and rc != 0:
                    self.failure = ("exit", proc, rc)
                    return
                if proc.role == "worker" and rc is None:
                    done = False
            if done:
                break
            if self._timed_out():
                self.failure = ("timeout", None, (
                    "training", [w for w in self.workers if w.poll() is None]))
                return
            time.sleep(_POLL)
        # Every worker succeeded: the servers and the scheduler should now exit.
        wait_until = time.monotonic() + EXIT_WAIT_SECONDS
        infra = self.servers + [self.scheduler]
        while time.monotonic() < wait_until and any(p.poll() is None for p in infra):
            time.sleep(_POLL)
        self.lingering = [p for p in infra if p.poll() is None]
        if self.lingering:
            self._say("training finished; stopping " + ", ".join(
                p.label() for p in self.lingering) + ", which did not exit by itself")

    # -- stopping -----------------------------------------------------------------
    def stop(self):
        """Stop every process group (SIGTERM, then SIGKILL) and reap everything."""
        procs = list(self.all)
        if procs:
            for p in procs:
                p.signal_group(signal.SIGTERM)
            until = time.monotonic() + GRACE_SECONDS
            while time.monotonic() < until and any(p.group_alive() for p in procs):
                time.sleep(_POLL)
            for p in procs:
                p.signal_group(signal.SIGKILL)
            for p in procs:
                try:
                    p.popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            until = time.monotonic() + 5.0
            while time.monotonic() < until and any(p.group_alive() for p in procs):
                time.sleep(_POLL)
            for p in procs:
                p.close()
        if self.t_end is None:
            self.t_end = time.monotonic()

    def elapsed(self):
        return (self.t_end or time.monotonic()) - self.t0

    def pids(self):
        return {"scheduler": [p.pid for p in self.all if p.role == "scheduler"],
                "server": [p.pid for p in self.servers],
                "worker": [p.pid for p in self.workers]}

    # -- the error ---------------------------------------------------------------
    def error(self):
        kind, proc, detail = self.failure
        elapsed = self.elapsed()
        stopped = ("The launcher stopped every process of the job: mxnet never notices a "
                   "dead peer, so the others would have waited for it forever.")
        attrs = dict(role=None, rank=None, returncode=None, signal=None, timed_out=False,
                     stderr_tail=[], pids=self.pids())
        if kind == "exit":
            rc = detail
            attrs.update(role=proc.role, returncode=rc, stderr_tail=list(proc.tail),
                         rank=proc.kv_rank if proc.role == "worker" else proc.index)
            if rc < 0:
                name = _signal_name(-rc)
                attrs["signal"] = name
                what = f"was killed by signal {name} ({-rc})"
            else:
                what = f"exited with code {rc}"
            lines = [f"Distributed training failed after {elapsed:.1f} s: {proc.label()} "
                     f"{what}.", stopped, ""]
            lines += proc.tail_block()
            if rc < 0 and -rc == signal.SIGKILL:
                fix = ("Fix: SIGKILL usually comes from the out-of-memory killer or from a "
                       "user; give each worker more memory (fewer workers per machine, a "
                       "smaller batch) and run again.")
            elif rc < 0:
                fix = (f"Fix: find out what sent {_signal_name(-rc)} to the process (a crash "
                       "in native code gives SIGSEGV or SIGABRT) and run again.")
            elif proc.role == "worker":
                fix = ("Fix: correct the error shown above and run again; every worker runs "
                       "the same command, so it usually fails on one machine alone too.")
            else:
                fix = (f"Fix: the {proc.role} runs `{sys.executable} -c \"{_INFRA_CODE}\"` "
                       "with its role's DMLC_* variables; check that mxnet imports in this "
                       "environment and see the output above.")
            lines += ["", fix]
        elif kind == "timeout":
            attrs["timed_out"] = True
            phase, running = detail
            lines = [f"Distributed training did not finish within the timeout of "
                     f"{self.timeout:g} s ({phase}); the launcher stopped every process "
                     "of the job."]
            if running:
                lines.append("Workers still running then: " + ", ".join(
                    w.label() for w in running) + ".")
                for w in running[:4]:
                    lines += [""] + w.tail_block(8)
            lines += ["", "Fix: if training needs longer, raise the timeout (launch(..., "
                      "timeout=SECONDS) or --timeout SECONDS). If it should have finished, "
                      "a worker is waiting for a peer: every worker must make the same "
                      "pushes and pulls (run the same number of steps), and a process that "
                      "died on another machine is never noticed by mxnet."]
        elif kind == "ports":
            ports = ", ".join(map(str, detail))
            lines = ["Could not start the parameter-server scheduler: "
                     + (f"port {ports} on {HOST} was in use." if len(detail) == 1 else
                        f"ports {ports} on {HOST} were all in use."),
                     f"Fix: free a port, pass another port=, or raise port_attempts (now "
                     f"{self.port_attempts})."]
        else:  # "start"
            role, index, argv, exc = detail
            attrs["role"] = role
            attrs["rank"] = None if role == "worker" else index
            lines = [f"Could not start {role} #{index} ({' '.join(argv)}): {exc}.",
                     "Fix: check the command (the program must exist and be executable; "
                     "pass a list such as [sys.executable, 'train.py']). Every process "
                     "already started was stopped."]
        err = DistributedError("\n".join(lines))
        for k, v in attrs.items():
            setattr(err, k, v)
        return err


def _tail_block(title, tail, limit=TAIL_LINES):
    lines = list(tail)[-limit:]
    if not lines:
        return [title, "    (nothing)"]
    return [title] + ["    " + line for line in lines]


# --- command line ----------------------------------------------------------------

def main(argv=None):
    """``python -m toolkit.distributed [-n N] [-s S] [--timeout T] -- COMMAND...``.

    Returns 0 when every worker succeeded, 1 (after printing the error) otherwise.
    """
    import argparse
    parser = argparse.ArgumentParser(
        prog="python -m toolkit.distributed",
        description="Run COMMAND as every worker of an mxnet parameter-server job on "
                    "this machine (scheduler, servers and workers on 127.0.0.1). "
                    "Stops the whole job when a process fails or the timeout passes.")
    parser.add_argument("-n", "--num-workers", type=int, default=2,
                        help="number of workers (default 2)")
    parser.add_argument("-s", "--num-servers", type=int, default=1,
                        help="number of servers (default 1)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds the whole job may take; 0 for no limit (default 600)")
    parser.add_argument("--port", type=int, default=None,
                        help="the scheduler's first port to try (default: a free one)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="do not print the workers' output")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the worker's command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the worker's command after --, e.g. -- python train.py")

    def _terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        result = launch(command, num_workers=args.num_workers, num_servers=args.num_servers,
                        timeout=args.timeout if args.timeout > 0 else None,
                        verbose=not args.quiet, port=args.port)
    except (DistributedError, InvalidParameterError) as exc:
        print(f"toolkit.distributed: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("toolkit.distributed: interrupted; every process of the job was stopped.",
              file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not args.quiet:
        print(f"[launcher] all {args.num_workers} worker(s) succeeded in "
              f"{result.elapsed:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
