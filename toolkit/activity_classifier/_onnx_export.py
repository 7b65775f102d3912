"""ONNX export of the activity classifier.

The same prediction graph as the Core ML export (:mod:`._export`): one window
per row, raw values in, the per-feature standardisation inside, LSTM state in
and out. Written with the ``onnx`` helper API in opset 17 (see
:mod:`toolkit._onnx` for why not ``mx.onnx``, and for the versions).

=================  ==========================================================  ==============
node               ONNX operator                                               shape
=================  ==========================================================  ==============
``features``       input, raw values, rows in time order                       (B, pw, F)
standardize        ``Sub`` mean, ``Div`` std (per feature, float32)            (B, pw, F)
transpose          ``Transpose`` perm (0, 2, 1)                                (B, F, pw)
conv               ``Conv`` 64 filters, kernel = stride = pw                   (B, 64, 1)
relu0              ``Relu``                                                    (B, 64, 1)
to_sequence        ``Transpose`` perm (2, 0, 1): one time step                 (1, B, 64)
lstm               ``LSTM`` 200 units, gates i, o, f, c; state ``hiddenIn``,   (1, B, 200)
                   ``cellIn`` (B, 200) -> ``hiddenOut``, ``cellOut`` (B, 200)
dense0             ``Gemm`` 200 -> 128                                         (B, 128)
bn                 ``BatchNormalization`` running statistics, epsilon 1e-3     (B, 128)
relu1              ``Relu``                                                    (B, 128)
dense1             ``Gemm`` 128 -> C                                           (B, C)
softmax            ``Softmax`` axis 1 -> ``<target>Probability``               (B, C)
label              ``ArgMax`` -> ``<target>Index`` (int64), ``Gather`` of the  (B,)
                   class labels -> ``<target>`` (str, or int64 for int labels)
=================  ==========================================================  ==============

Dropout layers are the identity at prediction time and are left out. The
batch axis ``B`` is symbolic: each row is an independent window with its own
state (e.g. one per device a server handles), never consecutive windows of
one session.
"""

import numpy as np

from .. import _onnx
from .._mx import get_weights
from ..errors import ExportError
from . import _net
from ._data import WINDOWS_PER_CHUNK
from ._export import FEATURES_INPUT, STATE_INPUTS, STATE_OUTPUTS, TASK_TITLE, standardisation

BATCH = "batch"


def _onnx_gates(packed):
    """Reorder an mxnet LSTM parameter (gates i, f, c, o along axis 0) into
    ONNX's order i, o, f, c."""
    i, f, c, o = np.split(np.asarray(packed, np.float32), 4, axis=0)
    return np.concatenate([i, o, f, c], axis=0)


def _labels(classes):
    """(values, dtype) of the label tensor: int64 when every class is an int."""
    if all(isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_))
           for c in classes):
        return [int(c) for c in classes], np.int64
    return [str(c) for c in classes], str


def _write_layers(g, w, x, h0, c0, mean, std, pw):
    """Standardisation, convolution, LSTM (its final states as the state outputs) and
    the dense layers: from the input window to the logits."""
    n_features, hidden = len(mean), _net.LSTM_HIDDEN
    # Internal tensors live under "/..." names, which no column name is
    # likely to take; the builder refuses any collision anyway.
    # predict() computes (x - mean) / std in float32 on raw float32 values.
    y = g.node("Sub", [x, g.initializer("/standardize/mean", mean)], ["/standardize/centered"])
    y = g.node("Div", [y, g.initializer("/standardize/std", std)], ["/standardize/out"])
    y = g.node("Transpose", [y], ["/transpose/out"], perm=[0, 2, 1])
    conv_w = np.asarray(w[_net.CONV_WEIGHT], np.float32).reshape(_net.CONV_FILTERS,
                                                                 n_features, pw)
    y = g.node("Conv", [y, g.initializer("/conv/W", conv_w),
                        g.initializer("/conv/B", w[_net.CONV_BIAS])], ["/conv/out"],
               kernel_shape=[pw], strides=[pw], pads=[0, 0], dilations=[1], group=1)
    y = g.node("Relu", [y], ["/relu0/out"])
    y = g.node("Transpose", [y], ["/to_sequence/out"], perm=[2, 0, 1])      # (1, B, 64)
    axes0 = g.initializer("/axes0", np.array([0]), np.int64)
    h = g.node("Unsqueeze", [h0, axes0], ["/lstm/h0"])
    c = g.node("Unsqueeze", [c0, axes0], ["/lstm/c0"])
    # ONNX B = [Wb, Rb]: mxnet's i2h and h2h biases, each in ONNX gate order.
    bias = np.concatenate([_onnx_gates(w[_net.LSTM_I2H_BIAS]),
                           _onnx_gates(w[_net.LSTM_H2H_BIAS])])
    _, yh, yc = g.node(
        "LSTM", [y, g.initializer("/lstm/W", _onnx_gates(w[_net.LSTM_I2H_WEIGHT])[None]),
                 g.initializer("/lstm/R", _onnx_gates(w[_net.LSTM_H2H_WEIGHT])[None]),
                 g.initializer("/lstm/B", bias[None]), "", h, c],
        ["", "/lstm/Y_h", "/lstm/Y_c"], name="/lstm", hidden_size=hidden, direction="forward")
    y = g.node("Squeeze", [yh, axes0], [STATE_OUTPUTS[0]])
    g.node("Squeeze", [yc, axes0], [STATE_OUTPUTS[1]])
    y = g.node("Gemm", [y, g.initializer("/dense0/W", w[_net.DENSE0_WEIGHT]),
                        g.initializer("/dense0/B", w[_net.DENSE0_BIAS])], ["/dense0/out"],
               transB=1)
    y = g.node("BatchNormalization",
               [y, g.initializer("/bn/scale", w[_net.BN_GAMMA]),
                g.initializer("/bn/B", w[_net.BN_BETA]),
                g.initializer("/bn/mean", w[_net.BN_MEAN]),
                g.initializer("/bn/var", w[_net.BN_VAR])], ["/bn/out"],
               epsilon=float(_net.BN_EPSILON))
    y = g.node("Relu", [y], ["/relu1/out"])
    y = g.node("Gemm", [y, g.initializer("/dense1/W", w[_net.DENSE1_WEIGHT]),
                        g.initializer("/dense1/B", w[_net.DENSE1_BIAS])], ["/dense1/out"],
               transB=1)
    return y


def export_onnx(model, path):
    """Export an activity classifier as an ONNX model (``.onnx``, opset 17).

    Runs in onnxruntime (servers, Android, the web) and any runtime that
    supports ONNX opset 17. Each row of a batch is **one prediction window**;
    the LSTM state travels between windows through extra inputs and outputs:

    * input ``features``: float32 ``(batch, prediction_window, num_features)``,
      the **raw** sensor values of one window per row, row ``t`` of a window =
      the ``t``-th sample, columns in the order of ``model.features``. The
      standardisation learned in training is part of the model: do not
      standardise before feeding.
    * inputs ``hiddenIn``, ``cellIn``: float32 ``(batch, 200)``, the LSTM state
      of each row (required: feed zeros to start or reset a state).
    * outputs ``<target>Probability``: float32 ``(batch, num_classes)``,
      columns in ``model.classes`` order; ``<target>Index``: int64 ``(batch,)``,
      the position of the most likely class; ``<target>``: ``(batch,)`` the
      most likely class (int64 when every class is an int, str otherwise);
      ``hiddenOut``, ``cellOut``: float32 ``(batch, 200)``, the state after
      this window.

    The batch axis is for *independent* windows (one per session or device);
    consecutive windows of one session go through consecutive calls, each
    carrying the previous call's state.

    How to reproduce ``model.predict`` exactly (the same contract as
    :meth:`export_coreml`):

    1. Cut each session into consecutive windows of ``prediction_window``
       samples.
    2. Feed zero states for the **first window of a session and every 20th
       window after it** (windows 0, 20, 40, ...): ``predict`` runs the LSTM on
       chunks of 20 windows, each starting from a zero state. For every other
       window, feed the previous window's ``hiddenOut``/``cellOut`` as
       ``hiddenIn``/``cellIn``. (Never resetting after the first window gives
       a valid, slightly different classifier: the one it was not trained to
       be.)
    3. If the last window of a session has fewer than ``prediction_window``
       samples, fill the missing rows with the **feature means**
       (``model.feature_mean``, also in the metadata as ``feature_mean``):
       ``predict`` pads standardised values with zeros, which is the mean in
       raw units. Padding raw zeros gives different probabilities.

    Parameters
    ----------
    model : ActivityClassifier
        A trained (or loaded) activity classifier.
    path : str or os.PathLike
        Destination file, by convention ending in ``.onnx``. Its directory
        must exist; an existing file is replaced atomically.

    Returns
    -------
    None

    Raises
    ------
    toolkit.errors.InvalidParameterError
        ``path`` is not a str / path-like, or is empty.
    toolkit.errors.ExportError
        The directory of ``path`` does not exist, ``path`` is a directory, the
        file cannot be written, the ``onnx`` package is not installed, or the
        target column's name collides with the exported input/output names.

    Notes
    -----
    ``metadata_props`` holds ``toolkit_version``, ``task``
    (``activity_classifier``), ``file_version``, ``classes`` (JSON list, the
    order of the probability columns), ``features`` (JSON list),
    ``prediction_window``, ``session_id``, ``target``, ``feature_mean`` (JSON
    list, for padding), ``state_size`` (``200``) and ``state_reset_windows``
    (``20``). Opset 17 of the default domain, IR version 8; the file passes
    ``onnx.checker`` (full check) before it is written. Probabilities match
    ``predict`` to about 1e-7 (float32 rounding); the tests require 1e-4.

    Examples
    --------
    >>> model.export_onnx('activity.onnx')                       # doctest: +SKIP

    A service (here in Python with onnxruntime) that classifies a session
    ``rows`` (a float array of shape (n, num_features), raw values):

    >>> import numpy as np, onnxruntime as ort                    # doctest: +SKIP
    >>> sess = ort.InferenceSession('activity.onnx')              # doctest: +SKIP
    >>> pw, mean = model.prediction_window, np.array(model.feature_mean)  # doctest: +SKIP
    >>> for w, start in enumerate(range(0, len(rows), pw)):       # doctest: +SKIP
    ...     window = rows[start:start + pw]
    ...     if len(window) < pw:                                  # partial last window
    ...         window = np.vstack([window, np.tile(mean, (pw - len(window), 1))])
    ...     if w % 20 == 0:                                       # reset as predict() does
    ...         h = c = np.zeros((1, 200), np.float32)
    ...     probs, label, h, c = sess.run(
    ...         ['exerciseProbability', 'exercise', 'hiddenOut', 'cellOut'],
    ...         {'features': window[None].astype(np.float32), 'hiddenIn': h, 'cellIn': c})
    ...     print(label[0], probs[0])
    """
    full_path = _onnx.check_export_path(path)
    _onnx.onnx_module()

    s = model._state
    features = list(s["features"])
    target = str(s["target"])
    pw = int(s["prediction_window"])
    n_features = len(features)
    classes = list(s["classes"])
    n_classes = len(classes)
    hidden = _net.LSTM_HIDDEN
    prob_name = target + "Probability"
    index_name = target + "Index"

    reserved = {FEATURES_INPUT, *STATE_INPUTS, *STATE_OUTPUTS}
    clash = sorted(reserved & {target, prob_name, index_name})
    if clash:
        raise ExportError(
            f"Cannot export: the target column '{target}' would name the ONNX output(s) "
            f"{', '.join(repr(c) for c in clash)}, which the export uses for "
            f"{'/'.join(sorted(reserved))}. Retrain with a differently named target column.")

    mean, std = standardisation(model)
    labels, label_dtype = _labels(classes)

    g = _onnx.GraphBuilder("activity_classifier")
    reset = (f"feed zeros at a session's first window and every {WINDOWS_PER_CHUNK} windows, "
             "otherwise the previous window's ")
    x = g.input(FEATURES_INPUT, np.float32, [BATCH, pw, n_features],
                f"One window per row: {pw} consecutive raw sensor samples x "
                f"[{', '.join(features)}] (pad a short last window with the feature means)")
    h0 = g.input(STATE_INPUTS[0], np.float32, [BATCH, hidden],
                 "LSTM hidden state input: " + reset + STATE_OUTPUTS[0])
    c0 = g.input(STATE_INPUTS[1], np.float32, [BATCH, hidden],
                 "LSTM cell state input: " + reset + STATE_OUTPUTS[1])

    y = _write_layers(g, get_weights(model._core), x, h0, c0, mean, std, pw)
    probs = g.node("Softmax", [y], [prob_name], axis=1)
    index = g.node("ArgMax", [probs], [index_name], axis=1, keepdims=0)
    g.node("Gather", [g.initializer("/labels", labels, label_dtype), index], [target], axis=0)

    g.output(prob_name, np.float32, [BATCH, n_classes],
             f"Probability of each {target} class for this window, columns in the order of "
             "the 'classes' metadata")
    g.output(target, label_dtype, [BATCH], f"Most likely {target} class for this window")
    g.output(index_name, np.int64, [BATCH],
             f"Position of the most likely {target} class in the 'classes' metadata")
    g.output(STATE_OUTPUTS[0], np.float32, [BATCH, hidden],
             "LSTM hidden state output, to feed as hiddenIn for the next window")
    g.output(STATE_OUTPUTS[1], np.float32, [BATCH, hidden],
             "LSTM cell state output, to feed as cellIn for the next window")

    onnx_model = _onnx.make_model(g, model._TASK, model._FILE_VERSION, {
        "classes": labels,
        "features": features,
        "prediction_window": pw,
        "session_id": str(s["session_id"]),
        "target": target,
        "feature_mean": [float(m) for m in mean],
        "state_size": hidden,
        "state_reset_windows": WINDOWS_PER_CHUNK,
    }, task_title=TASK_TITLE, doc=(
        "One prediction window per row of raw values; reset the LSTM state to zeros at a "
        f"session's first window and every {WINDOWS_PER_CHUNK} windows; pad a short last "
        "window with feature_mean. See help(model.export_onnx)."))
    _onnx.save_model(onnx_model, full_path)
