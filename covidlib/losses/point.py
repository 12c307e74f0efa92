"""Point-level loss PL (P2 Eq. 2; P1 Eq. 1; Bearman et al. ECCV 2016 Eq. 2).

.. math:: \\mathcal{L}_P(X_i, Y_i) = -\\sum_{j \\in \\mathcal{I}_i} \\log f_\\theta(X_i)_{jY_j}

Cross-entropy of the softmax output on the labelled pixels :math:`\\mathcal{I}_i` only; every
other pixel carries :data:`IGNORE` (255, shared with :mod:`covidlib.data.oracle`).

Normalisation (``reduction``):

* ``"sum"``: the sum over all labelled pixels of the batch, exactly Eq. 2 summed over the
  images as in P2 Eq. 1.
* ``"mean"`` (default): the same sum divided by the number of labelled pixels in the batch.
  This is what the authors' public code trains with (``covid19_weak_supervision``,
  ``src/models/semseg.py``, ``point_loss``: ``binary_cross_entropy_with_logits(logits[ind],
  points[ind], reduction='mean')`` over the labelled pixels of the whole batch), and it keeps
  the loss scale independent of how many points were clicked, so one learning rate fits all.
* ``"none"``: per-image sums, shape ``(B,)`` (Eq. 2 per image).

A batch (or, for ``"none"``, an image) without labelled pixels contributes 0, never NaN; the
zero stays attached to the graph so ``backward()`` works.

"Background images" (P2 Sec 4.2: PL "encourages all pixel predictions to be background for
background images"): by default such images contribute their background points, as the
oracle produces them. With ``empty_as_background=True`` an image that has labelled pixels but
no infection point is treated as fully background (every pixel labelled 0). An image with no
labelled pixel at all is never changed (it may simply be unannotated, as in P1's active
learning).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from covidlib.losses._checks import check_choice, check_label_map, check_logits

try:  # the oracle owns the constant; keep the same value if it is not importable
    from covidlib.data.oracle import IGNORE
except ImportError:  # pragma: no cover - only while covidlib.data.oracle is missing
    IGNORE: int = 255  # type: ignore[no-redef]

__all__ = ["IGNORE", "PointLoss", "point_loss"]

Reduction = Literal["mean", "sum", "none"]


def point_loss(
    logits: torch.Tensor,
    point_labels: torch.Tensor,
    *,
    reduction: Reduction = "mean",
    ignore_index: int = IGNORE,
    empty_as_background: bool = False,
) -> torch.Tensor:
    """Point-level cross-entropy, P2 Eq. 2 (see the module docstring for the options).

    Args:
        logits: ``(B, C, *spatial)`` raw scores, ``C >= 2`` (class 0 = background).
        point_labels: ``(B, *spatial)`` integer map: class of each labelled pixel,
            ``ignore_index`` elsewhere (uint8 maps from the oracle are fine).
        reduction: ``"mean"`` (per labelled pixel of the batch), ``"sum"`` (P2 Eq. 2) or
            ``"none"`` (per-image sums).
        ignore_index: value of unlabelled pixels.
        empty_as_background: treat an image with labels but no infection point as all
            background (P2 Sec 4.2 wording).
    """
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    check_logits(logits)
    labels = check_label_map(point_labels, logits, ignore_index=ignore_index)
    if empty_as_background:
        labels = _fill_background_images(labels, ignore_index)
    per_pixel = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    # cross_entropy already gives 0 at ignored pixels; the mask guards against any future
    # change and makes the count explicit.
    labelled = labels != ignore_index
    per_pixel = per_pixel * labelled
    per_image = per_pixel.flatten(1).sum(dim=1)
    if reduction == "none":
        return per_image
    total = per_image.sum()
    if reduction == "sum":
        return total
    n_labelled = int(labelled.sum())
    return total / max(n_labelled, 1)


def _fill_background_images(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    flat = labels.flatten(1)
    labelled = flat != ignore_index
    has_infection = (labelled & (flat > 0)).any(dim=1)
    background_image = labelled.any(dim=1) & ~has_infection
    if not bool(background_image.any()):
        return labels
    labels = labels.clone()
    labels[background_image] = 0
    return labels


class PointLoss(nn.Module):
    """Module form of :func:`point_loss` (P2 Eq. 2): ``loss(logits, point_labels)``."""

    def __init__(
        self,
        reduction: Reduction = "mean",
        ignore_index: int = IGNORE,
        empty_as_background: bool = False,
    ) -> None:
        super().__init__()
        check_choice("reduction", reduction, ("mean", "sum", "none"))
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.empty_as_background = empty_as_background

    def forward(self, logits: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        return point_loss(
            logits,
            point_labels,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            empty_as_background=self.empty_as_background,
        )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, ignore_index={self.ignore_index}"
