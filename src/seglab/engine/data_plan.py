"""Which files of a run train and which validate, how their masks map to classes, and split.json."""
from __future__ import annotations

from dataclasses import dataclass

from seglab.config import RunConfig
from seglab.data.classmap import ClassMap
from seglab.data.discover import (
    DataLayout,
    Pair,
    discover,
    infer_class_map,
    survey_masks,
)
from seglab.data.io import image_info
from seglab.data.splits import split_pairs
from seglab.errors import DataError, SeglabError


@dataclass
class DataPlan:
    """Which files train, which validate, and how their masks map to classes."""

    layout: DataLayout
    train_pairs: list[Pair]
    val_pairs: list[Pair]
    class_map: ClassMap
    channels: int
    class_counts: list[int] | None = None  # pixels per class in the surveyed masks


def plan_data(config: RunConfig) -> DataPlan:
    data = config.data
    if not data.root:
        raise SeglabError("no data folder given: seglab train DATA_DIR")
    layout = discover(data.root)
    pairs = layout.training_pairs()
    if not pairs:
        raise DataError(f"no image/mask pairs found in '{layout.root}': run `seglab check {layout.root}`")
    if data.val_dir:
        val_layout = discover(data.val_dir)
        val_pairs = val_layout.labelled("val") or val_layout.training_pairs()
        train_pairs = pairs
    elif layout.has_named_splits and layout.labelled("val"):
        train_pairs, val_pairs = pairs, layout.labelled("val")
    else:
        train_pairs, val_pairs = split_pairs(pairs, data.validation, config.train.seed, data.val_files)
    survey = survey_masks([p.mask for p in train_pairs + val_pairs])
    class_map = infer_class_map(survey, **data.mask_rules().as_kwargs())
    channels = data.in_channels or image_info(train_pairs[0].image)[2]
    counts = [survey.counts.get(value, 0) for value in class_map.values]
    return DataPlan(layout, train_pairs, val_pairs, class_map, channels, counts)
