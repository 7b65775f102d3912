"""The model file contract: round trips, versions, migrations and clear errors."""

import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

import toolkit as tc
from toolkit import _model, _model_file
from toolkit.errors import (CorruptModelFileError, ModelFileError, ModelFileNotFoundError,
                            NotAModelFileError, ToolkitError, UnknownTaskError,
                            UnsupportedVersionError, WeightsMismatchError)

from conftest import assert_same_weights, weights_of

HERE = os.path.dirname(os.path.abspath(__file__))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _parts(data):
    """Split a model file into (container_version, header dict, payload)."""
    _, cv, hlen, _ = struct.unpack("<8sIQ32s", data[:52])
    return cv, json.loads(data[52:52 + hlen]), data[52 + hlen:]


def _rebuild(header, payload, container_version=1, fix_checksum=True):
    """Reassemble a file from an edited header (sections kept as they are)."""
    hb = json.dumps(header, sort_keys=True).encode()
    body = hb + payload
    digest = hashlib.sha256(body).digest() if fix_checksum else b"\0" * 32
    return struct.pack("<8sIQ32s", _model_file.MAGIC, container_version, len(hb), digest) + body


# --- import -----------------------------------------------------------------

def test_import_is_lazy():
    code = ("import sys, toolkit, toolkit.activity_classifier; "
            "bad = [m for m in ('mxnet', 'coremltools') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --- round trip -------------------------------------------------------------

def test_round_trip_weights_bit_identical_and_predictions_equal(tiny_model, tiny_model_path,
                                                                  watch_small):
    loaded = tc.load_model(tiny_model_path)
    assert type(loaded) is type(tiny_model)
    assert_same_weights(weights_of(tiny_model), weights_of(loaded))
    before = np.stack(tiny_model.predict(watch_small, output_type="probability_vector"))
    after = np.stack(loaded.predict(watch_small, output_type="probability_vector"))
    np.testing.assert_array_equal(before, after)
    assert loaded.classes == tiny_model.classes
    assert loaded.features == tiny_model.features


def test_file_holds_header_fields_and_structural_names_only(tiny_model_path):
    mf = _model.open_model_file(tiny_model_path)
    h = mf.header
    assert h["task"] == "activity_classifier"
    assert h["kind"] == "model"
    assert h["file_version"] == tc.activity_classifier.ActivityClassifier._FILE_VERSION
    assert set(h["written_by"]) == {"toolkit", "mxnet", "date"}
    assert h["written_by"]["toolkit"] == tc.__version__
    assert list(mf.sections) == ["weights"]
    names = sorted(mf.tensors())
    assert "lstm.l0_i2h_weight" in names and "conv.weight" in names
    # mxnet's generated prefixes (activity0_, lstm0_, hybridsequential3_) never appear.
    assert not any(n.startswith(("activity", "hybrid")) or "0_" in n.split(".")[0]
                   for n in names), names
    # The file holds no pickle opcodes stream and no mxnet graph JSON.
    data = _read(tiny_model_path)
    assert b'"nodes"' not in data and b"\x80\x04\x95" not in data


def test_save_is_deterministic_in_layout(tiny_model, tmp_path):
    a, b = tmp_path / "a.model", tmp_path / "b.model"
    tiny_model.save(a)
    tiny_model.save(b)
    ha, pa = _parts(_read(a))[1:]
    hb, pb = _parts(_read(b))[1:]
    ha["written_by"].pop("date"), hb["written_by"].pop("date")
    assert ha == hb and pa == pb


# --- errors: each names the problem --------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(ModelFileNotFoundError, match="does not exist"):
        tc.load_model(tmp_path / "nope.model")


def test_directory(tmp_path):
    with pytest.raises(ModelFileNotFoundError, match="is a directory"):
        tc.load_model(tmp_path)


def test_empty_file(tmp_path):
    with pytest.raises(NotAModelFileError, match="empty"):
        tc.load_model(_write(tmp_path / "e.model", b""))


@pytest.mark.parametrize("keep", [3, 8, 30, 52, 60, 400, -1000, -1])
def test_truncated_file(tiny_model_path, tmp_path, keep):
    data = _read(tiny_model_path)
    with pytest.raises(CorruptModelFileError, match="truncated|damaged"):
        tc.load_model(_write(tmp_path / "t.model", data[:keep]))


@pytest.mark.parametrize("where", [60, 200, 5000, -5])
def test_flipped_byte(tiny_model_path, tmp_path, where):
    data = bytearray(_read(tiny_model_path))
    data[where] ^= 0x01
    with pytest.raises(CorruptModelFileError, match="checksum"):
        tc.load_model(_write(tmp_path / "f.model", bytes(data)))


@pytest.mark.parametrize("content, looks_like", [
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "PNG"),
    (b"hello, I am a text file\n", "text"),
    (pickle.dumps({"a": 1}), "pickle"),
])
def test_foreign_files(tmp_path, content, looks_like):
    with pytest.raises(NotAModelFileError, match=looks_like):
        tc.load_model(_write(tmp_path / "x.model", content))


def test_bare_safetensors_file(tmp_path):
    blob = _model_file.encode_tensors({"w": np.ones(3)})
    with pytest.raises(NotAModelFileError, match="safetensors"):
        tc.load_model(_write(tmp_path / "x.safetensors", blob))


def test_unknown_task(tiny_model_path, tmp_path):
    cv, header, payload = _parts(_read(tiny_model_path))
    header["task"] = "sound_classifier"
    with pytest.raises(UnknownTaskError) as e:
        tc.load_model(_write(tmp_path / "u.model", _rebuild(header, payload)))
    msg = str(e.value)
    assert "sound_classifier" in msg and "activity_classifier" in msg and "pip install -U" in msg


def test_newer_task_version_is_refused_before_checksum(tiny_model_path, tmp_path):
    cv, header, payload = _parts(_read(tiny_model_path))
    header["file_version"] = 99
    header["written_by"]["toolkit"] = "7.0.0"
    # A newer toolkit may compute the checksum differently: still "upgrade".
    data = _rebuild(header, payload, fix_checksum=False)
    with pytest.raises(UnsupportedVersionError) as e:
        tc.load_model(_write(tmp_path / "n.model", data))
    msg = str(e.value)
    newest = tc.activity_classifier.ActivityClassifier._FILE_VERSION
    for part in ("activity_classifier", "version 99", "7.0.0", f"up to version {newest}",
                 "pip install -U toolkit", tc.__version__):
        assert part in msg, (part, msg)


def test_newer_container_version_is_refused(tiny_model_path, tmp_path):
    data = bytearray(_read(tiny_model_path))
    data[8:12] = struct.pack("<I", 2)
    with pytest.raises(UnsupportedVersionError) as e:
        tc.load_model(_write(tmp_path / "c.model", bytes(data)))
    assert "container version 2" in str(e.value) and "pip install -U" in str(e.value)


def test_weight_mismatch_reports_everything_at_once(tiny_model_path, tmp_path):
    mf = _model.open_model_file(tiny_model_path)
    w = mf.tensors()
    w.pop("conv.bias")
    w["extra.weight"] = np.zeros(2, np.float32)
    w["dense1.weight"] = np.zeros((3, 3), np.float32)
    data = _model_file.serialize(mf.header, {"weights": _model_file.encode_tensors(w)})
    with pytest.raises(WeightsMismatchError) as e:
        tc.load_model(_write(tmp_path / "w.model", data))
    msg = str(e.value)
    assert "missing weights: conv.bias" in msg
    assert "unexpected weights: extra.weight" in msg
    assert "dense1.weight: expected" in msg


def test_non_float32_tensor_is_refused(tiny_model_path, tmp_path):
    from safetensors.numpy import save
    mf = _model.open_model_file(tiny_model_path)
    w = mf.tensors()
    w["conv.bias"] = w["conv.bias"].astype(np.float64)
    data = _model_file.serialize(mf.header, {"weights": save(w)})
    with pytest.raises(CorruptModelFileError, match="float32"):
        tc.load_model(_write(tmp_path / "d.model", data))


def test_all_errors_are_toolkit_errors():
    for cls in (ModelFileNotFoundError, NotAModelFileError, CorruptModelFileError,
                UnsupportedVersionError, UnknownTaskError, WeightsMismatchError):
        assert issubclass(cls, ModelFileError) and issubclass(cls, ToolkitError)
    assert issubclass(ModelFileNotFoundError, FileNotFoundError)


# --- atomic save ------------------------------------------------------------------

def test_error_mid_save_keeps_the_old_file(tiny_model, tmp_path, monkeypatch):
    path = tmp_path / "m.model"
    tiny_model.save(path)
    before = _read(path)

    def boom(*a, **k):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        tiny_model.save(path)
    monkeypatch.undo()
    assert _read(path) == before
    assert os.listdir(tmp_path) == ["m.model"], "temporary file left behind"
    tc.load_model(path)


def test_save_leaves_no_temp_files_and_normal_permissions(tiny_model, tmp_path):
    path = tmp_path / "m.model"
    tiny_model.save(path)
    tiny_model.save(path)
    assert os.listdir(tmp_path) == ["m.model"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_save_into_missing_directory(tiny_model, tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        tiny_model.save(tmp_path / "no" / "such" / "dir" / "m.model")


# --- migrations ---------------------------------------------------------------------

@pytest.fixture
def test_task():
    import _task_for_tests as t
    _model.register_task(t.TASK, t.ScoreModel)
    yield t
    _model._TASKS.pop(t.TASK, None)


def test_frozen_v1_file_migrates_through_the_chain(test_task):
    folder = os.path.join(HERE, "fixtures", "test_task", "v1")
    path = os.path.join(folder, "score.model")
    assert hashlib.sha256(_read(path)).hexdigest() == \
        "c29ae59b5c9e36dab7b42f8d2621533431a98ee312c2b16a6607a2362e81f9cb"
    with open(os.path.join(folder, "io.json")) as f:
        io = json.load(f)
    model = tc.load_model(path)
    assert sorted(model.weights) == ["lin.bias", "lin.weight"]
    assert model.state == {"name": "frozen-v1", "scale": 1.0}
    np.testing.assert_allclose(model.predict(io["input"]), io["output"], rtol=0, atol=1e-6)


def test_migration_steps_run_in_order(test_task, tmp_path):
    path = tmp_path / "v1.model"
    test_task.write_v1(path, "x", np.arange(4), [2.0])
    model = tc.load_model(path)
    assert model.state["scale"] == 1.0
    # Saving writes the current version; loading it needs no migration.
    model.save(tmp_path / "v3.model")
    assert _model.open_model_file(tmp_path / "v3.model").file_version == 3
    again = tc.load_model(tmp_path / "v3.model")
    np.testing.assert_array_equal(again.weights["lin.weight"], np.arange(4))


def test_missing_version_means_oldest(test_task, tmp_path):
    path = tmp_path / "v1.model"
    test_task.write_v1(path, "x", np.arange(4), [2.0])
    cv, header, payload = _parts(_read(path))
    header.pop("file_version")
    model = tc.load_model(_write(tmp_path / "nov.model", _rebuild(header, payload)))
    assert model.state["scale"] == 1.0
    np.testing.assert_array_equal(model.weights["lin.weight"], np.arange(4))


# --- command line ---------------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True,
                          text=True, cwd=HERE)


def test_cli_info(tiny_model_path):
    done = _cli("info", tiny_model_path)
    assert done.returncode == 0, done.stderr
    for part in ("activity_classifier", "file version", "container version", "mxnet",
                 "classes", "features", "parameters"):
        assert part in done.stdout


def test_cli_info_on_bad_file_gives_the_same_clear_error(tmp_path):
    done = _cli("info", _write(tmp_path / "x.model", b"plain text"))
    assert done.returncode == 2
    assert "not a toolkit model file" in done.stderr and "Traceback" not in done.stderr


def test_cli_upgrade_runs_migrations(test_task, tmp_path):
    from toolkit.__main__ import upgrade
    import io
    src, dst = tmp_path / "v1.model", tmp_path / "v3.model"
    test_task.write_v1(src, "x", np.arange(4), [2.0])
    out = io.StringIO()
    upgrade(str(src), str(dst), out=out)
    text = out.getvalue()
    assert "version 1 -> 2: Weights get structural names" in text
    assert "version 2 -> 3: State gains 'scale'" in text
    mf = _model.open_model_file(dst)
    assert mf.file_version == 3 and mf.state["scale"] == 1.0
