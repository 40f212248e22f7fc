"""Post-processing of probability maps: watershed cell instances and their label files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image
from scipy import ndimage
from skimage.segmentation import relabel_sequential, watershed

from seglab.data.writing import atomic_output


def remove_small_labels(labels: np.ndarray, min_size: int) -> np.ndarray:
    """A copy of `labels` (H, W) non-negative ints with every object of fewer than `min_size`
    pixels set to 0 (background). Label values are kept (not renumbered)."""
    labels = np.asarray(labels)
    if labels.size == 0 or min_size <= 1:
        return labels.copy()
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    return np.where(small[labels], 0, labels).astype(labels.dtype, copy=False)


def membrane_to_instances(membrane_prob: np.ndarray | torch.Tensor, seed_threshold: float = 0.2,
                          membrane_threshold: float = 0.5, min_size: int = 20,
                          smooth_sigma: float = 1.0, fill_membrane: bool = True) -> np.ndarray:
    """Cell instances from a membrane (boundary) probability map by seeded watershed.

    Seeds are the 4-connected components of confident interiors (smoothed membrane probability
    below `seed_threshold`); the smoothed probability is then flooded from the seeds, so cells
    meet on the membrane ridges.

    For ISBI 2012 models (mask 0 = membrane = class 0, 255 = cell = class 1) a one-logit model
    outputs P(cell): pass `1 - prob`.

    Args:
        membrane_prob: (H, W) float in [0, 1], high on membranes.
        seed_threshold: interiors below this (after smoothing) seed one cell per component.
        membrane_threshold: pixels at or above this are membrane when `fill_membrane` is False.
        min_size: objects smaller than this many pixels lose their seed and the area is flooded
            by their neighbours (or stays 0 where no neighbour reaches it).
        smooth_sigma: Gaussian sigma in pixels applied before seeding and flooding (0 = none);
            it removes the one-pixel gaps and speckles that would split or seed cells.
        fill_membrane: True gives every pixel a cell (touching cells, the ISBI convention);
            False keeps membrane pixels 0 and grows cells only through non-membrane pixels.

    Returns:
        (H, W) int32 labels 1..N numbered consecutively; 0 = membrane / unassigned.
    """
    prob = membrane_prob.detach().cpu().numpy() if isinstance(membrane_prob, torch.Tensor) else membrane_prob
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"membrane probability must be (H, W), got shape {prob.shape}")
    elevation = ndimage.gaussian_filter(prob, smooth_sigma) if smooth_sigma > 0 else prob
    seeds, _ = ndimage.label(elevation < seed_threshold)  # default structure: 4-connected
    mask = None if fill_membrane else prob < membrane_threshold
    labels = watershed(elevation, seeds, mask=mask)
    if min_size > 1 and labels.max() > 0:
        sizes = np.bincount(labels.ravel(), minlength=seeds.max() + 1)
        small = np.flatnonzero(sizes < min_size)
        small = small[small > 0]
        if small.size:
            # Re-flooding without the small seeds merges their area into the neighbours, which is
            # better than leaving holes in a map where every pixel should belong to a cell.
            seeds[np.isin(seeds, small)] = 0
            labels = remove_small_labels(watershed(elevation, seeds, mask=mask), min_size)
    return relabel_sequential(labels)[0].astype(np.int32)


def save_instance_labels(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write an instance label image (H, W) of non-negative ints atomically; return the path written.

    A ".png" path gets a 16-bit grayscale PNG (Pillow mode "I;16") when the largest label is
    below 65536; otherwise (or for a ".tif"/".tiff" path) a zlib-compressed TIFF, 16-bit when the
    labels fit and 32-bit when they do not. A ".png" path whose labels do not fit is written next
    to it with the ".tif" suffix instead, and that path is returned.
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"instance labels must be an (H, W) integer array, got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("instance labels must be non-negative (0 = background)")
    suffix = path.suffix.lower()
    if suffix not in (".png", ".tif", ".tiff"):
        raise ValueError(f"save instance labels as .png or .tif, not {path.name!r}")
    fits_16_bit = labels.size == 0 or labels.max() < 65536
    if suffix == ".png" and fits_16_bit:
        with atomic_output(path) as temporary:
            Image.fromarray(labels.astype(np.uint16)).save(temporary, format="PNG")
        return path
    target = path.with_suffix(".tif") if suffix == ".png" else path
    with atomic_output(target) as temporary:
        tifffile.imwrite(temporary, labels.astype(np.uint16 if fits_16_bit else np.uint32),
                         compression="zlib", photometric="minisblack", metadata=None)
    return target
