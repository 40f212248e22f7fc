"""SegmentationLoss: the sum of registered loss terms, with pixel weights, class weights and the ignore index."""
from __future__ import annotations

import torch
import torch.nn as nn

from seglab.data.classmap import IGNORE_INDEX
from seglab.errors import SeglabError
from seglab.losses.batch import LossBatch
from seglab.losses.registry import loss_spec, loss_terms, resolve_loss_options
from seglab.losses.terms import soft_dice_loss  # noqa: F401  (seglab 0.2 imported it from here)
from seglab.padding import center_crop


class SegmentationLoss(nn.Module):
    """The sum of the terms `name` joins by "+" ("ce+dice", "focal+lovasz"), each weighted 1.

    forward(logits (N, K, h, w), target (N, H, W) int64, pixel_weights (N, H, W) float or None).
    K = 1 is a binary model (sigmoid), K > 1 a softmax over K classes. Pixels whose target is
    `ignore_index` count in no term. For unpadded networks (h < H) the target is centre-cropped to
    the logits. Pixel weights (the U-Net paper's border map) and class weights weight the pixel
    terms (ce, focal) as sum(w * loss) / sum(w); class weights weight the class means of the region
    terms (Lovász, Tversky, generalised Dice); Dice takes neither, as in seglab 0.2. `options`: the
    shared mapping of the terms' options (`train.loss_options`). `multilabel`: K overlapping labels,
    a sigmoid each, the target their bit sets (`ClassMap.multilabel`); class weights then weight
    the labels of every term.
    """

    def __init__(self, num_outputs: int, name: str = "ce+dice", class_weights: list[float] | None = None,
                 ignore_index: int = IGNORE_INDEX, options: dict | None = None, multilabel: bool = False):
        super().__init__()
        self.num_outputs = num_outputs
        self.name = name
        self.ignore_index = ignore_index
        self.multilabel = multilabel
        resolved = resolve_loss_options(name, options or {})
        self.terms = nn.ModuleDict({term: loss_spec(term).build(num_outputs=num_outputs, **resolved[term])
                                    for term in loss_terms(name)})
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        classes = num_outputs if multilabel else max(num_outputs, 2)
        if weights is not None and len(weights) != classes:
            raise SeglabError(f"{len(weights)} class weights for {classes} {'labels' if multilabel else 'classes'}")
        self.register_buffer("class_weights", weights, persistent=False)

    def batch(self, logits: torch.Tensor, target: torch.Tensor,
              pixel_weights: torch.Tensor | None = None) -> LossBatch:
        """The LossBatch the terms read (shapes as in forward)."""
        if logits.shape[-2:] != target.shape[-2:]:
            target = center_crop(target, *logits.shape[-2:])
            if pixel_weights is not None:
                pixel_weights = center_crop(pixel_weights, *logits.shape[-2:])
        logits = logits.float()  # losses in fp32 even under autocast
        valid = target != self.ignore_index  # (N, H, W)
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        weight = valid.float() if pixel_weights is None else pixel_weights.float() * valid
        if self.class_weights is not None and not self.multilabel:
            weight = weight * self.class_weights[safe_target]
        return LossBatch(logits, safe_target, valid, weight, self.class_weights, self.multilabel)

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
        batch = self.batch(logits, target, pixel_weights)
        loss = batch.logits.new_zeros(())
        for term in self.terms.values():
            loss = loss + term(batch)
        return loss
