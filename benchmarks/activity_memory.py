"""Peak extra memory and time of the activity classifier's ``create()`` as the data grows.

For each size, a synthetic frame (6 float64 sensor columns, an integer session id,
string labels; sessions of 2,000-6,000 rows, a label per 300-row segment) is built,
then ``create(..., max_iterations=1, validation_set=None)`` runs while a thread samples
the process's resident memory every 5 ms. Printed per size: the frame's own size
(``memory_usage(deep=True)``), the peak resident memory during ``create`` above the
level just before it, their ratio, and the seconds ``create`` took. Each size runs in a
fresh process so that one size's freed memory does not hide the next one's peak.

Usage::

    python benchmarks/activity_memory.py                      # 1M and 4M rows
    python benchmarks/activity_memory.py --rows 250000 1000000
"""

import argparse
import os
import subprocess
import sys
import threading
import time


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _frame(rows, seed=0):
    import numpy as np
    import pandas as pd
    rng = np.random.RandomState(seed)
    lengths = rng.randint(2000, 6000, size=rows // 2000 + 2)
    lengths = lengths[:np.searchsorted(np.cumsum(lengths), rows) + 1]
    lengths[-1] -= lengths.sum() - rows
    ids = np.repeat(np.arange(len(lengths)), lengths)
    segment = np.arange(rows) // 300
    labels = np.array(["walk", "run", "sit", "stand", "bike"], dtype=object)[
        rng.randint(0, 5, segment[-1] + 1)[segment]]
    frame = pd.DataFrame({"session_id": ids, "label": labels})
    for j in range(6):
        frame[f"f{j}"] = rng.standard_normal(rows) + (segment % 5 == j % 5)
    return frame


def one(rows):
    import warnings
    warnings.filterwarnings("ignore")
    import toolkit as tc
    frame = _frame(rows)
    size = frame.memory_usage(deep=True).sum()
    tc.activity_classifier.create(frame.head(5000), "session_id", "label", max_iterations=1,
                                  validation_set=None, verbose=False, random_seed=0)
    before = _rss()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t = time.perf_counter()
    tc.activity_classifier.create(frame, "session_id", "label", max_iterations=1,
                                  validation_set=None, verbose=False, random_seed=0)
    seconds = time.perf_counter() - t
    done.set()
    thread.join()
    extra = peak[0] - before
    print(f"| {rows:,} | {size / 1e6:.0f} MB | +{extra / 1e6:.0f} MB | {extra / size:.2f}x | "
          f"{seconds:.1f} s |", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        one(args.one)
        return
    print("| rows | frame | peak extra during create() | ratio | create() time |")
    print("|---|---|---|---|---|")
    for rows in args.rows:
        subprocess.run([sys.executable, os.path.abspath(__file__), "--one", str(rows)],
                       check=True)


if __name__ == "__main__":
    main()
