"""Configuration, data, model and loss of P1's region-based active learning.

:class:`ALConfig`, :func:`load_al_data`, :class:`RegionLabelDataset`, P1 Eq. 1's
:func:`balanced_point_loss`, and the masks and curves its figures show; the loop is
:mod:`covidlib.active` (which re-exports them).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from covidlib.acquisition import (
    HEURISTICS,
    REDUCTIONS,
)
from covidlib.data.api import open_dataset
from covidlib.data.errors import DataError
from covidlib.data.manifest import natural_key
from covidlib.data.oracle import (
    IGNORE,
    region_grid,
)
from covidlib.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from covidlib.data.splits import make_split
from covidlib.data.torch_datasets import SliceDataset
from covidlib.engine import (
    binarize,
    predict,
)
from covidlib.losses import PointLoss
from covidlib.losses.batch import PointBatchLoss
from covidlib.models import build_model
from covidlib.report.masks import decode_mask, encode_mask

__all__ = [
    "LOSS_BALANCES",
    "SUPERVISIONS",
    "ALConfig",
    "ALData",
    "BalancedPointBatchLoss",
    "RegionLabelDataset",
    "balanced_point_loss",
    "decode_mask",
    "encode_mask",
    "evenly_spaced",
    "figure_indices",
    "load_al_data",
    "make_loss",
    "make_model",
    "region_index_map",
    "training_curve",
]

SUPERVISIONS: tuple[str, ...] = ("point", "pixel")
"""``point``: background tag or one point per region (P1's scheme); ``pixel``: the region's
mask (P1 Fig. 7's per-pixel scheme)."""
LOSS_BALANCES: tuple[str, ...] = ("region", "class", "none")
"""How P1 Eq. 1 is averaged: per labelled region, per class, or over the labelled pixels
(see :func:`balanced_point_loss`)."""
_INFECTION = (1,)  # SliceDataset masks are binary: 1 = infection


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _default_max_slices() -> dict[str, int | None]:
    return {"train": None, "val": None, "test": None}


@dataclass(frozen=True)
class ALConfig:
    """Everything that changes the result of one active-learning run (P1's settings as
    defaults: FCN8-VGG16 with dropout 0.5, 352 px, K = 64, 5 initial images, 5 regions per
    cycle, 100 cycles, 40 epochs per cycle, batch 1, Adam 1e-4; I = 20 MC draws)."""

    dataset: str = "synthetic"
    split: str = "mixed"
    heuristic: str = "entropy"
    reduce: str = "max"
    n_regions: int = 64
    supervision: str = "point"
    initial_images: int = 5
    per_cycle: int = 5
    cycles: int = 100
    budget_seconds: float | None = None
    epochs: int = 40
    patience: int | None = None
    lr: float = 1e-4
    batch_size: int = 1
    model: str = "fcn8_vgg16"
    model_kwargs: dict[str, Any] = field(default_factory=lambda: {"dropout": 0.5})
    size: int = 352
    n_samples: int = 20
    head_only: bool = True
    score_batch_size: int = 8
    loss_balance: str = "region"
    warm_start: bool = True
    max_slices: dict[str, int | None] = field(default_factory=_default_max_slices)
    figure_slices: int = 3
    epoch_items: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        def need_int(name: str, minimum: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"ALConfig.{name}={v!r}: expected an integer >= {minimum}")

        for name, minimum in (("n_regions", 1), ("initial_images", 0), ("per_cycle", 1),
                              ("cycles", 0), ("epochs", 1), ("batch_size", 1), ("size", 8),
                              ("n_samples", 1), ("score_batch_size", 1),
                              ("figure_slices", 0), ("seed", 0)):
            need_int(name, minimum)
        choices = (("heuristic", HEURISTICS), ("reduce", REDUCTIONS),
                   ("supervision", SUPERVISIONS), ("loss_balance", LOSS_BALANCES))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"ALConfig.{name}={getattr(self, name)!r}: choose one of "
                                 f"{allowed}")
        if math.isqrt(self.n_regions) ** 2 != self.n_regions:
            raise ValueError(f"ALConfig.n_regions={self.n_regions}: expected a perfect square "
                             "(a sqrt(K) x sqrt(K) grid, e.g. 16, 64, 256)")
        if math.isqrt(self.n_regions) > self.size:
            raise ValueError(f"ALConfig.n_regions={self.n_regions}: a grid finer than the "
                             f"{self.size}-pixel image")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"ALConfig.lr={self.lr!r}: expected a finite number > 0")
        b = self.budget_seconds
        if b is not None and (isinstance(b, bool) or not isinstance(b, int | float)
                              or not math.isfinite(b) or b <= 0):
            raise ValueError(f"ALConfig.budget_seconds={b!r}: expected a number > 0 or None")
        if self.patience is not None:
            need_int("patience", 1)
        if self.epoch_items is not None:
            need_int("epoch_items", 1)
        if set(self.max_slices) != {"train", "val", "test"}:
            raise ValueError(f"ALConfig.max_slices={self.max_slices!r}: needs exactly the keys "
                             "'train', 'val' and 'test' (an integer >= 1 or None each)")
        for part, n in self.max_slices.items():
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise ValueError(f"ALConfig.max_slices[{part!r}]={n!r}: an integer >= 1 or None")
        if not isinstance(self.model_kwargs, Mapping):
            raise ValueError(f"ALConfig.model_kwargs={self.model_kwargs!r}: expected a mapping")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the identity of the run)."""
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | ALConfig) -> ALConfig:
        """An :class:`ALConfig` from a mapping; unknown keys -> ``ValueError`` naming them."""
        if isinstance(d, ALConfig):
            return d
        if not isinstance(d, Mapping):
            raise TypeError(f"ALConfig: expected a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ALConfig: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**copy.deepcopy(dict(d)))


def _seed(*parts: int | str) -> int:
    """A well-mixed 31-bit seed for ``parts`` (ints and short strings)."""
    ints = [int(p) if not isinstance(p, str) else int.from_bytes(p.encode()[:8], "little")
            for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(1)[0] % 2**31)


def _rng(*parts: int | str) -> np.random.Generator:
    return np.random.default_rng(_seed(*parts))


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Model and loss
# --------------------------------------------------------------------------------------------


def make_model(cfg: ALConfig) -> nn.Module:
    """The run's two-class network (background, infection) with MC dropout."""
    kw = dict(cfg.model_kwargs)
    if cfg.model == "unet2d":
        return build_model("unet2d", out_channels=2, **kw)
    if cfg.model == "fcn8_vgg16":
        kw.setdefault("progress", False)
        return build_model("fcn8_vgg16", n_classes=2, **kw)
    raise ValueError(f"ALConfig.model={cfg.model!r}: P1 runs use 'unet2d' or 'fcn8_vgg16'")


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


# --------------------------------------------------------------------------------------------
# Masks for figures
# --------------------------------------------------------------------------------------------


def figure_indices(masks: np.ndarray, n: int) -> list[int]:
    """``n`` infected slices for a qualitative figure: evenly spaced ranks of infected area
    (largest first), so that large and small lesions are both shown."""
    area = [(int(m.sum()), i) for i, m in enumerate(masks) if m.any()]
    area.sort(key=lambda t: (-t[0], t[1]))
    return [i for _a, i in evenly_spaced(area, n)] if n > 0 else []


def _predictions(model: nn.Module, ds: Dataset, indices: Sequence[int], device: Any,
                 batch_size: int) -> list[str]:
    if not indices:
        return []
    sub = torch.utils.data.Subset(ds, list(indices))
    out = []
    for probs, _batch in predict(model, sub, device, batch_size):
        out.extend(encode_mask(m) for m in binarize(probs).numpy())
    return out


def training_curve(history: Sequence[Mapping[str, float]]) -> list[dict[str, float | None]]:
    """Per epoch of :func:`~covidlib.engine.fit`'s history: ``epoch``, ``train_loss`` and
    ``val_dice`` (None where the epoch was not validated or its Dice is undefined)."""
    out = []
    for rec in history:
        v = rec.get("val_dice")
        out.append({"epoch": int(rec["epoch"]), "train_loss": float(rec["train_loss"]),
                    "val_dice": None if v is None or math.isnan(float(v)) else float(v)})
    return out


def _test_scores(scores: Mapping[str, float]) -> dict[str, float | None]:
    def clean(v: float) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    return {k: clean(scores[k]) for k in ("dice", "iou", "ppv", "sens", "spec")}
