"""Configuration and model of P1's region-based active learning, and what its figures show.

:class:`ALConfig` (P1's settings), :func:`make_model`, and the masks and curves of the
figures. The slices live in :mod:`covidlib.data.al_slices` (:func:`load_al_data`,
:class:`RegionLabelDataset`), P1 Eq. 1 in :mod:`covidlib.losses.region`; this module and
:mod:`covidlib.active` (the loop) re-export them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from covidlib.acquisition import (
    HEURISTICS,
    REDUCTIONS,
)
from covidlib.data.al_slices import (
    ALData,
    RegionLabelDataset,
    evenly_spaced,
    load_al_data,
)
from covidlib.engine import (
    binarize,
    predict,
)
from covidlib.losses.region import (
    LOSS_BALANCES,
    BalancedPointBatchLoss,
    balanced_point_loss,
    make_loss,
    region_index_map,
)
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
# Model (the loss, P1 Eq. 1, is covidlib.losses.region)
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
