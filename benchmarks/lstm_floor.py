"""Is the activity classifier's training ratio against PyTorch reachable with mxnet?

Times, side by side in one run (interleaved rounds, ``--threads`` threads each), one
training step of the activity classifier's shapes (batch 32 chunks, 20 windows of
100 rows, 6 features; LSTM 64 -> 200):

* ``mx lstm``: the toolkit's LSTM layer alone (mxnet's fused ``RNN`` operator on
  one flat weight vector, hybridized), forward and backward on a (32, 20, 64) input;
* ``gluon lstm``: Gluon's ``rnn.LSTM`` alone (the same operator, but its four weight
  arrays concatenated into that vector on every call), same input;
* ``torch lstm``: PyTorch's ``nn.LSTM`` alone, forward and backward, same shapes;
* ``mx step``: the toolkit's whole training step (its own loss graph, Adam), as the
  bare Gluon loop of ``benchmarks/peers.py`` runs it (host-drawn dropout masks included);
* ``torch step``: the hand-written PyTorch training step of ``benchmarks/peers.py``
  (the same network and loss, Adam).

If mxnet's LSTM alone takes longer than PyTorch's whole step, no change outside the
LSTM can make the toolkit's training as fast as the PyTorch loop: the printed ratios
say by how much. Random data and weights (timing does not depend on the values).

Usage::

    python benchmarks/lstm_floor.py                 # 1 thread, 7 rounds of 50 steps
    python benchmarks/lstm_floor.py --threads 2
"""

import argparse
import os
import statistics
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS",
                "MXNET_OMP_MAX_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    import peers
    from toolkit._mx import get_weights, mx
    from toolkit.activity_classifier import _net
    nd, autograd, gluon = mx().nd, mx().autograd, mx().gluon
    B, T, PW, F, C = peers.BATCH, peers.T, peers.PW, 6, 6
    rng = np.random.RandomState(0)

    # LSTMs alone.
    from toolkit.activity_classifier import _graphs
    mx_lstm = _graphs.PackedLSTM(_net.LSTM_HIDDEN, 64)
    gluon_lstm = gluon.rnn.LSTM(_net.LSTM_HIDDEN, layout="NTC", input_size=64)
    for block in (mx_lstm, gluon_lstm):
        block.initialize(mx().init.Xavier())
        block.hybridize(static_alloc=True, static_shape=True)
    x_mx = nd.array(rng.normal(size=(B, T, 64)))
    x_mx.attach_grad()
    h0, c0 = _net.zero_states(B)
    t_lstm = torch.nn.LSTM(64, _net.LSTM_HIDDEN, batch_first=True)
    x_t = torch.from_numpy(rng.normal(size=(B, T, 64)).astype(np.float32)).requires_grad_()

    def mx_lstm_step():
        with autograd.record():
            y, _, _ = mx_lstm(x_mx, h0, c0)
        y.backward()
        x_mx.grad.wait_to_read()

    def gluon_lstm_step():
        with autograd.record():
            y = gluon_lstm(x_mx)
        y.backward()
        x_mx.grad.wait_to_read()

    def torch_lstm_step():
        y, _ = t_lstm(x_t)
        y.sum().backward()

    # Whole steps: the toolkit's loss graph and the PyTorch net of peers.py.
    core, _, graphs = _net.build(F, C, PW)
    graphs.hybridize()
    trainer = gluon.Trainer(core.collect_params(), "adam", {"learning_rate": 1e-3})
    data = rng.normal(size=(B, T * PW, F)).astype(np.float32)
    labels = rng.randint(0, C, size=(B, T)).astype(np.float32)
    weights = np.ones((B, T), np.float32)
    net = peers.torch_net(F, C, get_weights(core))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt, wt = (torch.from_numpy(data), torch.from_numpy(labels.astype(np.int64)),
                  torch.from_numpy(weights))
    split = [peers.BN_GROUP] * (B // peers.BN_GROUP)

    def mx_step():
        keep_in = (rng.random_sample((B, T, 64)) >= 0.2) / 0.8
        keep_out = (rng.random_sample((B, T, 128)) >= 0.5) / 0.5
        h, c = _net.zero_states(B)
        inputs = (nd.array(data), h, c, nd.array(labels), nd.array(weights),
                  nd.array(keep_in), nd.array(keep_out), peers.BN_GROUP)
        with autograd.record():
            nll, _ = graphs.loss_only(*inputs)
            loss = nll.sum() / float(weights.sum())
        loss.backward()
        trainer.step(1)
        nd.waitall()

    def torch_step():
        mi = torch.from_numpy(((rng.random_sample((B, T, 64)) >= 0.2) / 0.8).astype(np.float32))
        mo = torch.from_numpy(((rng.random_sample((B, T, 128)) >= 0.5) / 0.5)
                              .astype(np.float32))
        opt.zero_grad()
        net.loss(xt, yt, wt, split, mi, mo).backward()
        opt.step()

    sides = {"mx lstm": mx_lstm_step, "gluon lstm": gluon_lstm_step,
             "torch lstm": torch_lstm_step, "mx step": mx_step,
             "torch step": torch_step}
    for fn in sides.values():          # warm-up: graph building, allocations
        for _ in range(3):
            fn()
    times = {k: [] for k in sides}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - t) / args.steps * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.threads} thread(s), {args.rounds} rounds of {args.steps} steps, "
          f"load average {os.getloadavg()[0]:.1f}; ms per step (median):")
    for k, v in med.items():
        print(f"  {k:11s} {v:7.2f} ms  (min {min(times[k]):.2f}, max {max(times[k]):.2f})")
    print(f"mxnet LSTM alone / PyTorch whole step: {med['mx lstm'] / med['torch step']:.2f}")
    print(f"mxnet LSTM / PyTorch LSTM:             {med['mx lstm'] / med['torch lstm']:.2f}")
    print(f"Gluon rnn.LSTM / PyTorch LSTM:         {med['gluon lstm'] / med['torch lstm']:.2f}")
    print(f"toolkit step / PyTorch step:           {med['mx step'] / med['torch step']:.2f}")
    print(f"toolkit step without its LSTM / PyTorch step without its LSTM: "
          f"{(med['mx step'] - med['mx lstm']) / (med['torch step'] - med['torch lstm']):.2f}")


if __name__ == "__main__":
    main()
