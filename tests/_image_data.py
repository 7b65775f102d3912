"""Small real image data and briefly trained image classifiers, shared by the image tests.

Cached per process (functools), so test_image_classifier.py and
test_image_coreml.py train each model once per session.
"""

import functools

import numpy as np


@functools.lru_cache(maxsize=None)
def faces():
    import toolkit as tc
    return tc.datasets.lfw_faces()


@functools.lru_cache(maxsize=None)
def faces_split():
    """12 faces + 12 non-faces to train on, 8 + 8 others to test on (real LFW images)."""
    data = faces()
    train = data.iloc[list(range(0, 96, 8)) + list(range(100, 196, 8))]
    test = data.iloc[list(range(4, 100, 12)) + list(range(104, 200, 12))]
    return train, test


@functools.lru_cache(maxsize=None)
def faces_model():
    import toolkit as tc
    train, _ = faces_split()
    return tc.image_classifier.create(train, target="label", verbose=False, random_seed=0,
                                      max_iterations=30)


@functools.lru_cache(maxsize=None)
def digits():
    import toolkit as tc
    return tc.datasets.mnist_digits()


@functools.lru_cache(maxsize=None)
def digits_model():
    """Three MNIST classes (int labels 0, 1, 2), 8 images each."""
    import toolkit as tc
    data = digits()
    train = data[data["label"] < 3].groupby("label").head(8)
    return tc.image_classifier.create(train, target="label", verbose=False, random_seed=0,
                                      max_iterations=30)


def photos(size=224):
    """Real colour photos resized to ``size`` x ``size`` (uint8 RGB)."""
    import toolkit as tc
    from toolkit import _images
    return [_images.to_rgb_array(tc.datasets.sample_photo(n), size)
            for n in ("chelsea", "coffee", "astronaut", "rocket")]


def as_frame(images, column="image"):
    import pandas as pd
    col = np.empty(len(images), dtype=object)
    for i, img in enumerate(images):
        col[i] = img
    return pd.DataFrame({column: col})
