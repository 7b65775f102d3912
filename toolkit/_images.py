"""Image decoding and resizing shared by the image tasks (classifier, detector).

An image column of a DataFrame may hold, row by row, any of:

* a file path (``str`` or ``os.PathLike``) of an image file Pillow can read;
* the raw encoded bytes of such a file (``bytes``, ``bytearray``, ``memoryview``);
* a ``PIL.Image.Image``;
* a numpy array: ``(H, W)`` grey, ``(H, W, 1)``, ``(H, W, 3)`` RGB or
  ``(H, W, 4)`` RGBA. ``uint8`` values are used as they are; ``bool`` is 0/255;
  other integer types must lie in [0, 255]; floating point values must be
  finite and lie in [0, 1] (scikit-image's convention) and are scaled by 255.

Image files and PIL images of more than 8 bits follow the same rules: 32-bit
float grey (Pillow mode ``F``, e.g. a float TIFF) must lie in [0, 1] and is
scaled by 255 (other ranges are refused, naming the range found); 16-bit grey
(``I;16``) is scaled from [0, 65535]; 32-bit integer grey (``I``) is used as is
when it lies in [0, 255], scaled from [0, 65535] otherwise, and refused outside
[0, 65535]. A 16- or 32-bit grey image holding only 0 and 1 (a mask) is read
as black and white, like a bool array, not as an all but black image.

Every image becomes 8-bit RGB: grey is replicated into the three channels,
an alpha channel is dropped (not composited), palette and CMYK images are
converted by Pillow, and JPEG EXIF orientation is applied. It is then resized
to the network's input size (``size`` x ``size``, aspect ratio not kept, as
Turi Create and Core ML's "scale fill" do) with Pillow's bilinear filter,
which antialiases when shrinking. 8-bit pixels are what a Core ML image input
holds too, so a model's Core ML export sees the same values.

Images are decoded in streamed batches (:func:`iter_batches`), never all at
once: memory depends on the batch size, not on the number of rows.

Any image that cannot be used raises :class:`~toolkit.errors.DataError`
naming the column, the row (index label and position), what was received
and how to fix it.
"""

import io
import os
import threading
import queue

import numpy as np

from .errors import ColumnNotFoundError, DataError, InvalidParameterError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pbm", ".jfif")

# Leading bytes of the encoded formats a column of raw bytes is recognised by.
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM",
               b"II*\x00", b"MM\x00*", b"RIFF")


def _pil():
    from PIL import Image, ImageOps
    return Image, ImageOps


def _is_pil(value):
    Image, _ = _pil()
    return isinstance(value, Image.Image)


def looks_like_image(value, strict=True):
    """Whether one cell value looks like an image (cheap: files are not opened).

    ``strict`` (used to *find* the image column) asks paths for an image file
    extension and bytes for a known signature (PNG, JPEG, GIF, BMP, TIFF,
    WebP). Non-strict (a column named by the user) also takes paths of
    existing files without such an extension and any bytes: whether they hold
    an image is found when they are decoded.
    """
    if isinstance(value, np.ndarray):
        return (value.ndim == 2 or (value.ndim == 3 and value.shape[2] in (1, 3, 4))) \
            and value.dtype.kind in "uifb"
    if isinstance(value, (bytes, bytearray, memoryview)):
        if not strict:
            return True
        head = bytes(value[:12])
        return any(head.startswith(s) for s in _SIGNATURES) and \
            (not head.startswith(b"RIFF") or head[8:12] == b"WEBP")
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        return path.lower().endswith(IMAGE_EXTENSIONS) or (not strict and os.path.isfile(path))
    return _is_pil(value)


def _first_values(series, n=20):
    return list(series.dropna().iloc[:n])


def column_looks_like_images(series, strict=True):
    """Whether a column holds images: its first (up to 20) non-missing values all do."""
    import pandas as pd
    if series.dtype != object and not pd.api.types.is_string_dtype(series.dtype):
        return False
    values = _first_values(series)
    return bool(values) and all(looks_like_image(v, strict) for v in values)


def find_image_column(dataset, feature=None, exclude=(), name="dataset"):
    """Return the image column: ``feature`` if given (checked), else the only image column.

    Raises
    ------
    toolkit.errors.ColumnNotFoundError
        ``feature`` is not a column.
    toolkit.errors.DataError
        ``feature`` does not hold images, or ``feature`` is None and there is
        no image column or more than one.
    """
    from ._validate import check_column_name, check_columns_exist
    if feature is not None:
        check_column_name(feature, "feature")
        check_columns_exist(dataset, [feature], "feature", name)
        if not column_looks_like_images(dataset[feature], strict=False):
            first = _first_values(dataset[feature], 1)
            got = f"{type(first[0]).__name__} {_short(first[0])}" if first else "no values"
            raise DataError(
                f"Column '{feature}' of '{name}' does not hold images (first value: {got}). "
                "Expected file paths of images, encoded image bytes, PIL images or numpy "
                "arrays of shape (H, W), (H, W, 3) or (H, W, 4).")
        return feature
    candidates = [c for c in dataset.columns if c not in exclude
                  and column_looks_like_images(dataset[c])]
    if not candidates:
        raise DataError(
            f"No image column found in '{name}' (columns: {', '.join(map(str, dataset.columns))})."
            " An image column holds file paths ending in an image extension, encoded image "
            "bytes, PIL images or numpy arrays; name it with feature='column'.")
    if len(candidates) > 1:
        raise DataError(
            f"'{name}' has several image columns ({', '.join(map(repr, candidates))}); "
            "choose one with feature='column'.")
    return candidates[0]


def _short(value, n=60):
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def _where(column, index_label, position):
    return f"column '{column}', row {index_label!r} (position {position})"


def _array_to_uint8(arr, where):
    """Check a numpy image and return it as uint8 (H, W) or (H, W, 3)."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise DataError(
            f"Image at {where} has shape {arr.shape}; expected (H, W) grey, (H, W, 3) RGB or "
            "(H, W, 4) RGBA (channels last). Transpose channels-first arrays with "
            "arr.transpose(1, 2, 0).")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"Image at {where} is empty (shape {arr.shape}).")
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        return arr
    if kind == "b":
        return arr.astype(np.uint8) * 255
    if kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise DataError(
                f"Image at {where} is an {arr.dtype} array with values in [{lo}, {hi}]; integer "
                "pixels must lie in [0, 255]. Rescale it, e.g. (arr / arr.max() * 255)"
                ".astype('uint8').")
        return arr.astype(np.uint8)
    if kind == "f":
        if not np.all(np.isfinite(arr)):
            raise DataError(f"Image at {where} has NaN or infinite values.")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 1:
            raise DataError(
                f"Image at {where} is a {arr.dtype} array with values in [{lo:g}, {hi:g}]; "
                "floating point pixels must lie in [0, 1]. For 0..255 values convert with "
                "arr.astype('uint8').")
        return np.round(arr * 255.0).astype(np.uint8)
    raise DataError(
        f"Image at {where} is a numpy array of dtype {arr.dtype}; expected uint8, another "
        "integer type with values in [0, 255], bool, or float in [0, 1].")


def _wide_grey_to_uint8(img, where):
    """A 16/32-bit grey PIL image (modes I;16*, I, F) -> uint8 (H, W), by the module's rules.

    Pillow's own conversion clips these at 255, which turns a float image in
    [0, 1] (or a 0/1 mask) into an all-black one without a word.
    """
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        finite = np.isfinite(arr)
        lo = float(arr[finite].min()) if finite.any() else float("nan")
        hi = float(arr[finite].max()) if finite.any() else float("nan")
        if not finite.all() or lo < 0 or hi > 1:
            raise DataError(
                f"Image at {where} is a 32-bit float grey image (Pillow mode F) with values in "
                f"[{lo:g}, {hi:g}]{'' if finite.all() else ' and NaN or infinite values'}; "
                "float images must lie in [0, 1] (scaled by 255). Save it scaled to [0, 1] or "
                "as an 8- or 16-bit image.")
        return np.round(arr * 255.0).astype(np.uint8)
    arr = np.asarray(img, dtype=np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 65535:
        raise DataError(
            f"Image at {where} is a 32-bit integer grey image with values in [{lo}, {hi}]; "
            "such images must lie in [0, 255] or [0, 65535]. Rescale it to 8 or 16 bits.")
    if hi <= 1:
        return (arr * 255).astype(np.uint8)
    if img.mode == "I" and hi <= 255:
        return arr.astype(np.uint8)
    return np.round(arr * (255.0 / 65535.0)).astype(np.uint8)


def load_image(value, where="the image"):
    """Decode one cell value into an 8-bit RGB ``PIL.Image`` (not resized)."""
    Image, ImageOps = _pil()
    if isinstance(value, np.ndarray):
        arr = _array_to_uint8(value, where)
        return Image.fromarray(np.ascontiguousarray(arr), "L" if arr.ndim == 2 else "RGB") \
            .convert("RGB")
    if isinstance(value, Image.Image):
        img = value
    elif isinstance(value, (bytes, bytearray, memoryview)):
        try:
            img = Image.open(io.BytesIO(bytes(value)))
            img.load()
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad data
            raise DataError(
                f"Cannot decode the image bytes at {where} ({len(value)} bytes, starting "
                f"{bytes(value[:8])!r}): {type(e).__name__}: {e}. The bytes are damaged or not "
                "an image format Pillow reads; fix or drop that row.") from None
    elif isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        try:
            img = Image.open(path)
            img.load()
        except FileNotFoundError:
            raise DataError(f"Image file not found at {where}: '{path}'. Check the path "
                            f"(relative paths are resolved from '{os.getcwd()}').") from None
        except Exception as e:  # noqa: BLE001
            raise DataError(f"Cannot read the image file at {where}: '{path}' "
                            f"({type(e).__name__}: {e}). Fix or drop that row.") from None
    else:
        raise DataError(
            f"The value at {where} is a {type(value).__name__} ({_short(value)}), not an image. "
            "Expected a file path, encoded image bytes, a PIL image or a numpy array.")
    try:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("F", "I;16", "I;16B", "I;16L", "I"):
            img = Image.fromarray(_wide_grey_to_uint8(img, where), "L")
        return img.convert("RGB")
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"Cannot convert the image at {where} to RGB "
                        f"({type(e).__name__}: {e}).") from None


def to_rgb_array(value, size, where="the image"):
    """One cell value -> uint8 array (size, size, 3), RGB, resized bilinearly."""
    Image, _ = _pil()
    img = load_image(value, where)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def check_paths(values, column, index=None):
    """Fail fast, before any decoding, when a path column names missing files or directories."""
    missing = []
    for pos, v in enumerate(values):
        if isinstance(v, (str, os.PathLike)) and not os.path.isfile(os.fspath(v)):
            missing.append(pos)
    if missing:
        pos = missing[0]
        label = index[pos] if index is not None else pos
        folders = [p for p in missing if os.path.isdir(os.fspath(values[p]))]
        if folders:
            pos = folders[0]
            label = index[pos] if index is not None else pos
            raise DataError(
                f"{len(folders)} path(s) of column '{column}' are directories, not image files; "
                f"the first is '{os.fspath(values[pos])}' at row {label!r} (position {pos}). "
                "List the image files inside instead (e.g. with glob.glob(folder + '/*.jpg')) "
                "or drop those rows.")
        raise DataError(
            f"{len(missing)} image file(s) of column '{column}' do not exist; the first is "
            f"'{os.fspath(values[pos])}' at row {label!r} (position {pos}). Fix the paths "
            "or drop those rows.")


def decode_batch(values, start, size, column, index=None):
    """Decode ``values`` (a sequence of cells, rows ``start..``) to uint8 (B, size, size, 3)."""
    out = np.empty((len(values), size, size, 3), dtype=np.uint8)
    for i, v in enumerate(values):
        pos = start + i
        label = index[pos] if index is not None else pos
        out[i] = to_rgb_array(v, size, _where(column, label, pos))
    return out


def iter_batches(values, size, batch_size, column="image", index=None, prefetch=True):
    """Yield ``(start, uint8 array (B, size, size, 3))`` over ``values`` in order.

    With ``prefetch`` a background thread decodes the next batch while the
    caller works on the current one (at most two batches are held). Errors
    are raised in the caller's thread, at the batch they belong to.
    """
    n = len(values)
    starts = range(0, n, batch_size)
    if not prefetch or n <= batch_size:
        for s in starts:
            yield s, decode_batch(values[s:s + batch_size], s, size, column, index)
        return
    q = queue.Queue(maxsize=1)
    stop = threading.Event()

    def work():
        for s in starts:
            if stop.is_set():
                return
            try:
                item = (s, decode_batch(values[s:s + batch_size], s, size, column, index), None)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                item = (s, None, e)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    thread = threading.Thread(target=work, name="toolkit-image-decoder", daemon=True)
    thread.start()
    try:
        for _ in starts:
            s, batch, err = q.get()
            if err is not None:
                raise err
            yield s, batch
    finally:
        stop.set()
        thread.join()


def to_network_input(batch, scale=1.0 / 127.5, bias=-1.0):
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) as ``x * scale + bias`` ([-1, 1] by default)."""
    x = batch.astype(np.float32).transpose(0, 3, 1, 2)
    return x * np.float32(scale) + np.float32(bias)


def image_input(dataset, feature, name="dataset"):
    """What predict-like methods accept -> ``(values, column, index, single)``.

    ``dataset`` is a DataFrame holding the image column ``feature``, a Series
    of images, or one image; ``values`` is an object array of the cells,
    ``single`` says that one image was passed (the caller returns one result).
    Missing cells and paths that do not exist are refused here, before any
    decoding starts.
    """
    import pandas as pd
    from . import _validate
    single = False
    if isinstance(dataset, pd.DataFrame):
        _validate.check_dataframe(dataset, name)
        if feature not in dataset.columns:
            raise ColumnNotFoundError(
                f"The image column '{feature}' the model was trained on is not in '{name}' "
                f"(columns: {', '.join(map(str, dataset.columns))}). Rename the column, or pass "
                f"the images as a Series: model.predict({name}['your_column']).")
        series = dataset[feature]
    elif isinstance(dataset, pd.Series):
        if len(dataset) == 0:
            raise DataError(f"'{name}' is empty (0 rows); it needs at least one image.")
        series = dataset
        feature = dataset.name if dataset.name is not None else feature
    elif looks_like_image(dataset):
        series = pd.Series([dataset], dtype=object)
        single = True
    else:
        raise InvalidParameterError(
            f"'{name}' must be a pandas DataFrame, a Series of images or one image, got "
            f"{type(dataset).__name__}.")
    values = series.to_numpy(dtype=object)
    _check_missing(series, feature, name)
    check_paths(values, feature, series.index)
    return values, feature, series.index, single


def _check_missing(series, column, name):
    missing = series.isna().to_numpy()
    if missing.any():
        first = series.index[np.flatnonzero(missing)[0]]
        raise DataError(
            f"Image column '{column}' in '{name}' has {int(missing.sum())} missing value(s) "
            f"(None/NaN); the first is at row {first!r}. Drop those rows, e.g. "
            f"{name}.dropna(subset=[{column!r}]).")
