"""Mirror padding and centre crops of (..., H, W) tensors: the one implementation every layer uses.

`mirror_pad` reflects without repeating the edge (NumPy/PyTorch "reflect"), and reflects again
when a pad is wider than the side, so any image can be padded by any amount; a side of one pixel
is replicated. `inference.export_graph.reflect_pad_index` computes the same rows in traceable ops
for exported graphs, whose sizes are only known when they run.
"""
from __future__ import annotations

import numpy as np
import torch


def mirror_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Indices into [0, size) for positions start..stop-1 reflected at the borders without
    repeating the edge, repeatedly when the range is wider than `size`.

    >>> mirror_indices(-3, 6, 4).tolist()
    [3, 2, 1, 0, 1, 2, 3, 2, 1]
    """
    positions = np.arange(start, stop, dtype=np.int64)
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    positions = np.mod(positions, period)
    return np.where(positions < size, positions, period - positions)


def mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Mirror-pad the last two dims of x (..., H, W) -> (..., H + top + bottom, W + left + right)."""
    if min(top, bottom, left, right) < 0:
        raise ValueError("pads must be non-negative")
    if not (top or bottom or left or right):
        return x
    height, width = x.shape[-2:]
    rows = torch.from_numpy(mirror_indices(-top, height + bottom, height)).to(x.device)
    cols = torch.from_numpy(mirror_indices(-left, width + right, width)).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def padded_size(size: int, multiple: int = 1, minimum: int = 1) -> int:
    """The side a network that takes multiples of `multiple`, at least `minimum` long, sees for an
    input side of `size`: the next multiple, raised to the smallest multiple >= `minimum`.

    >>> padded_size(1001, 32), padded_size(64, 16, minimum=128), padded_size(37, 1)
    (1024, 128, 37)
    """
    if size < 1 or multiple < 1 or minimum < 1:
        raise ValueError(f"size, multiple and minimum must be positive, got {size}, {multiple}, {minimum}")
    return max(-(-size // multiple), -(-minimum // multiple)) * multiple


def pad_to_multiple(x: torch.Tensor, multiple: int = 1, minimum: int = 1) -> torch.Tensor:
    """x (..., H, W) mirrored on the far sides (bottom, right) to (..., padded_size(H), padded_size(W)).

    A network that needs sizes divisible by `multiple` runs on the result and its output is cropped
    back with `[..., :H, :W]`: the pixels of the image keep their positions, so the crop is exact.
    """
    height, width = x.shape[-2:]
    return mirror_pad(x, 0, padded_size(height, multiple, minimum) - height,
                      0, padded_size(width, multiple, minimum) - width)


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The central (height, width) window of x (..., H, W); H >= height and W >= width."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top:top + height, left:left + width]
