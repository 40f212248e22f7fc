"""Intensity normalisations by name, and the fixed statistics of pretrained encoders: plain values, no tensors.

A normalisation is one of the modes in NORMALIZATIONS, computed from each image, or the fixed
statistics a pretrained encoder was trained with, `{"mean": [C numbers], "std": [C numbers]}` in
units of pixels / max (ImageNet's for most encoders), one pair per channel of the model's input
(`fixed_normalization` spreads RGB statistics over other channel counts). `data.preprocess` applies
them to tensors; config and the command's flags need only the names, so this module imports no torch.
"""
from __future__ import annotations

import math
from typing import Union

from seglab.errors import ConfigError

NORMALIZATIONS = ("per_image", "minmax", "none")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
Normalization = Union[str, dict]  # a mode of NORMALIZATIONS, or {"mean": [...], "std": [...]}


def fixed_normalization(mean, std, channels: int) -> dict:
    """An encoder's RGB (mean, std) for an input of `channels` channels, as its first convolution is
    adapted (`models.pretrained.adapt_first_conv`): one channel takes the averages (its filter is
    the sum of the RGB filters, so a gray image is seen as its RGB copy), other counts cycle R, G,
    B, R, ... (their filters cycle the same way)."""
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if channels == len(mean):
        return {"mean": mean, "std": std}
    if channels == 1:
        return {"mean": [sum(mean) / len(mean)], "std": [sum(std) / len(std)]}
    return {"mean": [mean[i % len(mean)] for i in range(channels)], "std": [std[i % len(std)] for i in range(channels)]}


def check_normalization(value, channels: int | None = None) -> Normalization:
    """`value` if it is a mode of NORMALIZATIONS or fixed statistics (one finite mean and one
    positive std per channel); ConfigError otherwise."""
    if isinstance(value, str) and value in NORMALIZATIONS:
        return value
    if isinstance(value, dict) and set(value) == {"mean", "std"}:
        mean, std = value["mean"], value["std"]
        numbers = isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and len(mean) == len(std) > 0
        numbers = numbers and all(isinstance(v, (int, float)) and math.isfinite(v) for v in (*mean, *std))
        if numbers and all(v > 0 for v in std) and (channels is None or len(mean) == channels):
            return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    wanted = f"{channels} " if channels else ""
    raise ConfigError(f"invalid normalization {value!r}; expected one of {', '.join(NORMALIZATIONS)}, or "
                      f"{{'mean': [{wanted}numbers], 'std': [{wanted}numbers > 0]}}")
