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

import base64
import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from covidlib.cache import ResultCache, config_hash, process_dir, remove_process_dir
from covidlib.data.api import Dataset, open_dataset
from covidlib.data.errors import DataError
from covidlib.data.manifest import load_manifest, locate
from covidlib.data.oracle import infection_points
from covidlib.data.torch_datasets import SliceDataset
from covidlib.data.types import Case
from covidlib.engine import binarize, fit, predict, set_determinism, supervised_loss
from covidlib.experiments.p2_data import (
    lung_views,
    open_cached,
    oracle_points,
    prepared_cases,
    split_refs,
    thin,
)
from covidlib.losses import ConsistencyLoss, LCFCNLoss, PointLoss, structure_loss
from covidlib.losses.batch import ConsistencyBatchLoss, PointBatchLoss
from covidlib.metrics import SegmentationMeter, counting_scores, lung_containment
from covidlib.models import build_model

__all__ = [
    "COUNTING_LOSSES",
    "LOSSES",
    "PROFILES",
    "SEGMENTATION_LOSSES",
    "TABLES",
    "P2Run",
    "TableRuns",
    "TableSpec",
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
    "settings",
    "table_settings",
    "train_p2",
    "train_run",
]

VERSION = "p2/2"
"""Part of every cached config: bump it when a change alters results."""

KIND = "p2_run"
"""Result kind in the :class:`~covidlib.cache.ResultCache`."""

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


# --------------------------------------------------------------------------------------------
# Run configuration
# --------------------------------------------------------------------------------------------


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
        for name in ("size", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"P2Run.{name}={value!r}: expected an integer >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"P2Run.seed={self.seed!r}: expected an integer >= 0")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"P2Run.lr={self.lr!r}: expected a finite number > 0")
        if not (isinstance(self.crop, int | float) and 0 < self.crop <= 1):
            raise ValueError(f"P2Run.crop={self.crop!r}: expected a fraction in (0, 1]")
        if not (isinstance(self.lam, int | float) and math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"P2Run.lam={self.lam!r}: expected a finite number >= 0")
        if set(self.max_slices) != {"train", "val", "test"}:
            raise ValueError(f"P2Run.max_slices={self.max_slices!r}: needs exactly the keys "
                             "'train', 'val' and 'test' (an integer >= 1 or None each)")
        for part, n in self.max_slices.items():
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise ValueError(f"P2Run.max_slices[{part!r}]={n!r}: an integer >= 1 or None")
        if self.n_background != "match" and (
                isinstance(self.n_background, bool) or not isinstance(self.n_background, int)
                or self.n_background < 0):
            raise ValueError(f"P2Run.n_background={self.n_background!r}: 'match' or an "
                             "integer >= 0")
        if self.placement not in ("distance", "uniform"):
            raise ValueError(f"P2Run.placement={self.placement!r}: 'distance' or 'uniform'")

    def config(self) -> dict[str, Any]:
        """JSON form (the cache key, with the data fingerprint added by :func:`run_p2`)."""
        return {"version": VERSION, **asdict(self)}


_RUN_KEYS = ("model", "model_kwargs", "size", "crop", "epochs", "batch_size", "lr", "lam",
             "patience", "max_slices", "n_background", "placement", "figure_slices")


def make_run(dataset: str, split: str, loss: str, seed: int, s: Mapping[str, Any],
             task: Task = "segmentation") -> P2Run:
    """A :class:`P2Run` from profile settings ``s`` (see :func:`settings`)."""
    missing = [k for k in _RUN_KEYS if k not in s]
    if missing:
        raise ValueError(f"p2: settings lack {missing}")
    return P2Run(dataset=dataset, split=split, loss=loss, seed=int(seed), task=task,
                 **copy.deepcopy({k: s[k] for k in _RUN_KEYS}))


# --------------------------------------------------------------------------------------------
# Data: which dataset, which slices, which points
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Model and loss
# --------------------------------------------------------------------------------------------


def make_model(run: P2Run) -> nn.Module:
    """The run's two-class network (background, infection)."""
    kw = dict(run.model_kwargs)
    if run.model == "unet2d":
        return build_model("unet2d", out_channels=2, **kw)
    if run.model == "fcn8_vgg16":
        kw.setdefault("progress", False)
        return build_model("fcn8_vgg16", n_classes=2, **kw)
    raise ValueError(f"P2Run.model={run.model!r}: P2 runs use 'unet2d' or 'fcn8_vgg16'")


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


# --------------------------------------------------------------------------------------------
# Prediction, scores and the slices kept for Figure 3
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


def _predict_masks(model: nn.Module, ds: SliceDataset, device: Any, batch_size: int
                   ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    preds, masks = [], []
    for probs, batch in predict(model, ds, device, batch_size):
        preds.extend(binarize(probs).numpy())
        masks.extend((batch["mask"] > 0).numpy())
    return preds, masks


def _true_points(masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.array([(p.y, p.x) for p in infection_points(m.astype(np.uint8), [1])],
                     dtype=np.int64).reshape(-1, 2) for m in masks]


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def score_slices(preds: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 refs: Sequence[tuple[str, int]],
                 lungs: Sequence[np.ndarray] | None = None) -> dict[str, float | None]:
    """Overlap scores summed over the split (P2 Sec. 4.1.2), MAE and GAME(L=4) (Sec. 4.4)
    and, given the slices' ``lungs``, the share of predicted (``lung_containment``) and of
    true (``lung_containment_truth``) infection pixels inside the lungs (Sec. 4.3.1)."""
    meter = SegmentationMeter()
    for pred, mask, (cid, _z) in zip(preds, masks, refs, strict=True):
        meter.update(pred, mask, cid)
    seg = meter.compute()
    truth = _true_points(masks)
    count = counting_scores(preds, truth, levels=(4,))
    out = {k: _nan_to_none(seg[k]) for k in ("dice", "iou", "ppv", "sens", "spec")}
    out.update({"mae": count["mae"], "game": count["game4"], "n_slices": len(preds),
                "n_volumes": seg["n_volumes"],
                # predicting no region at all scores MAE = GAME = the mean number of regions
                "regions_per_slice": float(np.mean([len(t) for t in truth]))})
    out["lung_containment"] = out["lung_containment_truth"] = None
    if lungs is not None:
        out["lung_containment"] = _nan_to_none(lung_containment(preds, lungs))
        out["lung_containment_truth"] = _nan_to_none(lung_containment(masks, lungs))
    return out


def figure_refs(masks: Sequence[np.ndarray], refs: Sequence[tuple[str, int]], n: int
                ) -> list[tuple[str, int]]:
    """``n`` test slices for Figure 3: infected slices at evenly spaced ranks of infected
    area (largest first), so that large and small lesions are both shown."""
    area = [(int(m.sum()), i) for i, m in enumerate(masks) if m.any()]
    area.sort(key=lambda t: (-t[0], t[1]))
    picks = thin(area, n) if n > 0 else []
    return [tuple(refs[i]) for _a, i in picks]  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# The public entry point: train once, score any number of test sets
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# One cached run (what the chapters call)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# A table's runs
# --------------------------------------------------------------------------------------------


@dataclass
class TableRuns:
    """Every run of one P2 table: which data, which settings, and one result per run."""

    artifact: str
    dataset: str
    split: str
    real: bool
    profile: str
    settings: dict[str, Any]
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
    if not real and s.get("stand_in_seeds"):  # the profile's cap for synthetic stand-ins
        seeds = list(seeds)[: int(s["stand_in_seeds"])]
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
                        checkpoints=bool(s.get("checkpoints")))
        runs.append({"loss": loss, "seed": seed, "result": result, "config": run.config(),
                     "cached": hit})
    return TableRuns(artifact, name, split, real, profile, s, runs)
