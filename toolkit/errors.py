"""The toolkit's error family.

Every error the toolkit raises on purpose is a :class:`ToolkitError`. The
specific subclasses also derive from the builtin exception a Python user would
naturally catch (``ValueError``, ``FileNotFoundError``, ...), so existing
``except`` clauses keep working.
"""


class ToolkitError(Exception):
    """Base class of every error raised by the toolkit on purpose."""


# --- model files -----------------------------------------------------------

class ModelFileError(ToolkitError, ValueError):
    """A model file cannot be read or written."""


class ModelFileWriteError(ModelFileError, OSError):
    """A model file, checkpoint or export cannot be written: no permission, a full disk,
    a read-only file system. The message names the user's path and the reason; any
    earlier file at that path is left intact. ``errno`` is the operating system's."""


class ModelFileNotFoundError(ModelFileError, FileNotFoundError):
    """The path given to ``load_model`` does not exist or is not a file."""


class NotAModelFileError(ModelFileError):
    """The file exists but is not a toolkit model file (a PNG, a pickle...)."""


class CorruptModelFileError(ModelFileError):
    """The file is a toolkit model file but is damaged (truncated, flipped bytes)."""


class UnsupportedVersionError(ModelFileError):
    """The file was written by a newer toolkit than this one."""


class UnknownTaskError(ModelFileError):
    """The file names a task this toolkit does not know."""


class WeightsMismatchError(ModelFileError):
    """The stored weights do not fit the network rebuilt from the stored settings."""


# --- user input ------------------------------------------------------------

class InvalidParameterError(ToolkitError, ValueError, TypeError):
    """An argument has the wrong type or an out-of-range value."""


class DataError(ToolkitError, ValueError):
    """The data given to create/predict/evaluate cannot be used."""


class ColumnNotFoundError(DataError, KeyError):
    """A column named in the call is missing from the DataFrame."""

    # KeyError.__str__ would wrap the message in quotes; a message is prose.
    __str__ = Exception.__str__


class FieldNotFoundError(ToolkitError, KeyError, AttributeError):
    """``model[name]``, ``model.get(name)`` or ``model.name`` names no field of the model."""

    __str__ = Exception.__str__


class NotFittedError(ToolkitError, AttributeError):
    """A model object was used before it was trained or loaded."""


class ExportError(ToolkitError, RuntimeError):
    """Export to another format failed."""


class CheckpointError(ToolkitError, ValueError):
    """A checkpoint cannot be used to resume: its stored training state does not fit."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint cannot resume this training run (other task, settings, or a model file)."""


# --- inference backends ------------------------------------------------------

class BackendNotAvailableError(ToolkitError, ImportError):
    """The inference backend asked for (onnxruntime) cannot be imported."""


# --- distributed training --------------------------------------------------

class DistributedError(ToolkitError, RuntimeError):
    """A process of a distributed (parameter-server) training job failed or timed out."""


# --- warnings --------------------------------------------------------------

class ToolkitWarning(UserWarning):
    """A warning from the toolkit (data quietly fixed, labels unseen in training...)."""


__all__ = [n for n in dir() if n.endswith("Error")] + ["ToolkitWarning"]
