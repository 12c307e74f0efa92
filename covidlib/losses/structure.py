"""Fully supervised structure loss: weighted BCE + weighted IoU (Wei et al., F3Net, AAAI 2020,
Eqs. 3 and 5), the fully supervised baseline of P1 Sec 5.3 and P2 Sec 4.2.

.. math::
    w_j = 1 + 5\\,|\\mathrm{avgpool}_{31}(m)_j - m_j|, \\qquad
    \\mathcal{L}_{wbce} = \\frac{\\sum_j w_j\\,\\mathrm{BCE}(p_j, m_j)}{\\sum_j w_j}, \\qquad
    \\mathcal{L}_{wiou} = 1 - \\frac{\\sum_j w_j p_j m_j + 1}
        {\\sum_j w_j (p_j + m_j) - \\sum_j w_j p_j m_j + 1}

per image, averaged over the batch. The average pool is a 31 x 31 box, stride 1, zero padding
15 counted in the average (``count_include_pad=True``, as in F3Net's code), so pixels near the
image border see a smaller mean.

Channel choice: a single-channel output is the foreground logit itself; for two-class logits
``(z0, z1)`` the foreground logit is ``z1 - z0``, so ``p = sigmoid(z1 - z0)`` equals the softmax
probability of class 1 and this loss trains the same two-class head as the point losses.

F3Net's published code passes ``reduce='none'`` to ``binary_cross_entropy_with_logits``; that
legacy argument is truthy, so its "weighted" BCE is the plain mean BCE. Here the BCE is weighted
per pixel as Eq. 3 states.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from covidlib.losses._checks import check_choice

__all__ = ["StructureLoss", "structure_loss", "structure_weights"]


def structure_weights(mask: torch.Tensor, kernel_size: int = 31) -> torch.Tensor:
    """F3Net pixel weights ``1 + 5 |avgpool_k(m) - m|`` for a float mask ``(B, 1, H, W)``."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size={kernel_size!r}: must be a positive odd integer")
    pooled = F.avg_pool2d(
        mask, kernel_size, stride=1, padding=kernel_size // 2, count_include_pad=True
    )
    return 1 + 5 * (pooled - mask).abs()


def _foreground_logit(logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError("logits: expected a floating torch.Tensor")
    if logits.ndim != 4 or logits.shape[1] not in (1, 2):
        raise ValueError(
            f"logits: expected (B, 1, H, W) foreground logits or (B, 2, H, W) two-class logits, "
            f"got {tuple(logits.shape)}"
        )
    if logits.shape[1] == 2:
        return logits[:, 1:2] - logits[:, 0:1]
    return logits


def _float_mask(mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a torch.Tensor, got {type(mask).__name__}")
    if mask.ndim == 3:
        mask = mask[:, None]
    expected = (logits.shape[0], 1, *logits.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"mask: shape {tuple(mask.shape)} does not match logits {tuple(logits.shape)} "
            f"(expected (B, H, W) or {expected})"
        )
    mask = mask.to(logits.dtype)
    bad = (mask < 0) | (mask > 1)
    if bool(bad.any()):
        raise ValueError(
            f"mask: values {sorted({float(v) for v in mask[bad].unique()})[:5]} outside [0, 1]; "
            "pass a binary infection mask (0 = background, 1 = infection)"
        )
    return mask


def structure_loss(
    logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    kernel_size: int = 31,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """Weighted BCE + weighted IoU of F3Net (Eqs. 3, 5), see the module docstring.

    Args:
        logits: ``(B, 1, H, W)`` foreground logits or ``(B, 2, H, W)`` two-class logits.
        mask: ``(B, H, W)`` or ``(B, 1, H, W)`` binary infection mask (bool/int/float).
        kernel_size: box size of the edge-aware weights (31 in F3Net).
        reduction: ``"mean"`` over images (F3Net), ``"sum"`` or ``"none"`` (shape ``(B,)``).
    """
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    z = _foreground_logit(logits)
    m = _float_mask(mask, z)
    weit = structure_weights(m, kernel_size)
    bce = F.binary_cross_entropy_with_logits(z, m, reduction="none")
    wbce = (weit * bce).sum(dim=(1, 2, 3)) / weit.sum(dim=(1, 2, 3))
    p = torch.sigmoid(z)
    inter = (p * m * weit).sum(dim=(1, 2, 3))
    union = ((p + m) * weit).sum(dim=(1, 2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    per_image = wbce + wiou
    if reduction == "none":
        return per_image
    return per_image.sum() if reduction == "sum" else per_image.mean()


class StructureLoss(nn.Module):
    """Module form of :func:`structure_loss`: ``loss(logits, mask)``."""

    def __init__(
        self, kernel_size: int = 31, reduction: Literal["mean", "sum", "none"] = "mean"
    ) -> None:
        super().__init__()
        check_choice("reduction", reduction, ("mean", "sum", "none"))
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size!r}: must be a positive odd integer")
        self.kernel_size = kernel_size
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return structure_loss(
            logits, mask, kernel_size=self.kernel_size, reduction=self.reduction
        )
