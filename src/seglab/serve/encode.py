"""A Prediction as an HTTP body: the mask PNG (byte for byte what `seglab predict` writes), the overlay,
the probability map, instance labels, or JSON with class pixel counts and a run-length encoding."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from seglab.api.file_predictions import overlay_picture
from seglab.data.classmap import ClassMap, unpack_rgb
from seglab.data.overlay import PALETTE
from seglab.data.writing import mask_picture, png_bytes
from seglab.inference.prediction import Prediction
from seglab.inference.predictor import Predictor

PNG = "image/png"
TIFF = "image/tiff"
PROBABILITY_SCALE = 65535  # probability maps are 16-bit PNGs: value / 65535 = probability


def class_colours(class_map: ClassMap) -> list[list[int]]:
    """[r, g, b] per class: a colour mask's own colours, or a palette mask's; black and white for
    binary masks (as their PNGs look); each label's overlay colour for multi-label masks; else
    the overlay palette (class 0 black)."""
    if class_map.multilabel:
        return [PALETTE[(index + 1) % len(PALETTE)].tolist() for index in range(class_map.num_classes)]
    if class_map.colors is not None:
        return [list(colour) for colour in class_map.colors]
    if class_map.rgb:
        return unpack_rgb(np.asarray(class_map.values, dtype=np.int64)).tolist()
    if class_map.is_binary:
        return [[0, 0, 0], [255, 255, 255]]
    return [PALETTE[index % len(PALETTE)].tolist() for index in range(class_map.num_classes)]


def describe_classes(class_map: ClassMap) -> list[dict]:
    """One entry per class: index, name, mask value (a colour mask's as [r, g, b]; a label's bit) and
    display colour."""
    colours = class_colours(class_map)
    values = unpack_rgb(np.asarray(class_map.values)).tolist() if class_map.rgb else list(class_map.values)
    return [{"index": index, "name": name, "value": value, "color": colour}
            for index, (name, value, colour) in enumerate(zip(class_map.names, values, colours))]


def run_lengths(classes: np.ndarray) -> tuple[list[int], list[int]]:
    """Class map (H, W) read row by row -> (values, counts): values[i] repeated counts[i] times."""
    flat = classes.ravel()
    if flat.size == 0:
        return [], []
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    counts = np.diff(np.concatenate([starts, [flat.size]]))
    return flat[starts].tolist(), counts.tolist()


def mask_json(predictor: Predictor, prediction: Prediction, batch: int) -> dict:
    """The classes with their pixel counts and the class map run-length encoded (row-major); for a
    multi-label model, each label's pixels and the bit sets run-length encoded."""
    height, width = prediction.classes.shape
    pixels = prediction.pixel_counts
    classes = [{**entry, "pixels": int(pixels[entry["index"]])} for entry in describe_classes(predictor.class_map)]
    values, counts = run_lengths(prediction.classes)
    return {"width": width, "height": height, "classes": classes, "batch": batch,
            "multilabel": predictor.class_map.multilabel,
            "rle": {"order": "row-major", "values": values, "counts": counts}}


def mask_png(prediction: Prediction) -> bytes:
    """The mask in the model's own values, encoded as `seglab predict` writes `<stem>_mask.png`."""
    return png_bytes(mask_picture(prediction.mask, name=prediction.name))


def overlay_png(image: np.ndarray, prediction: Prediction, opacity: float) -> bytes:
    """The `seglab predict --overlay` picture (at `opacity`) of an image (H, W, C)."""
    return png_bytes(Image.fromarray(overlay_picture(image, prediction, alpha=opacity)))


def probability_png(predictor: Predictor, prediction: Prediction, class_index: int | None) -> bytes:
    """(H, W) probability of one class (a valid index) as a 16-bit PNG (65535 = 1): class 1 of
    binary models by default, for more classes the winning class's (the model's confidence), for
    labels the most probable label's."""
    if class_index is None and prediction.probabilities.shape[0] > 1:
        probability = prediction.probabilities.max(axis=0)
    else:
        probability = predictor.class_probability(prediction, 1 if class_index is None else class_index)
    scaled = np.rint(np.clip(probability, 0, 1) * PROBABILITY_SCALE).astype(np.uint16)
    return png_bytes(Image.fromarray(scaled))


def instances_body(prediction: Prediction) -> tuple[bytes, str]:
    """Cell labels (0 = boundary) as a 16-bit PNG, as `seglab predict --instances` writes them;
    a 32-bit TIFF when there are 65536 cells or more."""
    labels = prediction.instances
    if labels.size == 0 or labels.max() < 65536:
        return png_bytes(Image.fromarray(labels.astype(np.uint16))), PNG
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, labels.astype(np.uint32), compression="zlib", photometric="minisblack", metadata=None)
    return buffer.getvalue(), TIFF
