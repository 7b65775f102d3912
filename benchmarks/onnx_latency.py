"""Latency per window: the activity classifier's ONNX export in onnxruntime vs predict().

Trains a small activity classifier on real data (the seglearn smartwatch
sessions; or takes ``--model``), exports it with ``export_onnx``, checks that
onnxruntime reproduces ``predict`` on the benchmark sessions, then times, in
the same process on the same data:

* ``predict()``, one call per window (a DataFrame of ``prediction_window``
  rows: the latency an app calling predict per window sees);
* ``predict()`` over whole sessions (``output_frequency='per_window'``),
  divided by the number of windows (its batched throughput);
* onnxruntime, one window per ``run`` call, the LSTM state carried and reset
  every 20 windows as the export's docstring says (the streaming case);
* onnxruntime, ``--batch`` independent windows per ``run`` call (a server
  batching many devices), divided by the batch size.

Each figure is the median of ``--repeats`` timed repeats, after a warm-up.
mxnet and onnxruntime get the same number of threads (``--threads``, default
1, set before mxnet is imported).

Usage::

    python benchmarks/onnx_latency.py
    python benchmarks/onnx_latency.py --threads 4 --batch 256 --sessions 8
    python benchmarks/onnx_latency.py --model exercise.model
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

FEATURES = ["ax", "ay", "az", "wx", "wy", "wz"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a saved activity classifier (default: train a small one)")
    p.add_argument("--prediction-window", type=int, default=50)
    p.add_argument("--sessions", type=int, default=6, help="real sessions to time on")
    p.add_argument("--batch", type=int, default=64, help="windows per batched run call")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--single-windows", type=int, default=100,
                   help="windows timed one predict() call each")
    return p.parse_args(argv)


def median_time(fn, repeats):
    fn()                                                      # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MXNET_CPU_WORKER_NTHREADS"] = str(args.threads)
    import numpy as np
    import onnxruntime as ort

    import toolkit as tc

    watch = tc.datasets.watch_sessions().drop(columns="subject")
    if args.model:
        model = tc.load_model(args.model)
    else:
        first = watch.groupby("session_id")["exercise"].first()
        train_ids = first.groupby(first).head(3).index
        t = time.perf_counter()
        model = tc.activity_classifier.create(
            watch[watch["session_id"].isin(train_ids)], "session_id", "exercise",
            features=FEATURES, prediction_window=args.prediction_window, max_iterations=5,
            verbose=False, random_seed=0)
        print(f"trained on {len(train_ids)} sessions in {time.perf_counter() - t:.1f} s")
    pw, feats, target = model.prediction_window, model.features, model.target
    ids = sorted(watch["session_id"].unique())[-args.sessions:]        # held-out end
    data = watch[watch["session_id"].isin(ids)].reset_index(drop=True)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "activity.onnx")
        model.export_onnx(path)
        size = os.path.getsize(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    # Raw windows of every session, the last one padded with the feature means.
    mean = np.asarray(model.feature_mean)
    windows = []
    for sid in ids:
        rows = data.loc[data["session_id"] == sid, feats].to_numpy(np.float64)
        n = -(-len(rows) // pw)
        rows = np.vstack([rows, np.tile(mean, (n * pw - len(rows), 1))])
        windows.append(rows.reshape(n, pw, -1).astype(np.float32))
    n_windows = sum(len(w) for w in windows)
    prob, zeros1 = target + "Probability", np.zeros((1, 200), np.float32)

    def onnx_stream():
        out = []
        for wins in windows:
            for k, window in enumerate(wins):
                if k % 20 == 0:
                    h = c = zeros1
                p, h, c = sess.run([prob, "hiddenOut", "cellOut"],
                                   {"features": window[None], "hiddenIn": h, "cellIn": c})
                out.append(p[0])
        return out

    flat = np.concatenate(windows)
    B = min(args.batch, len(flat))
    n_batched = len(flat) // B * B
    zerosB = np.zeros((B, 200), np.float32)

    def onnx_batched():
        for i in range(0, n_batched, B):
            sess.run([prob], {"features": flat[i:i + B], "hiddenIn": zerosB, "cellIn": zerosB})

    def predict_sessions():
        return model.predict(data, output_type="probability_vector",
                             output_frequency="per_window")

    one_window = [data[data["session_id"] == ids[0]].iloc[i * pw:(i + 1) * pw]
                  for i in range(min(args.single_windows, len(windows[0])))]

    def predict_single():
        for frame in one_window:
            model.predict(frame, output_type="probability_vector",
                          output_frequency="per_window")

    # The timed export is the right one: same probabilities as predict().
    ref = np.stack(predict_sessions()["probability_vector"].to_list())
    diff = float(np.abs(np.asarray(onnx_stream()) - ref).max())

    t_pred_single = median_time(predict_single, args.repeats) / len(one_window)
    t_pred_batch = median_time(predict_sessions, args.repeats) / n_windows
    t_onnx_single = median_time(onnx_stream, args.repeats) / n_windows
    t_onnx_batch = median_time(onnx_batched, args.repeats) / n_batched

    import mxnet
    import onnx
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, mxnet {mxnet.__version__}, "
          f"threads {args.threads}, Python {sys.version.split()[0]}")
    print(f"model: prediction_window {pw}, {len(feats)} features, {len(model.classes)} classes; "
          f"ONNX file {size / 1024:.0f} KiB (opset 17)")
    print(f"data: {len(ids)} held-out sessions, {len(data)} rows, {n_windows} windows; "
          f"max |onnxruntime - predict| = {diff:.2g}")
    print(f"median of {args.repeats} repeats, microseconds per window:")
    rows = [
        ("predict(), one window per call", t_pred_single),
        ("predict(), whole sessions (batched)", t_pred_batch),
        ("onnxruntime, one window per run (stateful)", t_onnx_single),
        (f"onnxruntime, {B} windows per run", t_onnx_batch),
    ]
    for name, t in rows:
        print(f"  {name:<46} {t * 1e6:>10.1f} us")
    print(f"ratio predict(one window) / onnxruntime(one window): "
          f"{t_pred_single / t_onnx_single:.1f}x")
    print(f"ratio predict(whole sessions) / onnxruntime(one window): "
          f"{t_pred_batch / t_onnx_single:.1f}x")
    print(f"ratio predict(whole sessions) / onnxruntime({B} per run): "
          f"{t_pred_batch / t_onnx_batch:.1f}x")
    return 0 if diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
