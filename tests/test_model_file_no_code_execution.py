"""Loading never runs code from a file.

A pickle payload that creates a sentinel file when unpickled is put (a) as the
whole file given to ``load_model``, (b) inside JSON header fields of a valid
model file (checksum recomputed), (c) as tensor bytes, as the weights section,
as another section and as safetensors metadata, and (d) as a ``.npy`` / pickle
read with ``toolkit._safe_pickle.restricted_loads``. The sentinel never
appears; a damaged file raises a ToolkitError, and where the payload is just
data (a JSON string, float32 bits) the load succeeds harmlessly. An audit hook
also checks that loading a model file never resolves a single pickle global.
"""

import base64
import json
import pickle
import struct
import sys

import numpy as np
import pytest

import _model_file_mutations as M
import toolkit as tc
from toolkit import _model
from toolkit._safe_pickle import UnsafePickleError, restricted_loads
from toolkit.errors import ToolkitError

FEATURES = ["ax", "ay", "az", "wx", "wy", "wz"]


def payloads(sentinel):
    """Pickles that write ``sentinel`` when unpickled, in every opcode style."""
    code = f"open({str(sentinel)!r}, 'w').write('code ran')"

    class Evil:
        def __reduce__(self):
            return (exec, (code,))
    out = {f"protocol {p}": pickle.dumps(Evil(), protocol=p) for p in range(0, 6)}
    c = code.encode()
    # Hand-written: GLOBAL+REDUCE, INST and OBJ opcodes (protocol 0/1 style).
    out["GLOBAL+REDUCE"] = b"cbuiltins\nexec\n(V" + c + b"\ntR."
    out["INST"] = b"(V" + c + b"\nibuiltins\nexec\n."
    out["OBJ"] = b"(cbuiltins\nexec\nV" + c + b"\no."
    out["STACK_GLOBAL"] = (b"\x80\x04\x8c\x08builtins\x94\x8c\x04exec\x94\x93\x94"
                           + b"\x8c" + bytes([len(c)]) + c + b"\x94\x85\x94R\x94.")
    # An allowed-looking numpy array pickle whose element is the payload.
    out["object array"] = pickle.dumps(np.array([Evil()], dtype=object), protocol=2)
    return out


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    data = tc.datasets.watch_sessions()
    small = data[data["session_id"] < 6].drop(columns="subject")
    model = tc.activity_classifier.create(small, "session_id", "exercise", features=FEATURES,
                                          prediction_window=10, max_iterations=1,
                                          verbose=False, random_seed=0)
    path = tmp_path_factory.mktemp("nocode") / "good.model"
    model.save(path)
    return path.read_bytes()


@pytest.fixture
def sentinel(tmp_path):
    path = tmp_path / "SENTINEL"
    yield path
    assert not path.exists(), "a payload ran code: the sentinel file was created"


class _PickleAudit:
    """Records every pickle global resolved (audit event 'pickle.find_class')."""

    def __init__(self):
        self.active = False
        self.seen = []
        sys.addaudithook(self._hook)

    def _hook(self, event, args):
        if self.active and event == "pickle.find_class":
            self.seen.append(args)


_AUDIT = _PickleAudit()


def _load(path, full=True, sections=("weights",)):
    """load_model, or the reading layer decoding ``sections``, under the pickle audit hook."""
    _AUDIT.active, _AUDIT.seen = True, []
    try:
        if full:
            return tc.load_model(path)
        mf = _model.open_model_file(path)
        return {name: mf.tensors(name) for name in sections}
    finally:
        _AUDIT.active = False
        assert _AUDIT.seen == [], f"loading resolved pickle globals: {_AUDIT.seen}"


def test_the_payloads_are_live(tmp_path):
    """Control: each payload really writes its sentinel under plain pickle.loads."""
    for name, blob in payloads(tmp_path / "x").items():
        control = tmp_path / f"control {name}"
        live = payloads(control)[name]
        assert live != blob
        pickle.loads(live)
        assert control.exists(), name


def test_a_whole_pickle_file_is_refused(tmp_path, sentinel):
    for name, blob in payloads(sentinel).items():
        for suffix in (".model", ".pkl", ".npy"):
            path = tmp_path / f"evil{suffix}"
            path.write_bytes(blob)
            with pytest.raises(ToolkitError):
                _load(path)
        # Behind a genuine preamble too (as the header, checksum recomputed).
        path = tmp_path / "evil.model"
        path.write_bytes(M.container(blob, b""))
        with pytest.raises(ToolkitError, match="not a JSON object"):
            _load(path)
    path.write_bytes(payloads(sentinel)["protocol 4"])
    with pytest.raises(tc.errors.NotAModelFileError, match="pickle"):
        _load(path)


# Where a payload is embedded as data, the opcode style does not matter: three suffice.
SOME = ("protocol 0", "protocol 4", "INST")


def test_payload_in_header_fields(model_file, tmp_path, sentinel):
    layout = M.Layout(model_file)
    path = tmp_path / "m.model"
    for name in SOME:
        blob = payloads(sentinel)[name]
        for text in (blob.decode("latin1"), base64.b64encode(blob).decode()):
            for where in ("state", "written_by", "top", "task", "kind", "format", "section"):
                header = json.loads(layout.header_bytes)
                if where == "state":
                    header["state"]["note"] = text
                elif where == "written_by":
                    header["written_by"]["toolkit"] = text
                elif where == "top":
                    header["pickle"] = text
                elif where == "section":
                    header["sections"][text] = {"offset": len(layout.payload), "length": 0}
                else:
                    header[where] = text
                path.write_bytes(M.container(M.dump_header(header), layout.payload))
                if where == "task":
                    with pytest.raises(tc.errors.UnknownTaskError):
                        _load(path)
                    continue
                # Just a string in the settings: loads harmlessly (the network is
                # rebuilt only where the task reads the field).
                if where in ("state", "top"):
                    assert M.same_tensors(_weights(_load(path)), layout.tensors)
                else:
                    assert M.same_tensors(_load(path, full=False)["weights"], layout.tensors)


def _weights(model):
    from toolkit._mx import get_weights
    return get_weights(model._core)


def test_payload_as_tensor_bytes(model_file, tmp_path, sentinel):
    layout = M.Layout(model_file)
    path = tmp_path / "m.model"
    for blob in payloads(sentinel).values():
        # As the whole weights section: damaged.
        path.write_bytes(M.with_blob(layout, blob))
        with pytest.raises(tc.errors.CorruptModelFileError):
            _load(path)
    for name in SOME:
        blob = payloads(sentinel)[name]
        # Inside the tensor data, checksum recomputed: float32 bits, harmless.
        n = min(len(layout.st_data), len(blob) + (-len(blob)) % 4)
        data = blob.ljust(n, b"\0")[:n] + layout.st_data[n:]
        st = M.st_blob(layout.st_header_bytes, data, pad=False)
        path.write_bytes(M.with_blob(layout, st))
        expected = M.reference_tensors(st)
        assert _load(path, full=False)["weights"].keys() == expected.keys()
        assert M.same_tensors(_weights(_load(path)), expected)
        # As safetensors metadata: a string, harmless.
        meta = json.loads(layout.st_header_bytes)
        meta["__metadata__"] = {"note": blob.decode("latin1")}
        st = M.st_blob(M.meta_text(meta.items()), layout.st_data)
        path.write_bytes(M.with_blob(layout, st))
        assert M.same_tensors(_weights(_load(path)), layout.tensors)
        # As an extra section (what a checkpoint's optimizer state would be):
        # load_model never reads it; decoding it as tensors is refused.
        header = json.loads(layout.header_bytes)
        header["sections"]["optimizer"] = {"offset": len(layout.payload), "length": len(blob)}
        path.write_bytes(M.container(M.dump_header(header), layout.payload + blob))
        assert M.same_tensors(_weights(_load(path)), layout.tensors)
        with pytest.raises(tc.errors.CorruptModelFileError):
            _load(path, full=False, sections=("weights", "optimizer"))


def _npy_object_file(path, pickle_bytes):
    """A .npy holding a 0-d object array whose pickle is ``pickle_bytes``."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(pickle_bytes)


def test_restricted_unpickler_refuses_payloads(tmp_path, sentinel):
    from toolkit.datasets import _read_object_npy
    for name, blob in payloads(sentinel).items():
        with pytest.raises(UnsafePickleError):
            restricted_loads(blob, what=f"payload {name}")
        npy = tmp_path / "evil.npy"
        _npy_object_file(npy, blob)
        with pytest.raises(UnsafePickleError):
            _read_object_npy(str(npy))
    # np.save of an object array holding the payload object, the natural way.
    np.save(tmp_path / "natural.npy", np.array(_EvilForNpy(sentinel), dtype=object),
            allow_pickle=True)
    with pytest.raises(UnsafePickleError, match="not allowed"):
        _read_object_npy(str(tmp_path / "natural.npy"))
    # Persistent ids are refused too.
    with pytest.raises(UnsafePickleError, match="persistent"):
        restricted_loads(b"\x80\x02X\x03\x00\x00\x00pidQ.")
    # Garbage is a clear ToolkitError, not a crash.
    for junk in (b"", b"\x80", b"\x80\x05\x95" + b"\xff" * 20, struct.pack("<Q", 2**63)):
        with pytest.raises(UnsafePickleError):
            restricted_loads(junk)


class _EvilForNpy:
    def __init__(self, sentinel):
        self.code = f"open({str(sentinel)!r}, 'w').write('code ran')"

    def __reduce__(self):
        return (exec, (self.code,))


def test_restricted_unpickler_still_reads_plain_arrays(tmp_path):
    """The allow-list is not so tight that the real data sets break."""
    from toolkit.datasets import _read_object_npy
    value = {"X": [np.arange(6.0).reshape(2, 3)], "y": np.array([1, 2]), "name": "ok"}
    np.save(tmp_path / "plain.npy", np.array(value, dtype=object), allow_pickle=True)
    got = _read_object_npy(str(tmp_path / "plain.npy"))
    assert got["name"] == "ok" and got["y"].tolist() == [1, 2]
    np.testing.assert_array_equal(got["X"][0], value["X"][0])


def test_no_pickle_is_resolved_when_loading_a_good_model(model_file, tmp_path):
    path = tmp_path / "good.model"
    path.write_bytes(model_file)
    _load(path)
    _load(path, full=False)


def test_restricted_loads_persistent_ids_go_to_the_given_hook_only():
    import pickle
    from toolkit._safe_pickle import UnsafePickleError, restricted_loads

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage:" + obj.decode() if isinstance(obj, bytes) else None
    import io
    buf = io.BytesIO()
    P(buf, protocol=2).dump({"w": b"raw"})
    seen = []
    out = restricted_loads(buf.getvalue(), persistent_load=lambda pid: seen.append(pid) or 42)
    assert out == {"w": 42} and seen == ["storage:raw"]
    with pytest.raises(UnsafePickleError, match="persistent ids"):
        restricted_loads(buf.getvalue())
