"""The model file container: layout, checksum, version gate and size bounds.

Layout (all integers little-endian; see docs/model_format.md)::

    offset  size  field
    0       8     magic  b"\\x89TKMODL\\n"
    8       4     container version (uint32)
    12      8     header length H (uint64)
    20      32    SHA-256 of every byte from offset 52 to the end of the file
    52      H     header: a UTF-8 JSON object
    52+H    ...   payload: the sections the header lists, back to back

The header names the task, its file version, who wrote the file, the task's
JSON state, and the sections of the payload. A model file has one section,
``weights`` (a safetensors blob of float32 arrays). A training checkpoint adds
more sections (e.g. ``optimizer``) and sets ``kind`` to ``"checkpoint"``.

Reading trusts no declared size: every length, offset and shape is checked
against the bytes actually present before it is used or allocated, JSON with
duplicate keys or NaN is refused (two parsers could read such bytes two
ways), and the file is read through a single handle. Every failure is a
``ModelFileError``. docs/reliability.md describes how this is fuzzed.

Nothing here imports mxnet or unpickles anything.
"""

import datetime
import hashlib
import json
import os
import reprlib
import stat
import struct
import tempfile

import numpy as np

from .errors import (CorruptModelFileError, InvalidParameterError, ModelFileError,
                     ModelFileNotFoundError, NotAModelFileError, UnsupportedVersionError)

MAGIC = b"\x89TKMODL\n"
CONTAINER_VERSION = 1
_PREAMBLE = struct.Struct("<8sIQ32s")
PREAMBLE_SIZE = _PREAMBLE.size  # 52

# Bounds checked before anything is allocated from a declared size: a
# hostile or damaged file must not make the loader allocate gigabytes.
MAX_HEADER_BYTES = 16 * 2**20
MAX_FILE_BYTES = 4 * 2**30
MAX_TENSORS = 100_000
MAX_NDIM = 32  # dimensions of one tensor (numpy's own limit)
ALLOWED_DTYPES = ("float32",)

PACKAGE_NAME = "toolkit"

# Values read from a file appear in error messages through this: bounded length and depth.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 3


class ModelFile:
    """A parsed, verified model file: the header and the raw section bytes."""

    def __init__(self, path, container_version, header, sections):
        self.path = path
        self.container_version = container_version
        self.header = header
        self.sections = sections

    @property
    def task(self):
        return self.header["task"]

    @property
    def file_version(self):
        # A file without a version predates versioning: the oldest version.
        return self.header.get("file_version", 1)

    @property
    def kind(self):
        return self.header.get("kind", "model")

    @property
    def state(self):
        return self.header.get("state", {})

    def tensors(self, section="weights"):
        """Parse a safetensors section into a dict of numpy arrays."""
        if section not in self.sections:
            raise CorruptModelFileError(
                f"{self.path}: the file has no '{section}' section "
                f"(sections present: {sorted(self.sections)}).")
        return decode_tensors(self.sections[section], f"{self.path} [{section}]")


def _sniff(prefix):
    """Name what a non-model file looks like, for a more helpful message."""
    if prefix.startswith(b"\x89PNG"):
        return "a PNG image"
    if prefix.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (never loaded by the toolkit: unpickling can run code)"
    if prefix.startswith(b"PK\x03\x04"):
        return "a zip archive"
    if len(prefix) >= 9 and prefix[8:9] == b"{":
        return "a bare safetensors file without the toolkit's model header"
    try:
        prefix.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "an unrecognised binary file"


def _short(value):
    """A bounded repr of a value read from a file, for error messages."""
    return _REPR.repr(value)


def _check_path(path):
    try:
        path = os.fspath(path)
    except TypeError:
        raise InvalidParameterError(
            f"The model path must be a str or os.PathLike, got {type(path).__name__}.") from None
    try:
        st = os.stat(path)
    except PermissionError as e:
        raise ModelFileError(f"Cannot read '{path}': {e.strerror or 'permission denied'}.") \
            from None
    except (OSError, ValueError):
        raise ModelFileNotFoundError(
            f"No model file at '{path}': the path does not exist.") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelFileNotFoundError(
            f"'{path}' is a directory; load_model expects the path of a model file "
            "written by model.save().")
    if not stat.S_ISREG(st.st_mode):
        # Reading a pipe or a device could block forever or never end.
        raise NotAModelFileError(
            f"'{path}' is not a regular file (a pipe, socket or device); load_model expects "
            "the path of a model file written by model.save().")
    return path


def _open(path):
    """Open for reading without blocking, and only if it is (still) a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ModelFileNotFoundError(
            f"No model file at '{path}': the path does not exist.") from None
    except OSError as e:
        raise ModelFileError(f"Cannot read '{path}': {e.strerror or e}.") from None
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        regular = False
    if not regular:
        os.close(fd)
        raise NotAModelFileError(
            f"'{path}' is not a regular file; load_model expects the path of a model file "
            "written by model.save().")
    return os.fdopen(fd, "rb")


def _read(f, n, path):
    try:
        return f.read(n)
    except OSError as e:
        raise ModelFileError(f"Cannot read '{path}': {e.strerror or e}.") from None


def _read_preamble_from(f, path):
    size = os.fstat(f.fileno()).st_size
    head = _read(f, PREAMBLE_SIZE, path)
    if size == 0:
        raise NotAModelFileError(f"'{path}' is empty (0 bytes); it is not a toolkit model file.")
    if len(head) < len(MAGIC) and MAGIC.startswith(head):
        raise CorruptModelFileError(
            f"'{path}' is truncated: only {size} bytes, a model file has at least "
            f"{PREAMBLE_SIZE}.")
    if head[:len(MAGIC)] != MAGIC:
        raise NotAModelFileError(
            f"'{path}' is not a toolkit model file: it looks like {_sniff(head)}. "
            "Load files written by model.save().")
    if len(head) < PREAMBLE_SIZE:
        raise CorruptModelFileError(
            f"'{path}' is truncated: {size} bytes, shorter than the {PREAMBLE_SIZE}-byte preamble.")
    _, cversion, header_len, digest = _PREAMBLE.unpack(head)
    if cversion > CONTAINER_VERSION:
        raise UnsupportedVersionError(
            f"'{path}' uses model container version {cversion}, but this toolkit "
            f"({_toolkit_version()}) reads container versions up to {CONTAINER_VERSION}. "
            f"It was written by a newer toolkit: upgrade with `pip install -U {PACKAGE_NAME}`.")
    if cversion == 0:
        raise CorruptModelFileError(f"'{path}' is damaged: its container version is 0.")
    if size > MAX_FILE_BYTES:
        raise CorruptModelFileError(
            f"'{path}' is {size} bytes, over the {MAX_FILE_BYTES}-byte limit for model files.")
    if header_len > MAX_HEADER_BYTES or PREAMBLE_SIZE + header_len > size:
        raise CorruptModelFileError(
            f"'{path}' is damaged or truncated: it declares a {header_len}-byte header but "
            f"the file has {size - PREAMBLE_SIZE} bytes after the preamble "
            f"(limit {MAX_HEADER_BYTES}).")
    return cversion, header_len, digest, size


def read_preamble(path):
    """Read and check the fixed preamble; return (container_version, header_len, digest, size)."""
    path = _check_path(path)
    with _open(path) as f:
        return _read_preamble_from(f, path)


def _strict_json(raw):
    """Parse UTF-8 JSON as the files are written: no duplicate keys, no NaN/Infinity.

    Returns ``(value, None)`` or ``(None, reason)``. A duplicate key would let
    two readers see two different files in the same bytes, so it is refused.
    """
    def pairs(items):
        out = {}
        for key, value in items:
            if key in out:
                raise _JSONRuleError(f"duplicate key {_short(key)}")
            out[key] = value
        return out

    def constant(name):
        raise _JSONRuleError(f"{name} is not allowed")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 ({e.reason} at byte {e.start})"
    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant), None
    except _JSONRuleError as e:
        return None, str(e)
    except RecursionError:
        return None, "nested too deeply"
    except ValueError as e:  # json.JSONDecodeError, or an over-long integer
        return None, f"not valid JSON ({_short(str(e))})"


class _JSONRuleError(Exception):
    pass


def read_model_file(path, version_gate=None):
    """Read, gate and verify a model file.

    The file is opened once and read through one handle, with every size
    bounded before it is used, so a file replaced while it is read is seen
    whole or reported as changed, never mixed.

    Parameters
    ----------
    path : str or os.PathLike
    version_gate : callable, optional
        Called with the parsed header *before* the checksum is verified, so a
        file from a newer toolkit (which may compute the checksum or lay out
        sections differently) is refused with "upgrade", not "corrupted".

    Returns
    -------
    ModelFile
    """
    path = _check_path(path)
    with _open(path) as f:
        cversion, header_len, digest, size = _read_preamble_from(f, path)
        # One byte more than expected, to notice a file that grew meanwhile.
        body = _read(f, size - PREAMBLE_SIZE + 1, path)
    if len(body) != size - PREAMBLE_SIZE:
        raise CorruptModelFileError(f"'{path}' changed while it was being read; try again.")
    header, why = _strict_json(body[:header_len])
    if isinstance(header, dict) and version_gate is not None:
        try:
            version_gate(header)
        except ModelFileError as e:
            # "Upgrade" is the right answer for a newer file, but a damaged
            # header can look like one too: say so when the checksum fails.
            if hashlib.sha256(body).digest() != digest:
                e.args = (f"{e} (Its checksum does not match either: if it was not written "
                          "by a newer toolkit, the file is damaged.)",) + e.args[1:]
            raise
    if hashlib.sha256(body).digest() != digest:
        raise CorruptModelFileError(
            f"'{path}' is damaged: its checksum does not match its contents (a changed, "
            "truncated or partly copied file). Use an intact copy of the file.")
    if not isinstance(header, dict):
        raise CorruptModelFileError(
            f"'{path}' is damaged: its header is not a JSON object "
            f"({why or 'it is a ' + _json_type(header)}).")
    _check_header(path, header)
    sections = _split_sections(path, header, memoryview(body)[header_len:])
    return ModelFile(path, cversion, header, sections)


def _json_type(value):
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_header(path, header):
    """Check the types of the header fields the container defines."""
    def bad(key, what):
        raise CorruptModelFileError(
            f"'{path}' is damaged: its header field '{key}' should be {what}, got "
            f"{_json_type(header[key])} {_short(header[key])}.")
    for key in ("task", "sections"):
        if key not in header:
            raise CorruptModelFileError(f"'{path}' is damaged: its header has no '{key}' field.")
    if not isinstance(header["task"], str):
        bad("task", "a task name (string)")
    if "file_version" in header and not (_is_int(header["file_version"])
                                         and header["file_version"] >= 1):
        bad("file_version", "an integer >= 1")
    for key in ("format", "kind"):
        if key in header and not isinstance(header[key], str):
            bad(key, "a string")
    for key in ("state", "written_by", "sections"):
        if key in header and not isinstance(header[key], dict):
            bad(key, "an object")


def _split_sections(path, header, payload):
    declared = header["sections"]
    spans = []
    for name, span in declared.items():
        if not (isinstance(span, dict) and _is_int(span.get("offset"))
                and _is_int(span.get("length"))
                and span["offset"] >= 0 and span["length"] >= 0):
            raise CorruptModelFileError(
                f"'{path}' is damaged: section {_short(name)} has an invalid offset/length "
                f"{_short(span)}.")
        spans.append((span["offset"], span["offset"] + span["length"], name))
    spans.sort()
    pos = 0
    for start, end, name in spans:
        if start != pos:
            raise CorruptModelFileError(
                f"'{path}' is damaged: section {_short(name)} starts at {start}, expected {pos} "
                "(sections must be back to back with no gaps or overlaps).")
        pos = end
    if pos != len(payload):
        raise CorruptModelFileError(
            f"'{path}' is damaged: the sections cover {pos} bytes but the payload has "
            f"{len(payload)}.")
    return {name: bytes(payload[start:end]) for start, end, name in spans}


# safetensors dtype names -> numpy dtypes; model files hold float32 only.
_TENSOR_DTYPES = {"F32": np.dtype("<f4")}


def decode_tensors(blob, where):
    """Decode a safetensors blob into {name: float32 array}; never unpickles.

    Everything the table declares is checked against the blob's real size
    before anything is allocated from it: the table's length, every tensor's
    dtype, shape and byte range, and that the ranges tile the data exactly (no
    gaps, no overlaps, no duplicated names). The arrays are copies of the
    data, so their total size is at most the blob's.
    """
    blob = memoryview(blob).cast("B")
    n = len(blob)
    if n < 8:
        raise CorruptModelFileError(f"{where}: tensor section is truncated ({n} bytes).")
    (hlen,) = struct.unpack("<Q", blob[:8])
    if hlen > min(n - 8, MAX_HEADER_BYTES):
        raise CorruptModelFileError(
            f"{where}: tensor table length {hlen} is out of range (the section has {n - 8} "
            f"bytes after the length field; limit {MAX_HEADER_BYTES}).")
    raw = blob[8:8 + hlen]
    if raw[:1] != b"{":
        raise CorruptModelFileError(f"{where}: tensor table does not start with '{{'.")
    meta, why = _strict_json(raw)
    if why is not None:
        raise CorruptModelFileError(f"{where}: tensor table is not valid: {why}.")
    if not isinstance(meta, dict) or len(meta) > MAX_TENSORS + 1:
        raise CorruptModelFileError(
            f"{where}: tensor table is not an object of at most {MAX_TENSORS} tensors.")
    data_start = 8 + hlen
    data_len = n - data_start
    entries = []
    for name, info in meta.items():
        if name == "__metadata__":
            if not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise CorruptModelFileError(
                    f"{where}: tensor table's __metadata__ is not an object of strings.")
            continue
        entries.append(_check_tensor_entry(where, name, info, data_len))
    if len(entries) > MAX_TENSORS:
        raise CorruptModelFileError(f"{where}: more than {MAX_TENSORS} tensors.")
    entries.sort(key=lambda e: (e[0], e[1]))
    pos = 0
    for begin, end, name, _ in entries:
        if begin != pos:
            raise CorruptModelFileError(
                f"{where}: tensor {_short(name)} occupies bytes [{begin}, {end}) but the next "
                f"free byte is {pos} (tensor data must be back to back, without gaps or "
                "overlaps).")
        pos = end
    if pos != data_len:
        raise CorruptModelFileError(
            f"{where}: the tensors cover {pos} bytes of data but the section holds {data_len}.")
    out = {}
    for begin, end, name, shape in entries:
        count = (end - begin) // 4
        a = np.frombuffer(blob, dtype=_TENSOR_DTYPES["F32"], count=count,
                          offset=data_start + begin)
        out[name] = a.reshape(shape).astype(np.float32, copy=True)
    return out


def _check_tensor_entry(where, name, info, data_len):
    """Validate one tensor table entry; return (begin, end, name, shape)."""
    label = f"{where}: tensor {_short(name)}"
    if not name:
        raise CorruptModelFileError(f"{where}: a tensor has an empty name.")
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise CorruptModelFileError(
            f"{label} is not described by exactly dtype, shape and data_offsets "
            f"({_short(info)}).")
    dtype = info["dtype"]
    if not isinstance(dtype, str) or dtype not in _TENSOR_DTYPES:
        raise CorruptModelFileError(
            f"{label} has dtype {_short(dtype)}; model files hold float32 (F32) only.")
    shape, offsets = info["shape"], info["data_offsets"]
    if not (isinstance(shape, list) and len(shape) <= MAX_NDIM
            and all(_is_int(d) and d >= 0 for d in shape)):
        raise CorruptModelFileError(
            f"{label} has an invalid shape {_short(shape)} (a list of at most {MAX_NDIM} "
            "non-negative integers).")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_len):
        raise CorruptModelFileError(
            f"{label} has invalid data_offsets {_short(offsets)} (the data holds {data_len} "
            "bytes).")
    itemsize = _TENSOR_DTYPES[dtype].itemsize
    # Bound the declared shape by the data before multiplying it out: even a
    # zero-size tensor may not declare more elements than the data could hold.
    # A zero-size tensor holds no data, but its other dimensions are still
    # bounded so that no later product of them can become absurd.
    if 0 in shape:
        if any(d > 2**31 for d in shape):
            raise CorruptModelFileError(
                f"{label} declares an absurd shape {_short(shape)}.")
        count = 0
    else:
        count = 1
        for d in shape:
            count *= d
            if count * itemsize > data_len:
                raise CorruptModelFileError(
                    f"{label} declares shape {_short(shape)}, larger than the section's "
                    f"{data_len} bytes of data.")
    if count * itemsize != offsets[1] - offsets[0]:
        raise CorruptModelFileError(
            f"{label} has shape {_short(shape)} ({count * itemsize} bytes of {dtype}) but "
            f"data_offsets {offsets} span {offsets[1] - offsets[0]} bytes.")
    return offsets[0], offsets[1], name, tuple(shape)


def encode_tensors(arrays):
    """Encode a dict of arrays as safetensors bytes (float32, C order)."""
    from safetensors.numpy import save as st_save
    clean = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise ModelFileError(f"Tensor names must be non-empty strings, got {name!r}.")
        clean[name] = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
    return st_save(clean)


def _toolkit_version():
    from . import __version__
    return __version__


def _mxnet_version():
    # Recorded for humans only. Reading the installed distribution's metadata
    # avoids importing mxnet just to save a file.
    try:
        from importlib.metadata import version
        return version("mxnet")
    except Exception:  # noqa: BLE001 - any failure just means "unknown"
        return "unknown"


def writer_version(header):
    """The toolkit version a (not yet verified) header says wrote it, for messages."""
    who = header.get("written_by", {})
    return who.get("toolkit", "unknown") if isinstance(who, dict) else "unknown"


def build_header(task, file_version, state, kind="model", extra=None):
    header = {
        "format": "toolkit-model",
        "kind": kind,
        "task": task,
        "file_version": int(file_version),
        "written_by": {
            "toolkit": _toolkit_version(),
            "mxnet": _mxnet_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
        "state": state,
    }
    if extra:
        header.update(extra)
    return header


def serialize(header, sections):
    """Return the bytes of a model file: ``sections`` maps name -> bytes."""
    header = dict(header)
    spans, pos = {}, 0
    for name, blob in sections.items():
        spans[name] = {"offset": pos, "length": len(blob)}
        pos += len(blob)
    header["sections"] = spans
    try:
        header_bytes = json.dumps(header, sort_keys=True, allow_nan=False,
                                  separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"Model state is not JSON-serialisable: {e}") from None
    body = header_bytes + b"".join(sections.values())
    digest = hashlib.sha256(body).digest()
    return _PREAMBLE.pack(MAGIC, CONTAINER_VERSION, len(header_bytes), digest) + body


def _write_reason(e):
    """Why an OSError stopped a write, in words (no temporary file names)."""
    import errno
    code = getattr(e, "errno", None)
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied (the directory cannot be written by this user)"
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return "no space left on the device (the disk or quota is full)"
    if code == errno.EROFS:
        return "the file system is read-only"
    return e.strerror or str(e)


def _write_error(path, e):
    from .errors import ModelFileWriteError
    err = ModelFileWriteError(
        f"Cannot save to '{path}': {_write_reason(e)}. Any earlier file at that path is "
        "unchanged. Free some space or choose a writable location.")
    err.errno = getattr(e, "errno", None)
    err.reason = _write_reason(e)
    return err


def write_target(path):
    """The file a write to ``path`` replaces: symlinks are followed (written through).

    Saving over a symlink writes the file the link points to, as ``open(path,
    'w')`` would, and leaves the link in place (docs/model_format.md).
    """
    return os.path.realpath(os.fspath(path))


def check_writable(path):
    """Raise :class:`~toolkit.errors.ModelFileWriteError` when a file cannot be created
    next to ``path``'s target (permissions, a read-only or full file system).

    It creates and removes a temporary file, the same operation a save starts
    with: ``os.access`` would say yes to root on a read-only mount.
    """
    directory = os.path.dirname(write_target(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".toolkit-probe.", suffix=".tmp")
    except OSError as e:
        raise _write_error(path, e) from None
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:
        pass


def atomic_write(path, data):
    """Write bytes to ``path`` so that readers see the old file or the new one, never a mix.

    The bytes go to a temporary file in the same directory, are flushed to
    disk, and the temporary file is renamed over the target (atomic on POSIX
    and on Windows for files on one volume). A symlink at ``path`` is followed:
    the file it points to is replaced and the link stays.

    Raises
    ------
    toolkit.errors.ModelFileWriteError
        The file cannot be written (permission denied, disk full, read-only
        file system); the message names ``path``, not the temporary file, and
        any earlier file at ``path`` is intact.
    toolkit.errors.ModelFileError
        The directory does not exist or ``path`` is a directory.
    """
    path = os.fspath(path)
    target = write_target(path)
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise ModelFileError(
            f"Cannot save to '{path}': the directory '{directory}' does not exist.")
    if os.path.isdir(target):
        raise ModelFileError(f"Cannot save to '{path}': it is a directory; give a file path.")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(target) + ".",
                                   suffix=".tmp")
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        # mkstemp creates the file 0600; give it the mode an ordinary new file
        # would get (0666 less the umask), or keep the mode of the file replaced.
        try:
            mode = os.stat(target).st_mode & 0o7777
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
