"""Read a legacy (non-zip) PyTorch ``state_dict`` file without torch and without running code.

``torch.save(..., _use_new_zipfile_serialization=False)`` (the only format
before torch 1.6) writes one stream holding, back to back:

1. a pickle of the magic number ``0x1950a86a20f9469cfc6c``;
2. a pickle of the protocol version (``1001``);
3. a pickle of a "sys info" dict (``protocol_version``, ``little_endian``,
   ``type_sizes``);
4. the pickle of the saved object: here an ``OrderedDict`` of tensors. Each
   tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
   requires_grad, backward_hooks)`` where ``storage`` is a *persistent id*
   ``('storage', torch.FloatStorage, key, location, numel, view_metadata)``;
5. a pickle of the list of storage keys, in the order their bytes follow;
6. for each key: an 8-byte little-endian element count, then the raw
   elements (little-endian, ``numel * itemsize`` bytes).

Every pickle is read with a restricted unpickler: pickles 1, 2, 3 and 5 may
not name any global at all; pickle 4 may name only ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` and the ``torch.*Storage`` type markers,
and each of those resolves to a small stand-in defined here (torch is never
imported, and nothing the file names is ever called). Any other global, a
persistent id of another shape, a count that disagrees with the pickle, a
view that reaches outside its storage, or trailing bytes raise
:class:`~toolkit._safe_pickle.UnsafePickleError` (or
:class:`TorchFileError`) with a message naming the problem.
"""

import collections
import io
import pickle
import struct

import numpy as np

from .._safe_pickle import UnsafePickleError
from ..errors import ToolkitError

MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
PROTOCOL_VERSION = 1001

# torch storage type name -> numpy dtype (little-endian).
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

_MAX_TENSORS = 100_000
_MAX_NDIM = 16


class TorchFileError(ToolkitError, ValueError):
    """A legacy torch file is damaged or not the expected kind of file."""


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co: only its dtype is used."""

    def __init__(self, name):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage:
    """A storage announced by a persistent id; its bytes come later in the stream."""

    def __init__(self, key, dtype, numel):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.array = None  # filled once the raw bytes are read


class _View:
    """A view on part of a root storage (legacy ``view_metadata``)."""

    def __init__(self, root, offset, numel):
        self.root = root
        self.offset = offset
        self.numel = numel
        self.dtype = root.dtype


class _TensorRef:
    """What ``_rebuild_tensor_v2`` returns here: enough to build the array later."""

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, (_Storage, _View)):
        raise UnsafePickleError("A tensor in the file is not backed by a storage.")
    if not (_is_int(storage_offset) and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) <= _MAX_NDIM
            and all(_is_int(v) and v >= 0 for v in size + stride) and storage_offset >= 0):
        raise UnsafePickleError(
            f"A tensor in the file has an invalid layout (offset {storage_offset!r}, "
            f"size {size!r}, stride {stride!r}).")
    return _TensorRef(storage, storage_offset, size, stride)


class _LegacyUnpickler(pickle.Unpickler):
    """Admits only the globals in ``allowed``; handles storage persistent ids if asked."""

    def __init__(self, file, allowed, what, storages=None):
        super().__init__(file, encoding="latin1")
        self._allowed = allowed
        self._what = what
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) not in self._allowed:
            raise UnsafePickleError(
                f"{self._what} asks for '{module}.{name}', which a file of tensors never needs; "
                "it is refused (only OrderedDict, torch._utils._rebuild_tensor_v2 and torch "
                "storage types are allowed). The file is not the expected weights file; "
                "reinstall the package that provides it.")
        return self._allowed[(module, name)]

    def persistent_load(self, pid):
        if self._storages is None:
            raise UnsafePickleError(f"{self._what} uses persistent ids where none are allowed.")
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[3], str) and _is_int(pid[4]) and pid[4] >= 0):
            raise UnsafePickleError(
                f"{self._what} has a persistent id that is not a torch storage: {pid!r:.200}.")
        _, stype, key, _location, numel, view = pid
        root = self._storages.get(key)
        if root is None:
            if len(self._storages) >= _MAX_TENSORS:
                raise UnsafePickleError(f"{self._what} declares too many storages.")
            root = self._storages[key] = _Storage(key, stype.dtype, numel)
        elif root.dtype != stype.dtype or root.numel != numel:
            raise UnsafePickleError(f"{self._what} declares storage {key!r} twice, differently.")
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3 and _is_int(view[1])
                and _is_int(view[2]) and 0 <= view[1] and view[1] + view[2] <= numel):
            raise UnsafePickleError(f"{self._what} has an invalid storage view {view!r:.200}.")
        return _View(root, view[1], view[2])


_TENSOR_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


def _load_one(f, what, allowed=None, storages=None):
    try:
        return _LegacyUnpickler(f, allowed or {}, what, storages).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - any parser failure means a bad file
        raise TorchFileError(f"{what} could not be read: {type(e).__name__}: {e}") from None


def _tensor_array(ref, name, what):
    storage = ref.storage
    base_offset = 0
    if isinstance(storage, _View):
        base_offset, root = storage.offset, storage.root
        limit = storage.offset + storage.numel
    else:
        root, limit = storage, storage.numel
    size, stride = ref.size, ref.stride
    start = base_offset + ref.offset
    if all(size):
        last = start + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= limit:
            raise TorchFileError(
                f"{what}: tensor '{name}' (size {size}, stride {stride}, offset {ref.offset}) "
                "reaches outside its storage; the file is damaged.")
    flat = root.array
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[start:] if all(size) else flat[:0], shape=size,
        strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view, dtype=flat.dtype.newbyteorder("="))


def read_legacy_state_dict(path):
    """Return ``{name: numpy array}`` of a legacy torch ``state_dict`` file.

    Parameters
    ----------
    path : str
        A file written by ``torch.save(state_dict)`` in the legacy format.

    Returns
    -------
    collections.OrderedDict
        Tensor name -> numpy array (a copy, native byte order), in file order.

    Raises
    ------
    toolkit._safe_pickle.UnsafePickleError
        The file names a global outside the allow-list or uses persistent ids
        that are not torch storages: it is not a plain tensor dict.
    TorchFileError
        The file is damaged, truncated, has trailing bytes or is not a legacy
        torch file (e.g. a zip-format torch file).

    Examples
    --------
    >>> weights = read_legacy_state_dict('efficientnet-lite0-57934424.pth')  # doctest: +SKIP
    >>> weights['_conv_stem.weight'].shape                                   # doctest: +SKIP
    (32, 3, 3, 3)
    """
    what = f"The torch file '{path}'"
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:4] == b"PK\x03\x04":
        raise TorchFileError(f"{what} is a zip-format torch file; only the legacy format is "
                             "read here.")
    f = io.BytesIO(data)
    magic = _load_one(f, what + " (magic number)")
    if magic != MAGIC_NUMBER:
        raise TorchFileError(f"{what} is not a legacy torch file (magic number {magic!r:.40}).")
    version = _load_one(f, what + " (protocol version)")
    if version != PROTOCOL_VERSION:
        raise TorchFileError(f"{what} has torch protocol version {version!r:.40}, expected "
                             f"{PROTOCOL_VERSION}.")
    info = _load_one(f, what + " (sys info)")
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise TorchFileError(f"{what} was not written on a little-endian machine or its sys "
                             "info is damaged.")
    storages = {}
    obj = _load_one(f, what, _TENSOR_GLOBALS, storages)
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, _TensorRef)
                                            for k, v in obj.items()):
        raise TorchFileError(f"{what} does not hold a dict of tensors (a state_dict).")
    keys = _load_one(f, what + " (storage keys)")
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)
            and sorted(keys) == sorted(storages)):
        raise TorchFileError(f"{what}: its list of storage keys does not match the storages "
                             "its tensors use; the file is damaged.")
    pos = f.tell()
    for key in keys:
        st = storages[key]
        if pos + 8 > len(data):
            raise TorchFileError(f"{what} is truncated (storage {key!r} is missing).")
        (count,) = struct.unpack_from("<q", data, pos)
        pos += 8
        nbytes = count * st.dtype.itemsize
        if count != st.numel:
            raise TorchFileError(f"{what}: storage {key!r} holds {count} elements but the "
                                 f"tensors declare {st.numel}; the file is damaged.")
        if pos + nbytes > len(data):
            raise TorchFileError(f"{what} is truncated (storage {key!r} is cut short).")
        st.array = np.frombuffer(data, dtype=st.dtype, count=count, offset=pos)
        pos += nbytes
    if pos != len(data):
        raise TorchFileError(f"{what} has {len(data) - pos} unexpected trailing bytes.")
    return collections.OrderedDict((name, _tensor_array(ref, name, what))
                                   for name, ref in obj.items())
