"""Training checkpoints: what resuming needs on top of a model file.

A checkpoint is a model file (same container, same ``weights`` section, same
task ``file_version`` and migrations, so ``load_model`` returns a model for
prediction) with ``kind: "checkpoint"``, a ``checkpoint`` header object and a
``training`` section:

* header ``checkpoint``: ``version`` (the checkpoint layout, see
  :data:`CHECKPOINT_VERSION`), ``position`` (e.g. ``{"iteration": 12,
  "max_iterations": 180}``), ``config`` (the resolved training settings that
  must match on resume), ``data_fingerprint`` (SHA-256 of the training data as
  the task sees it), ``rng`` (the numpy random state at that point), and
  task-specific JSON values (``extra``: optimizer step counts, averaging
  counters...);
* section ``training``: float32 arrays (optimizer moments such as Adam's
  mean and variance per parameter, running averages), in the same strict
  safetensors layout as the weights.

No mxnet object and no pickle is stored: the estimator rebuilds its networks
and its optimizer in code and copies these arrays in, so a checkpoint written
under one mxnet version resumes under another.

Resume rules (documented in every ``create``):

* a checkpoint of another task, or a model file, is refused
  (:class:`~toolkit.errors.CheckpointMismatchError`);
* a checkpoint layout newer than this toolkit's is refused with the usual
  "upgrade" message; older layouts are migrated one version step at a time
  (:data:`_MIGRATIONS`), like model files;
* every setting in ``config`` must equal the one given now, else the resume
  is refused with a message naming each differing setting, the checkpoint's
  value and the given one (resuming with other settings would silently train
  a different model than either run);
* a different data fingerprint (other rows, labels or order) only warns
  (:class:`~toolkit.errors.ToolkitWarning`): training goes on with the new
  data, which is what one wants after fixing a few rows, but the result will
  not equal an uninterrupted run.
"""

import hashlib
import json
import os
import re
import time
import warnings

import numpy as np

from . import _model, _model_file
from .errors import (CheckpointError, CheckpointMismatchError, CorruptModelFileError,
                     InvalidParameterError, ModelFileError, UnsupportedVersionError)

#: Layout version of the ``checkpoint`` header object and ``training`` section.
CHECKPOINT_VERSION = 1
#: ``{v: fn}``: ``fn(info, arrays) -> (info, arrays)`` turns a version-v checkpoint
#: into v + 1 (none yet: version 1 is the first layout).
_MIGRATIONS = {}

DEFAULT_EVERY = "60s"
_EVERY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|min|m|h)\s*$")


def _warning_class():
    from .errors import ToolkitWarning as W
    return W


def fingerprint(*parts):
    """SHA-256 over arrays and JSON-able values, in order (hex digest)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            a = np.ascontiguousarray(part)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            if a.dtype == object:
                h.update(json.dumps([str(v) for v in a.ravel()]).encode())
            else:
                h.update(a.tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def parse_every(value):
    """``checkpoint_every`` -> ("iterations", n) or ("seconds", s).

    An int is a number of iterations (the task's unit: epochs for the activity
    classifier, optimizer steps for the others); a string such as ``"30s"``,
    ``"10min"`` or ``"1h"`` is an interval of wall-clock time.
    """
    if isinstance(value, bool):
        pass
    elif isinstance(value, (int, np.integer)) and value >= 1:
        return ("iterations", int(value))
    elif isinstance(value, str):
        m = _EVERY_RE.match(value)
        if m:
            n = float(m.group(1)) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
            if n > 0:
                return ("seconds", n)
    raise InvalidParameterError(
        f"'checkpoint_every' must be an int >= 1 (iterations) or a time such as '30s', "
        f"'10min' or '1h', got {value!r}.")


def check_path(path, name):
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise InvalidParameterError(f"'{name}' must be a file path (str), got {path!r}.")
    return os.fspath(path)


def check_destination(path):
    """Refuse a checkpoint_path that cannot be written, before training starts."""
    if path is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InvalidParameterError(
            f"'checkpoint_path' {path!r} is a directory; give a file path such as "
            f"{os.path.join(path, 'run.ckpt')!r}.")
    if not os.path.isdir(directory):
        raise InvalidParameterError(
            f"'checkpoint_path' {path!r}: the directory {directory!r} does not exist; create "
            "it first.")
    try:
        # An existing directory may still refuse files (permissions, a read-only
        # or full file system): find out now, not after training.
        _model_file.check_writable(path)
    except ModelFileError as e:
        raise InvalidParameterError(
            f"'checkpoint_path' {path!r} cannot be written: {getattr(e, 'reason', e)}. Choose "
            "a writable location.") from None


def start(task, checkpoint_path, checkpoint_every, resume_from, random_seed):
    """Check a create() call's checkpoint arguments and read the checkpoint to resume.

    Returns ``(checkpoint_path, resume, random_seed)``: when resuming, the
    checkpoint path defaults to ``resume_from`` and a ``random_seed`` of None
    to the checkpoint's; ``resume`` is a :class:`Checkpoint` or None.
    """
    checkpoint_path = check_path(checkpoint_path, "checkpoint_path")
    resume_from = check_path(resume_from, "resume_from")
    parse_every(checkpoint_every)
    resume = None
    if resume_from is not None:
        resume = read(resume_from, task)
        if random_seed is None:
            random_seed = resume.config.get("random_seed")
        if checkpoint_path is None:
            checkpoint_path = resume_from
    check_destination(checkpoint_path)
    return checkpoint_path, resume, random_seed


class Schedule:
    """Decides when to write a checkpoint and writes it (rank 0 only)."""

    def __init__(self, path, every, writer=True):
        self.path = path
        self.unit, self.every = parse_every(every) if path else (None, None)
        self.writer = writer
        self.last_time = time.monotonic()
        self.written = 0
        self.failing = False
        self.last_iteration = None

    def due(self, iteration, final=False):
        if not self.path or not self.writer:
            return False
        if final:
            return True
        if self.unit == "iterations":
            return iteration % self.every == 0
        return time.monotonic() - self.last_time >= self.every

    def write(self, snapshot):
        """``snapshot()`` -> kwargs of :func:`write`; called only when due.

        A checkpoint that cannot be written (disk full, permissions changed,
        directory removed) does not stop training: a trained model is worth
        more than its checkpoint. The first failure warns
        (:class:`~toolkit.errors.ToolkitWarning`) and names the last checkpoint
        that was written; later ones are silent until a write succeeds again.
        """
        kwargs = snapshot()
        try:
            write(self.path, **kwargs)
        except ModelFileError as e:
            if not self.failing:
                last = (f"the last one written is from iteration {self.last_iteration}"
                        if self.last_iteration is not None else "none was written")
                warnings.warn(
                    f"Could not write the checkpoint at iteration "
                    f"{kwargs.get('position', {}).get('iteration')}: {e} Training goes on and "
                    f"create() still returns the trained model; a resume would start from an "
                    f"older checkpoint ({last}).", _warning_class(), stacklevel=3)
            self.failing = True
            return
        self.failing = False
        self.last_iteration = kwargs.get("position", {}).get("iteration")
        self.last_time = time.monotonic()
        self.written += 1


def write(path, task, file_version, state, weights, position, config, data_fingerprint,
          rng=None, extra=None, arrays=None):
    """Write a checkpoint atomically (the previous one stays intact until the rename)."""
    info = {"version": CHECKPOINT_VERSION, "position": position, "config": config,
            "data_fingerprint": data_fingerprint, "extra": extra or {}}
    if rng is not None:
        info["rng"] = encode_rng(rng)
    header = _model_file.build_header(task, file_version, state, kind="checkpoint",
                                      extra={"checkpoint": info})
    sections = {"weights": _model_file.encode_tensors(weights),
                "training": _model_file.encode_tensors(arrays or {})}
    _model_file.atomic_write(path, _model_file.serialize(header, sections))


class Checkpoint:
    """A checkpoint read and verified for resuming (see :func:`read`)."""

    def __init__(self, path, task, state, weights, info, arrays, written_by):
        self.path, self.task, self.state, self.weights = path, task, state, weights
        self.info, self.arrays, self.written_by = info, arrays, written_by
        self._used = set()

    @property
    def position(self):
        return self.info["position"]

    @property
    def config(self):
        return self.info["config"]

    @property
    def extra(self):
        return self.info.get("extra", {})

    def arrays_under(self, prefix):
        """The ``training`` arrays named ``prefix/...``, keyed by the rest of the name."""
        out = {k[len(prefix) + 1:]: v for k, v in self.arrays.items()
               if k.startswith(prefix + "/")}
        self._used.update(prefix + "/" + k for k in out)
        return out

    def array(self, name):
        """One ``training`` array by its full name (a CheckpointError if missing)."""
        if name not in self.arrays:
            raise CheckpointError(
                f"Cannot resume from '{self.path}': it holds no training array '{name}' "
                f"(it holds: {_preview(self.arrays)}). The checkpoint does not fit this "
                "version of the task's training code.")
        self._used.add(name)
        return self.arrays[name]

    def check_all_used(self):
        """Refuse a resume that left stored training arrays unread.

        An array no parameter claimed is optimizer state the run would
        silently drop (e.g. a weight renamed by a version step that was not
        declared as a :class:`toolkit._model.VersionStep`)."""
        unused = sorted(set(self.arrays) - self._used)
        if unused:
            raise CheckpointError(
                f"Cannot resume from '{self.path}': {len(unused)} stored training array(s) "
                f"match no parameter of this run ({_preview(unused)}). The checkpoint was "
                "written by another version of the task's code whose file-version step does "
                "not rename them; resuming would silently restart that state.")

    def rng(self):
        return decode_rng(self.info.get("rng"), self.path)

    def setting(self, name):
        """The checkpoint's resolved value of a setting (None if it has none).

        A create() argument left automatic (``None``, or ``0`` where that means
        automatic) takes this value when resuming, so the automatic choice is
        not made again, possibly differently (other data, another machine).
        """
        return self.config.get(name)

    def check_compatible(self, config, data_fingerprint):
        """Apply the resume rules of the module docstring."""
        stored = self.config
        keys = sorted(set(stored) | set(config))
        diffs = [f"{k}: checkpoint {_show(stored.get(k))}, given {_show(config.get(k))}"
                 for k in keys if _norm(stored.get(k)) != _norm(config.get(k))]
        if diffs:
            raise CheckpointMismatchError(
                f"Cannot resume from '{self.path}': it was written with other settings "
                f"({'; '.join(diffs[:8])}{'; ...' if len(diffs) > 8 else ''}). Call create() "
                "with the checkpoint's settings to resume, or drop resume_from to start a new "
                "run.")
        if self.info.get("data_fingerprint") != data_fingerprint:
            warnings.warn(
                f"Resuming from '{self.path}' on data that differs from the data it was "
                "trained on (other rows, labels or order). Training continues on the new data; "
                "the result will not equal an uninterrupted run on either data set.",
                _warning_class(), stacklevel=3)

    def describe(self):
        p = self.position
        done = p.get("iteration")
        total = p.get("max_iterations")
        who = self.written_by if isinstance(self.written_by, dict) else {}
        return (f"Resuming from checkpoint '{self.path}' at iteration {done} of {total} "
                f"(written {who.get('date', 'at an unknown time')} by toolkit "
                f"{who.get('toolkit', '?')}).")


def _preview(names, n=6):
    names = sorted(names)
    text = ", ".join(names[:n])
    return text + (f", ... ({len(names)} in all)" if len(names) > n else "") if names \
        else "none"


def _norm(v):
    return json.loads(json.dumps(v, sort_keys=True, default=str))


def _show(v):
    text = json.dumps(v, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def read(path, task):
    """Read a checkpoint of ``task`` for resuming; gate and migrate its versions.

    Raises
    ------
    toolkit.errors.ModelFileError
        Missing, damaged or foreign file (from the container reader).
    toolkit.errors.CheckpointMismatchError
        A model file or a checkpoint of another task.
    toolkit.errors.UnsupportedVersionError
        A checkpoint layout or task file version newer than this toolkit's.
    """
    mf = _model.open_model_file(path)
    if mf.kind != "checkpoint":
        raise CheckpointMismatchError(
            f"'{path}' is a saved model (kind {mf.kind!r}), not a training checkpoint: it holds "
            "no optimizer state to resume from. Pass a file written by create(..., "
            "checkpoint_path=...), or load the model with tc.load_model and train it further "
            "with model.fit where the task offers it.")
    if mf.task != task:
        raise CheckpointMismatchError(
            f"'{path}' is a checkpoint of the {mf.task} task; it cannot resume training of "
            f"the {task} task.")
    info = mf.header.get("checkpoint")
    if not isinstance(info, dict):
        raise CorruptModelFileError(f"'{path}' is damaged: its 'checkpoint' header field is "
                                    "missing or not an object.")
    version = info.get("version")
    if not _model_file._is_int(version) or version < 1:
        raise CorruptModelFileError(f"'{path}' is damaged: invalid checkpoint version "
                                    f"{_model_file._short(version)}.")
    if version > CHECKPOINT_VERSION:
        who = _model_file.writer_version(mf.header)
        raise UnsupportedVersionError(
            f"Cannot resume from '{path}': its checkpoint layout is version {version}, written "
            f"by toolkit {who}, but this toolkit ({_model_file._toolkit_version()}) reads "
            f"checkpoint layouts up to version {CHECKPOINT_VERSION}. Upgrade the toolkit: "
            f"`pip install -U {_model_file.PACKAGE_NAME}`.")
    for key, kind in (("position", dict), ("config", dict), ("extra", dict),
                      ("data_fingerprint", str)):
        if not isinstance(info.get(key), kind):
            raise CorruptModelFileError(f"'{path}' is damaged: checkpoint field '{key}' is "
                                        "missing or has the wrong type.")
    arrays = mf.tensors("training")
    info, arrays = migrate(version, info, arrays)
    cls = _model._task_class(mf.task, path)
    state, weights = _model.migrate(cls, mf.file_version, mf.state, mf.tensors("weights"))
    # The task's version steps rename the optimizer's arrays as they rename weights.
    info, arrays = _model.migrate_training(cls, mf.file_version, info, arrays)
    return Checkpoint(path, task, state, weights, info, arrays, mf.header.get("written_by"))


def migrate(version, info, arrays):
    """Run the checkpoint-layout migration chain from ``version`` to the current one."""
    info, arrays = _model.run_chain(_MIGRATIONS, version, CHECKPOINT_VERSION,
                                    "checkpoint layout", info, arrays)
    return dict(info, version=CHECKPOINT_VERSION), arrays


def encode_rng(rng):
    """A numpy RandomState's exact state as JSON values."""
    name, key, pos, has_gauss, cached = rng.get_state()
    return {"bit_generator": name, "key": [int(k) for k in key], "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def decode_rng(value, path="checkpoint"):
    try:
        rng = np.random.RandomState()
        rng.set_state((value["bit_generator"], np.asarray(value["key"], dtype=np.uint32),
                       int(value["pos"]), int(value["has_gauss"]),
                       float(value["cached_gaussian"])))
        return rng
    except (TypeError, KeyError, ValueError, OverflowError) as e:
        raise CorruptModelFileError(f"'{path}' is damaged: its random state cannot be "
                                    f"restored ({e}).") from None


def describe_position(info):
    """One line for ``python -m toolkit info``."""
    if not isinstance(info, dict):
        return "unknown (no checkpoint field)"
    p = info.get("position") if isinstance(info.get("position"), dict) else {}
    p = dict(p)
    parts = []
    if "iteration" in p and "max_iterations" in p:
        parts.append(f"iteration {_model_file._short(p.pop('iteration'))} of "
                     f"{_model_file._short(p.pop('max_iterations'))}")
    parts += [f"{k} {_model_file._short(v)}" for k, v in p.items()]
    return ", ".join(parts) if parts else "unknown"
