"""Which files of a run train and which validate (the split), and how their masks map to classes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seglab.config import RunConfig
from seglab.data.classmap import ClassMap
from seglab.data.decoded import DecodedFiles
from seglab.data.discover import DataLayout, Pair, discover, survey_masks
from seglab.data.io import check_trainable_size
from seglab.data.labels.class_rules import class_map_for
from seglab.data.splits import fold_split, split_pairs
from seglab.errors import DataError, SeglabError


@dataclass
class Split:
    """Which files train, which validate, and how their masks map to classes (a Recipe's data part)."""

    layout: DataLayout
    train_pairs: list[Pair]
    val_pairs: list[Pair]
    class_map: ClassMap
    channels: int
    class_counts: list[int] | None = None  # pixels per class in the surveyed masks
    folded: list[tuple[Pair, int]] | None = None  # with --folds K: every pair and its fold 1..K


def _held_out(data, layout: DataLayout, pairs: list[Pair], seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, val): a separate --val-dir, the folder's own val/ split, or a seeded hold-out."""
    if data.val_dir:
        val_layout = discover(data.val_dir, data.label_map, data.multilabel)
        return pairs, val_layout.labelled("val") or val_layout.training_pairs()
    if layout.has_named_splits and layout.labelled("val"):
        return pairs, layout.labelled("val")
    return split_pairs(pairs, data.validation, seed, data.val_files)


def rare_presence(pairs: list[Pair], survey, class_map: ClassMap) -> list[bool] | None:
    """Whether each pair's mask holds the rarest class, when that class is rare (under 2% of the
    pixels, or in under half the images): folds then share those images out evenly."""
    counts = class_map.pixel_counts(survey.counts)
    rarest = int(np.argmin(counts))
    present = [any(class_map.holds(value, rarest) for value in survey.values_per_file.get(p.mask, ())) for p in pairs]
    share = min(counts) / max(sum(counts), 1)
    return present if share < 0.02 or sum(present) < len(pairs) / 2 else None


def split_data(config: RunConfig, files: DecodedFiles | None = None, layout: DataLayout | None = None) -> Split:
    """The split and class map of `config`'s data folder: found once (`layout`, when the caller
    found it already), masks read through `files` (the run's store of decoded files)."""
    data = config.data
    if not data.root:
        raise SeglabError("no data folder given: seglab train DATA_DIR")
    layout = layout or discover(data.root, data.label_map, data.multilabel)
    files = files if files is not None else DecodedFiles(budget_bytes=0)
    pairs = layout.training_pairs()
    if not pairs:
        raise DataError(f"no image/mask pairs found in '{layout.root}': run `seglab check {layout.root}`")
    folded = None
    if data.folds:  # every labelled pair takes part: the folds are the validation splits
        pairs = pairs + (layout.labelled("val") if layout.has_named_splits else [])
        survey = survey_masks([p.mask for p in pairs], read=files.mask, held=files.holds_mask)
        class_map = class_map_for(survey, layout, data.mask_rules(), files.palette)
        presence = rare_presence(pairs, survey, class_map)
        fold_of = {pair: fold for fold in range(1, data.folds + 1)
                   for pair in fold_split(pairs, data.folds, fold, config.train.seed, presence)[1]}
        folded = [(pair, fold_of[pair]) for pair in pairs]
        train_pairs = [pair for pair, fold in folded if fold != (data.fold or 1)]
        val_pairs = [pair for pair, fold in folded if fold == (data.fold or 1)]
    else:
        train_pairs, val_pairs = _held_out(data, layout, pairs, config.train.seed)
        survey = survey_masks([p.mask for p in train_pairs + val_pairs], read=files.mask, held=files.holds_mask)
        class_map = class_map_for(survey, layout, data.mask_rules(), files.palette)
    for pair in train_pairs + val_pairs:  # headers only: what `seglab check` refuses, train refuses too
        check_trainable_size(pair.image, *files.header(pair.image)[:2])
    channels = data.in_channels or files.header(train_pairs[0].image)[2]
    counts = class_map.pixel_counts(survey.counts)
    return Split(layout, train_pairs, val_pairs, class_map, channels, counts, folded)
