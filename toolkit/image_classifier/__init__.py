"""Image classifier: transfer learning from a pretrained EfficientNet-Lite0.

>>> import toolkit as tc
>>> faces = tc.datasets.lfw_faces()
>>> model = tc.image_classifier.create(faces, target='label')   # doctest: +SKIP
>>> model.predict(faces.head())                                # doctest: +SKIP
"""

from ._model import ImageClassifier, create

__all__ = ["create", "ImageClassifier"]
