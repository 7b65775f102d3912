"""Image classifier benchmark: quality against a raw-pixel baseline, speed and memory.

Quality (real data shipped in packages, held-out splits):

* LFW subset (``tc.datasets.lfw_faces()``, 200 grey 25x25, faces vs
  non-faces): 5 random stratified 50/50 splits;
* MNIST digits (``tc.datasets.mnist_digits()``, 5,000 28x28): one stratified
  split, 4,000 train / 1,000 test (``--quick``: 1,000 / 500).

Each split is scored for ``tc.image_classifier.create`` (transfer learning
from EfficientNet-Lite0, default settings, no validation set) and, side by
side, for a scikit-learn logistic regression on the raw pixels (standardised,
C chosen by 5-fold cross-validation on the training part).

Speed and memory: N JPEG files (default 10,000; random crops of four real
photos, 160 to 480 pixels a side) are written to a temporary directory and a
saved model runs ``extract_features`` on a DataFrame of their paths, in a
fresh process: decode + resize in streamed batches + network. The same
process then times a raw forward of the same prepared backbone on
pre-decoded batches (the network alone), so the ratio of the two throughputs
is the pipeline's overhead. Peak RSS (``VmHWM``) is reported for N
images and for N / 10 in separate processes: with streaming it barely grows
(the features themselves, N x 1280 float32, are the only part that scales).

Usage::

    python benchmarks/image_classifier.py              # ~10 min on 2 cores
    python benchmarks/image_classifier.py --quick      # ~3 min
    python benchmarks/image_classifier.py --skip-quality --n 2000
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

BATCH = 64


def _rss_mib():
    """Peak resident memory of this process (MiB).

    Linux: ``VmHWM`` from /proc/self/status. (``ru_maxrss`` would do, except
    that Linux carries it across ``execve``: a worker started from a big
    parent would report the parent's peak.)
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- quality -------------------------------------------------------------------------

def _pixels(images):
    return np.stack([np.asarray(im, np.float64).reshape(-1) for im in images])


def _baseline_accuracy(train, test):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=[1e-3, 1e-2, 1e-1, 1, 10], cv=5, max_iter=3000))
    clf.fit(_pixels(train["image"]), train["label"])
    return float(np.mean(clf.predict(_pixels(test["image"])) == test["label"].to_numpy()))


def _transfer_accuracy(train, test):
    import toolkit as tc
    model = tc.image_classifier.create(train, target="label", validation_set=None,
                                       verbose=False, random_seed=0)
    return model.evaluate(test, metric="accuracy")["accuracy"]


def _split(data, n_train, seed):
    from sklearn.model_selection import train_test_split
    train, test = train_test_split(data, train_size=n_train, random_state=seed,
                                   stratify=data["label"])
    return train, test


def quality(quick):
    import toolkit as tc
    rows = []
    faces = tc.datasets.lfw_faces()
    for seed in range(2 if quick else 5):
        train, test = _split(faces, 100, seed)
        t0 = time.perf_counter()
        acc = _transfer_accuracy(train, test)
        rows.append(("LFW faces", seed, len(train), len(test), acc,
                     _baseline_accuracy(train, test), time.perf_counter() - t0))
    digits = tc.datasets.mnist_digits()
    n_train, n_test = (1000, 500) if quick else (4000, 1000)
    train, rest = _split(digits, n_train, 0)
    test = rest.groupby("label").head(n_test // 10)
    t0 = time.perf_counter()
    acc = _transfer_accuracy(train, test)
    rows.append(("MNIST digits", 0, len(train), len(test), acc,
                 _baseline_accuracy(train, test), time.perf_counter() - t0))
    print("\nAccuracy on held-out images (transfer learning vs logistic regression on raw "
          "pixels)")
    print(f"{'data':<14}{'split':>6}{'train':>7}{'test':>6}{'transfer':>10}{'raw LR':>9}"
          f"{'time (s)':>10}")
    for name, seed, ntr, nte, acc, base, secs in rows:
        print(f"{name:<14}{seed:>6}{ntr:>7}{nte:>6}{acc:>10.3f}{base:>9.3f}{secs:>10.1f}")
    for name in ("LFW faces", "MNIST digits"):
        sel = [r for r in rows if r[0] == name]
        acc = np.mean([r[4] for r in sel])
        base = np.mean([r[5] for r in sel])
        print(f"{name}: mean transfer {acc:.3f} vs raw-pixel LR {base:.3f} "
              f"(error {1 - acc:.3f} vs {1 - base:.3f}, {len(sel)} split(s))")


# --- speed and memory ------------------------------------------------------------------

def make_jpegs(directory, n, seed=0):
    """n JPEG files: random crops (160-480 px a side) of real photos, resized a little."""
    import toolkit as tc
    from PIL import Image
    rng = np.random.RandomState(seed)
    photos = [tc.datasets.sample_photo(p) for p in tc.datasets.SAMPLE_PHOTOS]
    paths = []
    for i in range(n):
        src = photos[i % len(photos)]
        h, w = src.shape[:2]
        ch, cw = rng.randint(min(160, h), h + 1), rng.randint(min(160, w), w + 1)
        y, x = rng.randint(0, h - ch + 1), rng.randint(0, w - cw + 1)
        img = Image.fromarray(src[y:y + ch, x:x + cw])
        scale = rng.uniform(0.8, 1.25)
        img = img.resize((max(16, int(cw * scale)), max(16, int(ch * scale))), Image.BILINEAR)
        path = os.path.join(directory, f"img{i:06d}.jpg")
        img.save(path, quality=90)
        paths.append(path)
    return paths


def worker(model_path, paths_file, raw_images):
    """Run in a fresh process: pipeline throughput, raw forward throughput, peak RSS."""
    import pandas as pd
    import toolkit as tc
    from toolkit import _images
    from toolkit._mx import mx
    from toolkit.image_classifier import _net
    with open(paths_file) as f:
        paths = f.read().split("\n")
    model = tc.load_model(model_path)
    # Warm up (graph partitioning, first allocations) outside the timings.
    model.extract_features(pd.DataFrame({"image": paths[:BATCH]}), batch_size=BATCH)
    rss_before = _rss_mib()
    frame = pd.DataFrame({"image": paths})
    t0 = time.perf_counter()
    feats = model.extract_features(frame, batch_size=BATCH, verbose=True)
    pipeline_s = time.perf_counter() - t0
    rss_after = _rss_mib()
    # The network alone: the same prepared backbone on pre-decoded batches.
    decoded = _images.decode_batch(paths[:BATCH], 0, _net.IMAGE_SIZE, "image")
    x = mx().nd.array(_images.to_network_input(decoded, _net.INPUT_SCALE, _net.INPUT_BIAS))
    model._net.backbone(x).wait_to_read()
    n_batches = max(1, raw_images // BATCH)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        model._net.backbone(x).asnumpy()
    raw_s = time.perf_counter() - t0
    print(json.dumps({"n": len(paths), "pipeline_ips": len(paths) / pipeline_s,
                      "raw_ips": n_batches * BATCH / raw_s, "rss_before_mib": rss_before,
                      "rss_peak_mib": rss_after, "features_mib": feats.nbytes / 2**20}))


def _run_worker(model_path, paths, directory, raw_images):
    paths_file = os.path.join(directory, f"paths_{len(paths)}.txt")
    with open(paths_file, "w") as f:
        f.write("\n".join(paths))
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", model_path,
                           paths_file, str(raw_images)], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"worker failed with status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def speed(n, raw_images):
    import toolkit as tc
    with tempfile.TemporaryDirectory() as directory:
        t0 = time.perf_counter()
        paths = make_jpegs(directory, n)
        print(f"\nWrote {n} JPEG files in {time.perf_counter() - t0:.1f}s; training a small "
              "model to run them through...")
        faces = tc.datasets.lfw_faces()
        model = tc.image_classifier.create(faces.iloc[::10], target="label", verbose=False,
                                           random_seed=0)
        model_path = os.path.join(directory, "bench.model")
        model.save(model_path)
        small = _run_worker(model_path, paths[:max(BATCH, n // 10)], directory, raw_images)
        big = _run_worker(model_path, paths, directory, raw_images)
    print("\nFeature extraction (decode + resize + network, streamed batches of "
          f"{BATCH}, JPEG files)")
    print(f"{'images':>8}{'pipeline img/s':>16}{'raw fwd img/s':>15}{'ratio':>7}"
          f"{'RSS before (MiB)':>18}{'peak RSS (MiB)':>16}{'features (MiB)':>16}")
    for r in (small, big):
        print(f"{r['n']:>8}{r['pipeline_ips']:>16.1f}{r['raw_ips']:>15.1f}"
              f"{r['pipeline_ips'] / r['raw_ips']:>7.2f}{r['rss_before_mib']:>18.0f}"
              f"{r['rss_peak_mib']:>16.0f}{r['features_mib']:>16.1f}")
    print(f"Peak RSS grows by {big['rss_peak_mib'] - small['rss_peak_mib']:.0f} MiB from "
          f"{small['n']} to {big['n']} images ({big['features_mib'] - small['features_mib']:.0f}"
          " MiB of it is the features returned).")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (~3 min)")
    parser.add_argument("--n", type=int, default=None, help="images for speed/memory")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], int(args.worker[2]))
        return
    print(f"CPU cores: {os.cpu_count()}")
    if not args.skip_quality:
        quality(args.quick)
    if not args.skip_speed:
        n = args.n or (1000 if args.quick else 10000)
        speed(n, raw_images=min(n, 640 if args.quick else 1280))


if __name__ == "__main__":
    main()
