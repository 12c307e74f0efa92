"""P1 Eq. 1 on region labels: cross-entropy on the labelled pixels, balanced per region or
per class (Laradji et al., Sec. 3 "Model Training" and Sec. 5.1).

A background tag labels every pixel of its region, a point one pixel; :func:`balanced_point_loss`
gives both the same weight. :func:`make_loss` is the loss of P1's loop
(:mod:`covidlib.active`), :class:`BalancedPointBatchLoss` its engine form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from covidlib.data.oracle import IGNORE, region_grid
from covidlib.losses.batch import PointBatchLoss
from covidlib.losses.point import PointLoss

__all__ = ["LOSS_BALANCES", "BalancedPointBatchLoss", "balanced_point_loss", "make_loss",
           "region_index_map"]

LOSS_BALANCES: tuple[str, ...] = ("region", "class", "none")
"""How P1 Eq. 1 is averaged: per labelled region, per class, or over the labelled pixels
(see :func:`balanced_point_loss`)."""


def region_index_map(shape: tuple[int, int], n_regions: int) -> torch.Tensor:
    """``(H, W)`` int64 map of the region (raster index of :func:`region_grid`) of each pixel."""
    out = torch.empty(tuple(int(s) for s in shape), dtype=torch.int64)
    for k, (y0, y1, x0, x1) in enumerate(region_grid(shape, n_regions)):
        out[y0:y1, x0:x1] = k
    return out


def balanced_point_loss(logits: torch.Tensor, labels: torch.Tensor, balance: str = "region",
                        n_regions: int | None = None, ignore_index: int = IGNORE
                        ) -> torch.Tensor:
    """P1 Eq. 1 (cross-entropy on the labelled pixels) with a choice of normalisation.

    A background tag labels every pixel of its region while an infected region gets a
    single point, so the plain mean over labelled pixels (``balance="none"``, what
    :class:`~covidlib.losses.point.PointLoss` computes) weighs a tag hundreds of times more
    than a point, and a network trained with it predicts background everywhere.

    * ``"region"``: every labelled region is one unit (mean cross-entropy of its labelled
      pixels), averaged over the labelled regions of the batch: each click or tag, which
      costs the annotator the same 3 s (P1 Sec. 5.1), weighs the same. Needs ``n_regions``.
    * ``"class"``: the mean over the labelled pixels of each class, averaged over the
      classes present (points and tags weigh half each).
    * ``"none"``: the mean over all labelled pixels.

    No labelled pixel -> 0 (attached to the graph).
    """
    if labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"balanced_point_loss: labels {tuple(labels.shape)} do not fit logits "
                         f"{tuple(logits.shape)}")
    if balance not in LOSS_BALANCES:
        raise ValueError(f"balanced_point_loss: balance={balance!r}; choose one of "
                         f"{LOSS_BALANCES}")
    if balance == "region" and n_regions is None:
        raise ValueError("balanced_point_loss: balance='region' needs n_regions")
    labels = labels.long()
    ce = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    labelled = labels != ignore_index
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    if balance == "none":
        return (ce * labelled).sum() / labelled.sum()
    if balance == "class":
        terms = [(ce * (labels == c)).sum() / (labels == c).sum()
                 for c in range(logits.shape[1]) if bool((labels == c).any())]
        return torch.stack(terms).mean()
    assert n_regions is not None
    b = labels.shape[0]
    index = region_index_map(tuple(labels.shape[1:]), n_regions).to(labels.device)
    index = (index.flatten()[None] + n_regions * torch.arange(b, device=labels.device)[:, None])
    sums = torch.zeros(b * n_regions, device=ce.device).index_add(
        0, index.flatten(), (ce * labelled).flatten())
    counts = torch.zeros(b * n_regions, device=ce.device).index_add(
        0, index.flatten(), labelled.flatten().float())
    used = counts > 0
    return (sums[used] / counts[used]).mean()


class BalancedPointBatchLoss(nn.Module):
    """Engine-form :func:`balanced_point_loss` on ``batch["points"]``."""

    def __init__(self, balance: str = "region", n_regions: int | None = None,
                 key: str = "points") -> None:
        super().__init__()
        if balance not in LOSS_BALANCES:
            raise ValueError(f"BalancedPointBatchLoss: balance={balance!r}; choose one of "
                             f"{LOSS_BALANCES}")
        if balance == "region" and n_regions is None:
            raise ValueError("BalancedPointBatchLoss: balance='region' needs n_regions")
        self.balance, self.n_regions, self.key = balance, n_regions, key

    def forward(self, model: nn.Module, batch: Mapping[str, Any]
                ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.key not in batch:
            raise KeyError(f"BalancedPointBatchLoss needs batch[{self.key!r}]; the batch has "
                           f"{sorted(batch)}")
        loss = balanced_point_loss(model(batch["image"]), batch[self.key], self.balance,
                                   self.n_regions)
        return loss, {"point": float(loss.detach())}


def make_loss(balance: str, n_regions: int | None = None) -> nn.Module:
    """The training loss on region label maps (P1 Eq. 1, see :func:`balanced_point_loss`):
    ``"none"`` is :class:`~covidlib.losses.batch.PointBatchLoss` (mean over labelled pixels).
    Masks revealed by the per-pixel scheme are label maps too (every pixel of the region
    labelled), so both schemes train with the same loss."""
    if balance == "none":
        return PointBatchLoss(PointLoss("mean"))
    return BalancedPointBatchLoss(balance, n_regions)
