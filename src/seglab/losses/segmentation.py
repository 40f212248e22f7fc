"""Segmentation losses: (B)CE + soft Dice, optional pixel weights (U-Net border map), ignore index."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from seglab.data.classmap import IGNORE_INDEX
from seglab.errors import SeglabError
from seglab.losses import LOSSES
from seglab.padding import center_crop


def soft_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor,
                   smooth: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over classes, pixels of the whole batch pooled.

    probs, onehot: (N, K, H, W) float; valid: (N, 1, H, W) float, 0 where ignored.
    """
    probs = probs * valid
    onehot = onehot * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * intersection + smooth) / (total + smooth)).mean()


class SegmentationLoss(nn.Module):
    """Cross-entropy (sigmoid for one output channel, softmax for K) plus optional soft Dice.

    forward(logits (N, K, h, w), target (N, H, W) int64, pixel_weights (N, H, W) float or None).
    Pixels whose target is `ignore_index` count in neither term. For unpadded networks
    (h < H) the target is centre-cropped to the logits. Pixel weights (the U-Net paper's border
    map) weight the cross-entropy term: sum(w * ce) / sum(w).
    """

    def __init__(self, num_outputs: int, name: str = "ce+dice", class_weights: list[float] | None = None,
                 ignore_index: int = IGNORE_INDEX, dice_weight: float = 1.0):
        super().__init__()
        if name not in LOSSES:
            raise SeglabError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
        self.num_outputs = num_outputs
        self.use_ce = name != "dice"
        self.dice_weight = dice_weight if "dice" in name else 0.0
        self.ignore_index = ignore_index
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        if weights is not None and len(weights) != max(num_outputs, 2):
            raise SeglabError(f"{len(weights)} class weights for {max(num_outputs, 2)} classes")
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
        if logits.shape[-2:] != target.shape[-2:]:
            target = center_crop(target, *logits.shape[-2:])
            if pixel_weights is not None:
                pixel_weights = center_crop(pixel_weights, *logits.shape[-2:])
        logits = logits.float()  # losses in fp32 even under autocast
        valid = target != self.ignore_index  # (N, H, W)
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        weight = valid.float() if pixel_weights is None else pixel_weights.float() * valid
        if self.class_weights is not None:
            weight = weight * self.class_weights[safe_target]
        loss = logits.new_zeros(())
        if self.num_outputs == 1:
            logit = logits[:, 0]
            if self.use_ce:
                ce = F.binary_cross_entropy_with_logits(logit, safe_target.float(), reduction="none")
                loss = loss + (ce * weight).sum() / weight.sum().clamp_min(1e-6)
            if self.dice_weight:
                p = torch.sigmoid(logit)[:, None]
                probs = torch.cat([1 - p, p], dim=1)  # (N, 2, H, W)
                onehot = F.one_hot(safe_target, 2).permute(0, 3, 1, 2).float()
                loss = loss + self.dice_weight * soft_dice_loss(probs, onehot, valid[:, None].float())
            return loss
        if self.use_ce:
            ce = F.cross_entropy(logits, safe_target, reduction="none")  # (N, H, W)
            loss = loss + (ce * weight).sum() / weight.sum().clamp_min(1e-6)
        if self.dice_weight:
            probs = logits.softmax(dim=1)
            onehot = F.one_hot(safe_target, self.num_outputs).permute(0, 3, 1, 2).float()
            loss = loss + self.dice_weight * soft_dice_loss(probs, onehot, valid[:, None].float())
        return loss
