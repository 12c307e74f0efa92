"""P2's tables and typed settings: the losses of each table, the datasets and splits,
:class:`P2Settings` and the profiles as data.

Profiles as data for :mod:`covidlib.experiments.p2` (P2 Tables 2-8, Sec. 4): one frozen
:class:`P2Settings` per profile, loaded and validated by :func:`settings` (through
:func:`covidlib.experiments.typed_settings.from_profile`, as P3 and P4 do).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from covidlib.experiments.typed_settings import (
    SettingsError,
    check_counts,
    check_fields,
    from_profile,
)

__all__ = [
    "COUNTING_LOSSES",
    "LOSSES",
    "PROFILES",
    "RUN_KEYS",
    "SEGMENTATION_LOSSES",
    "TABLES",
    "P2Settings",
    "SettingsError",
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


RUN_KEYS: tuple[str, ...] = ("model", "model_kwargs", "size", "crop", "epochs", "batch_size",
                             "lr", "lam", "patience", "max_slices", "n_background",
                             "placement", "figure_slices")
"""The settings that enter a :class:`~covidlib.experiments.p2.P2Run` (and so its cache key)."""
_PARTS = ("train", "val", "test")


@dataclass(frozen=True, kw_only=True)
class P2Settings:
    """One P2 profile (P2 Sec. 4.1-4.2; the cpu / reference / gpu profiles shrink it).
    Validated on creation: a value of the wrong type or range -> :class:`SettingsError`
    naming it.

    ``lam``: weight of the consistency term (P2 Eq. 1); ``n_background``: background points
    per slice (``"match"``: as many as infection points, P2 Sec. 4.2); ``placement``: where
    the oracle clicks (P2 Sec. 4.1.1); ``figure_slices``: test slices kept for Figure 3;
    ``model`` / ``model_kwargs``: the network; ``size`` (px) and centre ``crop`` (fraction;
    COVID-19-C tables only, :func:`table_settings`); Adam ``lr``, ``epochs``, ``batch_size``,
    early-stopping ``patience`` (None: none); ``max_slices``: at most this many slices per
    part (None: all); ``checkpoints``: per-epoch checkpoints (resume); ``stand_in_seeds``:
    seeds run on the synthetic stand-in tables (None: all).
    """

    lam: float = 1.0  # P2 Eq. 1 weight of the consistency term (the authors' code adds it with 1)
    n_background: Literal["match"] | int = "match"  # P2 Sec. 4.2: as many as infection points
    placement: Literal["distance", "uniform"] = "distance"  # P2 Sec. 4.1.1: distance maximum
    figure_slices: int = 3  # test slices whose predictions are kept for Figure 3
    model: Literal["unet2d", "fcn8_vgg16"]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    size: int
    crop: float
    epochs: int
    batch_size: int
    lr: float
    patience: int | None
    max_slices: dict[str, int | None]
    checkpoints: bool
    stand_in_seeds: int | None

    def __post_init__(self) -> None:
        check_fields(self, "p2")
        _check_ranges(self)

    def to_config(self) -> dict[str, Any]:
        """Plain JSON form: the profile dict of before the typed settings (same keys, order
        and values), e.g. for provenance."""
        return dataclasses.asdict(self)

    def run_fields(self) -> dict[str, Any]:
        """The settings of a :class:`~covidlib.experiments.p2.P2Run` (:data:`RUN_KEYS`),
        copies of the mutable ones."""
        config = self.to_config()
        return {k: config[k] for k in RUN_KEYS}


def _check_ranges(s: P2Settings) -> None:
    """The value ranges of :class:`P2Settings` (types are checked by :func:`check_fields`)."""
    check_counts(s, "p2", {"size": 1, "epochs": 1, "batch_size": 1, "figure_slices": 0},
                 optional=("patience", "stand_in_seeds"))
    if not 0 < s.crop <= 1:
        raise SettingsError(f"p2 setting crop={s.crop!r}: expected a fraction in (0, 1]")
    if not (math.isfinite(s.lam) and s.lam >= 0):
        raise SettingsError(f"p2 setting lam={s.lam!r}: expected a finite number >= 0")
    if s.n_background != "match" and s.n_background < 0:
        raise SettingsError(f"p2 setting n_background={s.n_background!r}: 'match' or an "
                            "integer >= 0")
    if set(s.max_slices) != set(_PARTS):
        raise SettingsError(f"p2 setting max_slices={s.max_slices!r}: needs exactly the keys "
                            "'train', 'val' and 'test'")
    for part, n in s.max_slices.items():
        if n is not None and n < 1:
            raise SettingsError(f"p2 setting max_slices[{part!r}]={n!r}: an integer >= 1 or "
                                "None (all)")


PROFILES: dict[str, P2Settings] = {
    # Minutes on 2 CPU cores for all P2 chapters: 64 x 64 slices (COVID-19-C cut to its
    # central 75 % first, as the authors' code does; table_settings), a U-Net with 8 channels
    # at the first of 3 levels trained from scratch, 10 epochs of batch 4 at lr 2e-3 (from
    # scratch, 1e-4 needs far more steps), at most 45 / 24 / 96 train / val / test slices
    # per split (45 = P2's COVID-19-A training set, so Table 2 on the real data uses all of
    # it). The tables that only have a synthetic stand-in here (no real data found) run the
    # first seed only: the book's time goes to the real-data tables (their verdicts say
    # inconclusive: one seed).
    "cpu": P2Settings(
        model="unet2d", model_kwargs={"base_width": 8, "depth": 3}, size=64, crop=0.75,
        epochs=10, batch_size=4, lr=2e-3, patience=None,
        max_slices={"train": 45, "val": 24, "test": 96}, checkpoints=False, stand_in_seeds=1),
    # The published reference run (hours on 2 CPU cores for the whole book): 96 x 96 slices,
    # the cpu profile's U-Net trained twice as long (20 epochs, best validation epoch kept) on
    # up to 96 / 32 / 160 train / val / test slices, three seeds on the real tables
    # (book/plan.yml); the phantom stand-ins keep one seed (their verdicts say inconclusive).
    "reference": P2Settings(
        model="unet2d", model_kwargs={"base_width": 8, "depth": 3}, size=96, crop=0.75,
        epochs=20, batch_size=4, lr=2e-3, patience=None,
        max_slices={"train": 96, "val": 32, "test": 160}, checkpoints=False,
        stand_in_seeds=1),
    # One H100: P2's network (ImageNet FCN8-VGG16) at P2's 352 px and batch 8, lr 1e-4; 30
    # epochs and at most 256 training slices per split keep all P2 runs of the book within
    # about ten minutes of the GPU.
    "gpu": P2Settings(
        model="fcn8_vgg16", model_kwargs={"weights": "imagenet", "layout": "same"}, size=352,
        crop=0.75, epochs=30, batch_size=8, lr=1e-4, patience=10,
        max_slices={"train": 256, "val": 64, "test": None}, checkpoints=True,
        stand_in_seeds=None),
    # P2 Sec. 4.2 "Implementation Details": ImageNet-pretrained VGG16 FCN8, batch size 8, 100
    # epochs, Adam with learning rate 1e-4, scores of the best validation epoch; 352 x 352
    # images (Sec. 4.1.1); every slice of every split.
    "paper": P2Settings(
        model="fcn8_vgg16", model_kwargs={"weights": "imagenet", "layout": "classic"},
        size=352, crop=0.75, epochs=100, batch_size=8, lr=1e-4, patience=None,
        max_slices={"train": None, "val": None, "test": None}, checkpoints=True,
        stand_in_seeds=None),
}
"""The profiles as data (:func:`settings` applies and validates overrides)."""


def settings(profile: str, overrides: Mapping[str, Any] | None = None) -> P2Settings:
    """Profile ``profile`` with ``overrides`` (setting name -> value) applied and validated.

    Unknown profile or override key -> :class:`SettingsError` naming it and the valid ones;
    a bad value -> :class:`SettingsError` naming the setting and the value.
    """
    return from_profile(PROFILES, profile, overrides, "p2")


def table_settings(artifact: str, profile: str, overrides: Mapping[str, Any] | None = None
                   ) -> P2Settings:
    """:func:`settings` for P2 table ``artifact``: the centre crop only where the authors
    crop (the COVID-19-C tables); elsewhere ``crop`` is 1 (no crop)."""
    if artifact not in TABLES:
        raise SettingsError(f"p2: unknown table {artifact!r}; choose one of {sorted(TABLES)}")
    s = settings(profile, overrides)
    return s if TABLES[artifact].crop else dataclasses.replace(s, crop=1.0)
