"""The toolkit against what a user would pick instead, side by side in one run.

Rows (activity classifier, seglearn watch data: train subjects 1-6, infer on 7-10):

* training, windows/s: ``create()`` (validation off, ``--epochs`` epochs (``auto``:
  the number ``create()`` picks by default for this data, 180), batch 32
  chunks, Adam) vs a bare Gluon loop over the toolkit's own training graph (chunks
  prepared once, no augmentation, no metrics) vs a hand-written PyTorch loop over the
  same network (same initial weights copied in; dropout 0.2/0.5, batch norm over
  groups of 16 chunks as the toolkit's, weighted cross-entropy, Adam 1e-3);
* inference, windows/s: ``predict()`` (per row) vs the model's own prediction network
  called directly on the prepared chunks vs onnxruntime on ``export_onnx`` (20 ``run``
  calls per batch of chunks, the LSTM state carried) vs the same network in PyTorch
  (the trained weights copied in).

Every side runs once per round, sides interleaved (A B C A B C ...), and the table
gives the median over ``--rounds`` rounds and ``peer / toolkit``: above 1.0 the peer
is faster. Before timing, the outputs are checked to agree: the PyTorch and
onnxruntime probabilities against the toolkit network's (1e-4), ``predict``'s against
the network's, and the first training loss of PyTorch against the toolkit's loss graph
(dropout off). Each framework gets ``--threads`` threads (set before any import).

Needs the ``bench`` extra (``pip install -e .[bench]``: PyTorch, onnxruntime, onnx)
and the ``data`` extra (seglearn, for the watch data). Usage::

    python benchmarks/peers.py                     # 1 thread, 5 rounds
    python benchmarks/peers.py --rounds 7 --epochs 20 --threads 2
    python benchmarks/peers.py --skip inference --epochs auto --rounds 3
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", default="10",
                   help="training epochs per timed run, or 'auto' (create()'s default)")
    p.add_argument("--skip", default="", help="comma-separated: training,inference")
    return p.parse_args(argv)


def _set_threads(n):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS",
                "MXNET_OMP_MAX_THREADS"):
        os.environ[var] = str(n)


PW = 100
BATCH = 32
T = 20          # windows per chunk (toolkit.activity_classifier._data.WINDOWS_PER_CHUNK)
BN_GROUP = 16


# --- the same network in PyTorch ---------------------------------------------------------

def torch_net(num_features, num_classes, weights):
    """The activity classifier's network in PyTorch, with the toolkit's weights copied in.

    mxnet's LSTM packs its gates i, f, c, o, as PyTorch's i, f, g, o: the arrays copy
    as they are.
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(num_features, 64, PW, stride=PW)
            self.lstm = nn.LSTM(64, 200, batch_first=True)
            self.dense0 = nn.Linear(200, 128)
            self.bn = nn.BatchNorm1d(128, eps=1e-3, momentum=0.1)
            self.dense1 = nn.Linear(128, num_classes)

        def trunk(self, x, mask_in=None):
            y = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)   # (B, T, 64)
            if mask_in is not None:
                y = y * mask_in
            y, _ = self.lstm(y)
            return self.dense0(y)                                         # (B, T, 128)

        def forward(self, x):
            z = self.trunk(x)
            z = (z - self.bn.running_mean) / torch.sqrt(self.bn.running_var + self.bn.eps)
            z = torch.relu(z * self.bn.weight + self.bn.bias)
            return torch.softmax(self.dense1(z), dim=-1)

        def loss(self, x, label, weight, groups, mask_in=None, mask_out=None):
            """Weighted cross-entropy with batch norm over ``groups`` of chunks."""
            z = self.trunk(x, mask_in)
            parts = []
            for g in torch.split(z, groups):
                mean = g.mean(dim=(0, 1), keepdim=True)
                var = ((g - mean) ** 2).mean(dim=(0, 1), keepdim=True)
                parts.append((g - mean) / torch.sqrt(var + self.bn.eps))
            z = torch.relu(torch.cat(parts) * self.bn.weight + self.bn.bias)
            if mask_out is not None:
                z = z * mask_out
            logp = torch.log_softmax(self.dense1(z), dim=-1)
            nll = -logp.gather(-1, label.unsqueeze(-1)).squeeze(-1)
            return (nll * weight).sum() / weight.sum().clamp(min=1e-5)

    net = Net()
    t = lambda k: torch.from_numpy(weights[k].copy())  # noqa: E731
    with torch.no_grad():
        net.conv.weight.copy_(t("conv.weight"))
        net.conv.bias.copy_(t("conv.bias"))
        net.lstm.weight_ih_l0.copy_(t("lstm.l0_i2h_weight"))
        net.lstm.weight_hh_l0.copy_(t("lstm.l0_h2h_weight"))
        net.lstm.bias_ih_l0.copy_(t("lstm.l0_i2h_bias"))
        net.lstm.bias_hh_l0.copy_(t("lstm.l0_h2h_bias"))
        net.dense0.weight.copy_(t("dense0.weight"))
        net.dense0.bias.copy_(t("dense0.bias"))
        net.bn.weight.copy_(t("bn.gamma"))
        net.bn.bias.copy_(t("bn.beta"))
        net.bn.running_mean.copy_(t("bn.running_mean"))
        net.bn.running_var.copy_(t("bn.running_var"))
        net.dense1.weight.copy_(t("dense1.weight"))
        net.dense1.bias.copy_(t("dense1.bias"))
    return net


# --- the activity classifier rows --------------------------------------------------------

class Activity:
    """Data, models and one timed function per side."""

    def __init__(self, args):
        import numpy as np

        import toolkit as tc
        from toolkit.activity_classifier import _data
        self.np, self.tc, self.args = np, tc, args
        watch = tc.datasets.watch_sessions()
        self.train = watch[watch["subject"] <= 6].drop(columns="subject")
        if args.epochs == "auto":
            from toolkit.activity_classifier import _train
            lengths = self.train.groupby("session_id").size().to_numpy()
            chunks = int((-(-(-(-lengths // PW)) // T)).sum())
            args.epochs = _train.auto_iterations(chunks, BATCH)
        args.epochs = int(args.epochs)
        self.test = watch[watch["subject"] > 6].drop(columns="subject")
        self.features = [c for c in self.train.columns if c not in ("session_id", "exercise")]
        # create() once first: mxnet's one-off start-up is then outside every timing.
        self.model = tc.activity_classifier.create(
            self.train, "session_id", "exercise", max_iterations=args.epochs,
            validation_set=None, verbose=False, random_seed=0)
        self.classes = self.model.classes
        self.n_train_windows = self._windows(self.train)
        self.n_test_windows = self._windows(self.test)
        # Training chunks for the bare loops: standardised, prepared once.
        sessions = _data.Sessions(self.train["session_id"].to_numpy())
        values = self.train[self.features].to_numpy(np.float32)[sessions.order]
        values = (values - values.mean(0)) / values.std(0)
        labels = self.train["exercise"].map(
            {c: i for i, c in enumerate(self.classes)}).to_numpy()
        self.chunks = _data.chunk(values, sessions, PW, labels[sessions.order],
                                  len(self.classes))
        # Inference chunks of the test data, standardised as the model does it.
        values, sessions = self.model._prepare(self.test)
        self.test_chunks = _data.chunk(values, sessions, PW)
        self.mean = np.asarray(self.model._state["feature_mean"], np.float32)
        self.std = np.asarray(self.model._state["feature_std"], np.float32)

    @staticmethod
    def _windows(frame):
        lengths = frame.groupby("session_id").size().to_numpy()
        return int((-(-lengths // PW)).sum())

    # training sides
    def train_create(self):
        self.tc.activity_classifier.create(
            self.train, "session_id", "exercise", max_iterations=self.args.epochs,
            validation_set=None, verbose=False, random_seed=0)

    def _gluon_setup(self):
        from toolkit._mx import mx
        from toolkit.activity_classifier import _net
        core, _, graphs = _net.build(len(self.features), len(self.classes), PW)
        graphs.hybridize()
        trainer = mx().gluon.Trainer(core.collect_params(), "adam", {"learning_rate": 1e-3})
        return core, graphs, trainer

    def _gluon_inputs(self, idx, rng, dropout):
        from toolkit._mx import mx
        from toolkit.activity_classifier import _net
        nd, np = mx().nd, self.np
        n = len(idx)
        ch = self.chunks
        if dropout:
            keep_in = (rng.random_sample((n, T, 64)) >= 0.2) / 0.8
            keep_out = (rng.random_sample((n, T, 128)) >= 0.5) / 0.5
        else:
            keep_in, keep_out = np.ones((n, T, 64)), np.ones((n, T, 128))
        h, c = _net.zero_states(n)
        return (nd.array(ch["data"][idx]), h, c, nd.array(ch["labels"][idx]),
                nd.array(ch["weights"][idx]), nd.array(keep_in), nd.array(keep_out),
                BN_GROUP)

    def train_gluon(self):
        from toolkit._mx import mx
        autograd, nd = mx().autograd, mx().nd
        core, graphs, trainer = self._gluon_setup()
        rng = self.np.random.RandomState(0)
        n = len(self.chunks["data"])
        for _ in range(self.args.epochs):
            order = rng.permutation(n)
            for i in range(0, n, BATCH):
                idx = order[i:i + BATCH]
                inputs = self._gluon_inputs(idx, rng, True)
                with autograd.record():
                    # The graph create() trains with when it keeps no validation set
                    # or checkpoint (no running batch-norm statistics), as here.
                    nll, _ = graphs.loss_only(*inputs)
                    loss = nll.sum() / max(float(self.chunks["weights"][idx].sum()), 1e-5)
                loss.backward()
                trainer.step(1)
            nd.waitall()

    def _torch_setup(self):
        import torch
        from toolkit._mx import get_weights
        core, _, _ = self._gluon_setup()
        net = torch_net(len(self.features), len(self.classes), get_weights(core))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        return core, net, opt

    def _torch_batch(self, idx, rng, dropout):
        import torch
        np, ch, n = self.np, self.chunks, len(idx)
        if dropout:
            keep_in = torch.from_numpy(((rng.random_sample((n, T, 64)) >= 0.2) / 0.8)
                                       .astype(np.float32))
            keep_out = torch.from_numpy(((rng.random_sample((n, T, 128)) >= 0.5) / 0.5)
                                        .astype(np.float32))
        else:
            keep_in = keep_out = None
        groups = [min(BN_GROUP, n - s) for s in range(0, n, BN_GROUP)]
        return (torch.from_numpy(ch["data"][idx]),
                torch.from_numpy(ch["labels"][idx].astype(np.int64)),
                torch.from_numpy(ch["weights"][idx]), groups, keep_in, keep_out)

    def train_torch(self):
        _, net, opt = self._torch_setup()
        net.train()
        rng = self.np.random.RandomState(0)
        n = len(self.chunks["data"])
        for _ in range(self.args.epochs):
            order = rng.permutation(n)
            for i in range(0, n, BATCH):
                x, y, w, groups, mi, mo = self._torch_batch(order[i:i + BATCH], rng, True)
                opt.zero_grad()
                net.loss(x, y, w, groups, mi, mo).backward()
                opt.step()

    def check_training(self):
        """The first loss (dropout off) of the PyTorch net equals the toolkit's graph's."""
        core, graphs, _ = self._gluon_setup()
        import torch
        from toolkit._mx import get_weights
        net = torch_net(len(self.features), len(self.classes), get_weights(core))
        idx = self.np.arange(min(BATCH, len(self.chunks["data"])))
        nll, _ = graphs.loss_only(*self._gluon_inputs(idx, None, False))
        ours = float(nll.sum().asscalar()) / float(self.chunks["weights"][idx].sum())
        x, y, w, groups, _, _ = self._torch_batch(idx, None, False)
        with torch.no_grad():
            theirs = float(net.loss(x, y, w, groups))
        return abs(ours - theirs)

    # inference sides
    def infer_predict(self):
        return self.model.predict(self.test)

    def infer_network(self):
        from toolkit._mx import mx
        from toolkit.activity_classifier import _model, _net
        nd, np = mx().nd, self.np
        data, out = self.test_chunks["data"], []
        batch = _model._PREDICT_BATCH
        for i in range(0, len(data), batch):
            x = nd.array(data[i:i + batch])
            h, c = _net.zero_states(x.shape[0])
            out.append(self.model._pred(x, h, c)[0].asnumpy())
        return np.concatenate(out)

    def onnx_session(self):
        import onnxruntime as ort
        path = os.path.join(tempfile.mkdtemp(), "activity.onnx")
        self.model.export_onnx(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.args.threads
        opts.inter_op_num_threads = 1
        self.ort = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        # Raw values in: the export standardises inside (padding = the feature mean).
        self.raw_chunks = self.test_chunks["data"] * self.std + self.mean

    def infer_onnx(self):
        np = self.np
        data = self.raw_chunks
        n = len(data)
        h = np.zeros((n, 200), np.float32)
        c = np.zeros((n, 200), np.float32)
        out = np.empty((n, T, len(self.classes)), np.float32)
        name = self.model.target + "Probability"
        windows = data.reshape(n, T, PW, -1)
        for t in range(T):
            p, h, c = self.ort.run([name, "hiddenOut", "cellOut"],
                                   {"features": np.ascontiguousarray(windows[:, t]),
                                    "hiddenIn": h, "cellIn": c})
            out[:, t] = p
        return out

    def torch_inference_net(self):
        from toolkit._mx import get_weights
        self.tnet = torch_net(len(self.features), len(self.classes),
                              get_weights(self.model._core)).eval()

    def infer_torch(self):
        import torch
        with torch.inference_mode():
            return self.tnet(torch.from_numpy(self.test_chunks["data"])).numpy()


def measure(sides, rounds):
    """{name: median seconds}; the sides run interleaved, once per round."""
    times = {name: [] for name, _ in sides}
    for _ in range(rounds):
        for name, fn in sides:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv=None):
    args = parse_args(argv)
    _set_threads(args.threads)
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    warnings.filterwarnings("ignore", message=r"Parameter .* is not used by any computation")
    skip = set(filter(None, args.skip.split(",")))
    load = os.getloadavg()
    act = Activity(args)
    print(f"threads {args.threads}, rounds {args.rounds}, epochs {args.epochs}; "
          f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"on {os.cpu_count()} cores\n")
    rows = []
    if "training" not in skip:
        print(f"loss check: |PyTorch - toolkit| = {act.check_training():.2e}")
        med = measure([("create()", act.train_create), ("bare Gluon loop", act.train_gluon),
                       ("PyTorch loop, same net", act.train_torch)], args.rounds)
        n = act.n_train_windows * args.epochs
        base = n / med["create()"]
        rows.append(("activity training, windows/s", "create()", base,
                     [(k, n / v) for k, v in med.items() if k != "create()"]))
    if "inference" not in skip:
        act.onnx_session()
        act.torch_inference_net()
        ours = act.infer_network()
        keep = act.test_chunks["weights"] > 0
        per_window = act.model.predict(act.test, output_type="probability_vector",
                                       output_frequency="per_window")
        d_pred = np.abs(np.stack(per_window["probability_vector"].to_numpy())
                        - ours[keep]).max()
        d_onnx = np.abs(act.infer_onnx()[keep] - ours[keep]).max()
        d_torch = np.abs(act.infer_torch()[keep] - ours[keep]).max()
        print(f"output check: max |difference| of probabilities vs the network: predict "
              f"{d_pred:.1e}, onnxruntime {d_onnx:.1e}, PyTorch {d_torch:.1e}")
        if max(d_pred, d_onnx, d_torch) > 1e-4:
            sys.exit("outputs disagree: no timing")
        med = measure([("predict()", act.infer_predict),
                       ("its own network, called directly", act.infer_network),
                       ("onnxruntime on export_onnx", act.infer_onnx),
                       ("PyTorch, same net", act.infer_torch)], args.rounds)
        n = act.n_test_windows
        rows.append(("activity inference, windows/s", "predict()", n / med["predict()"],
                     [(k, n / v) for k, v in med.items() if k != "predict()"]))
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| path | toolkit | toolkit windows/s | peer | peer windows/s | peer / toolkit |")
    print("|---|---|---|---|---|---|")
    for what, name, base, peers in rows:
        for i, (peer, v) in enumerate(peers):
            print(f"| {what if i == 0 else ''} | {name if i == 0 else ''} | "
                  f"{f'{base:.0f}' if i == 0 else ''} | {peer} | {v:.0f} | {v / base:.2f}x |")


if __name__ == "__main__":
    main()
