"""A tiny trainable task used only by the tests, to prove that one declaration of a
file-version step migrates model files *and* training checkpoints.

Version 1 names its hidden layer ``hidden`` (weights ``hidden.weight``,
``hidden.bias``); version 2 renames it ``layer1``, declared once as a
:class:`toolkit._model.VersionStep`. :func:`task_class` builds the model class of either
version (so one test process can play the old and the new toolkit), :func:`create`
trains it with the shared machinery every task uses (``_checkpoint.start``,
``_training.setup`` / ``optimizer_arrays`` / ``restore_optimizer``, a seeded numpy
generator saved in the checkpoint).
"""

import numpy as np

from toolkit import _checkpoint, _model, _training
from toolkit._model import Model, VersionStep
from toolkit._mx import get_weights, mx, set_weights

TASK = "toolkit_trainable_test_task"
HIDDEN_NAMES = {1: "hidden", 2: "layer1"}
V1_TO_V2 = VersionStep(renames={"hidden.weight": "layer1.weight", "hidden.bias": "layer1.bias"},
                       doc="The hidden layer is called layer1.")


def _rename_weights_only(state, weights):
    """A version step written the old way: it renames the weights and nothing else."""
    return state, V1_TO_V2(state, weights)[1]


def build_net(hidden_name):
    gluon = mx().gluon

    class Net(gluon.HybridBlock):
        def __init__(self):
            super().__init__(prefix="trainable_")
            with self.name_scope():
                setattr(self, hidden_name, gluon.nn.Dense(8, in_units=4, activation="tanh"))
                self.out = gluon.nn.Dense(3, in_units=8)

        def hybrid_forward(self, F, x):
            return self.out(getattr(self, hidden_name)(x))
    return Net()


def task_class(version, step=V1_TO_V2):
    class Trainable(Model):
        _TASK = TASK
        _FILE_VERSION = version
        _MIGRATIONS = {1: step} if version >= 2 else {}
        HIDDEN = HIDDEN_NAMES[version]

        def __init__(self, state, net):
            self._state, self._net = dict(state), net

        def _get_state(self):
            return dict(self._state), get_weights(self._net)

        @classmethod
        def _from_state(cls, state, weights):
            net = build_net(cls.HIDDEN)
            net.initialize()
            set_weights(net, weights, what="trainable test task")
            return cls(state, net)

        def predict(self, x):
            return mx().nd.softmax(self._net(mx().nd.array(x))).asnumpy()
    return Trainable


def data(n=96, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    return x, y


def create(cls, x, y, max_iterations, random_seed=0, checkpoint_path=None, resume_from=None,
           stop_after=None):
    """Train ``cls``'s network; with ``stop_after``, stop (as if killed) after that
    iteration's checkpoint and return None."""
    nd, autograd = mx().nd, mx().autograd
    checkpoint_path, resume, seed = _checkpoint.start(TASK, checkpoint_path, 1, resume_from,
                                                      random_seed)
    config = {"max_iterations": max_iterations, "random_seed": seed}
    mx().random.seed(seed)
    net = build_net(cls.HIDDEN)
    net.initialize(mx().init.Xavier())
    run = _training.setup(net, "adam", {"learning_rate": 0.05})
    rng, first = np.random.RandomState(seed), 1
    if resume is not None:
        resume.check_compatible(config, "data")
        set_weights(net, resume.weights, what="trainable test task")
        _training.restore_optimizer(run, resume.extra.get("optimizer"),
                                    resume.arrays_under("optimizer"))
        resume.check_all_used()
        rng, first = resume.rng(), int(resume.position["iteration"]) + 1
    xs, ys = nd.array(x), nd.array(y.astype(np.float32))
    loss_fn = mx().gluon.loss.SoftmaxCrossEntropyLoss()
    for it in range(first, max_iterations + 1):
        idx = nd.array(rng.choice(len(x), 16, replace=False))
        with autograd.record():
            loss = loss_fn(net(xs.take(idx)), ys.take(idx)).mean()
        loss.backward()
        run.trainer.step(1)
        if checkpoint_path is not None and it in (stop_after, max_iterations):
            meta, opt = _training.optimizer_arrays(run)
            _checkpoint.write(checkpoint_path, TASK, cls._FILE_VERSION, {"name": "test"},
                              get_weights(net), {"iteration": it,
                                                 "max_iterations": max_iterations},
                              config, "data", rng=rng, extra={"optimizer": meta},
                              arrays={f"optimizer/{k}": v for k, v in opt.items()})
        if it == stop_after:
            return None
    return cls({"name": "test"}, net)


def register(monkeypatch, cls):
    monkeypatch.setitem(_model._TASKS, TASK, cls)
