"""P2 (Laradji et al., WACV 2021): consistency-based learning from point labels.

One training run is a :class:`P2Run` (dataset, split, loss, model, resolution, epochs, seed,
...). :func:`run_p2` builds the split, lets the oracle click the training slices (one point
per connected infected region at the maximum of its distance transform, as many background
points, P2 Sec. 4.1.1), trains with the engine (Adam; the weights of the best validation
epoch are kept: P2's "early stopping on the validation set") and scores the test slices:
Dice, IoU, PPV, Sens., Spec. from pixel counts summed over the split (P2 Sec. 4.1.2) and the
counting errors MAE and GAME(L=4) of the predicted blobs against one point per connected
infected region of the test masks (P2 Sec. 4.4). Results are cached by their full config.

Losses (P2 Sec. 4.2 and 4.4):

* ``fully``: weighted BCE + weighted IoU on the masks (F3Net), the upper bound;
* ``pl``: point-level cross-entropy (P2 Eq. 2);
* ``cb_flip`` / ``cb_flip_rot``: PL on both branches + lambda x consistency (Eqs. 1, 3) with
  T = {hflip} or T = {hflip} x {0, 90, 180, 270 degrees};
* ``lcfcn`` / ``cb_lcfcn``: the LCFCN loss (Laradji et al. 2018) and its CB(Flip) version.

Which data each table uses (:data:`TABLES`): the paper's dataset when it is found on this
machine (``dataset="auto"`` or ``"real"``), else a real derivative of it (COVID-19-C: the
``ma20-slices`` 2-D slices of 10 of its 20 volumes), otherwise a synthetic stand-in built
from the 20-volume phantom (:data:`~covidlib.experiments.p2_data.STAND_INS`; splits, crop and oracle
points live in :mod:`covidlib.experiments.p2_data`): A-like = infected slices of interleaved
volumes, as many as P2's 45 / 5 / 48; B-like = the first 9 volumes, sep 5 / 1 / 3 and mixed
45 / 5 / 50%; C-like = the 20 volumes with the manifest's sep (15 / 1 / 4) and mixed splits.
The 0.75 centre crop of the profiles applies to the COVID-19-C tables only (the authors'
code crops COVID-19-C alone).

Public entry point (any dataset, any split, one training, any number of test sets):
:func:`train_p2` returns a :class:`TrainedP2` (the model, its training curve and scores per
test set; :meth:`TrainedP2.score` scores more test sets later). The chapters reach the same
code through :func:`run_p2` (cached by config) and :func:`run_table`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from covidlib.cache import ResultCache, config_hash, process_dir, remove_process_dir
from covidlib.data.api import Dataset, open_dataset
from covidlib.data.errors import DataError
from covidlib.data.manifest import load_manifest, locate
from covidlib.data.torch_datasets import SliceDataset
from covidlib.data.types import Case
from covidlib.engine import fit, set_determinism, supervised_loss
from covidlib.experiments import p2_settings
from covidlib.experiments.p2_data import (
    lung_views,
    open_cached,
    oracle_points,
    prepared_cases,
    split_refs,
)
from covidlib.experiments.p2_scoring import (
    _nan_to_none,
    _predict_masks,
    _true_points,
    decode_mask,
    encode_mask,
    figure_refs,
    score_slices,
)
from covidlib.experiments.p2_settings import *  # noqa: F403 (re-exported, see __all__)
from covidlib.experiments.p2_settings import (
    LOSSES,
    RUN_KEYS,
    TABLES,
    P2Settings,
    SettingsError,
    Task,
    settings,
    table_settings,
)
from covidlib.losses import ConsistencyLoss, LCFCNLoss, PointLoss, structure_loss
from covidlib.losses.batch import ConsistencyBatchLoss, PointBatchLoss
from covidlib.metrics import counting_scores
from covidlib.models.registry import build_segmenter

__all__ = [  # with the settings' names (p2.settings, p2.PROFILES, ...), re-exported
    *p2_settings.__all__,
    "P2Run",
    "TableRuns",
    "TestSet",
    "TrainedP2",
    "cache_config",
    "decode_mask",
    "encode_mask",
    "figure_refs",
    "make_loss",
    "make_model",
    "make_run",
    "resolve_data",
    "run_p2",
    "run_table",
    "score_slices",
    "train_p2",
    "train_run",
]

VERSION = "p2/2"
"""Part of every cached config: bump it when a change alters results."""
KIND = "p2_run"
"""Result kind in the :class:`~covidlib.cache.ResultCache`."""


@dataclass
class P2Run:
    """One training run of P2: every setting that changes its result."""

    dataset: str
    split: str
    loss: str
    seed: int = 0
    task: Task = "segmentation"
    model: str = "unet2d"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    size: int = 64
    crop: float = 1.0
    epochs: int = 8
    batch_size: int = 8
    lr: float = 1e-3
    lam: float = 1.0
    patience: int | None = None
    max_slices: dict[str, int | None] = field(
        default_factory=lambda: {"train": None, "val": None, "test": None})
    n_background: str | int = "match"
    placement: str = "distance"
    figure_slices: int = 3

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"P2Run.loss={self.loss!r}: choose one of {LOSSES}")
        if self.task not in ("segmentation", "counting"):
            raise ValueError(f"P2Run.task={self.task!r}: 'segmentation' or 'counting'")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"P2Run.seed={self.seed!r}: expected an integer >= 0")
        try:  # the settings' own checks (P2Settings): one place validates P2's values
            P2Settings(**{k: getattr(self, k) for k in RUN_KEYS}, checkpoints=False,
                       stand_in_seeds=None)
        except SettingsError as exc:
            raise SettingsError(str(exc).replace("p2 setting ", "P2Run.", 1)) from None

    def config(self) -> dict[str, Any]:
        """JSON form (the cache key, with the data fingerprint added by :func:`run_p2`)."""
        return {"version": VERSION, **asdict(self)}


def make_run(dataset: str, split: str, loss: str, seed: int, s: P2Settings,
             task: Task = "segmentation") -> P2Run:
    """A :class:`P2Run` from profile settings ``s`` (see :func:`settings`)."""
    if not isinstance(s, P2Settings):
        raise TypeError(f"p2.make_run: settings must be a P2Settings (p2.settings(profile, "
                        f"overrides)), not {type(s).__name__}")
    return P2Run(dataset=dataset, split=split, loss=loss, seed=int(seed), task=task,
                 **s.run_fields())


def resolve_data(artifact: str, dataset: str = "auto", data_root: str | Path | None = None
                 ) -> tuple[str, str, bool]:
    """``(manifest name, split, is_real)`` for one P2 table.

    ``dataset``: ``"auto"`` (the first real dataset of the table that is found, else the
    synthetic stand-in), ``"real"`` (the first real one found, :class:`DataError` naming
    every place looked when none is), ``"synthetic"`` (the stand-in), or the name of one of
    the table's real datasets.
    """
    if artifact not in TABLES:
        raise ValueError(f"p2: unknown table {artifact!r}; choose one of {sorted(TABLES)}")
    spec = TABLES[artifact]
    if dataset == "synthetic":
        return "synthetic", spec.synthetic, False
    names = [n for n, _ in spec.real]
    if dataset not in ("auto", "real", *names):
        raise ValueError(f"p2: dataset={dataset!r} for {artifact}: use 'auto', 'real', "
                         f"'synthetic' or one of {names} (the data of {spec.paper_name})")
    wanted = spec.real if dataset in ("auto", "real") else [r for r in spec.real
                                                            if r[0] == dataset]
    errors = []
    for name, split in wanted:
        try:
            locate(load_manifest(name), data_root)
        except DataError as e:
            errors.append(e)
            continue
        return name, split, True
    if dataset == "auto":
        return "synthetic", spec.synthetic, False
    raise errors[0] if len(errors) == 1 else DataError(
        spec.paper_name, "none of its datasets was found: " + " | ".join(map(str, errors)))


@dataclass
class _Data:
    train: SliceDataset
    val: SliceDataset
    parts: dict[str, list[tuple[str, int]]]
    cases: dict[str, Case]
    n_points: dict[str, int]


def _build_data(run: P2Run, ds: Dataset, split: str | Mapping[str, Any] | None = None
                ) -> _Data:
    """Training and validation slices (with the oracle's points) and every part's refs."""
    cases = prepared_cases(ds, run.crop)
    by_id = {c.case_id: c for c in cases}
    parts = split_refs(ds, run.split if split is None else split, cases, run.max_slices)
    labels = ds.manifest.infection_labels
    points = oracle_points(by_id, parts["train"], run.seed, labels, run.n_background,
                           run.placement)
    n_fg = sum(p.label != 0 for pts in points.values() for p in pts)
    n_bg = sum(p.label == 0 for pts in points.values() for p in pts)

    def make(part: str, pts: Mapping | None = None) -> SliceDataset:
        return SliceDataset(by_id, parts[part], run.size, points=pts, infection_labels=labels,
                            progress=False)

    return _Data(make("train", points), make("val"), parts, by_id,
                 {"infection": int(n_fg), "background": int(n_bg)})


def make_model(run: P2Run) -> nn.Module:
    """The run's two-class network (background, infection)."""
    if run.model not in ("unet2d", "fcn8_vgg16"):
        raise ValueError(f"P2Run.model={run.model!r}: P2 runs use 'unet2d' or 'fcn8_vgg16'")
    return build_segmenter(run.model, 2, **run.model_kwargs)


def make_loss(loss: str, lam: float = 1.0, seed: int = 0) -> nn.Module:
    """The engine ``loss_fn`` of a P2 loss id (see the module docstring).

    The PL baseline (``"pl"``) treats a training slice without an infection point as all
    background (P2 Sec. 4.2: PL "encourages all pixel predictions to be background for
    background images"); in CB and LCFCN the point term keeps to the clicked pixels (P2 Eq. 2).
    """
    if loss == "fully":
        return supervised_loss(structure_loss)
    if loss == "pl":  # P2 Sec. 4.2: PL pushes every pixel of a clean slice to background
        return PointBatchLoss(PointLoss("mean", empty_as_background=True))
    if loss in ("cb_flip", "cb_flip_rot"):
        transforms = "flip" if loss == "cb_flip" else "flip_rot"
        return ConsistencyBatchLoss(ConsistencyLoss(transforms, lam=lam), seed=seed)
    if loss == "lcfcn":
        return PointBatchLoss(LCFCNLoss())
    if loss == "cb_lcfcn":
        return ConsistencyBatchLoss(ConsistencyLoss("flip", lam=lam, point_loss=LCFCNLoss()),
                                    seed=seed)
    raise ValueError(f"p2: unknown loss {loss!r}; choose one of {LOSSES}")


@dataclass(frozen=True)
class TestSet:
    """Slices to score a trained model on.

    ``part`` of ``split`` of ``dataset`` (each ``None``: the training run's dataset / split),
    or explicit ``refs`` (``(case_id, z)`` pairs of ``dataset``). Slices are preprocessed
    like the training slices (the run's crop and size).
    """

    part: str = "test"
    dataset: str | Path | Dataset | None = None
    split: str | Mapping[str, Any] | None = None
    refs: tuple[tuple[str, int], ...] | None = None


@dataclass
class TrainedP2:
    """A trained P2 model: the run, the network (best validation epoch), the training curve
    and the scores of every test set scored so far (:meth:`score` adds more)."""

    run: P2Run
    model: nn.Module
    dataset: Dataset
    split: str | Mapping[str, Any]
    history: list[dict[str, float | None]]
    best_epoch: int | None
    epochs_completed: int
    n_slices: dict[str, int]
    n_points: dict[str, int]
    device: str
    train_seconds: float
    checkpoint_dir: Path | None = None
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    data_root: str | Path | None = None

    def _open(self, dataset: str | Path | Dataset | None) -> Dataset:
        if dataset is None:
            return self.dataset
        return dataset if isinstance(dataset, Dataset) else open_cached(dataset, self.data_root)

    def evaluate(self, test: TestSet | str = "test", device: str | None = None
                 ) -> tuple[dict[str, Any], list[np.ndarray], list[np.ndarray], list]:
        """``(scores, predictions, masks, refs)`` of ``test`` (a :class:`TestSet` or a part
        name of the training split)."""
        test = TestSet(part=test) if isinstance(test, str) else test
        ds = self._open(test.dataset)
        cases = {c.case_id: c for c in prepared_cases(ds, self.run.crop)}
        if test.refs is not None:
            refs = [(str(c), int(z)) for c, z in test.refs]
        else:
            split = self.split if test.split is None and ds is self.dataset else test.split
            if split is None:
                raise ValueError(f"TestSet on {ds.name!r}: give split= (or refs=); the "
                                 f"training split {self.split!r} belongs to {self.dataset.name!r}")
            parts = split_refs(ds, split, list(cases.values()), self.run.max_slices)
            if test.part not in parts:
                raise ValueError(f"TestSet.part={test.part!r}: choose one of {sorted(parts)}")
            refs = parts[test.part]
        data = SliceDataset(cases, refs, self.run.size,
                            infection_labels=ds.manifest.infection_labels, progress=False)
        preds, masks = _predict_masks(self.model, data, device or self.device,
                                      self.run.batch_size)
        scores = score_slices(preds, masks, data.refs, lung_views(cases, data.refs,
                                                                 self.run.size))
        return scores, preds, masks, data.refs

    def score(self, test: TestSet | str = "test", name: str | None = None,
              device: str | None = None) -> dict[str, Any]:
        """Score ``test`` with the trained model (no retraining); kept in :attr:`scores`
        under ``name`` (default: the part name)."""
        out = self.evaluate(test, device)[0]
        key = name or (test if isinstance(test, str) else test.part)
        self.scores[key] = out
        return out


def train_run(run: P2Run, ds: Dataset | None = None, *,
              split: str | Mapping[str, Any] | None = None,
              test_sets: Mapping[str, TestSet | str] | None = None, device: str = "auto",
              data_root: str | Path | None = None, checkpoint_dir: str | Path | None = None,
              progress: bool = False) -> TrainedP2:
    """Train one :class:`P2Run` (oracle points, P2's loss, best validation epoch) and score
    ``test_sets`` (name -> :class:`TestSet` or part name; default ``{"test": "test"}``).

    ``ds`` defaults to ``run.dataset`` opened on ``data_root``; ``split`` (a split name or a
    spec) to ``run.split``. Checkpoints go to ``checkpoint_dir`` when given (an interrupted
    call resumes from them) and are left there for the caller.
    """
    ds = open_cached(run.dataset, data_root) if ds is None else ds
    split = run.split if split is None else split
    t0 = time.perf_counter()
    data = _build_data(run, ds, split)
    set_determinism(run.seed)
    # channels_last: about 1.5x faster convolutions on CPU as well (the engine uses it on CUDA)
    model = make_model(run).to(memory_format=torch.channels_last)
    kw: dict[str, Any] = {}
    if run.task == "counting":  # select the epoch with the lowest validation MAE

        def val_fn(m: nn.Module) -> dict[str, float]:
            preds, masks = _predict_masks(m, data.val, device, run.batch_size)
            mae = counting_scores(preds, _true_points(masks), levels=())["mae"]
            return {"neg_mae": -mae, "mae": mae}

        kw = {"val_fn": val_fn, "metric": "neg_mae"}
    result = fit(model, make_loss(run.loss, run.lam, run.seed), data.train, data.val,
                 epochs=run.epochs, lr=run.lr, batch_size=run.batch_size, device=device,
                 seed=run.seed, checkpoint_dir=checkpoint_dir, early_stopping_patience=run.patience,
                 progress=progress, config=run.config(), **kw)
    trained = TrainedP2(
        run=run, model=model, dataset=ds, split=split,
        history=[{k: _nan_to_none(v) for k, v in rec.items()} for rec in result.history],
        best_epoch=result.best_epoch, epochs_completed=result.epochs_completed,
        n_slices={p: len(r) for p, r in data.parts.items()}, n_points=data.n_points,
        device=str(result.device), train_seconds=round(time.perf_counter() - t0, 2),
        checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir),
        data_root=data_root)
    for name, test in (test_sets if test_sets is not None else {"test": "test"}).items():
        trained.score(test, name)
    return trained


def train_p2(dataset: str | Path | Dataset, split: str | Mapping[str, Any], loss: str, *,
             profile: str = "cpu", overrides: Mapping[str, Any] | None = None, seed: int = 0,
             task: Task = "segmentation", test_sets: Mapping[str, TestSet | str] | None = None,
             device: str = "auto", data_root: str | Path | None = None,
             checkpoint_dir: str | Path | None = None, progress: bool = True) -> TrainedP2:
    """Train P2 method ``loss`` (:data:`LOSSES`) once on any dataset and split, and score it on
    any number of test sets.

    ``dataset``: a manifest name, a manifest YAML path or an opened
    :class:`~covidlib.data.api.Dataset`; ``split``: one of its splits or a split spec
    (manifest schema); settings: ``profile`` (:data:`PROFILES`) with ``overrides``. The
    profile's centre crop is not applied unless ``overrides`` sets ``crop`` (P2 crops
    COVID-19-C only). Returns a :class:`TrainedP2`: ``.model``, ``.scores[name]``,
    ``.history``; ``.score(TestSet(...))`` scores more test sets without retraining.
    """
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(str(dataset), data_root)
    s = settings(profile, {"crop": 1.0, **dict(overrides or {})})
    name = split if isinstance(split, str) else "spec-" + config_hash(dict(split))[:12]
    run = make_run(ds.name, name, loss, seed, s, task)
    return train_run(run, ds, split=split, test_sets=test_sets, device=device,
                     data_root=data_root, checkpoint_dir=checkpoint_dir, progress=progress)


def _train_and_score(run: P2Run, ds: Dataset, device: Any, checkpoint_dir: Path | None,
                     progress: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    trained = train_run(run, ds, test_sets={}, device=device, checkpoint_dir=checkpoint_dir,
                        progress=progress)
    scores, preds, masks, refs = trained.evaluate("test")
    trained.scores["test"] = scores
    fig_refs = figure_refs(masks, refs, run.figure_slices)
    index = {tuple(r): i for i, r in enumerate(refs)}
    return {
        "scores": scores,
        "best_epoch": trained.best_epoch,
        "epochs_completed": trained.epochs_completed,
        "history": trained.history,
        "n_slices": trained.n_slices,
        "n_points": trained.n_points,
        "device": trained.device,
        "seconds": round(time.perf_counter() - t0, 2),
        "train_seconds": trained.train_seconds,
        "figure": {"size": run.size, "refs": [list(r) for r in fig_refs],
                   "pred": [encode_mask(preds[index[r]]) for r in fig_refs]},
    }


def run_p2(run: P2Run, data_root: str | Path | None = None,
           results_dir: str | Path | None = None, device: str = "auto",
           progress: bool = False, checkpoints: bool = False) -> dict[str, Any]:
    """Train and test one :class:`P2Run`; cached in ``results_dir`` by its full config.

    The config is the run's settings, the code version and the data's fingerprint (name,
    real or synthetic, the phantom's generator config). ``device`` is not part of it: a result
    computed on a GPU is reused on a CPU and vice versa (the scores differ only by numerics).
    With ``checkpoints`` (and a ``results_dir``) the engine writes per-epoch checkpoints to
    ``<results_dir>/p2_checkpoints/<hash>.<host>.<pid>/`` (its own folder: a killed run's
    folder is taken over by the next run, which resumes; a live one is never touched); they
    are removed once the result is stored. One process computes a config, others wait.
    """
    ds = open_cached(run.dataset, data_root)
    config = cache_config(run, ds)
    if results_dir is None:
        return _train_and_score(run, ds, device, None, progress)
    cache = ResultCache(results_dir)
    ck_root, name = Path(results_dir) / "p2_checkpoints", config_hash(config)

    def compute() -> dict[str, Any]:  # runs under the config's claim (one process at a time)
        ck = process_dir(ck_root, name) if checkpoints else None  # this process's own folder
        return _train_and_score(run, ds, device, ck, progress)

    out = cache.cached(KIND, config, compute)  # other processes wait for the result
    if checkpoints:
        remove_process_dir(ck_root, name)
    return out


def cache_config(run: P2Run, ds: Dataset) -> dict[str, Any]:
    """The key of ``run`` in the result cache: its config plus the data's fingerprint."""
    return {**run.config(), "data": ds.fingerprint()}


@dataclass
class TableRuns:
    """Every run of one P2 table: which data, which settings, and one result per run."""

    artifact: str
    dataset: str
    split: str
    real: bool
    profile: str
    settings: P2Settings
    runs: list[dict[str, Any]]  # {"loss", "seed", "result", "config", "cached"}

    @property
    def task(self) -> Task:
        return TABLES[self.artifact].task

    def result(self, loss: str, seed: int) -> dict[str, Any]:
        for r in self.runs:
            if r["loss"] == loss and r["seed"] == seed:
                return r["result"]
        raise KeyError(f"{self.artifact}: no run of loss {loss!r} with seed {seed}")


def run_table(artifact: str, dataset: str = "auto", profile: str = "cpu",
              overrides: Mapping[str, Any] | None = None, seeds: Sequence[int] = (0, 1),
              losses: Sequence[str] | None = None, device: str = "auto",
              data_root: str | Path | None = None, results_dir: str | Path | None = None,
              progress: bool = True) -> TableRuns:
    """Every (loss, seed) run of P2 table ``artifact`` (``"P2-T2"`` ... ``"P2-T8"``).

    ``losses`` defaults to the table's rows (:data:`SEGMENTATION_LOSSES` or
    :data:`COUNTING_LOSSES`); finished runs come from the cache in ``results_dir``. On a
    synthetic stand-in only the first ``stand_in_seeds`` seeds run (profile setting; None:
    all).
    """
    name, split, real = resolve_data(artifact, dataset, data_root)
    spec = TABLES[artifact]
    s = table_settings(artifact, profile, overrides)
    losses = tuple(spec.losses if losses is None else losses)
    bad = [x for x in losses if x not in spec.losses]
    if bad:
        raise ValueError(f"p2: {artifact} has rows {spec.losses}; unknown loss(es) {bad}")
    if not seeds:
        raise ValueError("p2: seeds is empty; give at least one seed")
    if not real and s.stand_in_seeds:  # the profile's cap for synthetic stand-ins
        seeds = list(seeds)[: s.stand_in_seeds]
    jobs = [(loss, int(seed)) for loss in losses for seed in seeds]
    runs = []
    cache = ResultCache(results_dir) if results_dir is not None else None
    bar = tqdm(jobs, desc=f"{artifact} ({name}/{split})", unit="run", disable=not progress)
    for loss, seed in bar:
        bar.set_postfix_str(f"{loss} seed {seed}")
        run = make_run(name, split, loss, seed, s, spec.task)
        hit = cache is not None and cache.get(
            KIND, cache_config(run, open_cached(name, data_root))) is not None
        result = run_p2(run, data_root, results_dir, device,
                        checkpoints=s.checkpoints)
        runs.append({"loss": loss, "seed": seed, "result": result, "config": run.config(),
                     "cached": hit})
    return TableRuns(artifact, name, split, real, profile, s, runs)
