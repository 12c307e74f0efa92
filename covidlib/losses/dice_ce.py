"""Soft Dice + cross-entropy for multi-class volumes (P3's training loss).

P3 (Rahimi et al., Sec. III) trains its 3D U-Net on C = 6 classes without naming the loss;
:class:`DiceCELoss` is MONAI's ``DiceCELoss`` as the 3D U-Net recipes use it: soft Dice over
the foreground classes, pooled over the batch, plus cross-entropy.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DiceCELoss"]


class DiceCELoss(nn.Module):
    """Soft Dice over the foreground classes (pooled over the batch) + cross-entropy, from
    MONAI; ``forward(logits (B, C, ...), target (B, ...))``. P3 does not name its loss."""

    def __init__(self) -> None:
        super().__init__()
        from monai.losses import DiceCELoss as _MonaiDiceCE  # slow import: only when training

        self.inner = _MonaiDiceCE(to_onehot_y=True, softmax=True, include_background=False,
                                  batch=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.inner(logits.float(), target.unsqueeze(1))
