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
``[worker RANK]``, and, because mxnet never notices a dead peer (the others wait for
it forever), stops the whole job as soon as one process fails or the timeout passes,
raising :class:`toolkit.errors.DistributedError`. When the workers sit without using
the CPU it says that one is waiting for a peer, and which have not finished. No
process outlives the call, not even one a worker started in a session of its own.

Only POSIX systems are supported (process groups are used to stop whole trees).
This module does not import mxnet.
"""

import collections
import os
import re
import select
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

#: Seconds without CPU use by any unfinished worker after which the launcher says that
#: a worker is waiting for a peer (the default of ``launch(..., idle_seconds=)``).
IDLE_SECONDS = 60.0

#: Seconds a worker's output is held back until its kvstore rank is known (it is then
#: printed as ``[worker RANK]``); a worker that has not joined the cluster by then is
#: numbered by its launch position.
RANK_WAIT_SECONDS = 30.0

_POLL = 0.05
_READ_TICK = 0.1
_SAMPLE_EVERY = 1.0
# A worker tree that used less than this share of one core over a sample is idle.
_IDLE_CPU_SHARE = 0.02
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
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
           port=None, port_attempts=5, idle_seconds=IDLE_SECONDS):
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
        ``[worker RANK]``, RANK the worker's kvstore rank. A worker's lines are held
        back until ps-lite tells its rank (when the script joins the cluster); a
        worker that has not joined within ``RANK_WAIT_SECONDS`` (30 s) or ends
        without joining is numbered by its launch position instead. When False
        nothing is printed; errors still carry the output's last lines.
    port : int, optional
        The scheduler's first port to try; by default a free one is picked. When the
        port is taken another free port is tried, ``port_attempts`` times in all.
    port_attempts : int, default 5
        How many ports to try for the scheduler.
    idle_seconds : float or None, default 60
        When no unfinished worker (nor any process it started) has used the CPU for
        this long, say that a worker is waiting for a peer and name the workers that
        did not finish (printed when ``verbose``; a timeout's error says it too).
        None: never. Linux only (it reads /proc).

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

    Notes
    -----
    The timeout holds whatever the workers leave behind: output pipes are read
    without blocking, and a process a worker started in a session of its own (or
    any process still holding a worker's output) is stopped with the job. SIGTERM
    and SIGHUP received while ``launch`` runs in the main thread (with their
    default handling) stop the job before the process exits, as Ctrl-C does.

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
    if idle_seconds is not None:
        if isinstance(idle_seconds, bool) or not isinstance(idle_seconds, (int, float)) \
                or not idle_seconds > 0:
            raise InvalidParameterError(
                f"idle_seconds must be a positive number of seconds or None, not "
                f"{idle_seconds!r}.")
    if env is not None:
        if not hasattr(env, "items") or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise InvalidParameterError("env must be a dict of str to str.")
    if os.name != "posix":
        raise DistributedError("The local cluster launcher needs a POSIX system "
                               "(Linux, macOS): it stops process groups.")
    cluster = _Cluster(command, num_workers, num_servers, timeout, dict(env or {}),
                       verbose, port, port_attempts, idle_seconds)
    previous = _exit_on_termination()
    try:
        cluster.run()
    finally:
        try:
            cluster.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if cluster.failure is not None:
        raise cluster.error()
    return LaunchResult(cluster.port, cluster.elapsed(), cluster.pids(),
                        [w.kv_rank for w in cluster.workers])


# --- internals ---------------------------------------------------------------

def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def _exit_on_termination():
    """Turn SIGTERM/SIGHUP into SystemExit while a job runs, so that it is stopped.

    Only in the main thread and only for signals left at their default action
    (which would end the process without running any cleanup); returns the
    handlers to restore.
    """
    previous = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
            previous[sig] = signal.signal(sig, _raise_exit)
    return previous


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


def _stat(pid):
    """``(ppid, pgid, cpu_seconds, start_ticks)`` of a live process from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return (int(fields[1]), int(fields[2]), (int(fields[11]) + int(fields[12])) / _CLK_TCK,
            int(fields[19]))


def _process_table():
    """``{pid: (ppid, pgid, cpu_seconds, start_ticks)}`` of every live process (Linux)."""
    table = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                table[int(name)] = st
    return table


def _descendants(roots, table):
    """Pids of every live descendant of ``roots`` (found through their parents)."""
    children = collections.defaultdict(list)
    for pid, st in table.items():
        children[st[0]].append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _pipe_holders(inodes):
    """Pids of processes (other than this one) with one of the pipes ``inodes`` open."""
    wanted = {f"pipe:[{i}]" for i in inodes}
    holders = set()
    if not wanted:
        return holders
    try:
        names = os.listdir("/proc")
    except OSError:
        return holders
    me = os.getpid()
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            for fd in os.listdir(f"/proc/{name}/fd"):
                if os.readlink(f"/proc/{name}/fd/{fd}") in wanted:
                    holders.add(int(name))
                    break
        except OSError:
            continue
    return holders


class _Proc:
    """One process of the job, its output readers and the tail of its output.

    The output is read from pipes this object owns, with ``select`` and
    non-blocking reads: a process that the worker left behind (in a session of
    its own, say) may keep a pipe open forever, and nothing here ever waits
    for that pipe to close. :meth:`close` stops the readers within a fraction
    of a second whatever the other end does.
    """

    def __init__(self, role, index, argv, env, verbose, lock):
        self.role, self.index, self.verbose, self._lock = role, index, verbose, lock
        self.kv_rank = None
        self.bound = threading.Event()
        self.bind_failed = False
        self.tail = collections.deque(maxlen=TAIL_LINES)      # stderr (all output: infra)
        self.out_tail = collections.deque(maxlen=TAIL_LINES)  # a worker's stdout
        self.started = time.monotonic()
        self.tree = {}            # pid -> start ticks of every descendant seen so far
        self._stop = threading.Event()
        self._held = []           # (stream, line) printed once the rank is known
        self._held_lock = threading.Lock()
        self._numbered_by_launch = False
        worker = role == "worker"
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe() if worker else (None, None)
        try:
            self.popen = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out_w,
                stderr=err_w if worker else subprocess.STDOUT, start_new_session=True)
        except BaseException:
            for fd in (out_r, out_w, err_r, err_w):
                if fd is not None:
                    os.close(fd)
            raise
        os.close(out_w)
        if err_w is not None:
            os.close(err_w)
        self.pid = self.popen.pid
        self.pipe_inodes = [os.fstat(fd).st_ino for fd in (out_r, err_r) if fd is not None]
        self.threads = [threading.Thread(target=self._read, args=(out_r, "out"), daemon=True)]
        if worker:
            self.threads.append(threading.Thread(target=self._read, args=(err_r, "err"),
                                                 daemon=True))
        for t in self.threads:
            t.start()

    def label(self):
        if self.role == "worker":
            if self.kv_rank is not None:
                return f"worker rank {self.kv_rank} (pid {self.pid})"
            return (f"worker {self.index} in launch order (its kvstore rank was not known; "
                    f"pid {self.pid})")
        if self.role == "server":
            return f"server {self.index} (pid {self.pid})"
        return f"scheduler (pid {self.pid})"

    def short(self):
        """``worker 1`` (its rank; its launch position while the rank is not known)."""
        return f"worker {self.kv_rank if self.kv_rank is not None else self.index}"

    def _read(self, fd, which):
        os.set_blocking(fd, False)
        pending = b""
        try:
            while True:
                stopping = self._stop.is_set()
                if not stopping:
                    try:
                        ready, _, _ = select.select([fd], [], [], _READ_TICK)
                    except InterruptedError:
                        continue
                    if not ready:
                        continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    if stopping:
                        break          # drained what was there; the other end may live on
                    continue
                if not chunk:
                    break              # end of file: every writer closed the pipe
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._line(line.decode("utf-8", "replace"), which)
        except OSError:
            pass
        finally:
            if pending:
                self._line(pending.decode("utf-8", "replace"), which)
            try:
                os.close(fd)
            except OSError:
                pass

    def _line(self, line, which):
        line = line.rstrip("\r")
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
                self.release_held()
        if _PS_NOISE.search(line):
            return
        (self.out_tail if self.role == "worker" and which == "out" else self.tail).append(line)
        if self.role == "worker" and self.verbose:
            with self._held_lock:
                if self.kv_rank is None and not self._numbered_by_launch:
                    self._held.append((which, line))
                    return
            self._print(which, line)

    def _print(self, which, line):
        stream = sys.stdout if which == "out" else sys.stderr
        with self._lock:
            try:
                stream.write(f"[{self.short()}] {line}\n")
                stream.flush()
            except (OSError, ValueError):
                pass

    def release_held(self, by_launch_order=False):
        """Print the lines held back while the rank was not known.

        ``by_launch_order``: the rank will not be known (the worker ended, or
        took too long to join the cluster): number this worker's lines by its
        launch position from now on.
        """
        with self._held_lock:
            if by_launch_order and self.kv_rank is None:
                self._numbered_by_launch = True
            held, self._held = self._held, []
        for which, line in held:
            self._print(which, line)

    def has_held(self):
        return bool(self._held)

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

    def remember_tree(self, table):
        """Note this process's descendants, to stop those that leave its process group."""
        for pid in _descendants([self.pid], table):
            self.tree.setdefault(pid, table[pid][3])

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
        """Stop the output readers (they finish within a fraction of a second)."""
        self._stop.set()
        for t in self.threads:
            t.join(timeout=1.0)
        if self.verbose:
            self.release_held(by_launch_order=True)


class _Cluster:
    def __init__(self, command, num_workers, num_servers, timeout, env, verbose, port,
                 port_attempts, idle_seconds=IDLE_SECONDS):
        self.command, self.num_workers, self.num_servers = command, num_workers, num_servers
        self.timeout, self.user_env, self.verbose = timeout, env, verbose
        self.idle_seconds = idle_seconds
        self.idle_start = None       # since when no unfinished worker used the CPU
        self.idle_reported = False
        self._last_sample = None     # (time, cpu seconds of the unfinished workers)
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
        next_sample = time.monotonic()
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
            now = time.monotonic()
            for w in self.workers:
                if w.kv_rank is None and (now - w.started > RANK_WAIT_SECONDS
                                          or w.poll() is not None):
                    w.release_held(by_launch_order=True)
            if now >= next_sample:
                next_sample = now + _SAMPLE_EVERY
                self._sample(now)
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

    def _sample(self, now):
        """Remember every process's descendants; notice when the workers sit idle."""
        table = _process_table()
        if not table:
            return                  # no /proc: neither is possible
        for p in self.all:
            p.remember_tree(table)
        running = [w for w in self.workers if w.poll() is None]
        pids = {w.pid for w in running} | _descendants([w.pid for w in running], table)
        cpu = sum(table[p][2] for p in pids if p in table)
        last, self._last_sample = self._last_sample, (now, cpu)
        if last is None:
            return
        if cpu - last[1] > _IDLE_CPU_SHARE * (now - last[0]):
            self.idle_start, self.idle_reported = None, False
            return
        if self.idle_start is None:
            self.idle_start = last[0]
        if (self.idle_seconds is not None and not self.idle_reported
                and now - self.idle_start >= self.idle_seconds):
            self.idle_reported = True
            self._say(self._idle_text(now))

    def idle_for(self, now=None):
        """Seconds the unfinished workers have used no CPU (0 when they are busy)."""
        if self.idle_start is None:
            return 0.0
        return (now or time.monotonic()) - self.idle_start

    def _idle_text(self, now=None):
        running = _by_rank(w for w in self.workers if w.poll() is None)
        finished = _by_rank(w for w in self.workers if w.poll() == 0)
        text = (f"no worker has used the CPU for {self.idle_for(now):.0f} s: a worker is "
                "waiting for a peer (a push, pull or barrier that another worker does not "
                "make). Not finished: " + (", ".join(w.label() for w in running) or "none"))
        if finished:
            text += "; finished: " + ", ".join(w.label() for w in finished)
        return text + "."

    # -- stopping -----------------------------------------------------------------
    def _strays(self):
        """``(pid, pgid)`` of descendants seen earlier that are still the same processes."""
        found = []
        for p in self.all:
            for pid, start in p.tree.items():
                st = _stat(pid)
                if st is not None and st[3] == start:
                    found.append((pid, st[1]))
        return found

    def _signal_strays(self, strays, sig):
        own_group = os.getpgrp()
        for pid, pgid in strays:
            try:
                if pgid not in (own_group, 0) and pgid not in {p.pid for p in self.all}:
                    os.killpg(pgid, sig)       # a group or session of its own
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self):
        """Stop every process of the job (SIGTERM, then SIGKILL) and its output readers.

        Process groups are signalled, and so is every descendant seen while
        the job ran (one that started a session of its own leaves the group)
        and every process still holding an output pipe of the job. Nothing here
        waits without a bound, so a stray process cannot hold the launcher.
        """
        procs = list(self.all)
        if procs:
            try:
                table = _process_table()
                for p in procs:
                    p.remember_tree(table)
                strays = self._strays()
                for p in procs:
                    p.signal_group(signal.SIGTERM)
                self._signal_strays(strays, signal.SIGTERM)
                until = time.monotonic() + GRACE_SECONDS
                while time.monotonic() < until and (
                        any(p.group_alive() for p in procs) or self._strays()):
                    time.sleep(_POLL)
            except KeyboardInterrupt:
                pass                 # a second Ctrl-C: go straight to SIGKILL
            for p in procs:
                p.signal_group(signal.SIGKILL)
            self._signal_strays(self._strays(), signal.SIGKILL)
            holders = _pipe_holders([i for p in procs for i in p.pipe_inodes])
            self._signal_strays([(pid, 0) for pid in holders], signal.SIGKILL)
            for p in procs:
                try:
                    p.popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            until = time.monotonic() + 5.0
            while time.monotonic() < until and (
                    any(p.group_alive() for p in procs) or self._strays()
                    or any(_stat(pid) for pid in holders)):
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
        attrs = dict(role=None, rank=None, returncode=None, signal=None, timed_out=False,
                     stderr_tail=[], pids=self.pids())
        if kind == "exit":
            lines = self._exit_lines(proc, detail, attrs)
        elif kind == "timeout":
            lines = self._timeout_lines(detail, attrs)
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

    def _exit_lines(self, proc, rc, attrs):
        """The error's lines when a process of the job exited (``rc``: its return code)."""
        attrs.update(role=proc.role, returncode=rc, stderr_tail=list(proc.tail),
                     rank=proc.kv_rank if proc.role == "worker" else proc.index)
        if rc < 0:
            name = _signal_name(-rc)
            attrs["signal"] = name
            what = f"was killed by signal {name} ({-rc})"
        else:
            what = f"exited with code {rc}"
        lines = [f"Distributed training failed after {self.elapsed():.1f} s: {proc.label()} "
                 f"{what}.", "The launcher stopped every process of the job: mxnet never "
                 "notices a dead peer, so the others would have waited for it forever.", ""]
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
        return lines + ["", fix]

    def _timeout_lines(self, detail, attrs):
        """The error's lines when the job ran past its timeout: who did not finish, and
        whether the workers were idle (waiting for a peer) at the end."""
        attrs["timed_out"] = True
        phase, running = detail
        lines = [f"Distributed training did not finish within the timeout of "
                 f"{self.timeout:g} s ({phase}); the launcher stopped every process "
                 "of the job."]
        running = _by_rank(running)
        finished = _by_rank(w for w in self.workers if w.popen.returncode == 0)
        if running:
            lines.append("Workers that did not finish: " + ", ".join(
                w.label() for w in running) + "." + (
                    " Finished: " + ", ".join(w.label() for w in finished) + "."
                    if finished else ""))
        idle = self.idle_for(self.t_end)
        waiting = (running and self.idle_seconds is not None
                   and idle >= self.idle_seconds)
        if waiting:
            lines.append(
                f"No unfinished worker used the CPU in the last {idle:.0f} s: a worker "
                "is waiting for a peer (a push, pull or barrier that another worker "
                "does not make), so a longer timeout would not help.")
        for w in running[:4]:
            lines += [""] + w.tail_block(8)
        if waiting:
            return lines + ["", "Fix: every worker must make the same pushes and pulls: run "
                            "the same number of steps (same data size per worker, same "
                            "max_iterations) and make every random choice from the same "
                            "seed (toolkit's create() does). A process that died on another "
                            "machine is never noticed by mxnet."]
        return lines + ["", "Fix: if training needs longer, raise the timeout (launch(..., "
                        "timeout=SECONDS) or --timeout SECONDS). If it should have "
                        "finished, a worker is waiting for a peer: every worker must make "
                        "the same pushes and pulls (run the same number of steps), and a "
                        "process that died on another machine is never noticed by mxnet."]


def _by_rank(workers):
    return sorted(workers, key=lambda w: (w.kv_rank is None, w.kv_rank or 0, w.index))


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
    parser.add_argument("--idle-seconds", type=float, default=IDLE_SECONDS,
                        help="say that a worker is waiting for a peer when no unfinished "
                             "worker used the CPU for this long; 0: never (default "
                             f"{IDLE_SECONDS:g})")
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
                        verbose=not args.quiet, port=args.port,
                        idle_seconds=args.idle_seconds if args.idle_seconds > 0 else None)
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
