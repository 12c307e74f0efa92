"""MC dropout (P1 Eq. 2, P3 Sec. II): modes, head-only equivalence, batch norm, statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from covidlib.models import (
    FCN8VGG16,
    UNet2D,
    enable_mc_dropout,
    mc_predict,
    resunet3d_p4,
)

torch.set_num_threads(min(2, torch.get_num_threads()))


def _randomise_scores(model: FCN8VGG16) -> FCN8VGG16:
    """Score layers start at zero (Long et al.), which hides the head; give them weights."""
    gen = torch.Generator().manual_seed(123)
    for conv in (model.score_fr, model.score_pool3, model.score_pool4):
        conv.weight.data = torch.randn(conv.weight.shape, generator=gen) * 0.5
        conv.bias.data = torch.randn(conv.bias.shape, generator=gen) * 0.1
    return model


@pytest.fixture(scope="module")
def fcn8_same() -> FCN8VGG16:
    torch.manual_seed(0)
    return _randomise_scores(FCN8VGG16(2, fc_channels=16, layout="same"))


def _unet2d() -> UNet2D:
    """A small U-Net whose batch norm has non-trivial running statistics."""
    torch.manual_seed(0)
    model = UNet2D(1, 2, base_width=4, depth=2, dropout=0.5)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, 16, 16) * 3 + 1)
    return model


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


# ----------------------------------------------------------------------------- modes
def test_enable_mc_dropout_switches_only_dropout_and_restores():
    model = _unet2d()
    model.train()
    model.encoder[0][1].eval()  # a mixed state must come back exactly
    before = {name: m.training for name, m in model.named_modules()}
    with enable_mc_dropout(model):
        for name, m in model.named_modules():
            assert m.training == isinstance(m, nn.Dropout), name
    assert {name: m.training for name, m in model.named_modules()} == before
    with pytest.raises(KeyError), enable_mc_dropout(model):
        raise KeyError("boom")
    assert {name: m.training for name, m in model.named_modules()} == before


def test_enable_mc_dropout_refuses_a_model_without_dropout():
    with pytest.raises(ValueError, match="UNet2D has no dropout layer with p > 0"):
        with enable_mc_dropout(UNet2D(1, 2, base_width=2, depth=1)):
            pass


# ----------------------------------------------------------------------------- head-only sampling
def test_fcn8_head_only_equals_full_passes_classic_layout():
    """P1's FCN8 (authors' 100-pixel-padding layout), 64 x 64 input: same seeds, same samples."""
    torch.manual_seed(0)
    model = _randomise_scores(FCN8VGG16(2, fc_channels=16, layout="classic"))
    x = torch.randn(1, 3, 64, 64)
    head = mc_predict(model, x, 2, head_only=True, seed=7)
    full = mc_predict(model, x, 2, head_only=False, seed=7)
    assert head.shape == (2, 1, 2, 64, 64)
    assert torch.allclose(head, full, atol=1e-6)
    assert not torch.allclose(head[0], head[1])  # dropout is active


def test_fcn8_head_only_runs_backbone_once_with_identical_masks(fcn8_same, monkeypatch):
    model, x, n = fcn8_same, torch.randn(1, 3, 64, 64), 3
    # drop6's (input is nonzero, output is zero) per call: where the input is nonzero a zero
    # output is a dropped unit, so the masks of the two paths compare there
    masks: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"head": [], "full": []}
    path = ["head"]
    hook = model.drop6.register_forward_hook(
        lambda _m, inp, out: masks[path[0]].append((inp[0] != 0, out == 0)))
    backbone = _Counter(model.backbone_features)
    head = _Counter(model.head)
    batched = _Counter(model.head_samples)
    monkeypatch.setattr(model, "backbone_features", backbone)
    monkeypatch.setattr(model, "head", head)
    monkeypatch.setattr(model, "head_samples", batched)
    try:
        sampled = mc_predict(model, x, n, head_only=True, seed=11)
        assert (backbone.calls, batched.calls, head.calls) == (1, 1, 0)
        path[0] = "full"
        full = mc_predict(model, x, n, head_only=False, seed=11)
        assert (backbone.calls, head.calls) == (1 + n, n)
    finally:
        hook.remove()
    assert torch.allclose(sampled, full, atol=1e-6)
    # the batched path draws its masks in place (draw_masks), not through drop6's forward
    assert masks["head"] == [] and len(masks["full"]) == n
    with torch.no_grad(), enable_mc_dropout(model):
        m6 = torch.empty((n, *model.backbone_features(x).fc6.shape))
        model.draw_masks(m6, torch.empty_like(m6), 11, 0)
    masks["head"] = [(torch.ones_like(m, dtype=torch.bool), m == 0) for m in m6]
    for (_h_in, h_drop), (f_in, f_drop) in zip(masks["head"], masks["full"], strict=True):
        assert torch.equal(h_drop[f_in], f_drop[f_in]) and int(f_in.sum()) > 0
    assert not torch.equal(masks["head"][0][1], masks["head"][1][1])
    # reference: sample i is a full forward pass in MC mode after torch.manual_seed(11 + i)
    with torch.no_grad(), enable_mc_dropout(model):
        for i in range(n):
            torch.manual_seed(11 + i)
            assert torch.allclose(torch.softmax(model(x), 1), sampled[i], atol=1e-6)


def test_fcn8_batched_head_equals_one_head_call_per_sample(fcn8_same):
    """head_samples in chunks of 2 images (max_batch=4, B=2) == I seeded calls of head."""
    model, x = fcn8_same, torch.randn(2, 3, 64, 64)
    with torch.no_grad(), enable_mc_dropout(model):
        feats = model.backbone_features(x)
        batched = model.head_samples(feats, 5, seed=3, max_batch=4)
        one_by_one = []
        for i in range(5):
            torch.manual_seed(3 + i)
            one_by_one.append(model.head(feats))
    assert batched.shape == (5, 2, 2, 64, 64)
    assert torch.allclose(batched, torch.stack(one_by_one), atol=1e-5)
    with pytest.raises(ValueError, match="n_samples=0"):
        model.head_samples(feats, 0)


def test_unet2d_head_only_equivalence_and_batch_norm_untouched():
    model = _unet2d()
    model.train()
    before = _buffers(model)
    x = torch.randn(2, 1, 20, 18)
    head = mc_predict(model, x, 3, head_only=True, seed=3)
    full = mc_predict(model, x, 3, head_only=False, seed=3)
    assert head.shape == (3, 2, 2, 20, 18)
    assert torch.allclose(head, full, atol=1e-6)
    after = _buffers(model)
    assert before.keys() == after.keys() and any("running_mean" in k for k in after)
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. num_batches_tracked
    assert model.training and model.encoder[0][1].training  # modes restored
    assert torch.allclose(head.sum(dim=2), torch.ones(3, 2, 20, 18), atol=1e-5)


def test_monai_residual_unet_falls_back_to_full_passes():
    """No backbone/head split: I full passes; MONAI's dropout layers are sampled, BN frozen."""
    torch.manual_seed(0)
    model = resunet3d_p4(dropout=0.2)
    before = _buffers(model)
    x = torch.randn(1, 1, 16, 16, 16)
    samples = mc_predict(model, x, 2, head_only=True, seed=0)
    assert samples.shape == (2, 1, 2, 16, 16, 16)
    assert not torch.allclose(samples[0], samples[1])
    assert all(torch.equal(v, _buffers(model)[k]) for k, v in before.items())


class _LeakyBackbone(nn.Module):
    """Claims a backbone/head split but puts dropout in the backbone."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.conv = nn.Conv2d(1, 2, 1)

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(x)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.conv(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone_features(x))


def test_head_only_refuses_dropout_in_the_backbone():
    model, x = _LeakyBackbone(), torch.randn(1, 1, 4, 4)
    with pytest.raises(RuntimeError, match=r"runs dropout layers \['drop'\]"):
        mc_predict(model, x, 2)
    assert mc_predict(model, x, 2, head_only=False, seed=0).shape == (2, 1, 2, 4, 4)


# ----------------------------------------------------------------------------- statistics
def test_mc_mean_and_variance_match_inverted_dropout_by_hand():
    """y = W · dropout(h) + b: E[y] = W h + b (eval output), Var[y_c] = p/(1-p) Σ_j W_cj² h_j²."""
    torch.manual_seed(0)
    p = 0.5
    model = nn.Sequential(nn.Dropout(p), nn.Conv2d(8, 2, 1))
    x = torch.randn(1, 8, 2, 2)
    n_batch, n_samples = 200, 20  # every batch element draws its own masks
    samples = mc_predict(model, x.expand(n_batch, -1, -1, -1), n_samples, seed=0, logits=True)
    samples = samples.flatten(0, 1)  # (I * B, C, H, W) independent draws
    n = n_batch * n_samples
    with torch.no_grad():
        expected_mean = model.eval()(x)[0]
    w = model[1].weight[:, :, 0, 0].detach()  # (C, 8)
    expected_var = p / (1 - p) * torch.einsum("cj,jhw->chw", w**2, x[0] ** 2)
    z = (samples.mean(0) - expected_mean) / (expected_var / n).sqrt()
    assert float(z.abs().max()) < 4.0
    ratio = samples.var(0) / expected_var
    assert float((ratio - 1).abs().max()) < 0.1


def test_fcn8_mc_mean_is_eval_output_plus_noise(fcn8_same):
    """With only drop7 active the head is linear in the dropped units, so the MC mean of the
    logits equals the eval-mode logits up to sampling noise; with both, samples differ."""
    model, x, n = fcn8_same, torch.randn(1, 3, 64, 64), 300
    with torch.no_grad():
        deterministic = model.eval()(x)
    model.drop6.p = 0.0
    try:
        logits = mc_predict(model, x, n, seed=5, logits=True)
    finally:
        model.drop6.p = 0.5
    se = logits.std(0) / n**0.5
    noisy = se > 1e-6
    assert float(noisy.float().mean()) > 0.9
    z = (logits.mean(0) - deterministic)[noisy] / se[noisy]
    assert float(z.abs().max()) < 6.0
    both = mc_predict(model, x, 8, seed=5)
    assert float(both.std(0).mean()) > 1e-3
    assert all(not torch.equal(both[0], both[i]) for i in range(1, 8))


# ----------------------------------------------------------------------------- API
def test_seed_is_reproducible_and_leaves_global_rng_alone(fcn8_same):
    x = torch.randn(1, 3, 32, 32)
    state = torch.get_rng_state()
    a = mc_predict(fcn8_same, x, 3, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, mc_predict(fcn8_same, x, 3, seed=1))
    assert not torch.equal(a, mc_predict(fcn8_same, x, 3, seed=2))
    logits = mc_predict(fcn8_same, x, 3, seed=1, logits=True)
    assert torch.allclose(torch.softmax(logits, 2), a, atol=1e-6)
    mc_predict(fcn8_same, x, 1)  # unseeded: consumes the global RNG
    assert not torch.equal(torch.get_rng_state(), state)


def test_mc_predict_rejects_bad_arguments(fcn8_same):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="n_samples=0"):
        mc_predict(fcn8_same, x, 0)
    with pytest.raises(TypeError, match="floating"):
        mc_predict(fcn8_same, x.to(torch.uint8), 2)
    with pytest.raises(ValueError, match="seed='a'"):
        mc_predict(fcn8_same, x, 2, seed="a")
