"""ISBI 2012 challenge scores for cell segmentations: adapted Rand error and variation of information.

Convention (the SNEMI3D / ISBI "foreground-restricted" one, Arganda-Carreras et al. 2015):

- Cells are the 4-connected components of the cell class; label 0 is membrane.
- Pixels whose ground-truth label is 0 (membrane) are dropped from BOTH images before scoring,
  so where a prediction puts its boundaries inside the true membrane costs nothing.
- Predicted label 0 pixels that remain (a predicted boundary inside a true cell) are each their
  own one-pixel segment: they are split from everything, never merged into one big "0" segment.
- Adapted Rand counts pixel pairs: precision = pairs together in both / pairs together in the
  prediction (low = false merges), recall = pairs together in both / pairs together in the ground
  truth (low = false splits), rand_error = 1 - F1(precision, recall), via
  `skimage.metrics.adapted_rand_error`. Precision and recall are computed here because scikit-image
  returns them in each other's place (scikit-image issue #6485).
- VI in bits from `skimage.metrics.variation_of_information`: split = H(pred | gt) (over-
  segmentation), merge = H(gt | pred) (under-segmentation), vi = split + merge.

`ignore_gt_zero=False` scores every pixel with both label images taken as they are (0 is then an
ordinary label on both sides).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.metrics import adapted_rand_error as _skimage_adapted_rand_error
from skimage.metrics import variation_of_information as _skimage_variation_of_information


def cells_from_mask(classes: np.ndarray, cell_class: int = 1) -> np.ndarray:
    """Cell instances (H, W) int32, 1..N, from a class map (H, W): the 4-connected components of
    `classes == cell_class`; everything else (membrane) is 0. ISBI 2012 masks map 255 (cell
    interior) to class 1."""
    labels, _ = ndimage.label(np.asarray(classes) == cell_class)  # default structure: 4-connected
    return labels.astype(np.int32)


def _scored_pixels(gt_labels: np.ndarray, pred_labels: np.ndarray,
                   ignore_gt_zero: bool) -> tuple[np.ndarray, np.ndarray]:
    """The two label images as flat, compact (0..n-1) int64 vectors of the pixels that count."""
    gt, pred = np.asarray(gt_labels), np.asarray(pred_labels)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    for name, labels in (("ground truth", gt), ("prediction", pred)):
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{name} must hold integer labels, got {labels.dtype}")
    gt, pred = gt.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    if ignore_gt_zero:
        keep = gt != 0
        if not keep.any():
            raise ValueError("the ground truth has no cell pixels (all 0): there is nothing to score")
        gt, pred = gt[keep], pred[keep]
        unassigned = pred == 0
        pred[unassigned] = pred.max() + 1 + np.arange(np.count_nonzero(unassigned))  # singletons
    return np.unique(gt, return_inverse=True)[1], np.unique(pred, return_inverse=True)[1]


def _pair_counts(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """(pairs together in both, in gt, in pred), each counted as sum n * (n - 1) (ordered pairs)."""
    def pairs(counts: np.ndarray) -> int:
        return int(np.sum(counts * (counts - 1)))

    joint = np.unique(gt * (pred.max() + 1) + pred, return_counts=True)[1]
    return pairs(joint), pairs(np.bincount(gt)), pairs(np.bincount(pred))


def adapted_rand_error(gt_labels: np.ndarray, pred_labels: np.ndarray,
                       ignore_gt_zero: bool = True) -> tuple[float, float, float]:
    """Adapted Rand error of a predicted instance map against the ground truth (see module doc).

    Args:
        gt_labels, pred_labels: (H, W) non-negative integer labels; 0 = membrane / unassigned.

    Returns:
        (are, precision, recall), each in [0, 1]; 0 error for identical segmentations.
    """
    gt, pred = _scored_pixels(gt_labels, pred_labels, ignore_gt_zero)
    both, in_gt, in_pred = _pair_counts(gt, pred)
    if in_gt == 0 and in_pred == 0:
        return 0.0, 1.0, 1.0  # every pixel alone on both sides: identical segmentations
    with np.errstate(invalid="ignore", divide="ignore"):  # its unused recall divides by zero pairs
        error = _skimage_adapted_rand_error(gt, pred, ignore_labels=())[0]
    # No pairs claimed means none claimed wrongly (and likewise for recall).
    precision = both / in_pred if in_pred else 1.0
    recall = both / in_gt if in_gt else 1.0
    return float(error), precision, recall


def variation_of_information(gt_labels: np.ndarray, pred_labels: np.ndarray,
                             ignore_gt_zero: bool = True) -> tuple[float, float]:
    """(split, merge) in bits: H(pred | gt) and H(gt | pred) over the scored pixels (module doc)."""
    gt, pred = _scored_pixels(gt_labels, pred_labels, ignore_gt_zero)
    split, merge = _skimage_variation_of_information(gt, pred, ignore_labels=())
    return float(split), float(merge)


def instance_scores(gt_classes: np.ndarray, prediction: np.ndarray, cell_class: int = 1,
                    membrane_threshold: float = 0.5) -> dict[str, float]:
    """ISBI 2012 scores of one image.

    Args:
        gt_classes: (H, W) ground-truth class map; cells are `cell_class` (1 for ISBI masks).
        prediction: (H, W) float membrane probability, thresholded at `membrane_threshold` and
            split into 4-connected cells (how the challenge scored probability maps); or (H, W)
            integer instance labels used as they are (e.g. from `membrane_to_instances`).

    Returns:
        {"rand_error", "rand_precision", "rand_recall", "vi_split", "vi_merge", "vi"}.
    """
    gt_labels = cells_from_mask(gt_classes, cell_class)
    prediction = np.asarray(prediction)
    if np.issubdtype(prediction.dtype, np.floating):
        pred_labels = cells_from_mask(prediction < membrane_threshold, cell_class=True)
    else:
        pred_labels = prediction
    error, precision, recall = adapted_rand_error(gt_labels, pred_labels)
    split, merge = variation_of_information(gt_labels, pred_labels)
    return {"rand_error": error, "rand_precision": precision, "rand_recall": recall,
            "vi_split": split, "vi_merge": merge, "vi": split + merge}
