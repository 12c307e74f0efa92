"""P4's method on your own data (issue 17): the four sets of P4 from any dataset and split.

P4 (Hussain et al., Sec. 2, Fig. 1) needs four sets; on a dataset that is not one of P4's
(:data:`~covidlib.experiments.p4_settings.DATASETS`) they come from a split of its manifest
(``by-case``, or ``k-fold`` with a fold) and a pool:

* ``X_tr``: the split's ``train`` part, expert-labelled: trains the teacher ``Phi_sl`` with
  the combo loss (Eq. 1, Sec. 2.3).
* ``X_v``: its ``val`` part, expert-labelled: the clean meta set of Alg. 1, whose loss
  gradient gives the gradient-similarity weights (Eqs. 3-5) and whose batch is the student's
  expert term.
* ``X_t``: its ``test`` part: scored by Dice and Hausdorff distance (Tables 2-3).
* ``X_p``: the pool, labelled by the teacher (``Y_p = Phi_sl(X_p)``) and re-weighted by
  Alg. 1 (Eqs. 5-9): ``pool=None`` takes every labelled case of the dataset the split does
  not list; a group name of the manifest takes that group without the split's test volumes
  (e.g. one without masks, or with a noisy teacher's); any other text is a dataset (name or
  manifest path) whose cases are the pool. A pool case that is a slice of a volume (a group
  listing it by slice id: the same image file) counts as that volume. The masks pool cases
  carry are never trained on with ``teacher="ours"``; they are kept as the pool's
  ``provided`` labels (a pseudo-labelled pool): ``teacher="provided"`` trains the student on
  them instead of the teacher's, and the teacher's agreement with them is reported.

Slices (8-bit images, or any dataset that is not HU volumes) train 2-D networks on single
slices and score each test volume slice by slice (as ``ma20-slices``); HU volumes
(``nifti-volumes``) train P4's 3-D network on patches at ``spacing`` (as ``synthetic``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidlib.data.api import Dataset
from covidlib.data.errors import DataError
from covidlib.data.preprocess import resample_volume, resize_mask
from covidlib.data.splits import make_split
from covidlib.data.types import Case
from covidlib.experiments.p4_data import (
    FoldData,
    Item,
    TestItem,
    _infection,
    _prepare_3d,
    _slice_item,
    _stack_item,
    open_sibling,
)
from covidlib.experiments.p4_settings import DATASETS, P4Settings

__all__ = ["UserSpec", "p4_spec", "user_fold_data", "user_spec", "user_test_items"]

_PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class UserSpec:
    """Where P4's sets come from on your own dataset: the manifest ``split``, the ``pool``
    (None: the cases the split does not list; a group of the manifest; or a dataset) and
    the networks' dimension ``dims`` (2: slices, 3: HU volumes)."""

    split: str
    pool: str | None
    dims: int

    def pool_is_own(self, ds: Dataset) -> bool:
        """Whether the pool's cases come from ``ds`` itself (not another dataset)."""
        return self.pool is None or self.pool in _group_names(ds)

    def config(self, ds: Dataset) -> dict[str, Any]:
        """What the results cache keys on beside the dataset: pool and dimension."""
        if self.pool is None:
            pool: Any = "unlisted cases"
        elif self.pool in _group_names(ds):
            pool = f"group {self.pool}"
        else:
            pool = open_sibling(self.pool, ds).fingerprint()
        return {"pool": pool, "dims": self.dims}


def _group_names(ds: Dataset) -> list[str]:
    return [g.name for g in ds.manifest.layout.groups]


def user_spec(ds: Dataset, split: str | None, pool: str | None) -> UserSpec:
    """Check that ``ds`` has what P4 needs from ``split`` (a named ``by-case`` or ``k-fold``
    split of its manifest) and pick the dimension; errors name the missing split or part."""
    splits = sorted(ds.manifest.splits)
    if not split:
        raise ValueError(f"p4: dataset {ds.name!r} is not one of P4's: name the split that "
                         f"gives X_tr (train), X_v (val) and X_t (test); its splits: {splits}")
    if split not in ds.manifest.splits:
        raise ValueError(f"p4: dataset {ds.name!r} has no split {split!r}; its splits: {splits}")
    method = ds.manifest.split(split).method
    if method not in ("by-case", "k-fold"):
        raise ValueError(f"p4: split {split!r} of {ds.name!r} is {method!r}: P4 needs whole "
                         "volumes per part (a by-case or k-fold split)")
    hu = ds.manifest.intensity == "hu" and ds.manifest.format == "nifti-volumes"
    return UserSpec(split, pool, 3 if hu else 2)


def p4_spec(ds: Dataset, split: str | None, pool: str | None) -> UserSpec | None:
    """None for one of P4's datasets (whose split and pool are fixed: ``split`` must be
    theirs, ``pool`` None); your own dataset's :class:`~.p4_user.UserSpec` otherwise."""
    if ds.name not in DATASETS:
        return user_spec(ds, split, pool)
    own = DATASETS[ds.name]["split"]
    if split is not None and split != own:
        raise ValueError(f"p4: P4 on {ds.name} uses split {own!r} (choose the fold), not "
                         f"{split!r}")
    if pool is not None:
        raise ValueError(f"p4: pool={pool!r}: {ds.name} brings P4's pool; pool= is for your "
                         "own datasets")
    return None


def _parts(ds: Dataset, split: str, fold: int) -> dict[str, list[str]]:
    """Case ids of ``train`` / ``val`` / ``test`` of ``split`` (fold ``fold`` of a k-fold)."""
    spec = ds.manifest.split(split)
    folds = spec.folds or ()
    if spec.method == "by-case" and fold != 0:
        raise ValueError(f"p4: split {split!r} of {ds.name!r} has one fold (0), not {fold}")
    if spec.method == "k-fold" and not 0 <= fold < len(folds):
        raise ValueError(f"p4: fold={fold}: split {split!r} of {ds.name!r} has folds "
                         f"0..{len(folds) - 1}")
    try:
        refs = make_split(ds.cases(), spec, fold=fold if spec.method == "k-fold" else None)
    except DataError as exc:
        raise ValueError(f"p4: split {split!r} of {ds.name!r}: {exc}") from None
    return {p: list(dict.fromkeys(c for c, _ in refs[p])) for p in _PARTS}


def _labelled(ds: Dataset, split: str, part: str, ids: Sequence[str],
              cases: Mapping[str, Case], role: str) -> None:
    if not ids:
        raise ValueError(f"p4: split {split!r} of {ds.name!r} has no {part!r} cases: P4 needs "
                         f"them as {role}")
    missing = [c for c in ids if cases[c].mask is None]
    if missing:
        raise ValueError(f"p4: {part!r} cases {missing} of {ds.name!r} have no infection mask: "
                         f"P4 needs expert labels for {role}")


def _train_items(cases: Sequence[Case], s: P4Settings, dims: int) -> list[Item]:
    if dims == 3:
        return [_prepare_3d(c, s) for c in cases]
    return [_slice_item(c, z, int(s.size_2d)) for c in cases for z in range(c.n_slices)]


def _test_items(cases: Sequence[Case], s: P4Settings, dims: int) -> list[TestItem]:
    if dims == 3:
        return [TestItem(_prepare_3d(c, s), _infection(c), tuple(float(v) for v in c.spacing),
                         c) for c in cases]
    return [_stack_item(c, int(s.size_2d)) for c in cases]


def _slice_volumes(ds: Dataset) -> dict[str, str]:
    """The image file of each slice of a volume of ``ds`` (a group whose slices are grouped
    into ``volumes``) -> the volume's case id."""
    return {str(Path(f).resolve()): c.case_id for c in ds.cases() if "slice_ids" in c.meta
            for f in c.meta.get("image_paths", ())}


def _volume_of(case: Case, slices: Mapping[str, str]) -> str:
    """The volume ``case`` belongs to: the volume one of whose slices it is (another group
    that lists that slice by its slice id reads the same image file), else its own id."""
    path = case.meta.get("image_path")
    if "slice_ids" in case.meta or not path:
        return case.case_id
    return slices.get(str(Path(path).resolve()), case.case_id)


def _pool_cases(ds: Dataset, spec: UserSpec, listed: set[str], test: set[str],
                slices: Mapping[str, str]) -> list[Case]:
    """The pool's cases; a slice of a volume counts as that volume (``slices``:
    :func:`_slice_volumes`), so no slice of a test volume reaches a pool taken from ``ds``."""
    if spec.pool is None:
        pool = [c for c in ds.cases() if _volume_of(c, slices) not in listed]
        where = f"every labelled case of {ds.name!r} that split {spec.split!r} does not list"
    elif spec.pool in _group_names(ds):
        pool = [c for c in ds.cases(spec.pool) if _volume_of(c, slices) not in test]
        where = f"group {spec.pool!r} of {ds.name!r} without the test cases"
    else:
        other = open_sibling(spec.pool, ds)
        pool = list(other.cases(_group_names(other)))
        where = f"dataset {other.name!r}"
    if not pool:
        raise ValueError(f"p4: no unlabelled pool X_p: {where} gives no case; pass pool= a "
                         "group of the manifest or another dataset (covidlib train --pool)")
    return pool


def _pool_items(cases: Sequence[Case], s: P4Settings, dims: int,
                slices: Mapping[str, str]) -> list[Item]:
    """The pool at the working resolution; a case's mask is kept as ``provided``; a 2-D
    item's ``volume`` is the volume its case is a slice of (:func:`_volume_of`)."""
    items = []
    for c in cases:
        mask = None if c.mask is None else _infection(c).astype(np.uint8)
        if dims == 3:
            it = _prepare_3d(c, s, with_label=False)
            if mask is not None:
                it.provided = resample_volume(mask, c.spacing, s.spacing, kind="mask")
            items.append(it)
            continue
        for z in range(c.n_slices):
            it = _slice_item(c, z, int(s.size_2d), with_label=False)
            it.volume = _volume_of(c, slices)
            if mask is not None:
                it.provided = resize_mask(mask[z], int(s.size_2d))
            items.append(it)
    if dims == 2 and len(items) > int(s.pool_2d):  # evenly spread, as the shipped pools
        at = np.linspace(0, len(items) - 1, int(s.pool_2d)).round().astype(int)
        items = [items[int(i)] for i in at]
    return items


def user_fold_data(ds: Dataset, spec: UserSpec, fold: int, s: P4Settings) -> FoldData:
    """``X_tr``, ``X_v``, ``X_t`` of ``fold`` of ``spec.split`` and the pool ``X_p`` (see the
    module docstring); no test case of the split reaches a pool taken from ``ds``."""
    ids = _parts(ds, spec.split, fold)
    cases = {c.case_id: c for c in ds.cases()}
    _labelled(ds, spec.split, "train", ids["train"], cases, "X_tr (the teacher's training set)")
    _labelled(ds, spec.split, "val", ids["val"], cases, "X_v (Alg. 1's clean meta set)")
    _labelled(ds, spec.split, "test", ids["test"], cases, "X_t (the test set)")
    listed = {c for p in _PARTS for c in ids[p]}
    slices = _slice_volumes(ds) if spec.pool_is_own(ds) else {}
    pool = _pool_cases(ds, spec, listed, set(ids["test"]), slices)
    return FoldData(spec.dims,
                    _train_items([cases[c] for c in ids["train"]], s, spec.dims),
                    _train_items([cases[c] for c in ids["val"]], s, spec.dims),
                    _test_items([cases[c] for c in ids["test"]], s, spec.dims),
                    _pool_items(pool, s, spec.dims, slices))


def user_test_items(ds: Dataset, split: str, part: str, fold: int, s: P4Settings, dims: int
                    ) -> list[TestItem]:
    """The volumes of ``part`` (``test`` or ``val``) of ``split`` of ``ds`` as test cases of a
    ``dims``-D network (each scored as a volume)."""
    if split not in ds.manifest.splits:
        raise ValueError(f"test set on {ds.name!r}: no split {split!r}; its splits: "
                         f"{sorted(ds.manifest.splits)}")
    ids = _parts(ds, split, fold)[part]
    cases = {c.case_id: c for c in ds.cases()}
    _labelled(ds, split, part, ids, cases, "a test set")
    return _test_items([cases[c] for c in ids], s, dims)
