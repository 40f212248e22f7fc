"""Validation: whole-image forward passes, loss and a confusion matrix reduced across ranks."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from seglab.data.classmap import ClassMap
from seglab.data.datasets import SegmentationDataset
from seglab.engine.distributed import all_reduce_sum
from seglab.metrics import ConfusionMatrix
from seglab.models.outputs import full_size_logits, logits_to_probabilities, probabilities_to_classes


@dataclass
class Evaluation:
    loss: float
    confusion: ConfusionMatrix
    scores: dict
    per_image: list[dict] = field(default_factory=list)  # this rank's images only
    overlays: list = field(default_factory=list)          # (H, W, 3) uint8 pictures of the first images


@torch.no_grad()
def evaluate(model: nn.Module, dataset: SegmentationDataset, loss_fn: nn.Module, class_map: ClassMap,
             device: torch.device, threshold: float = 0.5, rank: int = 0, world_size: int = 1,
             autocast: AbstractContextManager | None = None, num_overlays: int = 2) -> Evaluation:
    """Evaluate on whole images, split across ranks (image i on rank i % world_size).

    Counts and loss sums are all-reduced, so every rank returns the global scores.
    """
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(class_map.num_classes, device=device)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, images)
    per_image, overlays = [], []
    for index in range(rank, len(dataset), world_size):
        image, mask = dataset.load(index)
        image, mask = image[None].to(device), mask[None].to(device)
        with autocast or nullcontext():
            logits = full_size_logits(model, image)
        loss = loss_fn(logits.float(), mask)
        loss_sum += torch.stack([loss.double(), torch.ones((), dtype=torch.float64, device=device)])
        pred = probabilities_to_classes(logits_to_probabilities(logits.float()), threshold)
        single = ConfusionMatrix(class_map.num_classes, device=device)
        single.update(pred, mask)
        confusion.merge(single)
        scores = single.scores(list(class_map.names))
        if len(overlays) < num_overlays and rank == 0:
            overlays.append(_prediction_picture(image[0], mask[0], pred[0]))
        per_image.append({"index": index, "image": str(dataset.pairs[index].image), "loss": loss.item(),
                          "dice": scores["dice"], "iou": scores["iou"], "pixel_error": scores["pixel_error"]})
    all_reduce_sum(loss_sum)
    confusion.all_reduce()
    model.train(was_training)
    mean_loss = (loss_sum[0] / loss_sum[1].clamp_min(1)).item()
    return Evaluation(mean_loss, confusion, confusion.scores(list(class_map.names)), per_image, overlays)


def _prediction_picture(image: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor):
    """Image with prediction overlay | error map, side by side: (H, 2W, 3) uint8 (for TensorBoard)."""
    import numpy as np

    from seglab.data.overlay import error_map, overlay

    picture = image.float().cpu().permute(1, 2, 0).numpy()
    truth_np, pred_np = truth.cpu().numpy(), pred.cpu().numpy()
    left = overlay(picture, pred_np)
    right = error_map(truth_np, pred_np, truth_np < 0)
    return np.concatenate([left, right], axis=1)
