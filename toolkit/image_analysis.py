"""Image helpers of Turi Create's ``image_analysis`` module that the toolkit's tasks use.

:func:`get_deep_features` extracts the image classifier's deep features once, so
``tc.image_classifier.create(data, target, feature='deep_features')`` can train
on them many times without reading an image again.

>>> import toolkit as tc
>>> faces = tc.datasets.lfw_faces()
>>> faces['deep_features'] = tc.image_analysis.get_deep_features(faces['image'])  # doctest: +SKIP
"""

__all__ = ["get_deep_features"]


def get_deep_features(images, model_name="efficientnet-lite0", batch_size=64, verbose=True):
    """The deep features of images: what the image classifier's classifier layer reads.

    Each image is resized to 224x224 RGB (as ``predict`` does) and mapped by
    the frozen pretrained network to a vector of 1280 numbers (the average of
    its last feature map). ``tc.image_classifier.create`` takes a column of
    these in place of images (``feature='deep_features'``), and models predict
    on them as on images. The network runs in onnxruntime or mxnet as
    :func:`toolkit.config.set_inference_backend` chooses (the same features
    within 1e-4 of their scale).

    Parameters
    ----------
    images : pandas.Series or one image
        Cells as the image classifier reads them: file paths, encoded bytes,
        PIL images or numpy arrays ((H, W), (H, W, 3), (H, W, 4)).
    model_name : {'efficientnet-lite0'}
        The network. Turi Create's ``'resnet-50'``, ``'squeezenet_v1.1'`` and
        ``'VisionFeaturePrint_Scene'`` are refused with a message naming this
        one: their weights are not available here, and features of one network
        cannot train a model of another.
    batch_size : int, default 64
        Images decoded at a time.
    verbose : bool, default True
        Show a progress bar (count, images/s, time left).

    Returns
    -------
    pandas.Series
        One float32 array of shape (1280,) per image, with the input's index,
        named ``deep_features``; one array for a single image.

    Raises
    ------
    toolkit.errors.InvalidParameterError
        A DataFrame (pass its image column), an unknown ``model_name``, a bad
        ``batch_size``.
    toolkit.errors.DataError
        An image that cannot be read (the message names the row).

    Examples
    --------
    >>> import toolkit as tc
    >>> faces = tc.datasets.lfw_faces()
    >>> faces['deep_features'] = tc.image_analysis.get_deep_features(
    ...     faces['image'], verbose=False)                               # doctest: +SKIP
    >>> model = tc.image_classifier.create(faces, 'label', feature='deep_features')
    ...                                                                  # doctest: +SKIP
    """
    import pandas as pd
    from . import _images
    from . import _validate as V
    from .errors import InvalidParameterError
    from .image_classifier import _data, _train
    _data.check_model(model_name, "model_name")
    batch_size = V.check_int(batch_size, "batch_size", 1)
    verbose = V.check_bool(verbose, "verbose")
    if isinstance(images, pd.DataFrame):
        raise InvalidParameterError(
            "'images' must be a Series of images (or one image), got a DataFrame; pass its "
            "image column, e.g. get_deep_features(data['image']).")
    values, column, index, single = _images.image_input(images, "images", "images")
    runner = _pretrained_runner()
    if runner is not None:
        feats = _data.extract(None, values, column, index, batch_size, verbose, runner=runner)
    else:
        backbone, ctxs, _ = _train.pretrained_backbone(batch_size, len(values))
        try:
            feats = _data.extract(backbone, values, column, index, batch_size, verbose,
                                  ctxs=ctxs)
        finally:
            _train.release(backbone, ctxs)
    if single:
        return feats[0]
    return pd.Series(list(feats), index=index, name="deep_features")


class _Pretrained:
    """The pretrained network's onnxruntime runner, kept for the process (see toolkit._ort):
    built and checked against mxnet once, not at every call."""

    def __init__(self):
        self.backbone = None

    def graph(self):
        from . import pretrained
        from .image_classifier import _net, _onnx_export
        weights = {_net.BACKBONE_PREFIX + k: v
                   for k, v in pretrained.load_efficientnet_lite0().items()
                   if not k.startswith("fc.")}
        return _onnx_export.features_model(weights, _net.DEFAULT_POOLING, "image_analysis", 1)

    def reference(self, x):
        from . import pretrained
        from ._mx import mx
        from .image_classifier import _net
        if self.backbone is None:
            self.backbone = _net.build_backbone(weights=pretrained.load_efficientnet_lite0())
            _net.prepare_backbone(self.backbone, len(x), len(x))
        return self.backbone(mx().nd.array(x)).asnumpy()


_PRETRAINED = _Pretrained()


def _pretrained_runner():
    from . import _ort
    return _ort.runner_for(_PRETRAINED, "avg", "feature extractor (get_deep_features)",
                           _PRETRAINED.graph, _PRETRAINED.reference)
