"""P1 acquisition: heuristics on hand-made probability maps, region scores on hand-made grids,
P1's selection order, random selection, and head-only vs full MC scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from covidlib.acquisition import (
    bald,
    entropy_of_mean,
    expected_entropy,
    image_scores,
    infected_share,
    pixel_uncertainty,
    region_scores,
    score_images,
    score_pool,
    select_random_regions,
    select_regions,
)
from covidlib.data.oracle import region_grid
from covidlib.models import FCN8VGG16, UNet2D

torch.set_num_threads(1)

LN2 = math.log(2.0)
H91 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))  # 0.325083 nats


def _samples() -> torch.Tensor:
    """I = 2 draws, B = 1 image, C = 2 classes, 1 x 4 pixels:
    a: (.5,.5),(.5,.5)  b: (1,0),(0,1)  c: (1,0),(1,0)  d: (.9,.1),(.9,.1)."""
    p1 = torch.tensor([0.5, 1.0, 1.0, 0.9], dtype=torch.float64)  # P(class 0) in draw 1
    p2 = torch.tensor([0.5, 0.0, 1.0, 0.9], dtype=torch.float64)  # P(class 0) in draw 2
    draws = [torch.stack([p, 1 - p])[None, :, None, :] for p in (p1, p2)]  # (1, 2, 1, 4)
    return torch.stack(draws)  # (2, 1, 2, 1, 4)


# ----------------------------------------------------------------------------- heuristics
def test_entropy_of_mean_by_hand():
    u = entropy_of_mean(_samples())
    assert u.shape == (1, 1, 4)
    assert u[0, 0].tolist() == pytest.approx([LN2, LN2, 0.0, H91], abs=1e-12)


def test_bald_separates_disagreement_from_shared_doubt():
    s = _samples()
    # a: both draws unsure -> expected entropy ln2, BALD 0; b: draws certain but opposite ->
    # expected entropy 0, BALD ln2; c: certain and agreeing -> 0; d: agreeing -> 0.
    assert expected_entropy(s)[0, 0].tolist() == pytest.approx([LN2, 0, 0, H91], abs=1e-12)
    assert bald(s)[0, 0].tolist() == pytest.approx([0, LN2, 0, 0], abs=1e-12)
    assert torch.equal(pixel_uncertainty(s, "bald"), bald(s))
    assert torch.equal(pixel_uncertainty(s, "entropy"), entropy_of_mean(s))


def test_one_draw_three_classes():
    probs = torch.tensor([0.5, 0.25, 0.25]).reshape(1, 1, 3, 1, 1)
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # 1.039721
    assert float(entropy_of_mean(probs)) == pytest.approx(expected, abs=1e-12)
    assert float(bald(probs)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.ones(2, 1, 2, 3, 3, dtype=torch.int64), "floating"),
        (torch.ones(2, 2), "expected"),
        (torch.full((2, 1, 2, 3, 3), 1.5), r"\[0, 1\]"),
        (torch.full((2, 1, 2, 3, 3), float("nan")), "nan"),
        (torch.full((2, 1, 1, 3, 3), 1.0), "C >= 2"),
    ],
)
def test_heuristics_reject_bad_samples(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        entropy_of_mean(bad)


def test_pixel_uncertainty_names():
    with pytest.raises(ValueError, match="select_random_regions"):
        pixel_uncertainty(_samples(), "random")
    with pytest.raises(ValueError, match="unknown heuristic"):
        pixel_uncertainty(_samples(), "margin")


# ----------------------------------------------------------------------------- region scores
def test_region_scores_max_and_mean_on_a_4x4_map():
    u = torch.arange(16, dtype=torch.float64).reshape(4, 4)
    # K = 4: boxes [0:2, 0:2], [0:2, 2:4], [2:4, 0:2], [2:4, 2:4] in raster order
    assert region_scores(u, 4, "max").tolist() == [5, 7, 13, 15]
    assert region_scores(u, 4, "mean").tolist() == [2.5, 4.5, 10.5, 12.5]
    assert region_scores(u, 1, "max").tolist() == [15]  # K = 1: the whole image
    assert region_scores(u[None].repeat(2, 1, 1), 16).shape == (2, 16)
    assert region_scores(u, 16).tolist() == list(range(16))


def test_region_scores_when_the_side_is_not_divisible():
    # 5 x 5, K = 4: cuts round(linspace(0, 5, 3)) = [0, 2, 5] -> 2 + 3 rows and columns
    u = torch.arange(25, dtype=torch.float64).reshape(5, 5)
    assert region_scores(u, 4, "max").tolist() == [6, 9, 21, 24]
    # means: rows 0-1 x cols 0-1 = (0+1+5+6)/4; rows 0-1 x cols 2-4 = (2+3+4+7+8+9)/6;
    # rows 2-4 x cols 0-1 = (10+11+15+16+20+21)/6; rows 2-4 x cols 2-4 = 162/9
    assert region_scores(u, 4, "mean").tolist() == pytest.approx([3.0, 5.5, 15.5, 18.0])
    # 6 x 6, K = 16: cuts [0, 2, 3, 4, 6] -> boxes of 2, 1, 1, 2 pixels per side
    v = torch.zeros(6, 6, dtype=torch.float64)
    v[5, 5] = 1.0
    v[2, 2] = 2.0
    s = region_scores(v, 16)
    assert s[15] == 1.0 and s[5] == 2.0 and s.sum() == 3.0


def test_region_scores_of_explicit_boxes_and_errors():
    u = torch.arange(16, dtype=torch.float64).reshape(4, 4)
    assert region_scores(u, [(0, 4, 0, 1), (1, 2, 1, 3)], "max").tolist() == [12, 6]
    assert region_scores(u, [(0, 4, 0, 1), (1, 2, 1, 3)], "mean").tolist() == [6, 5.5]
    with pytest.raises(ValueError, match="perfect square"):
        region_scores(u, 8)
    with pytest.raises(ValueError, match="reduce"):
        region_scores(u, 4, "median")
    with pytest.raises(ValueError, match="inside"):
        region_scores(u, [(0, 5, 0, 1)])
    with pytest.raises(ValueError, match="nan"):
        region_scores(torch.full((4, 4), float("nan")), 4)


# ----------------------------------------------------------------------------- selection
SCORES = np.array([
    [0.1, 0.9, 0.3],  # image 0: best region 1 (0.9)
    [0.5, 0.2, 0.5],  # image 1: tie between regions 0 and 2 -> region 0
    [0.95, 0.0, 0.0],  # image 2: best region 0
    [0.9, 0.1, 0.1],  # image 3: 0.9, ties with image 0 -> image 0 first
])


def test_select_regions_follows_p1_ranking():
    assert select_regions(SCORES, 2) == [(2, 0), (0, 1)]
    assert select_regions(SCORES, 4) == [(2, 0), (0, 1), (3, 0), (1, 0)]
    assert select_regions(SCORES, 10) == [(2, 0), (0, 1), (3, 0), (1, 0)]
    assert select_regions(SCORES, 0) == []


def test_select_regions_skips_labelled_regions_and_full_images():
    labelled = np.zeros(SCORES.shape, dtype=bool)
    labelled[2, 0] = True  # image 2's best region is done: its next best is 0.0
    labelled[0] = True  # image 0 is fully labelled: it left the pool
    assert select_regions(SCORES, 3, labelled) == [(3, 0), (1, 0), (2, 1)]
    best, score = image_scores(SCORES, labelled)
    assert best.tolist() == [-1, 0, 1, 0]
    assert score.tolist() == [-np.inf, 0.5, 0.0, 0.9]
    with pytest.raises(ValueError, match="boolean"):
        select_regions(SCORES, 1, labelled.astype(int))
    with pytest.raises(ValueError, match="shape"):
        select_regions(SCORES, 1, labelled[:2])
    with pytest.raises(ValueError, match="n_images"):
        select_regions(SCORES, -1)


def test_select_random_regions_draws_unlabelled_regions_of_distinct_images():
    labelled = np.zeros((6, 4), dtype=bool)
    labelled[0] = True  # out of the pool
    labelled[1, :3] = True  # only region 3 left
    picks = select_random_regions(labelled, 5, np.random.default_rng(0))
    images = [i for i, _ in picks]
    assert images == [1, 2, 3, 4, 5]  # all five candidates, sorted
    assert dict(picks)[1] == 3
    assert all(not labelled[i, k] for i, k in picks)
    again = select_random_regions(labelled, 5, np.random.default_rng(0))
    assert again == picks  # same generator state -> same choice
    two = select_random_regions(labelled, 2, np.random.default_rng(1))
    assert len({i for i, _ in two}) == 2 and 0 not in {i for i, _ in two}
    with pytest.raises(TypeError, match="Generator"):
        select_random_regions(labelled, 2, 0)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- with a model
def _unet() -> UNet2D:
    torch.manual_seed(0)
    model = UNet2D(3, 2, base_width=4, depth=2, dropout=0.5)
    with torch.no_grad():  # larger output weights: scores that vary between regions
        model.classifier.weight.mul_(20.0)
    return model.eval()


def _fcn8() -> FCN8VGG16:
    torch.manual_seed(0)
    model = FCN8VGG16(2, fc_channels=16, layout="same")
    gen = torch.Generator().manual_seed(1)
    for conv in (model.score_fr, model.score_pool3, model.score_pool4):  # start at 0 otherwise
        conv.weight.data = torch.randn(conv.weight.shape, generator=gen) * 0.5
    return model.eval()


@pytest.mark.parametrize("make", [_unet, _fcn8], ids=["unet2d", "fcn8"])
def test_head_only_and_full_forward_select_identical_regions(make):
    model = make()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    # region means: a pixel whose features are all dropped gives the same (bias) output in
    # every region, which would make every region maximum equal for a random network
    kw = {"n_regions": 16, "seed": 7, "batch_size": 2, "reduce": "mean"}
    head = score_pool(model, images, 4, True, n_select=2, **kw)
    full = score_pool(model, images, 4, False, n_select=2, **kw)
    assert head.scores.shape == (3, 16)
    np.testing.assert_allclose(head.scores, full.scores, rtol=1e-5, atol=1e-7)
    assert head.selected == full.selected and len(head.selected) == 2
    assert head.selected == select_regions(full.scores, 2)
    # another seed gives other dropout masks, hence other scores
    other = score_images(model, images, 4, n_regions=16, seed=8, batch_size=2, reduce="mean")
    assert not np.allclose(other, head.scores)


def test_score_images_accepts_datasets_and_returns_maps():
    model = _unet()
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    items = [{"image": images[i]} for i in range(3)]
    a = score_images(model, images, 4, n_regions=4, seed=0, batch_size=3)
    b, maps = score_images(model, items, 4, n_regions=4, seed=0, batch_size=3,
                           return_maps=True)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert maps.shape == (3, 16, 16)
    np.testing.assert_allclose(region_scores(torch.from_numpy(maps).double(), 4).numpy(), a,
                               rtol=1e-5)
    assert (maps >= 0).all() and (maps <= LN2 + 1e-6).all()  # two classes: at most ln 2
    c = score_images(model, images, 4, heuristic="bald", n_regions=4, reduce="mean", seed=0)
    assert c.shape == (3, 4) and (c >= 0).all()


def test_score_images_errors():
    model = _unet()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="random"):
        score_images(model, x, 4, heuristic="random")
    with pytest.raises(ValueError, match="n_samples"):
        score_images(model, x, 0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        score_images(model, x[0], 2)
    with pytest.raises(ValueError, match="no dropout"):
        score_images(UNet2D(3, 2, base_width=4, depth=2, dropout=0.0), x, 2, n_regions=4)


def test_infected_share_by_hand():
    # two 4 x 4 images, K = 4 (2 x 2 boxes: 0 top-left, 1 top-right, 2 bottom-left, 3 ...)
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    masks[0, 0, 0] = 1  # image 0: infection in region 0 only
    masks[1, 3, 3] = 1  # image 1: infection in region 3 only
    boxes = region_grid((4, 4), 4)
    assert infected_share(masks, boxes, [(0, 0), (1, 3)]) == 1.0
    assert infected_share(masks, boxes, [(0, 0), (0, 1), (1, 0), (1, 3)]) == 0.5
    assert infected_share(masks, boxes, [(0, 3), (1, 0), (1, 1)]) == 0.0
    assert math.isnan(infected_share(masks, boxes, []))
    with pytest.raises(IndexError, match=r"pick \(2, 0\)"):
        infected_share(masks, boxes, [(2, 0)])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        infected_share(masks[0], boxes, [(0, 0)])
