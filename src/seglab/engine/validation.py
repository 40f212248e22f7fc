"""Validation during training: whole-image forward passes scored by the one evaluation path.

Each image's loss is taken at the training scale, and its classes at the file's own size, the way
`Predictor` makes them (probabilities resized back, then `probabilities_to_classes`), so the
metrics row's val_dice equals what `seglab evaluate` reports for best.pt on the same images.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn as nn

from seglab.data.classmap import ClassMap
from seglab.data.datasets import ValidationImages
from seglab.data.overlay import error_map, overlay
from seglab.data.preprocess import resize_mask
from seglab.data.samples import evenly_spread
from seglab.engine.distributed import all_gather_objects, all_reduce_sum
from seglab.metrics.scoring import Evaluation, evaluate_images
from seglab.models.outputs import (
    full_size_logits,
    logits_to_probabilities,
    probabilities_to_classes,
    resize_probabilities,
)

if TYPE_CHECKING:
    from seglab.data.normalization import Normalization
    from seglab.engine.recipe import Recipe


def held_out_images(recipe: Recipe, count: int | None, scale: float, normalization: Normalization,
                    log: Callable[..., None]) -> ValidationImages | None:
    """The held-out images each evaluation scores: `count` of them evenly spread (all when None or
    no fewer), the same ones every time; None when nothing is held out."""
    pairs = evenly_spread(recipe.val_pairs, count or len(recipe.val_pairs))
    if len(pairs) < len(recipe.val_pairs):
        log(f"validation: {len(pairs)} of the {len(recipe.val_pairs)} held-out images at each evaluation "
            "(evenly spread; --val-images N to change; seglab evaluate scores them all)")
    return (ValidationImages(pairs, recipe.class_map, recipe.channels, scale, normalization, recipe.files)
            if pairs else None)


@dataclass
class Validation:
    loss: float                                    # mean over all ranks' images
    evaluation: Evaluation                         # pooled counts of all ranks; rows of this rank's images
    overlays: list = field(default_factory=list)   # (H, 2W, 3) uint8 pictures of the first images

    def row(self) -> dict:
        """The validation keys of a metrics row (val_dice and val_miou: pooled counts)."""
        pooled = self.evaluation.pooled
        return {"val_loss": self.loss, "val_dice": pooled["mdice"], "val_iou": pooled["miou"],
                "val_miou": pooled["miou"], "val_pixel_accuracy": pooled["pixel_accuracy"],
                "val_pixel_error": pooled["pixel_error"], "val_dice_per_class": pooled["dice"],
                "val_iou_per_class": pooled["iou"]}

    def image_rows(self) -> list[dict]:
        """The JSON-safe per-image rows of every rank, in rank order: the whole validation's
        (a collective: every rank calls it)."""
        return [row for rows in all_gather_objects(self.evaluation.to_json()["images"]) for row in rows]


@torch.no_grad()
def validate(model: nn.Module, images: ValidationImages, loss_fn: nn.Module, class_map: ClassMap,
             device: torch.device, threshold: float = 0.5, rank: int = 0, world_size: int = 1,
             autocast: AbstractContextManager | None = None, num_overlays: int = 2) -> Validation:
    """Validate on whole images, split across ranks (image i on rank i % world_size); the loss sum
    and the confusion counts are all-reduced, so every rank returns the global scores."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, images)
    overlays: list = []

    def predict(index: int):
        image, mask, truth = (t.to(device) for t in images[index])
        with autocast or nullcontext():
            logits = full_size_logits(model, image[None])  # (1, K, h, w)
        loss = loss_fn(logits.float(), mask[None])
        loss_sum.add_(torch.stack([loss.double(), torch.ones((), dtype=torch.float64, device=device)]))
        probs = resize_probabilities(logits_to_probabilities(logits.float(), labels), tuple(truth.shape))
        classes = probabilities_to_classes(probs[0], threshold, labels)  # (H, W)
        if len(overlays) < num_overlays and rank == 0:
            overlays.append(_prediction_picture(image, mask, resize_mask(classes, tuple(mask.shape)), class_map))
        return classes, truth, {"loss": loss.item()}

    labels = class_map.multilabel
    evaluation = evaluate_images(predict, range(len(images)), list(class_map.names),
                                 names=lambda index: str(images.pairs[index].image), rank=rank,
                                 world_size=world_size, device=device, multilabel=labels)
    all_reduce_sum(loss_sum)
    model.train(was_training)
    return Validation((loss_sum[0] / loss_sum[1].clamp_min(1)).item(), evaluation, overlays)


def _prediction_picture(image: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor,
                        class_map: ClassMap) -> np.ndarray:
    """Image with prediction overlay | error map, side by side: (H, 2W, 3) uint8 (for TensorBoard)."""
    picture = image.float().cpu().permute(1, 2, 0).numpy()
    truth_np, pred_np = truth.cpu().numpy(), pred.cpu().numpy()
    left = overlay(picture, pred_np, labels=class_map.num_classes if class_map.multilabel else 0)
    right = error_map(truth_np, pred_np, truth_np < 0)
    return np.concatenate([left, right], axis=1)
