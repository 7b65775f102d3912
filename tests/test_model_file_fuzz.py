"""Property-based fuzzing of real model files (hypothesis).

A real activity classifier file is damaged or edited in every region (see
tests/_model_file_mutations.py for the catalogue: bit flips, truncation,
preamble field lies, header JSON edits re-serialised with a good checksum,
section table lies, and lies inside the safetensors tensor table: dtype,
shape, byte ranges, duplicates, overlaps, huge shapes). The property for every
case: the load either succeeds with exactly the weights the file holds
(identical to the original unless the tensor bytes themselves were changed
with a recomputed checksum) or raises a ``toolkit.errors.ToolkitError`` with
a message; never another exception, never a hang (a per-case alarm), never a
large allocation (tracemalloc peak per case on the reading layer, max RSS
around the full loads).

Most cases exercise the reading layer (``open_model_file`` + ``tensors()``);
a subset goes through ``load_model``, which also rebuilds the network.
2,400 cases in all; ``benchmarks/fuzz_model_file.py`` runs the same
mutations by the hundred thousand.
"""

import contextlib
import os
import resource
import signal
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import _model_file_mutations as M

FEATURES = ["ax", "ay", "az", "wx", "wy", "wz"]
CASE_SECONDS = 30          # a case running longer counts as a hang (worst real case: ~0.2 s)
HEAP_SLACK = 32 * 2**20    # allowed heap peak: 8 x the file's size + this
RSS_GROWTH_LIMIT = 1 * 2**30

FUZZ = settings(deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """(Layout of a real model file, a scratch path for the cases)."""
    import toolkit as tc
    from toolkit._mx import get_weights
    data = tc.datasets.watch_sessions()
    small = data[data["session_id"] < 6].drop(columns="subject")
    model = tc.activity_classifier.create(small, "session_id", "exercise", features=FEATURES,
                                          prediction_window=10, max_iterations=1,
                                          verbose=False, random_seed=0)
    folder = tmp_path_factory.mktemp("fuzz")
    model.save(folder / "original.model")
    layout = M.Layout((folder / "original.model").read_bytes())
    assert M.same_tensors(layout.tensors, get_weights(model._core))
    return layout, str(folder / "case.model")


class CaseTimeout(Exception):
    """Raised by the alarm in a case that runs too long (not a ToolkitError: fails)."""


@contextlib.contextmanager
def time_limit(seconds):
    if not hasattr(signal, "setitimer"):   # Windows: no alarm, no guard
        yield
        return

    def on_alarm(signum, frame):
        raise CaseTimeout(f"the case ran for more than {seconds} s")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check(original, data, family, full_load=False):
    layout, path = original
    name, blob, expect = M.mutate(M.HypothesisDrawer(data), layout, family)
    with time_limit(CASE_SECONDS):
        outcome = M.run_case(layout, path, blob, expect, full_load=full_load,
                             measure_memory=not full_load)
    event(f"{name}: {outcome.detail}")
    assert outcome.failure is None, f"{name}: {outcome.failure}"
    if outcome.peak is not None:
        assert outcome.peak <= 8 * len(blob) + HEAP_SLACK, (
            f"{name}: the load's heap peaked at {outcome.peak} bytes for a {len(blob)}-byte file")


@settings(FUZZ, max_examples=700)
@given(data=st.data())
def test_raw_damage_is_always_refused(original, data):
    """Bit flips, overwritten runs, cuts, insertions and preamble lies (checksum not fixed)."""
    _check(original, data, M.RAW_MUTATIONS)


@settings(FUZZ, max_examples=600)
@given(data=st.data())
def test_header_edits_with_good_checksum(original, data):
    """Header JSON edits, section table lies and odd header texts, checksum recomputed."""
    _check(original, data, M.HEADER_MUTATIONS)


@settings(FUZZ, max_examples=800)
@given(data=st.data())
def test_tensor_table_lies_with_good_checksum(original, data):
    """dtype/shape/offset lies, duplicates, overlaps, huge shapes in the safetensors table."""
    _check(original, data, M.TENSOR_MUTATIONS)


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_load_model_on_every_kind_of_damage(original, data):
    """The whole path, network rebuild included, on all mutations."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _check(original, data, M.ALL_MUTATIONS, full_load=True)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    scale = 1 if sys.platform == "darwin" else 1024   # ru_maxrss: bytes on macOS, KiB on Linux
    assert grown * scale < RSS_GROWTH_LIMIT, f"max RSS grew by {grown * scale} bytes"


# --- deterministic sweeps: every region boundary, every preamble lie ----------------

def test_truncation_at_every_region_boundary(original):
    layout, path = original
    cuts = {0, 1, len(layout.data) - 1}
    for lo, hi in layout.regions.values():
        cuts.update(c for c in (lo - 1, lo, lo + 1, hi - 1, hi, hi + 1)
                    if 0 <= c < len(layout.data))
    for cut in sorted(cuts):
        outcome = M.run_case(layout, path, layout.data[:cut], M.MUST_FAIL)
        assert outcome.failure is None, (cut, outcome)
        assert outcome.detail in ("CorruptModelFileError", "NotAModelFileError"), (cut, outcome)


@pytest.mark.parametrize("header_len", [0, 1, -1, 2**63, 2**64 - 1, 16 * 2**20, 16 * 2**20 + 1,
                                        "size", "size+1", "H-1", "H+1"])
def test_header_length_field_lies(original, header_len):
    layout, path = original
    size = len(layout.data)
    value = {"size": size - 52, "size+1": size - 51, "H-1": layout.hlen - 1,
             "H+1": layout.hlen + 1}.get(header_len, header_len)
    data = M.container(layout.header_bytes, layout.payload, header_len=value % 2**64)
    outcome = M.run_case(layout, path, data, M.MUST_FAIL)
    assert outcome.failure is None and outcome.detail == "CorruptModelFileError", outcome


def test_intact_file_loads_identically(original):
    layout, path = original
    for full_load in (False, True):
        outcome = M.run_case(layout, path, layout.data, M.SAME, full_load=full_load)
        assert outcome.failure is None and outcome.detail == "ok_identical", outcome


def test_valid_reinterpretation_loads_what_the_file_says(original):
    """Swapping the byte ranges of two same-size tensors is a valid (different) file."""
    import json
    layout, path = original
    meta = json.loads(layout.st_header_bytes)
    a, b = "bn.gamma", "bn.beta"
    meta[a]["data_offsets"], meta[b]["data_offsets"] = (meta[b]["data_offsets"],
                                                        meta[a]["data_offsets"])
    blob = M.st_blob(M.meta_text(meta.items()), layout.st_data)
    for full_load in (False, True):
        outcome = M.run_case(layout, path, M.with_blob(layout, blob), ("ref", blob),
                             full_load=full_load)
        assert outcome.failure is None and outcome.detail == "ok_other_weights", outcome


def test_reading_errors_name_the_problem(original, tmp_path):
    """A few representative messages: readable, bounded, and about the actual damage."""
    import json
    import toolkit as tc
    from toolkit.errors import CorruptModelFileError
    layout, _ = original
    meta = json.loads(layout.st_header_bytes)
    meta["conv.bias"]["shape"] = [2**62]
    cases = {
        "duplicate key": M.st_blob(M.meta_text(list(meta.items())[:1] + list(meta.items())),
                                   layout.st_data),
        "larger than the section": M.st_blob(M.meta_text(meta.items()), layout.st_data),
    }
    for expected, blob in cases.items():
        path = tmp_path / "m.model"
        path.write_bytes(M.with_blob(layout, blob))
        with pytest.raises(CorruptModelFileError, match=expected) as e:
            tc.load_model(path)
        assert len(str(e.value)) < 600
    header = json.loads(layout.header_bytes)
    header["task"] = "x" * 100_000
    path.write_bytes(M.container(M.dump_header(header), layout.payload))
    with pytest.raises(tc.errors.UnknownTaskError) as e:
        tc.load_model(path)
    assert len(str(e.value)) < 600


def test_odd_paths_are_toolkit_errors(tmp_path):
    """Pipes and devices are refused without reading (which could block or never end)."""
    import toolkit as tc
    from toolkit.errors import InvalidParameterError, NotAModelFileError
    odd = [p for p in ("/dev/zero", "/dev/null") if os.path.exists(p)]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe")
        odd.append(tmp_path / "pipe")
    for path in odd:
        with time_limit(CASE_SECONDS), pytest.raises(NotAModelFileError, match="regular file"):
            tc.load_model(path)
    for not_a_path in (None, 3, ["a.model"]):
        with pytest.raises(InvalidParameterError):
            tc.load_model(not_a_path)


# --- the toolkit's strict tensor-table reader agrees with the safetensors library ----

_names = st.text(alphabet="abcdefghij._0123456789", min_size=1, max_size=12)
_shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_names, _shapes, min_size=1, max_size=6), st.integers(0, 2**31))
def test_decoder_agrees_with_safetensors_library(table, seed):
    """On any valid file written by safetensors, decode_tensors returns what
    safetensors.numpy.load returns (names, shapes and bit-identical values)."""
    from safetensors.numpy import load as st_load
    from toolkit._model_file import decode_tensors, encode_tensors
    rng = np.random.RandomState(seed % 2**32)
    arrays = {k: np.asarray(rng.randn(*shape), np.float32) for k, shape in table.items()}
    blob = encode_tensors(arrays)
    ours, theirs = decode_tensors(blob, "test"), st_load(blob)
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        assert ours[k].shape == theirs[k].shape and ours[k].dtype == theirs[k].dtype
        np.testing.assert_array_equal(ours[k], theirs[k])
