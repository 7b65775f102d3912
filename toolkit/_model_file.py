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

Nothing here imports mxnet or unpickles anything.
"""

import datetime
import hashlib
import json
import os
import struct
import tempfile

import numpy as np

from .errors import (CorruptModelFileError, ModelFileError, ModelFileNotFoundError,
                     NotAModelFileError, UnsupportedVersionError)

MAGIC = b"\x89TKMODL\n"
CONTAINER_VERSION = 1
_PREAMBLE = struct.Struct("<8sIQ32s")
PREAMBLE_SIZE = _PREAMBLE.size  # 52

# Bounds checked before anything is allocated from a declared size: a
# hostile or damaged file must not make the loader allocate gigabytes.
MAX_HEADER_BYTES = 16 * 2**20
MAX_FILE_BYTES = 4 * 2**30
MAX_TENSORS = 100_000
ALLOWED_DTYPES = ("float32",)

PACKAGE_NAME = "toolkit"


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


def _check_path(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileNotFoundError(f"No model file at '{path}': the path does not exist.")
    if os.path.isdir(path):
        raise ModelFileNotFoundError(
            f"'{path}' is a directory; load_model expects the path of a model file "
            "written by model.save().")
    return path


def read_preamble(path):
    """Read and check the fixed preamble; return (container_version, header_len, digest, size)."""
    path = _check_path(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(PREAMBLE_SIZE)
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


def read_model_file(path, version_gate=None):
    """Read, gate and verify a model file.

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
    cversion, header_len, digest, size = read_preamble(path)
    path = os.fspath(path)
    with open(path, "rb") as f:
        f.seek(PREAMBLE_SIZE)
        body = f.read()
    if len(body) != size - PREAMBLE_SIZE:
        raise CorruptModelFileError(f"'{path}' changed while it was being read; try again.")
    header_bytes = body[:header_len]
    header = None
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        header = None
    if isinstance(header, dict) and version_gate is not None:
        version_gate(header)
    if hashlib.sha256(body).digest() != digest:
        raise CorruptModelFileError(
            f"'{path}' is damaged: its checksum does not match its contents (a changed, "
            "truncated or partly copied file). Use an intact copy of the file.")
    if not isinstance(header, dict):
        raise CorruptModelFileError(f"'{path}' is damaged: its header is not a JSON object.")
    sections = _split_sections(path, header, body[header_len:])
    return ModelFile(path, cversion, header, sections)


def _split_sections(path, header, payload):
    declared = header.get("sections")
    for key in ("task", "sections"):
        if key not in header:
            raise CorruptModelFileError(f"'{path}' is damaged: its header has no '{key}' field.")
    if not isinstance(declared, dict):
        raise CorruptModelFileError(f"'{path}' is damaged: 'sections' is not an object.")
    spans = []
    for name, span in declared.items():
        if not (isinstance(span, dict) and isinstance(span.get("offset"), int)
                and isinstance(span.get("length"), int)
                and not isinstance(span.get("offset"), bool)
                and span["offset"] >= 0 and span["length"] >= 0):
            raise CorruptModelFileError(
                f"'{path}' is damaged: section '{name}' has an invalid offset/length {span!r}.")
        spans.append((span["offset"], span["offset"] + span["length"], name))
    spans.sort()
    pos = 0
    for start, end, name in spans:
        if start != pos:
            raise CorruptModelFileError(
                f"'{path}' is damaged: section '{name}' starts at {start}, expected {pos} "
                "(sections must be back to back with no gaps or overlaps).")
        pos = end
    if pos != len(payload):
        raise CorruptModelFileError(
            f"'{path}' is damaged: the sections cover {pos} bytes but the payload has "
            f"{len(payload)}.")
    return {name: payload[start:end] for start, end, name in spans}


def decode_tensors(blob, where):
    """Decode a safetensors blob with bounds and dtype checks; never unpickles."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load
    # The safetensors header is checked here too (size, dtypes, count) before
    # the parser allocates anything from it.
    if len(blob) < 8:
        raise CorruptModelFileError(f"{where}: tensor section is truncated ({len(blob)} bytes).")
    (hlen,) = struct.unpack("<Q", blob[:8])
    if hlen > min(len(blob) - 8, MAX_HEADER_BYTES):
        raise CorruptModelFileError(f"{where}: tensor header length {hlen} is out of range.")
    try:
        meta = json.loads(blob[8:8 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CorruptModelFileError(f"{where}: tensor header is not valid JSON ({e}).") from None
    if not isinstance(meta, dict) or len(meta) > MAX_TENSORS:
        raise CorruptModelFileError(f"{where}: tensor header is not a valid table of tensors.")
    for name, info in meta.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if dtype not in ("F32",):
            raise CorruptModelFileError(
                f"{where}: tensor '{name}' has dtype {dtype!r}; model files hold float32 only.")
    try:
        arrays = st_load(bytes(blob))
    except (SafetensorError, ValueError, TypeError, OverflowError, MemoryError) as e:
        raise CorruptModelFileError(f"{where}: tensor data is invalid ({e}).") from None
    return {k: np.array(v, dtype=np.float32, copy=True) for k, v in arrays.items()}


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


def atomic_write(path, data):
    """Write bytes to ``path`` so that readers see the old file or the new one, never a mix.

    The bytes go to a temporary file in the same directory, are flushed to
    disk, and the temporary file is renamed over the target (atomic on POSIX
    and on Windows for files on one volume).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ModelFileError(
            f"Cannot save to '{path}': the directory '{directory}' does not exist.")
    if os.path.isdir(path):
        raise ModelFileError(f"Cannot save to '{path}': it is a directory; give a file path.")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        # mkstemp creates the file 0600; give it the mode an ordinary new file
        # would get (0666 less the umask), or keep the mode of the file replaced.
        try:
            mode = os.stat(path).st_mode & 0o7777
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
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
