"""P1's typed settings (:class:`P1Settings`, the profiles as data), its dataset names and the
data its runs read.

Profiles as data for :mod:`covidlib.experiments.p1` (P1 Sec. 3, Implementation Details, Sec.
5): one frozen :class:`P1Settings` per profile, loaded and validated by :func:`settings`
(through :func:`covidlib.experiments.typed_settings.from_profile`, as P2, P3 and P4 do).
Re-exported by :mod:`covidlib.experiments.p1`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from covidlib.active import (
    ALConfig,
    ALData,
    load_al_data,
)
from covidlib.data.errors import DataError
from covidlib.data.manifest import load_manifest, locate
from covidlib.experiments.typed_settings import (
    SettingsError,
    check_counts,
    check_fields,
    from_profile,
)

__all__ = [
    "DATASET_NAMES",
    "HEURISTIC_LABELS",
    "PROFILES",
    "REAL_DATASET",
    "RUN_KEYS",
    "P1Settings",
    "SettingsError",
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

RUN_KEYS: tuple[str, ...] = (
    "n_regions", "initial_images", "reduce", "head_only", "warm_start", "model", "model_kwargs",
    "size", "max_slices", "batch_size", "lr", "epochs", "epoch_items", "patience", "n_samples",
    "score_batch_size", "loss_balance", "per_cycle", "cycles", "figure_slices")
"""The settings that enter a run's :class:`~covidlib.active.ALConfig` (and so its cache key)."""
_PARTS = ("train", "val", "test")


@dataclass(frozen=True, kw_only=True)
class P1Settings:
    """One P1 profile (P1 Sec. 3 and Implementation Details; the cpu / reference / gpu
    profiles shrink it). Validated on creation: a value of the wrong type or range ->
    :class:`SettingsError` naming it. The field order is the one of the profile dicts of
    before the typed settings (:meth:`to_config` returns those dicts).
    """

    n_regions: int = 64
    """K, regions per image, a square grid (P1 Implementation Details: 64)."""
    initial_images: int = 5
    """Images with every region labelled in the first cycle (P1 Implementation Details: 5)."""
    reduce: Literal["max", "mean"] = "max"
    """Region score from pixel scores (P1 "Model Training": the maximum pixel entropy;
    Fig. 4 shows the mean)."""
    head_only: bool = True
    """MC-dropout samples through the dropout head only (same masks and scores, P1 Sec. 3)."""
    warm_start: bool = True
    """Each cycle fine-tunes the previous cycle's best weights (P1 Sec. 3)."""
    fig6_initial_regions: int = 192
    """Initial labelled regions of the region-size study (P1 Sec. 5.2: 192 = 3 images at
    K = 64; :func:`fig6_initial_images`)."""
    figure_slices: int = 3
    """Test slices kept for the qualitative figure (P1 Fig. 2)."""
    model: Literal["unet2d", "fcn8_vgg16"]
    """The network (P1 Implementation Details: ImageNet VGG16-FCN8 with dropout)."""
    model_kwargs: dict[str, Any]
    """Keyword arguments of the network (width, depth, weights, dropout p; P1: 0.5)."""
    size: int
    """Slice side in pixels (P1 Sec. 4: 352)."""
    max_slices: dict[str, int | None]
    """At most this many slices of the ``train`` (pool), ``val`` and ``test`` parts (None:
    every slice, as P1)."""
    batch_size: int
    """Training batch size (P1 Implementation Details: 1)."""
    lr: float
    """Adam learning rate (P1 Implementation Details: 1e-4)."""
    epochs: int
    """Epochs per cycle, best validation epoch kept (P1 Implementation Details: 40)."""
    epoch_items: int | None
    """At least this many images per epoch (None: the labelled images, as P1)."""
    patience: int | None
    """Early-stopping patience of a cycle's training (None: none)."""
    n_samples: int
    """I, MC-dropout draws per image (P1 Eq. 2; not stated in P1, 20 here)."""
    score_batch_size: int
    """Batch size of the MC-dropout scoring of the pool (speed only)."""
    loss_balance: Literal["region", "class", "none"]
    """Normalisation of the point loss (P1 Eq. 1; ``"none"``: Eq. 1 as printed)."""
    per_cycle: int
    """Regions labelled per cycle (P1 Implementation Details: 5)."""
    cycles: int
    """Selection cycles after the initial set (P1 Sec. 5: 100)."""
    fig6_regions: tuple[int, ...]
    """The K of the region-size study (P1 Fig. 6, Sec. 5.2)."""
    full_epochs: int
    """Epochs of the fully supervised baseline and the every-region run (P1 Sec. 5.3)."""
    full_patience: int | None
    """Early-stopping patience of those runs (None: best validation epoch kept, P1 Sec. 5.3)."""

    def __post_init__(self) -> None:
        check_fields(self, "p1")
        _check_ranges(self)

    def to_config(self) -> dict[str, Any]:
        """Plain JSON form: the profile dict of before the typed settings (same keys, order
        and values; ``fig6_regions`` a list), e.g. for provenance."""
        out = dataclasses.asdict(self)
        out["fig6_regions"] = list(self.fig6_regions)
        return out

    def run_fields(self) -> dict[str, Any]:
        """The fields of a run's :class:`~covidlib.active.ALConfig` (:data:`RUN_KEYS`),
        copies of the mutable ones."""
        return {k: copy.deepcopy(getattr(self, k)) for k in RUN_KEYS}


def _check_ranges(s: P1Settings) -> None:
    """The value ranges of :class:`P1Settings` (types are checked by :func:`check_fields`)."""
    check_counts(s, "p1", {"n_regions": 1, "initial_images": 0, "fig6_initial_regions": 1,
                           "figure_slices": 0, "size": 8, "batch_size": 1, "epochs": 1,
                           "n_samples": 1, "score_batch_size": 1, "per_cycle": 1, "cycles": 0,
                           "full_epochs": 1},
                 optional=("epoch_items", "patience", "full_patience"))
    for name, ks in (("n_regions", (s.n_regions,)), ("fig6_regions", s.fig6_regions)):
        bad = [k for k in ks if k < 1 or math.isqrt(k) ** 2 != k]
        if bad or not ks:
            raise SettingsError(f"p1 setting {name}={getattr(s, name)!r}: expected perfect "
                                "squares >= 1 (a sqrt(K) x sqrt(K) grid, e.g. 16, 64, 256)")
    if set(s.max_slices) != set(_PARTS):
        raise SettingsError(f"p1 setting max_slices={s.max_slices!r}: needs exactly the keys "
                            "'train', 'val' and 'test'")
    for part, n in s.max_slices.items():
        if n is not None and n < 1:
            raise SettingsError(f"p1 setting max_slices[{part!r}]={n!r}: an integer >= 1 or "
                                "None (all)")


def _variant(base: P1Settings, **changes: Any) -> P1Settings:
    """Profile ``base`` with ``changes`` (setting names of :class:`P1Settings` only: an
    unknown one -> :class:`SettingsError` naming it), validated."""
    return from_profile({"base": base}, "base", changes, "p1 profile variant")


# Minutes on 2 CPU cores for the four P1 chapters: 64 x 64 slices, a U-Net (8 channels at
# the first of 3 levels, MC dropout p = 0.5 after the bottleneck and each decoder block)
# trained from scratch at lr 1e-3, 4 epochs of at least 24 images per cycle, 3 cycles of 10
# regions after the 5 initial images, I = 8 MC draws; a pool of 40 slices, 8 validation and
# 40 test slices spread over the split. The fully supervised baseline and the every-region
# run: 30 epochs, best validation epoch kept (early stopping cut noisy curves short; none).
_CPU = P1Settings(
    model="unet2d", model_kwargs={"base_width": 8, "depth": 3, "dropout": 0.5}, size=64,
    max_slices={"train": 40, "val": 8, "test": 40}, batch_size=4, lr=1e-3, epochs=4,
    epoch_items=24, patience=None, n_samples=8, score_batch_size=16, loss_balance="class",
    per_cycle=10, cycles=3, fig6_regions=(16, 64, 256), full_epochs=30, full_patience=None)

PROFILES: dict[str, P1Settings] = {
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
    "gpu": P1Settings(
        model="fcn8_vgg16", model_kwargs={"weights": "imagenet", "layout": "same",
                                          "dropout": 0.5},
        size=352, max_slices={"train": 160, "val": 16, "test": 160}, batch_size=8, lr=1e-4,
        epochs=5, epoch_items=64, patience=None, n_samples=20, score_batch_size=16,
        loss_balance="class", per_cycle=5, cycles=10, fig6_regions=(16, 64, 256),
        full_epochs=40, full_patience=None),
    # P1's own settings (Sec. 3, Implementation Details, Sec. 5): ImageNet VGG16-FCN8 with
    # dropout 0.5 after fc6 and fc7, 352 x 352 slices, 100 cycles, 5 initial images, K = 64,
    # 5 regions per cycle, at most 40 epochs per cycle with the best validation epoch kept,
    # batch size 1, Adam lr 1e-4, Eq. 1 as printed (cross-entropy of the labelled pixels);
    # I is not given in P1 (20 here); every slice of every split.
    "paper": P1Settings(
        model="fcn8_vgg16", model_kwargs={"weights": "imagenet", "layout": "classic",
                                          "dropout": 0.5},
        size=352, max_slices={"train": None, "val": None, "test": None}, batch_size=1,
        lr=1e-4, epochs=40, epoch_items=None, patience=None, n_samples=20,
        score_batch_size=8, loss_balance="none", per_cycle=5, cycles=100,
        fig6_regions=(16, 64, 256), full_epochs=40, full_patience=None),
}
"""The profiles as data (:func:`settings` applies and validates overrides)."""


def settings(profile: str, overrides: Mapping[str, Any] | None = None) -> P1Settings:
    """Profile ``profile`` with ``overrides`` (setting name -> value) applied and validated.

    Unknown profile or override key -> :class:`SettingsError` (a ``ValueError``) naming it
    and the valid ones; a bad value -> :class:`SettingsError` naming the setting and value.
    """
    return from_profile(PROFILES, profile, overrides, "p1")


def _require(s: Any, what: str) -> P1Settings:
    if not isinstance(s, P1Settings):
        raise TypeError(f"p1 {what}: expected P1Settings (p1.settings(profile, overrides)), "
                        f"got {type(s).__name__}")
    return s


def al_config(dataset: str, split: str, s: P1Settings, *, heuristic: str = "entropy",
              seed: int = 0, supervision: str = "point", **changes: Any) -> ALConfig:
    """The :class:`~covidlib.active.ALConfig` of one run from profile settings ``s``;
    ``changes`` replace run fields (e.g. ``n_regions``, ``initial_images``, ``cycles``)."""
    fields_ = _require(s, "al_config").run_fields()
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


def load_data(dataset: str, split: str, s: P1Settings,
              data_root: str | Path | None = None) -> ALData:
    """The pool, validation and test slices the profile ``s`` uses for ``split``."""
    s = _require(s, "load_data")
    return load_al_data(dataset, split, s.size, s.max_slices, data_root)
