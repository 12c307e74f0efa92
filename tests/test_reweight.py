"""Known-answer tests of covidlib.reweight (P4 Alg. 1, Eqs. 3-9) on tiny models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from covidlib import reweight as rw
from covidlib.metrics import example_dice


def _ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Voxel-mean cross-entropy per sample: the CE term of P4 Eq. 1 alone."""
    return F.cross_entropy(logits, target, reduction="none").flatten(1).mean(1)


def _zero_conv(dims: int = 2) -> nn.Module:
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(1, 2, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class Tiny(nn.Module):
    """conv -> batch norm -> relu -> 1x1 conv (the output layer)."""

    def __init__(self, dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        self.body = nn.Sequential(conv(1, 4, 3, padding=1), norm(4), nn.ReLU())
        self.out = conv(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def _flipped_problem() -> tuple[torch.Tensor, ...]:
    """4 pseudo-labelled images (label = x > 0) with the label of sample 2 flipped, and 3
    expert images labelled correctly. Every |x| = 1, half the pixels positive."""
    g = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:
        signs = torch.ones(n, 1, 4, 4)
        for i in range(n):
            idx = torch.randperm(16, generator=g)[:8]
            signs[i, 0].view(-1)[idx] = -1.0
        return signs

    x_p, x_v = images(4), images(3)
    y_p = (x_p[:, 0] > 0).long()
    y_p[2] = 1 - y_p[2]  # the teacher got sample 2 wrong
    y_v = (x_v[:, 0] > 0).long()
    return x_p, y_p, x_v, y_v


# ------------------------------------------------------------------------------ weight algebra


def test_normalize_weights_is_g_of_alg1():
    assert torch.equal(rw.normalize_weights(torch.tensor([0.0, 2.0, 6.0])),
                       torch.tensor([0.0, 0.25, 0.75]))
    # delta(sum) guard: all-zero stays zero instead of 0/0
    assert torch.equal(rw.normalize_weights(torch.zeros(3)), torch.zeros(3))
    with pytest.raises(ValueError, match=">= 0"):
        rw.normalize_weights(torch.tensor([1.0, -0.5]))


def test_lambda_combination_is_exact():
    w_p = torch.tensor([0.5, 0.5, 0.0, 0.0])
    w_u = torch.tensor([0.1, 0.2, 0.3, 0.4])
    got = rw.combine_weights(w_p, w_u, 0.5)
    assert torch.allclose(got, torch.tensor([0.30, 0.35, 0.15, 0.20]), atol=0, rtol=1e-7)
    assert torch.equal(rw.combine_weights(w_p, w_u, 1.0), w_p)
    assert torch.equal(rw.combine_weights(w_p, w_u, 0.0), w_u)
    assert torch.allclose(rw.combine_weights(w_p, w_u, 0.25),
                          torch.tensor([0.2, 0.275, 0.225, 0.3]), atol=1e-7)
    with pytest.raises(ValueError, match="lambda"):
        rw.combine_weights(w_p, w_u, 1.5)


def test_rectification_keeps_weights_at_least_one_over_cp():
    w = torch.tensor([0.30, 0.35, 0.15, 0.20])  # C_p = 4: threshold 0.25
    assert torch.equal(rw.rectify_weights(w), torch.tensor([0.30, 0.35, 0.0, 0.0]))
    # exactly 1/C_p is kept (">="), also after rounding in the normalisation
    uniform = rw.normalize_weights(torch.ones(3))
    assert torch.equal(rw.rectify_weights(uniform), uniform)
    g = torch.Generator().manual_seed(1)
    for c_p in (2, 3, 4, 7):
        w = rw.normalize_weights(torch.rand(c_p, generator=g))
        out = rw.rectify_weights(w)
        kept = out > 0
        assert bool(kept.any())  # the largest weight is always >= the mean 1/C_p
        assert bool((out[kept] >= 1.0 / c_p * (1 - 1e-6)).all())
        assert torch.equal(out[kept], w[kept])  # kept weights unchanged, not renormalised
        assert bool((w[~kept] < 1.0 / c_p).all())


def test_mode_settings():
    assert rw.mode_settings("rgs") == (1.0, False)
    assert rw.mode_settings("rgm") == (0.0, False)
    assert rw.mode_settings("rgsm", 0.5) == (0.5, False)
    assert rw.mode_settings("rgsm_al", 0.3) == (0.3, True)
    assert rw.mode_settings("rgs_al") == (1.0, True)
    assert rw.mode_settings("semi") == (None, False)
    with pytest.raises(ValueError, match="mode 'fully'"):
        rw.mode_settings("fully")


# ------------------------------------------------------------------------------ meta step


def test_sgd_step_is_plain_sgd():
    params = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([[0.5]])}
    grads = {"a": torch.tensor([0.25, 1.0]), "b": torch.tensor([[-4.0]])}
    out = rw.sgd_step(params, grads, 0.5)
    assert torch.equal(out["a"], torch.tensor([0.875, -2.5]))
    assert torch.equal(out["b"], torch.tensor([[2.5]]))
    assert rw.sgd_step(params, [None, grads["b"]], 0.5)["a"] is params["a"]
    with pytest.raises(ValueError, match="meta step"):
        rw.sgd_step(params, grads, 0.0)


def test_meta_parameters_equal_theta_minus_alpha_grad():
    torch.manual_seed(0)
    model = Tiny()
    x_p, y_p, _, _ = _flipped_problem()
    w = torch.tensor([0.5, 1.0, 2.0, 0.0])
    alpha = 0.3
    params = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    theta_hat, _ = rw.meta_parameters(model, params, x_p, y_p, w, alpha, rw.p4_loss)
    # reference: an independent copy, ordinary backward into .grad, torch.optim.SGD
    ref = copy.deepcopy(model)
    loss = (w * rw.p4_loss(ref(x_p), y_p)).sum()
    loss.backward()
    manual = {n: p.detach() - alpha * p.grad for n, p in ref.named_parameters()}
    torch.optim.SGD(ref.parameters(), lr=alpha).step()
    for n, p in ref.named_parameters():
        assert torch.allclose(theta_hat[n], manual[n], atol=1e-7, rtol=0), n
        assert torch.allclose(theta_hat[n], p.detach(), atol=1e-7, rtol=0), n
        assert not torch.equal(theta_hat[n], params[n]), n  # it did move


# ------------------------------------------------------------------------------ RGS (Eq. 5)


@pytest.mark.parametrize("loss_fn", [rw.p4_loss, _ce], ids=["combo", "ce"])
def test_rgs_zeroes_the_wrong_pseudo_label(loss_fn):
    model = _zero_conv()
    x_p, y_p, x_v, y_v = _flipped_problem()
    w_p, grad_w = rw.rgs_weights(model, x_p, y_p, x_v, y_v, alpha=0.1, loss_fn=loss_fn)
    assert grad_w[2] > 0  # a step on the wrong sample would raise the expert loss
    assert w_p[2] == 0
    assert bool((w_p[[0, 1, 3]] > 0).all())
    assert math.isclose(float(w_p.sum()), 1.0, rel_tol=1e-6)


def test_rgs_gradient_is_alpha_times_gradient_dot_product():
    """At w = 0, -dL_v/dw_i = alpha <grad L_v, grad L_i> (chain rule through Eq. 3)."""
    torch.manual_seed(3)
    model = Tiny()
    model.eval()  # batch statistics of x_p and x_v then do not mix into the reference
    x_p, y_p, x_v, y_v = _flipped_problem()
    alpha = 0.05
    _, grad_w = rw.rgs_weights(model, x_p, y_p, x_v, y_v, alpha=alpha)
    params = list(model.parameters())
    g_v = torch.autograd.grad(rw.p4_loss(model(x_v), y_v).mean(), params)
    for i in range(4):
        g_i = torch.autograd.grad(rw.p4_loss(model(x_p[i:i + 1]), y_p[i:i + 1])[0], params)
        dot = sum(float((a * b).sum()) for a, b in zip(g_v, g_i, strict=True))
        assert math.isclose(-float(grad_w[i]), alpha * dot, rel_tol=1e-4, abs_tol=1e-9)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_rgs_jvp_equals_the_step_by_step_meta_gradient(mode):
    torch.manual_seed(10)
    model = Tiny()
    model.train(mode == "train")  # train: batch statistics, coupled within each batch
    x_p, y_p, x_v, y_v = _flipped_problem()
    w_meta, g_meta = rw.rgs_weights(model, x_p, y_p, x_v, y_v, alpha=0.1, method="meta")
    w_jvp, g_jvp = rw.rgs_weights(model, x_p, y_p, x_v, y_v, alpha=0.1, method="jvp")
    assert torch.allclose(g_jvp, g_meta, rtol=1e-4, atol=1e-8)
    assert torch.allclose(w_jvp, w_meta, rtol=1e-4, atol=1e-7)
    res = rw.compute_weights(model, x_p, y_p, x_v, y_v, lam=0.5, rgs_method="jvp")
    ref = rw.compute_weights(model, x_p, y_p, x_v, y_v, lam=0.5, rgs_method="meta")
    assert torch.allclose(res.w_com, ref.w_com, rtol=1e-4, atol=1e-7)


def test_rgs_weights_do_not_depend_on_the_meta_step_size():
    torch.manual_seed(4)
    model = Tiny()
    x_p, y_p, x_v, y_v = _flipped_problem()
    a, _ = rw.rgs_weights(model, x_p, y_p, x_v, y_v, alpha=1e-3)
    b, _ = rw.rgs_weights(model, x_p, y_p, x_v, y_v, alpha=10.0)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_weights_leave_the_model_untouched():
    torch.manual_seed(5)
    model = Tiny()
    model.train()
    x_p, y_p, x_v, y_v = _flipped_problem()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = copy.deepcopy(model.state_dict())
    res = rw.compute_weights(model, x_p, y_p, x_v, y_v, lam=0.5, rectify=True)
    for k, v in model.state_dict().items():  # parameters and BN running statistics
        assert torch.equal(v, before[k]), k
    for p in model.parameters():
        assert torch.equal(p.grad, torch.full_like(p, 7.0))
    assert res.w_p is not None and res.w_u is not None


# ------------------------------------------------------------------------------ RGM (Eqs. 6-7)


def test_output_parameters():
    assert list(rw.output_parameters(Tiny())) == ["out.weight", "out.bias"]
    from covidlib.models import resunet3d_p4

    out = rw.output_parameters(resunet3d_p4())
    assert list(out) == ["model.2.1.conv.unit0.conv.weight", "model.2.1.conv.unit0.conv.bias"]
    assert sum(p.numel() for p in out.values()) == 110  # P4 Table 1, last conv row


def test_rgm_weights_hand_computed_on_one_layer():
    """1x1 conv with zero weights: p = 1/2, so dL/dW_1 = mean_d (1/2 - y) x,
    dL/db_1 = mean_d (1/2 - y) and class 0 gets the negated gradient."""
    model = _zero_conv()
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]])
    y = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    x, y = x.view(3, 1, 2, 2), y.view(3, 2, 2)
    # sample 0: sum (1/2 - y) x / 4 = 0.5, bias 0     -> |g|^2 = 2 (0.25 + 0)
    # sample 1: 5 / 4 = 1.25, bias 0.5                 -> |g|^2 = 2 (1.5625 + 0.25)
    # sample 2: -4 / 4 = -1, bias -0.5                 -> |g|^2 = 2 (1 + 0.25)
    expected = torch.tensor([math.sqrt(0.5), math.sqrt(3.625), math.sqrt(2.5)])
    w_u, g = rw.rgm_weights(model, x, y, loss_fn=_ce)
    assert torch.allclose(g, expected, rtol=1e-6)
    assert torch.allclose(w_u, expected / expected.sum(), rtol=1e-6)
    # the authors' variant: mean |g| over the 4 output-layer values
    _, g1 = rw.rgm_weights(model, x, y, loss_fn=_ce, norm="mean_abs")
    assert torch.allclose(g1, torch.tensor([0.25, 0.875, 0.75]), rtol=1e-6)


# ------------------------------------------------------------------------------ no accumulation


def _independent_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list:
    out = []
    for i in range(x.shape[0]):
        m = copy.deepcopy(model)
        _ce(m(x[i:i + 1]), y[i:i + 1])[0].backward()
        out.append([p.grad.clone() for p in m.parameters()])
    return out


def _buggy_per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list:
    """The public code's loop: backward per sample, read .grad, never zero it."""
    model.zero_grad()
    losses = _ce(model(x), y)
    out = []
    for i in range(x.shape[0]):
        losses[i].backward(retain_graph=True)
        out.append([p.grad.clone() for p in model.parameters()])
    return out


def _same(a: list, b: list) -> bool:
    return all(torch.allclose(u, v, atol=1e-6, rtol=1e-5)
               for ga, gb in zip(a, b, strict=True) for u, v in zip(ga, gb, strict=True))


def test_per_sample_gradients_do_not_accumulate():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 1))
    x = torch.randn(3, 1, 5, 5)
    y = (torch.rand(3, 5, 5) > 0.6).long()
    reference = _independent_grads(model, x, y)
    losses = _ce(model(x), y)
    ours = [list(g) for g in rw.per_sample_grads(losses, list(model.parameters()))]
    assert _same(ours, reference)
    # a loop that forgets zero_grad fails the same check: sample i gets samples 0..i summed
    buggy = _buggy_per_sample_grads(copy.deepcopy(model), x, y)
    assert not _same(buggy, reference)
    assert _same(buggy[:1], reference[:1])
    summed = [[reference[0][k] + reference[1][k] for k in range(len(reference[0]))]]
    assert _same(buggy[1:2], summed)


def test_gradient_norms_match_independent_samples():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 1))
    x = torch.randn(4, 1, 5, 5)
    y = (torch.rand(4, 5, 5) > 0.5).long()
    _, g = rw.rgm_weights(model, x, y, loss_fn=_ce)
    ref = _independent_grads(model, x, y)
    expected = torch.stack([torch.cat([r[-2].flatten(), r[-1].flatten()]).norm() for r in ref])
    assert torch.allclose(g, expected, rtol=1e-5)


# ------------------------------------------------------------------------------ Alg. 1 end to end


def test_compute_weights_modes_on_the_flipped_problem():
    model = _zero_conv()
    x_p, y_p, x_v, y_v = _flipped_problem()
    semi = rw.compute_weights(model, x_p, y_p, lam=None)
    assert torch.equal(semi.w_star, torch.full((4,), 0.25))
    rgs = rw.compute_weights(model, x_p, y_p, x_v, y_v, lam=1.0)
    assert rgs.w_u is None and rgs.w_p is not None
    assert torch.equal(rgs.w_star, rgs.w_p)
    al = rw.compute_weights(model, x_p, y_p, x_v, y_v, lam=1.0, rectify=True)
    assert al.w_star[2] == 0 and bool((al.w_star >= 0).all())
    both = rw.compute_weights(model, x_p, y_p, x_v, y_v, lam=0.5, rectify=True)
    expected = 0.5 * both.w_p + 0.5 * both.w_u
    assert torch.allclose(both.w_com, expected, atol=1e-7)
    assert torch.equal(both.w_star, rw.rectify_weights(expected))
    rgm = rw.compute_weights(model, x_p, y_p, lam=0.0)  # RGM needs no expert batch
    assert rgm.w_p is None and torch.allclose(rgm.w_star.sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="expert batch"):
        rw.compute_weights(model, x_p, y_p, lam=0.5)


def test_compute_weights_in_3d():
    torch.manual_seed(8)
    model = Tiny(dims=3)
    x_p = torch.randn(3, 1, 4, 6, 6)
    y_p = (x_p[:, 0] > 0.5).long()
    x_v = torch.randn(2, 1, 4, 6, 6)
    y_v = (x_v[:, 0] > 0.5).long()
    res = rw.compute_weights(model, x_p, y_p, x_v, y_v, lam=0.5, rectify=True)
    assert res.w_star.shape == (3,) and res.w_p is not None and res.w_u is not None
    assert math.isclose(float(res.w_u.sum()), 1.0, rel_tol=1e-5)
    assert torch.allclose(res.w_com, 0.5 * res.w_p + 0.5 * res.w_u)
    assert torch.equal(res.w_star, rw.rectify_weights(res.w_com))
    jv = rw.compute_weights(model, x_p, y_p, x_v, y_v, lam=0.5, rectify=True, rgs_method="jvp")
    assert torch.allclose(jv.w_com, res.w_com, rtol=1e-4, atol=1e-7)


def test_weighted_update_is_eq9():
    torch.manual_seed(9)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 1))
    x_p, y_p, x_v, y_v = _flipped_problem()
    w_star = torch.tensor([0.4, 0.0, 0.0, 0.6])
    ref = copy.deepcopy(model)
    alpha = 0.2
    for p in model.parameters():  # stale gradients must not leak into the update
        p.grad = torch.ones_like(p)
    parts = rw.weighted_update(model, torch.optim.SGD(model.parameters(), lr=alpha),
                               x_p, y_p, w_star, loss_fn=_ce)
    loss = (w_star * _ce(ref(x_p), y_p)).sum()
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    for p, q, g in zip(model.parameters(), ref.parameters(), grads, strict=True):
        assert torch.allclose(p.detach(), q.detach() - alpha * g, atol=1e-7)
    assert parts["expert"] == 0.0
    assert math.isclose(parts["pseudo"], float(loss.detach()), rel_tol=1e-6)
    # with the expert term: mean expert loss + weighted pseudo loss, one forward pass
    m2 = copy.deepcopy(ref)
    parts = rw.weighted_update(m2, torch.optim.SGD(m2.parameters(), lr=alpha), x_p, y_p,
                               w_star, x_e=x_v, y_e=y_v, loss_fn=_ce)
    expected = float((_ce(ref(x_v), y_v).mean() + loss).detach())
    assert math.isclose(parts["loss"], expected, rel_tol=1e-6)


# ------------------------------------------------------------------------------ mechanism check


def test_example_dice_hand_computed():
    import numpy as np

    truth = np.zeros((3, 2, 2), np.uint8)
    truth[0, 0, :] = 1  # 2 voxels
    truth[1, 0, 0] = 1
    pseudo = np.zeros_like(truth)
    pseudo[0, 0, 0] = 1  # overlap 1: (2 + 1) / (1 + 2 + 1)
    pseudo[1, 1, 1] = 1  # no overlap: 1 / (1 + 1 + 1)
    q = example_dice(pseudo, truth)
    assert q.tolist() == pytest.approx([0.75, 1 / 3, 1.0])  # both empty: 1
    with pytest.raises(ValueError, match="equal"):
        example_dice(pseudo, truth[:2])


def test_spearman_hand_computed():
    # ranks (1, 2, 3, 4) vs (2, 1, 4, 3): d^2 = 4 -> 1 - 6 * 4 / (4 * 15) = 0.6
    assert rw.spearman([0.1, 0.2, 0.3, 0.4], [5, 1, 9, 7]) == pytest.approx(0.6)
    # ties take the average rank: x ranks (1.5, 1.5, 3), y (1, 2, 3) -> Pearson of ranks
    assert rw.spearman([0, 0, 1], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(rw.spearman([1, 1, 1], [1, 2, 3]))


def test_weight_quality_kept_and_dropped():
    w_star = [0.0, 0.6, 0.4, 0.0, 0.0, 1.0]
    q = [0.1, 0.8, 0.5, 0.2, 0.3, 0.9]
    wq = rw.weight_quality(w_star, q)
    assert (wq.n, wq.n_kept, wq.n_dropped) == (6, 3, 3)
    assert wq.kept == pytest.approx((0.8 + 0.5 + 0.9) / 3)
    assert wq.dropped == pytest.approx((0.1 + 0.2 + 0.3) / 3)
    assert wq.rho > 0 and wq.present
    # unrectified weights with a separate rectified vector
    wq2 = rw.weight_quality([0.3, 0.2, 0.5], [0.2, 0.9, 0.5], w_star=[0.0, 0.0, 0.5])
    # ranks (2, 1, 3) vs (1, 3, 2): d^2 = 6 -> 1 - 6 * 6 / (3 * 8) = -0.5
    assert wq2.rho == pytest.approx(-0.5) and wq2.n_kept == 1 and wq2.kept == 0.5
    assert wq2.dropped == pytest.approx(0.55) and not wq2.present
    with pytest.raises(ValueError, match="one length"):
        rw.weight_quality([1.0], [1.0, 2.0])


def test_weights_on_batches_find_the_flipped_label():
    """At fixed parameters, RGS gives the wrongly pseudo-labelled sample weight 0 and the
    rectified RGS weights drop it: its true quality (Dice 0) is the dropped mean."""
    import numpy as np

    torch.manual_seed(0)
    model = _zero_conv()
    x_p, y_p, x_v, y_v = _flipped_problem()
    w = rw.weights_on_batches(model, [(x_p, y_p, x_v, y_v)], lam=0.5, alpha=0.1,
                              rgs_method="meta")
    assert set(w) == {"w_p", "w_u", "w_com", "rgs_al", "rgsm_al"}
    assert w["w_p"].shape == (4,) and w["w_p"][2] == 0 and w["rgs_al"][2] == 0
    truth = (x_p[:, 0] > 0).numpy()
    q = example_dice(y_p.numpy(), truth, smooth=0.0)
    assert q.tolist() == pytest.approx([1, 1, 0, 1])
    wq = rw.weight_quality(w["w_p"], q, w["rgs_al"])
    assert wq.dropped == 0.0 and wq.kept == 1.0 and wq.present
    assert np.allclose(w["w_com"], 0.5 * w["w_p"] + 0.5 * w["w_u"])
    with pytest.raises(ValueError, match="strictly between"):
        rw.weights_on_batches(model, [(x_p, y_p, x_v, y_v)], lam=1.0)
