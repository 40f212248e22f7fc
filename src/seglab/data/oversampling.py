"""Rare-class oversampling (--oversample P): where the rare classes' pixels are, and which crops centre on them.

When the training data loads, `RareLocations.from_masks` finds the rare classes (those under
RARE_SHARE of the training pixels; with none, the rarest class) and keeps, per image and rare
class, up to LOCATIONS_PER_CLASS pixel positions spread evenly over the class's pixels in raster
order: a few kilobytes per image, and no random draw, so every DDP rank builds the same index.

Each training crop then centres on a rare pixel with probability P. The draw is a pure function
of (seed, epoch, slot): the slot is the crop's place in the epoch (the resident path's global
position, the DataLoader's item index), so it does not depend on which rank takes the crop or on
how many crops came before, and a resumed run draws the same crops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

RARE_SHARE = 0.02  # the "small classes": each under 2% of CamVid's pixels
LOCATIONS_PER_CLASS = 256
STREAM = 27  # keeps these draws apart from the crops' own (seed, epoch, index) stream


def rare_classes(counts: np.ndarray, share: float = RARE_SHARE) -> list[int]:
    """The classes present in `counts` (K,) pixels per class whose share is under `share`; with
    none, the least frequent class present (binary masks: the smaller class). [] for one class."""
    counts = np.asarray(counts, dtype=np.float64)
    present = np.flatnonzero(counts > 0)
    if len(present) < 2:
        return []
    rare = [int(k) for k in present if counts[k] / counts.sum() < share]
    return rare or [int(present[np.argmin(counts[present])])]


def spread(flat_positions: np.ndarray, limit: int) -> np.ndarray:
    """Up to `limit` of the sorted positions, evenly spaced (first and last kept)."""
    if len(flat_positions) <= limit:
        return flat_positions
    return flat_positions[np.linspace(0, len(flat_positions) - 1, limit).round().astype(np.int64)]


@dataclass
class RareLocations:
    """Per image, per rare class, (n, 2) int32 (row, col) positions of that class's pixels."""

    classes: list[int]
    locations: list[dict[int, np.ndarray]]

    @classmethod
    def from_masks(cls, masks: Iterable, num_classes: int, share: float = RARE_SHARE,
                   per_class: int = LOCATIONS_PER_CLASS, multilabel: bool = False) -> RareLocations:
        """masks: (H, W) integer arrays or tensors of class indices (negative: ignored), or with
        `multilabel` of label bit sets (K = `num_classes` labels), in image order, at the size the
        crops are cut from."""
        counts = np.zeros(num_classes, dtype=np.int64)
        kept: list[dict[int, np.ndarray]] = []
        for mask in masks:
            mask = np.asarray(mask)
            if multilabel:
                image, found = _label_locations(mask, num_classes, per_class)
                counts += found
                kept.append(image)
                continue
            flat = mask.reshape(-1)
            valid = flat[(flat >= 0) & (flat < num_classes)]
            counts += np.bincount(valid, minlength=num_classes)[:num_classes]
            order = np.argsort(flat, kind="stable")  # positions grouped by class, raster order within one
            starts = np.searchsorted(flat[order], np.arange(num_classes + 1))
            width = mask.shape[-1]
            image = {}
            for k in range(num_classes):
                positions = spread(order[starts[k]:starts[k + 1]], per_class)
                if len(positions):
                    image[k] = np.stack([positions // width, positions % width], 1).astype(np.int32)
            kept.append(image)
        classes = rare_classes(counts, share)
        locations = [{k: v for k, v in image.items() if k in classes} for image in kept]
        return cls(classes, locations)

    def centre(self, image: int, rng: np.random.Generator) -> tuple[int, int] | None:
        """A (row, col) of a rare class in image `image`: the class drawn evenly among the rare
        classes it holds, then one of its kept positions; None when it holds none."""
        held = sorted(self.locations[image])
        if not held:
            return None
        positions = self.locations[image][held[int(rng.integers(len(held)))]]
        row, col = positions[int(rng.integers(len(positions)))]
        return int(row), int(col)

    def draw(self, image: int, share: float, seed: int, epoch: int, slot: int) -> tuple[int, int] | None:
        """The centre of the crop at `slot` of `epoch` (an image position), or None for a crop
        placed at random: with probability `share`, when the image holds a rare class."""
        rng = np.random.default_rng([seed, epoch, slot, STREAM])
        if share <= 0 or rng.random() >= share:
            return None
        return self.centre(image, rng)

    def nbytes(self) -> int:
        return sum(v.nbytes for image in self.locations for v in image.values())


def _label_locations(mask: np.ndarray, labels: int, per_class: int) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """A multi-label mask (H, W) of bit sets -> ({label: (n, 2) int32 kept positions}, (K,) pixels per label)."""
    flat = np.where(mask >= 0, mask, 0).reshape(-1)
    width = mask.shape[-1]
    image, counts = {}, np.zeros(labels, dtype=np.int64)
    for k in range(labels):
        positions = np.flatnonzero((flat >> k) & 1)
        counts[k] = len(positions)
        if len(positions):
            kept = spread(positions, per_class)
            image[k] = np.stack([kept // width, kept % width], 1).astype(np.int32)
    return image, counts


def window_start(centre: int, window: int, length: int) -> int:
    """The start of a `window`-long crop of a `length`-long side centred on `centre`, moved inside
    the side (centre still inside); 0 when the side is shorter than the window (it is padded)."""
    return int(min(max(centre - window // 2, 0), max(length - window, 0)))
