"""toolkit: train a useful deep-learning model in three lines and ship it.

>>> import toolkit as tc
>>> data = tc.datasets.watch_sessions().drop(columns='subject')   # doctest: +SKIP
>>> model = tc.activity_classifier.create(data, session_id='session_id',
...                                       target='exercise')      # doctest: +SKIP
>>> model.save('exercise.model')                                  # doctest: +SKIP

mxnet and coremltools are imported only when a model is trained, loaded or
exported, so ``import toolkit`` is fast.
"""

import importlib

__version__ = "0.1.0"

from ._model import load_model  # noqa: E402
from . import errors  # noqa: E402
from .errors import ToolkitError  # noqa: E402

_SUBMODULES = ("activity_classifier", "config", "datasets", "distributed", "image_analysis",
               "image_classifier", "object_detector")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))


__all__ = ["load_model", "ToolkitError", "errors", "__version__", *_SUBMODULES]
