"""ONNX helpers shared by every task's ``export_onnx``.

Why the ``onnx`` helper API and not mxnet's own exporter
--------------------------------------------------------
Each task writes its prediction graph node by node with ``onnx.helper`` and
standard operators, from the weights ``toolkit._mx.get_weights`` returns.
mxnet 1.9's ``mx.onnx.export_model`` was tried on the activity classifier and
does not serve: it raises ``NotImplementedError`` on the 1-D convolution
(layout ``NCW``), it has no parameter to choose the opset (it writes the
installed onnx's newest one), and it exports the *training-time* graph (a
20-window chunk on standardised values), not the one-window, raw-input graph
that apps run. A hand-written graph of ~20 standard nodes is short, fully
under our control and easy to review against the network's code.

Versions
--------
:data:`OPSET` is **17** (default domain ``ai.onnx``) and :data:`IR_VERSION`
is **8**, the IR version that goes with opset 17. Every operator the
exporters use (Conv, LSTM, Gemm, BatchNormalization, Softmax with the
opset >= 13 single-axis semantics, Squeeze/Unsqueeze with axes as inputs,
Clip with min/max inputs, Split with sizes as input, NonMaxSuppression,
GatherND, Compress, LeakyRelu, GreaterOrEqual) has had its current
definition since opset 16 at the latest, so opset 17 loses nothing (and
ReduceMax keeps ``axes`` as an attribute, which opset 18 moved to an
input), and it runs on onnxruntime >= 1.12 (including the Android and
web builds) and other runtimes that lag behind the newest opset. The files
are written with the ``onnx`` package 1.16 or 1.17 (``pip install
'onnx>=1.16,<1.18'``, the range that also works beside coremltools 9 and the
protobuf it needs) and checked with ``onnx.checker`` (full check, strict
shape inference) before they are saved.

What the helpers do
-------------------
* :func:`onnx_module` imports onnx lazily (``import toolkit`` never does) or
  raises an :class:`~toolkit.errors.ExportError` that says how to install it;
* :func:`check_export_path` validates the destination before any work;
* :class:`GraphBuilder` collects inputs (optionally with a default value,
  which makes them optional), outputs, initializers and nodes and refuses a
  name used twice (e.g. a target column that would name an output after an
  internal tensor);
* :func:`model_metadata` / :func:`make_model` wrap the graph into a model with
  the opset, producer and ``metadata_props`` (``toolkit_version``, ``task``,
  ``file_version`` plus task extras; lists and dicts as JSON);
* :func:`check_model` runs ``onnx.checker`` and :func:`save_model` writes the
  file atomically with the usual permissions.

Example (inside a task's exporter)::

    path = _onnx.check_export_path(path)
    onnx = _onnx.onnx_module()
    g = _onnx.GraphBuilder('activity_classifier')
    x = g.input('features', np.float32, ['batch', 25, 6], 'raw values')
    w = g.initializer('conv/W', weights)
    g.node('Conv', [x, w], ['conv/out'], kernel_shape=[25])
    ...
    model = _onnx.make_model(g, 'activity_classifier', 1, {'classes': [...]})
    _onnx.save_model(model, path)
"""

import json

import numpy as np

from ._coreml import check_export_path as _check_path
from ._coreml import write_protobuf
from .errors import ExportError

#: Operator set of the default ONNX domain used by every export.
OPSET = 17
#: ONNX IR version that goes with :data:`OPSET` (readable by onnxruntime >= 1.12).
IR_VERSION = 8
#: ``producer_name`` of every exported model.
PRODUCER = "toolkit"

_onnx = None


def onnx_module():
    """Import and return ``onnx`` (once).

    Raises
    ------
    toolkit.errors.ExportError
        If onnx is not installed or cannot be imported.
    """
    global _onnx
    if _onnx is None:
        try:
            import onnx
            import onnx.checker  # noqa: F401
            import onnx.helper  # noqa: F401
            import onnx.numpy_helper  # noqa: F401
        except ImportError as e:
            raise ExportError(
                "ONNX export needs the 'onnx' package, which cannot be imported "
                f"({e}). Install it with `pip install 'onnx>=1.16,<1.18'`.") from e
        _onnx = onnx
    return _onnx


def toolkit_version():
    from . import __version__
    return __version__


def check_export_path(path):
    """Validate an export destination (by convention ``*.onnx``); return it absolute.

    Raises
    ------
    toolkit.errors.InvalidParameterError
        ``path`` is not a str / ``os.PathLike``, or is empty.
    toolkit.errors.ExportError
        The directory of ``path`` does not exist, or ``path`` is a directory.
    """
    return _check_path(path, suffix=".onnx")


def labels_of(classes):
    """(values, dtype) of a label tensor: int64 when every class is an int, else str."""
    if all(isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_))
           for c in classes):
        return [int(c) for c in classes], np.int64
    return [str(c) for c in classes], str


def _elem_type(dtype):
    onnx = onnx_module()
    if dtype is str:
        return onnx.TensorProto.STRING
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class GraphBuilder:
    """Collects the pieces of one ONNX graph; every tensor name is used once.

    Methods return the tensor name they create so that calls chain naturally.
    A name that is already taken raises ``ExportError`` (the message says what
    took it): tensor names are the inputs and outputs users see, so a target
    column called like an internal tensor must fail loudly, not wire the graph
    wrongly.
    """

    def __init__(self, name):
        self.name = str(name)
        self.inputs, self.outputs, self.initializers, self.nodes = [], [], [], []
        self._owner = {}

    def _claim(self, name, what):
        name = str(name)
        if not name:
            raise ExportError(f"Cannot name the ONNX {what} with an empty string.")
        if name in self._owner:
            raise ExportError(
                f"Cannot export: the name {name!r} is used twice in the ONNX graph "
                f"(by {self._owner[name]} and by {what}).")
        self._owner[name] = what
        return name

    def input(self, name, dtype, shape, doc="", default=None):
        """Declare a graph input; ``shape`` items are ints or symbolic str names.

        With ``default`` (an array of ``shape``) the input is optional: an
        initializer of the same name holds the value used when the caller
        does not feed it (onnxruntime's "overridable initializers"; IR >= 4).
        """
        onnx = onnx_module()
        self._claim(name, f"input {name!r}")
        self.inputs.append(onnx.helper.make_tensor_value_info(name, _elem_type(dtype), shape,
                                                              doc_string=doc))
        if default is not None:
            array = np.array(default, dtype=dtype, order="C")
            self.initializers.append(onnx.numpy_helper.from_array(array, name))
        return name

    def output(self, name, dtype, shape, doc=""):
        """Declare a graph output; a node must produce the tensor ``name``."""
        helper = onnx_module().helper
        if name not in self._owner:
            raise ExportError(f"ONNX output {name!r} is produced by no node (toolkit bug).")
        self.outputs.append(helper.make_tensor_value_info(name, _elem_type(dtype), shape,
                                                          doc_string=doc))
        return name

    def initializer(self, name, value, dtype=np.float32):
        """Store a constant tensor (a numpy array, or a list of str labels)."""
        onnx = onnx_module()
        self._claim(name, f"initializer {name!r}")
        if dtype is str:
            values = [str(v).encode("utf-8") for v in value]
            tensor = onnx.helper.make_tensor(name, onnx.TensorProto.STRING, [len(values)],
                                             values)
        else:
            # np.array, not np.ascontiguousarray: that one turns a scalar into shape (1,).
            array = np.array(value, dtype=dtype, order="C")
            tensor = onnx.numpy_helper.from_array(array, name)
        self.initializers.append(tensor)
        return name

    def node(self, op_type, inputs, outputs, name=None, doc="", **attrs):
        """Add a node of the default domain; returns its single output's name
        (or the list of output names when it has several)."""
        helper = onnx_module().helper
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        name = name or outputs[0]
        for out in outputs:
            if out:  # "" marks an optional output left out
                self._claim(out, f"the output of node {name!r} ({op_type})")
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=name,
                                           doc_string=doc or None, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def graph(self, doc=""):
        helper = onnx_module().helper
        return helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                 initializer=self.initializers, doc_string=doc)


def _meta_value(value):
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    return str(value)


def model_metadata(task, file_version, extra=None):
    """The ``metadata_props`` dict (all values str) of an exported model.

    ``toolkit_version``, ``task`` and ``file_version`` come first; ``extra``
    holds task entries: lists, tuples and dicts are written as JSON (so
    labels that contain commas survive), numbers and str through ``str``.
    Extras may not override the three common keys.
    """
    meta = {"toolkit_version": toolkit_version(), "task": str(task),
            "file_version": str(int(file_version))}
    for key, value in (extra or {}).items():
        if key in meta:
            raise ValueError(f"Metadata key {key!r} is reserved.")
        meta[str(key)] = _meta_value(value)
    return meta


def make_model(builder, task, file_version, extra=None, task_title=None, doc=""):
    """Wrap a :class:`GraphBuilder` into an opset-:data:`OPSET` ``ModelProto``.

    ``doc_string`` is "<Task title> created by toolkit (version X)" followed by
    ``doc``; ``model_version`` is the task's file version.
    """
    onnx = onnx_module()
    helper = onnx.helper
    title = task_title or str(task).replace("_", " ").capitalize()
    summary = f"{title} created by toolkit (version {toolkit_version()})"
    graph = builder.graph(doc=summary)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name=PRODUCER,
                              producer_version=toolkit_version(),
                              model_version=int(file_version),
                              doc_string=summary + ("\n\n" + doc if doc else ""))
    helper.set_model_props(model, model_metadata(task, file_version, extra))
    return model


def check_model(model):
    """Run ``onnx.checker.check_model`` with strict shape inference.

    Raises
    ------
    toolkit.errors.ExportError
        The model is not valid ONNX (a toolkit bug, reported as such).
    """
    onnx = onnx_module()
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - ValidationError, InferenceError, ...
        raise ExportError(f"The exported ONNX model does not pass onnx.checker: {e}") from e


def save_model(model, path):
    """Check ``model`` and write it to ``path`` atomically; returns the full path.

    The bytes go to a temporary file in the destination directory that is then
    renamed over ``path``, so an existing file is never left half written. The
    file gets the usual permissions (``0o666`` less the umask).

    Raises
    ------
    toolkit.errors.ExportError
        The model fails the checker, cannot be serialised (over 2 GB) or the
        file cannot be written.
    """
    full = check_export_path(path)
    check_model(model)
    return write_protobuf(model, full, path, "ONNX")
