"""Helpers for object detection results."""

import numpy as np

_COLORS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190))


def draw_bounding_boxes(image, annotations, confidence_threshold=0.0):
    """Draw labelled boxes on a copy of an image.

    Parameters
    ----------
    image : path, bytes, PIL image or numpy array
    annotations : list of dict (or one dict)
        ``{'label', 'coordinates': {'x', 'y', 'width', 'height'}}`` in pixels
        (x, y the centre), optionally with ``'confidence'`` (as returned by
        ``model.predict``).
    confidence_threshold : float
        Skip boxes with a lower ``'confidence'``.

    Returns
    -------
    PIL.Image.Image
        An RGB copy of the image with the boxes and their labels drawn.

    Examples
    --------
    >>> import toolkit as tc
    >>> scenes = tc.datasets.detection_scenes(1)
    >>> img = tc.object_detector.util.draw_bounding_boxes(scenes['image'][0],
    ...                                                   scenes['annotations'][0])
    >>> img.size
    (224, 224)
    """
    from PIL import ImageDraw
    from .. import _images
    from ._annotations import normalize_row
    img = _images.load_image(image).copy()
    try:
        items = normalize_row(annotations)
    except ValueError as e:
        from ..errors import DataError
        from ._annotations import VALID_ANNOTATION
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
