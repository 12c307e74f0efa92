"""The 2-D slices of P1's region active learning: pool, validation and test parts of a split.

:func:`load_al_data` reads a dataset's split at the network's resolution (capped parts spread
evenly over the volumes, :func:`evenly_spaced`); :class:`RegionLabelDataset` serves the pool
images with their P1 region label maps (P1 Sec. 3: labelled regions, IGNORE elsewhere).
Re-exported by :mod:`covidlib.active`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from covidlib.data.api import open_dataset
from covidlib.data.errors import DataError
from covidlib.data.manifest import natural_key
from covidlib.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from covidlib.data.splits import make_split
from covidlib.data.torch_datasets import SliceDataset

__all__ = ["ALData", "RegionLabelDataset", "evenly_spaced", "load_al_data"]


def evenly_spaced(items: Sequence[Any], n: int | None) -> list[Any]:
    """``n`` items spread evenly over ``items`` (item ``floor((2j + 1) len / 2n)``), in order;
    all of them when ``n`` is None or not smaller than ``len(items)``."""
    items = list(items)
    if n is None or n >= len(items):
        return items
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"evenly_spaced: n={n!r} must be an integer >= 1 or None")
    return [items[(2 * j + 1) * len(items) // (2 * n)] for j in range(n)]


@dataclass
class ALData:
    """The slices of one run at the network's resolution: ``train`` (the pool), ``val`` and
    ``test`` (:class:`~covidlib.data.torch_datasets.SliceDataset`), the pool's binary masks
    ``masks`` ``(N, S, S)`` uint8 for the oracle, the test masks and gray test images (uint8,
    as the network sees them, for figures), the dataset's ``fingerprint``, ``intensity`` ("hu"
    or "uint8") and the number of training slices of the split before capping."""

    train: SliceDataset
    val: SliceDataset
    test: SliceDataset
    masks: np.ndarray
    test_masks: np.ndarray
    test_gray: np.ndarray
    fingerprint: dict[str, Any]
    intensity: str
    n_train_split: int



@lru_cache(maxsize=8)
def _load_cached(dataset: str, split: str, size: int, caps: tuple[int | None, ...],
                 data_root: str | None) -> ALData:
    ds = open_dataset(dataset, data_root)
    cases = ds.cases()
    by_id = {c.case_id: c for c in cases}
    parts = make_split(cases, ds.manifest.split(split))  # DataError names an unknown split
    labels = ds.manifest.infection_labels
    out = {}
    for part, cap in zip(("train", "val", "test"), caps, strict=True):
        refs = sorted(parts[part], key=lambda r: (natural_key(r[0]), r[1]))
        refs = evenly_spaced(refs, cap)
        if not refs:
            raise DataError(dataset, f"split {split!r} has no {part} slices")
        missing = [r[0] for r in refs if by_id[r[0]].mask is None]
        if missing:
            raise DataError(missing[0], f"{part} slices need infection masks; the case has none")
        out[part] = SliceDataset(by_id, refs, size, infection_labels=labels, progress=False)
    masks = np.stack([out["train"][i]["mask"].numpy().astype(np.uint8)
                      for i in range(len(out["train"]))])
    test_items = [out["test"][i] for i in range(len(out["test"]))]
    test_masks = np.stack([t["mask"].numpy().astype(np.uint8) for t in test_items])
    # channel 0 of the ImageNet-normalised image back to the uint8 gray it was made from
    gray = [np.rint((t["image"][0].numpy() * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255.0)
            for t in test_items]
    test_gray = np.clip(np.stack(gray), 0, 255).astype(np.uint8)
    return ALData(out["train"], out["val"], out["test"], masks, test_masks, test_gray,
                  ds.fingerprint(), cases[0].intensity, len(parts["train"]))


def load_al_data(dataset: str, split: str, size: int,
                 max_slices: Mapping[str, int | None] | None = None,
                 data_root: str | Path | None = None) -> ALData:
    """The pool, validation and test slices of ``dataset``'s ``split`` at ``size`` pixels.

    ``max_slices`` caps each part by taking slices evenly spread over it (volumes in natural
    order, slices in order), so the cap keeps every volume's mix of clean and infected
    slices. Kept in memory (a few calls share one read).
    """
    caps = dict(max_slices or {})
    unknown = sorted(set(caps) - {"train", "val", "test"})
    if unknown:
        raise ValueError(f"load_al_data: max_slices has unknown part(s) {unknown}")
    key = tuple(caps.get(p) for p in ("train", "val", "test"))
    return _load_cached(dataset, split, int(size), key,
                        None if data_root is None else str(data_root))


class RegionLabelDataset(Dataset):
    """The images of ``indices`` with their P1 label maps under ``"points"`` (int64, IGNORE on
    unlabelled pixels), ready for :class:`~covidlib.losses.batch.PointBatchLoss`.

    ``min_items``: an epoch holds at least this many items (the images repeat, item ``j`` is
    image ``j mod n``), so that a cycle with few labelled images still takes enough steps.
    """

    def __init__(self, base: Dataset, label_maps: np.ndarray, indices: Sequence[int],
                 min_items: int | None = None) -> None:
        if len(indices) == 0:
            raise ValueError("RegionLabelDataset: no labelled images to train on")
        if min_items is not None and (isinstance(min_items, bool) or not isinstance(
                min_items, int) or min_items < 1):
            raise ValueError(f"RegionLabelDataset: min_items={min_items!r} must be an integer "
                             ">= 1 or None")
        self.base = base
        self.indices = [int(i) for i in indices]
        self.label_maps = np.asarray(label_maps)[self.indices].copy()
        self.length = max(len(self.indices), min_items or 0)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, j: int) -> dict[str, Any]:
        if not 0 <= j < self.length:
            raise IndexError(f"RegionLabelDataset: index {j} outside 0..{self.length - 1}")
        j = j % len(self.indices)
        item = self.base[self.indices[j]]
        return {"image": item["image"], "points": torch.from_numpy(
            self.label_maps[j].astype(np.int64)), "case_id": item["case_id"], "z": item["z"]}
