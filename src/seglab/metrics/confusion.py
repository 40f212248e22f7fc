"""Pixel metrics from integer counts: Dice, IoU, mIoU, accuracy, pixel error.

A confusion matrix counts one class per pixel; `LabelCounts` counts overlapping labels, a
2x2 table each. Counts are summed (across batches, images and ranks) and scores are derived once
at the end, so a distributed evaluation gives exactly the single-process numbers.
"""
from __future__ import annotations

import math

import torch

from seglab.data.classmap import IGNORE_INDEX


class PixelCounts:
    """Integer counts in `self.counts`, summed across images and ranks."""

    counts: torch.Tensor

    def merge(self, other: "PixelCounts") -> None:
        self.counts += other.counts.to(self.counts.device)

    def all_reduce(self) -> None:
        """Sum counts over all ranks (no-op without an initialised process group)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.counts)


class ConfusionMatrix(PixelCounts):
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

    def totals(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(true pixels per class (K,), predicted pixels per class (K,), scored pixels), float64 on the CPU."""
        counts = self.counts.double().cpu()
        return counts.sum(1), counts.sum(0), float(counts.sum())

    def scores(self, class_names: list[str] | None = None) -> dict:
        """Plain-float scores. Classes absent from both truth and prediction get None (absent),
        not 0 or 1, and are left out of the means."""
        counts = self.counts.double().cpu()
        return class_scores(counts.diag(), counts.sum(1), counts.sum(0), counts.diag().sum().item(),
                            counts.sum().item(), class_names or [str(k) for k in range(self.num_classes)])


class LabelCounts(PixelCounts):
    """counts[k, t, p] = pixels whose truth has label k (t = 1) or not (t = 0) and whose prediction
    has it (p = 1) or not: overlapping labels, as bit sets (bit k = label k), scored one by one."""

    def __init__(self, num_labels: int, ignore_index: int = IGNORE_INDEX, device: str | torch.device = "cpu"):
        self.num_classes = num_labels
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_labels, 2, 2, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: (...) int64 bit sets of the same shape; target may hold ignore_index."""
        valid = target != self.ignore_index
        labels = torch.arange(self.num_classes, device=self.counts.device)[:, None]
        truth = (target[valid].to(self.counts.device)[None] >> labels) & 1  # (K, P)
        guess = (pred[valid].to(self.counts.device)[None] >> labels) & 1
        index = labels * 4 + truth * 2 + guess
        self.counts += torch.bincount(index.reshape(-1), minlength=4 * self.num_classes).reshape(-1, 2, 2)

    def totals(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(pixels holding each label in the truth (K,), in the prediction (K,), scored pixels)."""
        counts = self.counts.double().cpu()
        return counts[:, 1].sum(1), counts[:, :, 1].sum(1), float(counts[0].sum())

    def scores(self, class_names: list[str] | None = None) -> dict:
        """As ConfusionMatrix.scores, per label; accuracy counts (pixel, label) decisions."""
        counts = self.counts.double().cpu()
        tp, true_total, pred_total = counts[:, 1, 1], counts[:, 1].sum(1), counts[:, :, 1].sum(1)
        right = (counts[:, 0, 0] + counts[:, 1, 1]).sum().item()
        scores = class_scores(tp, true_total, pred_total, right, counts.sum().item(),
                              class_names or [str(k) for k in range(self.num_classes)])
        return {**scores, "pixels": int(counts[0].sum())}  # each pixel counted once, not once per label


def class_scores(tp: torch.Tensor, true_total: torch.Tensor, pred_total: torch.Tensor, right: float,
                 total: float, names: list[str]) -> dict:
    """Dice and IoU per class from (K,) true positives and true and predicted pixel totals; means
    over the classes present; accuracy `right` / `total` decisions."""
    union = true_total + pred_total - tp
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
    accuracy = right / total if total else math.nan
    return {
        "miou": sum(present) / len(present) if present else math.nan,
        "mdice": sum(present_dice) / len(present_dice) if present_dice else math.nan,
        "pixel_accuracy": accuracy,
        "pixel_error": 1.0 - accuracy if total else math.nan,
        "iou": iou,
        "dice": dice,
        "pixels": int(total),
    }
