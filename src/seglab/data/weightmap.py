"""The U-Net paper's border weight map (eq. 2): class balance plus weight in the gaps between cells."""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from seglab.data.classmap import IGNORE_INDEX

# Each cell's distance transform covers its bounding box grown by REACH_SIGMAS * sigma. A pixel
# with d1 + d2 beyond that would get at most w0 * exp(-REACH_SIGMAS**2 / 2) = 4e-6 * w0, so cells
# further away are treated as absent; this keeps a 512 x 512 mask with hundreds of cells fast.
REACH_SIGMAS = 5.0


def border_weight_map(classes: np.ndarray, cell_class: int, w0: float = 10.0, sigma: float = 5.0,
                      balance: bool = True, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)), Ronneberger et al. 2015, eq. 2.

    classes: (H, W) integer class indices, `ignore_index` for void. Returns (H, W) float32.

    - w_c: with `balance`, count(most frequent class) / count(class of x), counted over this
      mask's valid pixels: the usual total / (K * count) rescaled so the most frequent class has
      weight 1 and rarer classes proportionally more. Without `balance`, 1 everywhere.
    - Cells are the 4-connected components of `cell_class` pixels (ISBI: class 1, cell interior).
      d1, d2 are the Euclidean distances from x's pixel centre to the nearest pixel of the nearest
      and second-nearest cell (1 for a pixel touching a cell).
    - The border term is added only on valid pixels that are not `cell_class`: the separating
      background the paper wants learnt (its fig. 3d). Inside a cell d1 would be 0 and the term
      would also light up cell pixels along every touching border.
    - Ignored pixels get weight 0.
    """
    classes = np.asarray(classes)
    if classes.ndim != 2:
        raise ValueError(f"classes must be (H, W), got shape {classes.shape}")
    if w0 < 0 or sigma <= 0:
        raise ValueError(f"need w0 >= 0 and sigma > 0, got w0={w0}, sigma={sigma}")
    valid = classes != ignore_index
    weights = np.zeros(classes.shape, dtype=np.float32)
    if balance:
        values, counts = np.unique(classes[valid], return_counts=True)
        if len(values):
            class_weight = (counts.max() / counts).astype(np.float32)
            weights[valid] = class_weight[np.searchsorted(values, classes[valid])]
    else:
        weights[valid] = 1.0
    if w0 > 0:
        nearest, second = two_nearest_cell_distances(classes == cell_class, math.ceil(REACH_SIGMAS * sigma))
        gap = valid & (classes != cell_class)
        border = w0 * np.exp(-((nearest[gap] + second[gap]) ** 2) / (2 * sigma**2))
        weights[gap] += border.astype(np.float32)
    return weights


def two_nearest_cell_distances(cells: np.ndarray, reach: int) -> tuple[np.ndarray, np.ndarray]:
    """cells (H, W) bool -> (d1, d2), each (H, W) float64: distances to the nearest and second-nearest
    4-connected component; inf where fewer cells lie within `reach` pixels.

    Each component's Euclidean distance transform is computed only in its bounding box grown by
    `reach`, which holds every pixel within `reach` of it, so the distances kept are exact.
    """
    labels, _ = ndimage.label(cells)  # the default cross structure is 4-connectivity
    nearest = np.full(cells.shape, np.inf)
    second = np.full(cells.shape, np.inf)
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        window = tuple(slice(max(part.start - reach, 0), min(part.stop + reach, size))
                       for part, size in zip(box, cells.shape))
        distance = ndimage.distance_transform_edt(labels[window] != label)
        near, next_near = nearest[window], second[window]  # views: updated in place
        np.minimum(next_near, np.maximum(near, distance), out=next_near)  # uses the old nearest
        np.minimum(near, distance, out=near)
    return nearest, second
