"""Which files of a run train and which validate, how their masks map to classes, and split.json."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seglab.config import RunConfig
from seglab.data.classmap import ClassMap
from seglab.data.discover import DataLayout, Pair, discover, infer_class_map, survey_masks
from seglab.data.io import image_info
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


def split_pairs(pairs: list[Pair], percent: float, seed: int, val_files: list[str] | None = None
                ) -> tuple[list[Pair], list[Pair]]:
    """Hold out whole images: the named stems, or `percent` of the pairs chosen by a seeded shuffle."""
    if val_files:
        wanted = set(val_files)
        val = [p for p in pairs if p.image.stem in wanted]
        missing = wanted - {p.image.stem for p in val}
        if missing:
            raise DataError(f"held-out files not found among the pairs: {', '.join(sorted(missing))}")
        return [p for p in pairs if p.image.stem not in wanted], val
    if percent <= 0:
        return list(pairs), []
    count = max(1, round(len(pairs) * percent / 100))
    if count >= len(pairs):
        raise DataError(f"--validation {percent}% of {len(pairs)} pairs leaves nothing to train on")
    order = np.random.default_rng(seed).permutation(len(pairs))
    held = set(order[:count].tolist())
    return ([p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held])


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
    class_map = infer_class_map(survey, *mask_rules(data))
    channels = data.in_channels or image_info(train_pairs[0].image)[2]
    counts = [survey.counts.get(value, 0) for value in class_map.values]
    return DataPlan(layout, train_pairs, val_pairs, class_map, channels, counts)


def mask_rules(data) -> tuple:
    """(mask_values, num_classes, class_names, ignore_value, rgb) for infer_class_map, with a
    --mask-colors table turned into packed colour values."""
    if data.mask_colors:
        from seglab.data.classmap import load_color_table

        codes, names, ignore = load_color_table(data.mask_colors)
        return codes, None, data.class_names or names, ignore, True
    return data.mask_values, data.num_classes, data.class_names, data.ignore_value, False
