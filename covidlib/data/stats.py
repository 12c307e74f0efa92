"""Dataset statistics of P1/P2 Table 1: cases, slices, slices with infection, infected regions.

"# Infected Regions" counts the connected components of each slice's binary infection mask
(labels in ``infection_labels``), summed over slices. Connectivity is a parameter: ``2``
(8-neighbourhood, the default) or ``1`` (4-neighbourhood). On the real COVID-SemiSeg
98 slices (P2's COVID-19-A, 776 regions in P2 Table 1) 8-connectivity gives 779 and
4-connectivity 805 at the released resolution (773 and 799 after a nearest-neighbour resize
to 352 x 352), so 8 is the default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from tqdm.auto import tqdm

from covidlib.data.errors import DataError
from covidlib.data.types import Case

__all__ = [
    "TABLE1_COLUMNS",
    "count_regions",
    "dataset_stats",
    "derivative_caveats",
    "derivative_table1",
    "infection_mask",
    "table1",
]

TABLE1_COLUMNS = ("# Cases", "# Slices", "# Slices with Infections (%)", "# Infected Regions")


def infection_mask(mask: np.ndarray, infection_labels: Iterable[int] | None = None) -> np.ndarray:
    """Boolean infection mask: values in ``infection_labels`` (``None``: any non-zero)."""
    m = np.asarray(mask)
    if infection_labels is None:
        return m != 0
    return np.isin(m, np.asarray(list(infection_labels)))


def count_regions(binary2d: np.ndarray, connectivity: int = 2) -> int:
    """Connected components of a 2D binary mask (``connectivity`` 1 = 4-nbr, 2 = 8-nbr)."""
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 (4-nbr) or 2 (8-nbr), got {connectivity}")
    b = np.asarray(binary2d, dtype=bool)
    if b.ndim != 2:
        raise ValueError(f"count_regions expects a 2D mask, got shape {b.shape}")
    return int(ndi.label(b, structure=ndi.generate_binary_structure(2, connectivity))[1])


def dataset_stats(
    cases: Iterable[Case],
    infection_labels: Iterable[int] | None = None,
    connectivity: int = 2,
    progress: bool = False,
) -> dict[str, Any]:
    """Table 1 statistics of a set of cases (P1 Table 1, P2 Table 1).

    ``infection_labels=None`` uses each case's ``meta["infection_labels"]`` (set by the
    readers from the manifest) and, where absent, every non-zero label.

    Returns ``cases`` (distinct ``meta['patient']`` / ``meta['stack']`` / case ids),
    ``slices``, ``slices_with_infection``, ``pct_with_infection`` (0..100) and
    ``infected_regions``. A case without a mask raises ``DataError``.
    """
    labels = None if infection_labels is None else [int(v) for v in infection_labels]
    patients: set[str] = set()
    slices = with_inf = regions = 0
    for case in tqdm(cases, desc="statistics", unit="case", disable=not progress):
        if case.mask is None:
            raise DataError(case.case_id, "no infection mask: Table 1 statistics need masks")
        patients.add(str(case.meta.get("patient", case.meta.get("stack", case.case_id))))
        inf = infection_mask(
            case.mask, labels if labels is not None else case.meta.get("infection_labels")
        )
        for z in range(inf.shape[0]):
            slices += 1
            if inf[z].any():
                with_inf += 1
                regions += count_regions(inf[z], connectivity)
    return {
        "cases": len(patients),
        "slices": slices,
        "slices_with_infection": with_inf,
        "pct_with_infection": 100.0 * with_inf / slices if slices else float("nan"),
        "infected_regions": regions,
    }


def table1(rows: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Format statistics as P2 Table 1 (one row per dataset, e.g. ``372 (44.9%)``).

    ``rows``: mapping row name -> stats, or stats with a ``name`` key; rows may be dicts or
    dataclasses (a manifest's ``paper_stats`` entries work as they are; a missing
    percentage is computed).
    """
    def as_dict(r: Any) -> Mapping[str, Any]:
        return dataclasses.asdict(r) if dataclasses.is_dataclass(r) else r

    if isinstance(rows, Mapping):
        items = [(name, as_dict(r)) for name, r in rows.items()]
    else:
        items = [(as_dict(r)["name"], as_dict(r)) for r in rows]
    records = {}
    for name, r in items:
        n, s = int(r["slices_with_infection"]), int(r["slices"])
        pct = r.get("pct_with_infection")
        pct = 100.0 * n / s if pct is None and s else pct
        records[str(name)] = {
            TABLE1_COLUMNS[0]: "n/a" if r.get("cases") is None else int(r["cases"]),
            TABLE1_COLUMNS[1]: s,
            TABLE1_COLUMNS[2]: f"{n} ({pct:.1f}%)",
            TABLE1_COLUMNS[3]: int(r["infected_regions"]),
        }
    df = pd.DataFrame.from_dict(records, orient="index", columns=list(TABLE1_COLUMNS))
    df.index.name = "Name"
    return df


def derivative_caveats(manifest: Any) -> list[str]:
    """Plain sentences on how a derivative dataset differs from its source (manifest
    ``derived_from`` / ``data_kind`` / grouped volumes); [] for a dataset that is no derivative."""
    d = dict(getattr(manifest, "derived_from", None) or {})
    if not d:
        return []
    out = [f"{manifest.name} is a {manifest.data_kind}, not the original: it is derived from "
           f"{d['dataset']}" + (f" (group {d['group']})" if d.get("group") else "") + "."]
    if d.get("kept"):
        out.append(f"It keeps {d['kept']}, so its slice and region counts cannot equal the "
                   "papers' full-volume rows.")
    if d.get("intensity"):
        out.append(f"Intensities: {d['intensity']}.")
    if any(g.volumes is not None and g.volumes.derived for g in manifest.groups):
        out.append("Its volume ids are derived (not published with the data); every "
                   "per-volume split rests on them.")
    return out


def derivative_table1(manifest: Any, ours: Mapping[str, Any]) -> pd.DataFrame:
    """Our Table 1 row of a derivative dataset beside the papers' rows of its SOURCE dataset.

    ``manifest.derived_from["dataset"]`` names the source manifest; its ``paper_stats``
    (P1 / P2 Table 1, full volumes) are the paper rows. The rows are shown side by side,
    never as an agreement check: see :func:`derivative_caveats` for what differs.
    """
    from covidlib.data.manifest import load_manifest

    d = dict(getattr(manifest, "derived_from", None) or {})
    if "dataset" not in d:
        raise DataError(getattr(manifest, "path", None) or manifest.name,
                        "no derived_from.dataset: not a derivative of another dataset")
    src = load_manifest(d["dataset"])
    rows: dict[str, Any] = {
        f"{paper}: {st.name} ({src.name}, full volumes)": st
        for paper, st in sorted(src.paper_stats.items())
    }
    rows[f"ours: {manifest.name} ({manifest.data_kind})"] = dict(ours)
    frame = table1(rows)
    frame.insert(0, "source", ["paper"] * (len(rows) - 1) + ["measured"])
    return frame
