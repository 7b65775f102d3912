"""Activity classifier: label sensor time series, window by window.

>>> import toolkit as tc
>>> model = tc.activity_classifier.create(data, session_id='session_id',
...                                       target='exercise')   # doctest: +SKIP
"""

from ._model import ActivityClassifier, create
from . import util  # noqa: F401

__all__ = ["create", "ActivityClassifier", "util"]
