"""See a model's evaluation: ``evaluate(...).explore()`` writes one self-contained HTML page.

:class:`EvaluationResult` is the dict ``evaluate`` returns (the same keys and
values as before) plus :meth:`EvaluationResult.explore`. The report builders
take plain inputs (labels, probabilities, images, annotation dicts), not model
objects, so any ``evaluate`` can hand its predictions to them:

* :func:`activity_report`: confusion matrix (a click lists the sessions and
  windows behind a cell), per-class precision/recall, per-session timelines of
  true and predicted labels over the sensor traces;
* :func:`image_report`: confusion matrix with thumbnails per cell, top
  confusions, per-class metrics;
* :func:`detection_report`: per-class AP and precision-recall curves, images
  with predicted and true boxes (false positives and misses marked).

Each returns the HTML text; :func:`write_report` writes it and opens it. The
page needs no network: data and images are embedded, and a Content Security
Policy blocks any other source.
"""

import os
import sys
import tempfile

from .._progress import say

__all__ = ["EvaluationResult", "write_report", "activity_report", "image_report",
           "detection_report", "detection_boxes_from_arrays", "precision_recall"]


def activity_report(*args, **kwargs):
    from ._activity import activity_report as f
    return f(*args, **kwargs)


def image_report(*args, **kwargs):
    from ._image import image_report as f
    return f(*args, **kwargs)


def detection_report(*args, **kwargs):
    from ._detection import detection_report as f
    return f(*args, **kwargs)


def detection_boxes_from_arrays(*args, **kwargs):
    from ._detection import from_arrays as f
    return f(*args, **kwargs)


def precision_recall(*args, **kwargs):
    from ._detection import precision_recall as f
    return f(*args, **kwargs)


activity_report.__doc__ = "See :func:`toolkit._explore._activity.activity_report`."
image_report.__doc__ = "See :func:`toolkit._explore._image.image_report`."
detection_report.__doc__ = "See :func:`toolkit._explore._detection.detection_report`."
detection_boxes_from_arrays.__doc__ = "See :func:`toolkit._explore._detection.from_arrays`."
precision_recall.__doc__ = "See :func:`toolkit._explore._detection.precision_recall`."


def _browser_available():
    """Whether opening a browser could show something to a person (never in CI)."""
    if os.environ.get("CI"):
        return False
    if os.environ.get("BROWSER"):
        return True
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def write_report(html, path=None, open_browser=None, verbose=True):
    """Write a report's HTML to ``path`` (default: a new file in the temp folder) and open it.

    Parameters
    ----------
    html : str
        From one of the report builders.
    path : str or path-like, optional
        Where to write; parent folders must exist. ``None``: a new
        ``toolkit-explore-*.html`` file in :func:`tempfile.gettempdir`, left
        there for the browser to read.
    open_browser : bool, optional
        ``None``: open it in the default browser when one can be shown (a
        display or ``$BROWSER``, not under ``$CI``). ``False`` only writes.
    verbose : bool
        Say where the file is.

    Returns
    -------
    str
        The absolute path of the written file.
    """
    from ..errors import InvalidParameterError
    if path is None:
        fd, path = tempfile.mkstemp(prefix="toolkit-explore-", suffix=".html")
        os.close(fd)
    try:
        path = os.path.abspath(os.fspath(path))
    except TypeError:
        raise InvalidParameterError(
            f"'path' must be a file path (str or os.PathLike), got {type(path).__name__}; "
            "for example explore('report.html').") from None
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise InvalidParameterError(
            f"Cannot write the report to '{path}': the folder '{parent}' does not exist. "
            "Create it first or pass another path.")
    with open(path, "w", encoding="utf-8") as f:
        f.write(html)
    if open_browser is None:
        open_browser = _browser_available()
    opened = False
    if open_browser:
        import pathlib
        import webbrowser
        try:
            opened = webbrowser.open(pathlib.Path(path).as_uri())
        except webbrowser.Error:
            opened = False
    say(f"Report {'opened in the browser' if opened else 'written'}: {path}", verbose)
    return path


class EvaluationResult(dict):
    """The metrics ``evaluate`` returns, as a dict, plus :meth:`explore`.

    Every key and value is what ``evaluate`` always returned; the predictions
    the report needs are kept in a private attribute, not as keys, so code
    that compares, iterates or serialises the dict sees only the metrics.

    Examples
    --------
    >>> result = model.evaluate(test)                    # doctest: +SKIP
    >>> result['accuracy']                               # doctest: +SKIP
    0.91
    >>> result.explore('evaluation.html')                # doctest: +SKIP
    """

    def __init__(self, metrics=(), report=None):
        super().__init__(metrics)
        # A no-argument callable returning the report's HTML (built on demand:
        # a user who only reads the numbers pays nothing for thumbnails).
        self._report = report

    def explore(self, path=None, open_browser=None):
        """Write an interactive HTML report of this evaluation and open it.

        One self-contained file: no network access, data and images embedded.
        Opens in the default browser when one can be shown; otherwise only
        says where the file is.

        Parameters
        ----------
        path : str or path-like, optional
            The HTML file to write; default a new file in the temp folder.
        open_browser : bool, optional
            ``None`` (default): open when a browser can be shown (a display
            or ``$BROWSER``; never under ``$CI``). ``False``: only write.

        Returns
        -------
        str
            The path of the written file.

        Examples
        --------
        >>> path = model.evaluate(test).explore('report.html')   # doctest: +SKIP
        """
        from ..errors import ToolkitError
        report = getattr(self, "_report", None)
        if report is None:
            raise ToolkitError(
                "This evaluation result carries no predictions to explore (it was copied or "
                "rebuilt from a plain dict). Call model.evaluate(...) again and use its "
                "result's explore().")
        return write_report(report(), path, open_browser)

    def __reduce__(self):
        # Pickle as the metrics only: the report data can hold whole image columns.
        return (EvaluationResult, (dict(self),))
