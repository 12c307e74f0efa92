"""P4 data of one fold: expert sets ``X_tr``, ``X_v``, ``X_t`` and the unlabelled pool
``X_p`` at the working resolution (see :mod:`covidlib.experiments.p4` for the protocol),
and the training patches drawn from them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from covidlib.cache import config_hash
from covidlib.data.api import Dataset, open_dataset
from covidlib.data.augment import crop_padded, flip_lr_ud, sample_crop
from covidlib.data.errors import DataError
from covidlib.data.ma20 import pool_cases_outside, semiseg_pool_volume
from covidlib.data.manifest import natural_key
from covidlib.data.phantom import PhantomConfig, generate_case
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
from covidlib.experiments.p4_settings import (
    DATASETS,
    POOL_SEED,
    POOL_SITE_NAMES,
    POOL_SITES,
    VERSION,
    P4Settings,
)

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
    start, code = sample_crop(shape, patch, rng, item.foreground(label_key), pos_fraction,
                              flip)

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


