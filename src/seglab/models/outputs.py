"""What a network's output means: logits at the input's size, probabilities, and classes.

Training's validation, the Predictor, exported graphs and evaluation all turn outputs into classes
here, so a pixel gets the same class whichever path scores it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from seglab.padding import mirror_pad


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
    padded = mirror_pad(x, margin, in_h - height - margin, margin, in_w - width - margin)
    return model(padded)[..., :height, :width]


def input_multiple(model: nn.Module) -> int:
    """The number every input side is padded to a multiple of inside the model (1: none), which an
    exported graph must pad to in its own ops (seglab's same-padding U-Net: 2 ** depth)."""
    return int(getattr(model, "input_multiple", 1) or 1)


def min_input_size(model: nn.Module) -> int:
    """The shortest side the model pads its input up to by itself (1: none; SMP's Mix Transformer
    and ViT encoders need a minimum beyond their multiple)."""
    return int(getattr(model, "min_input_size", 1) or 1)


def logits_to_probabilities(logits: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """(N, K, H, W) logits -> probabilities (sigmoid for K = 1 and for each label of a
    `multilabel` model, softmax otherwise)."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 or multilabel else logits.softmax(dim=1)


def probabilities_to_classes(probs: torch.Tensor, threshold: float = 0.5, multilabel: bool = False) -> torch.Tensor:
    """Probabilities (..., K, H, W) -> class indices (..., H, W) int64.

    K = 1 holds P(class 1) of a binary model: class 1 where it exceeds `threshold`. For K > 1
    the most probable class wins (`threshold` is not used). A `multilabel` model's labels are
    each present where their probability exceeds `threshold`: the result holds label k in bit k.
    """
    if multilabel:
        bits = torch.arange(probs.shape[-3], device=probs.device).view(-1, 1, 1)
        return ((probs > threshold).long() << bits).sum(dim=-3)
    if probs.shape[-3] == 1:
        return (probs[..., 0, :, :] > threshold).long()
    return probs.argmax(dim=-3)


def resize_probabilities(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, K, h, w) -> (N, K, H, W), bilinear: predictions of a model trained at `--scale` come
    back at the image's own size."""
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs, size=tuple(size), mode="bilinear", align_corners=False)
