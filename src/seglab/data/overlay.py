"""Class maps drawn over images as (H, W, 3) uint8 pictures: numpy only, for files, TensorBoard and reports."""
from __future__ import annotations

import numpy as np

# Distinct colours for class indices 1..; class 0 is left transparent in overlays.
PALETTE = np.array([
    [0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
    [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0],
], dtype=np.uint8)


def to_display(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) of any dtype -> (H, W, 3) uint8 stretched to its own range."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] != 3:
        image = image[..., 0]  # gray, or channels that are no colours (2, 4+): the first one
    low, high = np.percentile(image, (0.5, 99.5))
    image = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    image = (image * 255).astype(np.uint8)
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]


def overlay(image: np.ndarray, classes: np.ndarray, alpha: float = 0.45,
            highlight: int | None = None, labels: int = 0) -> np.ndarray:
    """Colour each class (index >= 1, or only `highlight`) over the image: (H, W, 3) uint8.
    With `labels` K > 0, `classes` are bit sets of K overlapping labels: label k is coloured
    PALETTE[k + 1] (its colour in the class table), where labels overlap one over the other."""
    base = to_display(image).astype(np.float32)
    if labels:
        bits = np.where(classes >= 0, classes, 0)
        for k in range(labels):
            if highlight is not None and k != highlight:
                continue
            painted = ((bits >> k) & 1).astype(bool)
            colour = PALETTE[(k + 1) % len(PALETTE)].astype(np.float32)
            base[painted] = (1 - alpha) * base[painted] + alpha * colour
        return base.astype(np.uint8)
    colours = PALETTE[np.clip(classes, 0, len(PALETTE) - 1) % len(PALETTE)].astype(np.float32)
    painted = (classes >= 1) if highlight is None else (classes == highlight)
    if highlight is not None:
        colours[painted] = PALETTE[1]
    base[painted] = (1 - alpha) * base[painted] + alpha * colours[painted]
    return base.astype(np.uint8)


def error_map(truth: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8: grey where right, red where wrong, black where ignored."""
    out = np.full(truth.shape + (3,), 200, dtype=np.uint8)
    out[truth != pred] = (220, 30, 30)
    if ignore is not None:
        out[ignore] = 0
    return out
