"""P4 (Hussain et al.): active learning from a noisy teacher by example re-weighting.

The pipeline of P4 Fig. 1 / Sec. 2, run per fold and seed:

1. **Teacher** ``Phi_sl``: the residual U-Net of Table 1 trained fully supervised with the
   combo loss (Eq. 1) on the small expert set ``X_tr`` (Sec. 2.3).
2. **Pseudo-labels** ``Y_p = Phi_sl(X_p)`` for the unlabelled pool ``X_p``.
3. **Student** ``Phi_ssl`` trained on ``X_v`` and ``X_p`` by Alg. 1 (:mod:`covidlib.reweight`),
   in one of the modes of Tables 2-3: ``semi`` (uniform pseudo-labels: every pseudo-labelled
   example weighted ``1 / C_p``, the whole pool from the first step; P4's "Semi-supervised"
   row says it adopts Fan et al.'s strategy, but Inf-Net's progressive scheme, which adds
   the pool a few pseudo-labelled slices at a time, is NOT implemented here, so the row is
   named for what it is), ``rgs``, ``rgm``, ``rgsm``,
   ``rgs_al``, ``rgsm_al``; and the ``fully`` supervised baseline.
4. **Evaluation**: per test volume, Dice and Hausdorff distance (mm, at the original voxel
   grid and spacing; :func:`covidlib.metrics.hausdorff`), mean +- std per fold and the
   fold average as P4 Tables 2-3 print them.

Tables, verdicts and figures of the chapters are in :mod:`covidlib.experiments.p4_report`.

Data (:func:`fold_data`):

* ``synthetic`` (3-D, stands in for P4's "Benchmark" = Ma et al.): the manifest split
  ``p4-cv4`` is P4's protocol at patient level (Sec. 4: 16 / 48 / 16 flipped copies =
  4 / 12 / 4 patients): fixed ``train`` = ``X_tr`` (4 volumes), per fold ``val`` = ``X_v``
  (12) and ``test`` = ``X_t`` (4). P4 counts the four left-right / up-down flips of each
  volume as samples; we draw training patches with a random one of the four flips instead
  and test on the unflipped volumes. The unlabelled pool plays P4's "hospital" data: phantom
  volumes of new patients from two scanners none of the expert volumes come from
  (:data:`POOL_SITES`: thick slices like the hospital's 7 mm, other noise and contrast);
  their masks are never used for training, only to measure how noisy the pseudo-labels are.
* ``covid-semiseg`` (REAL, 2-D variant): the 50 expert training slices are split into
  ``X_tr`` (a quarter, rotating with the fold) and ``X_v`` (the rest), the 48 expert test
  slices are ``X_t``, and the 1600 unlabelled ``Pseudo-label/Imgs`` slices are the pool.
  Their provided "GT" is another model's output: it is used only as a second noisy teacher
  (``teacher="provided"``), never as truth.

* ``ma20-slices`` (REAL 2-D derivative of P4's "Benchmark"; ``dataset="auto"`` picks it when
  present, :func:`resolve_dataset`): the 10 Coronacases volumes of Ma et al. as stacks of
  8-bit slices; split ``p4-cv4`` by volume (2 teacher volumes, per fold 2 test / 6 ``X_v``);
  networks are 2-D and train on single slices, test volumes are segmented slice by slice and
  scored as volumes. The pool is COVID-SemiSeg's 1600 pseudo-labelled slices of the same 20
  volumes (a noisy teacher's outputs on the same dataset: P4's setting) WITHOUT the slices
  of the fold's test volumes (:func:`pool_case_ids`), so no test volume reaches training.
* ``ma-20`` / ``covid19-20`` (REAL 3-D, NIfTI in HU; gpu / paper profiles): P4's Benchmark
  (split ``p4-cv4``) and Challenge (``p4-cv5``, folds by the manifest's rule,
  :func:`kfold_lists`; the teacher learns from the Benchmark's ``X_tr`` as in P4's second
  experiment). P4's hospital pool is private: the phantom pool stands in for it.

Diagnostics (:class:`Diagnostics`, issue 14): the fully supervised run records a held-out
learning curve (monitoring only), and :func:`probe_weights` measures whether Alg. 1's weights
track the true quality of pseudo-labels on expert-labelled ``X_v`` items pseudo-labelled by
the teacher.

Choices where P4 is silent or ambiguous (stated in the chapters):

* ``fully`` trains on ``X_tr`` and ``X_v`` (every expert label of the fold that the students
  also see, directly or through the teacher).
* The students' update adds the mean loss of the expert batch (weight 1) to the re-weighted
  pseudo-label loss (``expert_term``; P4 Sec. 2.4 trains ``Phi_ssl`` on ``X_v`` and ``X_p``,
  Alg. 1 line 18 writes only the pseudo term: set ``expert_term=False`` for that reading).
  The expert batch of line 3 is drawn from ``X_v`` and serves both roles.
* Per-sample loss: Eq. 1 with the foreground Dice (:data:`covidlib.reweight.p4_loss`).
* Optimiser: Adam, learning rate 0.01 (Sec. 4; the cpu profile uses 0.003); the meta step
  of Alg. 1 line 8 is plain SGD (Eq. 3) of size ``meta_lr``, which only scales the RGS
  weights before their normalisation. All runs stop after a fixed number of steps (P4
  stops "if the training error was found to be saturated"; no validation-based model
  selection).
* Initialisation ``theta_0`` of Alg. 1 (not given by P4): ``init="teacher"`` fine-tunes
  the teacher ``Phi_sl`` for ``student_steps`` in every method, fully supervised included
  (the authors' public code has this option, "load pre-trained weights, if doing
  fine-tuning"); ``"scratch"`` trains each network from a fresh initialisation (the
  ``paper`` profile). Warm starts keep the cpu and gpu budgets: the shared teacher does the
  expensive learning once and the methods differ only in how they use the pool.
* Patches: random crops of ``patch`` voxels, half of them centred on a (pseudo-)labelled
  voxel when there is one; test and pool volumes are segmented in one pass (cpu, gpu) or
  by sliding windows of ``infer_roi`` (paper).
* Scores: test cases without infection have no Dice or Hausdorff distance worth the name
  and are left out of the tables (their rows are kept in :attr:`P4Results.frame`); an
  empty prediction of an infected case has an undefined Hausdorff distance, left out of
  the HD mean and counted.
"""

from __future__ import annotations

import base64
import contextlib
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from covidlib import reweight as rw
from covidlib.cache import ResultCache, config_hash
from covidlib.data.api import Dataset, open_dataset
from covidlib.data.augment import crop_padded, flip_lr_ud
from covidlib.data.errors import DataError
from covidlib.data.ma20 import pool_cases_outside, semiseg_pool_volume
from covidlib.data.manifest import natural_key
from covidlib.data.phantom import PhantomConfig, SiteProfile, generate_case
from covidlib.data.preprocess import (
    LUNG_WINDOW,
    hu_to_unit,
    resample_volume,
    resize_image,
    resize_mask,
)
from covidlib.data.readers import iter_cases, read_slice_image
from covidlib.data.splits import make_split
from covidlib.data.types import Case
from covidlib.engine import amp_settings, atomic_save, autocast, resolve_device, set_determinism
from covidlib.experiments.typed_settings import SettingsError, check_fields, from_profile
from covidlib.metrics import confusion, hausdorff, scores, surface_distances
from covidlib.models import resunet2d_p4, resunet3d_p4

__all__ = [
    "AUTO_BENCHMARK",
    "DATASETS",
    "DIAGNOSTICS",
    "METHODS",
    "METHOD_LABELS",
    "P4_SPACING",
    "PAPER_NAMES",
    "POOL_SITES",
    "POOL_SITE_NAMES",
    "PROFILES",
    "TABLE2_METHODS",
    "TABLE3_METHODS",
    "Diagnostics",
    "FoldData",
    "Item",
    "P4Results",
    "P4Settings",
    "SettingsError",
    "TestItem",
    "curve_items",
    "decode_mask",
    "encode_mask",
    "evaluate",
    "fold_data",
    "kfold_lists",
    "make_model",
    "monitor_dice",
    "open_pool_dataset",
    "open_sibling",
    "pool_case_ids",
    "pool_volume",
    "predict_foreground",
    "predict_slices",
    "probe_split",
    "probe_weights",
    "resolve_dataset",
    "run",
    "sample_patch",
    "settings",
    "train_student",
    "train_supervised",
]

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
    "gpu": Diagnostics(curve_points=10, curve_items=96, probe_batches=64),
    "paper": Diagnostics(curve_points=20, curve_items=400, probe_batches=256),
}
"""The diagnostics of each profile."""


def settings(profile: str, overrides: P4Settings | None = None) -> P4Settings:
    """Profile ``profile`` with ``overrides`` (setting name -> value) applied and validated.

    Unknown profile or override key -> :class:`SettingsError` naming it and the valid ones;
    a bad value -> :class:`SettingsError` naming the setting and the value.
    """
    return from_profile(PROFILES, profile, overrides, "p4")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One training or test sample at the working resolution.

    ``image``: float32 in [0, 1], ``(D, H, W)`` or ``(H, W)``; ``label``: uint8 {0, 1}
    expert infection mask (None for the pool); ``pseudo``: the teacher's labels (pool);
    ``truth``: the pool's hidden mask (synthetic only; diagnostics, never trained on);
    ``provided``: the pool's provided noisy-teacher labels (COVID-SemiSeg).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None = None
    pseudo: np.ndarray | None = None
    truth: np.ndarray | None = None
    provided: np.ndarray | None = None
    site: str | None = None
    volume: str | None = None  # the volume a 2-D slice comes from (None: its own case)
    _fg: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def foreground(self, key: str) -> np.ndarray:
        """Flat indices of the voxels where ``getattr(self, key)`` is set (memoised)."""
        if key not in self._fg:
            arr = getattr(self, key)
            self._fg[key] = np.flatnonzero(arr) if arr is not None else np.zeros(0, np.int64)
        return self._fg[key]


@dataclass
class TestItem:
    """A test case: its working-resolution :class:`Item` plus the original-grid truth."""

    item: Item
    mask: np.ndarray  # bool, original grid
    spacing: tuple[float, ...] | None  # mm per axis of ``mask``; None = pixels (8-bit slices)
    case: Case
    slices: bool = False  # a stack of 2-D slices, segmented slice by slice, scored as a volume


@dataclass
class FoldData:
    """Everything one fold needs: ``X_tr``, ``X_v``, ``X_t`` and the pool ``X_p``."""

    dims: int
    train: list[Item]
    val: list[Item]
    test: list[TestItem]
    pool: list[Item]


def _infection(case: Case) -> np.ndarray:
    if case.mask is None:
        raise ValueError(f"case {case.case_id}: no infection mask (expert labels needed)")
    labels = case.meta.get("infection_labels")
    if labels:
        return np.isin(case.mask, list(labels))
    return case.mask > 0


def _prepare_3d(case: Case, s: P4Settings, with_label: bool = True) -> Item:
    image = resample_volume(hu_to_unit(case.image, s.window), case.spacing, s.spacing)
    label = None
    if with_label:
        label = resample_volume(_infection(case).astype(np.uint8), case.spacing, s.spacing,
                                kind="mask")
    return Item(case.case_id, image, label=label, site=case.site)


def _prepare_2d(case: Case, size: int, with_label: bool = True) -> Item:
    if case.image.shape[0] != 1:
        raise ValueError(f"case {case.case_id}: the 2-D variant needs single slices, got "
                         f"{case.image.shape[0]} slices")
    return _slice_item(case, 0, size, with_label, case.case_id)


def _slice_item(case: Case, z: int, size: int, with_label: bool = True,
                item_id: str | None = None) -> Item:
    """Slice ``z`` of ``case`` at ``size`` px in [0, 1] (HU through the lung window)."""
    img = case.image[z].astype(np.float32)
    if case.intensity == "hu":
        img = hu_to_unit(img, LUNG_WINDOW) * 255.0
    image = resize_image(img, size) / np.float32(255.0)
    label = None
    if with_label:
        label = resize_mask(_infection(case)[z].astype(np.uint8), size)
    return Item(item_id or f"{case.case_id}:{z}", image.astype(np.float32), label=label,
                site=case.site, volume=case.case_id)


def _stack_item(case: Case, size: int) -> TestItem:
    """A test volume stored as 2-D slices: every slice at ``size`` px, scored as a volume
    against the expert mask at the original grid (spacing unknown: pixels)."""
    parts = [_slice_item(case, z, size) for z in range(case.n_slices)]
    item = Item(case.case_id, np.stack([p.image for p in parts]),
                label=np.stack([p.label for p in parts]), site=case.site, volume=case.case_id)
    return TestItem(item, _infection(case), None, case, slices=True)


def _case_ids_of(refs: Sequence[tuple[str, int]]) -> list[str]:
    return list(dict.fromkeys(cid for cid, _ in refs))


def _split_2d(train_ids: Sequence[str], fold: int) -> tuple[list[str], list[str]]:
    """``(X_tr, X_v)`` of the 2-D variant: a fixed permutation (``default_rng(0)``) of the
    naturally sorted expert training slices cut in four; fold ``f`` trains the teacher on
    quarter ``f`` (P4's 16 : 48 ratio) and validates on the other three."""
    ids = sorted(train_ids, key=natural_key)
    perm = [ids[i] for i in np.random.default_rng(0).permutation(len(ids))]
    quarters = np.array_split(np.arange(len(ids)), 4)
    if not 0 <= fold < 4:
        raise ValueError(f"fold={fold}: the 2-D variant has folds 0..3")
    tr = [perm[i] for i in quarters[fold]]
    return tr, [c for c in perm if c not in set(tr)]


def _pool_config(s: P4Settings) -> PhantomConfig:
    n = int(s.pool_size)
    return PhantomConfig(n_cases=n, shape=tuple(s.pool_shape), n_sites=len(POOL_SITES),
                         sites=POOL_SITES, cases_per_site=math.ceil(n / len(POOL_SITES)),
                         seed=POOL_SEED)


def _npz_cached(path: Path, compute: Any) -> dict[str, np.ndarray]:
    """Arrays stored at ``path`` (written atomically), computed by ``compute()`` if absent."""
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    arrays = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return arrays


def _phantom_pool(s: P4Settings, store: Path, progress: bool) -> list[Item]:
    cfg = _pool_config(s)
    key = config_hash({"version": VERSION, "pool": cfg.to_dict(), "spacing": s.spacing,
                       "window": s.window})
    items = []
    for i in tqdm(range(cfg.n_cases), desc="p4 pool (other sites)", disable=not progress,
                  leave=False):
        def make(i: int = i) -> dict[str, np.ndarray]:
            case = generate_case(cfg, i)
            it = _prepare_3d(case, s)
            return {"image": it.image, "truth": it.label, "site": np.array(case.site)}

        arr = _npz_cached(store / f"pool-{key}" / f"pool_{i:04d}.npz", make)
        site = POOL_SITE_NAMES[int(str(arr["site"]).removeprefix("site"))]
        items.append(Item(f"pool_{i:04d}", arr["image"], truth=arr["truth"], site=site))
    return items


def pool_volume(case_id: str) -> str | None:
    """The ``ma20-slices`` volume a COVID-SemiSeg pseudo-label slice comes from
    (:func:`covidlib.data.ma20.semiseg_pool_volume`; None for the Radiopaedia volumes)."""
    return semiseg_pool_volume(case_id)


def pool_case_ids(ids: Sequence[str], held_out: Iterable[str]) -> list[str]:
    """The pool slices that may be trained on: every id whose volume is not a held-out
    (test-fold) volume (:func:`covidlib.data.ma20.pool_cases_outside`), so no test volume
    leaks into the pool."""
    return pool_cases_outside(ids, held_out)


def _semiseg_pool(ds: Dataset, s: P4Settings, progress: bool,
                  held_out: Iterable[str] = ()) -> list[Item]:
    group = next(g for g in ds.manifest.layout.groups if g.name == "pseudo-label")
    ids = pool_case_ids(sorted(group.cases or (), key=natural_key), held_out)
    if not ids:
        raise ValueError(f"{ds.name}: the pseudo-label group lists no usable cases")
    n = min(int(s.pool_2d), len(ids))
    pick = [ids[int(i)] for i in np.linspace(0, len(ids) - 1, n).round().astype(int)]
    items = []
    for case in iter_cases(ds.manifest, ds.root, "pseudo-label", pick, progress=progress):
        it = _prepare_2d(case, int(s.size_2d), with_label=False)
        it.volume = pool_volume(case.case_id)
        path = case.meta.get("teacher_path")
        if path is None:
            raise ValueError(f"{case.case_id}: pool slice without its provided teacher map")
        soft = read_slice_image(path, "mask").astype(np.float32)  # 0..255 soft prediction
        it.provided = (resize_image(soft, int(s.size_2d)) >= 127.5).astype(np.uint8)
        items.append(it)
    return items


def open_sibling(name: str, ds: Dataset) -> Dataset:
    """Dataset ``name`` next to ``ds`` (same data root) when it is there, else anywhere on
    the data search path."""
    try:
        return open_dataset(name, ds.root.parent, generate=False)
    except DataError:
        return open_dataset(name, generate=False)


def open_pool_dataset(ds: Dataset) -> Dataset:
    """COVID-SemiSeg, whose pseudo-labelled slices are the pool of ``ma20-slices``."""
    return open_sibling("covid-semiseg", ds)


def kfold_lists(ids: Sequence[str], k: int, seed: int, fold: int) -> dict[str, list[str]]:
    """Fold ``fold`` of a k-fold split whose ids are globbed (``covid19-20``'s ``p4-cv5``):
    ids in natural order, ``perm = default_rng(seed).permutation(n)``, test folds
    ``np.array_split(perm, k)``, every other id ``val`` (the manifest's rule)."""
    if not 0 <= fold < k:
        raise ValueError(f"fold={fold}: a {k}-fold split has folds 0..{k - 1}")
    order = sorted(ids, key=natural_key)
    if len(order) < k:
        raise ValueError(f"k-fold split: {len(order)} cases for {k} folds")
    perm = np.random.default_rng(seed).permutation(len(order))
    test = {order[i] for i in np.array_split(perm, k)[fold]}
    return {"train": [], "val": [c for c in order if c not in test],
            "test": [c for c in order if c in test]}


def _teacher_volumes(spec: Mapping[str, Any], ds: Dataset, s: P4Settings
                     ) -> list[Item] | None:
    """``X_tr`` from another dataset (P4 Sec. 4, experiment 2: the Challenge students use
    the Benchmark teacher's pseudo-labels), or None."""
    name = spec.get("teacher_data")
    if name is None:
        return None
    tds = open_sibling(name, ds)
    tcases = {c.case_id: c for c in tds.cases()}
    train = tds.manifest.split(DATASETS[name]["split"]).train
    return [_prepare_3d(tcases[c], s) for c in train]


def _stacks_fold(ds: Dataset, fold: int, s: P4Settings, progress: bool) -> FoldData:
    """``ma20-slices``: the split's volumes as slices (``X_tr``, ``X_v``), whole test volumes
    (``X_t``) and COVID-SemiSeg's pseudo-labelled slices without the test volumes' own."""
    spec = DATASETS[ds.name]
    cases = {c.case_id: c for c in ds.cases()}
    parts = _fold_parts(ds, cases, spec["split"], fold)
    size = int(s.size_2d)
    train, val = ([_slice_item(cases[c], z, size) for c, z in parts[p]] for p in ("train", "val"))
    test_ids = _case_ids_of(parts["test"])
    test = [_stack_item(cases[c], size) for c in test_ids]
    pool = _semiseg_pool(open_pool_dataset(ds), s, progress, held_out=test_ids)
    return FoldData(2, train, val, test, pool)


def _fold_parts(ds: Dataset, cases: Mapping[str, Case], split_name: str, fold: int
                ) -> dict[str, list[tuple[str, int]]]:
    split = ds.manifest.split(split_name)
    n_folds = len(_get_folds(split))
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold={fold}: split {split_name!r} of {ds.name} has folds "
                         f"0..{n_folds - 1}")
    return make_split(cases, split, fold=fold)


def _get_folds(split: Any) -> Sequence[Any]:
    folds = split.get("folds") if isinstance(split, Mapping) else getattr(split, "folds", None)
    return folds or ()


def fold_data(ds: Dataset, fold: int, s: P4Settings, store: Path,
              progress: bool = True) -> FoldData:
    """``X_tr``, ``X_v``, ``X_t`` of ``fold`` and the pool ``X_p``, prepared for training."""
    spec = DATASETS.get(ds.name)
    if spec is None:
        raise ValueError(f"p4: dataset {ds.name!r} is not supported; choose one of "
                         f"{sorted(DATASETS)} (P4's Benchmark/hospital pair is not available)")
    if spec.get("stacks"):
        return _stacks_fold(ds, fold, s, progress)
    if spec["dims"] == 3:
        cases = {c.case_id: c for c in ds.cases()}
        split = ds.manifest.split(spec["split"])
        if split.folds:
            parts = _fold_parts(ds, cases, spec["split"], fold)
            ids = {p: _case_ids_of(parts[p]) for p in ("train", "val", "test")}
        else:
            ids = kfold_lists(list(cases), int(split.k or 0), int(split.seed or 0), fold)
        train = _teacher_volumes(spec, ds, s)
        if train is None:
            train = [_prepare_3d(cases[c], s) for c in ids["train"]]
        if not train:
            raise ValueError(f"{ds.name}: split {spec['split']!r} gives the teacher no "
                             "training volumes")
        val = [_prepare_3d(cases[c], s) for c in ids["val"]]
        test = [TestItem(_prepare_3d(cases[c], s), _infection(cases[c]),
                         tuple(float(v) for v in cases[c].spacing), cases[c])
                for c in ids["test"]]
        pool = _phantom_pool(s, store, progress)
        return FoldData(3, train, val, test, pool)
    size = int(s.size_2d)
    train_cases = {c.case_id: c for c in ds.cases("train")}
    tr, va = _split_2d(list(train_cases), fold)
    test_cases = ds.cases("test")
    return FoldData(
        2,
        [_prepare_2d(train_cases[c], size) for c in tr],
        [_prepare_2d(train_cases[c], size) for c in va],
        [TestItem(_prepare_2d(c, size), _infection(c)[0], None, c) for c in test_cases],
        _semiseg_pool(ds, s, progress),
    )


# --------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------


def sample_patch(item: Item, patch: Sequence[int], rng: np.random.Generator,
                 label_key: str, pos_fraction: float = 0.5, flip: bool = False,
                 extra: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """A random crop of ``patch`` voxels from ``item`` (zero-padded when smaller).

    With probability ``pos_fraction`` the crop is centred on a random voxel of
    ``item.<label_key>`` (when it has any), otherwise anywhere. ``flip``: one of the four
    left-right / up-down flips (P4 Sec. 4), applied to every returned array. Returns
    ``image`` (float32), ``label`` (int64 from ``label_key``) and the ``extra`` arrays.
    """
    shape = item.image.shape
    if len(patch) != len(shape):
        raise ValueError(f"sample_patch: patch {tuple(patch)} for a {len(shape)}-D item")
    label = getattr(item, label_key)
    if label is None:
        raise ValueError(f"sample_patch: item {item.case_id} has no {label_key!r} labels")
    fg = item.foreground(label_key)
    if fg.size and rng.random() < pos_fraction:
        centre = np.unravel_index(int(fg[rng.integers(fg.size)]), shape)
        start = [int(c) - p // 2 for c, p in zip(centre, patch, strict=True)]
    else:
        start = [int(rng.integers(0, max(n - p, 0) + 1)) for n, p in zip(shape, patch,
                                                                           strict=True)]
    start = [min(max(st, 0), max(n - p, 0)) for st, n, p in zip(start, shape, patch,
                                                                 strict=True)]
    code = int(rng.integers(4)) if flip else 0

    def crop(arr: np.ndarray, dtype: Any) -> np.ndarray:
        part = np.asarray(crop_padded(arr, start, patch), dtype=dtype)
        return np.ascontiguousarray(flip_lr_ud(part, code))

    out = {"image": crop(item.image, np.float32), "label": crop(label, np.int64)}
    for key in extra:
        arr = getattr(item, key)
        if arr is not None:
            out[key] = crop(arr, np.int64)
    return out


def _batch(items: Sequence[Item], n: int, patch: Sequence[int], rng: np.random.Generator,
           label_key: str, pos_fraction: float, flip: bool, extra: Sequence[str] = ()
           ) -> dict[str, Any]:
    picks = rng.choice(len(items), size=n, replace=len(items) < n)
    parts = [sample_patch(items[int(i)], patch, rng, label_key, pos_fraction, flip, extra)
             for i in picks]
    out: dict[str, Any] = {
        "image": torch.from_numpy(np.stack([p["image"] for p in parts]))[:, None],
        "label": torch.from_numpy(np.stack([p["label"] for p in parts])),
        "ids": [items[int(i)].case_id for i in picks],
    }
    for key in extra:
        if all(key in p for p in parts):
            out[key] = np.stack([p[key] for p in parts])
    return out


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def make_model(dims: int) -> nn.Module:
    """P4's residual U-Net: :func:`covidlib.models.resunet3d_p4` (3-D) or
    :func:`resunet2d_p4` (the 2-D variant)."""
    if dims == 3:
        return resunet3d_p4()
    if dims == 2:
        return resunet2d_p4()
    raise ValueError(f"make_model: dims={dims!r} must be 2 or 3")


def _optimizer(model: nn.Module, s: P4Settings) -> torch.optim.Optimizer:
    if s.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=float(s.lr))
    return torch.optim.SGD(model.parameters(), lr=float(s.lr))  # Eq. 9 read literally


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *[int(v) for v in stream]])


def _patch_shape(dims: int, s: P4Settings) -> list[int]:
    return list(s.patch) if dims == 3 else [int(s.size_2d)] * 2


def _keep_steps(steps: int, n: int) -> set[int]:
    return set(np.linspace(0, steps - 1, min(steps, n)).round().astype(int).tolist())


@contextlib.contextmanager
def _checkpointing(path: Path | None, every: int, model: nn.Module,
                   opt: torch.optim.Optimizer, history: dict[str, list]) -> Iterator[Any]:
    """Resume from ``path`` if it exists; yields ``save(step)``; deletes it at the end."""
    start = 0
    if path is not None and every and path.exists():
        ck = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        history.update(ck["history"])
        start = int(ck["step"])

    def save(step: int) -> None:
        if path is not None and every and step % every == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "history": history, "step": step}, path)

    yield start, save
    if path is not None and path.exists():
        path.unlink()


def monitor_dice(model: nn.Module, items: Sequence[Item], s: P4Settings,
                 device: torch.device) -> float:
    """Dice of the summed confusion over ``items`` (labels at the working resolution); the
    model is left in training mode."""
    if items and all(it.image.ndim == 2 and it.image.shape == items[0].image.shape
                     for it in items):
        preds = predict_slices(model, [it.image for it in items], s, device) > 0.5
    else:
        preds = [predict_foreground(model, it.image, s, device) > 0.5 for it in items]
    conf = sum(confusion(p, it.label > 0) for p, it in zip(preds, items, strict=True))
    model.train()
    return float(scores(conf)["dice"])


def curve_items(test: Sequence[TestItem], n: int) -> list[Item]:
    """Up to ``n`` held-out items for the learning curve, evenly spread: slices of the test
    stacks (2-D volumes stored as slices) or the test items themselves."""
    pool: list[Item] = []
    for t in test:
        if t.slices:
            pool += [Item(f"{t.item.case_id}:{z}", t.item.image[z], label=t.item.label[z])
                     for z in range(t.item.image.shape[0])]
        else:
            pool.append(t.item)
    if n <= 0 or not pool:
        return []
    idx = np.unique(np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(int))
    return [pool[i] for i in idx]


def train_supervised(model: nn.Module, items: Sequence[Item], s: P4Settings, steps: int,
                     seed: int, dims: int, device: torch.device, *, stream: int = 0,
                     checkpoint: Path | None = None, desc: str = "train",
                     progress: bool = True, monitor: Sequence[Item] = (),
                     monitor_points: int = 0) -> dict[str, list]:
    """Combo-loss training on expert items (the teacher ``Phi_sl`` and ``fully``): Adam,
    ``steps`` mini-batches of ``batch`` flipped patches (P4 Sec. 2.3, 4). With ``monitor``
    items, their Dice is measured after ``monitor_points`` evenly spaced steps (the learning
    curve of ``curve_step`` / ``curve_dice``; never used to choose a model)."""
    model.to(device).train()
    opt = _optimizer(model, s)
    dtype, _ = amp_settings(device, dims)
    history: dict[str, list] = {"step": [], "loss": []}
    at = set()
    if monitor and monitor_points > 0:
        history.update(curve_step=[], curve_dice=[])
        at = set(np.linspace(0, steps, monitor_points + 1)[1:].round().astype(int).tolist())
    keep = _keep_steps(steps, int(s.history_max))
    patch = _patch_shape(dims, s)
    with _checkpointing(checkpoint, int(s.checkpoint_every), model, opt, history) as (
            start, save):
        for step in tqdm(range(start, steps), desc=desc, disable=not progress, leave=False):
            b = _batch(items, int(s.batch), patch, _rng(seed, stream, step), "label",
                       float(s.pos_fraction), flip=True)
            opt.zero_grad(set_to_none=True)
            with autocast(device, dtype):
                loss = rw.p4_loss(model(b["image"].to(device)), b["label"].to(device)).mean()
            loss.backward()
            opt.step()
            if step in keep:
                history["step"].append(step)
                history["loss"].append(float(loss.detach()))
            if step + 1 in at:
                history["curve_step"].append(step + 1)
                history["curve_dice"].append(monitor_dice(model, monitor, s, device))
            save(step + 1)
    return history


def _patch_quality(pseudo: np.ndarray, truth: np.ndarray) -> list[float]:
    """Dice of each pseudo-label patch against the hidden truth (1 voxel smoothing)."""
    out = []
    for p, t in zip(pseudo, truth, strict=True):
        p, t = p > 0, t > 0
        out.append(float((2 * (p & t).sum() + 1) / (p.sum() + t.sum() + 1)))
    return out


def train_student(model: nn.Module, mode: str, val: Sequence[Item], pool: Sequence[Item],
                  s: P4Settings, seed: int, dims: int, device: torch.device, *,
                  stream: int = 1, checkpoint: Path | None = None, desc: str = "student",
                  progress: bool = True) -> dict[str, list]:
    """``Phi_ssl`` by Alg. 1: per step a pseudo batch from ``pool`` (labels ``pseudo``) and
    an expert batch from ``val`` (``X_v``); weights by ``mode`` (:data:`reweight.MODES`),
    update by Eq. 9 (plus the expert batch's mean loss when ``expert_term``)."""
    lam, rectify = rw.mode_settings(mode, float(s.lam))
    model.to(device).train()
    opt = _optimizer(model, s)
    dtype, _ = amp_settings(device, dims)
    history: dict[str, list] = {"step": [], "loss": [], "w_star": [], "w_com": [],
                                "quality": []}
    keep = _keep_steps(steps := int(s.student_steps), int(s.history_max))
    patch = _patch_shape(dims, s)
    n = int(s.batch)
    has_truth = all(it.truth is not None for it in pool)
    with _checkpointing(checkpoint, int(s.checkpoint_every), model, opt, history) as (
            start, save):
        for step in tqdm(range(start, steps), desc=desc, disable=not progress, leave=False):
            rng = _rng(seed, stream, step)
            bp = _batch(pool, n, patch, rng, "pseudo", float(s.pos_fraction), flip=False,
                        extra=("truth",) if has_truth else ())
            bv = _batch(val, n, patch, rng, "label", float(s.pos_fraction), flip=True)
            x_p, y_p = bp["image"].to(device), bp["label"].to(device)
            x_v, y_v = bv["image"].to(device), bv["label"].to(device)
            with autocast(device, dtype):
                res = rw.compute_weights(model, x_p, y_p, x_v, y_v, lam=lam, rectify=rectify,
                                         alpha=float(s.meta_lr), norm=s.gem_norm,
                                         rgs_method=s.rgs_method)
                parts = rw.weighted_update(
                    model, opt, x_p, y_p, res.w_star,
                    x_e=x_v if s.expert_term else None,
                    y_e=y_v if s.expert_term else None)
            if step in keep:
                history["step"].append(step)
                history["loss"].append(parts["loss"])
                history["w_star"].append([float(v) for v in res.w_star.cpu()])
                history["w_com"].append([float(v) for v in res.w_com.cpu()])
                if has_truth:
                    history["quality"].append(_patch_quality(bp["label"].numpy(), bp["truth"]))
            save(step + 1)
    return history


# --------------------------------------------------------------------------------------------
# Inference and evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def predict_foreground(model: nn.Module, image: np.ndarray, s: P4Settings,
                       device: torch.device) -> np.ndarray:
    """Foreground probability map of one item at the working resolution: sliding windows
    of ``infer_roi`` with ``overlap`` (3-D), or the whole volume / slice in one pass when
    ``infer_roi`` is None (the network is fully convolutional; batch norm uses its running
    statistics)."""
    from monai.inferers import sliding_window_inference

    model.to(device).eval()
    dims = image.ndim
    dtype, _ = amp_settings(device, dims)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    with autocast(device, dtype):
        if dims == 3 and s.infer_roi is not None:
            logits = sliding_window_inference(x, tuple(s.infer_roi), int(s.batch),
                                              model, overlap=float(s.overlap))
        else:  # the whole volume / slice at once, zero-padded to a multiple of 16
            pad = [(-n) % 16 for n in x.shape[2:]]
            flat = [v for p in reversed(pad) for v in (0, p)]
            logits = model(F.pad(x, flat))[(..., *[slice(0, n) for n in x.shape[2:]])]
    return F.softmax(logits.float(), dim=1)[0, 1].cpu().numpy()


@torch.no_grad()
def predict_slices(model: nn.Module, images: Sequence[np.ndarray] | np.ndarray,
                   s: P4Settings, device: torch.device, chunk: int = 16) -> np.ndarray:
    """Foreground probabilities of equally sized 2-D slices ``(N, H, W)``, ``chunk`` slices
    per forward pass (batch norm in eval mode: each slice independent of the others)."""
    stack = np.asarray(images, dtype=np.float32)
    if stack.ndim != 3:
        raise ValueError(f"predict_slices: expected (N, H, W) slices, got {stack.shape}")
    model.to(device).eval()
    dtype, _ = amp_settings(device, 2)
    out = []
    for i in range(0, stack.shape[0], chunk):
        x = torch.from_numpy(np.ascontiguousarray(stack[i:i + chunk]))[:, None].to(device)
        pad = [(-n) % 16 for n in x.shape[2:]]
        with autocast(device, dtype):
            logits = model(F.pad(x, [0, pad[1], 0, pad[0]]))[..., :x.shape[2], :x.shape[3]]
        out.append(F.softmax(logits.float(), dim=1)[:, 1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *stack.shape[1:]), np.float32)


def _to_original(prob: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(prob))[None, None]
    mode = "trilinear" if prob.ndim == 3 else "bilinear"
    return F.interpolate(t, size=tuple(shape), mode=mode, align_corners=False)[0, 0].numpy()


def encode_mask(mask: np.ndarray) -> str:
    """A boolean 2-D mask as base64 of its packed bits (row-major)."""
    return base64.b64encode(np.packbits(np.asarray(mask, dtype=bool).ravel())).decode("ascii")


def decode_mask(text: str, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`encode_mask`."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))
    n = int(shape[0]) * int(shape[1])
    if bits.size < n or bits.size - n >= 8:
        raise ValueError(f"decode_mask: {bits.size} bits do not hold a mask of shape "
                         f"{tuple(shape)}")
    return bits[:n].reshape(tuple(int(v) for v in shape)).astype(bool)


def _figure_slice(mask: np.ndarray) -> int | None:
    """Axial slice with the most infection (3-D), None for a 2-D mask."""
    return int(mask.reshape(mask.shape[0], -1).sum(1).argmax()) if mask.ndim == 3 else None


def figure_cases(test: Sequence[TestItem], n: int) -> list[str]:
    """Up to ``n`` infected test cases for the qualitative figures: all of them when few,
    else evenly spread over the infected-area quantiles (small to large lesions)."""
    infected = [t for t in test if t.mask.any()]
    order = sorted(infected, key=lambda t: (float(t.mask.mean()), t.item.case_id))
    if len(order) <= n:
        return [t.item.case_id for t in order]
    idx = np.linspace(0, len(order) - 1, n).round().astype(int)
    return [order[i].item.case_id for i in idx]


def _nan_none(v: float) -> float | None:
    return None if not math.isfinite(v) else float(v)


def _hausdorff(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None
               ) -> tuple[float, float]:
    """``(HD, HD95)`` in mm (pixels without spacing) from one distance computation, with the
    conventions of :func:`covidlib.metrics.hausdorff` (both empty 0, one empty inf)."""
    if not pred.any() or not truth.any():
        v = hausdorff(pred, truth, spacing)
        return v, v
    d_pt, d_tp = surface_distances(pred, truth, spacing)
    return (float(max(d_pt.max(), d_tp.max())),
            float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))))


def evaluate(model: nn.Module, test: Sequence[TestItem], s: P4Settings,
             device: torch.device, figure_ids: Sequence[str] = ()) -> dict[str, Any]:
    """Dice and Hausdorff distance per test case at its original grid and spacing (P4
    Tables 2-3), plus the predicted masks of the figure slices."""
    rows, figure = [], {}
    for t in test:
        if t.slices:
            prob = predict_slices(model, t.item.image, s, device)
        else:
            prob = predict_foreground(model, t.item.image, s, device)
        prob = _to_original(prob, t.mask.shape)
        pred = prob > 0.5
        sc = scores(confusion(pred, t.mask))
        hd, hd95 = _hausdorff(pred, t.mask, t.spacing)
        rows.append({"case_id": t.item.case_id, "dice": float(sc["dice"]),
                     "hd": _nan_none(hd), "hd95": _nan_none(hd95),
                     "empty_truth": not bool(t.mask.any()), "empty_pred": not bool(pred.any()),
                     "pred_voxels": int(pred.sum()), "true_voxels": int(t.mask.sum())})
        if t.item.case_id in figure_ids:
            z = _figure_slice(t.mask)
            sl = pred[z] if z is not None else pred
            figure[t.item.case_id] = {"z": z, "shape": list(sl.shape),
                                      "mask": encode_mask(sl)}
    return {"cases": rows, "figure": figure}


# --------------------------------------------------------------------------------------------
# Mechanism probe (issue 14): do the weights track the true quality of the pseudo-labels?
# --------------------------------------------------------------------------------------------


def probe_split(items: Sequence[Item]) -> tuple[list[Item], list[Item]]:
    """``(probe, expert)``: the expert-labelled items of ``X_v`` split by volume (naturally
    sorted volumes alternate: 1st, 3rd, ... probe; 2nd, 4th, ... expert), so that no probe
    example shares a volume with the expert batches."""
    vols = sorted({it.volume or it.case_id for it in items}, key=natural_key)
    if len(vols) < 2:
        raise ValueError(f"probe_split: {len(vols)} volume(s) in X_v; the probe needs two")
    probe = set(vols[0::2])
    return ([it for it in items if (it.volume or it.case_id) in probe],
            [it for it in items if (it.volume or it.case_id) not in probe])


def probe_weights(model: nn.Module, val: Sequence[Item], s: P4Settings, n_batches: int,
                  seed: int, dims: int, device: torch.device) -> dict[str, Any]:
    """The weights of Alg. 1 (RGS, RGM, RGS&M, and the rectified RGS+AL, RGS&M+AL) at the
    model's parameters, without updates, for ``n_batches`` pseudo-labelled batches whose
    true quality is known: expert-labelled items of the probe half of ``X_v``
    (:func:`probe_split`), pseudo-labelled by ``model`` (the teacher), with expert batches
    from the other half. Returns the weights and each example's true quality
    (:func:`covidlib.reweight.example_dice`), one list entry per example."""
    probe, expert = probe_split(val)
    n = int(s.batch)
    rng = _rng(seed, 7)
    pick = rng.choice(len(probe), size=n * n_batches, replace=len(probe) < n * n_batches)
    patch = _patch_shape(dims, s)
    labelled: dict[int, Item] = {}
    batches, quality = [], []
    for b in range(n_batches):
        parts = []
        for i in pick[b * n:(b + 1) * n]:
            i = int(i)
            if i not in labelled:
                it = probe[i]
                pseudo = (predict_foreground(model, it.image, s, device) > 0.5).astype(np.uint8)
                labelled[i] = Item(it.case_id, it.image, pseudo=pseudo, truth=it.label,
                                   volume=it.volume)
            parts.append(sample_patch(labelled[i], patch, rng, "pseudo",
                                      float(s.pos_fraction), extra=("truth",)))
        bv = _batch(expert, n, patch, rng, "label", float(s.pos_fraction), flip=True)
        x_p = torch.from_numpy(np.stack([p["image"] for p in parts]))[:, None].to(device)
        y_p = torch.from_numpy(np.stack([p["label"] for p in parts])).to(device)
        quality += rw.example_dice(y_p.cpu().numpy(),
                                   np.stack([p["truth"] for p in parts])).tolist()
        batches.append((x_p, y_p, bv["image"].to(device), bv["label"].to(device)))
    model.to(device).train()
    w = rw.weights_on_batches(model, batches, lam=float(s.lam), alpha=float(s.meta_lr),
                              norm=s.gem_norm, rgs_method=s.rgs_method)
    return {"quality": quality, **{k: v.tolist() for k, v in w.items()},
            "n_probe_volumes": len({it.volume or it.case_id for it in probe})}


# --------------------------------------------------------------------------------------------
# Cached runs
# --------------------------------------------------------------------------------------------



_DATA_KEYS = ("spacing", "patch", "size_2d", "window", "pool_size", "pool_shape", "pool_2d",
              "infer_roi")
_TRAIN_KEYS = ("batch", "lr", "optimizer", "pos_fraction")
_STUDENT_KEYS = ("lam", "meta_lr", "expert_term", "gem_norm", "rgs_method")


def _teacher_config(ds: Dataset, s: P4Settings, fold: int, seed: int, teacher: str
                    ) -> dict[str, Any]:
    return {"version": VERSION, "kind": "teacher", "data": ds.fingerprint(),
            "split": DATASETS[ds.name]["split"], "fold": fold, "seed": seed,
            "teacher_data": DATASETS[ds.name].get("teacher_data"),
            "pseudo_labels": teacher, "overlap": s.overlap,
            "figure_cases": s.figure_cases, "teacher_steps": s.teacher_steps,
            "history_max": s.history_max, **{k: getattr(s, k) for k in _DATA_KEYS + _TRAIN_KEYS}}


def _run_config(tcfg: Mapping[str, Any], s: P4Settings, method: str,
                diag: Diagnostics | None = None) -> dict[str, Any]:
    cfg = {"version": VERSION, "kind": "run", "method": method, "teacher": dict(tcfg),
           "init": s.init, "student_steps": s.student_steps,
           **{k: getattr(s, k) for k in _TRAIN_KEYS}}
    if method != "fully":
        cfg.update({k: getattr(s, k) for k in _STUDENT_KEYS})
    elif diag is not None and diag.curve_points and diag.curve_items:
        cfg["curve"] = [diag.curve_points, diag.curve_items]
    return cfg


def _once(cache: ResultCache, kind: str, config: Mapping[str, Any], compute: Any,
          poll: float = 2.0) -> Any:
    """``cache.cached``: one worker computes a config while others wait for it; a killed
    worker's claim is broken at once (:mod:`covidlib.cache`)."""
    return cache.compute_once(kind, config, compute, poll_s=poll)


class _Context:
    """Lazily prepared data and teacher of one (fold, seed); ``data`` may be shared."""

    def __init__(self, ds: Dataset, s: P4Settings, fold: int, seed: int, teacher: str,
                 cache: ResultCache, device: torch.device, progress: bool,
                 shared: dict[int, FoldData], diag: Diagnostics | None = None) -> None:
        self.ds, self.s, self.fold, self.seed, self.teacher = ds, s, fold, seed, teacher
        self.cache, self.device, self.progress = cache, device, progress
        self.shared = shared
        self.diag = diag
        self.tcfg = _teacher_config(ds, s, fold, seed, teacher)

    @property
    def data(self) -> FoldData:
        if self.fold not in self.shared:
            self.shared[self.fold] = fold_data(self.ds, self.fold, self.s,
                                               self.cache.root / "p4_data", self.progress)
        return self.shared[self.fold]

    @cached_property
    def figure_ids(self) -> list[str]:
        return figure_cases(self.data.test, int(self.s.figure_cases))

    def _artifact(self) -> Path:
        return self.cache.root / "p4_teacher" / f"{config_hash(self.tcfg)}.pt"

    def teacher_result(self) -> dict[str, Any]:
        """Train ``Phi_sl`` on ``X_tr`` (cached), label the pool (with it, or with the
        provided noisy teacher) and keep weights and pseudo-labels in ``p4_teacher/``."""
        def compute() -> dict[str, Any]:
            t0 = time.perf_counter()
            data = self.data
            set_determinism(self.seed)
            model = make_model(data.dims)
            hist = train_supervised(
                model, data.train, self.s, int(self.s.teacher_steps), self.seed,
                data.dims, self.device, stream=0, desc="p4 teacher",
                checkpoint=self._artifact().with_suffix(".ckpt"), progress=self.progress)
            if self.teacher == "provided":
                if any(it.provided is None for it in data.pool):
                    raise ValueError(f"{self.ds.name}: teacher='provided' needs a pool with "
                                     "provided noisy-teacher maps (COVID-SemiSeg)")
                pseudo = {it.case_id: it.provided for it in data.pool}
            elif data.dims == 2:
                probs = predict_slices(model, [it.image for it in data.pool], self.s,
                                       self.device)
                pseudo = {it.case_id: (p > 0.5).astype(np.uint8)
                          for it, p in zip(data.pool, probs, strict=True)}
            else:
                pseudo = {it.case_id: (predict_foreground(model, it.image, self.s,
                                                          self.device) > 0.5).astype(np.uint8)
                          for it in data.pool}
            out: dict[str, Any] = {"pseudo_labels": self.teacher, "history": hist}
            out.update(evaluate(model, data.test, self.s, self.device, self.figure_ids))
            self._artifact().parent.mkdir(parents=True, exist_ok=True)
            atomic_save({"pseudo": pseudo,
                         "model": {k: v.cpu() for k, v in model.state_dict().items()}},
                        self._artifact())
            out["pool"] = _pool_agreement(data.pool, pseudo)
            out["seconds"] = round(time.perf_counter() - t0, 2)
            return out

        res = _once(self.cache, "p4_teacher", self.tcfg, compute)
        if not self._artifact().exists():  # the result survived but the labels were deleted
            self.cache.path("p4_teacher", self.tcfg).unlink()
            return self.teacher_result()
        return res

    def _teacher_artifact(self) -> dict[str, Any]:
        self.teacher_result()
        return torch.load(self._artifact(), map_location="cpu", weights_only=False)

    def pool_with_pseudo(self, pseudo: Mapping[str, np.ndarray]) -> list[Item]:
        for it in self.data.pool:
            it.pseudo = pseudo[it.case_id]
            it._fg.pop("pseudo", None)
        return self.data.pool

    def mechanism(self) -> dict[str, Any] | None:
        """The mechanism probe (cached): weights of Alg. 1 at the teacher's parameters on
        expert-labelled items given the teacher's pseudo-labels (:func:`probe_weights`)."""
        if self.diag is None or not self.diag.probe_batches:
            return None
        cfg = {"version": VERSION, "kind": "mechanism", "teacher": dict(self.tcfg),
               "batches": self.diag.probe_batches,
               **{k: getattr(self.s, k) for k in _STUDENT_KEYS}}

        def compute() -> dict[str, Any]:
            t0 = time.perf_counter()
            art = self._teacher_artifact()
            model = make_model(self.data.dims)
            model.load_state_dict(art["model"])
            out = probe_weights(model, self.data.val, self.s, self.diag.probe_batches,
                                self.seed, self.data.dims, self.device)
            out["seconds"] = round(time.perf_counter() - t0, 2)
            return out

        return _once(self.cache, "p4_mechanism", cfg, compute)

    def run(self, method: str) -> dict[str, Any]:
        cfg = _run_config(self.tcfg, self.s, method, self.diag)

        def compute() -> dict[str, Any]:
            t0 = time.perf_counter()
            data = self.data
            art = self._teacher_artifact()
            set_determinism(self.seed)
            model = make_model(data.dims)
            if self.s.init == "teacher":
                model.load_state_dict(art["model"])
            ck = self.cache.root / "p4_ckpt" / f"{config_hash(cfg)}.pt"
            desc = f"p4 {method} fold {self.fold + 1}"
            if method == "fully":
                curve = cfg.get("curve", [0, 0])
                hist = train_supervised(model, data.train + data.val, self.s,
                                        int(self.s.student_steps), self.seed, data.dims,
                                        self.device, stream=1, checkpoint=ck, desc=desc,
                                        progress=self.progress,
                                        monitor=curve_items(data.test, curve[1]),
                                        monitor_points=curve[0])
            else:
                pool = self.pool_with_pseudo(art["pseudo"])
                hist = train_student(model, method, data.val, pool, self.s, self.seed,
                                     data.dims, self.device, stream=1, checkpoint=ck,
                                     desc=desc, progress=self.progress)
            out = evaluate(model, data.test, self.s, self.device, self.figure_ids)
            out.update(history=hist, seconds=round(time.perf_counter() - t0, 2))
            return out

        return _once(self.cache, "p4_run", cfg, compute)


def _pool_agreement(pool: Sequence[Item], pseudo: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """How good the pseudo-labels are: Dice against the pool's hidden truth (synthetic) and
    against the provided noisy teacher (COVID-SemiSeg), overall and per site."""
    out: dict[str, Any] = {"n": len(pool)}
    for ref in ("truth", "provided"):
        pairs = [(pseudo[it.case_id] > 0, getattr(it, ref) > 0, it.site) for it in pool
                 if getattr(it, ref) is not None]
        if not pairs:
            continue
        tot = scores(sum(confusion(p, t) for p, t, _ in pairs))
        sites = {}
        for site in sorted({str(s) for _, _, s in pairs}):
            sc = scores(sum(confusion(p, t) for p, t, s_ in pairs if str(s_) == site))
            sites[site] = _nan_none(sc["dice"])
        out[f"dice_vs_{ref}"] = _nan_none(tot["dice"])
        out[f"dice_vs_{ref}_by_site"] = sites
    return out


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


@dataclass
class P4Results:
    """Everything the chapters show: per-case scores, run records, teachers, settings."""

    dataset: str
    real: bool
    dims: int
    methods: tuple[str, ...]
    settings: P4Settings
    seeds: tuple[int, ...]
    teacher: str
    frame: pd.DataFrame  # one row per (method, fold, seed, test case)
    runs: dict[tuple[str, int, int], dict[str, Any]]
    teachers: dict[tuple[int, int], dict[str, Any]]
    cases: dict[int, dict[str, Case]]  # fold -> figure cases (original grid)
    seconds: float
    mechanism: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    data_kind: str = ""  # "real", "phantom" or "real 2-D derivative" (the manifest's)


def resolve_dataset(dataset: str | Dataset, data_root: str | Path | None = None) -> Dataset:
    """The dataset to run on: ``"auto"`` is the first of :data:`AUTO_BENCHMARK` that is
    present (the real Benchmark slices, else the phantom); a name is opened; a
    :class:`~covidlib.data.api.Dataset` is used as it is."""
    if not isinstance(dataset, str):
        return dataset
    if dataset != "auto":
        return open_dataset(dataset, data_root)
    for name in AUTO_BENCHMARK[:-1]:
        try:
            return open_dataset(name, data_root, generate=False)
        except DataError:
            continue
    return open_dataset(AUTO_BENCHMARK[-1], data_root)


def _data_kind(ds: Dataset) -> str:
    kind = getattr(ds.manifest, "data_kind", None)
    if isinstance(kind, str) and kind:
        return kind
    return "real" if ds.is_real else "phantom"


def run(dataset: str | Dataset = "synthetic", methods: Sequence[str] = TABLE2_METHODS, *,
        profile: str = "cpu", seeds: Sequence[int] = (0,),
        overrides: P4Settings | None = None, data_root: str | Path | None = None,
        results_dir: str | Path = "../results", device: str = "auto", teacher: str = "ours",
        progress: bool = True, diagnostics: Diagnostics | None = None) -> P4Results:
    """Train (or load from the results cache) every ``method`` for every fold of the
    profile and every seed; see the module docstring for the protocol. ``dataset="auto"``:
    see :func:`resolve_dataset`; ``diagnostics`` (default: the profile's
    :data:`DIAGNOSTICS`) adds the baseline's learning curve and the mechanism probe."""
    t0 = time.perf_counter()
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"p4: unknown method(s) {unknown}; choose from {METHODS}")
    if teacher not in ("ours", "provided"):
        raise ValueError(f"p4: teacher={teacher!r}: 'ours' (trained on X_tr) or 'provided'")
    if not seeds or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in seeds):
        raise ValueError(f"p4: seeds={seeds!r}: a non-empty list of integers >= 0")
    s = settings(profile, overrides)
    diag = DIAGNOSTICS[profile] if diagnostics is None else diagnostics
    ds = resolve_dataset(dataset, data_root)
    if ds.name not in DATASETS:
        raise ValueError(f"p4: dataset {dataset!r} is not supported; choose one of "
                         f"{sorted(DATASETS)}")
    if teacher == "provided" and DATASETS[ds.name]["pool"] not in ("pseudo-label",
                                                                    "covid-semiseg"):
        raise ValueError("p4: teacher='provided' exists only for a COVID-SemiSeg pool "
                         "(covid-semiseg, ma20-slices)")
    dev = resolve_device(device)
    cache = ResultCache(results_dir)
    rows, runs, teachers, cases, mech = [], {}, {}, {}, {}
    shared: dict[int, FoldData] = {}
    todo = [(f, sd, m) for f in s.folds for sd in seeds for m in methods]
    bar = tqdm(total=len(todo), desc=f"P4 runs ({ds.name})", disable=not progress)
    for fold in s.folds:
        for seed in seeds:
            ctx = _Context(ds, s, fold, seed, teacher, cache, dev, progress, shared, diag)
            teachers[(fold, seed)] = ctx.teacher_result()
            probe = ctx.mechanism()
            if probe is not None:
                mech[(fold, seed)] = probe
            for method in methods:
                res = ctx.run(method)
                runs[(method, fold, seed)] = res
                for r in res["cases"]:
                    rows.append({"method": method, "fold": fold, "seed": seed, **r})
                bar.update(1)
            if fold not in cases:
                figure_ids = {cid for m in methods for cid in runs[(m, fold, seed)]["figure"]}
                cases[fold] = _figure_source_cases(ds, figure_ids)
    bar.close()
    frame = pd.DataFrame(rows)
    return P4Results(ds.name, ds.is_real, DATASETS[ds.name]["dims"], tuple(methods), s,
                     tuple(seeds), teacher, frame, runs, teachers, cases,
                     round(time.perf_counter() - t0, 1), mech, diag, _data_kind(ds))


def _figure_source_cases(ds: Dataset, ids: set[str]) -> dict[str, Case]:
    if not ids:
        return {}
    spec = DATASETS[ds.name]
    group = spec.get("case_group", None if spec["dims"] == 3 else "test")
    return {c.case_id: c for c in ds.cases(group) if c.case_id in ids}
