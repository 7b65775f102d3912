"""Base model class, the task registry, migrations and ``load_model``.

A task model class declares:

* ``_TASK``: its stable name in files (``"activity_classifier"``); files never
  name Python classes or modules;
* ``_FILE_VERSION``: the newest file version it writes;
* ``_MIGRATIONS``: ``{v: step}``, ``step`` turning a version-``v`` file into a
  version ``v + 1`` one: a :class:`VersionStep` (a weight rename map plus an
  optional pure state function, with a docstring saying what changed and why),
  which migrates model files and training checkpoints alike. A plain function
  ``fn(state, weights) -> (state, weights)`` is accepted too, but it cannot
  reach a checkpoint's optimizer arrays: resuming an older checkpoint then
  stops with a :class:`~toolkit.errors.CheckpointError` naming the arrays it
  could not match, instead of training on the wrong state;
* ``_get_state()`` -> ``(json_state, weights)`` and
  ``_from_state(state, weights)`` (a classmethod that rebuilds the networks in
  code and copies the weights in).
"""

import functools
import importlib

from . import _model_file
from .errors import (CorruptModelFileError, FieldNotFoundError, InvalidParameterError,
                     ModelFileError, UnknownTaskError, UnsupportedVersionError)

# Stable task name -> "module:Class". Modules are imported only when a file of
# that task is loaded, so loading never imports what it does not need.
_TASKS = {
    "activity_classifier": "toolkit.activity_classifier._model:ActivityClassifier",
    "image_classifier": "toolkit.image_classifier._model:ImageClassifier",
    "object_detector": "toolkit.object_detector._model:ObjectDetector",
}


def register_task(name, target):
    """Register a task name -> model class (or ``"module:Class"`` string)."""
    _TASKS[name] = target


def _task_class(task, path=None, written_by=None):
    target = _TASKS.get(task) if isinstance(task, str) else None
    if target is None:
        # written_by comes from a file that is not verified yet: any JSON type.
        who = written_by.get("toolkit", "an unknown version") \
            if isinstance(written_by, dict) else "an unknown version"
        raise UnknownTaskError(
            f"{path or 'The file'} holds a model of task {_model_file._short(task)}, which this "
            f"toolkit ({_model_file._toolkit_version()}) does not know (known tasks: "
            f"{', '.join(sorted(_TASKS))}). It was written by toolkit {who}; if that is newer, "
            f"upgrade with `pip install -U {_model_file.PACKAGE_NAME}`.")
    if isinstance(target, str):
        module, _, name = target.partition(":")
        target = getattr(importlib.import_module(module), name)
    return target


def _version_gate(path):
    """Return the gate run on the header before the checksum (see read_model_file)."""
    def gate(header):
        task = header.get("task")
        cls = _task_class(task, path, header.get("written_by"))
        version = header.get("file_version", 1)
        if isinstance(version, int) and not isinstance(version, bool) \
                and version > cls._FILE_VERSION:
            who = _model_file.writer_version(header)
            raise UnsupportedVersionError(
                f"Cannot load '{path}': it is a {task} file of version {version}, written by "
                f"toolkit {who}, but this toolkit ({_model_file._toolkit_version()}) reads "
                f"{task} files up to version {cls._FILE_VERSION}. Upgrade the toolkit: "
                f"`pip install -U {_model_file.PACKAGE_NAME}`.")
    return gate


def _renamed(name, renames):
    """``name`` (one stored array name, or one '/'-separated part of a checkpoint
    array name) after ``renames``; a part may name a weight without its
    network's prefix (an optimizer that trained only the ``head.`` weights
    names them ``conv1.weight``), and is then renamed within that prefix."""
    if name in renames:
        return renames[name]
    for old, new in renames.items():
        if old.endswith("." + name):
            prefix = old[:-len(name)]
            if new.startswith(prefix):
                return new[len(prefix):]
    return name


def _rename_keys(value, renames):
    if isinstance(value, dict):
        return {(_renamed(k, renames) if isinstance(k, str) else k): _rename_keys(v, renames)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_rename_keys(v, renames) for v in value]
    return value


class VersionStep:
    """One step of a task's file format, version ``v`` -> ``v + 1``, declared once.

    Parameters
    ----------
    renames : dict, optional
        ``{old weight name: new weight name}``.
    state : callable, optional
        ``state(dict) -> dict``: a pure function of the JSON state (new fields
        with defaults, changed meanings).
    doc : str
        What changed and why (shown by ``python -m toolkit upgrade``).

    The same declaration migrates a model file (its weights and state) and a
    training checkpoint: besides the weights and state, every '/'-separated
    part of a ``training`` array name (``optimizer/<weight>/0``,
    ``average/<weight>``) and every key of the checkpoint's JSON ``extra``
    (per-weight optimizer step counts) that names a renamed weight.

    Examples
    --------
    >>> step = VersionStep(renames={"dense.w": "dense.weight"},
    ...                    state=lambda s: dict(s, scale=s.get("scale", 1.0)),
    ...                    doc="Structural weight names; 'scale' defaults to 1.0.")
    >>> state, weights = step({"name": "x"}, {"dense.w": 1})
    >>> state, sorted(weights)
    ({'name': 'x', 'scale': 1.0}, ['dense.weight'])
    """

    def __init__(self, renames=None, state=None, doc=""):
        self.renames = dict(renames or {})
        self.state = state
        self.__doc__ = doc

    def __call__(self, state, weights):
        if self.state is not None:
            state = self.state(dict(state))
        return state, {self.renames.get(k, k): v for k, v in weights.items()}

    def checkpoint(self, info, arrays):
        """The checkpoint's header object and ``training`` arrays, renamed."""
        arrays = {"/".join(_renamed(p, self.renames) for p in k.split("/")): v
                  for k, v in arrays.items()}
        return dict(info, extra=_rename_keys(info.get("extra", {}), self.renames)), arrays


def migrate(cls, version, state, weights):
    """Run the migration chain from ``version`` up to ``cls._FILE_VERSION``."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CorruptModelFileError(
            f"Invalid {cls._TASK} file version {version!r}; the file is damaged.")
    return run_chain(cls._MIGRATIONS, version, cls._FILE_VERSION, f"{cls._TASK} file version",
                     state, weights)


def migrate_training(cls, version, info, arrays):
    """Carry a checkpoint's training arrays and ``extra`` through the same task
    file-version steps as its weights (:class:`VersionStep`; a plain function
    step leaves them as they are, and the strict restore then names them)."""
    steps = {v: getattr(step, "checkpoint", lambda i, a: (i, a))
             for v, step in cls._MIGRATIONS.items()}
    return run_chain(steps, version, cls._FILE_VERSION, f"{cls._TASK} file version", info,
                     arrays)


def run_chain(steps, version, target, what, json_part, arrays):
    """Apply ``steps[v]`` for v = version .. target - 1 to ``(json_part, arrays)``.

    Each step takes and returns ``(json_part, arrays)`` (fresh dict copies go in).
    ``what`` names the versioned thing in the error for a missing step.
    """
    while version < target:
        step = steps.get(version)
        if step is None:
            raise ModelFileError(
                f"No migration from {what} {version} to {version + 1}; "
                "this is a toolkit bug, please report it.")
        json_part, arrays = step(dict(json_part), dict(arrays))
        version += 1
    return json_part, arrays


def task_method(function):
    """``function(model, ...)`` (an exporter) as a model method.

    ``help(model.export_onnx)`` then shows the exporter's own docstring and
    signature: the task's input contract, written once beside the code.
    """
    @functools.wraps(function)
    def method(self, *args, **kwargs):
        return function(self, *args, **kwargs)
    return method


def open_model_file(path):
    """Read and verify a model file, gating its versions. Returns a ModelFile."""
    return _model_file.read_model_file(path, version_gate=_version_gate(path))


def load_model(path):
    """Load a model saved with ``model.save(path)``.

    The file's version is checked first: a file from a newer toolkit is refused
    with a :class:`~toolkit.errors.UnsupportedVersionError` telling you to
    upgrade. Older files are migrated in memory. The networks are rebuilt in
    code and the stored weights copied in.

    Parameters
    ----------
    path : str or os.PathLike
        Path of a file written by ``model.save``.

    Returns
    -------
    Model
        The model object of the task stored in the file.

    Raises
    ------
    toolkit.errors.ModelFileError
        Or one of its subclasses, for a missing, damaged, foreign or newer file.

    Examples
    --------
    >>> import toolkit as tc
    >>> model = tc.load_model('activity.model')  # doctest: +SKIP
    """
    mf = open_model_file(path)
    cls = _task_class(mf.task, path)
    # The "weights" section of a model file and of a checkpoint is the same.
    if not isinstance(mf.state, dict):
        raise CorruptModelFileError(f"'{path}' is damaged: its 'state' field is not an object.")
    weights = mf.tensors("weights")
    state, weights = migrate(cls, mf.file_version, mf.state, weights)
    return cls._from_state(state, weights)


class Model:
    """Base class of every task model: ``save``, ``summary``, field access.

    Fields (Turi Create's ``model.get('name')``, ``model['name']``,
    ``model.name``, ``model._list_fields()``, ``model.summary()``) come from
    two methods a task provides:

    * :meth:`_fields` returns ``{name: value}`` of every public field. The
      default is the JSON state without keys starting with ``_`` or listed in
      ``_PRIVATE_STATE``; a task overrides it to add computed fields (e.g.
      metrics rebuilt as DataFrames) or to drop fields that do not apply.
    * :meth:`_summary_sections` returns ``[(title, [(label, value), ...]), ...]``
      for :meth:`summary` and ``repr``.

    State keys that are not fields stay readable as attributes (for example the
    activity classifier's ``feature_mean``), but are not listed.
    """

    _TASK = None
    _FILE_VERSION = 1
    _MIGRATIONS = {}
    #: State keys kept out of ``_list_fields()`` (besides keys starting with ``_``).
    _PRIVATE_STATE = ()

    def _fields(self):
        """``{name: value}`` of every public field; tasks override to add or hide fields."""
        return {k: v for k, v in self._state.items()
                if not k.startswith("_") and k not in self._PRIVATE_STATE}

    def _field(self, name):
        """The value of field ``name`` (a copy of lists); raises FieldNotFoundError."""
        state = self.__dict__.get("_state")
        if state is None or not isinstance(name, str):
            raise FieldNotFoundError(
                f"'{type(self).__name__}' has no field {name!r}: field names are str.")
        fields = self._fields()
        if name in fields:
            value = fields[name]
        elif name in state and not name.startswith("_"):
            value = state[name]
        else:
            raise FieldNotFoundError(
                f"'{type(self).__name__}' object has no field {name!r}; its fields are "
                f"{', '.join(self._list_fields())}.")
        return list(value) if isinstance(value, list) else value

    # The fields double as attributes, as in Turi Create: model.classes.
    def __getattr__(self, name):
        if name.startswith("__") or "_state" not in self.__dict__:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}")
        return self._field(name)

    def __getitem__(self, name):
        return self._field(name)

    def get(self, field):
        """The value of one field, as ``model[field]`` (Turi Create's ``model.get``).

        Parameters
        ----------
        field : str
            A name from :meth:`_list_fields`.

        Raises
        ------
        toolkit.errors.FieldNotFoundError
            No such field (also a ``KeyError`` and an ``AttributeError``); the
            message lists the fields.

        Examples
        --------
        >>> model.get('classes')                                 # doctest: +SKIP
        """
        return self._field(field)

    # Turi Create 5.x's spelling, used by its scripts and tests.
    _get = get

    def _list_fields(self):
        """The names of every field, sorted (Turi Create's ``model._list_fields()``)."""
        return sorted(self._fields())

    def __dir__(self):
        names = set(super().__dir__())
        if "_state" in self.__dict__:
            names.update(self._list_fields())
        return sorted(names)

    def _summary_sections(self):
        """[(title, [(label, value), ...]), ...] shown by summary()."""
        raise NotImplementedError

    def summary(self, output=None):
        """Describe the model: its schema and training summary.

        Parameters
        ----------
        output : {None, 'stdout', 'str', 'dict'}
            ``None`` or ``'stdout'`` prints the summary; ``'str'`` returns the
            same text; ``'dict'`` returns Turi Create's structure
            ``{'section_titles': [title, ...], 'sections': [[(label, value),
            ...], ...]}`` (floats rounded to 4 decimals).

        Raises
        ------
        toolkit.errors.InvalidParameterError
            ``output`` is anything else.

        Examples
        --------
        >>> model.summary()                                      # doctest: +SKIP
        >>> model.summary('dict')['section_titles']              # doctest: +SKIP
        ['Schema', 'Training summary']
        """
        if not (output is None or (isinstance(output, str)
                                   and output in ("stdout", "str", "dict"))):
            raise InvalidParameterError(
                f"'output' must be None, 'stdout', 'str' or 'dict', got "
                f"{type(output).__name__} {output!r}.")
        sections = self._summary_sections()
        if output == "dict":
            return {"section_titles": [title for title, _ in sections],
                    "sections": [[(k, round(v, 4) if isinstance(v, float) else v)
                                  for k, v in rows] for _, rows in sections]}
        lines = [f"{'Class':<40} : {type(self).__name__}", ""]
        for title, rows in sections:
            lines += [title, "-" * len(title)]
            lines += [f"{k:<40} : {v:.4f}" if isinstance(v, float) else f"{k:<40} : {v}"
                      for k, v in rows]
            lines.append("")
        text = "\n".join(lines)
        if output == "str":
            return text
        print(text)

    def __repr__(self):
        return self.summary(output="str")

    __str__ = __repr__

    def _get_state(self):
        raise NotImplementedError

    @classmethod
    def _from_state(cls, state, weights):
        raise NotImplementedError

    def save(self, path):
        """Save the model to a single file, atomically.

        The file holds the prediction network's weights and JSON settings only
        (no code, no framework graph). An earlier file at ``path`` stays
        intact if saving fails midway.

        Parameters
        ----------
        path : str or os.PathLike
            Destination file; by convention ending in ``.model``.

        Notes
        -----
        In a parameter-server cluster (``toolkit.config``) every worker holds
        the same trained model and only the worker of rank 0 writes the file;
        on the others ``save`` does nothing, so one script serves every worker.

        Examples
        --------
        >>> model.save('activity.model')  # doctest: +SKIP
        >>> same = toolkit.load_model('activity.model')  # doctest: +SKIP
        """
        from . import config
        if not config.is_writer():
            return
        state, weights = self._get_state()
        header = _model_file.build_header(self._TASK, self._FILE_VERSION, state)
        data = _model_file.serialize(
            header, {"weights": _model_file.encode_tensors(weights)})
        _model_file.atomic_write(path, data)
