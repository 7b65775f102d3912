"""Running a task's prediction network through onnxruntime, checked against mxnet.

Why: on CPU, mxnet's (MKL-DNN fused) convolutions of EfficientNet-Lite0 take
about 2.5x as long as onnxruntime's on the same folded graph (issue 19: 39 ms
vs 14.5 ms per image at batch 16). The image tasks therefore run the part of
their network that mxnet ran at prediction time (image classifier: backbone
and pooling -> features; object detector: backbone and head -> raw outputs)
as an in-memory ONNX graph, written by the same functions as ``export_onnx``.
Everything before (decoding, resizing, the float32 pixel scaling) and after
(classifier layer, softmax, box decoding, NMS) is the unchanged numpy code.

Which backend runs is :func:`toolkit.config.get_inference_backend`'s choice
(``'auto'``: onnxruntime when ``onnx`` and ``onnxruntime`` import and the
configured devices are CPUs; see :func:`resolve`). This module never imports a
task: a task hands :func:`runner_for` two callables, one building its ONNX
model and one running its mxnet network on the same numpy input.

"Same numbers, verified": a :class:`Runner` runs its first batch through
both and compares; if they differ by more than :data:`CHECK_TOLERANCE` of
the output's scale (or the graph cannot be built), it warns once and runs
mxnet for that model from then on. Expected differences are float rounding
(BatchNorm folded in float64 here, fused by MKL-DNN there): ~1e-5.

onnxruntime is imported on the first prediction, never by ``import toolkit``.
"""

import os
import threading
import warnings

import numpy as np

from .errors import BackendNotAvailableError, ToolkitWarning

#: Largest difference between onnxruntime's and mxnet's outputs accepted by the
#: first-batch check, relative to the outputs' scale (max |mxnet output|, at least 1).
CHECK_TOLERANCE = 1e-4
ONNXRUNTIME, MXNET = "onnxruntime", "mxnet"
_INSTALL = "pip install onnxruntime onnx"


def _import_runtime():
    # An import every time (cheap once loaded), so that a test or a user hiding
    # the package through sys.modules is honoured. onnx writes the graph.
    import importlib
    importlib.import_module("onnx")
    return importlib.import_module("onnxruntime")


def runtime_available():
    """Whether ``onnx`` and ``onnxruntime`` both import."""
    try:
        _import_runtime()
    except (ImportError, OSError):
        return False
    return True


def require_runtime():
    """Return the ``onnxruntime`` module, or raise :class:`BackendNotAvailableError`."""
    try:
        return _import_runtime()
    except (ImportError, OSError) as e:
        raise BackendNotAvailableError(
            f"The inference backend 'onnxruntime' was chosen (toolkit.config."
            f"set_inference_backend or TOOLKIT_INFERENCE_BACKEND), but it cannot be imported "
            f"({e}). Install it with `{_INSTALL}`, or choose 'auto' (onnxruntime when "
            "installed, else mxnet) or 'mxnet'.") from e


def resolve(choice):
    """``'onnxruntime'`` or ``'mxnet'``: what the backend ``choice`` runs on now."""
    from . import config
    if choice == MXNET:
        return MXNET
    if choice == ONNXRUNTIME:
        require_runtime()
        return ONNXRUNTIME
    # 'auto': GPU configurations stay on mxnet (the onnxruntime here runs on the CPU).
    return ONNXRUNTIME if runtime_available() and config.cpu_only() else MXNET


def backend():
    """The backend prediction uses now (``config.get_inference_backend(resolve=True)``)."""
    from . import config
    return config.get_inference_backend(resolve=True)


def intra_op_threads():
    """Threads per onnxruntime call: ``OMP_NUM_THREADS`` when set to a positive int, else 0
    (onnxruntime's default), so that a benchmark limited to 1 thread limits both backends."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    try:
        n = int(value)
    except ValueError:
        return 0
    return n if n > 0 else 0


def session(onnx_model):
    """An ``onnxruntime.InferenceSession`` (CPU) of an in-memory ``onnx.ModelProto``."""
    ort = require_runtime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    threads = intra_op_threads()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(onnx_model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def difference(got, expected):
    """``(max |got - expected|, scale)``: ``inf`` when shapes or non-finite entries differ;
    ``scale`` is max |expected| over the finite entries, at least 1."""
    got = np.asarray(got, np.float64)
    expected = np.asarray(expected, np.float64)
    if got.shape != expected.shape:
        return float("inf"), 1.0
    finite = np.isfinite(expected)
    if not np.array_equal(finite, np.isfinite(got)) or \
            not np.array_equal(got[~finite], expected[~finite]):
        return float("inf"), 1.0
    if not finite.any():
        return 0.0, 1.0
    return (float(np.abs(got[finite] - expected[finite]).max()),
            max(1.0, float(np.abs(expected[finite]).max())))


class Runner:
    """One model's network on numpy input: onnxruntime once checked, else mxnet.

    Parameters
    ----------
    what : str
        The model, for the warning (``'image classifier'``).
    build : callable
        ``build() -> onnx.ModelProto`` with one input (the network input, as
        ``reference`` takes it) and one output; called on first use.
    reference : callable
        ``reference(x) -> numpy array``: the mxnet network on the same input.

    Calling the runner with a float32 array returns the network's output as
    a float32 numpy array. The first call runs both and compares them
    (see the module docstring); :attr:`backend` tells which one runs now.
    """

    def __init__(self, what, build, reference):
        self.what = what
        self._build = build
        self._reference = reference
        self._session = None
        self._checked = False
        self._lock = threading.Lock()
        self.backend = ONNXRUNTIME

    def _fall_back(self, reason):
        self.backend = MXNET
        self._session = None
        warnings.warn(
            f"This {self.what} predicts with mxnet instead of onnxruntime: {reason}. Its "
            "outputs are mxnet's as before, only slower. The backend is chosen with "
            "toolkit.config.set_inference_backend('auto' | 'mxnet' | 'onnxruntime') or the "
            "environment variable TOOLKIT_INFERENCE_BACKEND; set 'mxnet' to silence this "
            "warning, and please report it.", ToolkitWarning, stacklevel=4)

    def __call__(self, x):
        if self.backend == MXNET:
            return self._reference(x)
        if self._checked:
            return self._run(x)
        with self._lock:
            if self.backend == MXNET:       # another thread's check fell back
                return self._reference(x)
            if self._checked:
                return self._run(x)
            expected = self._reference(x)
            try:
                if self._session is None:
                    self._session = session(self._build())
                got = self._run(x)
            except Exception as e:  # noqa: BLE001 - any failure means: keep mxnet
                self._fall_back(f"its ONNX graph could not be run ({type(e).__name__}: {e})")
                return expected
            diff, scale = difference(got, expected)
            if not diff <= CHECK_TOLERANCE * scale:
                self._fall_back(
                    f"on its first batch onnxruntime's outputs differ from mxnet's by {diff:.3g} "
                    f"(more than {CHECK_TOLERANCE:g} x their scale {scale:.3g})")
                return expected
            self._checked = True
            return got

    def _run(self, x):
        sess = self._session
        out = sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)})
        return out[0]


def runner_for(owner, key, what, build, reference):
    """``owner``'s :class:`Runner` for ``key``, or ``None`` when mxnet is the backend.

    The runner is cached on ``owner`` (a model object) under ``key`` (e.g. the
    pooling its graph follows), so the session is built and checked once per
    model and process.
    """
    if backend() != ONNXRUNTIME:
        return None
    runners = owner.__dict__.setdefault("_inference_runners", {})
    if key not in runners:
        runners[key] = Runner(what, build, reference)
    return runners[key]
