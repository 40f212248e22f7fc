"""Turn a decoded image into the network's input: channels, scale, intensity normalisation.

Training and prediction both call `prepare_image`, so a model always sees what it was trained on.

A normalisation (`seglab.data.normalization`) is one of the modes in NORMALIZATIONS, computed from
each image, or the fixed statistics a pretrained encoder was trained with.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from seglab.data.normalization import NORMALIZATIONS, Normalization
from seglab.errors import DataError


def to_float(array: np.ndarray) -> np.ndarray:
    """(H, W, C) of any dtype -> float32 in [0, 1] for integer images, unchanged values for floats."""
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    return array.astype(np.float32)


def match_channels(array: np.ndarray, channels: int, name: str = "image") -> np.ndarray:
    """(H, W, C) -> (H, W, channels): gray is repeated for RGB models; RGB with three equal
    channels is taken as gray; real colour for a gray model is refused."""
    have = array.shape[-1]
    if have == channels:
        return array
    if have == 1:
        return np.repeat(array, channels, axis=-1)
    if channels == 1 and have >= 3:
        if (array[..., 1] == array[..., 0]).all() and (array[..., 2] == array[..., 0]).all():
            return array[..., :1]
        raise DataError(f"'{name}' is a colour image but the model takes 1 channel: convert it to "
                        "grayscale, or train a model with --in-channels 3")
    raise DataError(f"'{name}' has {have} channels but the model takes {channels}")


def normalization_statistics(image: torch.Tensor, mode: Normalization) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, divide) of "per_image" (mean, std) or "minmax" (low, high - low) normalisation, per
    image and channel, or the fixed {"mean", "std"} of a pretrained encoder: (..., C, 1, 1) for
    images (..., C, H, W); `divide` is at least 1e-6. Traceable: sizes come from the image."""
    dims = (-2, -1)
    if isinstance(mode, dict):
        like = torch.zeros_like(image[..., :1, :1])  # (..., C, 1, 1), dynamic when traced
        mean = torch.tensor(mode["mean"], dtype=image.dtype, device=image.device)[:, None, None]  # (C, 1, 1)
        std = torch.tensor(mode["std"], dtype=image.dtype, device=image.device)[:, None, None]
        return like + mean, like + std
    if mode == "per_image":
        mean = image.mean(dim=dims, keepdim=True)
        with warnings.catch_warnings():  # a one-pixel image has no spread: NaN, then 0, without a warning
            warnings.simplefilter("ignore", UserWarning)
            std = image.std(dim=dims, keepdim=True).nan_to_num(0.0)
        return mean, std.clamp_min(1e-6)
    if mode == "minmax":
        low = image.amin(dim=dims, keepdim=True)
        high = image.amax(dim=dims, keepdim=True)
        return low, (high - low).clamp_min(1e-6)
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, not {mode!r}")


def normalize(image: torch.Tensor, mode: Normalization) -> torch.Tensor:
    """Intensity normalisation of (C, H, W) or (N, C, H, W) float images, per image and channel.

    "per_image": zero mean, unit variance (the ISBI slices differ in contrast);
    "minmax": stretched to [0, 1]; "none": left as read ([0, 1] for integer files);
    {"mean": [...], "std": [...]}: (x - mean) / std per channel, as a pretrained encoder expects.
    """
    if mode == "none":
        return image
    shift, divide = normalization_statistics(image, mode)
    return (image - shift) / divide


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Size after `--scale`, never below one pixel."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) float -> (C, h, w), bilinear with antialiasing when shrinking."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                         antialias=True)[0]


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) int64 class indices -> (h, w), nearest neighbour (classes never blend)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()


def prepare_image(array: np.ndarray, channels: int, scale: float = 1.0,
                  normalization: Normalization = "per_image", name: str = "image",
                  raw_max: float | None = None) -> torch.Tensor:
    """Decoded (H, W, C) array -> normalised float32 tensor (channels, h, w) at `scale`.

    With `raw_max`, pixels are not normalised but rescaled to [0, raw_max] (e.g. 255), the raw
    input of exported models, which normalise inside their graph; 16-bit files are rescaled too.
    """
    matched = match_channels(array, channels, name)
    pixels = to_float(matched) * raw_max if raw_max else to_float(matched)
    raw = raw_max is not None
    image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)  # (C, H, W)
    if scale != 1.0:
        image = resize_image(image, scaled_size(image.shape[1], image.shape[2], scale))
    return image if raw else normalize(image, normalization)
