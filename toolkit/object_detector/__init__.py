"""Object detection: find labelled boxes in images.

>>> import toolkit as tc
>>> train = tc.datasets.detection_scenes(300)                   # doctest: +SKIP
>>> model = tc.object_detector.create(train)                    # doctest: +SKIP
>>> model.predict(train.iloc[:1])                               # doctest: +SKIP
"""

from ._model import ObjectDetector, create  # noqa: F401
from . import util  # noqa: F401

__all__ = ["create", "ObjectDetector", "util"]
