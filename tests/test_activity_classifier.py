"""Activity classifier: API behaviour a user relies on, and bad input."""


import re

import numpy as np
import pandas as pd
import pytest

import toolkit as tc
from toolkit.errors import ToolkitWarning
from toolkit.errors import (ColumnNotFoundError, DataError, InvalidParameterError,
                            ToolkitError)

from conftest import WATCH_FEATURES


def _create(data, **kw):
    args = dict(features=WATCH_FEATURES, prediction_window=20, max_iterations=1,
                verbose=False, random_seed=0)
    args.update(kw)
    return tc.activity_classifier.create(data, "session_id", "exercise", **args)


# --- predict -------------------------------------------------------------------------

def test_predict_shapes_and_types(tiny_model, watch_small):
    classes = tiny_model.predict(watch_small)
    assert isinstance(classes, pd.Series) and len(classes) == len(watch_small)
    assert (classes.index == watch_small.index).all()
    assert set(classes) <= set(tiny_model.classes)
    probs = tiny_model.predict(watch_small, output_type="probability_vector")
    p = np.stack(probs)
    assert p.shape == (len(watch_small), len(tiny_model.classes))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert (np.array(tiny_model.classes)[p.argmax(axis=1)] == classes.to_numpy()).all()


def test_per_window_output(tiny_model, watch_small):
    pw = tiny_model.prediction_window
    out = tiny_model.predict(watch_small, output_frequency="per_window")
    n_windows = sum(-(-n // pw) for n in watch_small.groupby("session_id").size())
    assert len(out) == n_windows
    assert list(out.columns) == ["prediction_id", "session_id", "class"]
    assert (out["prediction_id"] == np.arange(n_windows)).all()
    # Each row's per-row prediction is its window's prediction.
    per_row = tiny_model.predict(watch_small)
    first = watch_small.groupby("session_id").head(1).index
    first_windows = out.groupby("session_id").head(1)
    assert list(per_row[first]) == list(first_windows["class"])


def test_rows_need_not_be_contiguous(tiny_model, watch_small):
    """Interleaving sessions row by row (each keeps its time order) changes nothing."""
    expected = tiny_model.predict(watch_small, output_type="probability_vector")
    position = watch_small.groupby("session_id").cumcount().to_numpy()
    interleaved = watch_small.iloc[np.lexsort((watch_small["session_id"].to_numpy(),
                                               position))]
    assert interleaved["session_id"].iloc[0] != interleaved["session_id"].iloc[1]
    got = tiny_model.predict(interleaved, output_type="probability_vector")
    np.testing.assert_allclose(np.stack(got.loc[watch_small.index]), np.stack(expected),
                               atol=1e-6)


def test_classify_and_topk(tiny_model, watch_small):
    head = watch_small.head(50)
    cl = tiny_model.classify(head)
    assert list(cl.columns) == ["class", "probability"]
    probs = np.stack(tiny_model.predict(head, output_type="probability_vector"))
    np.testing.assert_allclose(cl["probability"], probs.max(axis=1), atol=1e-6)
    top = tiny_model.predict_topk(head, k=3)
    assert len(top) == 3 * len(head)
    ranks = tiny_model.predict_topk(head, k=3, output_type="rank")
    assert list(ranks["rank"][:3]) == [0, 1, 2]
    first = top[top["row_id"] == 0]
    assert list(first["probability"]) == sorted(first["probability"], reverse=True)
    assert first["class"].iloc[0] == cl["class"].iloc[0]
    window_top = tiny_model.predict_topk(head, k=2, output_frequency="per_window")
    assert {"prediction_id", "session_id", "class", "probability"} <= set(window_top.columns)


# --- predict's outputs against the network run on plainly cut chunks ---------------------

def _reference(model, frame):
    """Per-row and per-window probabilities computed the plain way: each session's rows
    (time order) standardised, zero-padded to whole chunks and run through the prediction
    network in one batch. Returns (per-row probs in frame order, per-window probs,
    session id of each window)."""
    from toolkit._mx import mx
    from toolkit.activity_classifier import _net
    pw, T = model.prediction_window, 20
    mean = np.asarray(model.feature_mean, np.float32)
    std = np.asarray(model.feature_std, np.float32)
    chunks, owners = [], []
    for sid, rows in frame.groupby("session_id", sort=False).groups.items():
        values = (frame.loc[rows, WATCH_FEATURES].to_numpy(np.float32) - mean) / std
        n_chunks = -(-len(values) // (T * pw))
        padded = np.zeros((n_chunks * T * pw, values.shape[1]), np.float32)
        padded[:len(values)] = values
        chunks.append(padded.reshape(n_chunks, T * pw, -1))
        owners.append((sid, rows, len(values)))
    data = np.concatenate(chunks)
    h, c = _net.zero_states(len(data))
    probs = model._pred(mx().nd.array(data), h, c)[0].asnumpy().reshape(-1, len(model.classes))
    per_row = pd.DataFrame(index=frame.index, columns=range(probs.shape[1]), dtype=np.float32)
    windows, window_sessions, first = [], [], 0
    for (sid, rows, n), block in zip(owners, chunks):
        k = np.arange(n) // pw
        per_row.loc[rows] = probs[first + k]
        n_windows = -(-n // pw)
        windows.append(probs[first:first + n_windows])
        window_sessions += [sid] * n_windows
        first += len(block) * T
    return per_row.to_numpy(np.float32), np.concatenate(windows), window_sessions



def _interleaved(frame, ids=None):
    """Rows of the sessions interleaved at random (each session keeps its time order),
    under a shuffled index."""
    rng = np.random.RandomState(3)
    sessions = frame["session_id"].to_numpy()
    slots = sessions[rng.permutation(len(frame))]     # the session of each output position
    picked = np.empty(len(frame), np.int64)
    for sid in np.unique(sessions):
        picked[slots == sid] = np.flatnonzero(sessions == sid)
    out = frame.iloc[picked].copy()
    out.index = rng.permutation(len(out)) * 7
    if ids is not None:
        out["session_id"] = out["session_id"].map(ids)
    return out


def _returning_session(frame):
    """Grouped rows, except that the first session's second half comes after the others."""
    first = frame["session_id"] == frame["session_id"].iloc[0]
    head = frame[first].iloc[:first.sum() // 2]
    return pd.concat([head, frame[~first], frame[first].iloc[first.sum() // 2:]])


@pytest.mark.parametrize("make", [
    lambda f: f,                                                  # grouped, int ids
    lambda f: _interleaved(f),                                    # shuffled, int ids
    lambda f: _interleaved(f, lambda s: f"s{s}"),                 # shuffled, str ids
    lambda f: _interleaved(f, lambda s: s + 0.5),                 # shuffled, float ids
    _returning_session,                                           # a session comes back
], ids=["grouped", "shuffled", "shuffled-str", "shuffled-float", "session-returns"])
def test_every_output_equals_the_network_on_plain_chunks(tiny_model, watch_small, make):
    """predict (per row, per window, class and probabilities), classify, predict_topk and
    evaluate give what the network gives on each session's rows cut into chunks the
    plain way, however the rows are ordered."""
    frame = make(watch_small)
    per_row, windows, window_sessions = _reference(tiny_model, frame)
    classes = np.asarray(tiny_model.classes, dtype=object)
    m = tiny_model

    got = m.predict(frame, output_type="probability_vector")
    assert (got.index == frame.index).all()
    assert np.abs(np.stack(got) - per_row).max() <= 1e-6
    assert (m.predict(frame).to_numpy() == classes[per_row.argmax(1)]).all()

    win = m.predict(frame, output_type="probability_vector", output_frequency="per_window")
    assert np.abs(np.stack(win["probability_vector"]) - windows).max() <= 1e-6
    assert list(win["session_id"]) == window_sessions
    win_class = m.predict(frame, output_frequency="per_window")
    assert (win_class["class"].to_numpy() == classes[windows.argmax(1)]).all()

    cl = m.classify(frame)
    assert (cl["class"].to_numpy() == classes[per_row.argmax(1)]).all()
    assert np.abs(cl["probability"].to_numpy() - per_row.max(1)).max() <= 1e-6
    cl_win = m.classify(frame, output_frequency="per_window")
    assert np.abs(cl_win["probability"].to_numpy() - windows.max(1)).max() <= 1e-6

    top = m.predict_topk(frame, k=2)
    best = np.sort(per_row, axis=1)[:, ::-1][:, :2]
    assert np.abs(top["probability"].to_numpy().reshape(-1, 2) - best).max() <= 1e-6
    top_win = m.predict_topk(frame, k=2, output_frequency="per_window", output_type="rank")
    assert (top_win["class"].to_numpy()[::2] == classes[windows.argmax(1)]).all()

    r = m.evaluate(frame, metric=["accuracy", "log_loss"])
    labels = frame["exercise"].to_numpy()
    assert r["accuracy"] == pytest.approx((classes[per_row.argmax(1)] == labels).mean())


@pytest.mark.parametrize("batch", [16, 7])
@pytest.mark.parametrize("make", [lambda f: f, _interleaved, _returning_session],
                         ids=["grouped", "shuffled", "session-returns"])
def test_batches_prepared_while_the_network_runs_equal_one_network_call(
        tiny_model, watch_small, monkeypatch, batch, make):
    """predict cuts the chunks into batches of _PREDICT_BATCH (the last one partial) and
    reads, standardises and writes a batch's rows while the network runs the one
    before, sessions cut between batches: the probabilities and the per-row outputs
    are bitwise those of one network call on all the chunks."""
    from toolkit._mx import mx
    from toolkit.activity_classifier import _data, _model, _net
    monkeypatch.setattr(_model, "_PREDICT_BATCH", batch)
    frame, m = make(watch_small), tiny_model
    values, sessions = m._read(frame)
    ch = _data.chunk_rows(values, sessions, m.prediction_window)
    n = len(ch["data"])
    assert n > 2 * batch and n % batch != 0       # several batches, the last one partial
    h, c = _net.zero_states(n)
    whole = m._pred(mx().nd.array(ch["data"]), h, c)[0].asnumpy()
    probs, table, _ = m._input_probs(frame)
    assert probs.dtype == whole.dtype and probs.tobytes() == whole.tobytes()
    for key in ("weights", "session", "first_window", "rows"):
        assert (key in table) == (key in ch), key
        if key in ch:
            np.testing.assert_array_equal(table[key], ch[key], err_msg=key)
    per_row = _data.to_rows(whole.reshape(-1, whole.shape[2]), ch, sessions,
                            m.prediction_window)
    got = m.predict(frame, output_type="probability_vector")
    assert np.stack(got).tobytes() == per_row.tobytes()
    classes = np.asarray(m.classes, dtype=object)
    got = m.predict(frame)
    assert got.dtype == object and (got.to_numpy() == classes[per_row.argmax(1)]).all()


def test_bad_values_in_a_later_batch_give_the_error_of_all_values_read_first(
        tiny_model, watch_small, monkeypatch):
    """The features are read batch by batch; a NaN in the last rows (read after the
    first batches were queued) and a missing session id still give the errors they
    gave when every value was checked before the network ran, in the same order."""
    from toolkit import _validate as V
    from toolkit.activity_classifier import _model
    monkeypatch.setattr(_model, "_PREDICT_BATCH", 7)
    frame = watch_small.copy()
    frame.loc[frame.index[-1], "wz"] = np.nan
    with pytest.raises(DataError) as expected:
        V.numeric_features(frame, WATCH_FEATURES)
    assert "'wz'" in str(expected.value)
    with pytest.raises(DataError, match=re.escape(str(expected.value))):
        tiny_model.predict(frame)
    frame["session_id"] = frame["session_id"].astype(object)
    frame.loc[frame.index[0], "session_id"] = None
    with pytest.raises(DataError, match=re.escape(str(expected.value))):
        tiny_model.predict(frame)          # the feature error first, as before
    frame.loc[frame.index[-1], "wz"] = 0.5
    with pytest.raises(DataError, match="ession"):
        tiny_model.predict(frame)


@pytest.mark.parametrize("rows", [slice(None), slice(3, 9), np.array([8, 0, 5, 5])])
def test_feature_reader_blocks_are_the_rows_of_the_whole_read(rows):
    from toolkit.activity_classifier import _data
    rng = np.random.RandomState(1)
    frame = pd.DataFrame({"a": rng.standard_normal(10) * 5, "b": rng.randint(-9, 9, 10),
                          "c": pd.array(rng.randint(0, 5, 10), dtype="Int64"),
                          "d": rng.standard_normal(10).astype(np.float32)})
    reader = _data.FeatureReader(frame, ["d", "c", "a", "b"], [1, 2, 3, 4], [0.5, 2, 3, 7])
    whole = _data.standardised_features(frame, ["d", "c", "a", "b"], [1, 2, 3, 4],
                                        [0.5, 2, 3, 7])
    assert reader.read(rows).tobytes() == whole[rows].tobytes()


def test_chunks_of_unsorted_rows_equal_chunks_of_sorted_rows():
    """chunk_rows (rows scattered straight into chunks) cuts exactly what chunk cuts from
    the rows sorted by session, and says where each input row went."""
    from toolkit.activity_classifier import _data
    rng = np.random.RandomState(0)
    for ids, pw in [(np.repeat([5, 2, 9], [1, 300, 41]), 7),          # grouped
                    (np.repeat([5, 2, 9], [1, 3000, 41]), 7),         # a session at a time
                    (rng.randint(0, 6, 500), 10),                       # interleaved
                    (np.array(["b", "a", "b"]), 1), (np.array([1.5]), 400)]:
        values = rng.standard_normal((len(ids), 3)).astype(np.float32)
        sessions = _data.Sessions(ids)
        plain = _data.chunk(values[sessions.order], sessions, pw)
        fast = _data.chunk_rows(values, sessions, pw)
        for key in ("data", "weights", "session", "first_window"):
            np.testing.assert_array_equal(fast[key], plain[key], err_msg=key)
            assert fast[key].dtype == plain[key].dtype, key
        rows = fast.get("rows")
        if rows is None:                    # grouped rows, copied a session at a time
            assert sessions.grouped
            rows = _data.sorted_slots(sessions, pw)
        np.testing.assert_array_equal(fast["data"].reshape(-1, 3)[rows], values)
        window = np.arange(len(fast["weights"].reshape(-1)))
        np.testing.assert_array_equal(_data.to_rows(window, fast, sessions, pw), rows // pw)


def _plain_training_chunks(values, lengths, pw, labels, num_classes, offsets, mask, gains):
    """Training chunks cut the plain way, session by session: skip the offset, scale by
    the session's gains, zero-pad to whole chunks; a window's label is its rows'
    most frequent (ties to the smaller class id)."""
    T = 20
    data, weights, labs, owner = [], [], [], []
    start = 0
    for s, n in enumerate(lengths):
        rows = slice(start + offsets[s], start + n)
        start += n
        if not mask[s]:
            continue
        block = values[rows] * gains[s].astype(np.float32)
        block_labels = labels[rows]
        n_windows = -(-len(block) // pw)
        n_chunks = -(-n_windows // T)
        padded = np.zeros((n_chunks * T * pw, values.shape[1]), np.float32)
        padded[:len(block)] = block
        data.append(padded.reshape(n_chunks, T * pw, -1))
        w = np.zeros(n_chunks * T, np.float32)
        w[:n_windows] = 1
        weights.append(w.reshape(n_chunks, T))
        lab = np.zeros(n_chunks * T, np.float32)
        for k in range(n_windows):
            lab[k] = np.bincount(block_labels[k * pw:(k + 1) * pw], minlength=num_classes).argmax()
        labs.append(lab.reshape(n_chunks, T))
        owner += [s] * n_chunks
    return np.concatenate(data), np.concatenate(weights), np.concatenate(labs), np.array(owner)


@pytest.mark.parametrize("mean_length", [5, 60, 3000])    # scattered rows / session slices
def test_training_chunks_equal_chunks_cut_session_by_session(mean_length):
    """Each epoch's chunks (random offsets, channel gains, a hold-out mask) are exactly
    the chunks cut session by session with those offsets and gains, and each window's
    label is the majority of its rows'."""
    from toolkit.activity_classifier import _data
    rng = np.random.RandomState(mean_length)
    for _ in range(5):
        lengths = rng.randint(1, 2 * mean_length, size=rng.randint(1, 12))
        pw, features, classes = int(rng.randint(1, 40)), 3, 4
        sessions = _data.Sessions(np.repeat(np.arange(len(lengths)), lengths))
        values = rng.standard_normal((lengths.sum(), features)).astype(np.float32)
        labels = rng.randint(0, classes, lengths.sum())
        offsets = rng.randint(0, pw, len(lengths)) * (lengths > pw)
        mask = rng.rand(len(lengths)) < 0.7
        mask[0] = True
        gains = np.exp(rng.normal(0, 0.3, (len(lengths), features)))
        got = _data.chunk(values, sessions, pw, labels, classes, offsets=offsets,
                          session_mask=mask, gains=gains)
        data, weights, labs, owner = _plain_training_chunks(values, lengths, pw, labels,
                                                           classes, offsets, mask, gains)
        np.testing.assert_array_equal(got["data"], data)
        np.testing.assert_array_equal(got["weights"], weights)
        np.testing.assert_array_equal(got["labels"], labs)
        np.testing.assert_array_equal(got["session"], owner)


@pytest.mark.parametrize("ids", [
    np.array([3, 3, 1, 1, 1, 2], np.int32),         # grouped numbers: runs of equal ids
    np.array([3, 1, 3, 2], np.uint8),               # a number comes back: hashed
    np.array([0.5, 0.5, -1.0]),
    np.array(["x", "y", "y", "x"], dtype=object),
    np.array(["x", "x", "y"], dtype=object),
])
def test_sessions_are_in_first_appearance_order(ids):
    from toolkit.activity_classifier import _data
    s = _data.Sessions(ids)
    codes, uniques = pd.factorize(pd.Series(ids), sort=False)
    np.testing.assert_array_equal(s.ids, np.asarray(uniques))
    assert s.ids.dtype == np.asarray(uniques).dtype
    np.testing.assert_array_equal(s.order, np.argsort(codes, kind="stable"))
    np.testing.assert_array_equal(s.lengths, np.bincount(codes))
    np.testing.assert_array_equal(s.starts, np.cumsum(np.bincount(codes)) - np.bincount(codes))
    assert s.grouped == bool((np.diff(codes) >= 0).all())


@pytest.mark.parametrize("n", [0, 1, 8191, 20000])
def test_standardised_features_are_the_plain_float32_arithmetic(n):
    from toolkit import _validate as V
    from toolkit.activity_classifier import _data
    rng = np.random.RandomState(n)
    frame = pd.DataFrame({"a": rng.standard_normal(n) * 9 + 4, "b": rng.randint(-50, 50, n),
                          "c": (rng.standard_normal(n) * 3).astype(np.float32)})
    expected = (V.numeric_features(frame, ["c", "a", "b"]) - np.float32([1e3, 4.1, -2])) \
        / np.float32([7, 9.2, 1e-3])
    got = _data.standardised_features(frame, ["c", "a", "b"], [1e3, 4.1, -2], [7, 9.2, 1e-3])
    assert got.dtype == np.float32 and got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("a, b", [
    ([1.0, np.nan, 2.0], [1, 2, 3]),
    ([1.0, 2.0, 3.0], [1.0, -np.inf, 3.0]),
    ([1e300, 2.0, 3.0], [np.nan, np.nan, np.nan]),       # NaN wins over too large, as before
    ([1e300, 2.0, 3.0], [1.0, 2.0, 3.0]),
    ([None, 2.0, 3.0], [1.0, 2.0, 3.0]),
])
def test_standardised_features_refuse_what_numeric_features_refuses(a, b):
    from toolkit import _validate as V
    from toolkit.activity_classifier import _data
    frame = pd.DataFrame({"a": a, "b": b}, index=[7, 8, 9])
    with pytest.raises(DataError) as expected:
        V.numeric_features(frame, ["a", "b"], "data")
    with pytest.raises(DataError, match=re.escape(str(expected.value))):
        _data.standardised_features(frame, ["a", "b"], [0, 0], [1, 1], "data")


def test_standardised_features_accept_finite_values_that_overflow_when_scaled():
    from toolkit.activity_classifier import _data
    frame = pd.DataFrame({"a": [3e38, -3e38, 0.0]})
    got = _data.standardised_features(frame, ["a"], [0], [1e-3])
    assert list(got[:, 0]) == [np.inf, -np.inf, 0.0]


def test_session_shorter_than_a_window_still_predicts(tiny_model, watch_small):
    short = watch_small[watch_small["session_id"] == watch_small["session_id"].iloc[0]].head(7)
    out = tiny_model.predict(short)
    assert len(out) == 7 and out.nunique() == 1
    assert len(tiny_model.predict(short, output_frequency="per_window")) == 1


def test_evaluate_metrics(tiny_model, watch_small):
    r = tiny_model.evaluate(watch_small)
    for k in ("accuracy", "auc", "precision", "recall", "f1_score", "log_loss",
              "confusion_matrix", "roc_curve"):
        assert k in r
    pred = tiny_model.predict(watch_small)
    assert r["accuracy"] == pytest.approx((pred == watch_small["exercise"]).mean())
    from sklearn.metrics import f1_score
    assert r["f1_score"] == pytest.approx(f1_score(watch_small["exercise"], pred,
                                                   labels=tiny_model.classes, average="macro"))
    assert r["confusion_matrix"]["count"].sum() == len(watch_small)
    assert tiny_model.evaluate(watch_small, metric="accuracy").keys() == {"accuracy",
                                                                          "unseen_labels"}


@pytest.mark.parametrize("shuffle", [False, True])
def test_evaluate_equals_the_metrics_of_every_row(tiny_model, watch_small, shuffle):
    """evaluate() counts runs of rows that share a window and a label once, weighted by
    their length: every metric equals the one computed on each row's own probabilities
    (the last bits of log_loss aside), unseen labels and the report included."""
    from toolkit._metrics import classifier_metrics
    data = watch_small.copy()
    data.loc[data.index[5:40:3], "exercise"] = "JUMP"     # unseen, inside windows
    if shuffle:
        data = data.sample(frac=1.0, random_state=0)
    with pytest.warns(ToolkitWarning, match="JUMP"):
        got = tiny_model.evaluate(data, "report")
    per_row = np.stack(tiny_model.predict(data, output_type="probability_vector").to_numpy())
    with pytest.warns(ToolkitWarning, match="JUMP"):
        want = classifier_metrics(data["exercise"].to_numpy(), per_row, tiny_model.classes,
                                  "report")
    assert got.keys() == want.keys()
    for name in want:
        if isinstance(want[name], pd.DataFrame):
            pd.testing.assert_frame_equal(got[name], want[name], check_exact=True)
        elif name == "log_loss":
            assert got[name] == pytest.approx(want[name], rel=1e-6)
        else:
            assert got[name] == want[name], name


def test_evaluate_with_unseen_labels_reports_them(tiny_model, watch_small):
    data = watch_small.copy()
    data.loc[data.index[:30], "exercise"] = "JUMP"
    with pytest.warns(ToolkitWarning, match="JUMP"):
        r = tiny_model.evaluate(data)
    assert r["unseen_labels"] == {"JUMP": 30}
    assert np.isfinite(r["log_loss"])


def test_fields_and_summary(tiny_model):
    assert tiny_model.classes == sorted(tiny_model.classes)
    assert tiny_model.features == WATCH_FEATURES
    assert tiny_model.prediction_window == 20
    assert tiny_model["num_classes"] == len(tiny_model.classes)
    assert 0 <= tiny_model.training_accuracy <= 1
    text = repr(tiny_model)
    assert "ActivityClassifier" in text and "Prediction window" in text
    with pytest.raises(AttributeError):
        tiny_model.no_such_field


def test_integer_labels(watch_small):
    data = watch_small.copy()
    data["exercise"] = data["exercise"].map({c: i for i, c in
                                             enumerate(sorted(data["exercise"].unique()))})
    model = _create(data)
    assert all(isinstance(c, int) for c in model.classes)
    assert model.predict(data.head(5)).dtype == object


def test_inputs_are_not_mutated(watch_small, tiny_model):
    data = watch_small.copy()
    snapshot = data.copy()
    _create(data)
    tiny_model.predict(data)
    tiny_model.evaluate(data)
    pd.testing.assert_frame_equal(data, snapshot)


def test_verbose_prints_progress_table(watch_small, capsys):
    _create(watch_small, verbose=True, max_iterations=2)
    out = capsys.readouterr().out
    assert "Iteration" in out and "Train Accuracy" in out and "Elapsed Time" in out
    assert "Total Time Spent" in out


def test_seed_makes_training_reproducible(watch_small):
    a, b = _create(watch_small), _create(watch_small)
    np.testing.assert_array_equal(np.stack(a.predict(watch_small, "probability_vector")),
                                  np.stack(b.predict(watch_small, "probability_vector")))


# --- bad input ---------------------------------------------------------------------

@pytest.mark.parametrize("kw, err, text", [
    (dict(session_id="sess"), ColumnNotFoundError, "'sess'.*Columns present: 'session_id'"),
    (dict(target="label"), ColumnNotFoundError, "'label'"),
    (dict(features=["ax", "speed"]), ColumnNotFoundError, "'speed'"),
    (dict(prediction_window=0), InvalidParameterError, r"prediction_window.*\[1, 400\].*0"),
    (dict(prediction_window=401), InvalidParameterError, "401"),
    (dict(prediction_window="100"), InvalidParameterError, "must be an int.*'100'"),
    (dict(prediction_window=2.5), InvalidParameterError, "must be an int"),
    (dict(max_iterations=-1), InvalidParameterError, "max_iterations"),
    (dict(batch_size=0), InvalidParameterError, "batch_size"),
    (dict(features="ax"), InvalidParameterError, "list of column names"),
    (dict(features=[]), InvalidParameterError, "empty"),
    (dict(validation_set="yes"), InvalidParameterError, "validation_set"),
    (dict(random_seed=-3), InvalidParameterError, "random_seed"),
])
def test_bad_arguments(watch_small, kw, err, text):
    args = dict(session_id="session_id", target="exercise")
    args.update(kw)
    sid, tgt = args.pop("session_id"), args.pop("target")
    base = dict(features=WATCH_FEATURES, prediction_window=20, max_iterations=1,
                verbose=False)
    base.update(args)
    with pytest.raises(err, match=text):
        tc.activity_classifier.create(watch_small, sid, tgt, **base)


def test_bad_data(watch_small):
    with pytest.raises(DataError, match="empty"):
        _create(watch_small.iloc[:0])
    with pytest.raises(InvalidParameterError, match="DataFrame"):
        _create(watch_small.to_dict())
    text = watch_small.assign(ax=watch_small["ax"].astype(str))
    with pytest.raises(DataError, match="'ax' must be numeric"):
        _create(text)
    nan = watch_small.copy()
    nan.loc[nan.index[[5, 9]], "wy"] = np.nan
    with pytest.raises(DataError, match=r"'wy'.*2 missing.*row 5"):
        _create(nan)
    inf = watch_small.copy()
    inf.loc[inf.index[3], "az"] = np.inf
    with pytest.raises(DataError, match=r"'az'.*infinite.*row 3"):
        _create(inf)
    all_nan = watch_small.assign(wx=np.nan)
    with pytest.raises(DataError, match="'wx'.*entirely"):
        _create(all_nan)
    no_label = watch_small.copy()
    no_label.loc[no_label.index[4], "exercise"] = None
    with pytest.raises(DataError, match=r"'exercise'.*1 missing label.*row 4"):
        _create(no_label)
    one = watch_small.assign(exercise="ROW")
    with pytest.raises(DataError, match="only one class.*'ROW'"):
        _create(one)


def test_predict_with_missing_feature_columns(tiny_model, watch_small):
    with pytest.raises(ColumnNotFoundError, match="'wz'"):
        tiny_model.predict(watch_small.drop(columns="wz"))
    with pytest.raises(ColumnNotFoundError, match="'exercise'"):
        tiny_model.evaluate(watch_small.drop(columns="exercise"))
    with pytest.raises(InvalidParameterError, match="output_type"):
        tiny_model.predict(watch_small, output_type="probs")
    with pytest.raises(InvalidParameterError, match="output_frequency"):
        tiny_model.predict(watch_small, output_frequency="per_session")


def test_every_error_is_a_toolkit_error(watch_small):
    with pytest.raises(ToolkitError):
        _create(watch_small, prediction_window=-5)


def test_validation_auto_with_few_sessions_says_so(watch_small, capsys):
    _create(watch_small, verbose=True)
    assert "continuing without a validation set" in capsys.readouterr().out


def test_validation_set_dataframe(watch, watch_small):
    other = watch[watch["session_id"].isin([100, 101])].drop(columns="subject")
    model = _create(watch_small, validation_set=other, max_iterations=2)
    assert model.validation_accuracy is not None


def test_loaded_model_can_be_trained_further(tiny_model_path, watch_small):
    model = tc.load_model(tiny_model_path)
    before = model.evaluate(watch_small, metric="log_loss")["log_loss"]
    iterations = model.training_iterations
    model.fit(watch_small, max_iterations=8, verbose=False, random_seed=3)
    after = model.evaluate(watch_small, metric="log_loss")["log_loss"]
    assert after < before, (before, after)
    assert model.training_iterations == iterations + 8
    more = model.evaluate(watch_small, metric="log_loss")["log_loss"]
    model.fit(watch_small, max_iterations=8, verbose=False, random_seed=4)
    assert model.evaluate(watch_small, metric="log_loss")["log_loss"] < more


def test_further_training_refuses_new_labels(tiny_model, watch_small):
    data = watch_small.copy()
    data.loc[data.index[:10], "exercise"] = "JUMP"
    with pytest.raises(DataError, match="JUMP.*create"):
        tiny_model.fit(data, max_iterations=1, verbose=False)


def test_auto_iterations_depend_on_data_size():
    from toolkit.activity_classifier._train import auto_iterations
    assert auto_iterations(84, 32) == 240
    assert auto_iterations(100_000, 32) == 10
    assert auto_iterations(1, 32) == 300


def test_weight_name_constants_are_the_networks_structural_names():
    """Exporters, training and checkpoints take weight names from _net: they must be
    exactly the names the network stores (a rename is then one edit there)."""
    from toolkit._mx import get_weights, stored_shapes
    from toolkit.activity_classifier import _net
    core, _, _ = _net.build(3, 4, 10)
    assert sorted(stored_shapes(core)) == sorted(_net.WEIGHT_NAMES)
    assert sorted(get_weights(core)) == sorted(_net.WEIGHT_NAMES)


def test_packed_lstm_computes_what_gluons_lstm_computes_with_the_stored_arrays():
    """The LSTM holds mxnet's flat RNN vector; stored as Gluon's four arrays, those arrays
    in Gluon's own rnn.LSTM give the same outputs, final states and input gradient (so
    files written before the packing load into the same function), and a seed gives
    Gluon's initial weights."""
    from toolkit._mx import get_weights, mx, set_weights
    from toolkit.activity_classifier import _graphs, _net
    nd, autograd, gluon = mx().nd, mx().autograd, mx().gluon
    mx().random.seed(3)
    packed = _graphs.PackedLSTM(_net.LSTM_HIDDEN, 7)
    packed.initialize(mx().init.Xavier())
    mx().random.seed(3)
    reference = gluon.rnn.LSTM(_net.LSTM_HIDDEN, layout="NTC", input_size=7)
    reference.initialize(mx().init.Xavier())
    stored = get_weights(packed)
    assert sorted(stored) == sorted(get_weights(reference))
    for name, value in get_weights(reference).items():       # same initial weights
        np.testing.assert_array_equal(stored[name], value)
    rng = np.random.RandomState(0)
    weights = {k: rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in stored.items()}
    fresh = _graphs.PackedLSTM(_net.LSTM_HIDDEN, 7)
    fresh.initialize()
    set_weights(fresh, weights)
    set_weights(reference, weights)
    x = nd.array(rng.normal(size=(5, 9, 7)))
    h, c = nd.array(rng.normal(size=(1, 5, _net.LSTM_HIDDEN))), \
        nd.array(rng.normal(size=(1, 5, _net.LSTM_HIDDEN)))
    results = []
    for block, call in ((fresh, lambda v: fresh(v, h, c)),
                        (reference, lambda v: (lambda y, s: (y, s[0], s[1]))(
                            *reference(v, [h, c])))):
        v = x.copy()
        v.attach_grad()
        with autograd.record():
            y, h_out, c_out = call(v)
            total = (y * y).sum() + h_out.sum() + c_out.sum()
        total.backward()
        results.append([a.asnumpy() for a in (y, h_out, c_out, v.grad)])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert get_weights(fresh).keys() == weights.keys()
    for name, value in get_weights(fresh).items():
        np.testing.assert_array_equal(value, weights[name])


# The loss graph reads neither the stored running statistics nor the top layer's
# prediction path: mxnet says so on hybridizing, as it does (silenced) during training.
@pytest.mark.filterwarnings("ignore:Parameter .* is not used by any computation")
@pytest.mark.parametrize("hybridize", [False, True])
def test_training_loss_normalises_each_group_with_its_own_statistics(hybridize):
    """Ghost batch norm: each group of consecutive chunks (the last one shorter) is
    normalised with its own mean and biased variance, then gamma and beta; the loss
    graph's per-window loss equals that arithmetic done in numpy on the trunk's outputs,
    also when only evaluated (outside autograd.record())."""
    from toolkit._mx import mx, set_weights, stored_shapes
    from toolkit.activity_classifier import _net
    nd = mx().nd
    n, T, pw, features, classes, group = 21, 20, 5, 3, 4, 8
    core, _, graphs = _net.build(features, classes, pw)
    rng = np.random.RandomState(0)
    set_weights(core, {name: rng.normal(0, 0.3, shape).astype(np.float32)
                       for name, shape in stored_shapes(core).items()})
    if hybridize:
        graphs.hybridize()
    x = nd.array(rng.normal(size=(n, T * pw, features)))
    label = rng.randint(0, classes, (n, T))
    h, c = _net.zero_states(n)
    nll, _, s1, s2 = graphs.loss(
        x, h, c, nd.array(label), nd.ones((n, T)), nd.ones((n, T, _net.CONV_FILTERS)),
        nd.ones((n, T, _net.DENSE_HIDDEN)), group)
    z = graphs.trunk(x, h, c).asnumpy().astype(np.float64)
    zn = np.empty_like(z)
    for s in (0, 8, 16):                                  # groups of 8, 8 and 5 chunks
        g = z[s:s + group]
        mean, var = g.mean(axis=(0, 1)), g.var(axis=(0, 1))
        zn[s:s + group] = (g - mean) / np.sqrt(var + _net.BN_EPSILON)
    p = {k: v.data().asnumpy().astype(np.float64) for k, v in core.collect_params().items()}
    zn = np.maximum(zn * p["activity_batchnorm0_gamma"] + p["activity_batchnorm0_beta"], 0)
    logits = zn @ p["activity_dense1_weight"].T + p["activity_dense1_bias"]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    expected = -np.take_along_axis(logp, label[..., None], -1)[..., 0]
    np.testing.assert_allclose(nll.asnumpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s1.asnumpy(), z.sum(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(s2.asnumpy(), (z ** 2).sum(axis=(0, 1)), rtol=1e-5)


@pytest.mark.filterwarnings("ignore:Parameter .* is not used by any computation")
def test_loss_graph_without_statistics_gives_the_same_loss_and_gradients():
    """Training without validation or checkpoints runs ``loss_only`` (no batch-norm
    sums): per-window loss, correctness and every weight's gradient are the full
    loss graph's, bitwise, with a short last group too."""
    from toolkit._mx import mx, set_weights, stored_shapes, structural_params
    from toolkit.activity_classifier import _net
    nd, autograd = mx().nd, mx().autograd
    n, T, pw, features, classes = 21, 20, 5, 3, 4
    core, _, graphs = _net.build(features, classes, pw)
    rng = np.random.RandomState(1)
    set_weights(core, {name: rng.normal(0, 0.3, shape).astype(np.float32)
                       for name, shape in stored_shapes(core).items()})
    graphs.hybridize()
    h, c = _net.zero_states(n)
    inputs = (nd.array(rng.normal(size=(n, T * pw, features))), h, c,
              nd.array(rng.randint(0, classes, (n, T))), nd.array(rng.rand(n, T) > 0.2),
              nd.array((rng.rand(n, T, _net.CONV_FILTERS) > 0.2) / 0.8),
              nd.array((rng.rand(n, T, _net.DENSE_HIDDEN) > 0.5) / 0.5), 8)
    params = structural_params(core)
    results = []
    for graph in (graphs.loss, graphs.loss_only):
        with autograd.record():
            out = graph(*inputs)
            total = out[0].sum()
        total.backward()
        results.append([a.asnumpy() for a in out[:2]]
                       + [p.grad().asnumpy().copy() for p in params.values()
                          if p.grad_req != "null"])
    assert len(results[0]) == len(results[1]) > 2
    for full, only in zip(*results):
        np.testing.assert_array_equal(only, full)
