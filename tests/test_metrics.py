"""Hand-computed checks of covidlib.metrics (P2 Sec. 4.1.2 and 4.4, P4 Tables 2-3)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from covidlib.metrics import (
    ConfusionCounts,
    SegmentationMeter,
    blob_points,
    confusion,
    confusion_per_item,
    count_blobs,
    counting_mae,
    counting_scores,
    game,
    grid_counts,
    hausdorff,
    hd95,
    mean_game,
    scores,
    summarize,
    surface_distances,
)

NAN = float("nan")

# 4x4 example: TP = {(0,0), (1,0)}, FP = {(0,1), (2,2)}, FN = {(1,1), (3,2), (3,3)}, TN = 9
PRED = np.array(
    [
        [1, 1, 0, 0],
        [1, 0, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 0],
    ]
)
TRUTH = np.array(
    [
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 1, 1],
    ]
)


def assert_scores(got: dict[str, float], expected: dict[str, float]) -> None:
    assert set(got) == set(expected)
    for k, v in expected.items():
        if math.isnan(v):
            assert math.isnan(got[k]), f"{k}: expected nan, got {got[k]}"
        else:
            assert got[k] == pytest.approx(v, abs=1e-12), k


# ------------------------------------------------------------------ confusion and scores


def test_confusion_4x4_by_hand() -> None:
    c = confusion(PRED, TRUTH)
    assert c == ConfusionCounts(tp=2, fp=2, fn=3, tn=9)
    assert all(type(v) is int for v in (c.tp, c.fp, c.fn, c.tn))
    assert_scores(
        scores(c),
        {"dice": 4 / 9, "iou": 2 / 7, "ppv": 2 / 4, "sens": 2 / 5, "spec": 9 / 11},
    )


def test_confusion_torch_bool_float_and_numpy_agree() -> None:
    expected = ConfusionCounts(2, 2, 3, 9)
    assert confusion(torch.from_numpy(PRED), torch.from_numpy(TRUTH)) == expected
    assert confusion(torch.from_numpy(PRED).bool(), TRUTH.astype(np.float32)) == expected
    # any number of dimensions: the same pixels as a (2, 2, 4) stack
    assert confusion(PRED.reshape(2, 2, 4), TRUTH.reshape(2, 2, 4)) == expected


def test_confusion_per_item_splits_the_batch() -> None:
    batch_p = np.stack([PRED, np.zeros_like(PRED)])
    batch_t = np.stack([TRUTH, TRUTH])
    items = confusion_per_item(torch.from_numpy(batch_p), torch.from_numpy(batch_t))
    assert items == [ConfusionCounts(2, 2, 3, 9), ConfusionCounts(0, 0, 5, 11)]
    assert confusion_per_item(batch_p, batch_t) == items


def test_counts_add_and_sum() -> None:
    a, b = ConfusionCounts(1, 2, 3, 4), ConfusionCounts(10, 20, 30, 40)
    assert a + b == ConfusionCounts(11, 22, 33, 44)
    assert sum([a, b]) == ConfusionCounts(11, 22, 33, 44)
    assert (a + b).total == 110


@pytest.mark.parametrize(
    ("pred", "truth", "counts", "expected"),
    [
        # empty prediction and empty truth: perfect agreement for Dice/IoU, PPV/sens undefined
        (
            [[0, 0], [0, 0]],
            [[0, 0], [0, 0]],
            ConfusionCounts(0, 0, 0, 4),
            {"dice": 1.0, "iou": 1.0, "ppv": NAN, "sens": NAN, "spec": 1.0},
        ),
        # empty prediction, one infected pixel
        (
            [[0, 0], [0, 0]],
            [[0, 1], [0, 0]],
            ConfusionCounts(0, 0, 1, 3),
            {"dice": 0.0, "iou": 0.0, "ppv": NAN, "sens": 0.0, "spec": 1.0},
        ),
        # empty truth, one predicted pixel
        (
            [[0, 1], [0, 0]],
            [[0, 0], [0, 0]],
            ConfusionCounts(0, 1, 0, 3),
            {"dice": 0.0, "iou": 0.0, "ppv": 0.0, "sens": NAN, "spec": 0.75},
        ),
        # everything infected and predicted: no negatives, specificity undefined
        (
            [[1, 1], [1, 1]],
            [[1, 1], [1, 1]],
            ConfusionCounts(4, 0, 0, 0),
            {"dice": 1.0, "iou": 1.0, "ppv": 1.0, "sens": 1.0, "spec": NAN},
        ),
    ],
)
def test_empty_mask_conventions(pred, truth, counts, expected) -> None:
    c = confusion(np.array(pred), np.array(truth))
    assert c == counts
    assert_scores(scores(c), expected)


def test_confusion_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"pred: expected a binary mask.*0\.5"):
        confusion(np.array([0.5, 1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"target: expected a binary mask.*2"):
        confusion(torch.tensor([0, 1]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"same shape.*\(2,\).*\(3,\)"):
        confusion(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match=r"ConfusionCounts\.fp"):
        ConfusionCounts(1, -1, 0, 0)
    with pytest.raises(TypeError, match="ConfusionCounts"):
        scores({"tp": 1})  # type: ignore[arg-type]


# ------------------------------------------------------------------ meter


def test_meter_summed_versus_per_volume() -> None:
    # volume a: TP 1, TN 3 (dice 1); volume b: FN 3, TN 1 (dice 0, ppv undefined).
    # volume a arrives as two slices in two batches and must be pooled.
    meter = SegmentationMeter()
    a1_p, a1_t = np.array([[1, 0]]), np.array([[1, 0]])
    a2_p, a2_t = np.array([[0, 0]]), np.array([[0, 0]])
    b_p, b_t = np.array([[0, 0]]), np.array([[1, 1]])
    meter.update(np.stack([a1_p, b_p]), np.stack([a1_t, b_t]), ["a", "b"])
    meter.update(a2_p[None], a2_t[None], ["a"])
    meter.update(np.array([[0, 0]]), np.array([[0, 1]]), "b")  # a whole volume: no batch axis
    assert meter.counts == ConfusionCounts(tp=1, fp=0, fn=3, tn=4)
    out = meter.compute()
    assert out["dice"] == pytest.approx(2 / 5)
    assert out["iou"] == pytest.approx(1 / 4)
    assert out["ppv"] == pytest.approx(1.0)
    assert out["sens"] == pytest.approx(1 / 4)
    assert out["spec"] == pytest.approx(1.0)
    assert out["n_volumes"] == 2
    assert out["dice_mean"] == pytest.approx(0.5) and out["dice_std"] == pytest.approx(0.5)
    # ppv of volume b is nan: skipped in the mean, and the count says so
    assert out["ppv_mean"] == pytest.approx(1.0) and out["ppv_n"] == 1
    assert out["dice_n"] == 2
    assert list(meter.per_volume()) == ["a", "b"]


def test_meter_anonymous_items_and_errors() -> None:
    meter = SegmentationMeter()
    with pytest.raises(ValueError, match="no data"):
        meter.compute()
    meter.update(torch.tensor([[1, 1], [0, 0]]), torch.tensor([[1, 0], [0, 0]]))
    assert list(meter.per_volume()) == ["item-0", "item-1"]
    # item-1 is empty/empty: Dice 1 by convention; item-0 Dice 2/3
    assert meter.compute()["dice_mean"] == pytest.approx((2 / 3 + 1.0) / 2)
    with pytest.raises(ValueError, match="2 ids for a batch of 1"):
        meter.update(np.ones((1, 2)), np.ones((1, 2)), ["x", "y"])
    meter.reset()
    with pytest.raises(ValueError, match="no data"):
        meter.compute()


# ------------------------------------------------------------------ Hausdorff


def _two_pixels(shape, a, b):
    p, t = np.zeros(shape, bool), np.zeros(shape, bool)
    p[a], t[b] = True, True
    return p, t


def test_hausdorff_single_pixels_3_4_5() -> None:
    p, t = _two_pixels((5, 6), (0, 0), (3, 4))
    assert hausdorff(p, t) == pytest.approx(5.0)
    assert hausdorff(t, p) == pytest.approx(5.0)
    assert hausdorff(p, t, spacing=2.0) == pytest.approx(10.0)
    # anisotropic (row, col) spacing 2.0 x 0.5 mm: sqrt((3*2)^2 + (4*0.5)^2) = sqrt(40)
    assert hausdorff(p, t, spacing=(2.0, 0.5)) == pytest.approx(math.sqrt(40.0))
    assert hausdorff(torch.from_numpy(p), torch.from_numpy(t)) == pytest.approx(5.0)


def test_hausdorff_3d_spacing_in_mm() -> None:
    p, t = _two_pixels((4, 3, 3), (0, 0, 0), (2, 1, 0))
    # (z, y, x) spacing (5, 1, 1) mm: sqrt((2*5)^2 + 1^2)
    assert hausdorff(p, t, spacing=(5.0, 1.0, 1.0)) == pytest.approx(math.sqrt(101.0))


def test_hd95_differs_from_hd() -> None:
    # truth: a 1-pixel-thick segment of 10 pixels (all boundary); prediction: the same plus an
    # outlier 6 rows below its first pixel. d(pred->truth) = ten 0s and one 6, so the
    # 95th percentile (linear) sits at rank 0.95 * 10 = 9.5: halfway between 0 and 6 = 3.
    truth = np.zeros((8, 10), bool)
    truth[0, :] = True
    pred = truth.copy()
    pred[6, 0] = True
    d_pt, d_tp = surface_distances(pred, truth)
    assert sorted(d_pt.tolist()) == [0.0] * 10 + [6.0]
    assert d_tp.tolist() == [0.0] * 10
    assert hausdorff(pred, truth) == pytest.approx(6.0)
    assert hd95(pred, truth) == pytest.approx(3.0)
    assert hausdorff(pred, truth, percentile=50) == pytest.approx(0.0)


def test_hausdorff_uses_boundaries_only() -> None:
    # two filled 3x3 squares one column apart: interior pixels do not count, HD = 1
    a, b = np.zeros((7, 8), bool), np.zeros((7, 8), bool)
    a[2:5, 2:5] = True
    b[2:5, 3:6] = True
    assert hausdorff(a, b) == pytest.approx(1.0)
    assert hausdorff(a, a) == 0.0


def test_hausdorff_empty_conventions() -> None:
    empty, one = np.zeros((4, 4)), np.zeros((4, 4))
    one[1, 1] = 1
    assert hausdorff(empty, empty) == 0.0
    assert hausdorff(empty, one) == math.inf
    assert hausdorff(one, empty, percentile=95) == math.inf


def test_hausdorff_matches_monai_on_random_masks() -> None:
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(0)
    from scipy import ndimage

    for spacing in [(1.0, 1.0, 1.0), (2.5, 0.7, 0.7)]:
        noise = ndimage.gaussian_filter(rng.standard_normal((2, 12, 20, 20)), (0, 1.5, 1.5, 1.5))
        pred, truth = noise[0] > 0.1, noise[1] > 0.1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for q in (None, 95):
                ref = compute_hausdorff_distance(
                    torch.from_numpy(pred)[None, None],
                    torch.from_numpy(truth)[None, None],
                    include_background=True,
                    percentile=q,
                    spacing=list(spacing),
                ).item()
                assert hausdorff(pred, truth, spacing, q) == pytest.approx(ref, rel=1e-5)


def test_hausdorff_rejects_bad_inputs() -> None:
    p, t = _two_pixels((5, 5), (0, 0), (3, 4))
    with pytest.raises(ValueError, match="expected 2 values"):
        hausdorff(p, t, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"finite and > 0.*spacing=None"):
        hausdorff(p, t, spacing=(float("nan"), 1.0))
    with pytest.raises(ValueError, match="finite and > 0"):
        hausdorff(p, t, spacing=0.0)
    with pytest.raises(ValueError, match="percentile"):
        hausdorff(p, t, percentile=101)
    with pytest.raises(ValueError, match="2-D or 3-D"):
        hausdorff(np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2, 2)))


# ------------------------------------------------------------------ counting


def test_count_blobs_connectivity() -> None:
    mask = np.zeros((5, 5), bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours
    mask[3:5, 3:5] = True
    assert count_blobs(mask, connectivity=1) == 3
    assert count_blobs(mask) == 2  # default: full (8-)connectivity, like LCFCN
    assert count_blobs(torch.zeros(4, 4)) == 0
    with pytest.raises(ValueError, match="connectivity"):
        count_blobs(mask, connectivity=3)


def test_blob_points_are_truncated_centroids() -> None:
    mask = np.zeros((8, 8), bool)
    mask[3, 3:5] = True  # centroid (3, 3.5) -> (3, 3)
    mask[6:8, 6:8] = True  # centroid (6.5, 6.5) -> (6, 6)
    assert blob_points(mask).tolist() == [[3, 3], [6, 6]]
    assert blob_points(np.zeros((3, 3))).shape == (0, 2)


def test_counting_mae() -> None:
    assert counting_mae([3, 0, 2], [1, 0, 5]) == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="3 predicted and 2 true"):
        counting_mae([1, 2, 3], [1, 2])


TRUE_8 = [(1, 1), (2, 3), (1, 6), (6, 6)]  # quadrants TL, TL, TR, BR
PRED_8 = [(0, 0), (2, 5), (5, 1), (7, 7)]  # quadrants TL, TR, BL, BR


def test_game_on_8x8_by_hand() -> None:
    assert grid_counts(TRUE_8, (8, 8), 1).tolist() == [[2, 1], [0, 1]]
    assert grid_counts(PRED_8, (8, 8), 1).tolist() == [[1, 1], [1, 1]]
    assert game(PRED_8, TRUE_8, (8, 8), 0) == 0.0  # same total count
    assert game(PRED_8, TRUE_8, (8, 8), 1) == 2.0  # |1-2| + |1-1| + |1-0| + |1-1|
    # L=2, 2x2 cells: truth in cells (0,0) (1,1) (0,3) (3,3); prediction in (0,0) (1,2)
    # (2,0) (3,3): four unmatched cells
    assert game(PRED_8, TRUE_8, (8, 8), 2) == 4.0
    assert game(np.array(PRED_8), torch.tensor(TRUE_8), (8, 8), 1) == 2.0


def test_game_cells_for_sizes_not_divisible() -> None:
    # 5 rows split into 2 cells as numpy.array_split does: rows 0-2 and 3-4
    assert grid_counts([(2, 2), (3, 3)], (5, 5), 1).tolist() == [[1, 0], [0, 1]]
    # more cells than pixels per axis: the extra cells are empty, nothing is lost
    assert grid_counts([(0, 0), (2, 2)], (3, 3), 2).sum() == 2


def test_mean_game_and_game0_equals_mae() -> None:
    preds = [PRED_8, []]
    trues = [TRUE_8, [(0, 0), (7, 7), (4, 4)]]
    assert mean_game(preds, trues, (8, 8), 1) == pytest.approx((2.0 + 3.0) / 2)
    assert mean_game(preds, trues, [(8, 8), (8, 8)], 0) == pytest.approx(
        counting_mae([4, 0], [4, 3])
    )


def test_counting_scores_from_masks() -> None:
    mask = np.zeros((8, 8), bool)
    mask[0:2, 0:2] = True  # centroid (0.5, 0.5) -> TL
    mask[5, 1] = True  # BL
    out = counting_scores([mask], [TRUE_8], levels=(0, 1))
    assert out == {"mae": 2.0, "game0": 2.0, "game1": 4.0}


def test_counting_rejects_bad_points() -> None:
    with pytest.raises(ValueError, match=r"point \[8.0, 0.0\] lies outside.*\(8, 8\)"):
        game([(8, 0)], [], (8, 8), 1)
    with pytest.raises(ValueError, match=r"shape \(K, 2\)"):
        grid_counts([1, 2, 3], (8, 8), 1)
    with pytest.raises(ValueError, match="L must be"):
        grid_counts([], (8, 8), -1)


def test_summarize_skips_nan() -> None:
    out = summarize({"hd": [1.0, 3.0, NAN], "none": [NAN]})
    assert out["hd"] == (2.0, 1.0)
    assert all(math.isnan(v) for v in out["none"])
