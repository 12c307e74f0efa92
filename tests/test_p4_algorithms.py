"""P4's algorithms in their concept modules (issue 13): patch sampling in covidlib.data.augment,
resampling to the original grid in covidlib.data.preprocess, HD/HD95 in covidlib.metrics."""

from __future__ import annotations

import numpy as np
import pytest

from covidlib.data.augment import sample_crop
from covidlib.data.preprocess import resize_probabilities
from covidlib.metrics import hausdorff, hausdorff_hd95, hd95


def test_sample_crop_draws_in_order_and_clamps():
    # no foreground: one start per axis in [0, n - p], then the flip
    rng, ref = np.random.default_rng(5), np.random.default_rng(5)
    start, code = sample_crop((10, 6), (4, 8), rng, np.zeros(0, np.int64), flip=True)
    assert start == [int(ref.integers(0, 7)), int(ref.integers(0, 1))]
    assert code == int(ref.integers(4))
    # foreground and pos_fraction 1: centred on its single voxel (flat 2 * 6 + 5), clamped
    start, code = sample_crop((10, 6), (4, 4), np.random.default_rng(0),
                              np.array([2 * 6 + 5]), pos_fraction=1.0)
    assert start == [0, 2] and code == 0  # centre (2, 5) - 2 -> (0, 3) -> clamped to x <= 2
    with pytest.raises(ValueError, match=r"patch \(4,\) for a 2-D array"):
        sample_crop((10, 6), (4,), np.random.default_rng(0), np.zeros(0, np.int64))


def test_resize_probabilities_to_the_original_grid():
    prob = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    out = resize_probabilities(prob, (2, 4))
    assert out.shape == (2, 4)
    assert out[0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])  # bilinear, half-pixel
    assert resize_probabilities(np.ones((2, 2, 2), np.float32), (3, 4, 5)).shape == (3, 4, 5)
    with pytest.raises(ValueError, match="a 2-D map to shape"):
        resize_probabilities(prob, (4,))


def test_hausdorff_hd95_equals_the_two_metrics():
    rng = np.random.default_rng(1)
    for _ in range(3):
        a, b = rng.random((12, 14)) > 0.8, rng.random((12, 14)) > 0.7
        assert hausdorff_hd95(a, b, (1.5, 0.5)) == (hausdorff(a, b, (1.5, 0.5)),
                                                    hd95(a, b, (1.5, 0.5)))
    empty = np.zeros((4, 4), bool)
    assert hausdorff_hd95(empty, empty) == (0.0, 0.0)
    assert hausdorff_hd95(empty, ~empty) == (float("inf"), float("inf"))
    one = np.zeros((1, 9), bool)
    one[0, 0] = True
    two = np.zeros((1, 9), bool)
    two[0, 8] = True
    assert hausdorff_hd95(one, two, (1.0, 0.5)) == (4.0, 4.0)  # 8 pixels of 0.5 mm
