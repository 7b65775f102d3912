"""DataFrame, column and argument checks shared by every task.

Every check raises a :mod:`toolkit.errors` error whose message names the
argument or column, what was expected and what was received.
"""

import numbers

import numpy as np

from .errors import ColumnNotFoundError, DataError, InvalidParameterError


def _preview(values, n=8):
    values = list(values)
    text = ", ".join(repr(v) for v in values[:n])
    return text + (f", ... ({len(values)} in all)" if len(values) > n else "")


def check_dataframe(dataset, name="dataset", allow_empty=False):
    import pandas as pd
    if not isinstance(dataset, pd.DataFrame):
        raise InvalidParameterError(
            f"'{name}' must be a pandas DataFrame, got {type(dataset).__name__}.")
    if not allow_empty and len(dataset) == 0:
        raise DataError(f"'{name}' is empty (0 rows); it needs at least one row.")
    return dataset


def check_column_name(value, argument):
    if not isinstance(value, str):
        raise InvalidParameterError(
            f"'{argument}' must be a column name (str), got {type(value).__name__} {value!r}.")
    return value


def check_columns_exist(dataset, columns, argument, name="dataset"):
    missing = [c for c in columns if c not in dataset.columns]
    if missing:
        raise ColumnNotFoundError(
            f"{argument}: column{'s' if len(missing) > 1 else ''} {_preview(missing)} not found "
            f"in '{name}'. Columns present: {_preview(dataset.columns, 20)}.")


def check_int(value, argument, low=None, high=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidParameterError(
            f"'{argument}' must be an int, got {type(value).__name__} {value!r}.")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise InvalidParameterError(f"'{argument}' must be {bounds}, got {value}.")
    return value


def check_bool(value, argument):
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidParameterError(
            f"'{argument}' must be True or False, got {type(value).__name__} {value!r}.")
    return bool(value)


def check_fraction(value, argument):
    """A finite number in [0, 1] (a threshold or a fraction), as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not np.isfinite(float(value)) or not 0.0 <= float(value) <= 1.0:
        raise InvalidParameterError(f"'{argument}' must be a number in [0, 1], got {value!r}.")
    return float(value)


def check_choice(value, argument, choices):
    if value not in choices:
        raise InvalidParameterError(
            f"'{argument}' must be one of {_preview(choices)}, got {value!r}.")
    return value


def check_seed(value):
    if value is None:
        return None
    return check_int(value, "random_seed", 0, 2**32 - 1)


def numeric_features(dataset, features, name="dataset"):
    """Return the feature columns as a float32 (n, F) array, checking types and finiteness."""
    import pandas as pd
    cols = []
    for col in features:
        series = dataset[col]
        if not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)):
            raise DataError(
                f"Feature column '{col}' must be numeric (int or float), got dtype "
                f"{series.dtype} (first value {series.iloc[0]!r}). Convert it or leave it out "
                "of 'features'.")
        cols.append(series.to_numpy(dtype=np.float64, na_value=np.nan))
    values = np.stack(cols, axis=1) if cols else np.zeros((len(dataset), 0))
    bad = ~np.isfinite(values)
    if bad.any():
        for j, col in enumerate(features):
            rows = np.flatnonzero(bad[:, j])
            if len(rows):
                if len(rows) == len(values):
                    raise DataError(f"Feature column '{col}' in '{name}' is entirely NaN/missing.")
                first = rows[0]
                raise DataError(
                    f"Feature column '{col}' in '{name}' has {len(rows)} missing or infinite "
                    f"value(s) (NaN, None or inf); the first is at row {dataset.index[first]!r} "
                    f"(value {values[first, j]!r}). Drop or fill those rows first, e.g. "
                    f"dataset.dropna(subset=[{col!r}]).")
    if np.abs(values).max(initial=0.0) > np.finfo(np.float32).max:
        raise DataError(f"Feature values in '{name}' exceed the float32 range.")
    return values.astype(np.float32)


def check_labels(dataset, target, name="dataset"):
    """Return the target column as a numpy array, refusing missing labels."""
    series = dataset[target]
    missing = series.isna().to_numpy()
    if missing.any():
        first = dataset.index[np.flatnonzero(missing)[0]]
        raise DataError(
            f"Target column '{target}' in '{name}' has {int(missing.sum())} missing label(s); "
            f"the first is at row {first!r}. Drop those rows or label them.")
    values = series.to_numpy()
    kinds = {type(v).__name__ for v in values[:1000]}
    if series.dtype == object and len({("str" if isinstance(v, str) else "num")
                                       for v in values}) > 1:
        raise DataError(
            f"Target column '{target}' mixes strings and numbers ({', '.join(sorted(kinds))}); "
            "use one type for all labels.")
    return values


def check_validation_set(value):
    """``validation_set`` must be 'auto', a DataFrame or None."""
    import pandas as pd
    if not (isinstance(value, pd.DataFrame) or value is None
            or (isinstance(value, str) and value == "auto")):
        raise InvalidParameterError(
            "'validation_set' must be 'auto', a DataFrame or None, got "
            f"{type(value).__name__} {value!r:.40}.")
    return value


def norm_label(value):
    """A label as stored in model files: int for numbers, str otherwise."""
    if isinstance(value, (int, np.integer, float, np.floating)) and not isinstance(value, bool):
        return int(value)
    return value if isinstance(value, str) else str(value)


def encode_labels(y, target):
    """Sorted class list of JSON-typed labels (str or int)."""
    if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
        raise DataError(f"Target column '{target}' holds non-integer numbers; labels must be "
                        "strings or integers.")
    return sorted({norm_label(v) for v in y})


def class_ids(y, target):
    """``(classes, ids)``: the sorted classes of the labels ``y`` and each label's position.

    Refuses labels of a single class: a classifier needs at least two.

    >>> class_ids(np.array(["b", "a", "b"], dtype=object), "label")
    (['a', 'b'], array([1, 0, 1]))
    """
    classes = encode_labels(y, target)
    if len(classes) < 2:
        raise DataError(f"Target column '{target}' has only one class ({classes[0]!r}); "
                        "a classifier needs at least two.")
    class_index = {c: i for i, c in enumerate(classes)}
    return classes, np.array([class_index[norm_label(v)] for v in y], dtype=np.int64)


class StateCheck:
    """The checks every task's ``_check_state`` makes of a stored state.

    A model file's JSON state is data from disk: a damaged or edited file
    must give a :class:`~toolkit.errors.CorruptModelFileError` naming the
    field, never a model that fails later. One rule set for every task:
    classes are a list of distinct str/int labels (bool is refused: JSON
    would give it back as a different label), column names are strings.

    >>> check = StateCheck({"classes": ["a", "b"]}, "image classifier")
    >>> check.require("classes").classes(minimum=2)        # doctest: +ELLIPSIS
    <toolkit._validate.StateCheck object at ...>
    """

    def __init__(self, state, task_title):
        self.task_title = task_title
        if not isinstance(state, dict):
            self.bad("state", "is not an object")
        self.state = state

    def bad(self, key, why):
        from .errors import CorruptModelFileError
        raise CorruptModelFileError(
            f"The {self.task_title} file's state field '{key}' {why}; the file is damaged or "
            "was edited.")

    def require(self, *keys):
        for key in keys:
            if key not in self.state:
                self.bad(key, "is missing")
        return self

    def classes(self, key="classes", minimum=2):
        classes = self.state[key]
        if not (isinstance(classes, list) and len(classes) >= minimum and all(
                isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes)):
            self.bad(key, f"is not a list of at least {minimum} label(s) (str or int)")
        if len(set(classes)) != len(classes):
            self.bad(key, "has duplicated labels")
        return self

    def column_names(self, *keys):
        for key in keys:
            if not isinstance(self.state[key], str):
                self.bad(key, "is not a column name")
        return self

    def one_of(self, key, allowed):
        if self.state[key] not in allowed:
            self.bad(key, f"is {self.state[key]!r}, not one of {', '.join(map(str, allowed))}")
        return self

    def equals(self, key, expected):
        if self.state[key] != expected:
            self.bad(key, f"is {self.state[key]!r}, not {expected!r}")
        return self
