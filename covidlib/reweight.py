"""Learning to re-weight pseudo-annotated samples: P4 Sec. 2.4, Algorithm 1, Eqs. 3-9.

One training iteration of the student (Alg. 1) on a pseudo-annotated mini-batch
``(x_p, y_p)`` of ``C_p`` samples and an expert-annotated batch ``(x_v, y_v)`` of ``C_v``:

* **RGS** (gradient similarity, Eq. 5, Alg. 1 lines 4-12): a *meta* copy of the parameters
  takes one plain SGD step on ``sum_i w_i L_i`` with ``w = 0`` (Eq. 3, line 8:
  ``theta' = theta - alpha * grad``), the expert loss is evaluated at ``theta'`` and
  differentiated with respect to ``w``; ``W_p = g(max(0, -dL_v/dw))``. The copy is a
  parameter dict run through :func:`torch.func.functional_call` with batch norm kept from
  updating its running statistics (:func:`batch_statistics_only`), and nothing is
  written to any ``.grad``. At ``w = 0`` the chain rule gives
  ``-dL_v/dw_i = alpha * <grad L_v(theta), grad L_i(theta)>``: a sample is trusted when its
  descent direction agrees with the expert data, and ``alpha > 0`` only scales ``W_p``
  before the normalisation ``g``. ``method="jvp"`` evaluates this identity directly (one
  backward and one forward-mode pass instead of a second-order graph; the tests check
  that both give the same weights).
* **RGM** (gradient magnitude, Eqs. 6-7, lines 13-14, after Ash et al. 2019): per sample,
  the norm of the gradient of its loss with respect to the output layer ``theta_out``;
  ``W_u = g(max(0, |g_em|))``. Each sample's gradient is its own :func:`torch.autograd.grad`
  call, so gradients never accumulate across samples. (The authors' public code calls
  ``loss_i.backward()`` per sample without zeroing ``.grad`` in between, so sample ``i``
  is scored with the summed gradient of samples ``0..i``; :func:`per_sample_grads` avoids
  this and the tests demonstrate the difference.)
* **Combination** (Eq. 8, line 15): ``W_com = lambda W_p + (1 - lambda) W_u``.
* **Active learning rectification** ("+AL", line 16): ``W*_i = W_com,i`` if
  ``W_com,i >= 1 / C_p`` else 0 (not renormalised, as in the paper).
* **Weighted update** (Eq. 9, lines 17-20): one optimiser step on ``sum_i W*_i L_i``.

``g`` (Alg. 1 lines 12 and 14) is ``w / (sum(w) + delta(sum(w)))``: all-zero weights stay
zero instead of dividing by zero (:func:`normalize_weights`).

The per-sample loss is P4 Eq. 1's combo loss from :func:`covidlib.losses.combo_loss_per_sample`
with ``dice_classes="foreground"`` and ``smooth=1`` (:func:`p4_loss`): the literal Eq. 1
pools the background into the Dice term, which then equals the mean probability of the true
class and barely reacts to a small lesion, and random 3-D patches often hold no lesion at
all, where ``smooth`` keeps the Dice of an empty prediction at 1. Everything works for 2-D
``(N, B, H, W)`` and 3-D ``(N, B, D, H, W)`` models.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jvp

from covidlib.losses.combo import combo_loss_per_sample

__all__ = [
    "MODES",
    "LossFn",
    "RGSMethod",
    "ReweightResult",
    "WeightQuality",
    "batch_statistics_only",
    "combine_weights",
    "compute_weights",
    "gradient_embedding_norms",
    "meta_parameters",
    "mode_settings",
    "normalize_weights",
    "output_parameters",
    "p4_loss",
    "per_sample_grads",
    "rectify_weights",
    "rgm_weights",
    "rgs_weights",
    "sgd_step",
    "spearman",
    "weight_quality",
    "weighted_update",
    "weights_on_batches",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits (N, B, ...), target (N, ...)) -> (N,)`` per-sample losses."""

p4_loss: LossFn = functools.partial(combo_loss_per_sample, dice_classes="foreground",
                                    smooth=1.0)
"""P4 Eq. 1 per sample: foreground soft Dice (smooth 1) + voxel-mean cross-entropy."""

MODES: dict[str, tuple[float | None, bool]] = {
    "semi": (None, False),
    "rgs": (1.0, False),
    "rgm": (0.0, False),
    "rgsm": (0.5, False),
    "rgs_al": (1.0, True),
    "rgsm_al": (0.5, True),
}
"""Student modes of P4 Tables 2-3: ``(lambda, rectify)``. ``semi``: uniform weights
``1 / C_p`` (plain pseudo-labels); ``rgsm`` / ``rgsm_al`` use the run's lambda (P4: 0.5)."""


def mode_settings(mode: str, lam: float = 0.5) -> tuple[float | None, bool]:
    """``(lambda, rectify)`` of a student mode (:data:`MODES`); RGS&M modes take ``lam``."""
    if mode not in MODES:
        raise ValueError(f"re-weighting mode {mode!r}: choose one of {sorted(MODES)}")
    base, rect = MODES[mode]
    if mode in ("rgsm", "rgsm_al"):
        _check_lambda(lam)
        return float(lam), rect
    return base, rect


def _check_lambda(lam: float) -> None:
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda={lam!r}: must be a number in [0, 1] (P4 Eq. 8)")


def _check_alpha(alpha: float, name: str = "alpha") -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ValueError(f"{name}={alpha!r}: the meta step size must be a number > 0")


def _check_losses(losses: torch.Tensor, n: int, where: str) -> None:
    if losses.ndim != 1 or losses.shape[0] != n:
        raise ValueError(f"{where}: loss_fn must return one loss per sample, shape ({n},); "
                         f"got {tuple(losses.shape)}")


# --------------------------------------------------------------------------------------------
# Weight algebra: g, Eq. 8, rectification
# --------------------------------------------------------------------------------------------


def normalize_weights(w: torch.Tensor) -> torch.Tensor:
    """``g`` of Eqs. 5 and 7 (Alg. 1 lines 12, 14): ``w / (sum(w) + delta(sum(w)))``.

    Weights must be non-negative (rectify first); all-zero weights stay zero.
    """
    if w.ndim != 1:
        raise ValueError(f"normalize_weights: expected a vector, got shape {tuple(w.shape)}")
    if bool((w < 0).any()):
        raise ValueError("normalize_weights: weights must be >= 0 (apply max(0, .) first)")
    s = w.sum()
    return w / (s + (s == 0).to(w.dtype))


def combine_weights(w_p: torch.Tensor, w_u: torch.Tensor, lam: float) -> torch.Tensor:
    """P4 Eq. 8 (Alg. 1 line 15): ``lambda * W_p + (1 - lambda) * W_u``."""
    _check_lambda(lam)
    if w_p.shape != w_u.shape:
        raise ValueError(f"combine_weights: shapes {tuple(w_p.shape)} and {tuple(w_u.shape)} "
                         "differ")
    return lam * w_p + (1.0 - lam) * w_u


def rectify_weights(w: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Active-learning rectification (Alg. 1 line 16): keep ``w_i >= 1 / C_p``, zero the rest.

    ``C_p = len(w)``. The threshold is relaxed by ``rtol`` (relative) so that weights equal
    to ``1 / C_p`` up to rounding (e.g. uniform normalised weights) are kept. The kept
    weights are not renormalised (P4 uses ``W*`` as is in Eq. 9).
    """
    if w.ndim != 1 or w.numel() == 0:
        raise ValueError(f"rectify_weights: expected a non-empty vector, got {tuple(w.shape)}")
    threshold = (1.0 / w.numel()) * (1.0 - rtol)
    return torch.where(w >= threshold, w, torch.zeros_like(w))


# --------------------------------------------------------------------------------------------
# Functional parameters and the meta step (Eq. 3, Alg. 1 lines 4-8)
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def batch_statistics_only(model: nn.Module) -> Iterator[None]:
    """Run batch-norm layers without touching their running statistics.

    Inside the context every batch-norm module has ``track_running_stats = False``: in
    training mode it normalises with the batch statistics (exactly as before) but updates
    no buffer; in eval mode it still uses the running statistics. The meta-network's extra
    forward passes (Alg. 1 lines 5 and 9) thus leave the real model's statistics as they
    were, and :func:`torch.func.jvp` / double backward see no in-place buffer update.
    """
    mods = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    old = [m.track_running_stats for m in mods]
    try:
        for m in mods:
            m.track_running_stats = False
        yield
    finally:
        for m, o in zip(mods, old, strict=True):
            m.track_running_stats = o


def _functional_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """The meta-network of Alg. 1 line 4: detached leaf copies of the trainable parameters
    (sharing storage with the model, so nothing is copied and no ``.grad`` is written)."""
    return {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()
            if p.requires_grad}


def sgd_step(params: Mapping[str, torch.Tensor],
             grads: Mapping[str, torch.Tensor] | Sequence[torch.Tensor | None],
             alpha: float) -> dict[str, torch.Tensor]:
    """Plain SGD (Eq. 3, Alg. 1 line 8): ``theta' = theta - alpha * grad`` entry by entry.

    No momentum, no weight decay, no adaptive scaling; a ``None`` gradient (a parameter the
    loss does not use) leaves the entry unchanged. Differentiable in ``grads``.
    """
    _check_alpha(alpha)
    names = list(params)
    if isinstance(grads, Mapping):
        missing = [n for n in names if n not in grads]
        if missing:
            raise KeyError(f"sgd_step: no gradient for {missing[:3]}")
        glist = [grads[n] for n in names]
    else:
        glist = list(grads)
        if len(glist) != len(names):
            raise ValueError(f"sgd_step: {len(glist)} gradients for {len(names)} parameters")
    out = {}
    for n, g in zip(names, glist, strict=True):
        p = params[n]
        if g is not None and g.shape != p.shape:
            raise ValueError(f"sgd_step: gradient of {n} has shape {tuple(g.shape)}, "
                             f"parameter {tuple(p.shape)}")
        out[n] = p if g is None else p - alpha * g
    return out


def meta_parameters(model: nn.Module, params: Mapping[str, torch.Tensor], x_p: torch.Tensor,
                    y_p: torch.Tensor, w: torch.Tensor, alpha: float,
                    loss_fn: LossFn = p4_loss) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(theta_hat(w), L_p)``: Alg. 1 lines 5-8 on the functional copy ``params``.

    Forward ``x_p`` through ``model`` with ``params`` (line 5; buffers are the model's, run
    inside :func:`batch_statistics_only` by the callers), per-sample
    losses ``L_p`` and ``l_p = sum_i w_i L_i`` (line 6), its gradient with ``create_graph``
    (line 7, so ``theta_hat`` stays a function of ``w``) and one plain SGD step of size
    ``alpha`` (line 8, Eq. 3).
    """
    logits = functional_call(model, dict(params), (x_p,))
    losses = loss_fn(logits, y_p)
    _check_losses(losses, x_p.shape[0], "meta_parameters")
    if w.shape != losses.shape:
        raise ValueError(f"meta_parameters: w has shape {tuple(w.shape)}, need "
                         f"{tuple(losses.shape)}")
    l_p = (w * losses).sum()
    names = [n for n, p in params.items() if p.requires_grad]
    grads = torch.autograd.grad(l_p, [params[n] for n in names], create_graph=True,
                                retain_graph=True, allow_unused=True)
    by_name = dict(zip(names, grads, strict=True))
    return sgd_step(params, [by_name.get(n) for n in params], alpha), losses


# --------------------------------------------------------------------------------------------
# RGS (Eq. 5) and RGM (Eqs. 6-7)
# --------------------------------------------------------------------------------------------


def _rgs_meta(model: nn.Module, params: dict[str, torch.Tensor], x_p: torch.Tensor,
              y_p: torch.Tensor, x_v: torch.Tensor, y_v: torch.Tensor, alpha: float,
              loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL_v/dw at 0, L_p)`` by Alg. 1 lines 5-11 literally (``L_p`` keeps its graph)."""
    n = x_p.shape[0]
    w = torch.zeros(n, dtype=torch.float32, device=x_p.device, requires_grad=True)  # line 6
    theta_hat, losses_p = meta_parameters(model, params, x_p, y_p, w, alpha, loss_fn)
    logits_v = functional_call(model, theta_hat, (x_v,))  # line 9
    losses_v = loss_fn(logits_v, y_v)
    _check_losses(losses_v, x_v.shape[0], "RGS (expert batch)")
    l_v = losses_v.mean()  # line 10: (1 / C_v) sum
    (grad_w,) = torch.autograd.grad(l_v, w, retain_graph=True)  # line 11
    return grad_w.detach(), losses_p


def _rgs_jvp(model: nn.Module, params: dict[str, torch.Tensor], x_p: torch.Tensor,
             y_p: torch.Tensor, x_v: torch.Tensor, y_v: torch.Tensor, alpha: float,
             loss_fn: LossFn) -> torch.Tensor:
    """``dL_v/dw at 0`` from the identity ``-alpha <grad L_v, grad L_i>``: one backward pass
    of the expert loss and one forward-mode pass (:func:`torch.func.jvp`) of the pseudo
    losses along that gradient; no second-order graph."""
    losses_v = loss_fn(functional_call(model, params, (x_v,)), y_v)
    _check_losses(losses_v, x_v.shape[0], "RGS (expert batch)")
    names = list(params)
    g_v = torch.autograd.grad(losses_v.mean(), [params[n] for n in names], allow_unused=True)
    primals = {n: params[n].detach() for n in names}
    tangents = {n: torch.zeros_like(primals[n]) if g is None else g.detach()
                for n, g in zip(names, g_v, strict=True)}
    _, dots = jvp(lambda q: loss_fn(functional_call(model, q, (x_p,)), y_p), (primals,),
                  (tangents,))
    return (-alpha * dots).detach()


RGSMethod = Literal["meta", "jvp"]


def _rgs(model: nn.Module, params: dict[str, torch.Tensor], x_p: torch.Tensor,
         y_p: torch.Tensor, x_v: torch.Tensor, y_v: torch.Tensor, alpha: float,
         loss_fn: LossFn, method: RGSMethod) -> tuple[torch.Tensor, torch.Tensor,
                                                      torch.Tensor | None]:
    """``(W_p, dL_v/dw, L_p or None)`` (Eq. 5, Alg. 1 line 12)."""
    if method == "meta":
        grad_w, losses_p = _rgs_meta(model, params, x_p, y_p, x_v, y_v, alpha, loss_fn)
    elif method == "jvp":
        grad_w, losses_p = _rgs_jvp(model, params, x_p, y_p, x_v, y_v, alpha, loss_fn), None
    else:
        raise ValueError(f"rgs method={method!r}: 'meta' (Alg. 1 step by step) or 'jvp'")
    return normalize_weights(torch.clamp(-grad_w, min=0.0)), grad_w, losses_p


def rgs_weights(model: nn.Module, x_p: torch.Tensor, y_p: torch.Tensor, x_v: torch.Tensor,
                y_v: torch.Tensor, *, alpha: float = 1.0, loss_fn: LossFn = p4_loss,
                method: RGSMethod = "meta") -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_p, dL_v/dw at w = 0)``: gradient-similarity weights, P4 Eq. 5 / Alg. 1 lines 4-12.

    ``method="meta"`` follows Alg. 1 step by step (meta copy, plain SGD step with
    ``create_graph``, expert loss at ``theta_hat``, backward to ``w``); ``"jvp"`` computes
    the same derivative through the chain-rule identity in about half the time. ``alpha``
    is the meta step (line 8); it scales ``dL_v/dw`` but not the normalised ``W_p``. The
    model's parameters, buffers and ``.grad`` are left untouched.
    """
    _check_alpha(alpha)
    params = _functional_params(model)
    with batch_statistics_only(model):
        w_p, grad_w, _ = _rgs(model, params, x_p, y_p, x_v, y_v, alpha, loss_fn, method)
    return w_p, grad_w


def output_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """``theta_out`` of Eq. 6: the trainable parameters of the last module (in registration
    order) that owns any, e.g. ``model.2.1.conv.unit0.conv.{weight,bias}`` (110 parameters)
    for :func:`covidlib.models.resunet3d_p4`."""
    last: dict[str, nn.Parameter] = {}
    for mname, module in model.named_modules():
        own = {f"{mname}.{n}" if mname else n: p
               for n, p in module.named_parameters(recurse=False) if p.requires_grad}
        if own:
            last = own
    if not last:
        raise ValueError(f"output_parameters: {type(model).__name__} has no trainable parameters")
    return last


def per_sample_grads(losses: torch.Tensor, inputs: Sequence[torch.Tensor],
                     retain_graph: bool = True) -> list[tuple[torch.Tensor, ...]]:
    """``[dL_i / d inputs for each i]``, one independent :func:`torch.autograd.grad` per sample.

    ``autograd.grad`` returns fresh tensors and never writes ``.grad``, so sample ``i``'s
    gradient holds nothing of samples ``0..i-1`` (the accumulation bug of calling
    ``loss_i.backward()`` in a loop without ``zero_grad``). Inputs a loss does not reach get
    zero gradients.
    """
    if losses.ndim != 1:
        raise ValueError(f"per_sample_grads: expected a vector of losses, got "
                         f"{tuple(losses.shape)}")
    inputs = list(inputs)
    out = []
    for i in range(losses.shape[0]):
        keep = retain_graph or i < losses.shape[0] - 1
        grads = torch.autograd.grad(losses[i], inputs, retain_graph=keep, allow_unused=True)
        out.append(tuple(torch.zeros_like(x) if g is None else g
                         for g, x in zip(grads, inputs, strict=True)))
    return out


def _norms(grads: list[tuple[torch.Tensor, ...]], norm: str) -> torch.Tensor:
    vals = []
    for gs in grads:
        flat = torch.cat([g.reshape(-1) for g in gs])
        vals.append(flat.norm() if norm == "l2" else flat.abs().mean())
    return torch.stack(vals).detach()


def gradient_embedding_norms(losses: torch.Tensor, out_params: Sequence[torch.Tensor],
                             norm: Literal["l2", "mean_abs"] = "l2",
                             retain_graph: bool = True) -> torch.Tensor:
    """``|g_em,i|`` of Eq. 6 for each sample: the norm of ``dL_i / d theta_out``.

    ``norm="l2"``: Euclidean norm over all output-layer parameters (Ash et al.'s gradient
    embedding length); ``"mean_abs"``: mean absolute value over them (the authors' code
    averages ``|g|`` over the output convolution's weights, without the bias).
    """
    if norm not in ("l2", "mean_abs"):
        raise ValueError(f"norm={norm!r}: choose 'l2' or 'mean_abs'")
    return _norms(per_sample_grads(losses, out_params, retain_graph), norm)


def rgm_weights(model: nn.Module, x_p: torch.Tensor, y_p: torch.Tensor, *,
                loss_fn: LossFn = p4_loss, norm: Literal["l2", "mean_abs"] = "l2"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_u, |g_em|)``: gradient-magnitude weights, P4 Eqs. 6-7 / Alg. 1 lines 13-14.

    Computed at the current parameters on a functional copy (running statistics and
    ``.grad`` of the model untouched).
    """
    params = _functional_params(model)
    with batch_statistics_only(model):
        losses = loss_fn(functional_call(model, params, (x_p,)), y_p)
    _check_losses(losses, x_p.shape[0], "rgm_weights")
    names = _output_names(model, params)
    g = gradient_embedding_norms(losses, [params[n] for n in names], norm, retain_graph=False)
    return normalize_weights(torch.clamp(g, min=0.0)), g


def _output_names(model: nn.Module, params: Mapping[str, torch.Tensor]) -> list[str]:
    names = list(output_parameters(model))
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"output layer parameters {missing} are not trainable")
    return names


# --------------------------------------------------------------------------------------------
# One iteration of Alg. 1
# --------------------------------------------------------------------------------------------


@dataclass
class ReweightResult:
    """The weights of one iteration (all detached, shape ``(C_p,)``).

    ``w_p``: RGS (Eq. 5) or ``None``; ``grad_w``: ``dL_v/dw`` at 0 or ``None``; ``w_u``: RGM
    (Eq. 7) or ``None``; ``g_em``: per-sample output-layer gradient norms or ``None``;
    ``w_com``: Eq. 8 (uniform ``1 / C_p`` for plain pseudo-labels); ``w_star``: the weights
    used in Eq. 9 (``w_com`` rectified when asked).
    """

    w_com: torch.Tensor
    w_star: torch.Tensor
    w_p: torch.Tensor | None = None
    grad_w: torch.Tensor | None = None
    w_u: torch.Tensor | None = None
    g_em: torch.Tensor | None = None


def compute_weights(model: nn.Module, x_p: torch.Tensor, y_p: torch.Tensor,
                    x_v: torch.Tensor | None = None, y_v: torch.Tensor | None = None, *,
                    lam: float | None, rectify: bool = False, alpha: float = 1.0,
                    loss_fn: LossFn = p4_loss, norm: Literal["l2", "mean_abs"] = "l2",
                    rgs_method: RGSMethod = "meta") -> ReweightResult:
    """Alg. 1 lines 4-16 for one pseudo-annotated batch.

    ``lam=None``: plain pseudo-labels (``w_i = 1 / C_p``, no meta step). Otherwise RGS is
    computed when ``lam > 0`` (needs ``x_v, y_v``; ``rgs_method`` as in :func:`rgs_weights`),
    RGM when ``lam < 1`` (from the same forward pass of ``x_p`` as the meta step, line 5,
    when ``rgs_method="meta"``), combined by Eq. 8 and rectified (line 16) when ``rectify``.
    The model is not changed.
    """
    n = x_p.shape[0]
    if n < 1:
        raise ValueError("compute_weights: empty pseudo-annotated batch")
    if lam is None:
        w = torch.full((n,), 1.0 / n, device=x_p.device)
        return ReweightResult(w_com=w, w_star=rectify_weights(w) if rectify else w)
    _check_lambda(lam)
    _check_alpha(alpha)
    params = _functional_params(model)
    w_p = grad_w = w_u = g_em = None
    losses_p = None
    with batch_statistics_only(model):
        if lam > 0:
            if x_v is None or y_v is None:
                raise ValueError("compute_weights: lambda > 0 (RGS) needs the expert batch "
                                 "x_v, y_v")
            w_p, grad_w, losses_p = _rgs(model, params, x_p, y_p, x_v, y_v, alpha, loss_fn,
                                         rgs_method)
        if lam < 1:
            if losses_p is None:
                losses_p = loss_fn(functional_call(model, params, (x_p,)), y_p)
                _check_losses(losses_p, n, "compute_weights")
            names = _output_names(model, params)
            g_em = gradient_embedding_norms(losses_p, [params[k] for k in names], norm,
                                            retain_graph=False)
            w_u = normalize_weights(torch.clamp(g_em, min=0.0))  # Eq. 7
    if w_p is None:
        w_com = w_u
    elif w_u is None:
        w_com = w_p
    else:
        w_com = combine_weights(w_p, w_u, lam)
    assert w_com is not None
    return ReweightResult(w_com=w_com, w_star=rectify_weights(w_com) if rectify else w_com,
                          w_p=w_p, grad_w=grad_w, w_u=w_u, g_em=g_em)


def weighted_update(model: nn.Module, optimizer: torch.optim.Optimizer, x_p: torch.Tensor,
                    y_p: torch.Tensor, w_star: torch.Tensor, *,
                    x_e: torch.Tensor | None = None, y_e: torch.Tensor | None = None,
                    loss_fn: LossFn = p4_loss) -> dict[str, float]:
    """Eq. 9 (Alg. 1 lines 17-20): one optimiser step on ``sum_i W*_i L_i``.

    With ``x_e, y_e`` (expert samples) their mean loss is added with weight 1, in the same
    forward pass (``Phi_ssl`` is trained on ``X_v`` and ``X_p``, P4 Sec. 2.4). Gradients are
    zeroed before the backward pass. Returns the loss parts as floats.
    """
    if w_star.shape != (x_p.shape[0],):
        raise ValueError(f"weighted_update: {tuple(w_star.shape)} weights for "
                         f"{x_p.shape[0]} samples")
    optimizer.zero_grad(set_to_none=True)
    x = x_p if x_e is None else torch.cat([x_e, x_p])
    losses = loss_fn(model(x), y_p if y_e is None else torch.cat([y_e, y_p]))
    n_e = 0 if x_e is None else x_e.shape[0]
    _check_losses(losses, x.shape[0], "weighted_update")
    pseudo = (w_star.detach().to(losses.dtype) * losses[n_e:]).sum()
    expert = losses[:n_e].mean() if n_e else losses.new_zeros(())
    total = pseudo + expert
    total.backward()
    optimizer.step()
    return {"loss": float(total.detach()), "pseudo": float(pseudo.detach()),
            "expert": float(expert.detach())}


# --------------------------------------------------------------------------------------------
# Mechanism check: do the weights find the bad pseudo-labels? (issue 14, P4)
# --------------------------------------------------------------------------------------------


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (ties get their average rank); NaN when either side is
    constant or has fewer than 3 values."""
    from scipy.stats import rankdata

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman: two vectors of equal length needed, got {x.shape}, "
                         f"{y.shape}")
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])


@dataclass(frozen=True)
class WeightQuality:
    """How well weights track the true quality of pseudo-labels (issue 14, P4 mechanism):
    ``rho`` Spearman(weight, quality); ``kept`` / ``dropped`` mean quality of the examples
    with ``w* > 0`` / ``w* = 0`` after the AL rectification (Alg. 1 line 16)."""

    n: int
    rho: float
    n_kept: int
    n_dropped: int
    kept: float
    dropped: float

    @property
    def present(self) -> bool:
        """The mechanism shows: positive rank correlation and the kept examples better."""
        gap = self.kept - self.dropped if self.n_kept and self.n_dropped else float("nan")
        return bool(np.isfinite(self.rho) and self.rho > 0 and np.isfinite(gap) and gap > 0)


def weight_quality(weights: Sequence[float] | np.ndarray, quality: Sequence[float] | np.ndarray,
                   w_star: Sequence[float] | np.ndarray | None = None) -> WeightQuality:
    """Rank correlation of ``weights`` with ``quality`` and the mean quality of the examples
    the rectified weights ``w_star`` keep (> 0) and drop (= 0); ``w_star`` defaults to
    ``weights`` (already rectified)."""
    w = np.asarray(weights, dtype=float)
    q = np.asarray(quality, dtype=float)
    ws = w if w_star is None else np.asarray(w_star, dtype=float)
    if not (w.shape == q.shape == ws.shape) or w.ndim != 1:
        raise ValueError(f"weight_quality: weights {w.shape}, quality {q.shape} and w_star "
                         f"{ws.shape} must be vectors of one length")
    keep = ws > 0
    return WeightQuality(
        n=int(w.size), rho=spearman(w, q), n_kept=int(keep.sum()),
        n_dropped=int((~keep).sum()),
        kept=float(q[keep].mean()) if keep.any() else float("nan"),
        dropped=float(q[~keep].mean()) if (~keep).any() else float("nan"))


def weights_on_batches(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]], *,
                       lam: float = 0.5, alpha: float = 1.0,
                       norm: Literal["l2", "mean_abs"] = "l2",
                       rgs_method: RGSMethod = "jvp", loss_fn: LossFn = p4_loss
                       ) -> dict[str, np.ndarray]:
    """Alg. 1's weights (lines 4-16) at the model's current parameters for each
    ``(x_p, y_p, x_v, y_v)`` batch, without any update: ``w_p`` (RGS), ``w_u`` (RGM),
    ``w_com`` (Eq. 8 with ``lam``), ``rgs_al`` / ``rgsm_al`` (rectified ``w_p`` /
    ``w_com``), each concatenated over the batches."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("w_p", "w_u", "w_com", "rgs_al",
                                                         "rgsm_al")}
    _check_lambda(lam)
    if not 0 < lam < 1:
        raise ValueError(f"weights_on_batches: lambda={lam!r} must lie strictly between 0 "
                         "and 1 so that both RGS and RGM are computed")
    for x_p, y_p, x_v, y_v in batches:
        res = compute_weights(model, x_p, y_p, x_v, y_v, lam=float(lam),
                              rectify=True, alpha=alpha, loss_fn=loss_fn, norm=norm,
                              rgs_method=rgs_method)
        assert res.w_p is not None and res.w_u is not None
        parts = {"w_p": res.w_p, "w_u": res.w_u, "w_com": res.w_com,
                 "rgs_al": rectify_weights(res.w_p), "rgsm_al": res.w_star}
        for k, v in parts.items():
            out[k].append(v.detach().float().cpu().numpy())
    if not out["w_p"]:
        raise ValueError("weights_on_batches: no batch given")
    return {k: np.concatenate(v) for k, v in out.items()}
