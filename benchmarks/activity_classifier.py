"""Activity classifier benchmark: quality against a classical baseline, and speed.

Prints, measured side by side in one run on the seglearn watch data (train subjects
1-6, test subjects 7-10):

(a) per-row and per-window accuracy of ``tc.activity_classifier.create`` (defaults)
    over several seeds, against
    seglearn's segment (width 100) + FeatureRep + random forest pipeline on the same
    split. The forest predicts one label per non-overlapping 100-row window; for the
    per-row figure each row takes its window's prediction (rows after a session's
    last full window take the last window's), as create()'s per-row output does.
(b) training throughput (windows/s) of ``create()`` against a minimal hand-written
    Gluon loop on the same network and the same chunks, and their ratio.

Run: python benchmarks/activity_classifier.py [--seeds 3]
The machine is shared and noisy: read the ratios, not the absolute times.
"""

import argparse
import time
import warnings

import numpy as np

import toolkit as tc
from toolkit.activity_classifier import _data, _net
from toolkit._mx import mx

PW = 100


def split():
    data = tc.datasets.watch_sessions()
    return (data[data["subject"] <= 6].drop(columns="subject"),
            data[data["subject"] >= 7].drop(columns="subject"))


def forest_baseline(train, test, seed):
    from seglearn.feature_functions import base_features
    from seglearn.pipe import Pype
    from seglearn.transform import FeatureRep, Segment
    from sklearn.ensemble import RandomForestClassifier
    feats = ["ax", "ay", "az", "wx", "wy", "wz"]

    classes = sorted(train["exercise"].unique())
    code = {c: i for i, c in enumerate(classes)}

    def sessions(frame):
        groups = [g for _, g in frame.groupby("session_id", sort=False)]
        return ([g[feats].to_numpy() for g in groups],
                [g["exercise"].map(code).to_numpy() for g in groups])
    Xtr, ytr = sessions(train)
    Xte, yte = sessions(test)
    # One label per recording in this data: seglearn takes it as the series' label.
    pipe = Pype([("seg", Segment(width=PW, overlap=0)),
                 ("features", FeatureRep(features=base_features())),
                 ("rf", RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=2))])
    pipe.fit(Xtr, [int(_mode(y)) for y in ytr])
    correct_rows = rows = correct_windows = windows = 0
    for x, y in zip(Xte, yte):
        n_full = len(x) // PW
        if n_full == 0:
            continue
        per_window = np.asarray(pipe.predict([x])).ravel()[:n_full]
        truth_windows = np.array([_mode(y[i * PW:(i + 1) * PW]) for i in range(n_full)])
        correct_windows += int((per_window == truth_windows).sum())
        windows += n_full
        per_row = np.repeat(per_window, PW)
        per_row = np.concatenate([per_row, np.repeat(per_row[-1:], len(x) - len(per_row))])
        correct_rows += int((per_row == y).sum())
        rows += len(y)
    return correct_rows / rows, correct_windows / windows


def _mode(y):
    y = np.asarray(y)
    if y.ndim == 2:
        return np.array([_mode(r) for r in y])
    values, counts = np.unique(y, return_counts=True)
    return values[counts.argmax()]


def create_quality(train, test, seed, validation_set):
    t0 = time.perf_counter()
    model = tc.activity_classifier.create(train, "session_id", "exercise", random_seed=seed,
                                          validation_set=validation_set, verbose=False)
    seconds = time.perf_counter() - t0
    row = model.evaluate(test, metric="accuracy")["accuracy"]
    win = model.predict(test, output_frequency="per_window")
    truth = []
    for _, g in test.groupby("session_id", sort=False):
        y = g["exercise"].to_numpy()
        truth += [_mode(y[i:i + PW]) for i in range(0, len(y), PW)]
    return row, float(np.mean(win["class"].to_numpy() == np.array(truth))), seconds, \
        model.max_iterations


def throughput(train, epochs=20, batch_size=32):
    """Windows/s: create() (validation off, fixed epochs) vs a bare Gluon loop.

    A one-epoch create() runs first so that neither side pays mxnet's one-off
    start-up (library load, first graph build) inside the timing.
    """
    n_windows = int(sum(-(-len(g) // PW) for _, g in train.groupby("session_id")))
    tc.activity_classifier.create(train, "session_id", "exercise", max_iterations=1,
                                  validation_set=None, verbose=False, random_seed=0)
    t0 = time.perf_counter()
    tc.activity_classifier.create(train, "session_id", "exercise", max_iterations=epochs,
                                  validation_set=None, verbose=False, random_seed=0)
    t_create = time.perf_counter() - t0

    # The bare loop: same network and chunks, prepared once, no checks, no
    # augmentation, no metrics: a lower bound on what training must cost.
    feats = [c for c in train.columns if c not in ("session_id", "exercise")]
    classes = sorted(train["exercise"].unique())
    sessions = _data.Sessions(train["session_id"].to_numpy())
    values = train[feats].to_numpy(np.float32)[sessions.order]
    values = (values - values.mean(0)) / values.std(0)
    labels = train["exercise"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    chunks = _data.chunk(values, sessions, PW, labels[sessions.order], len(classes))
    core, _, graphs = _net.build(len(feats), len(classes), PW)
    graphs.hybridize()
    # The training graph does its own batch norm, so Gluon notes that the core's
    # running statistics are unused; expected, not worth printing.
    warnings.filterwarnings("ignore", message=r"Parameter .* is not used by any computation")
    trainer = mx().gluon.Trainer(core.collect_params(), "adam", {"learning_rate": 1e-3})
    nd, autograd = mx().nd, mx().autograd
    rng = np.random.RandomState(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(chunks["data"]))
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x, y, w = (nd.array(chunks["data"][idx]), nd.array(chunks["labels"][idx]),
                       nd.array(chunks["weights"][idx]))
            h, c = _net.zero_states(len(idx))
            # No dropout, the whole batch one batch-norm group: the cheapest
            # inputs the training graph takes.
            n, T = len(idx), _data.WINDOWS_PER_CHUNK
            keep_in = nd.ones((n, T, _net.CONV_FILTERS))
            keep_out = nd.ones((n, T, _net.DENSE_HIDDEN))
            with autograd.record():
                nll, _, _, _ = graphs.loss(x, h, c, y, w, keep_in, keep_out, n)
                loss = nll.sum() / max(float(chunks["weights"][idx].sum()), 1e-5)
            loss.backward()
            trainer.step(1)
        nd.waitall()
    t_loop = time.perf_counter() - t0
    return n_windows * epochs / t_create, n_windows * epochs / t_loop


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    train, test = split()
    print("Activity classifier benchmark: seglearn watch data, train subjects 1-6 "
          f"({train['session_id'].nunique()} sessions), test 7-10 "
          f"({test['session_id'].nunique()} sessions)\n")
    results = {}
    for seed in range(args.seeds):
        results.setdefault("seglearn RF (Seg 100 + FeatureRep)", []).append(
            forest_baseline(train, test, seed) + (float("nan"), ""))
        results.setdefault("create() with defaults", []).append(
            create_quality(train, test, seed, "auto"))
    print(f"(a) accuracy on subjects 7-10 over {args.seeds} seeds: mean [min, max]")
    print(f"  {'method':<40} {'per row':<24} {'per window':<24} {'train s':>8}  epochs")
    for name, rows in results.items():
        r = np.array([x[:3] for x in rows], dtype=float)
        fmt = lambda c: f"{r[:, c].mean():.3f} [{r[:, c].min():.3f}, {r[:, c].max():.3f}]"  # noqa: E731
        secs = "" if np.isnan(r[:, 2]).all() else f"{r[:, 2].mean():8.1f}"
        print(f"  {name:<40} {fmt(0):<24} {fmt(1):<24} {secs:>8}  {rows[0][3]}")
    print()
    w_create, w_loop = throughput(train)
    print("(b) training throughput, 20 epochs, batch 32 chunks of 20 windows:")
    print(f"  create()            {w_create:10.0f} windows/s (includes data checks, chunking, "
          "augmentation, metrics)")
    print(f"  bare Gluon loop     {w_loop:10.0f} windows/s")
    print(f"  ratio create/loop   {w_create / w_loop:10.2f}")


if __name__ == "__main__":
    main()
