"""The Lovász extension of the Jaccard loss (Berman et al. 2018): softmax for K classes, hinge for binary.

Written from the paper's definition: sorting a class's pixel errors in decreasing order, the loss is
their dot product with the discrete gradient of the Jaccard loss of the growing set of mispredicted
pixels. Pixels of the whole batch are pooled. Ignored pixels get error -1 and truth 0: they sort
after every valid pixel and add nothing, so shapes stay fixed and nothing waits for the device.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from seglab.losses.batch import LossBatch


def jaccard_gradient(truth_sorted: torch.Tensor) -> torch.Tensor:
    """truth_sorted: (P, ...) float 0/1, pixels in decreasing order of error along dim 0 -> (P, ...)
    the increments of the Jaccard loss 1 - |truth minus the first i| / |truth union the first i|."""
    total = truth_sorted.sum(0)
    intersection = total - truth_sorted.cumsum(0)
    union = total + (1 - truth_sorted).cumsum(0)  # >= 1 from the first pixel on
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_of_errors(errors: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """errors (P, C) float (ignored pixels < 0), truth (P, C) float 0/1 -> (C,) each column's Lovász
    extension of the Jaccard loss at relu(errors)."""
    errors_sorted, order = torch.sort(errors, dim=0, descending=True)
    return (torch.relu(errors_sorted) * jaccard_gradient(torch.gather(truth, 0, order))).sum(0)


def lovasz_hinge(logits: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """logits (P,) float, truth (P,) float 0/1, valid (P,) bool -> scalar: the Lovász hinge, whose
    errors are 1 - logit * sign (sign +1 for the foreground, -1 for the background)."""
    errors = torch.where(valid, 1 - logits * (2 * truth - 1), -1.0)
    return lovasz_of_errors(errors[:, None], (truth * valid)[:, None])[0]


def lovasz_hinge_labels(logits: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor,
                        class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """logits (P, K) float, truth (P, K) float 0/1, valid (P,) bool -> scalar: the mean over the
    labels of a multi-label model (weighted by class_weights (K,) when given) of each label's
    Lovász hinge."""
    errors = torch.where(valid[:, None], 1 - logits * (2 * truth - 1), -1.0)
    losses = lovasz_of_errors(errors, truth * valid[:, None])  # (K,)
    if class_weights is None:
        return losses.mean()
    weights = class_weights.to(losses)
    return (losses * weights).sum() / weights.sum().clamp_min(1e-6)


def lovasz_softmax(probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                   class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """probs (P, C) float, target (P,) int64, valid (P,) bool -> scalar: the mean over the classes
    present in the valid target (weighted by class_weights (C,) when given) of each class's Lovász
    loss of the errors |[target == c] - p_c|; 0 when no pixel is valid."""
    classes = probs.shape[1]
    truth = (target[:, None] == torch.arange(classes, device=target.device)) & valid[:, None]  # (P, C)
    truth = truth.float()
    errors = torch.where(valid[:, None], (truth - probs).abs(), -1.0)
    losses = lovasz_of_errors(errors, truth)  # (C,)
    weights = (truth.sum(0) > 0).float()
    if class_weights is not None:
        weights = weights * class_weights.to(probs)
    return (losses * weights).sum() / weights.sum().clamp_min(1e-6)


class LovaszTerm(nn.Module):
    """Lovász hinge on the logit of a binary model and on each label's of a multi-label one,
    Lovász-softmax over the classes of a K-class one."""

    def __init__(self, num_outputs: int):
        super().__init__()

    def forward(self, batch: LossBatch) -> torch.Tensor:
        valid, target = batch.valid.reshape(-1), batch.target.reshape(-1)
        if batch.multilabel:
            labels = batch.logits.shape[1]
            return lovasz_hinge_labels(batch.logits.permute(0, 2, 3, 1).reshape(-1, labels),
                                       batch.onehot.permute(0, 2, 3, 1).reshape(-1, labels), valid,
                                       batch.class_weights)
        if batch.binary:
            return lovasz_hinge(batch.logits[:, 0].reshape(-1), target.float(), valid)
        probs = batch.probs.permute(0, 2, 3, 1).reshape(-1, batch.probs.shape[1])  # (P, C)
        return lovasz_softmax(probs, target, valid, batch.class_weights)
