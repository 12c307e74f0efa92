"""The labelled, partially labelled and unlabelled pools of P1's region active learning.

:class:`RegionPools` (P1 Sec. 3, Fig. 3), the :class:`~covidlib.active_loop.Pool` of P1's
loop, and :class:`RegionOracle`, its simulated annotator; re-exported by :mod:`covidlib.active`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from covidlib.active_data import _INFECTION, SUPERVISIONS, _rng
from covidlib.active_loop import Pool, Query
from covidlib.data.oracle import (
    IGNORE,
    LabelCostLedger,
    RegionLabel,
    apply_region_label,
    region_grid,
    region_label,
    region_mask_label,
)

__all__ = ["RegionOracle", "RegionPools"]


# --------------------------------------------------------------------------------------------
# Pools and labels
# --------------------------------------------------------------------------------------------


class RegionPools(Pool):
    """Labels of N training images cut into K regions (P1 Sec. 3).

    ``labelled`` ``(N, K)`` bool says which regions the oracle answered; ``label_maps`` ``(N,
    H, W)`` uint8 hold the answers (0 background, 1 infection, :data:`IGNORE` unlabelled: P1's
    -1); ``ledger`` sums their cost. An image is in :attr:`labelled_images` (P1's
    :math:`X_l`) once all its regions are labelled, in :attr:`partial_images` (:math:`X_p`)
    while some are, in :attr:`unlabelled_images` (:math:`X_u`) before; it can be picked
    (:attr:`candidates`) until it leaves the pool, i.e. until all its regions are labelled.
    The loop's units are the pairs ``(image, region)``.
    """

    def __init__(self, n_images: int, shape: tuple[int, int], n_regions: int) -> None:
        if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
            raise ValueError(f"RegionPools: n_images={n_images!r} must be an integer >= 1")
        self.shape = (int(shape[0]), int(shape[1]))
        self.n_regions = int(n_regions)
        self.boxes = region_grid(self.shape, n_regions)
        self.labelled = np.zeros((n_images, len(self.boxes)), dtype=bool)
        self.label_maps = np.full((n_images, *self.shape), IGNORE, dtype=np.uint8)
        self.ledger = LabelCostLedger()

    @property
    def n_images(self) -> int:
        return int(self.labelled.shape[0])

    @property
    def labelled_images(self) -> np.ndarray:
        """Indices of the images whose every region is labelled (P1's :math:`X_l`)."""
        return np.flatnonzero(self.labelled.all(axis=1))

    @property
    def partial_images(self) -> np.ndarray:
        """Indices of the partially labelled images (P1's :math:`X_p`)."""
        n = self.labelled.sum(axis=1)
        return np.flatnonzero((n > 0) & (n < self.labelled.shape[1]))

    @property
    def unlabelled_images(self) -> np.ndarray:
        """Indices of the images without any labelled region (P1's :math:`X_u`)."""
        return np.flatnonzero(~self.labelled.any(axis=1))

    @property
    def candidates(self) -> np.ndarray:
        """Images that still have an unlabelled region (:math:`X_p \\cup X_u`)."""
        return np.flatnonzero(~self.labelled.all(axis=1))

    @property
    def training_images(self) -> np.ndarray:
        """Images with at least one labelled region (what the network trains on)."""
        return np.flatnonzero(self.labelled.any(axis=1))

    @property
    def n_labelled_regions(self) -> int:
        return int(self.labelled.sum())

    def counts(self) -> dict[str, int]:
        """Sizes of the three pools."""
        return {"labelled": int(self.labelled_images.size),
                "partial": int(self.partial_images.size),
                "unlabelled": int(self.unlabelled_images.size)}

    def _check_index(self, i: int, k: int | None = None) -> None:
        if not 0 <= int(i) < self.n_images:
            raise IndexError(f"RegionPools: image {i} outside 0..{self.n_images - 1}")
        if k is not None and not 0 <= int(k) < self.labelled.shape[1]:
            raise IndexError(f"RegionPools: region {k} outside 0..{self.labelled.shape[1] - 1}")

    def unlabelled(self) -> list[tuple[int, int]]:
        """The unlabelled regions ``(image, region)`` in raster order (the loop's units)."""
        return [(int(i), int(k)) for i, k in np.argwhere(~self.labelled)]

    def label(self, unit: tuple[int, int], answer: RegionLabel) -> float:
        """Store the answer for region ``unit = (i, k)``; returns its cost in seconds (P1
        Sec. 5.3). Labelling a region twice is an error."""
        i, k = int(unit[0]), int(unit[1])
        self._check_index(i, k)
        if self.labelled[i, k]:
            raise ValueError(f"RegionPools: region {k} of image {i} is already labelled")
        apply_region_label(self.label_maps[i], self.boxes[k], answer)
        self.labelled[i, k] = True
        return self.ledger.add_region(answer)

    def label_region(self, i: int, k: int, mask2d: np.ndarray, supervision: str,
                     rng: np.random.Generator) -> tuple[RegionLabel, float]:
        """Ask the simulated oracle for region ``k`` of image ``i`` (its binary mask
        ``mask2d``) and store the answer; returns ``(answer, seconds)``."""
        self._check_index(i, k)
        if self.labelled[i, k]:
            raise ValueError(f"RegionPools: region {k} of image {i} is already labelled")
        answer = oracle_answer(mask2d, self.boxes[k], supervision, self.shape, rng)
        return answer, self.label((i, k), answer)

    def label_image(self, i: int, mask2d: np.ndarray, supervision: str,
                    rng: np.random.Generator) -> float:
        """Label every still unlabelled region of image ``i`` (raster order); returns the
        seconds spent."""
        self._check_index(i)
        total = 0.0
        for k in np.flatnonzero(~self.labelled[i]):
            total += self.label_region(i, int(k), mask2d, supervision, rng)[1]
        return total

    def labels_digest(self) -> str:
        """Short hash of the labels (which regions, what answers)."""
        h = hashlib.sha256(np.packbits(self.labelled).tobytes())
        h.update(self.label_maps.tobytes())
        return h.hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values for a ``weights_only`` checkpoint."""
        return {"shape": list(self.shape), "n_regions": self.n_regions,
                "labelled": torch.from_numpy(self.labelled.copy()),
                "label_maps": torch.from_numpy(self.label_maps.copy()),
                "ledger": self.ledger.to_dict()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> RegionPools:
        """Inverse of :meth:`state_dict`."""
        labelled = state["labelled"].numpy().astype(bool)
        pools = cls(int(labelled.shape[0]), tuple(state["shape"]), int(state["n_regions"]))
        pools.load_state_dict(state)
        return pools

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the labels by those of :meth:`state_dict` (same pool size and grid)."""
        labelled = state["labelled"].numpy().astype(bool)
        if labelled.shape != self.labelled.shape or tuple(state["shape"]) != self.shape:
            raise ValueError(f"RegionPools state: {labelled.shape[0]} images x "
                             f"{labelled.shape[1]} regions of {tuple(state['shape'])} px does "
                             f"not fit this pool ({self.labelled.shape}, {self.shape})")
        self.labelled = labelled
        self.label_maps = state["label_maps"].numpy().astype(np.uint8).copy()
        self.ledger = LabelCostLedger.from_dict(state["ledger"])


def oracle_answer(mask2d: np.ndarray, box: tuple[int, int, int, int], supervision: str,
                  shape: tuple[int, int], rng: np.random.Generator) -> RegionLabel:
    """P1's simulated annotator (Sec. 5.1): a background tag or one random infection point
    (``supervision="point"``), or the region's mask (``"pixel"``, P1 Fig. 7)."""
    if supervision not in SUPERVISIONS:
        raise ValueError(f"RegionPools: supervision={supervision!r}; choose one of "
                         f"{SUPERVISIONS}")
    if tuple(np.shape(mask2d)) != shape:
        raise ValueError(f"RegionPools: mask has shape {np.shape(mask2d)}, the label maps "
                         f"{shape}")
    if supervision == "point":
        return region_label(mask2d, box, rng, _INFECTION)
    return region_mask_label(mask2d, box, _INFECTION)


class RegionOracle:
    """The loop's oracle for P1: answers queried regions ``(i, k)`` from the ground-truth
    masks; the clicks of cycle ``c`` come from one generator seeded by ``(seed, c,
    "oracle")`` in query order, so they do not depend on when they are asked."""

    def __init__(self, masks: np.ndarray, boxes: Sequence[tuple[int, int, int, int]],
                 supervision: str, seed: int) -> None:
        self.masks, self.boxes = masks, list(boxes)
        self.supervision, self.seed = supervision, int(seed)

    def __call__(self, queries: Sequence[Query], cycle: int) -> list[RegionLabel]:
        rng = _rng(self.seed, cycle, "oracle")
        shape = tuple(self.masks.shape[1:])
        return [oracle_answer(self.masks[q.unit[0]], self.boxes[q.unit[1]], self.supervision,
                              shape, rng) for q in queries]  # type: ignore[arg-type]
