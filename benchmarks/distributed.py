"""Distributed training benchmark: activity classifier throughput with 1 and 2 workers.

Runs the same per-worker script three ways and prints windows/s for each:

* local: one plain process, no parameter server (the baseline);
* 1 worker and N workers (``--workers 1,2``): a local parameter-server cluster
  (scheduler, 1 server, the workers, all on 127.0.0.1) started with
  ``toolkit.distributed.launch``; ``create()`` sees ``DMLC_ROLE=worker`` and trains
  with the ``dist_sync`` kvstore.

Each worker calls
``tc.activity_classifier.create(train, session_id='session_id', target='exercise',
max_iterations=K, random_seed=0, verbose=False)`` on ``tc.datasets.watch_sessions()``
(the ``subject`` column dropped, as in the README) and records how long that call took.
windows/s = windows in the data set x K epochs / the slowest worker's create() time:
how fast the job gets through K epochs of this data set, however create() shares the
work among the workers. "wall s" adds start-up (processes, mxnet import, connecting).

All processes share this machine's cores: on a 2-core machine the figures show the
parameter server's overhead, not a speed-up, which needs one machine (or one set of
cores) per worker.

Run: python benchmarks/distributed.py [--iterations 3] [--workers 1,2]
The machine is shared and noisy: read the ratios, not the absolute times.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

PW = 100  # create()'s default prediction_window


def worker(out_dir, iterations):
    """What every worker (and the local baseline) runs."""
    import toolkit as tc
    train = tc.datasets.watch_sessions().drop(columns="subject")
    t0 = time.perf_counter()
    tc.activity_classifier.create(train, session_id="session_id", target="exercise",
                                  max_iterations=iterations, random_seed=0, verbose=False)
    seconds = time.perf_counter() - t0
    rank = None
    try:  # the cluster create() joined (None outside a cluster)
        rank = getattr(tc.config.cluster(), "rank", None)
    except (ImportError, AttributeError):
        pass
    record = {"pid": os.getpid(), "rank": rank, "seconds": seconds,
              "role": os.environ.get("DMLC_ROLE"),
              "num_workers": os.environ.get("DMLC_NUM_WORKER")}
    path = os.path.join(out_dir, f"worker-{os.getpid()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)
    if rank in (0, None):
        print(f"create() took {seconds:.1f} s ({len(train)} rows)", flush=True)


def _records(out_dir, expected, role):
    records = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out_dir, "*.json")))]
    if len(records) != expected:
        raise SystemExit(f"expected {expected} worker result(s), found {len(records)}")
    for r in records:
        if r["role"] != role:
            raise SystemExit(f"a worker ran with DMLC_ROLE={r['role']!r}, expected {role!r}")
    return records


def run_local(iterations):
    out_dir = tempfile.mkdtemp(prefix="dist-bench-local-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DMLC_", "PS_"))}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", out_dir,
                    "--iterations", str(iterations)], env=env, check=True)
    wall = time.perf_counter() - t0
    return max(r["seconds"] for r in _records(out_dir, 1, None)), wall


def run_cluster(num_workers, iterations, timeout):
    from toolkit.distributed import launch
    out_dir = tempfile.mkdtemp(prefix=f"dist-bench-{num_workers}w-")
    result = launch([sys.executable, os.path.abspath(__file__), "--worker", out_dir,
                     "--iterations", str(iterations)], num_workers=num_workers,
                    num_servers=1, timeout=timeout, verbose=False)
    records = _records(out_dir, num_workers, "worker")
    return max(r["seconds"] for r in records), result.elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3,
                        help="max_iterations (epochs) of each create() (default 3)")
    parser.add_argument("--workers", default="1,2",
                        help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds each cluster run may take (default 1800)")
    parser.add_argument("--no-local", action="store_true", help="skip the local baseline")
    parser.add_argument("--worker", metavar="OUT_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.iterations)
        return

    import toolkit as tc
    data = tc.datasets.watch_sessions()
    n_windows = int(sum(-(-len(g) // PW) for _, g in data.groupby("session_id")))
    cores = os.cpu_count()
    print(f"Distributed training benchmark: activity classifier, watch data "
          f"({data['session_id'].nunique()} sessions, {n_windows} windows of {PW} rows), "
          f"max_iterations={args.iterations}, {cores} CPU core(s) on this machine.")
    print("windows/s = windows x epochs / the slowest worker's create() seconds; "
          "wall s includes start-up.\n")
    rows = []
    if not args.no_local:
        rows.append(("local, no parameter server",) + run_local(args.iterations))
    for n in [int(x) for x in args.workers.split(",") if x.strip()]:
        rows.append((f"{n} worker(s) + 1 server",) + run_cluster(n, args.iterations,
                                                                 args.timeout))
    base = rows[0][1]
    print(f"  {'run':<30} {'create() s':>10} {'windows/s':>10} {'vs first':>9} {'wall s':>8}")
    for name, seconds, wall in rows:
        print(f"  {name:<30} {seconds:10.1f} {n_windows * args.iterations / seconds:10.0f} "
              f"{base / seconds:9.2f} {wall:8.1f}")
    print(f"\nAll processes shared this machine's {cores} core(s): the figures show the "
          "parameter server's overhead, not a speed-up. Scaling out needs a machine (or a "
          "set of cores) per worker.")


if __name__ == "__main__":
    main()
