"""Fuzz the model file reader with the mutations of tests/_model_file_mutations.py.

Trains a tiny activity classifier on real data (or takes ``--model``), then
damages or edits its file in every region, N times, and loads each result.
Every case must end as either a success with exactly the weights the file
holds (identical to the original unless the tensor bytes themselves were
changed, with a recomputed checksum), or a ``toolkit.errors.ToolkitError``.

Prints how many cases ran and how each ended (per outcome class, per
exception type, per mutation), the slowest case and the largest heap peak,
and exits with status 1 if any case raised another exception, loaded
different weights, accepted a file that breaks the format's rules, ran longer
than ``--case-timeout`` or allocated more than 8 x the file's size + 32 MiB.

Usage::

    python benchmarks/fuzz_model_file.py                    # 100,000 cases (~10 min)
    python benchmarks/fuzz_model_file.py --cases 20000 --seed 1
    python benchmarks/fuzz_model_file.py --seed 1 --only-case 1234   # replay one case

Each case draws from its own generator seeded with (seed, case index), so a
failing case is replayed with ``--only-case``.
"""

import argparse
import collections
import os
import random
import resource
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import _model_file_mutations as M  # noqa: E402

FEATURES = ["ax", "ay", "az", "wx", "wy", "wz"]
HEAP_SLACK = 32 * 2**20


def make_model(path):
    import toolkit as tc
    data = tc.datasets.watch_sessions()
    small = data[data["session_id"] < 6].drop(columns="subject")
    model = tc.activity_classifier.create(small, "session_id", "exercise", features=FEATURES,
                                          prediction_window=10, max_iterations=1,
                                          verbose=False, random_seed=0)
    model.save(path)


class CaseTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise CaseTimeout("the case ran too long")


def run_one(layout, path, seed, index, full_every, timeout):
    rng = random.Random(f"{seed}:{index}")
    name, blob, expect = M.mutate(M.RandomDrawer(rng), layout)
    full = full_every > 0 and index % full_every == 0
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        outcome = M.run_case(layout, path, blob, expect, full_load=full,
                             measure_memory=not full)
    finally:
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)
    if outcome.failure is None and outcome.peak is not None \
            and outcome.peak > 8 * len(blob) + HEAP_SLACK:
        outcome.failure = f"heap peaked at {outcome.peak} bytes for a {len(blob)}-byte file"
    return name, full, len(blob), outcome


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="number of cases (100000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-load-every", type=int, default=10, metavar="K",
                        help="every K-th case goes through load_model (network rebuild); "
                             "the rest through open_model_file + tensors(). 0: never (10)")
    parser.add_argument("--case-timeout", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument("--model", help="a model file to mutate (default: train a tiny one)")
    parser.add_argument("--only-case", type=int, help="run just this case index (replay)")
    args = parser.parse_args(argv)

    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, _on_alarm)
    with tempfile.TemporaryDirectory(prefix="toolkit-fuzz-") as tmp:
        source = args.model or os.path.join(tmp, "original.model")
        if not args.model:
            make_model(source)
        with open(source, "rb") as f:
            layout = M.Layout(f.read())
        path = os.path.join(tmp, "case.model")
        # Warm up (imports, mxnet start) so that times and heap peaks are the cases' own.
        for full in (False, True):
            warm = M.run_case(layout, path, layout.data, M.SAME, full_load=full)
            assert warm.failure is None and warm.detail == "ok_identical", warm
        indices = [args.only_case] if args.only_case is not None else range(args.cases)

        by_class = collections.Counter()
        by_error = collections.Counter()
        by_mutation = collections.defaultdict(collections.Counter)
        failures = []
        slowest = (0.0, None)
        worst_heap = (0.0, None)
        n_full = 0
        t0 = time.perf_counter()
        for k, i in enumerate(indices):
            name, full, size, o = run_one(layout, path, args.seed, i, args.full_load_every,
                                          args.case_timeout)
            n_full += full
            cls = "FAILURE" if o.failure else ("error" if o.kind == "error" else o.detail)
            by_class[cls] += 1
            if o.kind == "error":
                by_error[o.detail] += 1
            by_mutation[name][o.detail if not o.failure else "FAILURE"] += 1
            if o.failure:
                failures.append((i, name, full, o.failure))
            if o.seconds is not None and o.seconds > slowest[0]:
                slowest = (o.seconds, (i, name, full))
            if o.peak is not None and o.peak > worst_heap[0]:
                worst_heap = (o.peak, (i, name, size))
            if (k + 1) % 10_000 == 0:
                sys.stderr.write(f"  {k + 1} cases, {len(failures)} failures, "
                                 f"{time.perf_counter() - t0:.0f} s\n")
        elapsed = time.perf_counter() - t0

    total = sum(by_class.values())
    print(f"model file fuzz: {total} cases ({n_full} through load_model, {total - n_full} "
          f"through open_model_file + tensors()), seed {args.seed}, {elapsed:.1f} s, "
          f"original file {len(layout.data):,} bytes")
    print("\noutcome class:")
    for cls in ("ok_identical", "ok_other_weights", "error", "FAILURE"):
        print(f"  {cls:<18} {by_class.get(cls, 0):>8}")
    print("\nToolkitError raised, by type:")
    for err, n in by_error.most_common():
        print(f"  {err:<26} {n:>8}")
    print("\nby mutation:")
    for name in sorted(by_mutation):
        parts = ", ".join(f"{k} {v}" for k, v in by_mutation[name].most_common())
        print(f"  {name:<20} {sum(by_mutation[name].values()):>7}  ({parts})")
    if slowest[1]:
        print(f"\nslowest case: {slowest[0] * 1000:.1f} ms (case {slowest[1][0]}, "
              f"{slowest[1][1]}, {'load_model' if slowest[1][2] else 'reading layer'})")
    if worst_heap[1]:
        i, name, size = worst_heap[1]
        print(f"largest heap peak of a load (reading layer): {worst_heap[0]:,} bytes for a "
              f"{size:,}-byte file ({worst_heap[0] / max(size, 1):.1f} x; case {i}, {name})")
    scale = 1 if sys.platform == "darwin" else 1024
    print(f"max RSS of this process: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20:.0f} MiB")
    if failures:
        print(f"\n{len(failures)} FAILURES (replay with --seed {args.seed} --only-case N):")
        for i, name, full, why in failures[:50]:
            print(f"  case {i} [{name}{', load_model' if full else ''}]: {why}")
        return 1
    print("\nno failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
