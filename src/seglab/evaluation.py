"""Score a trained model on labelled images: per-image and mean Dice, IoU and pixel error."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from seglab.data.classmap import pack_rgb
from seglab.data.discover import Pair, discover
from seglab.data.io import read_mask
from seglab.errors import DataError
from seglab.inference.predictor import Predictor
from seglab.metrics import ConfusionMatrix


def labelled_pairs(data: str | Path, split: str | None = None) -> list[Pair]:
    """Pairs to evaluate: the named split, else val, test, the whole folder, or train, in that order."""
    layout = discover(data)
    if split is not None:
        if split not in layout.splits:
            raise DataError(f"'{data}' has no {split}/ split; it has: {', '.join(layout.splits)}")
        pairs = layout.labelled(split)
    else:
        pairs = next((layout.labelled(s) for s in ("val", "test", "all", "train") if layout.labelled(s)), [])
    if not pairs:
        raise DataError(f"no image/mask pairs to evaluate in '{data}': run `seglab check {data}`")
    return pairs


def _mean(values) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return sum(present) / len(present) if present else None


def evaluate_pairs(predictor: Predictor, pairs: list[Pair], scale: float | None = None,
                   instances: bool = False, membrane_class: int = 0, seed_threshold: float = 0.07) -> dict:
    """Predict each pair's image and compare with its mask, through the checkpoint's class map.

    With `instances`, cells are also segmented (seeded watershed of the `membrane_class`
    probability) and scored as the ISBI 2012 challenge did: adapted Rand error and variation of
    information against the 4-connected components of the ground truth's other class(es).
    """
    class_map = predictor.class_map
    names = list(class_map.names)
    pooled = ConfusionMatrix(class_map.num_classes)
    images = []
    for pair in pairs:
        prediction = predictor.predict_file(pair.image, scale)
        raw = read_mask(pair.mask)
        if raw.ndim == 3 and class_map.rgb:
            raw = pack_rgb(raw)
        if raw.shape[:2] != prediction.classes.shape:
            raise DataError(f"mask '{pair.mask}' is {raw.shape[1]}x{raw.shape[0]} but its image is "
                            f"{prediction.classes.shape[1]}x{prediction.classes.shape[0]}")
        try:
            truth = class_map.encode(raw)
        except ValueError as error:
            raise DataError(f"mask '{pair.mask}': {error}; the model was trained with "
                            f"{class_map.describe()}") from None
        single = ConfusionMatrix(class_map.num_classes)
        single.update(torch.from_numpy(prediction.classes), torch.from_numpy(truth))
        pooled.merge(single)
        scores = single.scores(names)
        row = {"image": str(pair.image), "dice": scores["dice"], "iou": scores["iou"],
               "pixel_error": scores["pixel_error"], "miou": scores["miou"]}
        if instances:
            row.update(_instance_scores(predictor, prediction, truth, membrane_class, seed_threshold))
        images.append(row)
    overall = pooled.scores(names)
    mean = {"dice": {n: _mean(r["dice"][n] for r in images) for n in names},
            "iou": {n: _mean(r["iou"][n] for r in images) for n in names},
            "pixel_error": float(np.mean([r["pixel_error"] for r in images])),
            "miou": _mean(r["miou"] for r in images)}
    if instances:
        for key in INSTANCE_KEYS:
            mean[key] = float(np.mean([r[key] for r in images]))
    return {"classes": names, "images": images, "mean": mean,
            "pooled": {k: overall[k] for k in ("dice", "iou", "miou", "pixel_error", "pixel_accuracy")}}


INSTANCE_KEYS = ("rand_error", "vi_split", "vi_merge", "vi")


def _instance_scores(predictor: Predictor, prediction, truth: np.ndarray, membrane_class: int,
                     seed_threshold: float) -> dict:
    from seglab.inference.postprocess import membrane_to_instances
    from seglab.metrics.instances import instance_scores

    labels = membrane_to_instances(predictor.class_probability(prediction, membrane_class), seed_threshold)
    cells = (truth != membrane_class) & (truth >= 0)  # every non-boundary class is cell interior
    scores = instance_scores(cells.astype(np.int64), labels, cell_class=1)
    return {key: float(scores[key]) for key in INSTANCE_KEYS}


def format_evaluation(result: dict) -> str:
    names = result["classes"]

    def cell(value):
        return "  -   " if value is None else f"{value:.4f}"

    header = "image".ljust(28) + "".join(f"dice:{n}"[:12].rjust(13) for n in names) + \
        "".join(f"iou:{n}"[:12].rjust(13) for n in names) + "pixel_error".rjust(13)
    extra = [k for k in INSTANCE_KEYS if k in result["mean"]]
    header += "".join(k.rjust(13) for k in extra)
    lines = [header]
    for row in result["images"] + [dict(result["mean"], image="mean")]:
        lines.append(Path(row["image"]).name[:27].ljust(28) + "".join(cell(row["dice"][n]).rjust(13) for n in names)
                     + "".join(cell(row["iou"][n]).rjust(13) for n in names) + cell(row["pixel_error"]).rjust(13)
                     + "".join(cell(row[k]).rjust(13) for k in extra))
    return "\n".join(lines)
