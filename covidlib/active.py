"""Region-based active learning with point supervision: the loop of P1 (Laradji et al.).

P1 (Sec. 3, Fig. 3) splits the training images into labelled :math:`X_l`, partially labelled
:math:`X_p` and unlabelled :math:`X_u` ones; every image is a grid of K regions
(:func:`covidlib.data.oracle.region_grid`). The loop (:func:`run_active_learning`):

1. initial set: ``initial_images`` images drawn at random, every region labelled (P1
   Implementation Details: 5 images, "all their regions were labeled based on the required
   supervision level");
2. each cycle: train until selection (at most ``epochs`` epochs, weights of the best
   validation Dice kept: P1 "The maximum number of training epochs in a cycle is 40 ... the
   model that achieved the best score on the validation set"), score the test set, score the
   images that still have unlabelled regions (:mod:`covidlib.acquisition`), label the best
   region of each of the ``per_cycle`` best images (or random ones), repeat;
3. stop after ``cycles`` cycles, when the labelling seconds reach ``budget_seconds`` or when
   every region is labelled.

The oracle (:mod:`covidlib.data.oracle`) answers a region with a "background" tag (the whole
region becomes background, 0) or one random point on the infection (1) for ``supervision =
"point"`` (P1 Sec. 5.1), or with the region's mask for ``"pixel"``; unlabelled pixels stay
:data:`~covidlib.data.oracle.IGNORE`. Costs (P1 Sec. 5.3): 3 s per tag or point, 3 s per
polygon vertex for a mask, in a :class:`~covidlib.data.oracle.LabelCostLedger`.

Resume: with a ``checkpoint_dir`` the whole state (labels, pools, ledger, records, weights,
random states) is written atomically after every cycle, and the engine's per-epoch checkpoint
covers the training inside a cycle. Every random choice (initial images, oracle clicks,
random regions, dropout masks, data order) comes from a generator seeded by ``(seed, cycle,
purpose)``, so a run killed at any moment and started again ends with exactly the results of
an uninterrupted run on CPU.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from covidlib import checkpoint as _ckpt
from covidlib.acquisition import (
    HEURISTICS,
    REDUCTIONS,
    score_images,
    select_random_regions,
    select_regions,
)
from covidlib.cache import config_hash
from covidlib.data.api import open_dataset
from covidlib.data.errors import DataError
from covidlib.data.manifest import natural_key
from covidlib.data.oracle import (
    IGNORE,
    LabelCostLedger,
    RegionLabel,
    apply_region_label,
    full_effort_seconds,
    region_grid,
    region_label,
    region_mask_label,
)
from covidlib.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from covidlib.data.splits import make_split
from covidlib.data.torch_datasets import SliceDataset
from covidlib.engine import (
    FitResult,
    _restore_rng,
    _rng_state,
    binarize,
    evaluate,
    fit,
    predict,
    resolve_device,
    supervised_loss,
)
from covidlib.losses import PointLoss, structure_loss
from covidlib.losses.batch import PointBatchLoss
from covidlib.models import build_model

__all__ = [
    "LOSS_BALANCES",
    "STATE_NAME",
    "SUPERVISIONS",
    "ALConfig",
    "ALData",
    "BalancedPointBatchLoss",
    "RegionLabelDataset",
    "RegionPools",
    "balanced_point_loss",
    "decode_mask",
    "encode_mask",
    "evenly_spaced",
    "figure_indices",
    "load_al_data",
    "load_state",
    "make_loss",
    "make_model",
    "region_index_map",
    "run_active_learning",
    "train_fully_supervised",
    "training_curve",
]

SUPERVISIONS: tuple[str, ...] = ("point", "pixel")
"""``point``: background tag or one point per region (P1's scheme); ``pixel``: the region's
mask (P1 Fig. 7's per-pixel scheme)."""
LOSS_BALANCES: tuple[str, ...] = ("region", "class", "none")
"""How P1 Eq. 1 is averaged: per labelled region, per class, or over the labelled pixels
(see :func:`balanced_point_loss`)."""

STATE_NAME = "al_state.pt"
STATE_FORMAT = "covidlib.active.state/1"
_FIT_PREFIX = "fit-cycle"
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
# Pools and labels
# --------------------------------------------------------------------------------------------


class RegionPools:
    """Labels of N training images cut into K regions (P1 Sec. 3).

    ``labelled`` ``(N, K)`` bool says which regions the oracle answered; ``label_maps`` ``(N,
    H, W)`` uint8 hold the answers (0 background, 1 infection, :data:`IGNORE` unlabelled: P1's
    -1); ``ledger`` sums their cost. An image is in :attr:`labelled_images` (P1's
    :math:`X_l`) once all its regions are labelled, in :attr:`partial_images` (:math:`X_p`)
    while some are, in :attr:`unlabelled_images` (:math:`X_u`) before; it can be picked
    (:attr:`candidates`) until it leaves the pool, i.e. until all its regions are labelled.
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

    def label_region(self, i: int, k: int, mask2d: np.ndarray, supervision: str,
                     rng: np.random.Generator) -> tuple[RegionLabel, float]:
        """Ask the oracle for region ``k`` of image ``i`` (its binary mask ``mask2d``) and
        store the answer; returns ``(answer, seconds)``. Labelling a region twice is an
        error."""
        self._check_index(i, k)
        if self.labelled[i, k]:
            raise ValueError(f"RegionPools: region {k} of image {i} is already labelled")
        if supervision not in SUPERVISIONS:
            raise ValueError(f"RegionPools: supervision={supervision!r}; choose one of "
                             f"{SUPERVISIONS}")
        if tuple(np.shape(mask2d)) != self.shape:
            raise ValueError(f"RegionPools: mask of image {i} has shape {np.shape(mask2d)}, "
                             f"the label maps {self.shape}")
        box = self.boxes[k]
        if supervision == "point":
            answer = region_label(mask2d, box, rng, _INFECTION)
        else:
            answer = region_mask_label(mask2d, box, _INFECTION)
        apply_region_label(self.label_maps[i], box, answer)
        self.labelled[i, k] = True
        return answer, self.ledger.add_region(answer)

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
        if labelled.shape != pools.labelled.shape:
            raise ValueError(f"RegionPools state: labelled {labelled.shape} does not fit "
                             f"{pools.labelled.shape}")
        pools.labelled = labelled
        pools.label_maps = state["label_maps"].numpy().astype(np.uint8).copy()
        pools.ledger = LabelCostLedger.from_dict(state["ledger"])
        return pools


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


def encode_mask(mask: np.ndarray) -> str:
    """A boolean 2-D mask as base64 of its packed bits (row-major)."""
    return base64.b64encode(np.packbits(np.asarray(mask, dtype=bool).ravel())).decode("ascii")


def decode_mask(text: str, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`encode_mask`."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))
    n = int(shape[0]) * int(shape[1])
    if bits.size < n or bits.size - n >= 8:
        raise ValueError(f"decode_mask: {bits.size} bits do not hold a mask of shape {shape}")
    return bits[:n].reshape(shape).astype(bool)


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


# --------------------------------------------------------------------------------------------
# State file
# --------------------------------------------------------------------------------------------


def load_state(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """The state written by :func:`run_active_learning` in ``checkpoint_dir`` (None if none):
    ``config``, ``cycle`` (last finished), ``done``, ``pools``, ``records``, ``model``
    (weights after that cycle), ``rng`` and, once done, ``result``."""
    path = Path(checkpoint_dir) / STATE_NAME
    if not path.exists():
        return None
    try:  # verified: length and sha256 (covidlib.checkpoint; older files load unverified)
        state = _ckpt.load(path)
    except _ckpt.CorruptCheckpointError as exc:
        raise _ckpt.CorruptCheckpointError(
            path, f"{exc.reason}; the active-learning state cannot be used: delete the folder "
            "to start again") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise RuntimeError(f"{path}: not an active-learning state ({STATE_FORMAT})")
    return state


def _save_state(ck_dir: Path, state: dict[str, Any]) -> None:
    _ckpt.save(state, ck_dir / STATE_NAME)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


Callback = Callable[[str, dict[str, Any]], None]


def _check_data(cfg: ALConfig, data: ALData) -> None:
    """``data`` must be the slices ``cfg`` asks for (dataset and resolution)."""
    if data.fingerprint.get("name") != cfg.dataset:
        raise ValueError(f"run_active_learning: data of {data.fingerprint.get('name')!r} given "
                         f"for a run on {cfg.dataset!r}")
    if tuple(data.masks.shape[1:]) != (cfg.size, cfg.size):
        raise ValueError(f"run_active_learning: data at {tuple(data.masks.shape[1:])} pixels "
                         f"given for a run at size {cfg.size}")


def _select(cfg: ALConfig, pools: RegionPools, model: nn.Module, data: ALData, cycle: int,
            device: Any) -> tuple[list[tuple[int, int]], list[float | None]]:
    """The regions labelled after ``cycle`` and their scores (None for random)."""
    if cfg.heuristic == "random":
        picks = select_random_regions(pools.labelled, cfg.per_cycle,
                                      _rng(cfg.seed, cycle, "random"))
        return picks, [None] * len(picks)
    cand = pools.candidates
    images = torch.utils.data.Subset(data.train, cand.tolist())
    scores = score_images(model, images, cfg.n_samples, heuristic=cfg.heuristic,
                          n_regions=pools.boxes, reduce=cfg.reduce, head_only=cfg.head_only,
                          seed=_seed(cfg.seed, cycle, "mc"), batch_size=cfg.score_batch_size,
                          device=device)
    assert isinstance(scores, np.ndarray)
    local = select_regions(scores, cfg.per_cycle, pools.labelled[cand])
    return ([(int(cand[i]), k) for i, k in local],
            [float(scores[i, k]) for i, k in local])


@dataclass
class _ALRun:
    """The state :func:`run_active_learning` carries from cycle to cycle (what its state
    file holds, plus the fixed inputs)."""

    cfg: ALConfig
    conf: dict[str, Any]
    chash: str
    data: ALData
    device: torch.device
    ck_dir: Path | None
    emit: Callback
    pools: RegionPools
    records: list[dict[str, Any]]
    timing: list[dict[str, float]]
    model_state: dict[str, torch.Tensor] | None
    start: int
    initial: list[int]
    figure: dict[str, Any] = field(default_factory=dict)
    fig_idx: list[int] = field(default_factory=list)
    loss_fn: nn.Module | None = None


def _open_state(ck_dir: Path | None, chash: str) -> dict[str, Any] | None:
    """Prepare ``ck_dir`` and read its state (None: none yet, or no ``ck_dir``); a state of
    another configuration raises ``ValueError``."""
    if ck_dir is None:
        return None
    if ck_dir.exists() and not ck_dir.is_dir():
        raise NotADirectoryError(f"{ck_dir}: checkpoint_dir exists and is not a folder")
    ck_dir.mkdir(parents=True, exist_ok=True)
    _ckpt.remove_dead_temps(ck_dir)  # left by killed writers; a live run's stay
    state = load_state(ck_dir)
    if state is not None and state.get("config_hash") != chash:
        raise ValueError(f"{ck_dir / STATE_NAME}: written by another configuration "
                         f"({state.get('config')}); use another checkpoint_dir or delete it")
    return state


def _start_run(cfg: ALConfig, data: ALData, device: torch.device, ck_dir: Path | None,
               emit: Callback, state: dict[str, Any] | None) -> _ALRun:
    """Cycle 0's pools (the initial images, every region labelled: P1 Implementation
    Details), or the pools, records, weights and RNGs of a resumed ``state``."""
    conf = cfg.to_dict()
    n_train = len(data.train)
    if state is None:
        pools = RegionPools(n_train, (cfg.size, cfg.size), cfg.n_regions)
        rng0 = _rng(cfg.seed, 0, "initial")
        k0 = min(cfg.initial_images, n_train)
        initial = sorted(int(i) for i in rng0.choice(n_train, size=k0, replace=False))
        for i in initial:
            pools.label_image(i, data.masks[i], cfg.supervision, rng0)
        run = _ALRun(cfg, conf, config_hash(conf), data, device, ck_dir, emit, pools,
                     [], [], None, 0, initial)
    else:
        pools = RegionPools.from_state_dict(state["pools"])
        run = _ALRun(cfg, conf, config_hash(conf), data, device, ck_dir, emit, pools,
                     list(state["records"]), list(state["timing"]), state["model"],
                     int(state["cycle"]) + 1, list(state["initial"]))
        _restore_rng(state["rng"])
        if pools.labelled.shape[0] != n_train:
            raise ValueError(f"{ck_dir}: state holds {pools.labelled.shape[0]} pool images, "
                             f"the data {n_train}")
    run.loss_fn = make_loss(cfg.loss_balance, cfg.n_regions)
    run.fig_idx = fig_idx = figure_indices(data.test_masks, cfg.figure_slices)
    run.figure = {"size": cfg.size, "indices": fig_idx,
                  "refs": [list(data.test.refs[i]) for i in fig_idx], "pred": []}
    if state is not None and state.get("figure") is not None:
        run.figure = state["figure"]
    return run


def _fit_dir(run: _ALRun, cycle: int) -> Path | None:
    """The engine's checkpoint folder of ``cycle`` (other cycles' folders are removed)."""
    if run.ck_dir is None:
        return None
    fit_dir = run.ck_dir / f"{_FIT_PREFIX}{cycle:04d}"
    for old in run.ck_dir.glob(f"{_FIT_PREFIX}*"):
        if old != fit_dir:
            shutil.rmtree(old, ignore_errors=True)
    return fit_dir


def _train_cycle(run: _ALRun, cycle: int, train_idx: np.ndarray, fit_dir: Path | None
                 ) -> tuple[nn.Module, FitResult]:
    """Train a model on the labelled regions (warm-started when configured)."""
    cfg, pools, data = run.cfg, run.pools, run.data
    torch.manual_seed(_seed(cfg.seed, cycle, "init"))
    model = make_model(cfg)
    if cfg.warm_start and run.model_state is not None:
        model.load_state_dict(run.model_state)
    emit = run.emit
    res = fit(
        model, run.loss_fn, RegionLabelDataset(data.train, pools.label_maps, train_idx,
                                               cfg.epoch_items),
        data.val, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, device=run.device,
        seed=_seed(cfg.seed, cycle, "fit"), checkpoint_dir=fit_dir,
        early_stopping_patience=cfg.patience, progress=False,
        on_epoch_end=lambda e, _r, c=cycle: emit("epoch", {"cycle": c, "epoch": e}),
        config={"p1_run": run.chash, "cycle": cycle, "labels": pools.labels_digest()},
    )
    return model, res


def _score_cycle(run: _ALRun, cycle: int, model: nn.Module, res: FitResult,
                 train_idx: np.ndarray) -> dict[str, Any]:
    """The cycle's record: pools, labelling cost so far and the test scores."""
    pools = run.pools
    test = _test_scores(evaluate(model, run.data.test, run.device, max(run.cfg.batch_size, 8)))
    return {
        "cycle": cycle,
        "n_labelled_regions": pools.n_labelled_regions,
        "n_training_images": int(train_idx.size),
        "seconds": pools.ledger.total,
        "pools": pools.counts(),
        "test": test,
        "val_dice": None if math.isnan(res.best_score) else float(res.best_score),
        "best_epoch": res.best_epoch,
        "epochs": res.epochs_completed,
        "selected": [], "selected_kinds": [], "selected_scores": [],
    }


def _is_last(run: _ALRun, cycle: int) -> bool:
    """The last cycle: ``cycles`` reached, labelling budget spent or no candidate left."""
    cfg, pools = run.cfg, run.pools
    budget_hit = cfg.budget_seconds is not None and pools.ledger.total >= cfg.budget_seconds
    return cycle == cfg.cycles or budget_hit or pools.candidates.size == 0


def _label_selected(run: _ALRun, cycle: int, model: nn.Module, record: dict[str, Any]) -> None:
    """Select the next regions with the heuristic, ask the oracle, note them in ``record``."""
    cfg, pools, data = run.cfg, run.pools, run.data
    picks, scores = _select(cfg, pools, model, data, cycle, run.device)
    rng = _rng(cfg.seed, cycle, "oracle")
    for (i, k), s in zip(picks, scores, strict=True):
        answer, _cost = pools.label_region(i, k, data.masks[i], cfg.supervision, rng)
        record["selected"].append([i, k])
        record["selected_kinds"].append(answer.kind)
        record["selected_scores"].append(s)


def _record_cycle(run: _ALRun, cycle: int, model: nn.Module, last: bool,
                  fit_dir: Path | None) -> dict[str, Any] | None:
    """Keep the cycle's weights and write the state file (atomically); the run's result
    when ``last``."""
    run.model_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    result = None
    if last:
        result = _result(run.cfg, run.data, run.pools, run.records, run.figure, run.timing,
                         run.initial)
    if run.ck_dir is not None:
        _save_state(run.ck_dir, {
            "format": STATE_FORMAT, "config": run.conf, "config_hash": run.chash,
            "cycle": cycle, "done": last, "initial": run.initial,
            "pools": run.pools.state_dict(), "records": run.records, "timing": run.timing,
            "figure": run.figure, "model": run.model_state, "rng": _rng_state(),
            "result": result, "torch_version": str(torch.__version__),
        })
        if fit_dir is not None:
            shutil.rmtree(fit_dir, ignore_errors=True)
    return result


def _run_cycle(run: _ALRun, cycle: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One cycle: train, score, then label the next regions (or draw the figure's
    predictions after the last); its record and, after the last cycle, the result."""
    t0 = time.perf_counter()
    train_idx = run.pools.training_images
    if train_idx.size == 0:
        raise ValueError("run_active_learning: no labelled image to train on; use "
                         "initial_images >= 1")
    fit_dir = _fit_dir(run, cycle)
    model, res = _train_cycle(run, cycle, train_idx, fit_dir)
    t_train = time.perf_counter() - t0
    record = _score_cycle(run, cycle, model, res, train_idx)
    t1 = time.perf_counter()
    last = _is_last(run, cycle)
    if not last:
        _label_selected(run, cycle, model, record)
    else:
        run.figure["pred"] = _predictions(model, run.data.test, run.fig_idx,
                                          run.device, max(run.cfg.batch_size, 8))
    run.records.append(record)
    run.timing.append({"cycle": cycle, "train_s": round(t_train, 3),
                       "select_s": round(time.perf_counter() - t1, 3),
                       "total_s": round(time.perf_counter() - t0, 3)})
    return record, _record_cycle(run, cycle, model, last, fit_dir)


def run_active_learning(
    cfg: ALConfig | Mapping[str, Any],
    data_root: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    *,
    device: str | torch.device = "auto",
    callback: Callback | None = None,
    data: ALData | None = None,
) -> dict[str, Any]:
    """Run P1's region-based active learning (see the module docstring); resumable.

    Args:
        cfg: an :class:`ALConfig` or a mapping of its fields.
        data_root: where the dataset lies (None: ``COVIDLIB_DATA_PATH``).
        checkpoint_dir: folder of the state file (``al_state.pt``, replaced atomically after
            every cycle) and of the engine's per-epoch checkpoint of the running cycle. A run
            with the same configuration continues from it; a finished run returns its result
            without computing. A state of another configuration raises ``ValueError``.
        progress: a progress bar over the cycles.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        callback: ``callback(event, info)`` with event ``"epoch"`` (info: cycle, epoch) after
            each epoch's checkpoint and ``"cycle"`` (info: cycle, record) after each cycle's
            state was written; it must not draw from the global random generators.
        data: the prepared slices (default: :func:`load_al_data` of the config).

    Returns:
        ``{"config", "records", "n_train", "n_val", "n_test", "n_train_split", "ledger",
        "figure", "data", "timing"}``. ``records`` has one entry per trained cycle: ``cycle``,
        ``n_labelled_regions``, ``seconds`` (labelling cost so far), ``pools`` (sizes of
        X_l, X_p, X_u), ``test`` (Dice, IoU, PPV, Sens., Spec. summed over the test split),
        ``val_dice``, ``best_epoch``, ``epochs``, then ``selected`` / ``selected_kinds`` /
        ``selected_scores`` (the regions labelled after the cycle). ``timing`` holds wall
        times (the only part that differs between identical runs).
    """
    cfg = ALConfig.from_mapping(cfg)
    dev = resolve_device(device)
    if data is None:
        data = load_al_data(cfg.dataset, cfg.split, cfg.size, cfg.max_slices, data_root)
    _check_data(cfg, data)
    ck_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state = _open_state(ck_dir, config_hash(cfg.to_dict()))
    if state is not None and state.get("done"):
        return copy.deepcopy(state["result"])
    emit = callback if callback is not None else (lambda _e, _i: None)
    run = _start_run(cfg, data, dev, ck_dir, emit, state)
    bar = tqdm(total=cfg.cycles + 1, initial=run.start, unit="cycle",
               desc=f"AL {cfg.heuristic} K={cfg.n_regions}", disable=not progress)
    try:
        for cycle in range(run.start, cfg.cycles + 1):
            record, result = _run_cycle(run, cycle)
            bar.update(1)
            dice = record["test"]["dice"]
            bar.set_postfix({"dice": "nan" if dice is None else f"{dice:.3f}",
                             "s": f"{run.pools.ledger.total:.0f}"})
            emit("cycle", {"cycle": cycle, "record": record})
            if result is not None:
                return result
    finally:
        bar.close()
    raise AssertionError("unreachable: the last cycle returns")  # pragma: no cover


def _result(cfg: ALConfig, data: ALData, pools: RegionPools, records: list[dict[str, Any]],
            figure: dict[str, Any], timing: list[dict[str, float]], initial: list[int]
            ) -> dict[str, Any]:
    return copy.deepcopy({
        "config": cfg.to_dict(),
        "data": data.fingerprint,
        "records": records,
        "initial_images": initial,
        "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
        "n_train_split": data.n_train_split,
        "ledger": pools.ledger.to_dict(),
        "label_seconds": pools.ledger.total,
        "full_effort_seconds": full_effort_seconds(len(data.train)),
        "figure": figure,
        "timing": timing,
    })


# --------------------------------------------------------------------------------------------
# The fully supervised upper bound (P1 Sec. 5.3)
# --------------------------------------------------------------------------------------------


def train_fully_supervised(
    cfg: ALConfig | Mapping[str, Any],
    epochs: int,
    data_root: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
    *,
    device: str | torch.device = "auto",
    data: ALData | None = None,
) -> dict[str, Any]:
    """P1's upper bound: the same network trained on every pool image with its full mask and
    the structure loss (weighted BCE + IoU of F3Net, P1 Sec. 5.3), best validation epoch.

    Its cost is the full labelling effort, ``N x 96 s`` (:func:`full_effort_seconds`).
    Returns ``{"test", "val_dice", "best_epoch", "epochs", "history", "n_train",
    "full_effort_seconds", "figure", "timing"}``; ``history`` is the training curve
    (:func:`training_curve`).
    """
    cfg = ALConfig.from_mapping(cfg)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"train_fully_supervised: epochs={epochs!r} must be an integer >= 1")
    dev = resolve_device(device)
    if data is None:
        data = load_al_data(cfg.dataset, cfg.split, cfg.size, cfg.max_slices, data_root)
    _check_data(cfg, data)
    t0 = time.perf_counter()
    torch.manual_seed(_seed(cfg.seed, 0, "init"))
    model = make_model(cfg)
    res = fit(model, supervised_loss(structure_loss), data.train, data.val, epochs=epochs,
              lr=cfg.lr, batch_size=cfg.batch_size, device=dev, seed=_seed(cfg.seed, "full"),
              checkpoint_dir=checkpoint_dir, early_stopping_patience=cfg.patience,
              progress=progress, config={"p1_full": config_hash(cfg.to_dict())})
    test = _test_scores(evaluate(model, data.test, dev, max(cfg.batch_size, 8)))
    idx = figure_indices(data.test_masks, cfg.figure_slices)
    return {
        "test": test,
        "val_dice": None if math.isnan(res.best_score) else float(res.best_score),
        "best_epoch": res.best_epoch,
        "epochs": res.epochs_completed,
        "history": training_curve(res.history),
        "n_train": len(data.train),
        "n_train_split": data.n_train_split,
        "full_effort_seconds": full_effort_seconds(len(data.train)),
        "figure": {"size": cfg.size, "indices": idx,
                   "refs": [list(data.test.refs[i]) for i in idx],
                   "pred": _predictions(model, data.test, idx, dev, max(cfg.batch_size, 8))},
        "timing": {"total_s": round(time.perf_counter() - t0, 3)},
    }
