"""Sample-weighted combo loss, P4 Eq. 1 (after Taghanaki et al. 2019).

.. math::
    \\mathcal{L} = \\sum_{c=1}^{C} w_c \\mathcal{L}_c, \\qquad
    \\mathcal{L}_c = 1 - \\frac{2 \\sum_b \\sum_d p_b^d y_b^d}{\\sum_b \\sum_d (p_b^d + y_b^d)}
        - \\frac{1}{D} \\sum_d \\sum_b y_b^d \\log p_b^d

for a mini-batch of C volumes (or slices) with D voxels and B classes; p is the softmax output
and y the one-hot target. P4 Eq. 1 has no alpha/beta mixing weights; ``dice_weight`` and
``ce_weight`` (both 1 by default, i.e. Eq. 1) scale the two terms.

``dice_classes="all"`` is Eq. 1 literally: the soft Dice is pooled over every class including
background. Because softmax and one-hot both sum to 1 per voxel, its denominator is always 2D,
so this "Dice" equals the mean probability of the true class. ``"foreground"`` pools classes
``1..B-1`` only (the original combo loss's foreground Dice), which is sensitive to the small
infected volume; ``smooth`` is then added to numerator and denominator (an empty target with an
empty prediction scores 1 when ``smooth > 0``).

``weights`` (shape ``(N,)``) may require grad: the result is ``sum_i w_i L_i`` and its gradient
with respect to ``w_i`` is ``L_i``, which P4 Eqs. 3-6 differentiate at ``w = 0``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from covidlib.losses._checks import check_choice, check_label_map, check_logits

__all__ = ["ComboLoss", "combo_loss", "combo_loss_per_sample"]


def combo_loss_per_sample(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    dice_classes: Literal["all", "foreground"] = "all",
    smooth: float = 0.0,
) -> torch.Tensor:
    """Unweighted combo loss :math:`\\mathcal{L}_c` of every sample, shape ``(N,)``.

    Args:
        logits: ``(N, B, *spatial)`` raw scores, 2-D ``(N, B, H, W)`` or 3-D
            ``(N, B, D, H, W)``, ``B >= 2``.
        target: ``(N, *spatial)`` integer class map with values in ``0..B-1``.
    """
    check_choice("dice_classes", dice_classes, ("all", "foreground"))
    if smooth < 0:
        raise ValueError(f"smooth={smooth!r}: must be >= 0")
    check_logits(logits)
    target = check_label_map(target, logits, ignore_index=None, name="target")
    n_classes = logits.shape[1]
    log_p = F.log_softmax(logits, dim=1)
    p = log_p.exp()
    y = F.one_hot(target, n_classes).movedim(-1, 1).to(p.dtype)
    if dice_classes == "foreground":
        p_d, y_d = p[:, 1:], y[:, 1:]
    else:
        p_d, y_d = p, y
    inter = (p_d * y_d).flatten(1).sum(dim=1)
    denom = (p_d + y_d).flatten(1).sum(dim=1)
    if smooth == 0:
        denom = denom.clamp_min(torch.finfo(denom.dtype).tiny)
    dice = (2 * inter + smooth) / (denom + smooth)
    ce = -(y * log_p).flatten(1).sum(dim=1) / target[0].numel()
    return dice_weight * (1 - dice) + ce_weight * ce


def combo_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
               *, reduction: Literal["sum", "mean", "none"] = "sum", dice_weight: float = 1.0,
               ce_weight: float = 1.0, dice_classes: Literal["all", "foreground"] = "all",
               smooth: float = 0.0) -> torch.Tensor:
    """Sample-weighted combo loss ``sum_i w_i L_i`` (P4 Eq. 1).

    Args:
        logits, target: see :func:`combo_loss_per_sample`.
        weights: ``(N,)`` per-sample weights (default all 1); may require grad.
        reduction: ``"sum"`` (Eq. 1), ``"mean"`` (divided by N) or ``"none"``
            (the vector ``w_i L_i``).
    """
    check_choice("reduction", reduction, ("sum", "mean", "none"))
    per_sample = combo_loss_per_sample(logits, target, dice_weight=dice_weight,
                                       ce_weight=ce_weight, dice_classes=dice_classes,
                                       smooth=smooth)
    if weights is not None:
        if not isinstance(weights, torch.Tensor):
            weights = torch.as_tensor(weights, dtype=per_sample.dtype)
        if weights.shape != per_sample.shape:
            raise ValueError(
                f"weights: shape {tuple(weights.shape)} does not match the batch "
                f"({per_sample.shape[0]} samples)"
            )
        per_sample = weights.to(per_sample.device, per_sample.dtype) * per_sample
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


class ComboLoss(nn.Module):
    """Module form of :func:`combo_loss`: ``loss(logits, target, weights=None)``."""

    def __init__(
        self,
        reduction: Literal["sum", "mean", "none"] = "sum",
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        dice_classes: Literal["all", "foreground"] = "all",
        smooth: float = 0.0,
    ) -> None:
        super().__init__()
        check_choice("reduction", reduction, ("sum", "mean", "none"))
        check_choice("dice_classes", dice_classes, ("all", "foreground"))
        self.kwargs = {
            "reduction": reduction,
            "dice_weight": dice_weight,
            "ce_weight": ce_weight,
            "dice_classes": dice_classes,
            "smooth": smooth,
        }

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return combo_loss(logits, target, weights, **self.kwargs)
