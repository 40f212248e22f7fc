"""Helpers that work for every registered model."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def reflect_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Mirror-pad (N, C, H, W) by any amount, reflecting repeatedly when a pad exceeds the side."""
    while top or bottom or left or right:
        height, width = x.shape[-2:]
        step = [min(left, width - 1), min(right, width - 1), min(top, height - 1), min(bottom, height - 1)]
        if max(step) == 0:  # a 1-pixel side cannot reflect: replicate the rest
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        x = F.pad(x, tuple(step), mode="reflect")
        left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
    return x


def full_size_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits (N, K, H, W) at the input's size, for padded and unpadded networks alike.

    Unpadded U-Nets (model.margin > 0) see the image mirrored by `margin` on each side and
    enlarged to a valid input size, as the paper's overlap-tile strategy does at the border.
    """
    margin = getattr(model, "margin", 0)
    if not margin:
        return model(x)
    height, width = x.shape[-2:]
    in_h, in_w = model.valid_input_size(height), model.valid_input_size(width)
    padded = reflect_pad(x, margin, in_h - height - margin, margin, in_w - width - margin)
    return model(padded)[..., :height, :width]
