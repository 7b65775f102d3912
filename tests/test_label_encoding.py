"""The label encoding shared by the classifiers hashes each distinct label once; it must
give exactly what the per-row definition gives (``norm_label`` of every row, sorted set)."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from toolkit import _metrics
from toolkit import _validate as V


def _reference(y):
    classes = sorted({V.norm_label(v) for v in y})
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.array([index[V.norm_label(v)] for v in y], np.int64)


COLUMNS = [
    np.array(["walk", "run", "walk", "sit"], dtype=object),
    np.array(["b", "a", "b"]),                                   # numpy str dtype
    np.array([np.str_("a"), "b", "a"], dtype=object),
    np.array([3, 1, 3, 2], dtype=np.int64),
    np.array([3.0, 1.0, 3.0, -2.0]),                              # float, integral
    np.array([3, 1.0, 3.0, 7], dtype=object),                     # int and float mixed
    np.array([True, False, True]),
    np.array([np.bool_(True), False, True], dtype=object),
    np.array([np.int8(2), 2, np.uint64(5)], dtype=object),
    # pandas' hash table compares C strings: '\x00' and '' would fall together.
    np.array(["", "\x00", "0", "a\x00", "a"], dtype=object),
]


@pytest.mark.parametrize("y", COLUMNS, ids=lambda y: f"{y.dtype}:{list(y)[:3]}")
def test_class_ids_equal_the_per_row_definition(y):
    frame = pd.DataFrame({"y": y})
    y = V.check_labels(frame, "y", allow_bool=True)
    classes, ids = V.class_ids(y, "y")
    ref_classes, ref_ids = _reference(y)
    assert classes == ref_classes
    assert [type(c) for c in classes] == [type(c) for c in ref_classes]
    np.testing.assert_array_equal(ids, ref_ids)
    assert list(V.normalised_labels(y)) == [V.norm_label(v) for v in y]


@settings(max_examples=60, deadline=None)
@given(st.one_of(
    st.lists(st.text(max_size=3), min_size=2, max_size=40),
    st.lists(st.integers(-5, 5), min_size=2, max_size=40),
    st.lists(st.integers(-5, 5).map(float), min_size=2, max_size=40),
    st.lists(st.booleans(), min_size=2, max_size=40)))
def test_label_positions_equal_a_dict_lookup_per_row(labels):
    y = np.empty(len(labels), dtype=object)
    y[:] = labels
    if len({V.norm_label(v) for v in y}) < 2:
        return
    classes, ids = V.class_ids(y, "y")
    assert (classes, ids.tolist()) == (_reference(y)[0], _reference(y)[1].tolist())
    known = classes[: max(1, len(classes) // 2)]
    index = {c: i for i, c in enumerate(known)}
    expected = [index.get(V.norm_label(v), -1) for v in y]
    assert V.label_positions(y, known).tolist() == expected
    assert _metrics._positions(V.normalised_labels(y), known).tolist() == expected


def test_kinds_are_found_as_before_for_columns_pandas_does_not_type():
    import decimal
    y = np.array([decimal.Decimal(1), decimal.Decimal(2)], dtype=object)
    with pytest.raises(Exception, match="holds Decimal values"):
        V.check_labels(pd.DataFrame({"y": y}), "y")
    y = np.array(["a", 1], dtype=object)
    with pytest.raises(Exception, match="mixes int, str labels"):
        V.check_labels(pd.DataFrame({"y": y}), "y")
