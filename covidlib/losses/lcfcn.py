"""LCFCN loss (Laradji et al., "Where are the blobs", ECCV 2018, Eq. 1), used by P2 Sec 4.4.

.. math:: \\mathcal{L} = \\mathcal{L}_I + \\mathcal{L}_P + \\mathcal{L}_S + \\mathcal{L}_F

per image, with S the softmax output and blobs the connected components of the detached
argmax prediction, one class at a time (class 0 = background):

* image level :math:`\\mathcal{L}_I`: for every class c present in the image
  :math:`-\\log \\max_j S_{jc}`, for every absent class :math:`-\\log(1 - \\max_j S_{jc})`.
  Background counts as present in every image; class ``c >= 1`` is present when the image
  has a point of class c. Summed over classes (the authors' code; the ECCV text averages
  each group).
* point level :math:`\\mathcal{L}_P`: :math:`-\\sum_j \\log S_{jY_j}` over the object points
  (classes ``>= 1``); background points join only with ``use_background_points=True``
  (the original LCFCN has no background clicks).
* split level :math:`\\mathcal{L}_S`: a predicted blob holding ``n >= 2`` points is split by
  a watershed seeded at its points; its boundary pixels are pushed to background with weight
  ``n - 1`` (local split). With ``global_split=True`` the same is done once over the whole
  image seeded by all ``N >= 2`` points of the class, weight ``N - 1``.
* false-positive level :math:`\\mathcal{L}_F`: the pixels of every blob without a point are
  pushed to background.

Each boundary set or false-positive blob contributes the mean of :math:`-\\log S_{j0}` over its
pixels times its weight, as in the authors' code (``covid19_weak_supervision``,
``src/modules/lcfcn/lcfcn_loss.py``). The watershed runs on ``black_tophat(S_c, 7)`` as there
(``tophat_size=None``: on :math:`1 - S_c`). The batch loss is the sum over images.

The blob analysis uses no gradient; every term is a log-probability at chosen pixels, so the
gradient reaches the logits.

The authors' code finds blobs without points with ``np.delete(np.unique(blobs), fg_uniques)``,
which deletes *positions*, not label values: it picks the wrong blobs as soon as the labels are
not ``0..n`` (e.g. after a region-of-interest mask) and crashes when no pixel is background.
:func:`false_positive_blobs` selects by value.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.measure import label as label_components
from skimage.segmentation import find_boundaries, watershed
from torch import nn

from covidlib.losses._checks import check_label_map, check_logits
from covidlib.losses.point import IGNORE

__all__ = [
    "LCFCNLoss",
    "blob_labels",
    "false_positive_blobs",
    "lcfcn_loss",
    "watershed_boundaries",
]

TERMS = ("image", "point", "split", "fp")


def blob_labels(mask: np.ndarray, connectivity: int = 2) -> np.ndarray:
    """Connected components of a boolean mask (0 = no blob, 1..n = blob ids)."""
    return label_components(np.asarray(mask, dtype=bool), connectivity=connectivity)


def false_positive_blobs(blobs: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Label values of the blobs that contain no point (LCFCN false-positive term).

    Args:
        blobs: integer blob map, 0 = no blob; ids need not be consecutive.
        points: boolean map of the points of the same class.

    Selects by *value* (``np.setdiff1d``), unlike the authors' ``np.delete`` (by index).
    """
    blobs = np.asarray(blobs)
    points = np.asarray(points, dtype=bool)
    if blobs.shape != points.shape:
        raise ValueError(f"blobs shape {blobs.shape} differs from points shape {points.shape}")
    present = np.unique(blobs[blobs > 0])
    with_point = np.unique(blobs[points & (blobs > 0)])
    return np.setdiff1d(present, with_point)


def watershed_boundaries(
    prob: np.ndarray, seeds: np.ndarray, tophat_size: int | None = 7
) -> np.ndarray:
    """Boundaries of the watershed of the whole image seeded at ``seeds`` (one basin each).

    The relief is ``black_tophat(prob, tophat_size)`` (authors' choice, valleys of the class
    probability become ridges) or ``1 - prob`` when ``tophat_size`` is None. Returns a boolean
    map (``find_boundaries``, mode ``"thick"``).
    """
    seeds = np.asarray(seeds, dtype=bool)
    markers = np.zeros(seeds.shape, dtype=np.int32)
    markers[seeds] = np.arange(1, int(seeds.sum()) + 1)
    prob = np.asarray(prob, dtype=np.float64)
    relief = ndi.black_tophat(prob, size=tophat_size) if tophat_size else 1.0 - prob
    return find_boundaries(watershed(relief, markers))


def _mean_at(values: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    return values[torch.from_numpy(mask).to(values.device)].mean()


def _image_terms(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    global_split: bool,
    use_background_points: bool,
    tophat_size: int | None,
    connectivity: int,
    ignore_index: int,
) -> dict[str, torch.Tensor]:
    n_classes = logits.shape[0]
    log_p = F.log_softmax(logits, dim=0)
    zero = logits.new_zeros(())

    # image level: -log max_j S_jc (present) / -log(1 - max_j S_jc) (absent)
    flat = log_p.flatten(1)
    best = flat.argmax(dim=1)
    present = [True] + [bool((labels == c).any()) for c in range(1, n_classes)]
    image = zero
    for c in range(n_classes):
        at_best = flat[:, best[c]]
        if present[c]:
            image = image - at_best[c]
        else:  # log(1 - S_c) = log sum_{c' != c} S_c', exact and stable
            others = torch.cat([at_best[:c], at_best[c + 1 :]])
            image = image - torch.logsumexp(others, dim=0)

    # point level
    labelled = labels != ignore_index
    chosen = labelled if use_background_points else labelled & (labels > 0)
    if bool(chosen.any()):
        idx = labels[chosen]
        point = -log_p.permute(1, 2, 0)[chosen].gather(1, idx[:, None]).sum()
    else:
        point = zero

    # split and false-positive levels (blob analysis without gradient)
    log_bg = log_p[0]
    pred = logits.detach().argmax(dim=0).cpu().numpy()
    labels_np = labels.cpu().numpy()
    probs_np = log_p.detach().float().exp().cpu().numpy()  # bf16 (autocast) has no numpy
    split, fp = zero, zero
    for c in range(1, n_classes):
        points_c = labels_np == c
        blobs = blob_labels(pred == c, connectivity)
        for u in false_positive_blobs(blobs, points_c):
            fp = fp - _mean_at(log_bg, blobs == u)
        ids, counts = np.unique(blobs[points_c & (blobs > 0)], return_counts=True)
        for u, n in zip(ids, counts, strict=True):
            if n < 2:
                continue
            inside = blobs == u
            bnd = watershed_boundaries(probs_np[c], points_c & inside, tophat_size) & inside
            if bnd.any():
                split = split - (int(n) - 1) * _mean_at(log_bg, bnd)
        n_points = int(points_c.sum())
        if global_split and n_points >= 2:
            bnd = watershed_boundaries(probs_np[c], points_c, tophat_size)
            if bnd.any():
                split = split - (n_points - 1) * _mean_at(log_bg, bnd)
    return {"image": image, "point": point, "split": split, "fp": fp}


def lcfcn_loss(
    logits: torch.Tensor,
    point_labels: torch.Tensor,
    *,
    global_split: bool = True,
    use_background_points: bool = False,
    tophat_size: int | None = 7,
    connectivity: int = 2,
    ignore_index: int = IGNORE,
) -> dict[str, torch.Tensor]:
    """LCFCN loss terms summed over the batch: ``{"image", "point", "split", "fp", "total"}``.

    Args:
        logits: ``(B, C, H, W)``, ``C >= 2``.
        point_labels: ``(B, H, W)`` integer map, class per point, ``ignore_index`` elsewhere.
        global_split: add the whole-image watershed split.
        use_background_points: include background points (label 0) in the point term.
        tophat_size: black top-hat size of the watershed relief (None: ``1 - S_c``).
        connectivity: blob connectivity (2 = 8-neighbourhood, as the oracle).
    """
    check_logits(logits)
    if logits.ndim != 4:
        raise ValueError(f"logits: LCFCN needs 2-D images (B, C, H, W), got {tuple(logits.shape)}")
    labels = check_label_map(point_labels, logits, ignore_index=ignore_index)
    per_image = [
        _image_terms(
            lg,
            lb,
            global_split=global_split,
            use_background_points=use_background_points,
            tophat_size=tophat_size,
            connectivity=connectivity,
            ignore_index=ignore_index,
        )
        for lg, lb in zip(logits, labels, strict=True)
    ]
    out = {k: torch.stack([t[k] for t in per_image]).sum() for k in TERMS}
    out["total"] = out["image"] + out["point"] + out["split"] + out["fp"]
    return out


class LCFCNLoss(nn.Module):
    """Module form of :func:`lcfcn_loss` returning the total (usable as CB-LCFCN point loss)."""

    def __init__(
        self,
        *,
        global_split: bool = True,
        use_background_points: bool = False,
        tophat_size: int | None = 7,
        connectivity: int = 2,
        ignore_index: int = IGNORE,
    ) -> None:
        super().__init__()
        if connectivity not in (1, 2):
            raise ValueError(f"connectivity={connectivity!r}: must be 1 or 2")
        if tophat_size is not None and tophat_size < 1:
            raise ValueError(f"tophat_size={tophat_size!r}: must be >= 1 or None")
        self.kwargs = {
            "global_split": global_split,
            "use_background_points": use_background_points,
            "tophat_size": tophat_size,
            "connectivity": connectivity,
            "ignore_index": ignore_index,
        }

    def forward(self, logits: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        return lcfcn_loss(logits, point_labels, **self.kwargs)["total"]
