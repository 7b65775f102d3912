"""Validation and conversion of annotation columns."""

import math
import warnings

import numpy as np

from ..errors import ToolkitWarning
from ..errors import DataError

VALID_ANNOTATION = (
    "A valid annotation is a dictionary {'label': str, 'coordinates': {'x': ..., 'y': ..., "
    "'width': ..., 'height': ...}} with x, y the box centre and width, height > 0 in pixels "
    "(origin top-left); each row holds a list of them (an empty list for an image without "
    "objects) or a single one.")


def is_number(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)) and math.isfinite(float(v))


def _bad_instance(inst):
    """Why one instance is invalid, or None."""
    if not isinstance(inst, dict):
        return f"an element is a {type(inst).__name__}, not a dict"
    if "label" not in inst:
        return "an element has no 'label'"
    coords = inst.get("coordinates")
    if not isinstance(coords, dict):
        return "an element has no 'coordinates' dict"
    keys = set(coords)
    if not {"x", "y", "width", "height"} <= keys:
        return f"'coordinates' has keys {sorted(map(str, keys))}, missing " \
               f"{sorted({'x', 'y', 'width', 'height'} - keys)}"
    for k in ("x", "y", "width", "height"):
        if not is_number(coords[k]):
            return f"coordinate '{k}' is {coords[k]!r}, not a finite number"
    if coords["width"] <= 0 or coords["height"] <= 0:
        return (f"zero or negative box size (width {coords['width']}, height "
                f"{coords['height']})")
    lab = inst["label"]
    if not isinstance(lab, (str, int, np.integer)) or isinstance(lab, (bool, np.bool_)):
        return f"label {lab!r} is not a str or int"
    return None


def normalize_row(value):
    """A cell -> list of instances, or raise ValueError(reason)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, np.ndarray):
        value = list(value)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"a {type(value).__name__}, not a list of dicts")
    for inst in value:
        why = _bad_instance(inst)
        if why:
            raise ValueError(why)
    return list(value)


def parse_column(series, column, name="dataset"):
    """Validate an annotations column; returns a list (per row) of instance lists.

    Raises one DataError listing up to 5 bad rows.
    """
    rows, bad = [], []
    for pos, (idx, value) in enumerate(series.items()):
        try:
            rows.append(normalize_row(value))
        except ValueError as e:
            bad.append((idx, pos, str(e)))
            rows.append([])
    if bad:
        shown = "; ".join(f"row {i!r} (position {p}): {why}" for i, p, why in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise DataError(
            f"Invalid object annotations in column '{column}' of '{name}': {len(bad)} bad "
            f"row(s): {shown}{more}. {VALID_ANNOTATION}")
    return rows


def new_counters():
    """The counters :func:`to_boxes` fills and :func:`warn_counters` reports."""
    return {"clipped": 0, "dropped": 0, "unknown": 0}


def to_boxes(instances, size, class_index, counters):
    """Instances of one image -> float array (K, 5): class, relative x, y, w, h (clipped).

    ``size`` is (width, height) of the image. Instances whose label is not in
    ``class_index`` are skipped (counted in ``counters['unknown']``); boxes
    reaching outside the image are clipped (``counters['clipped']``), and
    dropped when nothing is left (``counters['dropped']``).
    """
    width, height = size
    out = []
    for inst in instances:
        lab = inst["label"]
        lab = int(lab) if isinstance(lab, np.integer) else lab
        if lab not in class_index:
            counters["unknown"] += 1
            continue
        c = inst["coordinates"]
        x0, y0 = c["x"] - c["width"] / 2.0, c["y"] - c["height"] / 2.0
        x1, y1 = x0 + c["width"], y0 + c["height"]
        cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height)
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            counters["clipped"] += 1
        if cx1 - cx0 < 1e-3 * width or cy1 - cy0 < 1e-3 * height:
            counters["dropped"] += 1
            continue
        out.append([class_index[lab], (cx0 + cx1) / 2 / width, (cy0 + cy1) / 2 / height,
                    (cx1 - cx0) / width, (cy1 - cy0) / height])
    return np.asarray(out, np.float64).reshape(-1, 5)


def warn_counters(counters, column):
    """Warn once per kind about the boxes :func:`to_boxes` clipped, dropped or ignored."""
    if counters["clipped"]:
        warnings.warn(
            f"{counters['clipped']} box(es) in column '{column}' reach outside their image and "
            f"were clipped to it ({counters['dropped']} of them lay entirely outside and were "
            "dropped). Check that x, y are box centres in pixels with the origin top-left.",
            ToolkitWarning, stacklevel=3)
    if counters["unknown"]:
        warnings.warn(
            f"{counters['unknown']} object(s) in column '{column}' have labels not in "
            "'classes' and were ignored.", ToolkitWarning, stacklevel=3)


def to_pixels(boxes, size):
    """:func:`to_boxes`' relative rows (K, 5) -> class, x, y, width, height in pixels."""
    width, height = size
    return np.column_stack([boxes[:, 0], boxes[:, 1] * width, boxes[:, 2] * height,
                            boxes[:, 3] * width, boxes[:, 4] * height])
