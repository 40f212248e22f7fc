"""Evenly spread samples of long lists: what the check, the mask survey, the fingerprint, validation
during training and the report read of a large folder, the same files each time for the same list."""
from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np

Item = TypeVar("Item")


def evenly_spread(items: Sequence[Item], count: int) -> list[Item]:
    """`count` of `items` (all of them when there are no more), first and last included, spaced
    evenly and in their order."""
    if count <= 0:
        return []
    if len(items) <= count:
        return list(items)
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]
