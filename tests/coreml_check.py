"""Run exported Core ML models on Linux, for tests: Core ML -> ONNX -> onnxruntime.

coremltools cannot predict outside macOS. This helper converts a Core ML
neural network (spec version <= 3, rank-5 mapping, as the toolkit exports)
to ONNX with ``onnxmltools`` 1.11.2 (``onnxconverter-common`` 1.13.0,
``onnx`` 1.16/1.17) and runs it with ``onnxruntime``. Newer onnxmltools
releases have a broken Core ML converter; pin these versions (CI installs
them with ``pip install --no-deps``).

Usage
-----
>>> from coreml_check import run_coreml, CoreMLRunner
>>> out = run_coreml('Activity.mlmodel', {'features': window})   # doctest: +SKIP
>>> out['exerciseProbability']        # (num_classes,), in class-label order
>>> runner = CoreMLRunner(spec)       # convert once, run many times
>>> runner.class_labels               # order of the probability vectors
>>> out = runner.run({'features': w, 'hiddenIn': h, 'cellIn': c})

Feeds use **Core ML shapes** (``features`` (1, pw, F), ``hiddenIn`` (200,)):
the helper adds the leading axis that the conversion gives every input (for
recurrent layers that axis is the sequence) and reshapes state vectors.
Optional inputs that are left out are zeros, as in Core ML. Outputs come back
as numpy arrays in Core ML shapes: a classifier's probability dictionary
becomes a float vector in :attr:`CoreMLRunner.class_labels` order, the
predicted label a 0-d array. With ``sequence=True`` inputs already carry the
leading axis (N steps) and outputs keep it.

Known defects of the converter and what this helper does about them
-------------------------------------------------------------------
* float16 weights are silently ignored -> they are widened to float32 in a
  copy of the spec before conversion (exact).
* softmax on a (C, H, W) blob normalises over C*H*W -> every ONNX Softmax
  whose input is 4-D is rewritten as transpose / softmax over C / transpose.
* the ``clip`` layer (spec v4) has no shape calculator or converter -> both
  are supplied (ONNX ``Clip``).
* the converted graph may carry an IR version that ``onnx.checker`` refuses
  -> raised to 7.
* slice layers convert to wrong shapes/values, stride > 1 is refused ->
  refused here with a clear error (use other layers, or test separately).
* dilated convolutions with SAME padding are rejected by onnxruntime, and
  NonMaximumSuppression / pipelines cannot be converted -> refused here with
  a clear error; check a pipeline's network model (``spec.pipeline.models``)
  and the NMS step separately.
* the converter prints "The maximum opset needed ..." -> silenced.

A helper that hides defects must itself be checked: keep a negative control
(e.g. a spec with two LSTM gates swapped must *not* match the reference).
"""

import contextlib
import copy
import hashlib
import io
import logging

import numpy as np

__all__ = ["CoreMLRunner", "run_coreml", "load_spec", "to_onnx", "UnsupportedForCheck"]


class UnsupportedForCheck(Exception):
    """The Core ML model uses something this check cannot run faithfully."""


@contextlib.contextmanager
def _quiet():
    loggers = [logging.getLogger(n) for n in ("coremltools", "onnxmltools")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def load_spec(model):
    """A Core ML spec (protobuf ``Model``) from a spec, an ``MLModel``, a path or bytes."""
    with _quiet():
        import coremltools as ct
        from coremltools.proto import Model_pb2
    if isinstance(model, Model_pb2.Model):
        return model
    if isinstance(model, (bytes, bytearray)):
        spec = Model_pb2.Model()
        spec.ParseFromString(bytes(model))
        return spec
    if hasattr(model, "get_spec"):
        return model.get_spec()
    return ct.utils.load_spec(str(model))


# --- spec fixes (on a copy) --------------------------------------------------

def _network(spec):
    kind = spec.WhichOneof("Type")
    if kind in ("pipeline", "pipelineClassifier", "pipelineRegressor"):
        raise UnsupportedForCheck(
            "Pipelines cannot be converted (NonMaximumSuppression has no converter): check the "
            "network model (spec.pipeline.models[i]) and the post-processing separately.")
    if kind not in ("neuralNetwork", "neuralNetworkClassifier", "neuralNetworkRegressor"):
        raise UnsupportedForCheck(f"Only neural network specs are supported, got {kind!r}.")
    return getattr(spec, kind)


def _widen_float16(message):
    """Convert every WeightParams.float16Value under ``message`` to floatValue."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        repeated = getattr(field, "is_repeated", None)
        if repeated is None:  # protobuf < 5
            repeated = field.label == field.LABEL_REPEATED
        items = value if repeated else [value]
        if field.message_type.name == "WeightParams":
            for w in items:
                if w.float16Value:
                    arr = np.frombuffer(w.float16Value, dtype=np.float16).astype(np.float32)
                    w.ClearField("float16Value")
                    w.floatValue.extend(arr.tolist())
        elif field.message_type.GetOptions().map_entry:
            continue
        else:
            for item in items:
                _widen_float16(item)


def _check_layers(nn):
    for layer in nn.layers:
        kind = layer.WhichOneof("layer")
        if kind.startswith("slice"):
            raise UnsupportedForCheck(
                f"Layer '{layer.name}' is a {kind} layer; onnxmltools 1.11.2 converts slice layers "
                "to wrong shapes (and refuses stride > 1). Use other layers (e.g. a convolution "
                "or split) or test this layer separately.")
        if kind == "convolution":
            conv = layer.convolution
            dil = list(conv.dilationFactor)
            if conv.WhichOneof("ConvolutionPaddingType") == "same" and any(d > 1 for d in dil):
                raise UnsupportedForCheck(
                    f"Layer '{layer.name}': dilated SAME convolutions are rejected by "
                    "onnxruntime after conversion; use explicit padding and 'valid'.")


# --- custom converter pieces ---------------------------------------------------

def _clip_shape(operator):
    operator.outputs[0].type.shape = list(operator.inputs[0].type.shape)


def _clip_convert(scope, operator, container):
    from onnx import TensorProto
    params = operator.raw_operator.clip
    lo = scope.get_unique_variable_name(operator.full_name + "_min")
    hi = scope.get_unique_variable_name(operator.full_name + "_max")
    container.add_initializer(lo, TensorProto.FLOAT, [], [float(params.minVal)])
    container.add_initializer(hi, TensorProto.FLOAT, [], [float(params.maxVal)])
    container.add_node("Clip", [operator.inputs[0].full_name, lo, hi],
                       [operator.outputs[0].full_name], op_version=11,
                       name=scope.get_unique_operator_name("Clip"))


def _fix_softmax(onx):
    """Make 4-D Softmax normalise over the channel axis (Core ML's semantics)."""
    import onnx
    from onnx import helper
    inferred = onnx.shape_inference.infer_shapes(onx)
    ranks = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + \
            list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            ranks[vi.name] = len(t.shape.dim)
    nodes = []
    for node in onx.graph.node:
        rank = ranks.get(node.input[0]) if node.op_type == "Softmax" else None
        if node.op_type == "Softmax" and rank is None:
            raise UnsupportedForCheck(f"Cannot tell the rank of softmax input '{node.input[0]}'.")
        if rank == 4:
            a, b = node.input[0] + "_nhwc", node.output[0] + "_nhwc"
            nodes += [helper.make_node("Transpose", [node.input[0]], [a], perm=[0, 2, 3, 1]),
                      helper.make_node("Softmax", [a], [b], axis=3),
                      helper.make_node("Transpose", [b], [node.output[0]], perm=[0, 3, 1, 2])]
        else:
            nodes.append(node)
    del onx.graph.node[:]
    onx.graph.node.extend(nodes)
    return onx


def to_onnx(model):
    """Convert a Core ML model (spec, MLModel, path or bytes) to an ONNX ModelProto.

    The defects listed in the module docstring are worked around or refused.
    """
    spec = copy.deepcopy(load_spec(model))
    nn = _network(spec)
    _check_layers(nn)
    _widen_float16(nn)
    with _quiet():
        import onnx
        import onnxmltools
        onx = onnxmltools.convert_coreml(
            spec, custom_conversion_functions={"clip": _clip_convert},
            custom_shape_calculators={"clip": _clip_shape})
    if onx.ir_version < 7:
        onx.ir_version = 7
    onx = _fix_softmax(onx)
    onnx.checker.check_model(onx)
    return onx


class CoreMLRunner:
    """A Core ML model converted once to ONNX, run any number of times.

    Parameters
    ----------
    model : Core ML spec, ``coremltools.models.MLModel``, path or bytes

    Attributes
    ----------
    spec : the Core ML spec
    onnx_model : the converted ``onnx.ModelProto``
    class_labels : list or None
        Order of the probability vectors of a classifier.
    input_names, output_names : lists of Core ML names
    """

    def __init__(self, model):
        import onnxruntime as ort
        self.spec = load_spec(model)
        self.onnx_model = to_onnx(self.spec)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(self.onnx_model.SerializeToString(), opts,
                                            providers=["CPUExecutionProvider"])
        # Optional Core ML inputs become initializers that a feed may override.
        self._onnx_inputs = {i.name: i for i in list(self.session.get_inputs())
                             + list(self.session.get_overridable_initializers())}
        desc = self.spec.description
        self.input_names = [f.name for f in desc.input]
        self.output_names = [f.name for f in desc.output]
        self.optional_inputs = {f.name for f in desc.input if f.type.isOptional}
        self._coreml_shapes = {f.name: tuple(f.type.multiArrayType.shape)
                               for f in list(desc.input) + list(desc.output)
                               if f.type.WhichOneof("Type") == "multiArrayType"}
        self.probability_name = desc.predictedProbabilitiesName or None
        self.label_name = desc.predictedFeatureName or None
        nn = _network(self.spec)
        which = nn.WhichOneof("ClassLabels") if "ClassLabels" in nn.DESCRIPTOR.oneofs_by_name \
            else None
        if which == "stringClassLabels":
            self.class_labels = list(nn.stringClassLabels.vector)
        elif which == "int64ClassLabels":
            self.class_labels = [int(v) for v in nn.int64ClassLabels.vector]
        else:
            self.class_labels = None

    def _feed(self, name, value, sequence):
        info = self._onnx_inputs.get(name)
        if info is None:
            raise KeyError(f"The model has no input {name!r} (inputs: {self.input_names}).")
        dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64,
                 "tensor(int64)": np.int64}.get(info.type, np.float32)
        arr = np.asarray(value, dtype=dtype)
        shape = info.shape
        if all(isinstance(d, int) for d in shape):
            if arr.size != int(np.prod(shape)):
                raise ValueError(f"Input {name!r}: {arr.size} values given, ONNX expects "
                                 f"shape {shape}.")
            return arr.reshape(shape)
        if not sequence:
            arr = arr.reshape((1,) + tuple(d if isinstance(d, int) else -1 for d in shape[1:]))
        return arr

    def run(self, feeds, sequence=False):
        """Predict; see the module docstring for shapes. Returns {name: ndarray}."""
        missing = [n for n in self.input_names
                   if n not in feeds and n not in self.optional_inputs]
        if missing:
            raise KeyError(f"Missing required input(s) {missing}.")
        onnx_feeds = {name: self._feed(name, value, sequence) for name, value in feeds.items()
                      if value is not None}
        names = [o.name for o in self.session.get_outputs()]
        values = self.session.run(names, onnx_feeds)
        out = {}
        for name, value in zip(names, values):
            if name == self.probability_name:
                rows = [[row[c] for c in self.class_labels] for row in value] \
                    if isinstance(value, list) else np.asarray(value)
                value = np.asarray(rows, dtype=np.float32)
            else:
                value = np.asarray(value)
            if not sequence and value.ndim and value.shape[0] == 1:
                value = value[0]
                shape = self._coreml_shapes.get(name)
                if shape and value.size == int(np.prod(shape)):
                    value = value.reshape(shape)
                elif name == self.label_name and value.size == 1:
                    value = value.reshape(())
            out[name] = value
        return out

    __call__ = run


_CACHE = {}


def run_coreml(model, feeds, sequence=False):
    """Run one Core ML prediction via ONNX; returns ``{output name: ndarray}``.

    ``model`` is a :class:`CoreMLRunner` or anything :func:`load_spec` takes;
    conversions are cached by the spec's bytes, so calling this in a loop
    converts once. ``feeds`` maps Core ML input names to arrays in Core ML
    shapes (optional inputs may be left out or None).
    """
    if not isinstance(model, CoreMLRunner):
        key = hashlib.sha1(load_spec(model).SerializeToString()).hexdigest()
        if key not in _CACHE:
            if len(_CACHE) >= 8:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = CoreMLRunner(model)
        model = _CACHE[key]
    return model.run(feeds, sequence=sequence)
