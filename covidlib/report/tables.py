"""Tables that put the papers' numbers beside ours."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from covidlib.data.manifest import list_datasets, load_manifest
from covidlib.data.stats import table1

STAT_KEYS = ("cases", "slices", "slices_with_infection", "infected_regions")


def paper_table1_rows(paper: str) -> dict[str, dict[str, Any]]:
    """Table 1 rows of ``paper`` ("P1" or "P2") gathered from every manifest's ``paper_stats``.

    Keyed by the paper's own dataset name (e.g. ``COVID-19-B``), in the paper's order.
    """
    rows: dict[str, dict[str, Any]] = {}
    for name in list_datasets():
        stats = load_manifest(name).paper_stats.get(paper)
        if stats and stats.name not in rows:
            rows[stats.name] = {k: getattr(stats, k) for k in STAT_KEYS}
    if not rows:
        raise KeyError(f"no manifest carries Table 1 values for paper {paper!r}")
    return dict(sorted(rows.items()))


def table1_comparison(paper: str, dataset: str, ours: Mapping[str, Any]) -> pd.DataFrame:
    """The paper's Table 1 with our measured row for ``dataset`` appended.

    When ``dataset`` is one of the paper's datasets (its manifest carries that paper's
    values) the row is labelled with the paper's name so the two can be read side by side.
    """
    rows = paper_table1_rows(paper)
    own = load_manifest(dataset).paper_stats.get(paper)
    label = f"ours: {dataset}" + (f" (= {paper} {own.name})" if own else "")
    frame = table1({**{f"{paper}: {k}": v for k, v in rows.items()}, label: dict(ours)})
    frame.insert(0, "source", [paper] * len(rows) + ["measured"])
    return frame


def table1_agreement(paper: str, dataset: str, ours: Mapping[str, Any]) -> pd.DataFrame | None:
    """Column-by-column paper vs measured values when ``dataset`` is one of the paper's."""
    own = load_manifest(dataset).paper_stats.get(paper)
    if not own:
        return None
    records = []
    for key in STAT_KEYS:
        p = int(getattr(own, key))
        if ours[key] is None:
            records.append({"statistic": key, "paper": p, "ours": "unknown",
                            "difference": "", "agrees": "not measurable"})
            continue
        o = int(ours[key])
        records.append({"statistic": key, "paper": p, "ours": o, "difference": o - p,
                        "agrees": "yes" if p == o else f"no ({100 * (o - p) / p:+.1f}%)"})
    return pd.DataFrame.from_records(records).set_index("statistic")
