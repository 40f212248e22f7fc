"""The U-Net paper's border weight map (eq. 2) on hand-made masks and on a real ISBI mask."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from seglab.data.classmap import IGNORE_INDEX
from seglab.data.weightmap import border_weight_map

ISBI_MASK = Path(__file__).resolve().parents[1] / "data" / "isbi2012" / "train" / "masks" / "00.png"


def _two_cells() -> np.ndarray:
    """(9, 16): background 0, two 5x5 cells of class 1 (columns 2-6 and 9-13, rows 2-6), a 2-pixel gap."""
    classes = np.zeros((9, 16), dtype=np.int64)
    classes[2:7, 2:7] = 1
    classes[2:7, 9:14] = 1
    return classes


def _eq2(w_c: float, d1: float, d2: float, w0: float = 10.0, sigma: float = 5.0) -> float:
    return w_c + w0 * math.exp(-((d1 + d2) ** 2) / (2 * sigma**2))


def test_weight_is_highest_in_the_gap_between_two_cells():
    weights = border_weight_map(_two_cells(), cell_class=1)
    assert weights.dtype == np.float32 and weights.shape == (9, 16)
    gap = np.zeros((9, 16), dtype=bool)
    gap[2:7, 7:9] = True
    assert weights[gap].min() > weights[~gap].max()


def test_weight_map_matches_equation_2_at_pixels_computed_by_hand():
    weights = border_weight_map(_two_cells(), cell_class=1, w0=10.0, sigma=5.0)
    background_pixels, cell_pixels = 9 * 16 - 50, 50
    w_background, w_cell = 1.0, background_pixels / cell_pixels  # the frequent class (background) has 1
    # In the gap, beside cell A (column 6) and two columns from cell B (column 9).
    assert weights[4, 7] == pytest.approx(_eq2(w_background, 1.0, 2.0), rel=1e-6)
    # Top row above the gap: nearest pixels (2, 6) of A and (2, 9) of B.
    assert weights[0, 7] == pytest.approx(_eq2(w_background, math.hypot(2, 1), math.hypot(2, 2)), rel=1e-6)
    # Corner: (2, 2) of A and (2, 9) of B.
    assert weights[0, 0] == pytest.approx(_eq2(w_background, math.hypot(2, 2), math.hypot(2, 9)), rel=1e-6)
    # Inside a cell only the class weight counts.
    assert weights[4, 4] == pytest.approx(w_cell, rel=1e-6)


def test_ignored_pixels_get_zero_and_do_not_count_for_balance():
    classes = _two_cells()
    classes[8, :] = IGNORE_INDEX
    weights = border_weight_map(classes, cell_class=1)
    assert (weights[8] == 0).all()
    assert weights[4, 4] == pytest.approx((9 * 16 - 50 - 16) / 50, rel=1e-6)


def test_without_balance_or_a_second_cell_only_the_border_term_or_one_remains():
    unbalanced = border_weight_map(_two_cells(), cell_class=1, balance=False)
    assert unbalanced[4, 4] == pytest.approx(1.0)
    assert unbalanced[4, 7] == pytest.approx(_eq2(1.0, 1.0, 2.0), rel=1e-6)
    one_cell = _two_cells()
    one_cell[:, 9:] = 0
    weights = border_weight_map(one_cell, cell_class=1, balance=False)
    assert np.allclose(weights, 1.0)  # eq. 2 needs a second cell: no gap, no extra weight


def test_bounded_windows_match_whole_image_distance_transforms():
    rng = np.random.default_rng(0)
    classes = (ndimage.gaussian_filter(rng.random((80, 80)), 2) > 0.5).astype(np.int64)
    w0, sigma = 10.0, 3.0
    labels, count = ndimage.label(classes == 1)
    distances = np.sort(np.stack([ndimage.distance_transform_edt(labels != k) for k in range(1, count + 1)]), 0)
    expected = np.where(classes == 1, 0.0, w0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * sigma**2)))
    got = border_weight_map(classes, cell_class=1, w0=w0, sigma=sigma, balance=False) - 1.0
    assert count > 5
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_an_isbi_mask_takes_well_under_two_seconds():
    classes = (np.asarray(Image.open(ISBI_MASK)) == 255).astype(np.int64)  # 1 = cell interior
    started = time.perf_counter()
    weights = border_weight_map(classes, cell_class=1)
    elapsed = time.perf_counter() - started
    assert weights.shape == (512, 512)
    assert elapsed < 2.0
    assert weights[classes == 0].mean() > weights[classes == 1].mean()  # membranes weigh more
