"""Frozen features vs fine-tuning vs raw-pixel baselines, side by side in one run.

Data sets (real, shipped in installed packages; no download):

* ``digits8``: MNIST digits (``tc.datasets.mnist_digits()``) downscaled to 8x8
  and back up to 32x32 (bilinear): the low-resolution, non-photographic case
  of issue 17;
* ``mnist28``: the same digits at 28x28;
* ``lfw``: ``tc.datasets.lfw_faces()`` (200 grey 25x25, faces vs non-faces),
  a stratified 50/50 split.

For each seed, a random stratified split (``--train`` images to train, default
1,000, and ``--test`` to test; LFW: 100 / 100) is scored for:

* ``frozen``: ``create(fine_tune=False, pooling='avg')``: global average
  pooling, the frozen path as it was before pooling was a choice;
* ``frozen-grid``: ``create(fine_tune=False, pooling='grid')``;
* ``fine-tuned``: ``create(fine_tune=True, pooling='avg')`` (default options);
* ``fine-tuned-grid``: ``create(fine_tune=True, pooling='grid')``;
* ``auto``: ``create()`` with the defaults ``fine_tune='auto'`` (5% validation
  hold-out) and ``pooling='auto'`` (3-fold cross-validation on the training
  images), and what it chose;
* ``logreg`` / ``svm``: scikit-learn logistic regression (C by 3-fold CV) and
  an RBF SVM (default C=1, gamma='scale') on the standardised raw pixels;
* ``svm-unscaled``: the same SVM on pixels / 255 (not standardised), which is
  the stronger SVM on the digits (standardising gives the near-constant
  border pixels as much weight as the strokes).

Times are wall-clock seconds of the fit (create: from the images, including
the backbone). Run it on an otherwise idle machine for absolute times; the
script prints the load average it started under.

Usage::

    python benchmarks/image_classifier_finetune.py                 # seeds 0-2
    python benchmarks/image_classifier_finetune.py --seeds 0 --sets digits8 lfw
"""

import argparse
import json
import os
import time

import numpy as np


def _down_up(img):
    from PIL import Image
    small = Image.fromarray(img).resize((8, 8), Image.BILINEAR)
    return np.asarray(small.resize((32, 32), Image.BILINEAR))


def load(name):
    import toolkit as tc
    if name == "lfw":
        frame = tc.datasets.lfw_faces()
        frame["image"] = [np.round(a * 255).astype(np.uint8) for a in frame["image"]]
        return frame
    frame = tc.datasets.mnist_digits()
    if name == "digits8":
        frame["image"] = [_down_up(a) for a in frame["image"]]
    return frame


def split(frame, n_train, n_test, seed):
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(frame))
    return frame.iloc[order[:n_train]], frame.iloc[order[n_train:n_train + n_test]]


def pixels(frame):
    return np.stack([np.asarray(a, np.float32).ravel() for a in frame["image"]])


def run_create(train, test, seed, fine_tune, pooling):
    import toolkit as tc
    t = time.perf_counter()
    kw = {} if fine_tune == "auto" else {"fine_tune": fine_tune, "validation_set": None,
                                         "pooling": pooling}
    model = tc.image_classifier.create(train, target="label", verbose=False, random_seed=seed,
                                       **kw)
    seconds = time.perf_counter() - t
    acc = float(model.evaluate(test, metric="accuracy")["accuracy"])
    return acc, seconds, ("fine-tuned" if model.fine_tuned else "frozen") + " " + model.pooling


def run_sklearn(train, test, kind):
    if kind == "svm-unscaled":
        from sklearn.svm import SVC
        t = time.perf_counter()
        model = SVC(kernel="rbf").fit(pixels(train) / 255.0, train["label"].to_numpy())
        seconds = time.perf_counter() - t
        return float(model.score(pixels(test) / 255.0, test["label"].to_numpy())), seconds
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    X, y = pixels(train), train["label"].to_numpy()
    t = time.perf_counter()
    clf = (LogisticRegressionCV(Cs=5, cv=3, max_iter=2000) if kind == "logreg"
           else SVC(kernel="rbf"))
    model = make_pipeline(StandardScaler(), clf).fit(X, y)
    seconds = time.perf_counter() - t
    return float(model.score(pixels(test), test["label"].to_numpy())), seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sets", nargs="+", default=["digits8", "mnist28", "lfw"])
    ap.add_argument("--methods", nargs="+",
                    default=["frozen", "frozen-grid", "fine-tuned", "fine-tuned-grid", "auto",
                             "logreg", "svm", "svm-unscaled"])
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}, cpus: {os.cpu_count()}", flush=True)
    rows = []
    for name in args.sets:
        frame = load(name)
        n_train, n_test = (100, 100) if name == "lfw" else (args.train, args.test)
        for seed in args.seeds:
            train, test = split(frame, n_train, n_test, seed)
            for method in args.methods:
                chose = ""
                if method in ("logreg", "svm", "svm-unscaled"):
                    acc, sec = run_sklearn(train, test, method)
                else:
                    ft = {"frozen": False, "fine-tuned": True, "auto": "auto"}[
                        method.replace("-grid", "")]
                    pooling = "grid" if method.endswith("-grid") else "avg"
                    acc, sec, chose = run_create(train, test, seed, ft, pooling)
                row = dict(set=name, seed=seed, method=method, accuracy=round(acc, 4),
                           seconds=round(sec, 1), chose=chose,
                           load=round(os.getloadavg()[0], 1))
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| data | method | accuracy (mean over seeds) | fit seconds (mean) | auto chose |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.sets:
        for method in args.methods:
            sel = [r for r in rows if r["set"] == name and r["method"] == method]
            if sel:
                chose = ", ".join(sorted({r["chose"] for r in sel if r["chose"]})) \
                    if method == "auto" else ""
                print(f"| {name} | {method} | {np.mean([r['accuracy'] for r in sel]):.3f} "
                      f"(n={len(sel)}) | {np.mean([r['seconds'] for r in sel]):.0f} | {chose} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
