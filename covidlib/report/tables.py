"""Tables that put the papers' numbers beside ours."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
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


def table1_verdict(agreement: pd.DataFrame) -> str:
    """The scorecard verdict of a :func:`table1_agreement` frame: "all four statistics agree",
    else each statistic that does not, with its ``agrees`` text (``"slices: no (+1.2%)"``)."""
    off = agreement.loc[agreement["agrees"] != "yes", "agrees"]
    if off.empty:
        return "all four statistics agree"
    return "; ".join(f"{k}: {v}" for k, v in off.items())


def record_table1(results_dir: str | Path, dataset: str, stats: Mapping[str, Any],
                  provenance: Mapping[str, Any], papers: tuple[str, ...] = ("P1", "P2")
                  ) -> list[Path]:
    """Scorecard entries ``<paper>-T1`` for every paper of ``papers`` whose Table 1 has a row
    for ``dataset`` (only a paper's own datasets do): paper and measured values and
    :func:`table1_verdict`. Returns the entries written."""
    from covidlib.report import scorecard

    written = []
    for paper in papers:
        agree = table1_agreement(paper, dataset, stats)
        if agree is None:
            continue
        written.append(scorecard.record(
            results_dir, f"{paper}-T1", paper=agree["paper"].to_dict(),
            ours=agree["ours"].to_dict(), verdict=table1_verdict(agree), provenance=provenance))
    return written
