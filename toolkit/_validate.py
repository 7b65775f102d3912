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
    """Every column is in ``dataset``, exactly once.

    A duplicated name would make ``dataset[col]`` a DataFrame instead of a
    column, so it is refused here, before any code reads the column.
    """
    missing = [c for c in columns if c not in dataset.columns]
    if missing:
        raise ColumnNotFoundError(
            f"{argument}: column{'s' if len(missing) > 1 else ''} {_preview(missing)} not found "
            f"in '{name}'. Columns present: {_preview(dataset.columns, 20)}.")
    if not dataset.columns.is_unique:
        names = list(dataset.columns)
        for c in dict.fromkeys(columns):
            if names.count(c) > 1:
                raise DataError(
                    f"{argument}: column {c!r} appears {names.count(c)} times in '{name}'; "
                    "column names must be unique. Drop or rename the duplicates, e.g. "
                    f"{name} = {name}.loc[:, ~{name}.columns.duplicated()].")


def check_column_list(columns, argument, others=()):
    """``columns`` (e.g. ``features``): a non-empty list of distinct str names, none of ``others``.

    ``others`` maps an argument name to its column (``{'session_id': 's'}``):
    a column used as a feature and as the session or target would leak the
    label into the input or mix roles.
    """
    if isinstance(columns, str) or not hasattr(columns, "__iter__") \
            or not all(isinstance(c, str) for c in columns):
        raise InvalidParameterError(
            f"'{argument}' must be a list of column names (str), got {columns!r:.80}.")
    columns = list(columns)
    if not columns:
        raise InvalidParameterError(f"'{argument}' is an empty list; give at least one column.")
    seen = set()
    for c in columns:
        if c in seen:
            raise InvalidParameterError(
                f"'{argument}' names column {c!r} more than once; list each column once.")
        seen.add(c)
    for other, column in dict(others).items():
        if column in seen:
            raise InvalidParameterError(
                f"'{argument}' must not contain the {other} column {column!r}.")
    return columns


def check_distinct(arguments):
    """``{argument: column}``: the columns of different roles must differ."""
    items = list(dict(arguments).items())
    for i, (a, ca) in enumerate(items):
        for b, cb in items[i + 1:]:
            if ca == cb:
                raise InvalidParameterError(
                    f"'{a}' and '{b}' name the same column {ca!r}; they must be different "
                    "columns.")


def check_str_columns(columns, name="dataset"):
    """Refuse non-str column names taken implicitly (``features=None``).

    Model files and exports store column names as JSON strings; an int name
    (``pd.DataFrame(array)`` gives 0, 1, ...) would be saved as a number that the
    loaded model can no longer match, so it is refused before training.
    """
    bad = [c for c in columns if not isinstance(c, str)]
    if bad:
        raise DataError(
            f"'{name}' has column names that are not strings ({_preview(bad)}); the toolkit "
            "needs str column names to store them in the model file. Rename them, e.g. "
            f"{name} = {name}.rename(columns=str), or pass 'features' explicitly.")
    return list(columns)


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


def check_max_iterations(value, argument="max_iterations"):
    """``None`` or ``0``: automatic (returns None); else an int >= 1.

    Every task reads 0 as "automatic", as Turi Create's object detector does,
    so a 0 never returns an untrained model.
    """
    if value is None:
        return None
    value = check_int(value, argument, 0)
    return value or None


def check_seed(value):
    if value is None:
        return None
    return check_int(value, "random_seed", 0, 2**32 - 1)


def numeric_columns(dataset, features):
    """The feature columns as Series, refusing any whose dtype is not real numbers.

    Only the dtypes are checked (no pass over the values); :func:`numeric_features`
    also checks the values.
    """
    import pandas as pd
    columns = []
    for col in features:
        series = dataset[col]
        if pd.api.types.is_complex_dtype(series):
            raise DataError(
                f"Feature column '{col}' holds complex numbers (dtype {series.dtype}); features "
                "must be real. Split it into two columns (np.real and np.imag) or use np.abs.")
        if not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)):
            raise DataError(
                f"Feature column '{col}' must be numeric (int or float), got dtype "
                f"{series.dtype} (first value {series.iloc[0]!r}). Convert it or leave it out "
                "of 'features'.")
        columns.append(series)
    return columns


def numeric_features(dataset, features, name="dataset"):
    """Return the feature columns as a float32 (n, F) array, checking types and finiteness.

    Built column by column straight into the float32 result: a float64 (n, F) stack
    would cost twice the result's memory and time.
    """
    columns = numeric_columns(dataset, features)
    values = np.empty((len(dataset), len(features)), np.float32)
    too_large = False
    for j, (col, series) in enumerate(zip(features, columns)):
        column = series.to_numpy(dtype=np.float64, na_value=np.nan)
        if len(column):
            # min and max are NaN/inf exactly when some value is: two passes, no mask.
            lo, hi = column.min(), column.max()
            if not (np.isfinite(lo) and np.isfinite(hi)):
                _refuse_missing(dataset, col, column, name)
            too_large = too_large or max(-lo, hi) > np.finfo(np.float32).max
        values[:, j] = column
    if too_large:
        raise DataError(f"Feature values in '{name}' exceed the float32 range.")
    return values


def _refuse_missing(dataset, col, column, name):
    rows = np.flatnonzero(~np.isfinite(column))
    if len(rows) == len(column):
        raise DataError(f"Feature column '{col}' in '{name}' is entirely NaN/missing.")
    first = rows[0]
    raise DataError(
        f"Feature column '{col}' in '{name}' has {len(rows)} missing or infinite "
        f"value(s) (NaN, None or inf); the first is at row {dataset.index[first]!r} "
        f"(value {column[first]!r}). Drop or fill those rows first, e.g. "
        f"dataset.dropna(subset=[{col!r}]).")


def _kind(t):
    """The kind of a label or id type: str, bool, int, float, or the type's name."""
    if issubclass(t, str):
        return "str"
    if issubclass(t, (bool, np.bool_)):
        return "bool"
    if issubclass(t, numbers.Integral):
        return "int"
    if issubclass(t, numbers.Real):
        return "float"
    return t.__name__


#: pandas' one-pass type inference (C code) -> the kinds of :func:`_kind`, for the
#: common columns; anything else is typed value by value.
_INFERRED_KINDS = {"string": {"str"}, "boolean": {"bool"}, "integer": {"int"},
                   "floating": {"float"}, "mixed-integer-float": {"int", "float"}}


def _label_kinds(values):
    """The set of :func:`_kind` of the values of a label or id array."""
    if values.dtype != object:
        return {_kind(values.dtype.type)}
    import pandas as pd
    kinds = _INFERRED_KINDS.get(pd.api.types.infer_dtype(values, skipna=False))
    if kinds is not None:
        return set(kinds)
    return {_kind(t) for t in {type(v) for v in values}}


def _first_of(values, index, test):
    """(index label, value) of the first value for which ``test(value)`` holds."""
    for pos, v in enumerate(values):
        if test(v):
            return index[pos], v
    return None, None


def _check_missing(series, column, what, noun, name, fix):
    missing = series.isna().to_numpy()
    if missing.any():
        first = series.index[np.flatnonzero(missing)[0]]
        raise DataError(
            f"{what} column '{column}' in '{name}' has {int(missing.sum())} missing {noun}(s) "
            f"(NaN, None or NA); the first is at row {first!r}. {fix}")


def check_labels(dataset, target, name="dataset", allow_bool=False):
    """Return the target column as a numpy array of usable labels.

    Labels are strings or integers (floats with integer values count as
    integers); with ``allow_bool`` a column of booleans is kept as booleans.
    Missing labels, unhashable or other values (lists, tuples, dicts...),
    complex numbers, and columns mixing kinds (str with numbers, bool with
    numbers: ``True == 1`` would merge two classes) are refused.
    """
    series = dataset[target]
    _check_missing(series, target, "Target", "label", name, "Drop those rows or label them.")
    values = series.to_numpy()
    kinds = _label_kinds(values)
    odd = kinds - {"str", "bool", "int", "float"}
    if odd:
        at, v = _first_of(values, series.index, lambda v: _kind(type(v)) in odd)
        raise DataError(
            f"Target column '{target}' in '{name}' holds {type(v).__name__} values (the first "
            f"at row {at!r}: {v!r:.60}); labels must be strings or integers. Turn each label "
            "into one string or integer first.")
    if "bool" in kinds and not allow_bool:
        raise DataError(
            f"Target column '{target}' in '{name}' holds booleans (True/False); this task's "
            "labels are strings or integers. Convert them first, e.g. "
            f"{name}['{target}'].astype(int) or .map({{True: 'yes', False: 'no'}}).")
    if len(kinds - {"int", "float"}) + (1 if kinds & {"int", "float"} else 0) > 1:
        raise DataError(
            f"Target column '{target}' in '{name}' mixes {', '.join(sorted(kinds))} labels; use "
            f"one type for all labels (e.g. {name}['{target}'].astype(str)). Mixed kinds can "
            "also merge classes: True == 1 in Python.")
    return values


def check_session_ids(dataset, column, name="dataset"):
    """Return the session column as a numpy array of usable ids.

    Ids must be present, hashable and of one kind: ``0``, ``0.0`` and ``False``
    are equal in Python, so a column mixing kinds would silently merge
    sessions; it is refused.
    """
    series = dataset[column]
    _check_missing(series, column, "Session", "session id", name,
                   "Every row needs a session id: drop those rows or fill them in.")
    values = series.to_numpy()
    if values.dtype != object:
        return values
    types = {type(v) for v in values}
    for t in types:
        example = _first_of(values, series.index, lambda v: type(v) is t)
        try:
            hash(example[1])
        except TypeError:
            raise DataError(
                f"Session column '{column}' in '{name}' holds {t.__name__} values (the first "
                f"at row {example[0]!r}: {example[1]!r:.60}); a session id must be a single "
                "value such as a str or an int.") from None
    kinds = {_kind(t) for t in types}
    if len(kinds) > 1:
        raise DataError(
            f"Session column '{column}' in '{name}' mixes {', '.join(sorted(kinds))} ids; ids "
            "of different kinds can compare equal (0 == 0.0 == False) and their sessions would "
            f"be merged. Use one type, e.g. {name}['{column}'].astype(str).")
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
    """A label as stored in model files: bool for booleans, int for numbers, str otherwise."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer, float, np.floating)):
        return int(value)
    return value if isinstance(value, str) else str(value)


def factorize(y):
    """``(codes, uniques)`` of a label array as a dict would group it (``1 == 1.0``),
    uniques in order of first appearance.

    pandas' factorize hashes each value once; it compares strings as C strings, so
    ``'a\\x00'`` and ``'a'`` would fall together. Every row is therefore compared with
    its group's value (one vectorised pass) and, if any differs, grouped by a dict.
    """
    import pandas as pd
    y = np.asarray(y)
    codes, uniques = pd.factorize(y, sort=False)
    uniques = np.asarray(uniques, dtype=object) if y.dtype.kind in "OU" else uniques
    if y.dtype.kind in "OU" and len(y) \
            and not (uniques[codes] == y.astype(object, copy=False)).all():
        first = {}
        codes = np.array([first.setdefault(v, len(first)) for v in y.tolist()], np.int64)
        uniques = np.empty(len(first), dtype=object)
        uniques[:] = list(first)
    return codes, uniques


def _normalised_codes(y):
    """``(codes, labels)``: ``labels[codes[i]] == norm_label(y[i])``, labels distinct.

    One hash pass over the rows (pandas' factorize, which hashes like a dict:
    ``1 == 1.0``); :func:`norm_label` then runs once per distinct value, not per row.
    """
    codes, uniques = factorize(y)
    normal = [norm_label(v) for v in uniques]
    labels = list(dict.fromkeys(normal))
    if len(labels) == len(normal):
        return codes, labels
    position = {c: i for i, c in enumerate(labels)}
    return np.array([position[v] for v in normal], np.int64)[codes], labels


def label_positions(y, classes):
    """Each label's position in ``classes`` (after :func:`norm_label`), -1 if not there.

    >>> label_positions(np.array(["b", "c", 1.0], dtype=object), ["a", "b", 1])
    array([ 1, -1,  2])
    """
    codes, labels = _normalised_codes(y)
    index = {c: i for i, c in enumerate(classes)}
    lut = np.array([index.get(v, -1) for v in labels] + [-1], np.int64)
    return lut[codes]


def normalised_labels(y):
    """``norm_label`` of every label, as an object array (one call per distinct label)."""
    codes, labels = _normalised_codes(y)
    out = np.empty(len(labels), dtype=object)
    out[:] = labels
    return out[codes]


def _encode(y, target):
    y = np.asarray(y)
    if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
        raise DataError(f"Target column '{target}' holds non-integer numbers; labels must be "
                        "strings or integers.")
    codes, labels = _normalised_codes(y)
    order = sorted(range(len(labels)), key=labels.__getitem__)
    classes = [labels[i] for i in order]
    rank = np.full(len(labels) + 1, -1, np.int64)
    rank[order] = np.arange(len(labels))
    return classes, rank[codes]


def class_ids(y, target):
    """``(classes, ids)``: the sorted classes of the labels ``y`` and each label's position.

    Refuses labels of a single class: a classifier needs at least two.

    >>> class_ids(np.array(["b", "a", "b"], dtype=object), "label")
    (['a', 'b'], array([1, 0, 1]))
    """
    classes, ids = _encode(y, target)
    if len(classes) < 2:
        raise DataError(f"Target column '{target}' has only one class ({classes[0]!r}); "
                        "a classifier needs at least two.")
    return classes, ids


def name_differences(missing, unexpected, wrong, what="weights", limit=None):
    """One line naming every missing, unexpected and misshapen array (at most ``limit``
    of each), for the errors of strict weight copies; '' when all fit."""
    parts = []
    for title, names, sep in ((f"missing {what}", missing, ", "),
                              (f"unexpected {what}", unexpected, ", "),
                              ("shape mismatches", wrong, "; ")):
        if names:
            shown = list(names)[:limit] if limit else list(names)
            more = f" ... ({len(names)} in all)" if len(shown) < len(names) else ""
            parts.append(f"{title}: {sep.join(shown)}{more}")
    return " | ".join(parts)


def auto_hold_out(count, unit, validation_set, rng, fraction, minimum, verbose):
    """Which of ``count`` items (sessions, images) ``validation_set='auto'`` holds out.

    A boolean mask: ``round(fraction * count)`` items (at least one) drawn
    with ``rng`` when ``validation_set`` is ``'auto'`` and there are at least
    ``minimum`` items, else none. Says what it did when ``verbose``.
    """
    from ._progress import say
    held = np.zeros(count, bool)
    if not isinstance(validation_set, str):
        return held
    if count < minimum:
        say(f"The dataset has {count} {unit}, fewer than the {minimum} needed for an "
            "automatic validation set; continuing without a validation set.", verbose)
        return held
    n_valid = max(1, int(round(fraction * count)))
    held[rng.choice(count, n_valid, replace=False)] = True
    say(f"Holding out {n_valid} of {count} {unit} ({fraction:.0%}) at random for validation. "
        "Set validation_set=None to train on all of them.", verbose)
    return held


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

    def classes(self, key="classes", minimum=2, allow_bool=False):
        """Labels: str and int (not bool), or, with ``allow_bool``, all bool."""
        classes = self.state[key]
        plain = isinstance(classes, list) and all(
            isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes)
        bools = allow_bool and isinstance(classes, list) and all(
            isinstance(c, bool) for c in classes)
        if not ((plain or bools) and len(classes) >= minimum):
            kinds = "str or int, or all bool" if allow_bool else "str or int"
            self.bad(key, f"is not a list of at least {minimum} label(s) ({kinds})")
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
