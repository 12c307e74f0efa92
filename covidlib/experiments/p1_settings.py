"""P1's profiles and run settings, its dataset names and the data its runs read.

Re-exported by :mod:`covidlib.experiments.p1`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from covidlib.active import (
    ALConfig,
    ALData,
    load_al_data,
)
from covidlib.data.errors import DataError
from covidlib.data.manifest import load_manifest, locate

__all__ = [
    "DATASET_NAMES",
    "HEURISTIC_LABELS",
    "PROFILES",
    "REAL_DATASET",
    "al_config",
    "data_note",
    "fig6_initial_images",
    "load_data",
    "records_scorecard",
    "resolve_dataset",
    "settings",
]

HEURISTIC_LABELS = {"random": "random", "entropy": "entropy (MC dropout)", "bald": "BALD"}
_COLOURS = {"random": "tab:orange", "entropy": "tab:blue", "bald": "tab:green",
            "point": "tab:blue", "pixel": "tab:red"}

_COMMON: dict[str, Any] = {
    "n_regions": 64,  # P1 Implementation Details: 64 regions per image
    "initial_images": 5,  # P1: 5 images, every region labelled, in the first cycle
    "reduce": "max",  # P1 "Model Training": region score = maximum pixel entropy
    "head_only": True,  # MC samples through the dropout head only (same masks, same scores)
    "warm_start": True,  # each cycle fine-tunes the previous cycle's best weights
    "fig6_initial_regions": 192,  # P1 Sec. 5.2 (see the module docstring)
    "figure_slices": 3,  # test slices of the qualitative figure (P1 Fig. 2)
}


def _variant(base: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of profile ``base`` with ``changes`` (existing keys only: a profile's keys
    stay in the same order)."""
    unknown = sorted(set(changes) - set(base))
    if unknown:
        raise KeyError(f"p1: profile variant changes unknown key(s) {unknown}")
    out = copy.deepcopy(dict(base))
    out.update(copy.deepcopy(changes))
    return out


# Minutes on 2 CPU cores for the four P1 chapters: 64 x 64 slices, a U-Net (8 channels at
# the first of 3 levels, MC dropout p = 0.5 after the bottleneck and each decoder block)
# trained from scratch at lr 1e-3, 4 epochs of at least 24 images per cycle, 3 cycles of 10
# regions after the 5 initial images, I = 8 MC draws; a pool of 40 slices, 8 validation and
# 40 test slices spread over the split.
_CPU: dict[str, Any] = {
    **_COMMON,
    "model": "unet2d",
    "model_kwargs": {"base_width": 8, "depth": 3, "dropout": 0.5},
    "size": 64,
    "max_slices": {"train": 40, "val": 8, "test": 40},
    "batch_size": 4,
    "lr": 1e-3,
    "epochs": 4,
    "epoch_items": 24,
    "patience": None,
    "n_samples": 8,
    "score_batch_size": 16,
    "loss_balance": "class",
    "per_cycle": 10,
    "cycles": 3,
    "fig6_regions": [16, 64, 256],
    # the fully supervised baseline and the every-region run: 30 epochs, best
    # validation epoch kept (early stopping cut noisy curves short; none here)
    "full_epochs": 30,
    "full_patience": None,
}

PROFILES: dict[str, dict[str, Any]] = {
    "cpu": _CPU,
    # The published reference run (hours on 2 CPU cores for the whole book): 96 x 96 slices,
    # the cpu profile's U-Net, a pool of 96 slices (64 regions each: 16 regions per cycle x 6
    # cycles after the 5 initial images is about P1's 7 % of the regions), 5 epochs of 32
    # images per cycle, and a fully supervised baseline of 40 epochs whose validation curve
    # shows whether it has flattened; three seeds (book/plan.yml).
    "reference": _variant(_CPU, size=96, max_slices={"train": 96, "val": 16, "test": 80},
                          epochs=5, epoch_items=32, per_cycle=16, cycles=6, full_epochs=40),
    # One H100 (about 5 of the book's 20 GPU minutes): P1's network (ImageNet FCN8-VGG16,
    # dropout 0.5 after fc6 and fc7) at 352 px, I = 20, K = 64, 5 regions per cycle; 10
    # cycles of at most 5 epochs of 64 images, batch 8, lr 1e-4, on a pool of 160 slices.
    "gpu": {
        **_COMMON,
        "model": "fcn8_vgg16",
        "model_kwargs": {"weights": "imagenet", "layout": "same", "dropout": 0.5},
        "size": 352,
        "max_slices": {"train": 160, "val": 16, "test": 160},
        "batch_size": 8,
        "lr": 1e-4,
        "epochs": 5,
        "epoch_items": 64,
        "patience": None,
        "n_samples": 20,
        "score_batch_size": 16,
        "loss_balance": "class",
        "per_cycle": 5,
        "cycles": 10,
        "fig6_regions": [16, 64, 256],
        "full_epochs": 40,
        "full_patience": None,
    },
    # P1's own settings (Sec. 3, Implementation Details, Sec. 5): ImageNet VGG16-FCN8 with
    # dropout 0.5 after fc6 and fc7, 352 x 352 slices, 100 cycles, 5 initial images, K = 64,
    # 5 regions per cycle, at most 40 epochs per cycle with the best validation epoch kept,
    # batch size 1, Adam lr 1e-4, Eq. 1 as printed (cross-entropy of the labelled pixels);
    # I is not given in P1 (20 here); every slice of every split.
    "paper": {
        **_COMMON,
        "model": "fcn8_vgg16",
        "model_kwargs": {"weights": "imagenet", "layout": "classic", "dropout": 0.5},
        "size": 352,
        "max_slices": {"train": None, "val": None, "test": None},
        "batch_size": 1,
        "lr": 1e-4,
        "epochs": 40,
        "epoch_items": None,
        "patience": None,
        "n_samples": 20,
        "score_batch_size": 8,
        "loss_balance": "none",
        "per_cycle": 5,
        "cycles": 100,
        "fig6_regions": [16, 64, 256],
        "full_epochs": 40,
        "full_patience": None,
    },
}

_RUN_KEYS = ("n_regions", "initial_images", "reduce", "head_only", "warm_start", "model",
             "model_kwargs", "size", "max_slices", "batch_size", "lr", "epochs", "epoch_items",
             "patience", "n_samples", "score_batch_size", "loss_balance", "per_cycle",
             "cycles", "figure_slices")


def settings(profile: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of profile ``profile`` with ``overrides`` merged over it (top-level keys).

    Unknown profile or override key -> ``ValueError`` naming it.
    """
    if profile not in PROFILES:
        raise ValueError(f"p1: unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    out = copy.deepcopy(PROFILES[profile])
    unknown = sorted(set(overrides or {}) - set(out))
    if unknown:
        raise ValueError(f"p1: unknown override key(s) {unknown}; known: {sorted(out)}")
    out.update(copy.deepcopy(dict(overrides or {})))
    return out


def al_config(dataset: str, split: str, s: Mapping[str, Any], *, heuristic: str = "entropy",
              seed: int = 0, supervision: str = "point", **changes: Any) -> ALConfig:
    """The :class:`~covidlib.active.ALConfig` of one run from profile settings ``s``;
    ``changes`` replace run fields (e.g. ``n_regions``, ``initial_images``, ``cycles``)."""
    missing = [k for k in _RUN_KEYS if k not in s]
    if missing:
        raise ValueError(f"p1: settings lack {missing}")
    fields_ = {k: copy.deepcopy(s[k]) for k in _RUN_KEYS}
    fields_.update(changes)
    return ALConfig(dataset=dataset, split=split, heuristic=heuristic, seed=int(seed),
                    supervision=supervision, **fields_)


def fig6_initial_images(n_regions: int, budget_regions: int = 192) -> int:
    """Initial images of the region-size study: ``round(budget / K)``, at least one (P1 Sec.
    5.2: 192 at K = 64 "corresponds to 3 images")."""
    if n_regions < 1 or budget_regions < 1:
        raise ValueError(f"fig6_initial_images: K={n_regions}, budget={budget_regions} must "
                         "be >= 1")
    return max(1, math.floor(budget_regions / n_regions + 0.5))


REAL_DATASET = "ma20-slices"
"""P1's COVID-19-B (Ma et al.'s volumes, here the 10 Coronacases volumes as 2-D slices)."""
DATASET_NAMES = {
    "ma20-slices": "P1's COVID-19-B: real CT slices of Ma et al.'s Coronacases volumes "
                   "(real 2-D derivative: infected slices only, 8-bit CLAHE)",
    "synthetic": "the synthetic thorax phantom (a stand-in: no real data of this set here)",
    "covid-semiseg": "COVID-SemiSeg (real slices, MedSeg; not one of P1's sets)",
}


def resolve_dataset(dataset: str, data_root: str | Path | None = None) -> str:
    """The dataset a chapter runs on: ``"auto"`` -> :data:`REAL_DATASET` when its files are
    found (``data_root`` or ``COVIDLIB_DATA_PATH``), else ``"synthetic"``; any other name is
    returned as it is (opening it later names what is missing)."""
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"p1: dataset={dataset!r}: give 'auto' or a dataset name")
    if dataset != "auto":
        return dataset
    try:
        locate(load_manifest(REAL_DATASET), data_root)
    except (DataError, FileNotFoundError):
        return "synthetic"
    return REAL_DATASET


def records_scorecard(dataset: str, data_root: str | Path | None = None) -> bool:
    """Whether a chapter on ``dataset`` writes P1's scorecard rows: it does when ``dataset``
    is the best data found (:func:`resolve_dataset` of "auto"), so a phantom run never
    overwrites a real one."""
    return dataset == resolve_dataset("auto", data_root)


def data_note(dataset: str) -> str:
    """One line saying which data produced a table or figure."""
    return f"data: {dataset}, {DATASET_NAMES.get(dataset, 'see its manifest')}"


# --------------------------------------------------------------------------------------------
# The data the runs read
# --------------------------------------------------------------------------------------------


def _data(cfg: ALConfig, data_root: str | Path | None) -> ALData:
    return load_al_data(cfg.dataset, cfg.split, cfg.size, cfg.max_slices, data_root)


def load_data(dataset: str, split: str, s: Mapping[str, Any],
              data_root: str | Path | None = None) -> ALData:
    """The pool, validation and test slices the profile ``s`` uses for ``split``."""
    return load_al_data(dataset, split, s["size"], s["max_slices"], data_root)
