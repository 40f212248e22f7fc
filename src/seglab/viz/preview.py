"""A picture of what augmentation does to a data set: augmented images with their masks outlined."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
from skimage.segmentation import find_boundaries

from seglab.data.augment import BatchAugmenter
from seglab.data.writing import atomic_output

_PAIRS_PER_ROW = 4
_OUTLINE_RGB = (1.0, 0.15, 0.1)
_IGNORED_RGB = (0.6, 0.6, 0.6)


def save_augment_preview(images: torch.Tensor, masks: torch.Tensor, augmenter: BatchAugmenter,
                         path: str | os.PathLike, n: int = 8, out_size: tuple[int, int] | None = None,
                         seed: int = 0) -> Path:
    """Write a PNG grid of `n` augmented (image, mask) pairs; returns the path written.

    images: (M, C, H, W) float; masks: (M, H, W) int64 class indices (ignore_index for void).
    Each pair shows the image (first channel, or RGB when C == 3) with the mask's class
    boundaries outlined in red, then the mask itself with ignored pixels in grey. Samples are
    drawn from `images` with `seed` (repeating when M < n) and augmented by a fresh
    BatchAugmenter with `augmenter`'s config and `seed`, so the preview is reproducible and
    leaves the training augmenter's random stream untouched. The file is written atomically.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    picker = torch.Generator().manual_seed(seed)
    index = torch.randperm(images.shape[0], generator=picker).repeat(math.ceil(n / images.shape[0]))[:n]
    fresh = BatchAugmenter(augmenter.config, seed=seed, ignore_index=augmenter.ignore_index)
    index = index.to(images.device)
    shown_images, shown_masks, _ = fresh(images[index].float(), masks[index].long(), out_size=out_size)
    shown_images, shown_masks = shown_images.cpu().numpy(), shown_masks.cpu().numpy()

    columns = min(n, _PAIRS_PER_ROW)
    rows = math.ceil(n / columns)
    figure = Figure(figsize=(2.2 * 2 * columns, 2.3 * rows))
    axes = figure.subplots(rows, 2 * columns, squeeze=False)
    for axis in axes.flat:
        axis.set_axis_off()
    ignored = shown_masks == fresh.ignore_index
    top_class = max(int(shown_masks[~ignored].max(initial=0)), 1)
    for k in range(n):
        row, column = divmod(k, columns)
        image_axis, mask_axis = axes[row, 2 * column], axes[row, 2 * column + 1]
        mask = shown_masks[k]
        image_axis.imshow(_outlined(shown_images[k], mask))
        image_axis.set_title(f"sample {k}", fontsize=8)
        coloured = colormaps["viridis"](np.clip(mask, 0, top_class) / top_class)[..., :3]  # (H, W, 3)
        coloured[ignored[k]] = _IGNORED_RGB
        mask_axis.imshow(coloured, interpolation="nearest")
        mask_axis.set_title("mask", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    return path


def _outlined(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """image (C, H, W) any range, mask (H, W) -> (H, W, 3) RGB in [0, 1] with class boundaries in red."""
    shown = image[:3] if image.shape[0] == 3 else image[:1].repeat(3, axis=0)
    low, high = float(shown.min()), float(shown.max())
    rgb = ((shown - low) / max(high - low, 1e-6)).transpose(1, 2, 0).copy()  # (H, W, 3)
    rgb[find_boundaries(mask, mode="inner")] = _OUTLINE_RGB
    return rgb


def write_preview(report, path: str | Path, preset: str = "paper", count: int = 8,
                  crop: tuple[int, int] | None = None, max_images: int = 16) -> Path:
    """A PNG grid of `count` augmented pairs of a checked data folder (a `Preflight` report), as
    training would see them (same preset and crop), from up to `max_images` pairs of one size."""
    from seglab.data.augment_config import augment_preset
    from seglab.data.datasets import load_pair
    from seglab.data.io import image_info

    pairs = report.layout.training_pairs() or [p for s in report.layout.splits.values() for p in s.pairs]
    items = [load_pair(pair, report.class_map, image_info(pairs[0].image)[2], 1.0, "minmax")[:2]
             for pair in pairs[:max_images]]
    items = [item for item in items if item[0].shape == items[0][0].shape]
    images = torch.stack([image for image, _ in items])
    masks = torch.stack([mask for _, mask in items])
    return save_augment_preview(images, masks, BatchAugmenter(augment_preset(preset), seed=0), path, count, crop)
