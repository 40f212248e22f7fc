"""seglab.load: a Predictor from a checkpoint, an ONNX file or a TorchScript file."""
from __future__ import annotations

import os

from seglab.api.keywords import checked_keywords
from seglab.inference.options import InferenceOptions
from seglab.inference.predictor import Predictor
from seglab.options import declared_keywords, with_keywords
from seglab.runtime.device import resolve_device


def load(path: str | os.PathLike, *, device: str = "auto", log=print, **options) -> Predictor:
    """A Predictor for a seglab checkpoint (.pt), or a model exported by `seglab.export` (.onnx, .ts).

    >>> model = seglab.load("runs/isbi/best.pt", tta="flips")
    >>> result = model.predict("data/isbi2012/test/images/00.png")     # a path, an array or a PIL image
    >>> result.mask.shape, result.mask.dtype, sorted(set(result.mask.ravel()))
    ((512, 512), dtype('uint8'), [0, 255])                              # the training masks' own values
    >>> model.predict(image, instances=True).instances.max()             # cells by seeded watershed
    >>> for result in model.predict_many(paths): ...                      # batched, decoded ahead

    The options are InferenceOptions' fields (`predictor.options` holds them), checked as `seglab
    predict` checks its flags; `tile` may be one side (64) or (height, width).
    """
    tile = options.get("tile")
    if isinstance(tile, int) or isinstance(tile, tuple):
        options["tile"] = [tile] if isinstance(tile, int) else list(tile)
    return load_with(path, InferenceOptions(**options), device, log)


with_keywords(load, declared_keywords(InferenceOptions))
load = checked_keywords("seglab.load")(load)


def load_with(path: str | os.PathLike, options: InferenceOptions, device: str = "auto", log=print) -> Predictor:
    """A Predictor of `path` with `options` as they are (the command and the server build them from flags)."""
    return Predictor.from_file(os.fspath(path), resolve_device(device), options, log)
