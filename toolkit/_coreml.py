"""Core ML helpers shared by every task's ``export_coreml``.

coremltools is imported here, lazily, on the first export only: ``import
toolkit`` never imports it. Each exporter builds its network with
coremltools' ``NeuralNetworkBuilder`` and then uses these helpers for the
parts every export has in common:

* :func:`coremltools_module` imports coremltools (quietly) or raises an
  :class:`~toolkit.errors.ExportError` that says how to install it;
* :func:`check_export_path` validates the destination *before* any work;
* :func:`set_model_metadata` (one call per exporter) writes
  ``user_defined_metadata`` as Turi Create does: ``toolkit_version``, ``task``,
  ``file_version``, ``platform``, the model's create() settings found in its
  state (:data:`SETTING_KEYS`: ``max_iterations``, ``prediction_window``,
  ``features``, ``target``...) plus task extras; the author and the short
  description "<Task> (<backbone>) created by toolkit (version X)".
  :func:`set_metadata` is the same with everything passed explicitly;
* :func:`describe_features` sets the descriptions of inputs and outputs;
* :func:`save_spec` writes the spec atomically, wrapping every failure in an
  ``ExportError``.

Example (inside a task's exporter)::

    ct = _coreml.coremltools_module()
    path = _coreml.check_export_path(path)
    builder = ct.models.neural_network.NeuralNetworkBuilder(...)
    ...
    _coreml.set_model_metadata(builder.spec, model, {'state_reset_windows': 20})
    _coreml.describe_features(builder.spec, {'features': 'Window of raw sensor values'})
    _coreml.save_spec(builder.spec, path)
"""

import logging
import os
import platform

import numpy as np

from .errors import ExportError, InvalidParameterError

_ct = None

#: Core ML metadata ``author`` field of every exported model.
AUTHOR = "toolkit"


def coremltools_module():
    """Import and return ``coremltools`` (once).

    coremltools logs a series of harmless "Failed to load ..." warnings when it
    is imported on a machine that cannot run Core ML (Linux); they are kept
    quiet during the import. Real errors are still raised.

    Raises
    ------
    toolkit.errors.ExportError
        If coremltools is not installed or cannot be imported.
    """
    global _ct
    if _ct is None:
        logger = logging.getLogger("coremltools")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            import coremltools
        except ImportError as e:
            raise ExportError(
                "Core ML export needs the 'coremltools' package, which cannot be imported "
                f"({e}). Install it with `pip install coremltools`.") from e
        finally:
            logger.setLevel(level)
        _ct = coremltools
    return _ct


def class_labels(classes):
    """Class labels as Core ML stores them: all int64, or all str (bool labels as str)."""
    labels = []
    for c in classes:
        if isinstance(c, (bool, np.bool_)):
            labels.append(str(c))
        elif isinstance(c, (int, np.integer)):
            labels.append(int(c))
        else:
            labels.append(str(c))
    if len({type(c) for c in labels}) > 1:
        # Core ML labels are all int64 or all str.
        labels = [str(c) for c in labels]
    return labels


def toolkit_version():
    from . import __version__
    return __version__


#: Keys of ``user_defined_metadata`` that every export has; extras may not use them.
COMMON_KEYS = ("toolkit_version", "task", "file_version", "platform")

#: create() settings Turi Create writes into ``user_defined_metadata`` (over its three
#: tasks), copied from a model's state when present and not None. Lists are
#: comma-joined, as Turi Create does.
SETTING_KEYS = ("model", "target", "feature", "features", "annotations", "session_id",
                "prediction_window", "max_iterations", "training_iterations", "classes",
                "non_maximum_suppression_threshold")


def short_description(task_title, backbone=None, suffix=""):
    """``"<Task title> (<backbone>)<suffix> created by toolkit (version X)"``.

    ``backbone`` (e.g. ``"efficientnet-lite0"``) and ``suffix`` (e.g. ``" with
    non-maximum suppression"``) are optional, as in Turi Create's
    ``"Object detector (darknet-yolo) with non-maximum suppression created by
    Turi Create (version X)"``.
    """
    name = task_title + (f" ({backbone})" if backbone else "") + (suffix or "")
    return f"{name} created by toolkit (version {toolkit_version()})"


def _meta_value(value):
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def model_metadata(task, file_version, extra=None, settings=None):
    """The ``user_defined_metadata`` dict (all values str) of an exported model.

    Parameters
    ----------
    task : str
        The stable task name (``"activity_classifier"``).
    file_version : int
        The task's model file version the exported network corresponds to.
    extra : dict, optional
        Task specific entries. Lists and tuples are comma-joined, other values
        go through ``str``. They may not override the common keys
        (:data:`COMMON_KEYS`); they win over ``settings``.
    settings : dict, optional
        A model's state: its :data:`SETTING_KEYS` entries that are not None
        are written.
    """
    meta = {"toolkit_version": toolkit_version(), "task": str(task),
            "file_version": str(int(file_version)), "platform": platform.platform()}
    for key in SETTING_KEYS:
        value = (settings or {}).get(key)
        if value is not None:
            meta[key] = _meta_value(value)
    for key, value in (extra or {}).items():
        if key in COMMON_KEYS:
            raise ValueError(f"Metadata key {key!r} is reserved.")
        meta[str(key)] = _meta_value(value)
    return meta


def set_metadata(spec, task, file_version, extra=None, task_title=None, settings=None,
                 backbone=None, title_suffix=""):
    """Write metadata and the short description into a Core ML ``spec``.

    ``task_title`` defaults to the task name with spaces, capitalised
    (``"activity_classifier"`` -> ``"Activity classifier"``); ``backbone`` and
    ``title_suffix`` go into the short description (see
    :func:`short_description`); ``extra`` and ``settings`` as in
    :func:`model_metadata`. Returns the metadata dict written.
    """
    meta = model_metadata(task, file_version, extra, settings)
    title = task_title or str(task).replace("_", " ").capitalize()
    desc = spec.description.metadata
    desc.shortDescription = short_description(title, backbone, title_suffix)
    desc.author = AUTHOR
    desc.versionString = toolkit_version()
    desc.userDefined.clear()
    for key, value in meta.items():
        desc.userDefined[key] = value
    return meta


def set_model_metadata(spec, model, extra=None, task_title=None, title_suffix=""):
    """:func:`set_metadata` for ``model`` in one call.

    Takes the task and file version from the model class (``_TASK``,
    ``_FILE_VERSION``), the create() settings from its state
    (:data:`SETTING_KEYS`), and the backbone named in the short description
    from its ``model`` field when it has one. ``extra`` adds task specific
    entries (and overrides settings, e.g. to format them).

    Example::

        _coreml.set_model_metadata(spec, model, {'include_non_maximum_suppression': True},
                                   task_title='Object detector',
                                   title_suffix=' with non-maximum suppression')
    """
    state = model._state
    return set_metadata(spec, model._TASK, model._FILE_VERSION, extra, task_title,
                        settings=state, backbone=state.get("model"),
                        title_suffix=title_suffix)


def describe_features(spec, descriptions):
    """Set ``shortDescription`` of inputs and outputs named in ``descriptions``.

    Raises ``ValueError`` (a toolkit bug) when a name is neither an input nor an
    output of the spec.
    """
    features = {f.name: f for f in list(spec.description.input) + list(spec.description.output)}
    for name, text in descriptions.items():
        if name not in features:
            raise ValueError(f"The Core ML spec has no input or output named {name!r} "
                             f"(it has {', '.join(sorted(features))}).")
        features[name].shortDescription = text


def check_export_path(path, suffix=".mlmodel"):
    """Validate an export destination and return it as an absolute ``str``.

    Checked before any work is done, so a typo fails fast.

    Raises
    ------
    toolkit.errors.InvalidParameterError
        ``path`` is not a str / ``os.PathLike``, or is empty.
    toolkit.errors.ExportError
        The directory of ``path`` does not exist, or ``path`` is a directory.
    """
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise InvalidParameterError(
            f"'path' must be a file path (str or os.PathLike) such as 'model{suffix}', "
            f"got {type(path).__name__} {path!r}.")
    path = os.fspath(path)
    if not path:
        raise InvalidParameterError(f"'path' is empty; give a file path such as 'model{suffix}'.")
    full = os.path.abspath(os.path.expanduser(path))
    directory = os.path.dirname(full)
    if not os.path.isdir(directory):
        raise ExportError(
            f"Cannot export to '{path}': the directory '{directory}' does not exist. "
            "Create it first (the export does not create directories).")
    if os.path.isdir(full):
        raise ExportError(f"Cannot export to '{path}': it is a directory; give a file path "
                          f"such as '{os.path.join(path, 'model' + suffix)}'.")
    return full


def save_spec(spec, path):
    """Write a Core ML ``spec`` (protobuf ``Model``) to ``path`` atomically.

    The bytes go to a temporary file in the destination directory that is then
    renamed over ``path``, so an existing file is never left half written. The
    file gets the usual permissions (``0o666`` less the umask).

    Raises
    ------
    toolkit.errors.ExportError
        The spec cannot be serialised or the file cannot be written.
    """
    return write_protobuf(spec, check_export_path(path), path, "Core ML")


def write_protobuf(message, full, path, what):
    """Serialise a protobuf ``message`` (a Core ML spec, an ONNX model) to ``full``.

    The same atomic write as model files (temp file, fsync, rename, the umask's
    permissions); any failure becomes an ExportError naming ``what`` and ``path``.
    """
    try:
        data = message.SerializeToString()
    except Exception as e:  # noqa: BLE001 - any protobuf failure is an export failure
        raise ExportError(f"Cannot serialise the {what} model: {e}") from e
    from ._model_file import atomic_write
    try:
        atomic_write(full, data)
    except OSError as e:
        # A ModelFileWriteError (an OSError) says why in .reason, without the path twice.
        raise ExportError(f"Cannot write the {what} model to '{path}': "
                          f"{getattr(e, 'reason', e)}.") from e
    return full
