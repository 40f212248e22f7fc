"""The one evaluation path: predicted class maps against truth maps -> per-image and pooled scores.

`score_classes` counts one image into a confusion matrix; `evaluate_images` runs any "image ->
class map" function over a list of labelled images and returns an `Evaluation`. The trainer's
validation, `seglab evaluate`, the report's best/worst ranking and the demo all go through it, so
`val_dice` in metrics.jsonl, `seglab evaluate` and the report agree.
"""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch

from seglab.metrics.confusion import ConfusionMatrix, LabelCounts

Item = TypeVar("Item")
POOLED_KEYS = ("dice", "iou", "mdice", "miou", "pixel_error", "pixel_accuracy")


def score_classes(pred: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray,
                  num_classes: int, multilabel: bool = False) -> ConfusionMatrix | LabelCounts:
    """Integer counts of one prediction: pred (H, W) class indices against truth (H, W) class
    indices (with `multilabel`, bit sets of `num_classes` labels), whose IGNORE_INDEX pixels count
    nowhere. Both on the same device (or NumPy)."""
    pred = torch.from_numpy(np.asarray(pred)) if isinstance(pred, np.ndarray) else pred
    truth = torch.from_numpy(np.asarray(truth)) if isinstance(truth, np.ndarray) else truth
    if tuple(pred.shape) != tuple(truth.shape):
        raise ValueError(f"prediction {tuple(pred.shape)} and truth {tuple(truth.shape)} differ in size")
    confusion = (LabelCounts if multilabel else ConfusionMatrix)(num_classes, device=truth.device)
    confusion.update(pred.long(), truth.long())
    return confusion


def _mean(values) -> float | None:
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(present) / len(present) if present else None


@dataclass(repr=False)
class Evaluation:
    """Scores of a set of labelled images.

    `pooled`: Dice/IoU from the counts of all images together (what training logs as val_dice and
    val_miou); `mean`: the average of the per-image scores; `images`: one row per image, with any
    extra scores (loss, instance scores) the predict function returned. Multi-label counts
    (`LabelCounts`) score each label; its shares are of the pixels, so they may add up past 1.
    """

    classes: list[str]
    confusion: ConfusionMatrix | LabelCounts
    images: list[dict] = field(default_factory=list)

    @property
    def pooled(self) -> dict:
        scores = self.confusion.scores(self.classes)
        truth, predicted, pixels = self.confusion.totals()
        pixels = max(pixels, 1.0)
        return {**{k: scores[k] for k in POOLED_KEYS},
                "pixel_share": {n: float(truth[k]) / pixels for k, n in enumerate(self.classes)},
                "predicted_share": {n: float(predicted[k]) / pixels for k, n in enumerate(self.classes)},
                "pixels": scores["pixels"]}

    @property
    def mean(self) -> dict:
        rows = self.images
        mean = {"dice": {n: _mean(r["dice"][n] for r in rows) for n in self.classes},
                "iou": {n: _mean(r["iou"][n] for r in rows) for n in self.classes},
                "mdice": _mean(r["mdice"] for r in rows), "miou": _mean(r["miou"] for r in rows),
                "pixel_error": _mean(r["pixel_error"] for r in rows)}
        extra = sorted({k for r in rows for k in r} - set(mean) - {"image"})
        for key in extra:
            values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
            if values:
                mean[key] = float(np.mean(values))
        return mean

    def __repr__(self) -> str:
        pooled = self.pooled
        classes = ", ".join(f"{name} {_text(pooled['dice'][name])}" for name in self.classes)
        return (f"Evaluation({len(self.images)} images; pooled mDice {_text(pooled['mdice'])}, mIoU "
                f"{_text(pooled['miou'])}, pixel error {_text(pooled['pixel_error'])}\n  Dice per class: {classes})")

    def _repr_html_(self) -> str:
        """In Jupyter: the per-class table (pooled Dice, IoU, pixel share) and the means."""
        pooled, mean = self.pooled, self.mean
        rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{_text(pooled['dice'][name])}</td>"
                       f"<td>{_text(pooled['iou'][name])}</td><td>{pooled['pixel_share'][name]:.1%}</td></tr>"
                       for name in self.classes)
        return (f"<table><thead><tr><th>class</th><th>Dice</th><th>IoU</th><th>pixels</th></tr></thead><tbody>"
                f"{rows}<tr><th>mean</th><th>{_text(pooled['mdice'])}</th><th>{_text(pooled['miou'])}</th><th></th>"
                f"</tr></tbody></table><p>{len(self.images)} images, pooled counts; pixel error "
                f"{_text(pooled['pixel_error'])}; per-image mean Dice {_text(mean['mdice'])}</p>")

    def to_json(self) -> dict:
        """A JSON-ready dict: classes, per-image rows, mean and pooled scores (NaN -> None)."""
        return _json_safe({"classes": self.classes, "images": self.images, "mean": self.mean,
                           "pooled": self.pooled})

    def dumps(self, **extra) -> str:
        return json.dumps({**extra, **self.to_json()})

    def table(self, per_image: bool = False) -> str:
        """One row per class (Dice, IoU, pixel share of the truth), then the means; with
        `per_image`, a row per image (mean Dice, mIoU, pixel error and extra scores) too."""
        pooled, mean = self.pooled, self.mean
        width = max([len("class")] + [len(n) for n in self.classes]) + 2
        lines = ["class".ljust(width) + "Dice".rjust(9) + "IoU".rjust(9) + "pixels".rjust(9)]
        for name in self.classes:
            lines.append(name.ljust(width) + _cell(pooled["dice"][name]) + _cell(pooled["iou"][name])
                         + f"{pooled['pixel_share'][name]:9.1%}")
        lines.append("mean".ljust(width) + _cell(pooled["mdice"]) + _cell(pooled["miou"]))
        lines.append(f"{len(self.images)} images, pooled counts; pixel error {_text(pooled['pixel_error'])}; "
                     f"per-image mean Dice {_text(mean['mdice'])}, mIoU {_text(mean['miou'])}")
        extra = [k for k in mean if k not in ("dice", "iou", "mdice", "miou", "pixel_error")]
        if extra:
            lines.append("per-image means: " + ", ".join(f"{k} {_text(mean[k])}" for k in extra))
        if per_image:
            lines += ["", self._image_table(extra)]
        return "\n".join(lines)

    def _image_table(self, extra: list[str]) -> str:
        names = [Path(r["image"]).name for r in self.images]
        width = max([len("image")] + [len(n) for n in names]) + 2
        keys = ["mdice", "miou", "pixel_error"] + extra
        lines = ["image".ljust(width) + "".join(k.rjust(13) for k in keys)]
        for name, row in zip(names, self.images):
            lines.append(name.ljust(width) + "".join(_cell(row.get(k), 13) for k in keys))
        return "\n".join(lines)


def _cell(value, width: int = 9) -> str:
    return _text(value).rjust(width)


def _text(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4f}"


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def evaluate_images(predict: Callable[[Item], tuple], items: Sequence[Item], class_names: Sequence[str],
                    names: Callable[[Item], str] = str, rank: int = 0, world_size: int = 1,
                    device: torch.device | str = "cpu", multilabel: bool = False) -> Evaluation:
    """Score `predict` on labelled images.

    predict(item) -> (classes (H, W), truth (H, W), extra dict): the predicted class indices and
    the truth's (IGNORE_INDEX where ignored), torch or NumPy, on one device; `extra` holds scores
    of the image beyond the pixel ones (e.g. its loss), kept in its row. With `world_size` > 1,
    this rank scores items rank, rank + world_size, ...; the pooled counts are summed over ranks
    (an initialised process group, counts on `device`) and the rows hold this rank's images.
    `multilabel`: classes and truth are bit sets of overlapping labels, scored label by label.
    """
    class_names = list(class_names)
    pooled = (LabelCounts if multilabel else ConfusionMatrix)(len(class_names), device=device)
    rows = []
    for index in range(rank, len(items), world_size):
        item = items[index]
        classes, truth, extra = predict(item)
        single = score_classes(classes, truth, len(class_names), multilabel)
        pooled.merge(single)
        scores = single.scores(class_names)
        rows.append({"image": names(item), "dice": scores["dice"], "iou": scores["iou"], "mdice": scores["mdice"],
                     "miou": scores["miou"], "pixel_error": scores["pixel_error"], **extra})
    if world_size > 1:
        pooled.all_reduce()
    return Evaluation(class_names, pooled, rows)
