"""Tests of covidlib.losses on tiny inputs whose values are worked out by hand in comments.

Recurring numbers: with logits (z0, z1) = (0, ln 3) the softmax gives S1 = 3/4, S0 = 1/4; with
(0, -ln 3) S1 = 1/4, S0 = 3/4; with (0, 0) S = 1/2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from covidlib.losses import (
    IGNORE,
    TRANSFORM_SETS,
    ComboLoss,
    ConsistencyLoss,
    LCFCNLoss,
    PointLoss,
    StructureLoss,
    Transform,
    combo_loss,
    combo_loss_per_sample,
    consistency_term,
    false_positive_blobs,
    lcfcn_loss,
    point_loss,
    sample_transforms,
    structure_loss,
    structure_weights,
    transform_batch,
    watershed_boundaries,
)

LN2, LN3 = math.log(2), math.log(3)
LN4_3 = math.log(4 / 3)


def two_class(z1: torch.Tensor) -> torch.Tensor:
    """(H, W) foreground logits -> (1, 2, H, W) logits with z0 = 0."""
    return torch.stack([torch.zeros_like(z1), z1])[None]


def scalar(x: torch.Tensor | float) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


class approx:
    """``actual == approx(expected)`` for scalars and 0-d tensors (detached before comparing)."""

    def __init__(self, expected: torch.Tensor | float, rel: float = 1e-5) -> None:
        self.expected = scalar(expected)
        self.rel = rel

    def __eq__(self, actual: object) -> bool:
        return scalar(actual) == pytest.approx(self.expected, rel=self.rel, abs=1e-6)

    def __repr__(self) -> str:
        return f"approx({self.expected})"


# --------------------------------------------------------------------------- point loss


def test_ignore_is_the_oracle_constant():
    from covidlib.data.oracle import IGNORE as ORACLE_IGNORE

    assert IGNORE == ORACLE_IGNORE == 255


def test_point_loss_hand_values():
    # S1 = [1/2, 3/4, 1/4] on a 1 x 3 image
    logits = two_class(torch.tensor([[0.0, LN3, -LN3]]))
    labels = torch.tensor([[[1, 1, 0]]], dtype=torch.uint8)  # oracle maps are uint8
    # -log S1(px0) - log S1(px1) - log S0(px2) = ln2 + ln(4/3) + ln(4/3)
    expected = LN2 + 2 * LN4_3
    assert point_loss(logits, labels, reduction="sum") == approx(expected)
    assert point_loss(logits, labels, reduction="mean") == approx(expected / 3)
    assert point_loss(logits, labels) == approx(expected / 3)  # default = authors' mean
    # unlabelled pixel 0 drops out: 2 ln(4/3) over 2 points
    labels[0, 0, 0] = IGNORE
    assert point_loss(logits, labels, reduction="sum") == approx(2 * LN4_3)
    assert PointLoss("mean")(logits, labels) == approx(LN4_3)


def test_point_loss_batch_normalisation_and_empty_images():
    logits = torch.cat([two_class(torch.tensor([[0.0, LN3]])), torch.zeros(1, 2, 1, 2)])
    labels = torch.tensor([[[1, 1]], [[IGNORE, IGNORE]]])
    # image 0: ln2 + ln(4/3); image 1 has no labelled pixel -> 0
    per_image = point_loss(logits, labels, reduction="none")
    assert per_image.tolist() == pytest.approx([LN2 + LN4_3, 0.0], abs=1e-6)
    # mean is per labelled pixel of the whole batch (2 pixels)
    assert point_loss(logits, labels, reduction="mean") == approx((LN2 + LN4_3) / 2)


def test_point_loss_without_labels_is_zero_and_differentiable():
    logits = torch.randn(2, 2, 3, 3, requires_grad=True)
    labels = torch.full((2, 3, 3), IGNORE)
    for reduction in ("mean", "sum"):
        loss = point_loss(logits, labels, reduction=reduction)
        assert scalar(loss) == 0.0
        loss.backward()
        assert torch.equal(logits.grad, torch.zeros_like(logits))
        logits.grad = None


def test_point_loss_matches_torch_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=gen)
    labels = torch.randint(0, 3, (2, 4, 5), generator=gen)
    labels[torch.rand(2, 4, 5, generator=gen) < 0.6] = IGNORE
    ref = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
    assert point_loss(logits, labels, reduction="sum") == approx(ref)


def test_point_loss_background_images_option():
    # image with one background point and no infection point; S0 = 3/4 everywhere
    logits = two_class(torch.full((1, 3), -LN3))
    labels = torch.tensor([[[0, IGNORE, IGNORE]]])
    assert point_loss(logits, labels, reduction="sum") == approx(LN4_3)
    # P2 Sec 4.2 reading: the whole background image is labelled background -> 3 ln(4/3)
    assert point_loss(logits, labels, reduction="sum", empty_as_background=True) == approx(
        3 * LN4_3
    )
    # an unannotated image stays unannotated
    empty = torch.full((1, 1, 3), IGNORE)
    assert float(point_loss(logits, empty, empty_as_background=True)) == 0.0
    # an image with an infection point is untouched
    labels = torch.tensor([[[1, IGNORE, IGNORE]]])
    assert point_loss(logits, labels, reduction="sum", empty_as_background=True) == approx(
        math.log(4)
    )


def test_point_loss_rejects_bad_inputs():
    logits = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match=r"values \[2\]"):
        point_loss(logits, torch.tensor([[[0, 2], [IGNORE, 1]]]))
    with pytest.raises(ValueError, match="does not match logits"):
        point_loss(logits, torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        point_loss(logits, torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="at least 2 channels"):
        point_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction='avg'"):
        point_loss(logits, torch.zeros(1, 2, 2, dtype=torch.long), reduction="avg")


# --------------------------------------------------------------------------- transforms


def test_transform_sets():
    assert [len(TRANSFORM_SETS[k]) for k in ("flip", "flip_rot", "d4")] == [1, 4, 8]
    # every element of flip_rot contains the horizontal flip ({hflip} x rotations)
    assert all(t.flip for t in TRANSFORM_SETS["flip_rot"])
    grid = torch.arange(9).reshape(3, 3)
    images = {tuple(t(grid).flatten().tolist()) for t in TRANSFORM_SETS["d4"]}
    assert len(images) == 8  # the eight symmetries of the square are distinct


def test_transform_is_an_exact_permutation_of_labels():
    y = torch.tensor([[0, 1], [2, 3]], dtype=torch.uint8)
    # hflip: [[1, 0], [3, 2]]; rot90 (counter-clockwise) of [[a, b], [c, d]] is [[b, d], [a, c]]
    # -> [[0, 2], [1, 3]], i.e. the transpose
    t = Transform(flip=True, k=1)
    assert t(y).tolist() == [[0, 2], [1, 3]]
    assert t(y).dtype == torch.uint8
    labels = torch.tensor([[0, 1, IGNORE], [IGNORE, 1, 0], [1, IGNORE, 0]])
    for t in TRANSFORM_SETS["d4"]:
        out = t(labels)
        assert torch.equal(out.flatten().sort().values, labels.flatten().sort().values)
        assert torch.equal(t.inverse(out), labels)
    with pytest.raises(ValueError, match="quarter turns"):
        Transform(flip=False, k=4)


def test_transform_batch_is_per_image():
    x = torch.arange(8.0).reshape(2, 1, 2, 2)
    out = transform_batch(x, torch.tensor([0, 1]), TRANSFORM_SETS["d4"])
    assert torch.equal(out[0], x[0])  # identity
    assert torch.equal(out[1], torch.rot90(x[1], 1, dims=(-2, -1)))


def test_transforms_are_sampled_uniformly_and_reproducibly():
    gen = torch.Generator().manual_seed(0)
    idx = sample_transforms(8000, 4, gen)
    counts = torch.bincount(idx, minlength=4)
    assert counts.sum() == 8000 and bool((counts - 2000).abs().max() < 150)
    again = sample_transforms(8000, 4, torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)


# --------------------------------------------------------------------------- consistency


class PositionBias(nn.Module):
    """z1 = x + P (P a learnable H x W map), z0 = 0: not equivariant to flips."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.bias = nn.Parameter(bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1 = x[:, 0] + self.bias
        return torch.stack([torch.zeros_like(z1), z1], dim=1)


def test_consistency_hand_value_on_2x2_image():
    model = PositionBias(torch.tensor([[LN3, 0.0], [0.0, 0.0]]))
    images = torch.zeros(1, 1, 2, 2)
    labels = torch.tensor([[[1, IGNORE], [IGNORE, 0]]])
    loss = ConsistencyLoss("flip", lam=0.5, reduction="sum")
    total, parts = loss(model, images, labels)
    # f(x) = P: S1 = [[3/4, 1/2], [1/2, 1/2]]; hflip -> [[1/2, 3/4], [1/2, 1/2]].
    # f(t(x)) = f(0) = P again. |diff| of S1 = [[1/4, 1/4], [0, 0]], same for S0 -> L_C = 1.
    assert parts["consistency"] == approx(1.0)
    # PL(f(x), y) (mean over 2 points): (-ln 3/4 - ln 1/2) / 2
    assert parts["point"] == approx((LN4_3 + LN2) / 2)
    # t(y) = [[IGNORE, 1], [0, IGNORE]]: S1(0,1) = 1/2, S0(1,0) = 1/2 -> (ln2 + ln2) / 2
    assert parts["point_transformed"] == approx(LN2)
    assert total == approx((LN4_3 + LN2) / 2 + LN2 + 0.5 * 1.0)
    assert parts["total"] is total
    # mean over B*C*H*W = 8 elements (authors' torch.mean)
    _, parts = ConsistencyLoss("flip", reduction="mean")(model, images, labels)
    assert parts["consistency"] == approx(1.0 / 8)
    # Alg. 1 form: point loss on the original branch only
    total, parts = ConsistencyLoss("flip", lam=0.5, reduction="sum", both_branches=False)(
        model, images, labels
    )
    assert scalar(parts["point_transformed"]) == 0.0
    assert total == approx((LN4_3 + LN2) / 2 + 0.5)


def test_consistency_gradient_hand_value_through_both_branches():
    model = PositionBias(torch.tensor([[LN3, 0.0], [0.0, 0.0]]))
    images = torch.zeros(1, 1, 2, 2)
    labels = torch.full((1, 2, 2), IGNORE)
    _, parts = ConsistencyLoss("flip", reduction="sum")(model, images, labels)
    parts["consistency"].backward()
    # L_C = 2 * sum_j |a_j - b_j| with a = hflip(sigmoid(P)) (branch 1), b = sigmoid(P)
    # (branch 2); sigmoid'(ln 3) = 3/16, sigmoid'(0) = 1/4.
    # P00 reaches a01 (a01 - b01 = +1/4) and b00 (a00 - b00 = -1/4): 2*3/16 + 2*3/16 = 3/4.
    # P01 reaches a00 (sign -1) and b01 (sign +1): -2/4 - 2/4 = -1. Row 1: differences are 0.
    expected = torch.tensor([[0.75, -1.0], [0.0, 0.0]])
    assert torch.allclose(model.bias.grad, expected, atol=1e-6)


def _grads(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return torch.cat([g.flatten() for g in grads])


def test_consistency_gradient_flows_through_both_branches_of_a_conv_model():
    torch.manual_seed(0)
    model = nn.Conv2d(1, 2, 3, padding=1)
    images = torch.rand(2, 1, 4, 4)
    labels = torch.full((2, 4, 4), IGNORE)
    idx = torch.tensor([1, 3])  # hflip+rot90, hflip+rot270
    transforms = TRANSFORM_SETS["flip_rot"]
    loss = ConsistencyLoss("flip_rot", reduction="sum")
    _, parts = loss(model, images, labels, transform_index=idx)
    full = _grads(model, parts["consistency"])

    # Rebuild the two branches and detach one at a time.
    s = F.softmax(model(images), dim=1)
    s_t = F.softmax(model(transform_batch(images, idx, transforms)), dim=1)
    t_s = transform_batch(s, idx, transforms)
    assert consistency_term(t_s, s_t, reduction="sum") == approx(parts["consistency"])
    g_first = _grads(model, consistency_term(t_s, s_t.detach(), reduction="sum"))
    g_second = _grads(model, consistency_term(t_s.detach(), s_t, reduction="sum"))
    assert g_first.abs().sum() > 1e-3 and g_second.abs().sum() > 1e-3
    assert not torch.allclose(g_first, g_second)
    assert torch.allclose(g_first + g_second, full, atol=1e-6)


def test_consistency_is_zero_for_equivariant_cases():
    torch.manual_seed(0)
    # an input-independent (constant) output: t(f(x)) = f(t(x)) for every t
    const = nn.Conv2d(1, 2, 3, padding=1)
    with torch.no_grad():
        const.weight.zero_()
    images = torch.rand(3, 1, 5, 5)
    labels = torch.full((3, 5, 5), IGNORE)
    gen = torch.Generator().manual_seed(1)
    _, parts = ConsistencyLoss("d4", reduction="sum")(const, images, labels, generator=gen)
    assert scalar(parts["consistency"]) == 0.0
    # the identity of d4 gives zero consistency for any model
    conv = nn.Conv2d(1, 2, 3, padding=1)
    _, parts = ConsistencyLoss("d4")(
        conv, images, labels, transform_index=torch.zeros(3, dtype=torch.long)
    )
    assert scalar(parts["consistency"]) == 0.0


def test_consistency_logit_space_and_generator():
    model = PositionBias(torch.tensor([[LN3, 0.0], [0.0, 0.0]]))
    images = torch.zeros(1, 1, 2, 2)
    labels = torch.full((1, 2, 2), IGNORE)
    # logits: z1 = [[ln3, 0], [0, 0]] vs its flip; |diff| = ln3 at two pixels (z0 equal)
    _, parts = ConsistencyLoss("flip", space="logits", reduction="sum")(model, images, labels)
    assert parts["consistency"] == approx(2 * LN3)
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    x = torch.rand(4, 1, 4, 4)
    lab = torch.randint(0, 2, (4, 4, 4))
    loss = ConsistencyLoss("flip_rot", lam=2.0)
    a, _ = loss(conv, x, lab, generator=torch.Generator().manual_seed(5))
    b, _ = loss(conv, x, lab, generator=torch.Generator().manual_seed(5))
    assert scalar(a) == scalar(b)


def test_consistency_rejects_bad_inputs():
    conv = nn.Conv2d(1, 2, 3, padding=1)
    images = torch.rand(1, 1, 4, 6)
    labels = torch.full((1, 4, 6), IGNORE)
    with pytest.raises(ValueError, match="square images"):
        ConsistencyLoss("flip_rot")(conv, images, labels, transform_index=torch.tensor([1]))
    ConsistencyLoss("flip")(conv, images, labels)  # flips work on any shape
    with pytest.raises(ValueError, match="transform_index"):
        ConsistencyLoss("flip")(conv, images, labels, transform_index=torch.tensor([1]))
    with pytest.raises(ValueError, match="transforms='rot'"):
        ConsistencyLoss("rot")
    with pytest.raises(ValueError, match="lam=-1"):
        ConsistencyLoss("flip", lam=-1)
    with pytest.raises(TypeError, match="model returned tuple"):
        ConsistencyLoss("flip")(lambda x: (x, x), images, labels)


# --------------------------------------------------------------------------- LCFCN


def test_false_positive_blobs_by_value_not_index():
    # blob ids 2 and 5 (not consecutive, e.g. after masking with a region of interest)
    blobs = np.array([[2, 2, 0, 5], [2, 0, 0, 5]])
    points = np.zeros_like(blobs, dtype=bool)
    points[0, 0] = True  # the point lies in blob 2, so blob 5 is the false positive
    assert false_positive_blobs(blobs, points).tolist() == [5]
    # the authors' line deletes *positions* 0 and 2 of [0, 2, 5] and keeps blob 2 instead
    authors = np.delete(np.unique(blobs), np.unique(blobs * points))
    assert authors.tolist() == [2]
    # a fully foreground prediction (no 0 label): ours finds no false positive,
    # the authors' version indexes past the end
    full = np.ones((2, 2), dtype=int)
    pts = np.array([[True, False], [False, False]])
    assert false_positive_blobs(full, pts).tolist() == []
    with pytest.raises(IndexError):
        np.delete(np.unique(full), np.unique(full * pts))


def _lcfcn_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """5 x 9 image. Predicted blob A = rows 1-3, cols 0-4 with points at (2,0) and (2,4);
    blob B = rows 1-3, cols 7-8 without points (false positive). S1 = 3/4 inside the blobs,
    1/4 outside. A third infection point (0,6) is missed; a background point at (4,6)."""
    z1 = torch.full((5, 9), -LN3)
    z1[1:4, 0:5] = LN3
    z1[1:4, 7:9] = LN3
    labels = torch.full((1, 5, 9), IGNORE, dtype=torch.uint8)
    labels[0, 2, 0] = labels[0, 2, 4] = labels[0, 0, 6] = 1
    labels[0, 4, 6] = 0
    return two_class(z1), labels


def test_lcfcn_terms_hand_values():
    logits, labels = _lcfcn_scene()
    logits.requires_grad_()
    out = lcfcn_loss(logits, labels, global_split=False)
    # image: infection present -log max S1 = ln(4/3); background present -log max S0 = ln(4/3)
    assert out["image"] == approx(2 * LN4_3)
    # point: two points with S1 = 3/4, one with S1 = 1/4 -> 2 ln(4/3) + ln 4
    assert out["point"] == approx(2 * LN4_3 + math.log(4))
    # split: blob A holds 2 points -> weight 1 x mean(-log S0) over its boundary = ln 4
    assert out["split"] == approx(math.log(4))
    # false positive: blob B, mean(-log S0) = ln 4
    assert out["fp"] == approx(math.log(4))
    assert out["total"] == approx(4 * LN4_3 + 3 * math.log(4))
    # background point joins the point term on request: S0(4,6) = 3/4 -> + ln(4/3)
    with_bg = lcfcn_loss(logits, labels, global_split=False, use_background_points=True)
    assert with_bg["point"] == approx(3 * LN4_3 + math.log(4))

    out["total"].backward()
    g1 = logits.grad[0, 1]
    assert bool((g1[1:4, 7:9] > 0).all())  # descent lowers z1 on the false-positive blob
    assert float(g1[0, 6]) < 0  # and raises it at the missed point


def test_lcfcn_local_split_boundary_lies_between_the_points():
    logits, _ = _lcfcn_scene()
    prob = F.softmax(logits, 1)[0, 1].numpy()
    seeds = np.zeros((5, 9), dtype=bool)
    seeds[2, 0] = seeds[2, 4] = True
    blob_a = np.zeros((5, 9), dtype=bool)
    blob_a[1:4, 0:5] = True
    bnd = watershed_boundaries(prob, seeds) & blob_a
    assert bnd.any() and not (bnd & seeds).any()
    cols = np.nonzero(bnd)[1]
    assert cols.min() > 0 and cols.max() < 4  # strictly between the two points


def test_lcfcn_global_split_on_uniform_output():
    # S = 1/2 everywhere, argmax = background -> no blobs. Two infection points.
    logits = torch.zeros(1, 2, 4, 6)
    labels = torch.full((1, 4, 6), IGNORE)
    labels[0, 1, 0] = labels[0, 2, 5] = 1
    out = lcfcn_loss(logits, labels)
    # image 2 ln2, point 2 ln2, global split (2 - 1) x ln2, no false positives
    assert out["image"] == approx(2 * LN2)
    assert out["point"] == approx(2 * LN2)
    assert out["split"] == approx(LN2)
    assert scalar(out["fp"]) == 0.0
    assert LCFCNLoss()(logits, labels) == approx(5 * LN2)
    assert lcfcn_loss(logits, labels, global_split=False)["total"] == approx(4 * LN2)


def test_lcfcn_image_level_absent_classes():
    # 3 classes, S = 1/3 everywhere; one class-1 point, class 2 absent:
    # -log(1/3) (background) - log(1/3) (class 1) - log(1 - 1/3) (class 2), point -log(1/3)
    logits = torch.zeros(1, 3, 3, 3)
    labels = torch.full((1, 3, 3), IGNORE)
    labels[0, 1, 1] = 1
    out = lcfcn_loss(logits, labels)
    assert out["image"] == approx(2 * LN3 + math.log(3 / 2))
    assert out["total"] == approx(3 * LN3 + math.log(3 / 2))
    # binary image without infection point: -log(1/2) - log(1 - 1/2) = 2 ln 2
    out = lcfcn_loss(torch.zeros(1, 2, 3, 3), torch.full((1, 3, 3), IGNORE))
    assert out["total"] == approx(2 * LN2)


def test_lcfcn_batch_sums_images_and_checks_inputs():
    logits, labels = _lcfcn_scene()
    both = lcfcn_loss(torch.cat([logits, logits]), torch.cat([labels, labels]))
    one = lcfcn_loss(logits, labels)
    assert both["total"] == approx(2 * one["total"])
    with pytest.raises(ValueError, match="2-D images"):
        lcfcn_loss(torch.zeros(1, 2, 2, 2, 2), torch.zeros(1, 2, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"values \[7\]"):
        lcfcn_loss(torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2), 7))


def test_cb_lcfcn_combines_lcfcn_on_both_branches_with_consistency():
    torch.manual_seed(0)
    model = nn.Conv2d(1, 2, 3, padding=1)
    images = torch.rand(1, 1, 6, 6)
    labels = torch.full((1, 6, 6), IGNORE)
    labels[0, 1, 1] = labels[0, 4, 3] = 1
    loss = ConsistencyLoss("flip", lam=1.0, point_loss=LCFCNLoss())
    total, parts = loss(model, images, labels)
    flip = TRANSFORM_SETS["flip"][0]
    ref_x = lcfcn_loss(model(images), labels)["total"]
    ref_t = lcfcn_loss(model(flip(images)), flip(labels))["total"]
    assert parts["point"] == approx(ref_x) and parts["point_transformed"] == approx(ref_t)
    assert total == approx(ref_x + ref_t + parts["consistency"])
    total.backward()
    assert model.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- structure loss


def _corner_mask() -> torch.Tensor:
    mask = torch.zeros(1, 3, 3)
    mask[0, 0, 0] = 1
    return mask


def test_structure_weights_count_padding():
    # 3 x 3 box, zero padding counted: every window touching (0,0) averages to 1/9.
    # avg = [[1/9, 1/9, 0], [1/9, 1/9, 0], [0, 0, 0]]; w = 1 + 5|avg - m|
    w = structure_weights(_corner_mask()[:, None], kernel_size=3)[0, 0]
    expected = torch.tensor([[49 / 9, 14 / 9, 1], [14 / 9, 14 / 9, 1], [1, 1, 1]])
    assert torch.allclose(w, expected, atol=1e-6)
    # (count_include_pad=False would give avg(0,0) = 1/4 and w(0,0) = 1 + 5 * 3/4)
    # default 31 x 31 box over a 3 x 3 image: avg = 1/961 everywhere
    w31 = structure_weights(_corner_mask()[:, None])[0, 0]
    assert float(w31[0, 0]) == approx(1 + 5 * 960 / 961)
    assert float(w31[2, 2]) == approx(1 + 5 / 961)


def test_structure_loss_hand_value():
    # foreground logit ln3 at (0,0) (p = 3/4), 0 elsewhere (p = 1/2); kernel 3 weights above,
    # sum w = (49 + 3*14 + 5*9) / 9 = 136/9.
    z = torch.zeros(1, 1, 3, 3)
    z[0, 0, 0, 0] = LN3
    mask = _corner_mask()
    # wbce = (49/9 * ln(4/3) + 87/9 * ln2) / (136/9)
    wbce = (49 * LN4_3 + 87 * LN2) / 136
    # inter = 3/4 * 49/9; union = (3/4 + 1) * 49/9 + 1/2 * 87/9
    inter = 0.75 * 49 / 9
    union = 1.75 * 49 / 9 + 0.5 * 87 / 9
    wiou = 1 - (inter + 1) / (union - inter + 1)
    assert structure_loss(z, mask, kernel_size=3) == approx(wbce + wiou)
    # two-class logits: foreground logit z1 - z0 -> same value
    two = torch.cat([-z / 2, z / 2], dim=1)
    assert structure_loss(two, mask, kernel_size=3) == approx(wbce + wiou)
    assert StructureLoss(kernel_size=3)(two, mask.bool()) == approx(wbce + wiou)
    # per-image reduction and batch mean
    batch = structure_loss(torch.cat([z, torch.zeros_like(z)]), mask.repeat(2, 1, 1),
                           kernel_size=3, reduction="none")
    assert batch[0] == approx(wbce + wiou)
    # all-zero logits: wbce = ln2; inter = 49/18, union = 68/9 + 49/9 = 13 -> wiou = 136/203
    assert batch[1] == approx(LN2 + 136 / 203)


def test_structure_loss_rejects_bad_inputs():
    with pytest.raises(ValueError, match="two-class logits"):
        structure_loss(torch.zeros(1, 3, 3, 3), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="outside"):
        structure_loss(torch.zeros(1, 1, 3, 3), torch.full((1, 3, 3), 2))
    with pytest.raises(ValueError, match="kernel_size=4"):
        structure_loss(torch.zeros(1, 1, 3, 3), torch.zeros(1, 3, 3), kernel_size=4)
    with pytest.raises(ValueError, match="does not match"):
        structure_loss(torch.zeros(1, 1, 3, 3), torch.zeros(1, 3, 4))


# --------------------------------------------------------------------------- combo loss


def _combo_batch() -> tuple[torch.Tensor, torch.Tensor]:
    # sample 0: logits 0 (p = 1/2), target [0, 1]; sample 1: z1 = ln3 (p1 = 3/4), target [1, 1]
    logits = torch.zeros(2, 2, 1, 2)
    logits[1, 1] = LN3
    target = torch.tensor([[[0, 1]], [[1, 1]]])
    return logits, target


# P4 Eq. 1 ("all" classes): Dice = 2 sum p y / sum (p + y) = (sum of p_true) / D.
# sample 0: Dice = (1/2 + 1/2) / 2 = 1/2, CE = ln2            -> L0 = 1/2 + ln2
# sample 1: Dice = (3/4 + 3/4) / 2 = 3/4, CE = ln(4/3)        -> L1 = 1/4 + ln(4/3)
L0, L1 = 0.5 + LN2, 0.25 + LN4_3


def test_combo_loss_hand_values():
    logits, target = _combo_batch()
    per = combo_loss_per_sample(logits, target)
    assert per.tolist() == pytest.approx([L0, L1], abs=1e-6)
    assert combo_loss(logits, target) == approx(L0 + L1)  # Eq. 1 with w = 1
    assert combo_loss(logits, target, reduction="mean") == approx((L0 + L1) / 2)
    w = torch.tensor([0.3, 2.0])
    assert combo_loss(logits, target, w) == approx(0.3 * L0 + 2.0 * L1)
    assert combo_loss(logits, target, w, reduction="none").tolist() == pytest.approx(
        [0.3 * L0, 2.0 * L1], abs=1e-6
    )
    # foreground Dice: sample 0: 2*(1/2) / (1 + 1) = 1/2; sample 1: 2*(3/2) / (3/2 + 2) = 6/7
    fg = combo_loss_per_sample(logits, target, dice_classes="foreground")
    assert fg.tolist() == pytest.approx([0.5 + LN2, 1 / 7 + LN4_3], abs=1e-6)
    # term weights
    only_dice = combo_loss_per_sample(logits, target, ce_weight=0.0)
    assert only_dice.tolist() == pytest.approx([0.5, 0.25], abs=1e-6)
    assert ComboLoss()(logits, target) == approx(L0 + L1)


def test_combo_loss_gradient_wrt_sample_weights_is_the_sample_loss():
    logits, target = _combo_batch()
    w = torch.zeros(2, requires_grad=True)  # P4 differentiates at w = 0
    (grad,) = torch.autograd.grad(combo_loss(logits, target, w), w)
    assert grad.tolist() == pytest.approx([L0, L1], abs=1e-6)


def test_combo_loss_3d_volumes():
    # the same two voxels laid out as (N, B, D, H, W) = (2, 2, 2, 1, 1)
    logits, target = _combo_batch()
    logits3 = logits.reshape(2, 2, 2, 1, 1)
    target3 = target.reshape(2, 2, 1, 1)
    assert combo_loss_per_sample(logits3, target3).tolist() == pytest.approx(
        [L0, L1], abs=1e-6
    )
    logits3.requires_grad_()
    combo_loss(logits3, target3).backward()
    assert logits3.grad.abs().sum() > 0


def test_combo_loss_rejects_bad_inputs():
    logits, target = _combo_batch()
    with pytest.raises(ValueError, match="weights: shape"):
        combo_loss(logits, target, torch.ones(3))
    with pytest.raises(ValueError, match=r"target: values \[2\]"):
        combo_loss(logits, torch.full_like(target, 2))
    with pytest.raises(ValueError, match="dice_classes='fg'"):
        combo_loss(logits, target, dice_classes="fg")
