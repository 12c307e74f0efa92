"""Monte-Carlo dropout sampling (Gal and Ghahramani, 2016), as used by P1 and P3.

P1 Eq. 2 draws I predictions S_ij = f(x_i, θ_j), θ_j ~ p(θ | L), by keeping dropout active at
test time; P3 (Sec. II, Eq. 1) does the same with T samples for its variance score. Batch norm
must stay in eval mode while sampling (running statistics, no update), so only dropout layers are
switched to training mode.

When a model splits into a deterministic ``backbone_features(x)`` and a ``head(features)`` holding
all dropout layers (:class:`~covidlib.models.fcn8.FCN8VGG16`, :class:`~covidlib.models.unet.UNet`),
sampling runs the backbone once and the head I times. The backbone consumes no random numbers, so
with the same random state before each head call the samples equal those of I full forward passes
exactly; without a seed they are draws from the same distribution.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

DROPOUT_TYPES: tuple[type[nn.Module], ...] = (_DropoutNd,)
"""nn.Dropout, Dropout1d/2d/3d, AlphaDropout, FeatureAlphaDropout (MONAI uses these too)."""


def dropout_modules(model: nn.Module, *, active_only: bool = True) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the dropout layers of ``model`` (with ``p > 0`` if ``active_only``)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, DROPOUT_TYPES) and (not active_only or m.p > 0)
    ]


def has_head_split(model: nn.Module) -> bool:
    """True when ``model`` offers ``backbone_features(x)`` and ``head(features)``."""
    return callable(getattr(model, "backbone_features", None)) and callable(
        getattr(model, "head", None)
    )


@contextmanager
def enable_mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode except its dropout layers (training mode); restore every
    module's previous mode on exit. Raises ``ValueError`` if there is no dropout with p > 0."""
    if not dropout_modules(model):
        raise ValueError(
            f"enable_mc_dropout: {type(model).__name__} has no dropout layer with p > 0, so MC "
            "dropout samples would all be identical (build the model with dropout > 0)"
        )
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for _, m in dropout_modules(model, active_only=False):
            m.train()
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _check_backbone_deterministic(model: nn.Module, x: torch.Tensor) -> Any:
    """Run ``model.backbone_features(x)``; raise if an active dropout layer fires inside it."""
    fired: list[str] = []
    handles = [
        m.register_forward_hook(lambda *_args, _n=name: fired.append(_n))
        for name, m in dropout_modules(model)
    ]
    try:
        feats = model.backbone_features(x)
    finally:
        for h in handles:
            h.remove()
    if fired:
        raise RuntimeError(
            f"mc_predict(head_only=True): {type(model).__name__}.backbone_features runs dropout "
            f"layers {sorted(set(fired))}; sampling only the head would freeze their masks. "
            "Use head_only=False."
        )
    return feats


def mc_predict(
    model: nn.Module,
    x: torch.Tensor,
    n_samples: int,
    *,
    head_only: bool = True,
    seed: int | None = None,
    logits: bool = False,
) -> torch.Tensor:
    """Draw ``n_samples`` MC-dropout predictions (P1 Eq. 2, P3 Sec. II) for a batch ``x``.

    Returns ``(I, B, C, *spatial)`` softmax probabilities over the class axis (raw logits if
    ``logits=True``). With ``head_only`` and a model that has ``backbone_features``/``head``,
    the backbone runs once and the head I times (in batched passes when the model has
    ``head_samples``, as FCN8VGG16 does); otherwise I full forward passes. With a
    ``seed``, sample i uses ``torch.manual_seed(seed + i)`` right before its stochastic part (so
    both paths give identical samples) and the global random state is left untouched.
    Runs under ``torch.no_grad()``; every module's train/eval mode is restored afterwards.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"mc_predict: n_samples={n_samples!r} must be a positive integer")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"mc_predict: x must be a floating torch.Tensor, got {type(x).__name__}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"mc_predict: seed={seed!r} must be an integer or None")

    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    rng = torch.random.fork_rng(devices=devices) if seed is not None else nullcontext()
    samples: list[torch.Tensor] = []
    with torch.no_grad(), enable_mc_dropout(model), rng:
        split = head_only and has_head_split(model)
        feats = _check_backbone_deterministic(model, x) if split else None
        if split and callable(getattr(model, "head_samples", None)):  # batched head passes
            out = model.head_samples(feats, n_samples, seed=seed)
            return out if logits else torch.softmax(out, dim=2)
        for i in range(n_samples):
            if seed is not None:
                torch.manual_seed(seed + i)
            out = model.head(feats) if split else model(x)
            samples.append(out if logits else torch.softmax(out, dim=1))
    return torch.stack(samples)
