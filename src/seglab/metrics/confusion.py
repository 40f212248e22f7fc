"""Pixel metrics from a confusion matrix of integer counts: Dice, IoU, mIoU, accuracy, pixel error.

Counts are summed (across batches, images and ranks) and scores are derived once at the end, so a
distributed evaluation gives exactly the single-process numbers.
"""
from __future__ import annotations

import math

import torch

from seglab.data.classmap import IGNORE_INDEX


class ConfusionMatrix:
    """counts[t, p] = pixels of true class t predicted as class p (ignored pixels skipped)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: str | torch.device = "cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: (...) int64 class indices of the same shape; target may hold ignore_index."""
        valid = target != self.ignore_index
        k = self.num_classes
        index = target[valid].to(self.counts.device) * k + pred[valid].to(self.counts.device)
        self.counts += torch.bincount(index, minlength=k * k).reshape(k, k)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.counts += other.counts.to(self.counts.device)

    def all_reduce(self) -> None:
        """Sum counts over all ranks (no-op without an initialised process group)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.counts)

    def scores(self, class_names: list[str] | None = None) -> dict:
        """Plain-float scores. Classes absent from both truth and prediction get None (absent),
        not 0 or 1, and are left out of the means."""
        counts = self.counts.double().cpu()
        tp = counts.diag()
        true_total = counts.sum(1)
        pred_total = counts.sum(0)
        union = true_total + pred_total - tp
        total = counts.sum().item()
        names = class_names or [str(k) for k in range(self.num_classes)]
        iou: dict[str, float | None] = {}
        dice: dict[str, float | None] = {}
        for k, name in enumerate(names):
            if union[k] == 0:
                iou[name] = dice[name] = None
            else:
                iou[name] = (tp[k] / union[k]).item()
                dice[name] = (2 * tp[k] / (true_total[k] + pred_total[k])).item()
        present = [v for v in iou.values() if v is not None]
        present_dice = [v for v in dice.values() if v is not None]
        accuracy = tp.sum().item() / total if total else math.nan
        return {
            "miou": sum(present) / len(present) if present else math.nan,
            "mdice": sum(present_dice) / len(present_dice) if present_dice else math.nan,
            "pixel_accuracy": accuracy,
            "pixel_error": 1.0 - accuracy if total else math.nan,
            "iou": iou,
            "dice": dice,
            "pixels": int(total),
        }
