"""Pixel and region loss terms: cross-entropy, soft Dice, focal, (focal) Tversky, generalised Dice.

Each term is an nn.Module whose forward takes a `LossBatch` and returns a scalar. Region terms
(Dice, Tversky, generalised Dice) pool the pixels of the whole batch per class, treat a binary
model as two classes ([1 - p, p]) and leave ignored pixels out of every sum.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from seglab.losses.batch import LossBatch

SMOOTH = 1.0  # added to numerator and denominator of Dice and Tversky: an empty class scores 1, not 0/0


def cross_entropy_channels(batch: LossBatch) -> torch.Tensor:
    """(N, C, H, W) per-pixel cross-entropy: binary with logits for one channel, softmax for K
    (C = 1 for both), binary with logits per label of a multi-label model (C = K)."""
    if batch.multilabel:
        return F.binary_cross_entropy_with_logits(batch.logits, batch.onehot, reduction="none")
    if batch.binary:
        return F.binary_cross_entropy_with_logits(batch.logits, batch.target[:, None].float(), reduction="none")
    return F.cross_entropy(batch.logits, batch.target, reduction="none")[:, None]


def cross_entropy_map(batch: LossBatch) -> torch.Tensor:
    """(N, H, W) per-pixel cross-entropy (a multi-label model's: the class-weighted mean over labels)."""
    return batch.channel_mean(cross_entropy_channels(batch))


class CrossEntropyTerm(nn.Module):
    """sum(w * ce) / sum(w): w = pixel weight x the target's class weight, 0 where ignored (for a
    multi-label model, ce is the mean over labels weighted by the class weights)."""

    def __init__(self, num_outputs: int):
        super().__init__()

    def forward(self, batch: LossBatch) -> torch.Tensor:
        return batch.per_pixel_mean(cross_entropy_map(batch))


def soft_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor,
                   smooth: float = SMOOTH) -> torch.Tensor:
    """1 - mean soft Dice over classes, pixels of the whole batch pooled.

    probs, onehot: (N, K, H, W) float; valid: (N, 1, H, W) float, 0 where ignored.
    """
    probs = probs * valid
    onehot = onehot * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * intersection + smooth) / (total + smooth)).mean()


class SoftDiceTerm(nn.Module):
    """1 - mean over classes of (2 TP + 1) / (sum p + sum g + 1); no pixel or class weights (as in 0.2)."""

    def __init__(self, num_outputs: int):
        super().__init__()

    def forward(self, batch: LossBatch) -> torch.Tensor:
        return soft_dice_loss(batch.probs, batch.onehot, batch.valid_channel)


class FocalTerm(nn.Module):
    """Focal loss: sum(w * (1 - p_t)^gamma * ce) / sum(w), p_t the probability of the true class;
    gamma = 0 is the cross-entropy term. Class weights play the role of the paper's alpha."""

    def __init__(self, num_outputs: int, gamma: float = 2.0):
        super().__init__()
        self.gamma = float(gamma)

    def forward(self, batch: LossBatch) -> torch.Tensor:
        ce = cross_entropy_channels(batch)  # (N, C, H, W) = -log p_t (of each label: C = K)
        modulation = (1 - torch.exp(-ce)).clamp_min(0) ** self.gamma
        return batch.per_pixel_mean(batch.channel_mean(modulation * ce))


def region_counts(batch: LossBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(true positives, false positives, false negatives), each (C,): soft counts over the valid
    pixels of the batch."""
    valid = batch.valid_channel
    probs, onehot = batch.probs * valid, batch.onehot * valid
    dims = (0, 2, 3)
    tp = (probs * onehot).sum(dims)
    return tp, probs.sum(dims) - tp, onehot.sum(dims) - tp


class TverskyTerm(nn.Module):
    """Class mean of (1 - TI_c)^gamma, TI_c = (TP + 1) / (TP + alpha FP + beta FN + 1).

    alpha = beta = 0.5, gamma = 1 is the soft Dice term. Class weights weight the mean.
    """

    def __init__(self, num_outputs: int, alpha: float = 0.3, beta: float = 0.7, gamma: float = 1.0):
        super().__init__()
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)

    def forward(self, batch: LossBatch) -> torch.Tensor:
        tp, fp, fn = region_counts(batch)
        index = (tp + SMOOTH) / (tp + self.alpha * fp + self.beta * fn + SMOOTH)  # (C,)
        return batch.class_mean((1 - index).clamp_min(0) ** self.gamma)


class GeneralisedDiceTerm(nn.Module):
    """1 - 2 sum_c w_c TP_c / sum_c w_c (sum p_c + sum g_c), w_c = 1 / (pixels of class c)^2.

    A class absent from the batch's valid target gets the largest weight of the present ones (an
    infinite weight would make any false positive of it the whole loss); with every pixel ignored
    the loss is 0. Class weights multiply w_c.
    """

    EPS = 1e-5

    def __init__(self, num_outputs: int):
        super().__init__()

    def forward(self, batch: LossBatch) -> torch.Tensor:
        tp, fp, fn = region_counts(batch)
        pixels = (tp + fn).detach()  # (C,) soft count of the target = its pixel count
        present = pixels > 0
        weights = torch.where(present, 1 / pixels.clamp_min(1) ** 2, torch.zeros_like(pixels))
        largest = weights.max()  # 0 when every pixel is ignored: then all weights are 1 (no host sync)
        weights = torch.where(present, weights, largest) / largest.clamp_min(1e-30)  # the largest is 1
        weights = torch.where(largest > 0, weights, torch.ones_like(weights))
        if batch.class_weights is not None:
            weights = weights * batch.class_weights.to(weights)
        overlap = (weights * tp).sum()
        total = (weights * (2 * tp + fp + fn)).sum()
        return 1 - (2 * overlap + self.EPS) / (total + self.EPS)
