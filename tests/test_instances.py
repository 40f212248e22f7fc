"""Cell instances: ISBI Rand error and VI against hand-computed values, watershed, label files."""
import math

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from seglab.inference.postprocess import membrane_to_instances, remove_small_labels, save_instance_labels
from seglab.metrics.instances import adapted_rand_error, cells_from_mask, instance_scores, variation_of_information
from seglab.models.outputs import probabilities_to_classes


def _voronoi(height: int, width: int, points: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Cells 1..N (H, W) nearest to each point, and a two-pixel-wide membrane (H, W) bool
    on every pixel with a 4-neighbour in another cell."""
    rows, cols = np.mgrid[:height, :width]
    centres = np.asarray(points)
    distance = (rows[..., None] - centres[:, 0]) ** 2 + (cols[..., None] - centres[:, 1]) ** 2
    cells = distance.argmin(axis=-1) + 1
    membrane = np.zeros((height, width), dtype=bool)
    vertical, horizontal = cells[:-1] != cells[1:], cells[:, :-1] != cells[:, 1:]
    membrane[:-1] |= vertical
    membrane[1:] |= vertical
    membrane[:, :-1] |= horizontal
    membrane[:, 1:] |= horizontal
    return cells, membrane


POINTS = [(20, 20), (25, 90), (70, 30), (75, 100), (50, 64)]


# ---- metrics ------------------------------------------------------------------------------------
def test_cells_are_four_connected_components():
    classes = np.array([[1, 0, 1],
                        [0, 1, 0],
                        [1, 1, 0]])
    labels = cells_from_mask(classes, cell_class=1)
    assert labels.dtype == np.int32 and labels.max() == 3  # the diagonal neighbours stay apart
    assert labels[1, 1] == labels[2, 0] == labels[2, 1] and labels[0, 0] != labels[0, 2]


def test_identical_segmentations_score_zero():
    cells, membrane = _voronoi(60, 80, POINTS)
    gt = np.where(membrane, 0, cells)
    assert adapted_rand_error(gt, gt) == (0.0, 1.0, 1.0)
    assert variation_of_information(gt, gt) == pytest.approx((0.0, 0.0), abs=1e-12)
    # Relabelled, and with cells grown into the (ignored) membrane: still a perfect score.
    assert adapted_rand_error(gt, cells * 7 + 3)[0] == 0.0
    scores = instance_scores(np.where(membrane, 0, 1), membrane.astype(np.float32))
    assert scores["rand_error"] == 0.0 and scores["vi"] == pytest.approx(0.0, abs=1e-12)


def test_merge_of_two_cells_matches_hand_computation():
    gt = np.array([[1, 1, 0, 2, 2],
                   [1, 1, 0, 2, 2]])
    merged = np.full_like(gt, 5)  # one predicted cell covers both true cells and the membrane
    # Scored pixels: the 8 with gt != 0. Pairs (unordered) together in gt: C(4,2) + C(4,2) = 12;
    # in the prediction: C(8,2) = 28; in both: 12.
    # precision = 12 / 28 = 3/7, recall = 12 / 12 = 1, F1 = 2 * (3/7) / (3/7 + 1) = 0.6, error 0.4.
    error, precision, recall = adapted_rand_error(gt, merged)
    assert error == pytest.approx(0.4) and precision == pytest.approx(3 / 7) and recall == 1.0
    # VI: H(pred | gt) = 0 (no split); H(gt | pred) = H(gt) = two halves of 4 = 1 bit of merge.
    assert variation_of_information(gt, merged) == pytest.approx((0.0, 1.0))


def test_split_of_one_cell_matches_hand_computation():
    gt = np.ones((2, 4), dtype=np.int32)
    split = np.array([[1, 1, 1, 2],
                      [1, 1, 1, 2]])
    # Pairs in gt: C(8,2) = 28; in the prediction: C(6,2) + C(2,2) = 16; in both: 16.
    # precision = 1, recall = 16 / 28 = 4/7, F1 = 2 * (4/7) / (4/7 + 1) = 8/11, error = 3/11.
    error, precision, recall = adapted_rand_error(gt, split)
    assert error == pytest.approx(3 / 11) and precision == 1.0 and recall == pytest.approx(4 / 7)
    # VI: H(gt | pred) = 0 (no merge); H(pred | gt) = H(6/8, 2/8)
    #   = -(0.75 log2 0.75 + 0.25 log2 0.25) = 0.311278 + 0.5 = 0.811278 bits of split.
    expected_split = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert variation_of_information(gt, split) == pytest.approx((expected_split, 0.0))


def test_predicted_boundary_inside_a_cell_is_split_off_pixel_by_pixel():
    gt = np.array([[1, 1, 1, 1, 0, 2]])
    pred = np.array([[3, 3, 0, 0, 4, 4]])  # two predicted membrane pixels inside true cell 1
    # gt-0 pixel dropped. Cell 1 (4 px) -> pred {3, 3, single, single}: pairs in gt C(4,2) = 6,
    # in pred C(2,2) = 1 (the singletons pair with nothing), in both 1. Cell 2 adds nothing.
    # precision = 1/1, recall = 1/6, F1 = 2 * (1/6) / (7/6) = 2/7, error = 5/7.
    error, precision, recall = adapted_rand_error(gt, pred)
    assert error == pytest.approx(5 / 7) and precision == 1.0 and recall == pytest.approx(1 / 6)
    # ignore_gt_zero=False: all 6 pixels, 0 a plain label. gt {1: 4, 0: 1, 2: 1} -> 6 pairs;
    # pred {3: 2, 0: 2, 4: 2} -> 3 pairs; joint (1,3): 2, (1,0): 2, (0,4): 1, (2,4): 1 -> 2 pairs.
    # precision = 2/3, recall = 2/6, F1 = 2 * (2/9) / (2/3 + 1/3) = 4/9, error = 5/9.
    assert adapted_rand_error(gt, pred, ignore_gt_zero=False) == pytest.approx((5 / 9, 2 / 3, 1 / 3))


def test_instance_scores_report_isbi_keys():
    cells, membrane = _voronoi(60, 80, POINTS)
    gt_classes = np.where(membrane, 0, 1)
    two_merged = np.where(np.isin(cells, [1, 5]), 1, cells)
    scores = instance_scores(gt_classes, two_merged)
    assert set(scores) == {"rand_error", "rand_precision", "rand_recall", "vi_split", "vi_merge", "vi"}
    assert scores["rand_error"] > 0 and scores["rand_recall"] == 1.0
    assert scores["vi_split"] == pytest.approx(0.0, abs=1e-12)
    assert scores["vi_merge"] > 0 and scores["vi"] == pytest.approx(scores["vi_split"] + scores["vi_merge"])


# ---- post-processing ----------------------------------------------------------------------------
def test_probabilities_to_classes():
    binary = torch.tensor([[[0.2, 0.5, 0.7]]])  # (K=1, H, W): P(class 1)
    assert probabilities_to_classes(binary).tolist() == [[0, 0, 1]]
    assert probabilities_to_classes(binary, threshold=0.3).tolist() == [[0, 1, 1]]
    classes = probabilities_to_classes(torch.tensor([[[0.1, 0.6]], [[0.7, 0.1]], [[0.2, 0.3]]]))
    assert classes.dtype == torch.int64 and classes.tolist() == [[1, 0]]
    batch = torch.rand(2, 3, 4, 5)  # (N, K, H, W) -> (N, H, W)
    assert torch.equal(probabilities_to_classes(batch), batch.argmax(dim=1))


def test_remove_small_labels():
    labels = np.array([[1, 1, 1, 0, 2],
                       [1, 1, 0, 3, 3]])
    assert remove_small_labels(labels, 2).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 3, 3]]


def test_watershed_recovers_synthetic_cells():
    cells, membrane = _voronoi(96, 128, POINTS)
    noise = np.random.default_rng(0).normal(0, 0.05, cells.shape)
    prob = np.clip(np.where(membrane, 0.9, 0.1) + noise, 0, 1)
    labels = membrane_to_instances(prob)
    assert labels.dtype == np.int32 and labels.shape == cells.shape and labels.min() == 1  # every pixel
    assert labels.max() == len(POINTS)
    for cell in range(1, len(POINTS) + 1):
        match = np.bincount(labels[cells == cell]).argmax()
        area, found = np.count_nonzero(cells == cell), np.count_nonzero(labels == match)
        assert abs(found - area) <= 0.02 * area
    kept = membrane_to_instances(prob, fill_membrane=False)
    assert kept.max() == len(POINTS) and np.array_equal(kept == 0, prob >= 0.5)


def test_watershed_merges_objects_below_min_size():
    cells, membrane = _voronoi(96, 128, POINTS)
    rows, cols = np.mgrid[:96, :128]
    ring = np.abs(np.hypot(rows - 50, cols - 64) - 5) < 1  # a closed 5-pixel ring: ~90-pixel cell
    prob = np.where(membrane | ring, 0.9, 0.1)
    assert membrane_to_instances(prob, min_size=1).max() == len(POINTS) + 1
    labels = membrane_to_instances(prob, min_size=150)
    assert labels.max() == len(POINTS) and labels.min() == 1


def test_save_instance_labels_png_and_tiff(tmp_path):
    labels = np.array([[0, 1], [300, 65535]], dtype=np.int32)
    written = save_instance_labels(tmp_path / "cells.png", labels)
    with Image.open(written) as image:
        assert image.mode == "I;16" and np.array_equal(np.asarray(image), labels)
    many = labels * 2  # 131070 does not fit 16 bits: TIFF beside the requested PNG
    written = save_instance_labels(tmp_path / "many.png", many)
    assert written == tmp_path / "many.tif"
    stored = tifffile.imread(written)
    assert stored.dtype == np.uint32 and np.array_equal(stored, many)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.png", "many.tif"]  # no temporaries
    with pytest.raises(ValueError, match="non-negative"):
        save_instance_labels(tmp_path / "bad.png", -labels)
