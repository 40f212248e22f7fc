"""LossBatch: what every loss term reads, prepared once per step (ignored pixels, weights, probabilities)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F


@dataclass
class LossBatch:
    """One batch as the terms see it.

    logits: (N, K, H, W) float32, K = 1 (sigmoid) or the class count (softmax), or with
    `multilabel` the label count (a sigmoid each); target: (N, H, W) int64 class indices (label bit
    sets), ignored pixels set to 0; valid: (N, H, W) bool, False where ignored; weight: (N, H, W)
    float32, the pixel weights times the target's class weight (multi-label: the pixel weights),
    0 where ignored; class_weights: (max(K, 2),) float32 or None (multi-label: (K,)).
    """

    logits: torch.Tensor
    target: torch.Tensor
    valid: torch.Tensor
    weight: torch.Tensor
    class_weights: torch.Tensor | None
    multilabel: bool = False

    @property
    def binary(self) -> bool:
        return self.logits.shape[1] == 1 and not self.multilabel

    @cached_property
    def probs(self) -> torch.Tensor:
        """(N, C, H, W) class probabilities, C = 2 for a binary model ([1 - p, p]); each label's
        probability for a multi-label model (C = K)."""
        if self.multilabel:
            return torch.sigmoid(self.logits)
        if self.binary:
            p = torch.sigmoid(self.logits)
            return torch.cat([1 - p, p], dim=1)
        return self.logits.softmax(dim=1)

    @cached_property
    def onehot(self) -> torch.Tensor:
        """(N, C, H, W) float one-hot target (C as in `probs`); each label's 0/1 plane of a
        multi-label target."""
        if self.multilabel:
            bits = torch.arange(self.logits.shape[1], device=self.target.device).view(1, -1, 1, 1)
            return ((self.target[:, None] >> bits) & 1).float()
        return F.one_hot(self.target, max(self.logits.shape[1], 2)).permute(0, 3, 1, 2).float()

    def channel_mean(self, values: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) per-channel pixel values -> (N, H, W): their mean over the labels of a
        multi-label model, weighted by the class weights when given (C = 1 otherwise: squeezed)."""
        if not self.multilabel:
            return values[:, 0]
        if self.class_weights is None:
            return values.mean(1)
        weights = self.class_weights.to(values).view(1, -1, 1, 1)
        return (values * weights).sum(1) / weights.sum().clamp_min(1e-6)

    @property
    def valid_channel(self) -> torch.Tensor:
        """(N, 1, H, W) float, 0 where ignored."""
        return self.valid[:, None].float()

    def per_pixel_mean(self, values: torch.Tensor) -> torch.Tensor:
        """sum(weight * values) / sum(weight) for values (N, H, W): 0 when every pixel is ignored."""
        return (values * self.weight).sum() / self.weight.sum().clamp_min(1e-6)

    def class_mean(self, values: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of per-class values (C,), weighted by the class weights when given, over the
        classes where `present` (C,) bool is True (all when None); 0 for none (kept in the graph)."""
        weights = torch.ones_like(values) if self.class_weights is None else self.class_weights.to(values)
        if present is not None:
            weights = weights * present
        return (values * weights).sum() / weights.sum().clamp_min(1e-6)
