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

Public entry point: :func:`train_p4` trains one method on a fold of a P4 dataset or of your
own (:mod:`~.p4_user`), scored on any number of test sets (:mod:`~.p4_method`); the chapters'
:func:`run` trains through the same path and caches the results; ``covidlib train`` runs it
from the command line (:mod:`~covidlib.experiments.p4_cli`).

Code: constants, profiles and the typed settings in :mod:`~covidlib.experiments.p4_settings`;
fold data and patches in :mod:`~covidlib.experiments.p4_data`; training (the engine's step
loop :func:`covidlib.engine.train_steps` with Alg. 1 as a step function), inference and
evaluation in :mod:`~covidlib.experiments.p4_train`; this module caches and runs them (and
re-exports their public names). Tables, verdicts and figures of the chapters are in
:mod:`covidlib.experiments.p4_report`. The algorithms live in their concept modules: the
network in :mod:`covidlib.models`, resampling in :mod:`covidlib.data.preprocess`, flips,
crops and patch sampling in :mod:`covidlib.data.augment`, Alg. 1 and its weights in
:mod:`covidlib.reweight`, Dice and HD/HD95 in :mod:`covidlib.metrics`.

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

import contextlib
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from covidlib import checkpoint as _ckpt
from covidlib.cache import ResultCache, config_hash
from covidlib.data.api import Dataset, open_dataset
from covidlib.data.errors import DataError
from covidlib.data.types import Case
from covidlib.engine import resolve_device, set_determinism
from covidlib.experiments.p4_data import (
    FoldData,
    Item,
    TestItem,
    fold_data,
    kfold_lists,
    open_pool_dataset,
    open_sibling,
    pool_case_ids,
    pool_volume,
    sample_patch,
)
from covidlib.experiments.p4_method import P4TestSet, TrainedP4, train_in_context
from covidlib.experiments.p4_settings import (
    AUTO_BENCHMARK,
    DATASETS,
    DIAGNOSTICS,
    METHOD_LABELS,
    METHODS,
    P4_SPACING,
    PAPER_NAMES,
    POOL_SITE_NAMES,
    POOL_SITES,
    PROFILES,
    TABLE2_METHODS,
    TABLE3_METHODS,
    VERSION,
    Diagnostics,
    P4Settings,
    settings,
)
from covidlib.experiments.p4_train import (
    _pool_agreement,
    curve_items,
    evaluate,
    figure_cases,
    make_model,
    monitor_dice,
    predict_foreground,
    predict_slices,
    probe_split,
    probe_weights,
    train_student,
    train_supervised,
)
from covidlib.experiments.p4_user import UserSpec, p4_spec, user_fold_data
from covidlib.experiments.typed_settings import SettingsError
from covidlib.report.masks import decode_mask, encode_mask

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
    "P4TestSet",
    "SettingsError",
    "TestItem",
    "TrainedP4",
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
    "train_p4",
    "train_student",
    "train_supervised",
]

# --------------------------------------------------------------------------------------------
# Cached runs
# --------------------------------------------------------------------------------------------



_DATA_KEYS = ("spacing", "patch", "size_2d", "window", "pool_size", "pool_shape", "pool_2d",
              "infer_roi")
_TRAIN_KEYS = ("batch", "lr", "optimizer", "pos_fraction")
_STUDENT_KEYS = ("lam", "meta_lr", "expert_term", "gem_norm", "rgs_method")


def _teacher_config(ds: Dataset, s: P4Settings, fold: int, seed: int, teacher: str,
                    user: UserSpec | None = None) -> dict[str, Any]:
    """The teacher's cache key; on your own dataset (``user``) its split, pool and
    dimension instead of P4's (the shipped datasets' keys are unchanged)."""
    spec = DATASETS[ds.name] if user is None else {"split": user.split}
    cfg = {"version": VERSION, "kind": "teacher", "data": ds.fingerprint(),
           "split": spec["split"], "fold": fold, "seed": seed,
           "teacher_data": spec.get("teacher_data"),
           "pseudo_labels": teacher, "overlap": s.overlap,
           "figure_cases": s.figure_cases, "teacher_steps": s.teacher_steps,
           "history_max": s.history_max, **{k: getattr(s, k) for k in _DATA_KEYS + _TRAIN_KEYS}}
    if user is not None:
        cfg.update(user.config(ds))
    return cfg


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
                 shared: dict[int, FoldData], diag: Diagnostics | None = None,
                 user: UserSpec | None = None) -> None:
        self.ds, self.s, self.fold, self.seed, self.teacher = ds, s, fold, seed, teacher
        self.cache, self.device, self.progress = cache, device, progress
        self.shared = shared
        self.diag = diag
        self.user = user  # your own dataset's split and pool (None: one of P4's datasets)
        self.tcfg = _teacher_config(ds, s, fold, seed, teacher, user)

    @property
    def data(self) -> FoldData:
        if self.fold not in self.shared:
            self.shared[self.fold] = (
                fold_data(self.ds, self.fold, self.s, self.cache.root / "p4_data",
                          self.progress) if self.user is None else
                user_fold_data(self.ds, self.user, self.fold, self.s))
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
            if self.teacher == "provided" and any(it.provided is None for it in data.pool):
                raise ValueError(f"{self.ds.name}: teacher='provided' needs a pool with "
                                 "provided noisy-teacher maps (COVID-SemiSeg's, or masks on "
                                 "every case of your pool)")
            set_determinism(self.seed)
            model = make_model(data.dims)
            hist = train_supervised(
                model, data.train, self.s, int(self.s.teacher_steps), self.seed,
                data.dims, self.device, stream=0, desc="p4 teacher",
                checkpoint=self._artifact().with_suffix(".ckpt"), progress=self.progress)
            if self.teacher == "provided":
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
            _ckpt.save({"pseudo": {k: torch.from_numpy(np.ascontiguousarray(v))
                                   for k, v in pseudo.items()},
                        "model": {k: v.cpu() for k, v in model.state_dict().items()}},
                       self._artifact(), config_digest=config_hash(self.tcfg))
            out["pool"] = _pool_agreement(data.pool, pseudo)
            out["seconds"] = round(time.perf_counter() - t0, 2)
            return out

        res = _once(self.cache, "p4_teacher", self.tcfg, compute)
        if not self._artifact().exists():  # the result survived but the labels were deleted
            self.cache.path("p4_teacher", self.tcfg).unlink()
            return self.teacher_result()
        return res

    def _teacher_artifact(self) -> dict[str, Any]:
        """The teacher's weights and pseudo-labels, verified (sha256 and config digest); a
        damaged file is moved aside and the teacher is trained again, with a warning."""
        self.teacher_result()
        path, digest = self._artifact(), config_hash(self.tcfg)
        try:
            art = _ckpt.load(path, config_digest=digest)
        except _ckpt.CheckpointError as exc:
            aside = _ckpt.move_aside(path) if path.exists() else None
            warnings.warn(f"{exc}; moved aside to {aside}: the P4 teacher is trained again",
                          stacklevel=2)
            self.cache.path("p4_teacher", self.tcfg).unlink(missing_ok=True)
            self.teacher_result()
            art = _ckpt.load(path, config_digest=digest)
        art["pseudo"] = {k: v.numpy() for k, v in art["pseudo"].items()}
        return art

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

    def train(self, method: str) -> tuple[torch.nn.Module, dict[str, list]]:
        """Train ``method`` on this fold (the teacher first, cached): the network and its
        training history (:func:`train_supervised` for ``fully``, Alg. 1 by
        :func:`train_student` for the others)."""
        cfg = _run_config(self.tcfg, self.s, method, self.diag)
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
        return model, hist

    def run(self, method: str) -> dict[str, Any]:
        """One row of the chapters' tables (cached): ``method`` trained by the public entry
        point's path (:func:`~covidlib.experiments.p4_method.train_in_context`) and scored on
        the fold's ``X_t`` with the figure masks."""
        cfg = _run_config(self.tcfg, self.s, method, self.diag)

        def compute() -> dict[str, Any]:
            t0 = time.perf_counter()
            trained = train_in_context(self, method, {"test": self.data.test},
                                       figure_ids=self.figure_ids)
            out = dict(trained.results["test"])
            out.update(history=trained.history, seconds=round(time.perf_counter() - t0, 2))
            return out

        return _once(self.cache, "p4_run", cfg, compute)


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
        overrides: Mapping[str, Any] | None = None, data_root: str | Path | None = None,
        results_dir: str | Path = "../results", device: str = "auto", teacher: str = "ours",
        progress: bool = True, diagnostics: Diagnostics | None = None) -> P4Results:
    """Train (or load from the results cache) every ``method`` for every fold of the
    profile and every seed; see the module docstring for the protocol. ``dataset="auto"``:
    see :func:`resolve_dataset`; ``diagnostics`` (default: the profile's
    :data:`DIAGNOSTICS`) adds the baseline's learning curve and the mechanism probe."""
    t0 = time.perf_counter()
    _check_methods(methods)
    if not seeds or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in seeds):
        raise ValueError(f"p4: seeds={seeds!r}: a non-empty list of integers >= 0")
    s = settings(profile, overrides)
    diag = DIAGNOSTICS[profile] if diagnostics is None else diagnostics
    ds = _open_checked(dataset, data_root, teacher)
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


def _check_methods(methods: Sequence[str]) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"p4: unknown method(s) {unknown}; choose from {METHODS}")


def _open_checked(dataset: str | Dataset, data_root: str | Path | None, teacher: str,
                  own: bool = False) -> Dataset:
    """The dataset (:func:`resolve_dataset`), checked to be a P4 dataset with a pool that
    ``teacher`` can label (``own``: any other dataset too, :mod:`.p4_user`)."""
    if teacher not in ("ours", "provided"):
        raise ValueError(f"p4: teacher={teacher!r}: 'ours' (trained on X_tr) or 'provided'")
    ds = resolve_dataset(dataset, data_root)
    if own and ds.name not in DATASETS:
        return ds
    if ds.name not in DATASETS:
        raise ValueError(f"p4: dataset {dataset!r} is not supported; choose one of "
                         f"{sorted(DATASETS)}")
    if teacher == "provided" and DATASETS[ds.name]["pool"] not in ("pseudo-label",
                                                                    "covid-semiseg"):
        raise ValueError("p4: teacher='provided' exists only for a COVID-SemiSeg pool "
                         "(covid-semiseg, ma20-slices)")
    return ds


_NO_DIAGNOSTICS = Diagnostics(curve_points=0, curve_items=0, probe_batches=0)


def train_p4(dataset: str | Dataset, method: str, *, split: str | None = None,
             pool: str | None = None, fold: int = 0, seed: int = 0,
             profile: str = "cpu", overrides: Mapping[str, Any] | None = None,
             teacher: str = "ours",
             test_sets: Mapping[str, P4TestSet | str | Sequence[TestItem]] | None = None,
             device: str = "auto", data_root: str | Path | None = None,
             results_dir: str | Path | None = None, progress: bool = True,
             diagnostics: Diagnostics | None = None) -> TrainedP4:
    """Train P4 method ``method`` (:data:`METHODS`: ``fully`` supervised, ``semi`` uniform
    pseudo-labels, ``rgs``, ``rgm``, ``rgsm``, ``rgs_al``, ``rgsm_al``) once on fold ``fold``
    of ``dataset`` and score it on every test set.

    ``dataset``: a P4 dataset name (:data:`DATASETS`; ``split`` None or its P4 split),
    ``"auto"``, an opened one, or ANY other dataset covidlib opens (a manifest name or YAML
    path) with ``split``, one of its ``by-case`` / ``k-fold`` splits: ``train`` = ``X_tr``,
    ``val`` = ``X_v`` (Alg. 1's clean meta set), ``test`` = ``X_t``, and ``pool`` = ``X_p``
    (None: the cases the split does not list; a group of its manifest; another dataset), see
    :mod:`~covidlib.experiments.p4_user`. The fold's ``X_tr`` trains the teacher with Eq. 1
    (cached in ``results_dir``, shared with the chapters; None: a temporary folder), whose
    pseudo-labels of the pool train the student by Alg. 1 (Eqs. 3-9) from ``X_v``.
    Settings: ``profile`` (:data:`PROFILES`) with ``overrides``. ``test_sets``: name ->
    :class:`P4TestSet`, its text (``"test"``, ``"test@2"``, ``"covid-semiseg:test"``,
    ``"other-split:test"``) or a list of test items (default ``{"test": "test"}``: the fold's
    ``X_t``). ``diagnostics``: the baseline's learning curve (default none). Returns a
    :class:`TrainedP4`: ``.model``, ``.history``, ``.scores[name]``, ``.results[name]``;
    ``.score(...)`` scores more test sets without training again.
    """
    _check_methods([method])
    s = settings(profile, overrides)
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < 0:
        raise ValueError(f"p4: fold={fold!r}: a fold index >= 0")
    ds = _open_checked(dataset, data_root, teacher, own=True)
    user = p4_spec(ds, split, pool)
    with contextlib.ExitStack() as stack:
        root = (Path(results_dir) if results_dir is not None else
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="covidlib-p4-"))))
        ctx = _Context(ds, s, int(fold), int(seed), teacher, ResultCache(root),
                       resolve_device(device), progress, {},
                       _NO_DIAGNOSTICS if diagnostics is None else diagnostics, user)
        trained = train_in_context(ctx, method, dict(test_sets or {"test": "test"}))
    if results_dir is None:
        trained.store = None  # the temporary folder is gone: other folds prepare anew
    return trained


def _figure_source_cases(ds: Dataset, ids: set[str]) -> dict[str, Case]:
    if not ids:
        return {}
    spec = DATASETS[ds.name]
    group = spec.get("case_group", None if spec["dims"] == 3 else "test")
    return {c.case_id: c for c in ds.cases(group) if c.case_id in ids}
