"""Losses of the four papers.

* :mod:`~covidlib.losses.point`: point-level cross-entropy PL (P2 Eq. 2, P1 Eq. 1).
* :mod:`~covidlib.losses.consistency`: consistency-based CB loss (P2 Eqs. 1, 3, Alg. 1).
* :mod:`~covidlib.losses.lcfcn`: LCFCN loss (Laradji et al. 2018, P2 Sec 4.4); CB-LCFCN is
  ``ConsistencyLoss("flip", point_loss=LCFCNLoss())``.
* :mod:`~covidlib.losses.structure`: weighted BCE + IoU (F3Net; P1 Sec 5.3, P2 Sec 4.2).
* :mod:`~covidlib.losses.combo`: sample-weighted combo loss (P4 Eq. 1).
* :mod:`~covidlib.losses.dice_ce`: soft Dice + cross-entropy on volumes (P3's training loss).
* :mod:`~covidlib.losses.region`: P1 Eq. 1 on region labels, balanced per region or class.

Conventions: logits ``(B, C, H, W)`` with ``C >= 2`` (0 = background, 1 = infection); point
labels ``(B, H, W)`` integers with :data:`IGNORE` (255) on unlabelled pixels.
"""

from covidlib.losses.combo import ComboLoss, combo_loss, combo_loss_per_sample
from covidlib.losses.consistency import (
    TRANSFORM_SETS,
    ConsistencyLoss,
    Transform,
    consistency_term,
    sample_transforms,
    transform_batch,
)
from covidlib.losses.dice_ce import DiceCELoss
from covidlib.losses.lcfcn import (
    LCFCNLoss,
    blob_labels,
    false_positive_blobs,
    lcfcn_loss,
    watershed_boundaries,
)
from covidlib.losses.point import IGNORE, PointLoss, point_loss
from covidlib.losses.structure import StructureLoss, structure_loss, structure_weights

__all__ = [
    "IGNORE",
    "TRANSFORM_SETS",
    "ComboLoss",
    "ConsistencyLoss",
    "DiceCELoss",
    "LCFCNLoss",
    "PointLoss",
    "StructureLoss",
    "Transform",
    "blob_labels",
    "combo_loss",
    "combo_loss_per_sample",
    "consistency_term",
    "false_positive_blobs",
    "lcfcn_loss",
    "point_loss",
    "sample_transforms",
    "structure_loss",
    "structure_weights",
    "transform_batch",
    "watershed_boundaries",
]
