"""A data set's fingerprint: what a training plan needs to know about the images and masks.

Image sizes and channels, intensity statistics, the share of each class, the size of the
connected regions of each class (the scale of the objects), and the kind of images (grayscale
microscopy-like, or colour photos). Measured on an evenly spread sample of the training pairs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from seglab.data.classmap import ClassMap, class_masks
from seglab.data.decoded import DecodedFiles
from seglab.data.discover import Pair
from seglab.data.preprocess import to_float
from seglab.data.samples import evenly_spread
from seglab.data.truth import read_truth

SAMPLED = 24        # pairs decoded for statistics and object sizes (headers are read for all)


@dataclass
class Fingerprint:
    """Facts about the training images; `asdict()` is what plan.json records."""

    images: int
    median_size: tuple[int, int]              # (H, W) over all training images (headers)
    min_size: tuple[int, int]
    channels: int
    kind: str                                 # "grayscale" or "colour"
    intensity_mean: float                     # of the sampled images scaled to [0, 1]
    intensity_std: float
    class_shares: dict[str, float] = field(default_factory=dict)        # pixel share of each class
    object_diameter: dict[str, float] = field(default_factory=dict)     # median equivalent diameter, px
    object_counts: dict[str, float] = field(default_factory=dict)       # mean regions per image

    @property
    def smallest_side(self) -> int:
        return min(self.min_size)

    def to_dict(self) -> dict:
        return asdict(self)


def _is_gray(image: np.ndarray) -> bool:
    """One channel, or colour channels that are all equal (a gray picture saved as RGB)."""
    if image.shape[-1] == 1:
        return True
    sample = image[::7, ::7]
    return bool((sample[..., 1:] == sample[..., :1]).all())


def _regions(where: np.ndarray) -> tuple[int, float]:
    """(number of 4-connected regions of one class, median equivalent diameter in px) from where
    the class is, (H, W) bool."""
    labels, count = ndimage.label(where)
    if count == 0:
        return 0, 0.0
    areas = np.bincount(labels.ravel())[1:]
    return count, float(np.median(2 * np.sqrt(areas / np.pi)))


def fingerprint(pairs: list[Pair], class_map: ClassMap, sample: int = SAMPLED,
                files: DecodedFiles | None = None) -> Fingerprint:
    """Measure the training pairs: sizes from every header, the rest from an evenly spread sample
    (decoded through `files`, the run's store, when given)."""
    files = files if files is not None else DecodedFiles(budget_bytes=0)
    sizes = np.array([files.header(pair.image)[:2] for pair in pairs])  # (N, 2) as (H, W)
    counts = np.zeros(class_map.num_classes, dtype=np.int64)
    regions: dict[int, list[tuple[int, float]]] = {k: [] for k in range(class_map.num_classes)}
    gray, means, stds, channels = [], [], [], 1
    for pair in evenly_spread(pairs, sample):
        image = files.image(pair.image)
        truth = read_truth(pair.mask, class_map, image.shape[:2], pair.image, raw=files.mask(pair.mask))
        channels = max(channels, image.shape[-1])
        gray.append(_is_gray(image))
        pixels = to_float(image)
        means.append(float(pixels.mean()))
        stds.append(float(pixels.std()))
        planes = class_masks(truth, class_map)  # (K, H, W): each class, or each label
        counts += planes.reshape(class_map.num_classes, -1).sum(1)
        for k in range(class_map.num_classes):
            regions[k].append(_regions(planes[k]))
    total = max(int(counts.sum()), 1)
    names = list(class_map.names)
    diameters = {names[k]: float(np.median([d for n, d in found if n])) if any(n for n, _ in found) else 0.0
                 for k, found in regions.items()}
    per_image = {names[k]: float(np.mean([n for n, _ in found])) for k, found in regions.items()}
    all_gray = all(gray)
    return Fingerprint(
        images=len(pairs), median_size=tuple(int(v) for v in np.median(sizes, axis=0)),
        min_size=tuple(int(v) for v in sizes.min(axis=0)), channels=1 if all_gray else channels,
        kind="grayscale" if all_gray else "colour", intensity_mean=float(np.mean(means)),
        intensity_std=float(np.mean(stds)),
        class_shares={names[k]: counts[k] / total for k in range(class_map.num_classes)},
        object_diameter=diameters, object_counts=per_image)
