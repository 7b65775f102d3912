"""Fine-tuning options and the feature-space augmentation of the fine-tune path.

``create(..., fine_tune=...)`` takes ``'auto'``, ``True``, ``False`` or a dict
of options (:func:`check_option`). The path itself (:func:`._train.train_finetune`)
trains the last :data:`._net.FINE_TUNE_BLOCKS` MBConv block(s) and the head
convolution of EfficientNet-Lite0 together with the classifier.

Why the augmentation works on cached activations, not on pixels
----------------------------------------------------------------
Running the frozen front of the backbone (stem .. block 14, ~90% of the
network's cost at 224x224) on every augmented batch costs one full
extraction per epoch: measured at ~20 images/s on 2 loaded CPU cores (load
average ~3.5), 1,000 images x 10 epochs would take ~8 minutes, beyond the
5-minute budget for 1,000 images. So the front runs once, on the
un-augmented images, and its output (192 x 7 x 7 per image, 37 KB) is kept;
each epoch augments those maps with transforms that are safe in feature
space (the maps are spatial, so a crop of the map is approximately the map
of the crop):

* ``crop``: a random resized crop of the 7x7 map (60-100% of its area,
  aspect 3/4-4/3), resampled bilinearly back to 7x7;
* ``flip``: a horizontal mirror of the map. Off by default: digits and text
  are not mirror-safe; pass ``{'flip': True}`` for photos of objects;
* ``jitter``: each image's channels scaled by a random factor in [0.8, 1.2],
  the feature-space stand-in for colour jitter (brightness/contrast changes
  move the activations mostly by per-channel gains; true colour jitter would
  need the front to run again).

Every draw comes from the run's numpy generator, in a fixed order, so a
checkpoint holding the generator's state resumes exactly.

BatchNorm of the trained blocks: running statistics frozen (the layers run in
inference mode during training, gamma and beta are trained). Batch statistics
would make a step depend on how a batch is split between devices (several
devices would no longer equal one) and, at 32 images a batch, are noisy.
"""

from collections import namedtuple

import numpy as np

from ..errors import InvalidParameterError
from . import _net

#: ``mode``: 'auto', True or False; then the augmentation switches, the number of trained
#: blocks and the epochs (None: automatic).
Options = namedtuple("Options", "mode flip crop jitter blocks epochs")

DEFAULTS = Options(mode="auto", flip=False, crop=True, jitter=True,
                   blocks=_net.FINE_TUNE_BLOCKS, epochs=None)

#: 'auto' fine-tunes only with at least this many training and validation images: below
#: that, validation accuracy cannot tell the two paths apart and the frozen path is kept.
MIN_AUTO_TRAIN = 200
MIN_AUTO_VALID = 20
#: Automatic epochs: about this many image passes in all, 3 to 12 epochs.
AUTO_IMAGE_PASSES = 12000
CROP_AREA = (0.6, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)
JITTER = 0.2


def check_option(value):
    """``fine_tune`` -> :data:`Options` (refuses anything else, naming the key)."""
    if isinstance(value, str) and value == "auto":
        return DEFAULTS
    if isinstance(value, (bool, np.bool_)):
        return DEFAULTS._replace(mode=bool(value))
    if not isinstance(value, dict):
        raise InvalidParameterError(
            f"'fine_tune' must be 'auto', True, False or a dict of options "
            f"({', '.join(Options._fields)}), got {value!r}.")
    unknown = sorted(set(map(str, value)) - set(Options._fields))
    if unknown:
        raise InvalidParameterError(
            f"'fine_tune' has unknown option(s) {', '.join(unknown)}; the options are "
            f"{', '.join(Options._fields)}.")
    opts = DEFAULTS._replace(mode=True)._replace(**value)
    if not (opts.mode == "auto" or isinstance(opts.mode, (bool, np.bool_))):
        raise InvalidParameterError(
            f"'fine_tune' option 'mode' must be 'auto', True or False, got {opts.mode!r}.")
    for key in ("flip", "crop", "jitter"):
        if not isinstance(getattr(opts, key), (bool, np.bool_)):
            raise InvalidParameterError(f"'fine_tune' option '{key}' must be True or False, "
                                        f"got {getattr(opts, key)!r}.")
    if isinstance(opts.blocks, bool) or not isinstance(opts.blocks, (int, np.integer)) \
            or not 1 <= opts.blocks <= _net.NUM_BLOCKS:
        raise InvalidParameterError(f"'fine_tune' option 'blocks' must be an int from 1 to "
                                    f"{_net.NUM_BLOCKS}, got {opts.blocks!r}.")
    if opts.epochs is not None and (isinstance(opts.epochs, bool) or not isinstance(
            opts.epochs, (int, np.integer)) or opts.epochs < 1):
        raise InvalidParameterError(f"'fine_tune' option 'epochs' must be None or an int "
                                    f">= 1, got {opts.epochs!r}.")
    return opts._replace(mode=opts.mode if opts.mode == "auto" else bool(opts.mode),
                         flip=bool(opts.flip), crop=bool(opts.crop), jitter=bool(opts.jitter),
                         blocks=int(opts.blocks),
                         epochs=None if opts.epochs is None else int(opts.epochs))


def as_config(opts):
    """The options as JSON values (checkpoint settings, model state)."""
    return dict(opts._asdict())


def auto_epochs(num_train):
    """Epochs when not given: ~AUTO_IMAGE_PASSES image passes, from 3 to 12."""
    return int(np.clip(AUTO_IMAGE_PASSES // max(1, num_train), 3, 12))


def _resample_matrices(starts, lengths, size):
    """(n, size, size) bilinear matrices; output i samples start + (i + .5) * len / size - .5."""
    pos = starts[:, None] + (np.arange(size)[None, :] + 0.5) * lengths[:, None] / size - 0.5
    pos = np.clip(pos, 0, size - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, size - 1)
    frac = pos - lo
    m = np.zeros((len(starts), size, size))
    rows = np.arange(size)[None, :].repeat(len(starts), 0)
    n_idx = np.arange(len(starts))[:, None].repeat(size, 1)
    np.add.at(m, (n_idx, rows, lo), 1 - frac)
    np.add.at(m, (n_idx, rows, hi), frac)
    return m


def augment(maps, opts, rng):
    """Augmented copies of cached activations ``maps`` (n, C, H, W) float32.

    Draws, in this order and only for the enabled transforms: crop areas,
    aspects and positions; flips; channel gains.
    """
    out = maps
    n, c, h, w = maps.shape
    if opts.crop:
        area = rng.uniform(*CROP_AREA, size=n)
        aspect = np.exp(rng.uniform(*np.log(CROP_ASPECT), size=n))
        ch = np.clip(np.sqrt(area / aspect) * h, 1, h)
        cw = np.clip(np.sqrt(area * aspect) * w, 1, w)
        y0 = rng.uniform(0, 1, size=n) * (h - ch)
        x0 = rng.uniform(0, 1, size=n) * (w - cw)
        ry = _resample_matrices(y0, ch, h)
        rx = _resample_matrices(x0, cw, w)
        out = np.einsum("nij,ncjk,nlk->ncil", ry, out, rx).astype(np.float32)
    if opts.flip:
        flip = rng.uniform(size=n) < 0.5
        out = np.where(flip[:, None, None, None], out[..., ::-1], out)
    if opts.jitter:
        gains = rng.uniform(1 - JITTER, 1 + JITTER, size=(n, c, 1, 1))
        out = out * gains.astype(np.float32)
    return np.ascontiguousarray(out, dtype=np.float32)
