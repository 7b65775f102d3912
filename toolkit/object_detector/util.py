"""Helpers for object detection data and results (Turi Create's ``object_detector.util``).

* :func:`stack_annotations` turns an annotations column (one list of objects
  per image) into one row per object; :func:`unstack_annotations` reverses it.
* :func:`draw_bounding_boxes` draws boxes on one image or on a whole column.
"""

import numbers

import numpy as np

from ..errors import ColumnNotFoundError, DataError, InvalidParameterError

#: Columns of :func:`stack_annotations`' result, in order (``confidence`` only when
#: some object has one).
STACKED_COLUMNS = ("row_id", "confidence", "label", "x", "y", "width", "height")

_COLORS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190))


def _series(value, argument):
    import pandas as pd
    if isinstance(value, pd.Series):
        return value
    if isinstance(value, (list, tuple)):
        return pd.Series(list(value), dtype=object)
    raise InvalidParameterError(
        f"'{argument}' must be a pandas Series (or a list), one element per image, got "
        f"{type(value).__name__}.")


def draw_bounding_boxes(images, annotations, confidence_threshold=0.0):
    """Draw labelled boxes on a copy of one image, or of every image of a column.

    Parameters
    ----------
    images : image, or pandas.Series (or list) of images
        One image (path, bytes, PIL image or numpy array), or a column of them.
    annotations : list of dict (or one dict), or a Series (or list) of those
        Per image: ``{'label', 'coordinates': {'x', 'y', 'width', 'height'}}``
        in pixels (x, y the centre), optionally with ``'confidence'`` (as
        returned by ``model.predict``). For a column of images, one such list
        per image, matched by position.
    confidence_threshold : float, default 0.0
        Skip boxes with a lower ``'confidence'``.

    Returns
    -------
    PIL.Image.Image, or pandas.Series of them
        RGB copies with the boxes and their labels drawn; for a column, a
        Series with the index of ``images`` (a list gives 0..n-1).

    Raises
    ------
    toolkit.errors.InvalidParameterError
        A column of images with annotations that are not a column of the same
        length.
    toolkit.errors.DataError
        Invalid annotations (the message names the image's position).

    Examples
    --------
    >>> import toolkit as tc
    >>> scenes = tc.datasets.detection_scenes(2)
    >>> img = tc.object_detector.util.draw_bounding_boxes(scenes['image'][0],
    ...                                                   scenes['annotations'][0])
    >>> img.size
    (224, 224)
    >>> drawn = tc.object_detector.util.draw_bounding_boxes(scenes['image'],
    ...                                                     scenes['annotations'])
    >>> len(drawn)
    2
    """
    import pandas as pd
    if isinstance(images, (pd.Series, list, tuple)):
        images = _series(images, "images")
        annotations = _series(annotations, "annotations")
        if len(annotations) != len(images):
            raise InvalidParameterError(
                f"'images' has {len(images)} element(s) but 'annotations' has "
                f"{len(annotations)}; give one annotation list per image.")
        out = []
        for pos, (img, ann) in enumerate(zip(images, annotations)):
            try:
                out.append(_draw_one(img, ann, confidence_threshold))
            except DataError as e:
                raise DataError(f"Image at position {pos}: {e}") from None
        return pd.Series(out, index=images.index, name=images.name, dtype=object)
    return _draw_one(images, annotations, confidence_threshold)


def _draw_one(image, annotations, confidence_threshold):
    from PIL import ImageDraw
    from .. import _images
    from ._annotations import VALID_ANNOTATION, normalize_row
    img = _images.load_image(image).copy()
    try:
        items = normalize_row(annotations)
    except ValueError as e:
        raise DataError(f"Cannot draw 'annotations': {e}. {VALID_ANNOTATION}") from None
    draw = ImageDraw.Draw(img)
    labels = sorted({str(a["label"]) for a in items})
    for a in items:
        conf = a.get("confidence")
        if conf is not None and conf < confidence_threshold:
            continue
        c = a["coordinates"]
        x0, y0 = c["x"] - c["width"] / 2, c["y"] - c["height"] / 2
        x1, y1 = x0 + c["width"], y0 + c["height"]
        color = _COLORS[labels.index(str(a["label"])) % len(_COLORS)]
        width = max(1, int(round(min(img.size) / 150)))
        draw.rectangle([x0, y0, x1, y1], outline=color, width=width)
        text = str(a["label"]) + (f" {conf:.2f}" if conf is not None else "")
        tw = draw.textlength(text) if hasattr(draw, "textlength") else 6 * len(text)
        ty = max(0, y0 - 11)
        draw.rectangle([x0, ty, x0 + tw + 4, ty + 11], fill=color)
        draw.text((x0 + 2, ty), text, fill=(0, 0, 0) if np.mean(color) > 140 else (255,) * 3)
    return img


def stack_annotations(annotations_series):
    """One row per object: turn an annotations column into a flat DataFrame.

    Works on ground truth and on ``model.predict`` output alike. The pandas
    version of Turi Create's ``stack_annotations`` (SArray -> SFrame).

    Parameters
    ----------
    annotations_series : pandas.Series (or list)
        One element per image: a list of ``{'label', 'coordinates': {'x', 'y',
        'width', 'height'}}`` (optionally ``'confidence'``), a single such
        dict, or an empty list / None for an image without objects.

    Returns
    -------
    pandas.DataFrame
        Columns ``row_id`` (the image's **position** in the column, 0-based),
        ``confidence`` (only when some object has one; NaN for those without),
        ``label``, ``x``, ``y``, ``width``, ``height``; objects in column order.
        Images without objects have no row. ``'type'`` and other keys are not
        kept (Turi Create dropped ``'type'`` too).

    Raises
    ------
    toolkit.errors.DataError
        An element is not a valid annotation list (the message lists the
        first bad rows).

    See Also
    --------
    unstack_annotations

    Examples
    --------
    >>> import toolkit as tc
    >>> preds = [[{'label': 'dog', 'confidence': 0.98,
    ...            'coordinates': {'x': 123, 'y': 128, 'width': 80, 'height': 182}}], []]
    >>> tc.object_detector.util.stack_annotations(preds)
       row_id  confidence label      x      y  width  height
    0       0        0.98   dog  123.0  128.0   80.0   182.0
    """
    import pandas as pd
    from ._annotations import parse_column
    series = _series(annotations_series, "annotations_series")
    rows = parse_column(series.reset_index(drop=True), series.name or "annotations",
                        "annotations_series")
    records = []
    has_conf = False
    for pos, objects in enumerate(rows):
        for obj in objects:
            c = obj["coordinates"]
            conf = obj.get("confidence")
            has_conf = has_conf or conf is not None
            lab = obj["label"]
            records.append((pos, np.nan if conf is None else float(conf),
                            int(lab) if isinstance(lab, np.integer) else lab,
                            float(c["x"]), float(c["y"]), float(c["width"]),
                            float(c["height"])))
    frame = pd.DataFrame.from_records(records, columns=list(STACKED_COLUMNS))
    frame["row_id"] = frame["row_id"].astype(np.int64)
    for col in ("confidence", "x", "y", "width", "height"):
        frame[col] = frame[col].astype(np.float64)
    if not has_conf:
        frame = frame.drop(columns="confidence")
    return frame


def unstack_annotations(annotations_frame, num_rows=None):
    """Back to one list of objects per image: the reverse of :func:`stack_annotations`.

    Parameters
    ----------
    annotations_frame : pandas.DataFrame
        Columns ``row_id``, ``label``, ``x``, ``y``, ``width``, ``height`` and
        optionally ``confidence`` (other columns are ignored).
    num_rows : int, optional
        The number of images, so that images without objects (and trailing
        ones) get an empty list. Default: the largest ``row_id`` plus one.

    Returns
    -------
    pandas.Series
        Index 0..num_rows-1; each element a list of ``{'label', 'type':
        'rectangle', 'coordinates': {...}}`` (plus ``'confidence'`` when the
        frame has that column), sorted by confidence, highest first, when
        there is one, else in the frame's order.

    Raises
    ------
    toolkit.errors.InvalidParameterError
        ``annotations_frame`` is not a DataFrame, or ``num_rows`` is not an
        int >= 0.
    toolkit.errors.ColumnNotFoundError
        A required column is missing.
    toolkit.errors.DataError
        A ``row_id`` is not an integer in [0, num_rows) (Turi Create dropped such
        rows silently), or a coordinate or confidence is missing.

    Examples
    --------
    >>> import pandas as pd
    >>> import toolkit as tc
    >>> stacked = pd.DataFrame({'row_id': [0, 0], 'confidence': [0.67, 0.98],
    ...     'label': ['cat', 'dog'], 'x': [150., 123.], 'y': [183., 128.],
    ...     'width': [129., 80.], 'height': [101., 182.]})
    >>> series = tc.object_detector.util.unstack_annotations(stacked, num_rows=2)
    >>> [obj['label'] for obj in series[0]], series[1]
    (['dog', 'cat'], [])
    """
    import pandas as pd
    from .. import _validate as V
    V.check_dataframe(annotations_frame, "annotations_frame", allow_empty=True)
    required = ["row_id", "label", "x", "y", "width", "height"]
    missing = [c for c in required if c not in annotations_frame.columns]
    if missing:
        raise ColumnNotFoundError(
            f"'annotations_frame' has no column(s) {missing}; it needs {required} (and "
            f"optionally 'confidence'), as stack_annotations makes. It has "
            f"{list(map(str, annotations_frame.columns))}.")
    frame = annotations_frame
    ids = frame["row_id"].to_numpy()
    bad = [v for v in ids if isinstance(v, (bool, np.bool_)) or not (
        isinstance(v, numbers.Integral) or (isinstance(v, float) and v.is_integer()))]
    if bad:
        raise DataError(f"'row_id' must hold integers (image positions), got {bad[0]!r}.")
    ids = ids.astype(np.int64)
    if num_rows is None:
        num_rows = int(ids.max()) + 1 if len(ids) else 0
    num_rows = V.check_int(num_rows, "num_rows", 0)
    outside = ids[(ids < 0) | (ids >= num_rows)]
    if len(outside):
        raise DataError(
            f"'row_id' {int(outside[0])} is outside [0, {num_rows}) (num_rows={num_rows}); "
            "give num_rows at least the number of images.")
    has_conf = "confidence" in frame.columns
    cols = ["x", "y", "width", "height"] + (["confidence"] if has_conf else [])
    if frame[cols].isna().any().any():
        raise DataError(f"'annotations_frame' has missing values in {cols}; every object "
                        "needs its coordinates (and confidence, if the column exists).")
    out = [[] for _ in range(num_rows)]
    labels = frame["label"].tolist()
    values = {c: frame[c].to_numpy(np.float64) for c in cols}
    for i, r in enumerate(ids):
        lab = labels[i]
        obj = {"label": int(lab) if isinstance(lab, np.integer) else lab, "type": "rectangle",
               "coordinates": {k: float(values[k][i]) for k in ("x", "y", "width", "height")}}
        if has_conf:
            obj["confidence"] = float(values["confidence"][i])
        out[r].append(obj)
    if has_conf:
        out = [sorted(objs, key=lambda o: -o["confidence"]) for objs in out]
    return pd.Series(out, index=pd.RangeIndex(num_rows), name="annotations", dtype=object)
