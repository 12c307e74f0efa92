"""P4's methods as a tool: one trained network scored on any number of test sets.

:func:`covidlib.experiments.p4.train_p4` (the public entry point) and the chapters'
:func:`covidlib.experiments.p4.run` both train through :func:`train_in_context`; the result
is a :class:`TrainedP4` whose :meth:`TrainedP4.score` adds test sets without training again.
A test set is :class:`P4TestSet` (a part of a fold of a P4 dataset) or a list of
:class:`~covidlib.experiments.p4_data.TestItem`. Scores follow P4 Tables 2-3: Dice and
Hausdorff distance per test case (:func:`covidlib.experiments.p4_train.evaluate`), summarised
over the infected cases as mean +- sd (:func:`summarize`).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covidlib.data.api import Dataset
from covidlib.experiments.p4_data import FoldData, TestItem, fold_data
from covidlib.experiments.p4_settings import DATASETS, P4Settings
from covidlib.experiments.p4_train import evaluate
from covidlib.experiments.p4_user import UserSpec, user_test_items

__all__ = ["P4TestSet", "TrainedP4", "parse_test_set", "summarize", "train_in_context"]

_PARTS = ("test", "val")


@dataclass(frozen=True)
class P4TestSet:
    """Cases to score a trained P4 network on: ``part`` (``"test"``: the fold's ``X_t`` at the
    original grid; ``"val"``: its ``X_v`` at the working resolution) of fold ``fold`` (None:
    the training fold) of ``dataset`` (None: the training dataset; otherwise a P4 dataset
    of the same dimension, :data:`covidlib.experiments.p4_settings.DATASETS`, or any dataset
    with ``split``); ``split``: a split of that dataset's manifest (None: the training
    split, or the P4 split of a P4 dataset), whose ``part`` volumes are scored."""

    part: str = "test"
    dataset: str | Dataset | None = None
    fold: int | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        if self.part not in _PARTS:
            raise ValueError(f"P4TestSet part={self.part!r}: choose one of {_PARTS}")
        if self.fold is not None and (isinstance(self.fold, bool) or self.fold < 0):
            raise ValueError(f"P4TestSet fold={self.fold!r}: a fold index >= 0")


def parse_test_set(text: str) -> P4TestSet:
    """``"test"``, ``"test@2"`` (fold 2), ``"covid-semiseg:test"``, ``"ma20-slices:val@1"``
    or ``"my.yaml:other-split/test"`` -> :class:`P4TestSet`. ``"NAME:PART"`` names a dataset
    or, when NAME is a split of the training dataset, that split (as ``covidlib train``'s
    P2 test sets)."""
    where, at, fold = text.partition("@")
    dataset, colon, part = where.rpartition(":")
    split, slash, part = part.rpartition("/")
    try:
        fold_no = int(fold) if at else None
    except ValueError:
        raise ValueError(f"test set {text!r}: the fold after '@' must be an integer") from None
    return P4TestSet(part=part, dataset=dataset if colon else None, fold=fold_no,
                     split=split if slash else None)


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and sd (ddof 1) of Dice and HD (mm) over the infected cases of ``rows`` (P4
    Tables 2-3; cases without infection and undefined distances are left out and counted)."""
    infected = [r for r in rows if not r["empty_truth"]]
    dice = np.array([r["dice"] for r in infected], dtype=float)
    hd = np.array([r["hd"] for r in infected if r["hd"] is not None], dtype=float)

    def stats(v: np.ndarray) -> tuple[float | None, float | None]:
        mean = float(v.mean()) if v.size else None
        sd = float(v.std(ddof=1)) if v.size > 1 else None
        return mean, sd

    (dm, ds), (hm, hs) = stats(dice), stats(hd)
    return {"dice": dm, "dice_sd": ds, "hd": hm, "hd_sd": hs, "n_cases": len(rows),
            "n_infected": len(infected), "n_hd_undefined": len(infected) - int(hd.size)}


@dataclass
class TrainedP4:
    """A trained P4 network: the method, the fold and seed, the settings, the network, its
    training history, and per test set the per-case ``results`` (``cases``, ``figure``) and
    their summary ``scores`` (:func:`summarize`); :meth:`score` adds test sets."""

    method: str
    dataset: Dataset
    fold: int
    seed: int
    settings: P4Settings
    model: nn.Module
    history: dict[str, list]
    device: torch.device
    store: Path | None  # P4's data cache for other folds (None: a temporary folder)
    data: FoldData
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    user: UserSpec | None = None  # your own dataset's split and pool (None: P4's dataset)

    def _items(self, test: P4TestSet | Sequence[TestItem]) -> list[TestItem]:
        if not isinstance(test, P4TestSet):
            return list(test)
        if isinstance(test.dataset, str) and test.split is None and \
                test.dataset in self.dataset.manifest.splits:  # "SPLIT:PART" (P2's form)
            test = P4TestSet(test.part, None, test.fold, test.dataset)
        ds = self.dataset if test.dataset is None else _open(test.dataset, self.dataset)
        fold = self.fold if test.fold is None else int(test.fold)
        if test.split is not None or ds.name not in DATASETS:
            return self._split_items(ds, test, fold)
        if ds.name == self.dataset.name and fold == self.fold:
            data = self.data
        else:
            if self.store is None:
                self.store = Path(tempfile.mkdtemp(prefix="covidlib-p4-data-"))
            data = fold_data(ds, fold, self.settings, self.store, progress=False)
        if data.dims != self.data.dims:
            raise ValueError(f"test set on {ds.name}: {data.dims}-D, the network is "
                             f"{self.data.dims}-D")
        if test.part == "test":
            return data.test
        spacing = tuple(float(v) for v in self.settings.spacing) if data.dims == 3 else None
        return [TestItem(it, it.label > 0, spacing, None) for it in data.val]  # type: ignore[arg-type]

    def _split_items(self, ds: Dataset, test: P4TestSet, fold: int) -> list[TestItem]:
        """The ``part`` volumes of a named split (your own datasets, :mod:`.p4_user`)."""
        own = ds.name == self.dataset.name and self.user is not None
        split = test.split or (self.user.split if own and self.user else None)
        if split is None:
            raise ValueError(f"test set on {ds.name}: name its split, e.g. "
                             f"'{ds.name}:SPLIT/{test.part}'")
        if own and self.user and (split, fold, test.part) == (self.user.split, self.fold,
                                                                "test"):
            return self.data.test
        items = user_test_items(ds, split, test.part, fold, self.settings, self.data.dims)
        pool = ({it.volume or it.case_id for it in self.data.pool}
                if own and self.user and self.user.pool_is_own(ds) else set())
        seen = sorted(pool & {t.item.case_id for t in items})
        if seen:
            warnings.warn(f"test set {split}/{test.part} of {ds.name}: case(s) {seen} were in "
                          "the unlabelled pool the student trained on", stacklevel=3)
        return items

    def score(self, test: P4TestSet | str | Sequence[TestItem], name: str | None = None,
              figure_ids: Sequence[str] = ()) -> dict[str, Any]:
        """Score the network on ``test`` (no training); stored under ``name`` (default: the
        test set's text) in :attr:`results` and :attr:`scores`; returns the summary."""
        spec = parse_test_set(test) if isinstance(test, str) else test
        key = name or (test if isinstance(test, str) else f"set{len(self.results) + 1}")
        self.results[key] = evaluate(self.model, self._items(spec), self.settings, self.device,
                                     figure_ids)
        self.scores[key] = summarize(self.results[key]["cases"])
        return self.scores[key]


def _open(dataset: str | Dataset, like: Dataset) -> Dataset:
    if isinstance(dataset, Dataset):
        return dataset
    from covidlib.experiments.p4_data import open_sibling

    return open_sibling(dataset, like)


def train_in_context(ctx: Any, method: str,
                     test_sets: Mapping[str, P4TestSet | str | Sequence[TestItem]],
                     figure_ids: Sequence[str] = ()) -> TrainedP4:
    """Train ``method`` in the fold context ``ctx`` (:class:`covidlib.experiments.p4._Context`:
    data, cached teacher, settings, seed) and score it on every test set (figure masks of
    ``figure_ids``). The path of both :func:`~covidlib.experiments.p4.train_p4` and the
    chapters."""
    model, history = ctx.train(method)
    trained = TrainedP4(method, ctx.ds, ctx.fold, ctx.seed, ctx.s, model, history, ctx.device,
                        ctx.cache.root / "p4_data", ctx.data,
                        user=getattr(ctx, "user", None))
    for name, test in test_sets.items():
        trained.score(test, name, figure_ids)
    return trained
