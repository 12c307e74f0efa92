"""The papers' train/val/test splits as lists of ``(case_id, z)`` slice references.

Two methods, as the manifests write them (``splits:`` in ``data_manifests/*.yaml``):

* ``by-case`` ("separate" splits, P1 Sec 4.1 and P2 Sec 4.1; also P2's COVID-19-A, whose
  cases are single slices): explicit ``train`` / ``val`` / ``test`` case-id lists; every
  slice of a case goes to its part. A listed id that is the ``stack`` of nifti-stack slice
  cases stands for all of them.
* ``k-fold`` (P4 Sec 4): fixed ``train`` ids and per-fold ``val`` / ``test`` lists; pick the
  fold with ``make_split(..., fold=f)``; the parts are then formed as for ``by-case``.
* ``by-slice-fraction`` ("mixed" splits): for every listed case (``cases``, default all) with
  ``Z`` slices, "the first 45% slices ... training, the next 5% ... validation, and the
  remaining slices ... test". Rounding follows the authors' code
  (``int(0.45 * Z)``, ``int(0.5 * Z)``), computed exactly with fractions::

      n_train = floor(train * Z)            # z in [0, n_train)
      n_upto  = floor((train + val) * Z)    # val: z in [n_train, n_upto)
                                            # test: z in [n_upto, Z)

  e.g. Z = 10 -> 4 / 1 / 5, Z = 21 -> 9 / 1 / 11, Z = 100 -> 45 / 5 / 50.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from covidlib.data.errors import DataError
from covidlib.data.types import Case

__all__ = ["PARTS", "SliceRef", "fraction_bounds", "make_split", "split_notes", "split_sizes"]

PARTS = ("train", "val", "test")
SliceRef = tuple[str, int]


def _get(spec: Any, key: str, default: Any = None) -> Any:
    if isinstance(spec, Mapping):
        return spec.get(key, default)
    return getattr(spec, key, default)


def _n_slices(cases: Sequence[Case] | Mapping[str, Case | int]) -> dict[str, int]:
    if isinstance(cases, Mapping):
        return {str(k): int(v) if isinstance(v, int) else v.n_slices for k, v in cases.items()}
    return {c.case_id: c.n_slices for c in cases}


def _stacks(cases: Sequence[Case] | Mapping[str, Case | int]) -> dict[str, list[str]]:
    items = cases.values() if isinstance(cases, Mapping) else cases
    out: dict[str, list[str]] = {}
    for c in items:
        if isinstance(c, Case) and "stack" in c.meta:
            out.setdefault(str(c.meta["stack"]), []).append(c.case_id)
    return out


def fraction_bounds(n_slices: int, train: float = 0.45, val: float = 0.05) -> tuple[int, int]:
    """``(n_train, n_upto)``: train is ``z < n_train``, val ``n_train <= z < n_upto``."""
    ft, fv = Fraction(str(train)), Fraction(str(val))
    if ft < 0 or fv < 0 or ft + fv > 1:
        raise ValueError(f"bad fractions train={train}, val={val}")
    return math.floor(ft * n_slices), math.floor((ft + fv) * n_slices)


def _case_lists(spec: Any, fold: int | None) -> dict[str, list]:
    """The train/val/test id lists of a by-case spec, or of fold ``fold`` of a k-fold spec."""
    if _get(spec, "method") == "by-case":
        return {p: list(_get(spec, p, None) or []) for p in PARTS}
    folds = _get(spec, "folds", None)
    if not folds:
        raise DataError("split spec", "k-fold split without explicit folds (list them)")
    if fold is None or not 0 <= int(fold) < len(folds):
        raise DataError("split spec", f"k-fold split needs fold in 0..{len(folds) - 1}, got {fold}")
    f = folds[int(fold)]
    return {"train": list(_get(spec, "train", None) or []), "val": list(_get(f, "val")),
            "test": list(_get(f, "test"))}


def make_split(
    cases: Sequence[Case] | Mapping[str, Case | int], spec: Any, fold: int | None = None
) -> dict[str, list[SliceRef]]:
    """Map ``train`` / ``val`` / ``test`` to ``(case_id, z)`` lists according to ``spec``.

    ``cases``: the loaded cases (or a mapping case id -> Case or number of slices). ``spec``:
    one entry of a manifest's ``splits`` (mapping or attribute object). ``fold`` selects the
    fold of a ``k-fold`` spec (P4: fixed ``train`` ids, per-fold ``val`` / ``test``). A case
    id in the spec that is not among ``cases``, or a case in two parts, raises ``DataError``.
    """
    nz = _n_slices(cases)
    method = _get(spec, "method")
    out: dict[str, list[SliceRef]] = {p: [] for p in PARTS}
    if method in ("by-case", "k-fold"):
        lists = _case_lists(spec, fold)
        stacks = _stacks(cases)
        owner: dict[str, str] = {}
        for part in PARTS:
            for cid in lists[part]:
                cid = str(cid)
                members = [cid] if cid in nz else stacks.get(cid)
                if not members:
                    raise DataError(cid, f"case listed in split part '{part}' was not loaded")
                for m in members:
                    if m in owner:
                        raise DataError(m, f"case is in both '{owner[m]}' and '{part}'")
                    owner[m] = part
                    out[part].extend((m, z) for z in range(nz[m]))
        return out
    if method == "by-slice-fraction":
        fr = {p: _get(spec, p, None) for p in PARTS}
        if any(v is None for v in fr.values()):
            raise DataError("split spec", f"by-slice-fraction needs train, val and test: {fr}")
        total = sum(Fraction(str(v)) for v in fr.values())
        if total != 1:
            raise DataError("split spec", f"fractions {fr} sum to {float(total):g}, not 1")
        listed = _get(spec, "cases", None)
        ids = [str(c) for c in listed] if listed else list(nz)
        seen: set[str] = set()
        for cid in ids:
            if cid not in nz:
                raise DataError(cid, "case listed in by-slice-fraction split was not loaded")
            if cid in seen:
                raise DataError(cid, "case listed twice in by-slice-fraction split")
            seen.add(cid)
            n_train, n_upto = fraction_bounds(nz[cid], fr["train"], fr["val"])
            out["train"].extend((cid, z) for z in range(n_train))
            out["val"].extend((cid, z) for z in range(n_train, n_upto))
            out["test"].extend((cid, z) for z in range(n_upto, nz[cid]))
        return out
    raise DataError("split spec", f"unknown split method {method!r}")


def split_sizes(cases: Sequence[Case] | Mapping[str, Case | int], manifest: Any
                ) -> list[dict[str, Any]]:
    """Slices and cases in train / val / test of every split of ``manifest`` (each fold of a
    k-fold split is one row): ``{"name", "split", "fold", "method", "<part>_slices",
    "<part>_cases"}``; ``name`` is e.g. ``"sep"`` or ``"p4-cv4 fold 2"``, ``fold`` None or int.
    """
    rows = []
    for name, spec in _get(manifest, "splits").items():
        folds = _get(spec, "folds", None)
        for fold in range(len(folds)) if folds else [None]:
            parts = make_split(cases, spec, fold=fold)
            row: dict[str, Any] = {"name": name if fold is None else f"{name} fold {fold}",
                                   "split": name, "fold": fold, "method": _get(spec, "method")}
            for p in PARTS:
                row[f"{p}_slices"] = len(parts[p])
                row[f"{p}_cases"] = len({c for c, _ in parts[p]})
            rows.append(row)
    return rows


def split_notes(manifest: Any) -> str:
    """The manifest's own words on how each split was chosen, as a Markdown list ("" when
    no split carries a note): e.g. which 7 / 1 / 2 volumes ``ma20-slices``' ``sep`` uses."""
    lines = [f"- **{name}** ({_get(spec, 'method')}): {' '.join(str(note).split())}"
             for name, spec in _get(manifest, "splits").items()
             if (note := _get(spec, "note", None))]
    return "\n".join(lines)
