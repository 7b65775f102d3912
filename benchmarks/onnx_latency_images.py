"""Latency per image: the image classifier's and object detector's ONNX exports
in onnxruntime vs predict().

Trains a small image classifier (24 real LFW faces / non-faces) and a small
object detector (24 generated scenes of real objects on real textures), exports
both with ``export_onnx``, checks that onnxruntime reproduces ``predict`` on
the benchmark images (probabilities; the same boxes), then times, in the same
process on the same images:

* ``predict()``, one call per image (the latency an app calling predict per
  image sees; decoding and resizing included);
* ``predict()`` over all images in one call, divided by the number of images
  (its batched throughput);
* onnxruntime, one image per ``run`` call, on prepared (224x224, NCHW)
  pixels: the network alone, plus NMS for the detector;
* the same with the preparation (Pillow resize, as the export's docstring
  says) timed in, i.e. end to end like ``predict`` per image;
* onnxruntime, ``--batch`` images per ``run`` call, divided by the batch size.

Each figure is the median of ``--repeats`` timed repeats, after a warm-up.
mxnet and onnxruntime get the same number of threads (``--threads``, default
1, set before mxnet is imported).

Usage::

    python benchmarks/onnx_latency_images.py
    python benchmarks/onnx_latency_images.py --threads 2 --images 32 --batch 16
"""

import argparse
import os
import statistics
import sys
import tempfile
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=32, help="images timed per task")
    p.add_argument("--batch", type=int, default=16, help="images per batched run call")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def median_time(fn, repeats):
    fn()                                                      # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def prepare(value):
    """The export docstrings' recipe: RGB, bilinear stretch to 224x224, NCHW float32."""
    import numpy as np
    from PIL import Image, ImageOps
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        value = np.round(value * 255.0).astype(np.uint8)
    img = Image.fromarray(value) if isinstance(value, np.ndarray) else Image.open(value)
    img = ImageOps.exif_transpose(img).convert("RGB")
    size = img.size
    img = img.resize((224, 224), Image.BILINEAR)
    return np.asarray(img, np.float32).transpose(2, 0, 1), size


def session(ort, path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def time_task(name, model, frame, run_one, run_batch, check, args):
    """Time the five ways; returns the printed rows."""
    import numpy as np
    values = frame["image"].to_numpy()
    n = len(values)
    prepared = [prepare(v) for v in values]
    x = np.stack([p[0] for p in prepared])
    B = min(args.batch, n)
    n_batched = n // B * B
    diff = check(x, [p[1] for p in prepared])

    def predict_single():
        for v in values:
            model.predict(v)                                 # one image in, one result out

    def predict_batch():
        model.predict(frame)

    def onnx_single():
        for i in range(n):
            run_one(x[i:i + 1])

    def onnx_single_prepared():
        for v in values:
            run_one(prepare(v)[0][None])

    def onnx_batch():
        for i in range(0, n_batched, B):
            run_batch(x[i:i + B])

    t = {
        "predict(), one image per call": median_time(predict_single, args.repeats) / n,
        f"predict(), {n} images in one call": median_time(predict_batch, args.repeats) / n,
        "onnxruntime, one image per run": median_time(onnx_single, args.repeats) / n,
        "onnxruntime, one image per run + Pillow prep": (
            median_time(onnx_single_prepared, args.repeats) / n),
        f"onnxruntime, {B} images per run": median_time(onnx_batch, args.repeats) / n_batched,
    }
    print(f"\n{name}: {n} images; check against predict: {diff}")
    print(f"median of {args.repeats} repeats, milliseconds per image:")
    for label, v in t.items():
        print(f"  {label:<46} {v * 1e3:>8.2f} ms")
    keys = list(t)
    print(f"  ratio predict(one image) / onnxruntime(one image + prep): "
          f"{t[keys[0]] / t[keys[3]]:.1f}x")
    print(f"  ratio predict(one image) / onnxruntime(one image):        "
          f"{t[keys[0]] / t[keys[2]]:.1f}x")
    print(f"  ratio predict(batched) / onnxruntime({B} per run):        "
          f"{t[keys[1]] / t[keys[4]]:.1f}x")
    return t


def main(argv=None):
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MXNET_CPU_WORKER_NTHREADS"] = str(args.threads)
    import numpy as np
    import onnxruntime as ort

    import toolkit as tc
    ok = True
    tmp = tempfile.mkdtemp()

    # --- image classifier ---------------------------------------------------------
    faces = tc.datasets.lfw_faces()
    train = faces.iloc[list(range(0, 96, 8)) + list(range(100, 196, 8))]
    t0 = time.perf_counter()
    clf = tc.image_classifier.create(train, target="label", verbose=False, random_seed=0,
                                     max_iterations=30)
    print(f"image classifier trained on {len(train)} LFW images in "
          f"{time.perf_counter() - t0:.1f} s")
    test = faces.iloc[[i for i in range(200) if i % 8][:args.images]].reset_index(drop=True)
    path = os.path.join(tmp, "faces.onnx")
    clf.export_onnx(path)
    clf_sess = session(ort, path, args.threads)

    def clf_run(x):
        return clf_sess.run(["labelProbability"], {"image": x})[0]

    def clf_check(x, _sizes):
        nonlocal ok
        ref = np.stack(clf.predict(test, output_type="probability_vector"))
        diff = float(np.abs(clf_run(x) - ref).max())
        ok &= diff <= 1e-4
        return f"max |probability diff| = {diff:.2g}"

    time_task("image classifier (EfficientNet-Lite0 + softmax)", clf, test, clf_run, clf_run,
              clf_check, args)

    # --- object detector -----------------------------------------------------------
    scenes = tc.datasets.detection_scenes(24, random_seed=11)
    t0 = time.perf_counter()
    det = tc.object_detector.create(scenes, max_iterations=60, verbose=False, random_seed=0)
    print(f"\nobject detector trained on {len(scenes)} scenes in "
          f"{time.perf_counter() - t0:.1f} s")
    test = tc.datasets.detection_scenes(args.images, split="test", random_seed=12)[["image"]]
    path = os.path.join(tmp, "detector.onnx")
    det.export_onnx(path)
    det_sess = session(ort, path, args.threads)
    outs = ["coordinates", "score", "label", "imageIndex"]

    def det_run(x):
        return det_sess.run(outs, {"image": x})

    def det_check(x, sizes):
        nonlocal ok
        expected = list(det.predict(test))
        coords, score, label, image = det_run(x)
        worst, same = 0.0, True
        for i, (exp, (W, H)) in enumerate(zip(expected, sizes)):
            mine = image == i
            if [d["label"] for d in exp] != list(label[mine]):
                same = False
                continue
            for d, b, s in zip(exp, coords[mine], score[mine]):
                c = d["coordinates"]
                e = np.array([c["x"] / W, c["y"] / H, c["width"] / W, c["height"] / H])
                worst = max(worst, float(np.abs(e - b).max()), abs(d["confidence"] - s))
        ok &= same and worst <= 1e-4
        return (f"same boxes and labels: {same} ({sum(map(len, expected))} boxes), "
                f"max coordinate/confidence diff {worst:.2g}")

    time_task("object detector (network + decoding + NMS)", det, test, det_run, det_run,
              det_check, args)

    import mxnet
    import onnx
    print(f"\nonnxruntime {ort.__version__}, onnx {onnx.__version__}, mxnet {mxnet.__version__}, "
          f"threads {args.threads}, Python {sys.version.split()[0]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
