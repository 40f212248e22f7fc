"""Which images of a run train and which validate: the seeded hold-out and the folds (split.json is
written and read by runtime.run_files)."""
from __future__ import annotations

import numpy as np

from seglab.data.discover import Pair
from seglab.errors import DataError


def split_pairs(pairs: list[Pair], percent: float, seed: int, val_files: list[str] | None = None
                ) -> tuple[list[Pair], list[Pair]]:
    """Hold out whole images: the named stems, or `percent` of the pairs chosen by a seeded shuffle."""
    if val_files:
        wanted = set(val_files)
        val = [p for p in pairs if p.image.stem in wanted]
        missing = wanted - {p.image.stem for p in val}
        if missing:
            raise DataError(f"held-out files not found among the pairs: {', '.join(sorted(missing))}")
        if len(val) == len(pairs):
            raise DataError(f"--val-files holds out all {len(pairs)} pairs: nothing is left to train on")
        return [p for p in pairs if p.image.stem not in wanted], val
    if percent <= 0:
        return list(pairs), []
    count = max(1, round(len(pairs) * percent / 100))
    if count >= len(pairs):
        raise DataError(f"--validation {percent}% of {len(pairs)} pairs leaves nothing to train on")
    order = np.random.default_rng(seed).permutation(len(pairs))
    held = set(order[:count].tolist())
    return ([p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held])


def fold_split(pairs: list[Pair], folds: int, fold: int, seed: int, presence: list[bool] | None = None
               ) -> tuple[list[Pair], list[Pair]]:
    """(train, val) of fold `fold` (1..folds): whole images dealt out to the folds in turn after a
    seeded shuffle, so the folds' validation sets are disjoint and cover every pair. With
    `presence` (a rare class in each pair's mask), the images holding it are dealt first, so every
    fold validates on its share of them."""
    if folds > len(pairs):
        raise DataError(f"--folds {folds} needs at least {folds} image/mask pairs; there are {len(pairs)}")
    order = np.random.default_rng(seed).permutation(len(pairs)).tolist()
    if presence is not None:
        order.sort(key=lambda i: not presence[i])  # stable: rare-class images first, shuffled among themselves
    fold_of = {index: k % folds for k, index in enumerate(order)}
    val = [p for i, p in enumerate(pairs) if fold_of[i] == fold - 1]
    return [p for i, p in enumerate(pairs) if fold_of[i] != fold - 1], val
