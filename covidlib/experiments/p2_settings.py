"""P2's tables and settings: the losses of each table, the datasets and splits, the profiles.

Profiles as data for :mod:`covidlib.experiments.p2` (P2 Tables 2-8, Sec. 4).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "COUNTING_LOSSES",
    "LOSSES",
    "PROFILES",
    "SEGMENTATION_LOSSES",
    "TABLES",
    "TableSpec",
    "settings",
    "table_settings",
]

SEGMENTATION_LOSSES: tuple[str, ...] = ("fully", "pl", "cb_flip", "cb_flip_rot")
"""Rows of P2 Tables 2-6, in the paper's order."""
COUNTING_LOSSES: tuple[str, ...] = ("pl", "lcfcn", "cb_lcfcn")
"""Rows of P2 Tables 7-8, in the paper's order."""
LOSSES: tuple[str, ...] = (*SEGMENTATION_LOSSES, "lcfcn", "cb_lcfcn")
Task = Literal["segmentation", "counting"]


@dataclass(frozen=True)
class TableSpec:
    """What one P2 table needs: its task, the real data (in order of preference: the paper's
    dataset, then a real derivative of it), the synthetic stand-in and whether P2's centre
    crop applies (the authors crop COVID-19-C only)."""

    task: Task
    real: tuple[tuple[str, str], ...]  # (manifest name, split name), best first
    synthetic: str  # split of the synthetic phantom (manifest split or a STAND_INS name)
    paper_name: str  # what P2 calls the data
    crop: bool = False  # apply the profile's centre crop (COVID-19-C tables only)

    @property
    def losses(self) -> tuple[str, ...]:
        return SEGMENTATION_LOSSES if self.task == "segmentation" else COUNTING_LOSSES


_C_MIXED = (("ma-20", "mixed"), ("ma20-slices", "mixed"))
_C_SEP = (("ma-20", "sep"), ("ma20-slices", "sep"))


TABLES: dict[str, TableSpec] = {
    "P2-T2": TableSpec("segmentation", (("covid-semiseg", "p2"),), "a-like", "COVID-19-A"),
    "P2-T3": TableSpec("segmentation", (("medseg-9", "mixed"),), "b-mixed", "COVID-19-B-Mixed"),
    "P2-T4": TableSpec("segmentation", (("medseg-9", "sep"),), "b-sep", "COVID-19-B-Sep"),
    "P2-T5": TableSpec("segmentation", _C_MIXED, "mixed", "COVID-19-C-Mixed", crop=True),
    "P2-T6": TableSpec("segmentation", _C_SEP, "sep", "COVID-19-C-Sep", crop=True),
    "P2-T7": TableSpec("counting", (("medseg-9", "mixed"),), "b-mixed", "COVID-19-B-Mixed"),
    "P2-T8": TableSpec("counting", _C_MIXED, "mixed", "COVID-19-C-Mixed", crop=True),
}


"""P2 Tables 2-8: task, the real datasets (manifest, split; best first), the synthetic
stand-in and whether the centre crop applies."""


_COMMON: dict[str, Any] = {
    "lam": 1.0,  # P2 Eq. 1 weight of the consistency term (the authors' code adds it with 1)
    "n_background": "match",  # P2 Sec. 4.2: as many background points as infection points
    "placement": "distance",  # P2 Sec. 4.1.1: the pixel with the largest distance transform
    "figure_slices": 3,  # test slices whose predictions are kept for Figure 3
}


PROFILES: dict[str, dict[str, Any]] = {
    # Minutes on 2 CPU cores for all P2 chapters: 64 x 64 slices (COVID-19-C cut to its
    # central 75 % first, as the authors' code does; table_settings), a U-Net with 8 channels
    # at the first of 3 levels trained from scratch, 10 epochs of batch 4 at lr 2e-3 (from
    # scratch, 1e-4 needs far more steps), at most 45 / 24 / 96 train / val / test slices
    # per split (45 = P2's COVID-19-A training set, so Table 2 on the real data uses all of
    # it).
    "cpu": {
        **_COMMON,
        "model": "unet2d",
        "model_kwargs": {"base_width": 8, "depth": 3},
        "size": 64,
        "crop": 0.75,
        "epochs": 10,
        "batch_size": 4,
        "lr": 2e-3,
        "patience": None,
        "max_slices": {"train": 45, "val": 24, "test": 96},
        "checkpoints": False,
        # the tables that only have a synthetic stand-in here (no real data found) run the
        # first seed only: the book's time goes to the real-data tables
        "stand_in_seeds": 1,
    },
    # The published reference run (hours on 2 CPU cores for the whole book): 96 x 96 slices,
    # the cpu profile's U-Net trained twice as long (20 epochs, best validation epoch kept) on
    # up to 96 / 32 / 160 train / val / test slices, three seeds on the real tables
    # (book/plan.yml); the phantom stand-ins keep one seed (their verdicts say inconclusive).
    "reference": {
        **_COMMON,
        "model": "unet2d",
        "model_kwargs": {"base_width": 8, "depth": 3},
        "size": 96,
        "crop": 0.75,
        "epochs": 20,
        "batch_size": 4,
        "lr": 2e-3,
        "patience": None,
        "max_slices": {"train": 96, "val": 32, "test": 160},
        "checkpoints": False,
        "stand_in_seeds": 1,
    },
    # One H100: P2's network (ImageNet FCN8-VGG16) at P2's 352 px and batch 8, lr 1e-4; 30
    # epochs and at most 256 training slices per split keep all P2 runs of the book within
    # about ten minutes of the GPU.
    "gpu": {
        **_COMMON,
        "model": "fcn8_vgg16",
        "model_kwargs": {"weights": "imagenet", "layout": "same"},
        "size": 352,
        "crop": 0.75,
        "epochs": 30,
        "batch_size": 8,
        "lr": 1e-4,
        "patience": 10,
        "max_slices": {"train": 256, "val": 64, "test": None},
        "checkpoints": True,
        "stand_in_seeds": None,
    },
    # P2 Sec. 4.2 "Implementation Details": ImageNet-pretrained VGG16 FCN8, batch size 8, 100
    # epochs, Adam with learning rate 1e-4, scores of the best validation epoch; 352 x 352
    # images (Sec. 4.1.1); every slice of every split.
    "paper": {
        **_COMMON,
        "model": "fcn8_vgg16",
        "model_kwargs": {"weights": "imagenet", "layout": "classic"},
        "size": 352,
        "crop": 0.75,
        "epochs": 100,
        "batch_size": 8,
        "lr": 1e-4,
        "patience": None,
        "max_slices": {"train": None, "val": None, "test": None},
        "checkpoints": True,
        "stand_in_seeds": None,
    },
}


def settings(profile: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of profile ``profile`` with ``overrides`` merged over it (top-level keys).

    Unknown profile or override key -> ``ValueError`` naming it.
    """
    if profile not in PROFILES:
        raise ValueError(f"p2: unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    out = copy.deepcopy(PROFILES[profile])
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(out))
    if unknown:
        raise ValueError(f"p2: unknown override key(s) {unknown}; known: {sorted(out)}")
    out.update(copy.deepcopy(overrides))
    return out


def table_settings(artifact: str, profile: str, overrides: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """:func:`settings` for P2 table ``artifact``: the centre crop only where the authors
    crop (the COVID-19-C tables); elsewhere ``crop`` is 1 (no crop)."""
    if artifact not in TABLES:
        raise ValueError(f"p2: unknown table {artifact!r}; choose one of {sorted(TABLES)}")
    s = settings(profile, overrides)
    if not TABLES[artifact].crop:
        s["crop"] = 1.0
    return s
