"""Mutations of real model files, shared by tests/test_model_file_fuzz.py and
benchmarks/fuzz_model_file.py.

A mutation takes the bytes of a real model file and returns damaged or edited
bytes plus what a correct reader must do with them (an *expectation*):

``MUST_FAIL``
    the reader must raise a :class:`toolkit.errors.ToolkitError` (raw damage:
    the checksum, the preamble checks or the size checks must catch it);
``SAME``
    the reader may refuse the file with a ToolkitError, and if it accepts it
    the weights must be identical to the original's (container-level edits
    with a recomputed checksum: header JSON, section table);
``("ref", blob)``
    the weights section was replaced by ``blob`` (a safetensors table with a
    lie in it, re-wrapped in a valid container): :func:`reference_tensors`,
    a separate strict decoder written from the format's rules, says whether
    the blob is valid and what it holds; the reader must agree exactly.

Randomness comes from a *drawer* with ``int(lo, hi)`` (inclusive) and
``choice(seq)``: :class:`HypothesisDrawer` (the tests: shrinkable) or
:class:`RandomDrawer` (the benchmark script: fast).
"""

import hashlib
import json
import math
import struct

import numpy as np

from toolkit import _model_file as MF

MUST_FAIL = "must_fail"
SAME = "same"

_PRE = struct.Struct("<8sIQ32s")


# --- drawers -------------------------------------------------------------

class RandomDrawer:
    def __init__(self, rng):
        self.rng = rng

    def int(self, lo, hi):
        return self.rng.randint(lo, hi)

    def choice(self, seq):
        return seq[self.rng.randrange(len(seq))]


class HypothesisDrawer:
    def __init__(self, data):
        from hypothesis import strategies as st
        self._st = st
        self.data = data

    def int(self, lo, hi):
        return self.data.draw(self._st.integers(lo, hi))

    def choice(self, seq):
        return seq[self.data.draw(self._st.integers(0, len(seq) - 1))]


# --- layout of the original file ----------------------------------------

class Layout:
    """The parts of a real (intact) model file."""

    def __init__(self, data):
        self.data = bytes(data)
        magic, self.version, self.hlen, self.digest = _PRE.unpack(self.data[:52])
        assert magic == MF.MAGIC
        self.header_bytes = self.data[52:52 + self.hlen]
        self.header = json.loads(self.header_bytes)
        self.payload = self.data[52 + self.hlen:]
        span = self.header["sections"]["weights"]
        assert span["offset"] == 0 and span["length"] == len(self.payload)
        self.blob = self.payload
        (self.st_hlen,) = struct.unpack("<Q", self.blob[:8])
        self.st_header_bytes = self.blob[8:8 + self.st_hlen]
        self.st_meta = json.loads(self.st_header_bytes)
        self.st_data = self.blob[8 + self.st_hlen:]
        self.tensor_names = sorted(k for k in self.st_meta if k != "__metadata__")
        p = 52 + self.hlen
        # Regions of the file, as [start, end) byte ranges.
        self.regions = {
            "magic": (0, 8),
            "container_version": (8, 12),
            "header_length": (12, 20),
            "digest": (20, 52),
            "header": (52, p),
            "tensor_header_length": (p, p + 8),
            "tensor_header": (p + 8, p + 8 + self.st_hlen),
            "tensor_data": (p + 8 + self.st_hlen, len(self.data)),
        }
        self.tensors = reference_tensors(self.blob)
        assert self.tensors is not None, "the original file must be valid"


def container(header_bytes, payload, version=MF.CONTAINER_VERSION, header_len=None,
              digest=None, magic=MF.MAGIC):
    body = header_bytes + payload
    if digest is None:
        digest = hashlib.sha256(body).digest()
    if header_len is None:
        header_len = len(header_bytes)
    return _PRE.pack(magic, version, header_len, digest) + body


def dump_header(header):
    deep = []

    def placeholder(obj):
        if isinstance(obj, _Deep):
            deep.append(obj.depth)
            return f"\x00deep{len(deep) - 1}"
        raise TypeError(type(obj).__name__)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), default=placeholder)
    for i, depth in enumerate(deep):
        text = text.replace(json.dumps(f"\x00deep{i}"), "[" * depth + "]" * depth, 1)
    return text.encode("utf-8")


def with_blob(L, blob):
    """A valid container around a replacement weights section."""
    header = json.loads(L.header_bytes)
    header["sections"] = {"weights": {"offset": 0, "length": len(blob)}}
    return container(dump_header(header), blob)


def st_blob(meta_text, data, hlen=None, pad=True):
    """A safetensors blob from header text (bytes) and data; pads like safetensors."""
    if pad and len(meta_text) % 8:
        meta_text = meta_text + b" " * (8 - len(meta_text) % 8)
    if hlen is None:
        hlen = len(meta_text)
    return struct.pack("<Q", hlen % 2**64) + meta_text + data


def meta_text(pairs):
    """JSON object text from (key, value) pairs; keeps duplicate keys."""
    return ("{" + ",".join(json.dumps(k) + ":" + json.dumps(v, separators=(",", ":"))
                           for k, v in pairs) + "}").encode("utf-8")


# --- the reference decoder ----------------------------------------------

class _Invalid(Exception):
    pass


def _strict_json(raw):
    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise _Invalid("duplicate key")
            out[k] = v
        return out

    def constant(name):
        raise _Invalid("NaN/Infinity")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=pairs,
                          parse_constant=constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _Invalid("not JSON") from None


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def reference_tensors(blob):
    """Decode a weights section by the format's rules; None if it breaks any rule.

    The rules (docs/model_format.md): an 8-byte little-endian header length N
    (at most the blob and at most MAX_HEADER_BYTES), N bytes of UTF-8 JSON
    starting with ``{`` (an object, no duplicate keys, no NaN), then the data.
    Each entry other than ``__metadata__`` (an object of strings) has a
    non-empty name and exactly ``dtype`` ("F32"), ``shape`` (at most MAX_NDIM
    non-negative ints) and ``data_offsets`` ([begin, end] ints inside the
    data); end - begin is 4 * prod(shape); a zero-size tensor's dims are at most
    2**31 (safetensors itself writes e.g. shape [0, 1] with no data). Sorted by offsets, the ranges are back to back
    from 0 to the data's length.
    """
    try:
        return _reference(bytes(blob))
    except _Invalid:
        return None


def _reference(blob):
    if len(blob) < 8:
        raise _Invalid("short")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8 or n > MF.MAX_HEADER_BYTES:
        raise _Invalid("header length")
    raw = blob[8:8 + n]
    if raw[:1] != b"{":
        raise _Invalid("header start")
    meta = _strict_json(raw)
    if not isinstance(meta, dict):
        raise _Invalid("not an object")
    data = blob[8 + n:]
    entries = []
    for name, info in meta.items():
        if name == "__metadata__":
            if not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise _Invalid("metadata")
            continue
        if not name or not isinstance(info, dict) \
                or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _Invalid("entry")
        if info["dtype"] != "F32":
            raise _Invalid("dtype")
        shape, offsets = info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and len(shape) <= MF.MAX_NDIM
                and all(_is_int(d) and d >= 0 for d in shape)):
            raise _Invalid("shape")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(_is_int(o) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= len(data)):
            raise _Invalid("offsets")
        if 0 in shape:
            if any(d > 2**31 for d in shape):
                raise _Invalid("absurd zero-size shape")
        elif math.prod(shape) * 4 > len(data):
            raise _Invalid("huge shape")
        if math.prod(shape) * 4 != offsets[1] - offsets[0]:
            raise _Invalid("size")
        entries.append((offsets[0], offsets[1], name, shape))
    if len(entries) > MF.MAX_TENSORS:
        raise _Invalid("count")
    pos = 0
    for begin, end, _, _ in sorted(entries):
        if begin != pos:
            raise _Invalid("gap or overlap")
        pos = end
    if pos != len(data):
        raise _Invalid("coverage")
    out = {}
    for begin, end, name, shape in entries:
        a = np.frombuffer(data[begin:end], dtype="<f4").reshape(shape)
        out[name] = a.astype(np.float32)
    return out


def same_tensors(a, b):
    """Exact equality of two {name: array} dicts (bitwise, NaN-safe)."""
    if sorted(a) != sorted(b):
        return False
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return False
    return True


# --- mutations ------------------------------------------------------------

REGION_NAMES = ("magic", "container_version", "header_length", "digest", "header",
                "tensor_header_length", "tensor_header", "tensor_data")


def _pos_in(d, L, region):
    lo, hi = L.regions[region]
    return d.int(lo, hi - 1)


def _raw(L, out):
    return out, (SAME if out == L.data else MUST_FAIL)


def m_flip_bits(d, L):
    """Flip 1-8 bits anywhere (no checksum fix)."""
    out = bytearray(L.data)
    for _ in range(d.int(1, 8)):
        i = _pos_in(d, L, d.choice(REGION_NAMES))
        out[i] ^= 1 << d.int(0, 7)
    return _raw(L, bytes(out))


def m_set_bytes(d, L):
    """Overwrite a run of 1-16 bytes with one value (no checksum fix)."""
    out = bytearray(L.data)
    i = _pos_in(d, L, d.choice(REGION_NAMES))
    value = d.choice((0, 0xFF, 0x20, 0x7B, 0x22, d.int(0, 255)))
    for j in range(i, min(len(out), i + d.int(1, 16))):
        out[j] = value
    return _raw(L, bytes(out))


def m_truncate(d, L):
    """Cut the file inside any region (or keep only 0..2 bytes)."""
    region = d.choice(REGION_NAMES + ("tiny",))
    if region == "tiny":
        cut = d.int(0, 2)
    else:
        lo, hi = L.regions[region]
        cut = d.choice((lo, hi - 1, d.int(lo, hi - 1)))
    return L.data[:cut], MUST_FAIL


def m_insert_or_append(d, L):
    """Insert or append 1-64 bytes (no checksum fix)."""
    extra = bytes([d.int(0, 255)]) * d.int(1, 64)
    if d.int(0, 1):
        return L.data + extra, MUST_FAIL
    i = _pos_in(d, L, d.choice(REGION_NAMES))
    return L.data[:i] + extra + L.data[i:], MUST_FAIL


def m_delete_bytes(d, L):
    """Delete 1-64 bytes somewhere (no checksum fix)."""
    i = _pos_in(d, L, d.choice(REGION_NAMES))
    return L.data[:i] + L.data[i + d.int(1, 64):], MUST_FAIL


def m_preamble_field(d, L):
    """Lie in a preamble field; the body and its checksum are left intact."""
    field = d.choice(("header_length", "header_length", "container_version", "magic",
                      "digest"))
    magic, version, hlen, digest = MF.MAGIC, L.version, L.hlen, L.digest
    size = len(L.data)
    if field == "header_length":
        hlen = d.choice((0, 1, 2, 7, 8, L.hlen - 1, L.hlen + 1, L.hlen - d.int(1, 64),
                         L.hlen + d.int(1, 64), size - 52, size - 51, size,
                         MF.MAX_HEADER_BYTES, MF.MAX_HEADER_BYTES + 1, 2**31, 2**32,
                         2**63 - 1, 2**63, 2**64 - 1, 2**64 - d.int(1, 2**16),
                         d.int(0, 2**64 - 1)))
    elif field == "container_version":
        version = d.choice((0, 2, 3, 255, 2**31, 2**32 - 1, d.int(0, 2**32 - 1)))
    elif field == "magic":
        magic = d.choice((b"\x00" * 8, b"\x89TKMODL\r", b"\x89PNG\r\n\x1a\n",
                          b"\x80\x04\x95\x00\x00\x00\x00\x00", b"PK\x03\x04\x00\x00\x00\x00",
                          bytes([d.int(0, 255)]) + MF.MAGIC[1:]))
    else:
        digest = bytes([d.int(0, 255)]) * 32
    out = _PRE.pack(magic, version, hlen, digest) + L.data[52:]
    return _raw(L, out)


# Values a JSON edit may put anywhere.
def _weird_value(d, L):
    return d.choice((
        None, True, False, 0, 1, -1, 2, 3, 400, 401, 2**31, 2**63, 2**64, -2**63, 10**30,
        1.5, -0.0, 1e308, "", "x", "activity_classifier", "sound_classifier", "model",
        "checkpoint", "A" * d.int(0, 2000), [], [1], ["a"] * d.int(0, 40), [0.0] * 6, {},
        {"a": 1}, {"weights": {"offset": 0, "length": len(L.payload)}},
        {"toolkit": "99.0.0"}, "\u0000\ud800",
        _nested(d.choice((d.int(1, 300), 900, 950, 990, 1200))),
        {"offset": True, "length": len(L.payload)},
        d.int(-2**70, 2**70),
    ))


class _Deep:
    """A list nested ``depth`` deep, written straight as JSON text by dump_header."""

    def __init__(self, depth):
        self.depth = depth


def _nested(depth):
    return _Deep(depth)


def m_json_edit(d, L):
    """Edit the header JSON (1-3 edits) and re-serialise it with a good checksum."""
    header = json.loads(L.header_bytes)
    for _ in range(d.int(1, 3)):
        target = d.choice(("top", "top", "state", "state", "state", "written_by",
                           "sections", "weights_span"))
        if target == "top":
            obj = header
        elif target == "weights_span":
            obj = header.get("sections")
            obj = obj.get("weights") if isinstance(obj, dict) else None
        else:
            obj = header.get(target)
        if not isinstance(obj, dict):
            obj = header
        keys = sorted(obj) or ["new"]
        key = d.choice(keys + ["unknown_field", "weights", "extra"])
        op = d.choice(("delete", "set", "set", "set", "type", "bump"))
        if op == "delete":
            obj.pop(key, None)
        elif op == "set":
            obj[key] = _weird_value(d, L)
        elif op == "type":
            v = obj.get(key)
            obj[key] = ([v] if not isinstance(v, list) else {"v": v}) if d.int(0, 1) \
                else dump_header(v).decode("utf-8")
        else:
            v = obj.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                obj[key] = v + d.choice((-1, 1, -v, 2**63, d.int(-1000, 1000)))
            elif isinstance(v, list) and v:
                obj[key] = v[:-1] if d.int(0, 1) else v + v[-1:]
            elif isinstance(v, str):
                obj[key] = v + "x"
            else:
                obj[key] = _weird_value(d, L)
    return container(dump_header(header), L.payload), SAME


def m_sections_lie(d, L):
    """Lie about the section table (offsets, lengths, overlaps, extra sections)."""
    header = json.loads(L.header_bytes)
    payload = L.payload
    n = len(payload)
    k = d.int(1, 64)
    op = d.choice(("offset", "length", "both", "overlap", "extra_end", "extra_zero",
                   "missing", "trailing", "type", "huge", "gap"))
    w = {"offset": 0, "length": n}
    sections = {"weights": w}
    if op == "offset":
        w["offset"] = d.choice((k, -k, n, n + k, 2**63, 2**64, -2**63))
    elif op == "length":
        w["length"] = d.choice((n - k, n + k, 0, -1, 2**63, 2**64 + n, -n))
    elif op == "both":
        w["offset"], w["length"] = k, n - k
    elif op == "overlap":
        sections["optimizer"] = {"offset": d.int(0, n - 1), "length": d.int(1, 64)}
    elif op == "extra_end":
        sections["optimizer"] = {"offset": n, "length": k}
        if d.int(0, 1):
            payload = payload + b"\x00" * k
    elif op == "extra_zero":
        sections[d.choice(("a", "optimizer", ""))] = {"offset": d.choice((0, n)), "length": 0}
    elif op == "missing":
        sections = {d.choice(("weight", "optimizer", "Weights")): w}
    elif op == "trailing":
        payload = payload + b"\x00" * k
    elif op == "type":
        w[d.choice(("offset", "length"))] = d.choice((True, False, None, 1.0, "0", [0], {}))
    elif op == "huge":
        sections["big"] = {"offset": n, "length": 2**62}
    else:
        sections["optimizer"] = {"offset": n + k, "length": 1}
        payload = payload + b"\x00" * (k + 1)
    header["sections"] = sections
    return container(dump_header(header), payload), SAME


def m_header_text(d, L):
    """Edit the header's bytes (flips, runs, cuts) and fix length and checksum."""
    hb = bytearray(L.header_bytes)
    op = d.choice(("flip", "flip", "set", "cut", "insert"))
    i = d.int(0, len(hb) - 1)
    if op == "flip":
        for _ in range(d.int(1, 4)):
            hb[d.int(0, len(hb) - 1)] ^= 1 << d.int(0, 7)
    elif op == "set":
        v = d.choice((0x20, 0x22, 0x7B, 0x7D, 0x2C, 0x5B, 0x00, 0xFF, 0x80))
        for j in range(i, min(len(hb), i + d.int(1, 8))):
            hb[j] = v
    elif op == "cut":
        del hb[i:i + d.int(1, 64)]
    else:
        hb[i:i] = d.choice((b" ", b",", b"{}", b'"a":1,', b"\xef\xbb\xbf", b"\\u0000"))
    return container(bytes(hb), L.payload), SAME


def m_header_replace(d, L):
    """Replace the header with odd JSON texts (good checksum)."""
    original = L.header_bytes
    task_pair = b'"task":"activity_classifier"'
    choice = d.choice((
        b"", b" ", b"[]", b"null", b"1", b'"x"', b"{}", b"true",
        b"[" * d.int(1, 200000), b'{"a":' * d.int(1, 100000),
        b"\xff\xfe" + original, b"\xef\xbb\xbf" + original, original + b" ",
        original[:-1] + b',"task":"other"}', original[:-1] + b',"sections":{}}',
        original[:-1] + b',"x":NaN}', original[:-1] + b',"x":Infinity}',
        original[:-1] + b',"x":' + b"1" * d.int(4000, 5000) + b"}",
        original[:-1] + b',"x":1e99999}', original[:-1] + b',"state":[]}',
        original.replace(task_pair, task_pair + b"," + task_pair),
        original.replace(b'"file_version":1', b'"file_version":1.0'),
        original.replace(b'"file_version":1', b'"file_version":true'),
        original.replace(b'"file_version":1', b'"file_version":99'),
        original.replace(b'"file_version":1', b'"file_version":-1'),
        original.replace(b'"file_version":1', b'"file_version":0'),
        original.replace(b'"activity_classifier"', b'"\\u0061ctivity_classifier"'),
        original.replace(b'"written_by":', b'"written_by":"me","x":'),
        original.replace(b'"written_by":', b'"written_by":[1],"x":'),
        original.replace(b'"activity_classifier"', b'"nope"').replace(
            b'"written_by":', b'"written_by":"me","x":'),
        original.replace(b'"activity_classifier"', b'"nope"').replace(
            b'"written_by":', b'"written_by":[],"x":'),
        original.replace(b'"activity_classifier"', b'["activity_classifier"]'),
        original.replace(b'"activity_classifier"', b'{"a":1}'),
    ))
    return container(choice, L.payload), SAME


# --- lies inside the weights section (the safetensors table) ---------------

def _meta_pairs(L):
    return [(k, dict(v)) if isinstance(v, dict) else (k, v) for k, v in L.st_meta.items()]


def _pick_tensor(d, L):
    return d.choice(L.tensor_names)


def m_st_dtype(d, L):
    """A tensor says it is not float32."""
    meta = json.loads(L.st_header_bytes)
    meta[_pick_tensor(d, L)]["dtype"] = d.choice(
        ("F16", "BF16", "F64", "I32", "I64", "U8", "I8", "BOOL", "f32", "F32 ", "", None, 1,
         [], "F8_E4M3", "C64", "float32", "<f4", "O", "V4"))
    return _st(L, meta_text(meta.items()), L.st_data)


def m_st_shape(d, L):
    """A tensor declares another shape (some keep the size: a valid reinterpretation)."""
    meta = json.loads(L.st_header_bytes)
    name = _pick_tensor(d, L)
    shape = list(meta[name]["shape"])
    op = d.choice(("reverse", "add1", "drop", "scale", "neg", "huge", "zero_huge", "ndim",
                   "float", "str", "bool", "empty", "split", "nested"))
    if op == "reverse":
        shape = shape[::-1]
    elif op == "add1":
        shape.insert(d.int(0, len(shape)), 1)
    elif op == "drop" and shape:
        shape.pop(d.int(0, len(shape) - 1))
    elif op == "scale" and shape:
        i = d.int(0, len(shape) - 1)
        shape[i] = shape[i] * d.choice((2, 3, 0)) + d.choice((0, 1, -1))
    elif op == "neg":
        shape = [-d.int(1, 2**63)] + shape[1:]
    elif op == "huge":
        shape = d.choice(([2**62], [2**64 - 1], [2**64], [2**32, 2**32], [2**31] * 4,
                          [10**40], shape + [2**63]))
    elif op == "zero_huge":
        shape = [0, d.choice((2**20, 2**40, 2**62, 2**64 - 1, 2**70))]
        meta[name]["data_offsets"] = [0, 0] if d.int(0, 1) else meta[name]["data_offsets"]
    elif op == "ndim":
        shape = [1] * d.choice((31, 32, 33, 64, 1000)) + shape
    elif op == "float":
        shape = [float(x) for x in shape]
    elif op == "str":
        shape = [str(x) for x in shape]
    elif op == "bool":
        shape = [True] + shape
    elif op == "empty":
        shape = []
    elif op == "split" and shape:
        s = shape[-1]
        shape = shape[:-1] + ([2, s // 2] if s % 2 == 0 else [s, 1])
    else:
        shape = [shape]
    meta[name]["shape"] = shape
    return _st(L, meta_text(meta.items()), L.st_data)


def m_st_offsets(d, L):
    """Tensor byte ranges lie: swapped, duplicated, overlapping, out of range."""
    meta = json.loads(L.st_header_bytes)
    a, b = _pick_tensor(d, L), _pick_tensor(d, L)
    oa, ob = meta[a]["data_offsets"], meta[b]["data_offsets"]
    n = len(L.st_data)
    k = d.int(1, 64)
    op = d.choice(("swap", "same", "shift_begin", "shift_end", "shift_both", "range",
                   "reverse", "len", "type", "swap_same_size"))
    if op == "swap":
        meta[a]["data_offsets"], meta[b]["data_offsets"] = ob, oa
    elif op == "swap_same_size":
        sizes = {}
        for name in L.tensor_names:
            o = meta[name]["data_offsets"]
            sizes.setdefault(o[1] - o[0], []).append(name)
        group = d.choice([g for g in sizes.values() if len(g) > 1] or [[a, b]])
        x, y = d.choice(group), d.choice(group)
        meta[x]["data_offsets"], meta[y]["data_offsets"] = (meta[y]["data_offsets"],
                                                            meta[x]["data_offsets"])
    elif op == "same":
        meta[a]["data_offsets"] = list(ob)
    elif op == "shift_begin":
        meta[a]["data_offsets"] = [oa[0] + d.choice((k, -k)), oa[1]]
    elif op == "shift_end":
        meta[a]["data_offsets"] = [oa[0], oa[1] + d.choice((k, -k))]
    elif op == "shift_both":
        s = d.choice((4, -4, k, -k))
        meta[a]["data_offsets"] = [oa[0] + s, oa[1] + s]
    elif op == "range":
        meta[a]["data_offsets"] = d.choice(([n, n + oa[1] - oa[0]], [2**63, 2**63 + 4],
                                            [2**64 - 4, 2**64], [-4, 0], [0, 2**70]))
    elif op == "reverse":
        meta[a]["data_offsets"] = [oa[1], oa[0]]
    elif op == "len":
        meta[a]["data_offsets"] = d.choice(([oa[0]], oa + [oa[1]], [], oa[0]))
    else:
        meta[a]["data_offsets"] = d.choice(([float(oa[0]), float(oa[1])],
                                            [str(oa[0]), str(oa[1])], [True, oa[1]], None))
    return _st(L, meta_text(meta.items()), L.st_data)


def m_st_table(d, L):
    """Duplicate, missing, renamed and extra entries; metadata; extra fields."""
    pairs = _meta_pairs(L)
    n = len(L.st_data)
    op = d.choice(("dup", "dup_lie", "delete", "rename", "empty_name", "meta_ok", "meta_bad",
                   "extra_field", "missing_field", "zero_tensor", "zero_huge", "overlap_new",
                   "info_type", "many"))
    i = d.int(0, len(pairs) - 1)
    data = L.st_data
    if op == "dup":
        pairs.insert(d.int(0, len(pairs)), pairs[i])
    elif op == "dup_lie":
        name, info = pairs[i]
        lie = dict(info, data_offsets=[0, info["data_offsets"][1] - info["data_offsets"][0]])
        pairs.insert(d.int(0, len(pairs)), (name, lie))
    elif op == "delete":
        pairs.pop(i)
    elif op == "rename":
        pairs[i] = (d.choice(("x", pairs[i][0] + " ", pairs[i][0].upper(), "__metadata__",
                              pairs[(i + 1) % len(pairs)][0], "\u00e9\u0000")), pairs[i][1])
    elif op == "empty_name":
        pairs[i] = ("", pairs[i][1])
    elif op == "meta_ok":
        pairs.insert(0, ("__metadata__", {"format": "pt", "x": ""}))
    elif op == "meta_bad":
        pairs.insert(0, ("__metadata__", d.choice(({"a": 1}, [], "x", None, {"a": None}))))
    elif op == "extra_field":
        pairs[i] = (pairs[i][0], dict(pairs[i][1], extra=1))
    elif op == "missing_field":
        info = dict(pairs[i][1])
        info.pop(d.choice(("dtype", "shape", "data_offsets")))
        pairs[i] = (pairs[i][0], info)
    elif op == "zero_tensor":
        pairs.append(("zero", {"dtype": "F32", "shape": d.choice(([0], [0, 5], [3, 0, 2])),
                               "data_offsets": d.choice(([n, n], [0, 0], [8, 8]))}))
    elif op == "zero_huge":
        pairs.append(("zero", {"dtype": "F32", "shape": [0, d.choice((2**40, 2**62, 2**64))],
                               "data_offsets": [n, n]}))
    elif op == "overlap_new":
        b = d.int(0, n // 4 - 1) * 4
        pairs.append(("extra", {"dtype": "F32", "shape": [1], "data_offsets": [b, b + 4]}))
    elif op == "info_type":
        pairs[i] = (pairs[i][0], d.choice((None, [], "F32", 1)))
    else:
        extra = d.int(1, 3000)
        pairs += [(f"t{j}", {"dtype": "F32", "shape": [0], "data_offsets": [n, n]})
                  for j in range(extra)]
    return _st(L, meta_text(pairs), data)


def m_st_header_length(d, L):
    """The tensor table's own length field lies."""
    text = L.st_header_bytes
    stripped = len(text.rstrip(b" "))
    hlen = d.choice((0, 1, 7, stripped, stripped - 1, len(text) - 1, len(text) + 1,
                     len(text) + d.int(1, 4096), len(L.blob) - 8, len(L.blob) - 7,
                     MF.MAX_HEADER_BYTES + 1, 2**63, 2**64 - 1, 2**64 - d.int(1, 100)))
    return _st(L, text, L.st_data, hlen=hlen)


def m_st_text(d, L):
    """Flip or overwrite bytes of the tensor table's JSON."""
    hb = bytearray(L.st_header_bytes)
    for _ in range(d.int(1, 4)):
        i = d.int(0, len(hb) - 1)
        if d.int(0, 1):
            hb[i] ^= 1 << d.int(0, 7)
        else:
            hb[i] = d.choice((0x20, 0x22, 0x7B, 0x7D, 0x2C, 0x5D, 0x30, 0x31, 0x39, 0x2D,
                              0x00, 0xFF))
    return _st(L, bytes(hb), L.st_data, pad=False)


def m_st_replace(d, L):
    """Replace the tensor table's JSON with odd texts."""
    text = L.st_header_bytes
    choice = d.choice((b"", b"{}", b"[]", b"null", b" " + text, b"\n" + text.rstrip(b" "),
                       b"[" * d.int(1, 100000), b'{"a":' * d.int(1, 100000),
                       b"\xff" + text[1:], text.rstrip(b" ")[:-1] + b',"x":NaN}',
                       text.rstrip(b" ")[:-1] + b',"__metadata__":{"k":"v"}}',
                       text.rstrip(b" ")[:-1] + b',"__metadata__":{"k":"v"},'
                       b'"__metadata__":{"k":"w"}}'))
    return _st(L, choice, L.st_data)


def m_st_data(d, L):
    """Change tensor bytes (a valid file with other weights) or the data's length."""
    data = bytearray(L.st_data)
    op = d.choice(("flip", "flip", "nan", "cut", "append"))
    if op == "flip":
        for _ in range(d.int(1, 8)):
            data[d.int(0, len(data) - 1)] ^= 1 << d.int(0, 7)
    elif op == "nan":
        i = d.int(0, len(data) // 4 - 1) * 4
        data[i:i + 4] = d.choice((b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x01\x00\x80\xff"))
    elif op == "cut":
        del data[len(data) - d.int(1, 64):]
    else:
        data += b"\x00" * d.int(1, 64)
    return _st(L, L.st_header_bytes, bytes(data), pad=False)


def _st(L, text, data, hlen=None, pad=True):
    blob = st_blob(text, data, hlen=hlen, pad=pad)
    return with_blob(L, blob), ("ref", blob)


RAW_MUTATIONS = (m_flip_bits, m_set_bytes, m_truncate, m_insert_or_append, m_delete_bytes,
                 m_preamble_field)
HEADER_MUTATIONS = (m_json_edit, m_json_edit, m_sections_lie, m_header_text, m_header_replace)
TENSOR_MUTATIONS = (m_st_dtype, m_st_shape, m_st_offsets, m_st_table, m_st_header_length,
                    m_st_text, m_st_replace, m_st_data)
ALL_MUTATIONS = RAW_MUTATIONS + HEADER_MUTATIONS + TENSOR_MUTATIONS


def mutate(d, L, family=ALL_MUTATIONS):
    """Draw a mutation from ``family`` and apply it: (name, bytes, expectation)."""
    fn = d.choice(family)
    out, expect = fn(d, L)
    return fn.__name__[2:], out, expect


# --- running one case ------------------------------------------------------

class Outcome:
    """What happened to one case.

    ``kind``: 'ok' or 'error'; ``detail``: 'ok_identical', 'ok_other_weights'
    or the exception's class name; ``failure``: None, or why the case breaks
    the property; ``peak``: the most bytes the Python heap held during the
    load (when measured), ``seconds``: how long the load took.
    """

    def __init__(self, kind, detail, failure=None, peak=None, seconds=None):
        self.kind, self.detail, self.failure = kind, detail, failure
        self.peak, self.seconds = peak, seconds

    def __repr__(self):
        return (f"Outcome({self.kind!r}, {self.detail!r}, failure={self.failure!r}, "
                f"peak={self.peak}, seconds={self.seconds})")


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _judge(L, expect, result, err, full_load):
    """Compare an outcome with the expectation; return (kind, detail, failure)."""
    from toolkit.errors import ToolkitError
    if err is not None:
        if not isinstance(err, ToolkitError):
            return "error", type(err).__name__, (
                f"non-ToolkitError {type(err).__module__}.{type(err).__name__}: {err}")
        if not str(err).strip():
            return "error", type(err).__name__, f"{type(err).__name__} with an empty message"
        kind, detail = "error", type(err).__name__
    else:
        kind, detail = "ok", None
    if expect == MUST_FAIL:
        if kind == "ok":
            return kind, "ok", "a damaged file loaded without an error"
        return kind, detail, None
    if expect == SAME:
        if kind == "ok":
            if not same_tensors(result, L.tensors):
                return kind, "ok", "loaded, but the weights differ from the original"
            return kind, "ok_identical", None
        return kind, detail, None
    _, blob = expect
    ref = reference_tensors(blob)
    if full_load and ref is not None and not (
            sorted(ref) == sorted(L.tensors)
            and all(ref[k].shape == L.tensors[k].shape for k in ref)):
        ref = None          # valid table, but it does not fit the network
    if ref is None:
        if kind == "ok":
            return kind, "ok", "accepted a weights section that breaks the format's rules"
        return kind, detail, None
    if kind != "ok":
        return kind, detail, f"refused a valid weights section: {type(err).__name__}: {err}"
    if not same_tensors(result, ref):
        return kind, "ok", "loaded weights differ from what the file holds"
    return kind, ("ok_identical" if same_tensors(ref, L.tensors) else "ok_other_weights"), None


def run_case(L, path, data, expect, full_load=False, measure_memory=False):
    """Write ``data`` to ``path`` and read it back; return an :class:`Outcome`.

    ``full_load`` uses ``toolkit.load_model`` (rebuilds the network) instead of
    the reading layer (``open_model_file`` + ``tensors()``). ``measure_memory``
    records the Python heap's peak during the load with tracemalloc (numpy
    arrays included; mxnet's own allocations are not seen).
    """
    import time
    import tracemalloc
    _write(path, data)
    result = err = None
    started = False
    if measure_memory:
        if not tracemalloc.is_tracing():
            tracemalloc.start()
            started = True
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
    t0 = time.perf_counter()
    try:
        if full_load:
            import toolkit
            result = toolkit.load_model(path)._get_state()[1]
        else:
            from toolkit._model import open_model_file
            result = open_model_file(path).tensors()
    except Exception as e:  # noqa: BLE001 - judged below
        err = e
    seconds = time.perf_counter() - t0
    peak = None
    if measure_memory:
        peak = tracemalloc.get_traced_memory()[1] - base
        if started:
            tracemalloc.stop()
    kind, detail, failure = _judge(L, expect, result, err, full_load)
    return Outcome(kind, detail, failure, peak=peak, seconds=seconds)
