"""Object detector benchmark: mAP on held-out generated scenes, training time, memory.

Training data: ``tc.datasets.detection_scenes(N, split='train')`` written as
PNG files to a temporary directory, so training streams the images from disk
(real MNIST digits 0-3999, LFW faces 0-79 and crops of scikit-image's cat
pasted on crops from the top 60 % of scikit-image's grass / gravel / brick
textures and on ``ihc``). Test data: ``split='test'`` scenes, built from
held-out objects (digits 4000-4999, faces 80-99, other cat framings) on
held-out backgrounds (the bottom 40 % of the textures and
``hubble_deep_field``, never seen in training).

Reports mAP@0.5 (and COCO's AP@[0.5:0.95]) per class, the training time
(feature extraction + head training) and the peak RSS of the process.

Usage::

    python benchmarks/object_detector.py                  # default: 3000 scenes
    python benchmarks/object_detector.py --n 600 --iterations 600   # quick
"""

import argparse
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import toolkit as tc  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="training scenes")
    ap.add_argument("--test", type=int, default=300, help="held-out test scenes")
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train = tc.datasets.detection_scenes(args.n, random_seed=args.seed,
                                             directory=os.path.join(tmp, "train"))
        test = tc.datasets.detection_scenes(args.test, split="test", random_seed=args.seed + 1,
                                            directory=os.path.join(tmp, "test"))
        print(f"generated {args.n} train / {args.test} test scenes in "
              f"{time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        model = tc.object_detector.create(train, max_iterations=args.iterations,
                                          random_seed=args.seed, verbose=True)
        train_time = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = model.evaluate(test, metric="all")
        eval_time = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print()
    print(f"training time: {train_time:.1f} s (feature extraction "
          f"{model.feature_extraction_time:.1f} s, {args.iterations} iterations), "
          f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"cpus={os.cpu_count()}")
    print(f"evaluation: {eval_time:.1f} s for {args.test} images")
    print("AP@0.5 per class:", {k: round(v, 3) for k, v in
                                 scores["average_precision_50"].items()})
    print(f"mAP@0.5 on held-out scenes: {scores['mean_average_precision_50']:.3f}")
    print(f"COCO AP@[0.5:0.95]: {scores['mean_average_precision']:.3f}")
    print(f"peak RSS: {rss:.0f} MB")


if __name__ == "__main__":
    main()
