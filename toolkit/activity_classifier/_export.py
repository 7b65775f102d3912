"""Core ML export of the activity classifier.

The exported network is the prediction graph of :mod:`._net`, one window per
call, with the per-feature standardisation moved *inside* the model so that
apps feed raw sensor values:

==============  ==============================================================
layer           Core ML blob shape (C, H, W), sequence axis = 1
==============  ==============================================================
``features``    (1, prediction_window, F): raw values, rows in time order
permute         (F, 1, prediction_window)
standardize     scale/bias per feature: (x - mean) / std, same shape
conv            64 filters, kernel = stride = (1, prediction_window) -> (64, 1, 1)
relu0           (64, 1, 1)
lstm            200 units, state in ``hiddenIn``/``cellIn``, out ``hiddenOut``/``cellOut``
dense0          128
bn              batch norm with the running statistics, epsilon 1e-3
relu1           128
dense1          num_classes
softmax         ``<target>Probability`` (then ``<target>``, the most likely class)
==============  ==============================================================

Dropout layers are the identity at prediction time and are left out. Only
layers that Core ML has supported since its first version are used (no
float16 weights, no slice, no clip), which also keeps the model checkable on
Linux through an ONNX conversion (see ``tests/coreml_check.py``).
"""

import numpy as np

from .. import _coreml
from .._mx import get_weights
from ..errors import ExportError
from . import _net
from ._data import WINDOWS_PER_CHUNK

TASK_TITLE = "Activity classifier"
#: Names of the state inputs and outputs of the exported model.
STATE_INPUTS = ("hiddenIn", "cellIn")
STATE_OUTPUTS = ("hiddenOut", "cellOut")
FEATURES_INPUT = "features"


def _lstm_gates(packed):
    """Split an mxnet LSTM parameter (gates packed i, f, c, o along axis 0)
    into Core ML's order [i, f, o, c]."""
    i, f, c, o = np.split(np.asarray(packed, np.float32), 4, axis=0)
    return [i, f, o, c]


def standardisation(model):
    """The model's ``(feature_mean, feature_std)`` as float64 arrays, checked: the
    exports build the standardisation into the network."""
    s = model._state
    mean = np.asarray(s["feature_mean"], np.float64)
    std = np.asarray(s["feature_std"], np.float64)
    n_features = len(s["features"])
    if mean.shape != (n_features,) or std.shape != (n_features,) or not np.all(std > 0):
        raise ExportError("The model's feature_mean/feature_std do not match its features; "
                          "the model is damaged.")
    return mean, std


def _write_layers(builder, w, mean, std, pw, n_classes):
    """Standardisation, convolution, LSTM and the dense layers, from the input window
    ``features`` to the logits ``dense1``."""
    n_features, hidden = len(mean), _net.LSTM_HIDDEN
    # (1, pw, F) as (C, H, W) -> (F, 1, pw): features become channels.
    builder.add_permute("permute", (0, 3, 1, 2), FEATURES_INPUT, "permuted")
    # predict() computes (x - mean) / std in float32 on raw values.
    builder.add_scale("standardize", W=(1.0 / std).astype(np.float32),
                      b=(-mean / std).astype(np.float32), has_bias=True,
                      input_name="permuted", output_name="standardized",
                      shape_scale=[n_features], shape_bias=[n_features])
    conv_w = w[_net.CONV_WEIGHT].reshape(_net.CONV_FILTERS, n_features, 1, pw)
    builder.add_convolution(
        "conv", kernel_channels=n_features, output_channels=_net.CONV_FILTERS,
        height=1, width=pw, stride_height=1, stride_width=pw, border_mode="valid",
        groups=1, W=np.ascontiguousarray(conv_w.transpose(2, 3, 1, 0)),
        b=w[_net.CONV_BIAS], has_bias=True, input_name="standardized", output_name="conv")
    builder.add_activation("relu0", "RELU", "conv", "relu0")
    # One Core ML bias per gate: mxnet adds its i2h and h2h biases.
    builder.add_unilstm(
        "lstm", W_h=_lstm_gates(w[_net.LSTM_H2H_WEIGHT]),
        W_x=_lstm_gates(w[_net.LSTM_I2H_WEIGHT]),
        b=_lstm_gates(w[_net.LSTM_I2H_BIAS] + w[_net.LSTM_H2H_BIAS]),
        hidden_size=hidden, input_size=_net.CONV_FILTERS,
        input_names=["relu0", STATE_INPUTS[0], STATE_INPUTS[1]],
        output_names=["lstm", STATE_OUTPUTS[0], STATE_OUTPUTS[1]],
        inner_activation="SIGMOID", cell_state_update_activation="TANH",
        output_activation="TANH", output_all=False)
    builder.add_inner_product("dense0", W=w[_net.DENSE0_WEIGHT], b=w[_net.DENSE0_BIAS],
                              input_channels=hidden, output_channels=_net.DENSE_HIDDEN,
                              has_bias=True, input_name="lstm", output_name="dense0")
    builder.add_batchnorm("bn", channels=_net.DENSE_HIDDEN, gamma=w[_net.BN_GAMMA],
                          beta=w[_net.BN_BETA], mean=w[_net.BN_MEAN],
                          variance=w[_net.BN_VAR], input_name="dense0",
                          output_name="bn", epsilon=_net.BN_EPSILON)
    builder.add_activation("relu1", "RELU", "bn", "relu1")
    builder.add_inner_product("dense1", W=w[_net.DENSE1_WEIGHT], b=w[_net.DENSE1_BIAS],
                              input_channels=_net.DENSE_HIDDEN, output_channels=n_classes,
                              has_bias=True, input_name="relu1", output_name="dense1")


def export_coreml(model, path):
    """Export an activity classifier as a Core ML model (``.mlmodel``).

    The model classifies **one prediction window at a time** and carries the
    LSTM state between windows through extra inputs and outputs:

    * input ``features``: MultiArray (Double) of shape
      ``(1, prediction_window, num_features)`` holding the **raw** sensor
      values of one window, row ``t`` = the ``t``-th sample, columns in the
      order of ``model.features``. The standardisation learned in training is
      part of the model: do not standardise in the app.
    * optional inputs ``hiddenIn``, ``cellIn``: MultiArray (200,), the LSTM
      state. When omitted Core ML uses zeros.
    * outputs ``<target>Probability`` (dict class -> probability, classes in
      ``model.classes`` order), ``<target>`` (the most likely class; int64
      labels when the classes are ints, str otherwise), and ``hiddenOut``,
      ``cellOut`` (the state after this window).

    How an app reproduces ``model.predict`` exactly:

    1. Cut each session into consecutive windows of ``prediction_window``
       samples.
    2. Feed zeros (or omit ``hiddenIn``/``cellIn``) for the **first window of
       a session and every 20th window after it** (windows 0, 20, 40, ...):
       ``predict`` runs the LSTM on chunks of 20 windows, each starting from a
       zero state. For every other window, pass the previous window's
       ``hiddenOut``/``cellOut`` as ``hiddenIn``/``cellIn``. (An app that never
       resets after the first window gets a valid, slightly different
       classifier: the one it was not trained to be.)
    3. If the last window of a session has fewer than ``prediction_window``
       samples, fill the missing rows with the **feature means**
       (``model.feature_mean``, also stored in the Core ML metadata as
       ``feature_mean``): ``predict`` pads standardised values with zeros,
       which is the mean in raw units. Padding raw zeros gives different
       probabilities.

    Parameters
    ----------
    model : ActivityClassifier
        A trained (or loaded) activity classifier.
    path : str or os.PathLike
        Destination file, by convention ending in ``.mlmodel``. Its directory
        must exist; an existing file is replaced atomically.

    Returns
    -------
    None

    Raises
    ------
    toolkit.errors.InvalidParameterError
        ``path`` is not a str / path-like.
    toolkit.errors.ExportError
        The directory of ``path`` does not exist, ``path`` is a directory, the
        file cannot be written, coremltools is not installed, or the model's
        column names collide with the exported feature names.

    Notes
    -----
    ``user_defined_metadata`` holds, as Turi Create's does, ``toolkit_version``,
    ``task`` (``activity_classifier``), ``file_version``, ``platform`` (of the
    exporting machine) and the create() settings ``features`` (comma-joined),
    ``prediction_window``, ``session_id``, ``target``, ``max_iterations``,
    ``classes`` (comma-joined); plus ``feature_mean`` (comma-joined, for padding)
    and ``state_reset_windows`` (``20``). The class labels are the classifier's
    own labels in the spec.

    Examples
    --------
    >>> model.export_coreml('Activity.mlmodel')                  # doctest: +SKIP

    An app (here in Python with coremltools on macOS) that classifies a
    session ``rows`` (a float array of shape (n, num_features), raw values):

    >>> import coremltools as ct, numpy as np                     # doctest: +SKIP
    >>> ml = ct.models.MLModel('Activity.mlmodel')                # doctest: +SKIP
    >>> pw, mean = model.prediction_window, np.array(model.feature_mean)  # doctest: +SKIP
    >>> state = {}                                                # doctest: +SKIP
    >>> for w, start in enumerate(range(0, len(rows), pw)):       # doctest: +SKIP
    ...     window = rows[start:start + pw]
    ...     if len(window) < pw:                                  # partial last window
    ...         window = np.vstack([window, np.tile(mean, (pw - len(window), 1))])
    ...     if w % 20 == 0:                                       # reset as predict() does
    ...         state = {}
    ...     out = ml.predict({'features': window[None], **state})
    ...     state = {'hiddenIn': out['hiddenOut'], 'cellIn': out['cellOut']}
    ...     print(out['exercise'], out['exerciseProbability'])
    """
    full_path = _coreml.check_export_path(path)
    ct = _coreml.coremltools_module()
    datatypes = ct.models.datatypes
    NeuralNetworkBuilder = ct.models.neural_network.NeuralNetworkBuilder

    s = model._state
    features = list(s["features"])
    target = str(s["target"])
    pw = int(s["prediction_window"])
    n_features = len(features)
    labels = _coreml.class_labels(s["classes"])
    n_classes = len(labels)
    hidden = _net.LSTM_HIDDEN
    prob_name = target + "Probability"

    reserved = {FEATURES_INPUT, *STATE_INPUTS, *STATE_OUTPUTS}
    clash = sorted(reserved & {target, prob_name})
    if clash:
        raise ExportError(
            f"Cannot export: the target column '{target}' would name the Core ML output(s) "
            f"{', '.join(repr(c) for c in clash)}, which the export uses for "
            f"{'/'.join(sorted(reserved))}. Retrain with a differently named target column.")

    mean, std = standardisation(model)
    inputs = [(FEATURES_INPUT, datatypes.Array(1, pw, n_features)),
              (STATE_INPUTS[0], datatypes.Array(hidden)),
              (STATE_INPUTS[1], datatypes.Array(hidden))]
    outputs = [(prob_name, datatypes.Array(n_classes)),
               (STATE_OUTPUTS[0], datatypes.Array(hidden)),
               (STATE_OUTPUTS[1], datatypes.Array(hidden))]
    try:
        builder = NeuralNetworkBuilder(inputs, outputs, mode="classifier")
        _write_layers(builder, get_weights(model._core), mean, std, pw, n_classes)
        # dense1 is (C, 1, 1): softmax over C exactly.
        builder.add_softmax("softmax", "dense1", prob_name)
        builder.set_class_labels(labels, predicted_feature_name=target,
                                 prediction_blob=prob_name)
    except (ValueError, TypeError) as e:
        raise ExportError(f"Cannot build the Core ML network: {e}") from e

    spec = builder.spec
    for feature in spec.description.input:
        if feature.name in STATE_INPUTS:
            feature.type.isOptional = True
    # The create() settings (features, prediction_window, session_id, target,
    # max_iterations, classes) come from the model's state.
    _coreml.set_model_metadata(spec, model, {
        "feature_mean": [repr(float(m)) for m in mean],
        "state_reset_windows": WINDOWS_PER_CHUNK,
    }, task_title=TASK_TITLE)
    _coreml.describe_features(spec, {
        FEATURES_INPUT: (f"Window of {pw} consecutive raw sensor samples x "
                         f"[{', '.join(features)}] (pad a short last window with the "
                         "feature means)"),
        STATE_INPUTS[0]: ("LSTM hidden state input: the previous window's hiddenOut, or zeros "
                          f"(omitted) at a session's first window and every "
                          f"{WINDOWS_PER_CHUNK} windows"),
        STATE_INPUTS[1]: ("LSTM cell state input: the previous window's cellOut, or zeros "
                          f"(omitted) at a session's first window and every "
                          f"{WINDOWS_PER_CHUNK} windows"),
        STATE_OUTPUTS[0]: "LSTM hidden state output, to feed as hiddenIn for the next window",
        STATE_OUTPUTS[1]: "LSTM cell state output, to feed as cellIn for the next window",
        prob_name: f"Probability of each {target} class for this window",
        target: f"Most likely {target} class for this window",
    })
    _coreml.save_spec(spec, full_path)
