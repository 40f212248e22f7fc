"""seglab.evaluate: a model scored on labelled images, per image and pooled."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from seglab.api.keywords import checked_keywords
from seglab.data.discover import Pair, labelled_pairs
from seglab.data.in_memory import materialise
from seglab.errors import ConfigError, DataError
from seglab.inference.options import InferenceOptions
from seglab.inference.predictor import Predictor
from seglab.inference.scoring import evaluate_predictor
from seglab.metrics.scoring import Evaluation
from seglab.options import declared_keywords, with_keywords


def _file_pairs(data) -> bool:
    """Whether `data` is a list of (image path, mask path) pairs."""
    return isinstance(data, list) and all(
        isinstance(item, Pair) or (isinstance(item, (tuple, list)) and len(item) == 2
                                   and all(isinstance(part, (str, os.PathLike)) for part in item))
        for item in data)


def as_pairs(data: str | os.PathLike | Iterable, split: str | None = None,
             label_map: str | os.PathLike | None = None, multilabel: bool = False) -> list[Pair]:
    """A data folder (its `split`, else val, test, the whole folder or train; masks remapped through
    `label_map`, channels packed into labels with `multilabel`), or (image, mask) pairs."""
    if isinstance(data, (str, os.PathLike)):
        return labelled_pairs(data, split, label_map, multilabel)
    if not _file_pairs(data):  # arrays, PIL images, tensors or a Dataset: written once as files
        return labelled_pairs(materialise(data), "train", label_map, multilabel)
    pairs = [item if isinstance(item, Pair) else Pair(Path(item[0]), Path(item[1])) for item in data]
    if not pairs:
        raise DataError("no image/mask pairs to evaluate: give a data folder or (image, mask) pairs")
    return pairs


def evaluate(model: str | os.PathLike | Predictor, data: str | os.PathLike | Iterable, *, split: str | None = None,
             scale: float | None = None, instances: bool = False, label_map: str | os.PathLike | None = None,
             progress: bool | None = None, **load_options) -> Evaluation:
    """Score `model` (a Predictor, or a checkpoint/export path with `seglab.load` options such as
    tta="flips") on `data` (a folder, or (image, mask) pairs). Pixel scores at each image's own
    size; `instances` adds the ISBI 2012 scores (adapted Rand error, variation of information);
    `label_map`: the JSON table the run's masks were remapped through (`--label-map`);
    `progress`: a bar over the images on stderr (None: only on a terminal).

    >>> scores = seglab.evaluate("runs/isbi/best.pt", "data/isbi2012", split="train")
    >>> scores.pooled["mdice"], scores.mean["pixel_error"]     # (0.84..., 0.08...)
    >>> print(scores.table())                                   # one row per class
    >>> scores.to_json()                                        # per-image rows, mean and pooled
    """
    if not isinstance(model, Predictor):
        from seglab.api.predicting import load

        model = load(model, scale=scale, **load_options)
    elif load_options:
        raise ConfigError(f"seglab.evaluate: options {sorted(load_options)} apply when a path is given; this Predictor "
                          "is built already: use predictor.with_options(...)")
    elif scale is not None:
        model = model.with_options(scale=scale)
    pairs = as_pairs(data, split, label_map, model.class_map.multilabel)
    return evaluate_predictor(model, pairs, instances=instances, progress=progress)


with_keywords(evaluate, [("device", str, "auto", "cpu, cuda, cuda:N or auto"), *declared_keywords(InferenceOptions)],
              "Options of seglab.load, when `model` is a path")
evaluate = checked_keywords("seglab.evaluate")(evaluate)
