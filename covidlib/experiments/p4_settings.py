"""P4 (Hussain et al.): constants, methods, datasets and the typed settings of
:mod:`covidlib.experiments.p4` (profiles as data, :func:`settings` validates them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from covidlib.data.phantom import SiteProfile
from covidlib.data.preprocess import (
    LUNG_WINDOW,
)
from covidlib.experiments.typed_settings import SettingsError, check_fields, from_profile

VERSION = "p4/1"
"""Part of every cached config: bump it when a change alters results."""

P4_SPACING: tuple[float, float, float] = (3.2, 1.6, 1.6)
"""P4 Sec. 4: every volume resampled to 1.6 x 1.6 x 3.2 mm^3 ((z, y, x) here)."""

TABLE2_METHODS: tuple[str, ...] = ("fully", "semi", "rgs", "rgm", "rgsm", "rgsm_al")
"""Rows of P4 Table 2 (ablation), in the paper's order."""
TABLE3_METHODS: tuple[str, ...] = ("fully", "rgs", "rgs_al", "rgsm_al")
"""Rows of P4 Table 3 (Benchmark), in the paper's order."""
METHODS: tuple[str, ...] = ("fully", "semi", "rgs", "rgm", "rgsm", "rgs_al", "rgsm_al")

METHOD_LABELS: dict[str, str] = {
    "fully": "Fully Supervised",
    "semi": "Uniform pseudo-labels",
    "rgs": "Proposed RGS",
    "rgm": "Proposed RGM",
    "rgsm": "Proposed RGS&M",
    "rgs_al": "Proposed RGS+AL",
    "rgsm_al": "Proposed RGS&M+AL",
}
"""Method names in our tables (P4's own names, except ``semi``: see :data:`PAPER_NAMES`)."""

PAPER_NAMES: dict[str, str] = {**METHOD_LABELS, "semi": "Semi-supervised"}
"""The row names of P4's Tables 2-3 for each method (``semi`` is P4's "Semi-supervised"
row, which P4 describes as Fan et al.'s strategy; ours is plain uniform pseudo-labelling)."""

DATASETS: dict[str, dict[str, Any]] = {
    "synthetic": {"dims": 3, "split": "p4-cv4", "pool": "phantom"},
    "covid-semiseg": {"dims": 2, "split": "p4-2d", "pool": "pseudo-label"},
    # P4's Benchmark (Ma et al.) as 2-D slices of 10 volumes: slices of the split's volumes,
    # COVID-SemiSeg's pseudo-labelled slices of the same 20 volumes as the pool
    "ma20-slices": {"dims": 2, "split": "p4-cv4", "pool": "covid-semiseg", "stacks": True,
                    "case_group": None},
    # P4's own datasets in 3-D (gpu / paper profiles): Benchmark and Challenge
    "ma-20": {"dims": 3, "split": "p4-cv4", "pool": "phantom"},
    "covid19-20": {"dims": 3, "split": "p4-cv5", "pool": "phantom", "teacher_data": "ma-20"},
}
"""Datasets this chapter runs on: their dimension, split and unlabelled pool (``stacks``:
volumes stored as stacks of 2-D slices, trained slice by slice and scored per volume)."""

AUTO_BENCHMARK: tuple[str, ...] = ("ma20-slices", "synthetic")
"""``dataset="auto"`` for the Benchmark chapter: the first of these that is present."""

POOL_SITES: tuple[SiteProfile, ...] = (
    # a thick-slice scanner (P4's hospital scans: 7 mm slices), contrast shifted up
    SiteProfile(noise_hu=30.0, gain=0.94, offset_hu=15.0, blur_mm=1.0, fov_mm=400.0,
                slice_thickness=2.5),
    # a sharp, noisy reconstruction kernel with lower contrast
    SiteProfile(noise_hu=55.0, gain=1.06, offset_hu=-15.0, blur_mm=0.4, fov_mm=360.0,
                slice_thickness=1.5),
)
"""The unlabelled pool's scanners: different from every site of the expert phantom."""
POOL_SITE_NAMES: tuple[str, ...] = ("thick-slice scanner", "sharp noisy scanner")
"""Names of :data:`POOL_SITES` in tables."""
POOL_SEED = 4
"""Phantom seed of the pool (the expert set uses seed 0: other patients)."""

@dataclass(frozen=True)
class P4Settings:
    """One P4 profile (P4 Sec. 4; the cpu / gpu profiles shrink it). Validated on creation: a
    value of the wrong type or range -> :class:`SettingsError` naming it.

    Data: ``spacing`` (z, y, x mm) and ``patch`` (voxels) of the 3-D networks, ``size_2d``
    (px) of the 2-D ones, ``window`` (HU -> [0, 1]), the phantom pool (``pool_size`` volumes
    of ``pool_shape``), ``pool_2d`` pool slices, ``infer_roi`` (sliding windows; None: one
    pass) with ``overlap``. Training: ``batch`` (C_p = C_v), Adam / SGD ``lr``,
    ``pos_fraction`` of patches centred on a labelled voxel, ``teacher_steps``,
    ``student_steps``, ``init`` of every method (``"teacher"``: fine-tune Phi_sl). Alg. 1:
    ``lam`` (Eq. 8), ``meta_lr`` (line 8), ``expert_term``, ``gem_norm``, ``rgs_method``.
    """

    spacing: tuple[float, float, float]
    patch: tuple[int, int, int]
    size_2d: int
    teacher_steps: int
    student_steps: int
    init: Literal["teacher", "scratch"]
    rgs_method: Literal["meta", "jvp"]
    folds: tuple[int, ...]
    pool_size: int
    pool_shape: tuple[int, int, int]
    pool_2d: int
    checkpoint_every: int
    infer_roi: tuple[int, int, int] | None
    batch: int = 4  # C_p = C_v = 4 (P4 Sec. 4)
    lam: float = 0.5  # lambda of Eq. 8 (P4 Sec. 4)
    lr: float = 1e-2  # Adam, initial learning rate 0.01 (P4 Sec. 4)
    optimizer: Literal["adam", "sgd"] = "adam"
    meta_lr: float = 1e-2  # alpha of Alg. 1 line 8 (only scales the RGS weights)
    pos_fraction: float = 0.5  # share of patches centred on a labelled voxel
    expert_term: bool = True
    gem_norm: Literal["l2", "mean_abs"] = "l2"
    window: tuple[float, float] = LUNG_WINDOW  # HU -> [0, 1]
    overlap: float = 0.25  # sliding-window overlap (when infer_roi is set)
    figure_cases: int = 4
    history_max: int = 2000  # at most this many logged steps per run (evenly thinned)

    def __post_init__(self) -> None:
        check_fields(self, "p4")
        _check_ranges(self)


def _check_ranges(s: P4Settings) -> None:
    """The value ranges of :class:`P4Settings` (types are checked by :func:`check_fields`)."""
    for name in ("batch", "size_2d", "teacher_steps", "student_steps", "pool_size",
                 "pool_2d", "figure_cases", "history_max"):
        if getattr(s, name) < 1:
            raise SettingsError(f"p4 setting {name}={getattr(s, name)!r}: expected an "
                                "integer >= 1")
    if s.checkpoint_every < 0:
        raise SettingsError(f"p4 setting checkpoint_every={s.checkpoint_every!r}: expected an "
                            "integer >= 0")
    if any(p % 16 or p < 16 for p in s.patch):
        raise SettingsError(f"p4 setting patch={s.patch!r}: three sizes, each a multiple of 16 "
                            "(the network halves them four times)")
    if s.infer_roi is not None and any(v < 16 for v in s.infer_roi):
        raise SettingsError(f"p4 setting infer_roi={s.infer_roi!r}: None (whole volume) or "
                            "three sizes >= 16")
    if s.size_2d % 16:
        raise SettingsError(f"p4 setting size_2d={s.size_2d!r}: must be a multiple of 16")
    if not all(v > 0 for v in s.spacing):
        raise SettingsError(f"p4 setting spacing={s.spacing!r}: three positive (z, y, x) mm")
    if any(v < 1 for v in s.pool_shape):
        raise SettingsError(f"p4 setting pool_shape={s.pool_shape!r}: three sizes (Z, H, W)")
    for name in ("lam", "pos_fraction"):
        if not 0.0 <= getattr(s, name) <= 1.0:
            raise SettingsError(f"p4 setting {name}={getattr(s, name)!r}: must lie in [0, 1]")
    for name in ("lr", "meta_lr"):
        if not getattr(s, name) > 0:
            raise SettingsError(f"p4 setting {name}={getattr(s, name)!r}: must be > 0")
    if not 0.0 <= s.overlap < 1.0:
        raise SettingsError(f"p4 setting overlap={s.overlap!r}: must lie in [0, 1)")
    if not s.folds or any(f < 0 for f in s.folds):
        raise SettingsError(f"p4 setting folds={s.folds!r}: a non-empty list of fold indices")


PROFILES: dict[str, P4Settings] = {
    # About two minutes of two cores for the P4 chapters: P4's network on 32^3 patches of
    # volumes resampled to 2.5x P4's spacing (8 x 4 x 4 mm); the teacher trains 120 steps and
    # every method fine-tunes it for 30 (lr 0.003: P4's 0.01 swings too much in so few steps;
    # RGS by the equivalent jvp form); fold 1 only; an 8-volume pool of 32 x 96 x 96
    # phantoms; the 2-D variant at 128 px with 64 of the 1600 pool slices.
    "cpu": P4Settings(
        lr=3e-3, spacing=(8.0, 4.0, 4.0), patch=(32, 32, 32), size_2d=128, teacher_steps=120,
        student_steps=30, init="teacher", rgs_method="jvp", folds=(0,), pool_size=8,
        pool_shape=(32, 96, 96), pool_2d=64, checkpoint_every=0, infer_roi=None),
    # The published reference run (about half an hour of one CPU core for the P4 chapters):
    # the cpu profile's data and network, the teacher trained 400 steps and every method
    # fine-tuning it for 100, on three folds (the folds are P4's repetitions), with 256 of
    # the 1600 pool slices in the 2-D variant.
    "reference": P4Settings(
        lr=3e-3, spacing=(8.0, 4.0, 4.0), patch=(32, 32, 32), size_2d=128, teacher_steps=400,
        student_steps=100, init="teacher", rgs_method="jvp", folds=(0, 1, 2), pool_size=8,
        pool_shape=(32, 96, 96), pool_2d=256, checkpoint_every=0, infer_roi=None),
    # One H100, about 7 minutes for the P4 chapters (an estimate: not yet measured on a GPU):
    # P4's spacing, 96^3 patches, batch 4, lambda 0.5, lr 0.01; the teacher trains 300
    # steps and every method fine-tunes it for 150 with Alg. 1 step by step; folds 1-2; a
    # 32-volume pool at the expert phantom's size; the 2-D variant at 352 px with all 1600
    # pool slices.
    "gpu": P4Settings(
        spacing=P4_SPACING, patch=(96, 96, 96), size_2d=352, teacher_steps=300,
        student_steps=150, init="teacher", rgs_method="meta", folds=(0, 1), pool_size=32,
        pool_shape=(48, 160, 160), pool_2d=1600, checkpoint_every=50, infer_roi=None),
    # P4's own settings (Sec. 4): 1.6 x 1.6 x 3.2 mm, 96^3, C_p = C_v = 4, lambda 0.5, Adam
    # 0.01, 500 epochs for each network, each trained from scratch: teacher 500 x 16 flipped
    # volumes / 4 = 2000 steps, student 500 x ceil(1473 pool volumes / 4) = 184,500 steps;
    # all 4 folds; a pool as large as P4's hospital data (1473 volumes); 96^3 sliding windows.
    "paper": P4Settings(
        spacing=P4_SPACING, patch=(96, 96, 96), size_2d=352, teacher_steps=2000,
        student_steps=184_500, init="scratch", rgs_method="meta", folds=(0, 1, 2, 3),
        pool_size=1473, pool_shape=(48, 160, 160), pool_2d=1600, checkpoint_every=500,
        infer_roi=(96, 96, 96)),
}
"""The profiles as data (:func:`settings` applies and validates overrides)."""


@dataclass(frozen=True)
class Diagnostics:
    """What the chapters measure beside P4's tables (issue 14): the held-out learning curve
    of the fully supervised baseline and the mechanism probe of the learned weights.

    ``curve_points``: evaluations of the baseline during training; ``curve_items``: held-out
    test slices (2-D) or volumes (3-D) scored at each, evenly chosen; ``converge_tol``: the
    baseline counts as converged when the mean held-out Dice of the last quarter of the
    curve is less than this above the quarter before; ``probe_batches``: pseudo-labelled
    batches whose weights the probe compares with the true quality of their labels.
    """

    curve_points: int = 8
    curve_items: int = 24
    converge_tol: float = 0.02
    probe_batches: int = 12

    def __post_init__(self) -> None:
        for name in ("curve_points", "curve_items", "probe_batches"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"p4 Diagnostics.{name}={v!r}: an integer >= 0")
        if not self.converge_tol > 0:
            raise ValueError(f"p4 Diagnostics.converge_tol={self.converge_tol!r}: must be > 0")


DIAGNOSTICS: dict[str, Diagnostics] = {
    "cpu": Diagnostics(curve_points=6, curve_items=24, probe_batches=12),
    "reference": Diagnostics(curve_points=10, curve_items=48, probe_batches=32),
    "gpu": Diagnostics(curve_points=10, curve_items=96, probe_batches=64),
    "paper": Diagnostics(curve_points=20, curve_items=400, probe_batches=256),
}
"""The diagnostics of each profile."""


def settings(profile: str, overrides: Mapping[str, Any] | None = None) -> P4Settings:
    """Profile ``profile`` with ``overrides`` (setting name -> value) applied and validated.

    Unknown profile or override key -> :class:`SettingsError` naming it and the valid ones;
    a bad value -> :class:`SettingsError` naming the setting and the value.
    """
    return from_profile(PROFILES, profile, overrides, "p4")


