"""The image tasks' inference against what a user would pick instead (issue 19).

Rows, each timed with the toolkit's inference backend set to ``'mxnet'`` (what
``predict`` did before the onnxruntime backend) and to ``'auto'`` (now):

* image classifier on decoded 224x224 images (real photos, LFW faces, MNIST
  digits, as uint8 arrays), images/s: ``predict()`` vs its own mxnet network
  called directly on prepared batches of 16 vs onnxruntime on ``export_onnx``
  (batches of 16, NCHW float32 pixels stacked in the timed part);
* features from JPEG files (real photos and faces written as JPEG), images/s:
  ``extract_features()`` on the paths vs onnxruntime + Pillow (open, EXIF
  orientation, RGB, bilinear resize to 224x224, batches of 16, the export's
  pooled features as output);
* object detector, ms per image, one call over a batch of ``--boxes-batch``
  images (scenes of real objects on real textures): ``predict()`` vs its own
  mxnet network (raw outputs only) vs onnxruntime on ``export_onnx`` (network,
  decoding and NMS in the graph, one ``run``).

Before timing, outputs are checked to agree (probabilities and features within
1e-4 of their scale, the same detected boxes); then every side runs once per
round, interleaved (A B C D A B C D ...), and the tables give medians over
``--rounds`` rounds and ``peer / toolkit`` (above 1.0: the peer is faster), for
the toolkit with backend 'mxnet' (before) and 'auto' (after). Every framework
gets ``--threads`` threads (set before any import; onnxruntime's sessions,
the toolkit's included, follow ``OMP_NUM_THREADS``).

Needs the ``bench`` extra (onnxruntime, onnx). Usage::

    python benchmarks/peers_images.py                 # 1 thread, 5 rounds
    python benchmarks/peers_images.py --rounds 3 --images 64 --jpegs 64
"""

import argparse
import os
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402  (the activity rows' script: thread settings and timing loop)
from peers import _set_threads  # noqa: E402

NET_BATCH = 16


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images", type=int, default=96, help="decoded images per classifier round")
    p.add_argument("--jpegs", type=int, default=96, help="JPEG files per extraction round")
    p.add_argument("--boxes-batch", type=int, default=50, help="detector images per call")
    p.add_argument("--skip", default="", help="comma-separated: classifier,jpeg,detector")
    return p.parse_args(argv)


def measure(sides, rounds):
    """{name: median seconds}; the sides run interleaved, once per round (after a warm-up)."""
    for _, fn in sides:
        fn()
    return peers.measure(sides, rounds)


def _session(path, threads, output=None):
    import onnx
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    model = onnx.load(path)
    if output is not None:
        model.graph.output.append(onnx.helper.make_tensor_value_info(
            output, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _with_backend(name, fn):
    import toolkit as tc

    def run():
        tc.config.set_inference_backend(name)
        return fn()
    return run


def _rel_diff(a, b):
    import numpy as np
    return float(np.abs(a - b).max()) / max(1.0, float(np.abs(b).max()))


def pillow_pixels(path):
    """The export docstring's recipe: EXIF orientation, RGB, bilinear stretch, NCHW float32."""
    import numpy as np
    from PIL import Image, ImageOps
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img).convert("RGB").resize((224, 224), Image.BILINEAR)
        return np.asarray(img, np.float32).transpose(2, 0, 1)


def classifier_rows(args, tmp):
    import numpy as np
    import pandas as pd
    from PIL import Image

    import toolkit as tc
    from toolkit import _images
    from toolkit._mx import mx
    from toolkit.image_classifier import _net

    faces = tc.datasets.lfw_faces()
    train = faces.iloc[list(range(0, 96, 8)) + list(range(100, 196, 8))]
    tc.config.set_inference_backend("mxnet")
    model = tc.image_classifier.create(train, target="label", verbose=False, random_seed=0,
                                       max_iterations=30, pooling="avg")
    path = os.path.join(tmp, "faces.onnx")
    model.export_onnx(path)
    sess = _session(path, args.threads, output="/pool/flat")
    prob_name = model.target + "Probability"

    # Real images: sample photos, LFW faces, MNIST digits, decoded to 224x224 RGB.
    sources = [tc.datasets.sample_photo(n) for n in tc.datasets.SAMPLE_PHOTOS]
    sources += list(faces["image"].iloc[::7]) + list(tc.datasets.mnist_digits()["image"][:20])
    decoded = [_images.to_rgb_array(sources[i % len(sources)], 224) for i in range(args.images)]
    column = np.empty(len(decoded), object)
    column[:] = decoded
    frame = pd.DataFrame({"image": column})

    net = model._net
    _net.prepare_backbone(net.backbone, NET_BATCH, NET_BATCH)

    def own_network():
        out = []
        for s in range(0, len(decoded), NET_BATCH):
            x = _images.to_network_input(np.stack(decoded[s:s + NET_BATCH]), _net.INPUT_SCALE,
                                         _net.INPUT_BIAS)
            out.append(net(mx().nd.array(x)).asnumpy())
        return np.concatenate(out)

    def onnx_export():
        out = []
        for s in range(0, len(decoded), NET_BATCH):
            x = np.stack(decoded[s:s + NET_BATCH]).astype(np.float32).transpose(0, 3, 1, 2)
            out.append(sess.run([prob_name], {"image": x})[0])
        return np.concatenate(out)

    def predict():
        return np.stack(model.predict(frame, output_type="probability_vector"))

    # JPEG files of real images of several sizes.
    paths = []
    for i in range(args.jpegs):
        img = sources[i % len(sources)]
        if img.dtype.kind == "f":
            img = np.round(img * 255).astype(np.uint8)
        p = os.path.join(tmp, f"img{i:04d}.jpg")
        Image.fromarray(img).convert("RGB").save(p, quality=90)
        paths.append(p)
    files = pd.DataFrame({"image": paths})

    def extract():
        return model.extract_features(files)

    def onnx_pillow():
        out = []
        for s in range(0, len(paths), NET_BATCH):
            x = np.stack([pillow_pixels(p) for p in paths[s:s + NET_BATCH]])
            out.append(sess.run(["/pool/flat"], {"image": x})[0])
        return np.concatenate(out)

    # Outputs agree before anything is timed.
    checks = {}
    for backend in ("mxnet", "auto"):
        tc.config.set_inference_backend(backend)
        checks[f"predict [{backend}] vs own network"] = _rel_diff(predict(), own_network())
        checks[f"extract_features [{backend}] vs onnxruntime + Pillow"] = _rel_diff(
            extract(), onnx_pillow())
    checks["onnxruntime export vs own network"] = _rel_diff(onnx_export(), own_network())
    print("classifier output check (max |diff| / scale): "
          + ", ".join(f"{k} {v:.1e}" for k, v in checks.items()))
    if max(checks.values()) > 1e-4:
        sys.exit("outputs disagree: no timing")
    rows = []
    skip = set(filter(None, args.skip.split(",")))
    if "classifier" not in skip:
        med = measure([("predict() [mxnet]", _with_backend("mxnet", predict)),
                       ("predict() [auto]", _with_backend("auto", predict)),
                       ("its own mxnet network, called directly", own_network),
                       ("onnxruntime on export_onnx", onnx_export)], args.rounds)
        rows.append(("image classifier, decoded 224x224, images/s", "predict()",
                     len(decoded), med))
    if "jpeg" not in skip:
        med = measure([("extract_features() [mxnet]", _with_backend("mxnet", extract)),
                       ("extract_features() [auto]", _with_backend("auto", extract)),
                       ("onnxruntime + Pillow", onnx_pillow)], args.rounds)
        rows.append((f"features of {len(paths)} JPEG files, images/s", "extract_features()",
                     len(paths), med))
    return rows


def detector_rows(args, tmp):
    import numpy as np
    import pandas as pd

    import toolkit as tc
    from toolkit._mx import mx
    from toolkit.object_detector import _data, _net

    tc.config.set_inference_backend("mxnet")
    train = tc.datasets.detection_scenes(24, random_seed=11)
    model = tc.object_detector.create(train, max_iterations=60, verbose=False, random_seed=0)
    path = os.path.join(tmp, "detector.onnx")
    model.export_onnx(path)
    sess = _session(path, args.threads)
    scenes = tc.datasets.detection_scenes(args.boxes_batch, split="test", random_seed=12)
    frame = pd.DataFrame({"image": scenes["image"]})
    images = list(scenes["image"])
    _net.prepare(model._net, min(NET_BATCH, len(images)))

    def predict():
        return model.predict(frame)

    def own_network():
        return np.concatenate([
            model._net(mx().nd.array(_data.network_input(np.stack(images[s:s + NET_BATCH]))))
            .asnumpy() for s in range(0, len(images), NET_BATCH)])

    def onnx_export():
        x = np.stack(images).astype(np.float32).transpose(0, 3, 1, 2)
        return sess.run(["coordinates", "score", "label", "imageIndex"], {"image": x})

    counts = {}
    for backend in ("mxnet", "auto"):
        tc.config.set_inference_backend(backend)
        counts[backend] = [[d["label"] for d in p] for p in predict()]
    _, score, label, image = onnx_export()
    onnx_labels = [[] for _ in images]
    for lab, i in zip(label, image):
        onnx_labels[i].append(lab.decode() if isinstance(lab, bytes) else str(lab))
    same = counts["mxnet"] == counts["auto"] == onnx_labels
    print(f"detector output check: same boxes and labels from predict [mxnet], predict [auto] "
          f"and the onnxruntime export: {same} ({sum(map(len, onnx_labels))} boxes)")
    if not same:
        sys.exit("outputs disagree: no timing")
    med = measure([("predict() [mxnet]", _with_backend("mxnet", predict)),
                   ("predict() [auto]", _with_backend("auto", predict)),
                   ("its own mxnet network (raw outputs)", own_network),
                   ("onnxruntime on export_onnx (with NMS)", onnx_export)], args.rounds)
    return [(f"object detector, batch of {len(images)}, ms per image", "predict()",
             len(images), med)]


def main(argv=None):
    args = parse_args(argv)
    _set_threads(args.threads)
    warnings.filterwarnings("ignore", message=r"Parameter .* is not used by any computation")
    skip = set(filter(None, args.skip.split(",")))
    load = os.getloadavg()
    print(f"threads {args.threads}, rounds {args.rounds}; load average at start "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores\n")
    tmp = tempfile.mkdtemp()
    rows = []
    if not {"classifier", "jpeg"} <= skip:
        rows += classifier_rows(args, tmp)
    if "detector" not in skip:
        rows += detector_rows(args, tmp)
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| path | peer | peer / toolkit, before (backend 'mxnet') | "
          "peer / toolkit, after (backend 'auto') |")
    print("|---|---|---|---|")
    for what, name, n, med in rows:
        before, after = med[f"{name} [mxnet]"], med[f"{name} [auto]"]
        per = "ms per image" in what
        fmt = (lambda s: f"{s / n * 1e3:.1f} ms") if per else (lambda s: f"{n / s:.1f}/s")
        print(f"| {what}: toolkit {fmt(before)} before, {fmt(after)} after | | | |")
        for peer, seconds in med.items():
            if peer.startswith(name):
                continue
            print(f"| | {peer} ({fmt(seconds)}) | {before / seconds:.2f}x | "
                  f"{after / seconds:.2f}x |")


if __name__ == "__main__":
    main()
