"""P2 data: synthetic stand-in splits, slice selection, centre crop and the oracle's points.

P2 Sec. 4.1.1 defines three datasets; when they are not on this machine the chapter runs on
stand-ins cut from the 20-volume phantom (:data:`STAND_INS`). This module turns a dataset and
a split name into train / val / test slice lists, clicks the points of the training slices
(one per 8-connected infected region at its distance-transform maximum, as many background
points) and gives the slices that figures show, preprocessed like the network's input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from covidlib.data.api import Dataset, open_dataset
from covidlib.data.errors import DataError
from covidlib.data.manifest import load_manifest, natural_key
from covidlib.data.oracle import Point, point_annotation
from covidlib.data.preprocess import resize_image, resize_mask, to_uint8
from covidlib.data.splits import make_split
from covidlib.data.types import Case
from covidlib.report import paper_values

__all__ = [
    "A_LIKE_COUNTS",
    "STAND_INS",
    "center_crop",
    "lung_views",
    "open_cached",
    "oracle_points",
    "prepared_cases",
    "slice_views",
    "split_refs",
    "stand_in_spec",
    "thin",
    "with_lungs",
]

A_LIKE_COUNTS: dict[str, int] = {
    k: int(v) for k, v in paper_values.artifact("P2-S")["values"]["a_split"].items()}
"""P2 Sec. 4.1.1, COVID-19-A: 50 training images, 5 of them for validation, 48 test (from
``covidlib/report/paper_values/p2.yaml``: 45 / 5 / 48)."""

STAND_INS: dict[str, str] = {
    "a-like": "infected slices only; volumes at even positions (natural order) train, the "
    "2nd volume validates, the other odd positions test; thinned evenly to 45 / 5 / 48 "
    "slices (P2's COVID-19-A)",
    "b-sep": "first 9 volumes; volumes 1-5 train, 6 validates, 7-9 test (P2's COVID-19-B-Sep)",
    "b-mixed": "first 9 volumes; per volume the first 45% of the slices train, the next 5% "
    "validate, the last 50% test (P2's COVID-19-B-Mixed)",
}
"""Synthetic splits that stand in for P2's COVID-19-A and -B (C-like uses the manifest's
``sep`` and ``mixed`` splits of the 20 volumes directly)."""


def stand_in_spec(name: str, case_ids: Sequence[str]) -> dict[str, Any]:
    """The split spec (manifest schema) of synthetic stand-in ``name`` for ``case_ids``."""
    ids = sorted(case_ids, key=natural_key)
    if name == "a-like":
        if len(ids) < 4:
            raise ValueError(f"p2: split 'a-like' needs >= 4 volumes, got {len(ids)}")
        return {"method": "by-case", "train": ids[0::2], "val": [ids[1]], "test": ids[3::2]}
    if name in ("b-sep", "b-mixed"):
        if len(ids) < 9:
            raise ValueError(f"p2: split {name!r} needs >= 9 volumes, got {len(ids)}")
        nine = ids[:9]
        if name == "b-sep":
            return {"method": "by-case", "train": nine[:5], "val": [nine[5]], "test": nine[6:]}
        return {"method": "by-slice-fraction", "cases": nine, "train": 0.45, "val": 0.05,
                "test": 0.50}
    raise ValueError(f"p2: unknown stand-in split {name!r}; choose one of {sorted(STAND_INS)}")


def thin(refs: Sequence[Any], n: int | None) -> list[Any]:
    """``n`` items spread evenly over ``refs`` (item ``floor((2i + 1) len / 2n)``), in order;
    all of them when ``n`` is None or not smaller than ``len(refs)``."""
    refs = list(refs)
    if n is None or n >= len(refs):
        return refs
    if n < 1:
        raise ValueError(f"thin: n={n!r} must be >= 1 or None")
    return [refs[(2 * i + 1) * len(refs) // (2 * n)] for i in range(n)]


def center_crop(case: Case, fraction: float) -> Case:
    """``case`` with every slice cut to its central ``fraction`` (rows and columns; views).

    The authors' code does this for COVID-19-C (``CenterCrop((384, 385))`` of the 512 x 512
    slices, about 0.75) before resizing to 352: the air around the body is dropped.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"center_crop: fraction={fraction!r} must lie in (0, 1]")
    if fraction == 1:
        return case
    h, w = case.image.shape[-2:]
    ch, cw = max(1, round(fraction * h)), max(1, round(fraction * w))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    box = (slice(None), slice(y0, y0 + ch), slice(x0, x0 + cw))

    def cut(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[box]

    return dataclasses.replace(case, image=case.image[box], mask=cut(case.mask),
                               lung=cut(case.lung), organs=cut(case.organs))


def prepared_cases(ds: Dataset, crop: float) -> list[Case]:
    """The dataset's labelled cases (with their lung masks where the dataset has them, see
    :func:`with_lungs`), every slice cut to its central ``crop`` fraction.

    Which data is cropped is the caller's choice (:data:`covidlib.experiments.p2.TABLES`:
    the authors crop COVID-19-C only); ``crop=1`` leaves the slices as they are.
    """
    cases = with_lungs(ds)
    return [center_crop(c, crop) for c in cases]


_LUNGS: dict[tuple[str, str], list[Case]] = {}


def with_lungs(ds: Dataset) -> list[Case]:
    """``ds.cases()`` with ``lung`` filled from the manifest's alternative mask ``"lung"``
    (ma20-slices) when the cases carry none; unchanged when the dataset has no lung masks.
    Read once per process."""
    cases = ds.cases()
    if all(c.lung is not None for c in cases):
        return cases
    if not any("lung" in g.alt_masks for g in ds.manifest.layout.groups):
        return cases
    key = (ds.name, str(ds.root))
    if key not in _LUNGS:
        from covidlib.data.readers import load_cases

        groups = [g for g in ds.labelled_groups if "lung" in ds.manifest.group(g).alt_masks]
        lungs = {c.case_id: c.mask for c in load_cases(ds.manifest, ds.root, groups,
                                                          progress=False, alt_mask="lung")}
        _LUNGS[key] = [c if c.lung is not None or c.case_id not in lungs else
                       dataclasses.replace(c, lung=(lungs[c.case_id] != 0).astype(np.uint8))
                       for c in cases]
    return _LUNGS[key]


def _infected(case: Case, z: int, labels: Iterable[int]) -> bool:
    return bool(np.isin(case.mask[z], list(labels)).any())


def split_refs(ds: Dataset, split: str | Mapping[str, Any], cases: Sequence[Case],
               max_slices: Mapping[str, int | None] | None = None) -> dict[str, list]:
    """Train / val / test ``(case_id, z)`` lists of ``split`` (manifest split name, stand-in
    name, or a split spec in the manifest schema, e.g. ``{"method": "by-case", "train":
    [...], "val": [...], "test": [...]}``), thinned to ``max_slices`` per part."""
    if isinstance(split, Mapping):
        spec: Any = split
    elif split in STAND_INS:
        if ds.manifest.access != "generated":
            raise ValueError(f"p2: stand-in split {split!r} is for the synthetic phantom, "
                             f"not {ds.name!r}")
        spec = stand_in_spec(split, [c.case_id for c in cases])
    elif split in ds.manifest.splits:
        spec = ds.manifest.split(split)
    else:
        extra = f" or a stand-in {sorted(STAND_INS)}" if ds.manifest.access == "generated" else ""
        raise DataError(ds.name, f"unknown split {split!r}; use one of the manifest's splits "
                        f"{sorted(ds.manifest.splits)}{extra}")
    parts = make_split(cases, spec)
    if split == "a-like":
        by_id = {c.case_id: c for c in cases}
        labels = ds.manifest.infection_labels
        parts = {p: thin([r for r in refs if _infected(by_id[r[0]], r[1], labels)],
                         A_LIKE_COUNTS[p]) for p, refs in parts.items()}
    caps = dict(max_slices or {})
    out = {p: thin(refs, caps.get(p)) for p, refs in parts.items()}
    for part, refs in out.items():
        if not refs:
            raise DataError(ds.name, f"split {split!r} has no {part} slices")
    return out


def oracle_points(cases: Mapping[str, Case], refs: Iterable[tuple[str, int]], seed: int,
                  infection_labels: Sequence[int] | None, n_background: str | int = "match",
                  placement: str = "distance") -> dict[tuple[str, int], list[Point]]:
    """P2's point labels of ``refs`` (P2 Sec. 4.1.1), from one generator seeded by ``seed``.

    Per slice: one point per 8-connected infected region, then as many background points
    (at least one, so clean slices teach "background" too).
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
    out = {}
    for cid, z in refs:
        case = cases[cid]
        if case.mask is None:
            raise DataError(cid, "the oracle needs an infection mask, the case has none")
        out[(cid, z)] = point_annotation(case.mask[z], rng, infection_labels, n_background,
                                         placement=placement)  # type: ignore[arg-type]
    return out


@cache
def _open(name: str, data_root: str | None, stamp: tuple[int, int] | None) -> Dataset:
    return open_dataset(name, data_root)


def open_cached(name: str, data_root: str | Path | None = None) -> Dataset:
    """:func:`~covidlib.data.api.open_dataset`, opened once per process (cases read once)
    and again when its manifest file changed (edited in a running kernel)."""
    path = load_manifest(name).path
    st = Path(path).stat() if path is not None else None
    stamp = (st.st_mtime_ns, st.st_size) if st is not None else None
    return _open(name, None if data_root is None else str(data_root), stamp)



def slice_views(dataset: str, refs: Sequence[tuple[str, int]], size: int, crop: float = 1.0,
                data_root: str | Path | None = None
                ) -> list[tuple[np.ndarray, np.ndarray, Case]]:
    """``(image uint8 (S, S), infection mask bool (S, S), case)`` of each ref at the
    network's resolution, preprocessed exactly as :class:`SliceDataset` does."""
    ds = open_cached(dataset, data_root)
    by_id = {c.case_id: c for c in prepared_cases(ds, crop)}
    labels = ds.manifest.infection_labels
    out = []
    for cid, z in refs:
        if cid not in by_id:
            raise DataError(cid, f"not a case of {dataset!r}")
        case = by_id[cid]
        img = np.clip(np.rint(resize_image(to_uint8(case)[z], size)), 0, 255).astype(np.uint8)
        mask = resize_mask(np.isin(case.mask[z], labels).astype(np.uint8), size) > 0
        out.append((img, mask, case))
    return out


def lung_views(cases: Mapping[str, Case], refs: Sequence[tuple[str, int]], size: int
               ) -> list[np.ndarray] | None:
    """The lung mask (bool ``(size, size)``) of each ref at the network's resolution, resized
    as :class:`SliceDataset` resizes infection masks; ``None`` when a case has no lung mask."""
    if any(cases[cid].lung is None for cid, _z in refs):
        return None
    return [resize_mask((cases[cid].lung[z] != 0).astype(np.uint8), size) > 0
            for cid, z in refs]
