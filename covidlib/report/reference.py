"""The published reference run beside this build: three columns, prose and wall times.

The reference run is the whole book executed once with the ``reference`` profile (issue 14,
item 3) and published in the repository's ``reference/`` folder by
``covidlib reference export`` (:mod:`covidlib.report.reference_export`): the cached runs
(``<kind>/<hash>.json``), the tables the chapters wrote (``<paper>/<table>.csv``), the
scorecard entries (``scorecard/<artifact>.json``) and ``provenance.json`` (commit, dates,
machine, wall time per chapter, datasets). Everything here only *reads* that folder:

* :func:`beside` puts the reference run's numbers between the paper's and this build's in
  any table a chapter shows (columns paper | reference run | this build);
* :func:`paragraph` writes the short paragraph each chapter glues about the reference run;
* :func:`timings_table` / :func:`timings_markdown` give the Performance page its wall times.

A checkout without ``reference/`` (or a reference run without the table) never fails: the
cells say "not in the reference run" and the prose says that nothing is published.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from covidlib.jsonio import read_json_if_present
from covidlib.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, TOO_SMALL

__all__ = [
    "ENV",
    "LABEL",
    "MISSING",
    "THIS_BUILD",
    "Note",
    "ReferenceRunError",
    "artifact_table",
    "beside",
    "describe",
    "entries",
    "entry_beside",
    "entry_table",
    "label_demo_paragraph",
    "label_demo_table",
    "load_provenance",
    "p2_table",
    "paragraph",
    "read_table",
    "reference_dir",
    "timings_markdown",
    "timings_table",
    "verdict_label",
]

ENV = "COVIDLIB_REFERENCE"
"""Environment variable naming another reference folder (default: ``<repo>/reference``)."""
MISSING = "not in the reference run"
LABEL = "reference run"
THIS_BUILD = "this build"
PROVENANCE = "provenance.json"
FORMAT = "covidlib.reference/1"


class ReferenceRunError(ValueError):
    """A reference folder or file that cannot be used (names it and the reason)."""


def reference_dir(root: str | Path | None = None) -> Path:
    """The reference folder: ``root``, else ``$COVIDLIB_REFERENCE``, else ``<repo>/reference``."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "reference"


def load_provenance(root: str | Path | None = None) -> dict[str, Any] | None:
    """``reference/provenance.json``, or ``None`` when no reference run is published here."""
    path = reference_dir(root) / PROVENANCE
    prov = read_json_if_present(path, ReferenceRunError)
    if prov is None:
        return None
    if not isinstance(prov, dict) or prov.get("format") != FORMAT:
        raise ReferenceRunError(f"{path}: not a reference provenance file (format "
                                f"{FORMAT!r} expected; write it with `covidlib reference "
                                "export`)")
    return prov


def read_table(name: str, root: str | Path | None = None) -> pd.DataFrame | None:
    """The reference run's table ``<paper>/<table>.csv`` (as the chapter wrote it), or
    ``None`` when the folder or the table is absent."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ReferenceRunError(f"reference table {name!r}: expected a path inside the "
                                "reference folder such as 'p2/P2-T5_ma20-slices.csv'")
    path = reference_dir(root) / name
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        warnings.warn(f"{path}: unreadable reference table ({exc}); shown as {MISSING!r}",
                      stacklevel=2)
        return None


def _reference_frame(table: pd.DataFrame | str | None, derive: Callable | None,
                     root: str | Path | None) -> pd.DataFrame | None:
    """The reference table in the layout of the shown one (``derive`` applied), or None."""
    frame = read_table(table, root) if isinstance(table, str) else table
    if frame is None or derive is None:
        return frame
    try:
        return derive(frame)
    # a table from another code state (a column missing or renamed, another type or value):
    # say so, go on; anything else is a bug of the summary function and propagates
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        warnings.warn(f"reference table {table if isinstance(table, str) else ''}: the chapter "
                      f"could not summarise it ({type(exc).__name__}: {exc}); shown as "
                      f"{MISSING!r}", stacklevel=3)
        return None


def _cell(value: Any) -> str:
    """A reference cell as text: numbers to 3 significant digits, NaN as 'n/a'."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return str(int(value)) if value.is_integer() and abs(value) < 1e9 else f"{value:.3g}"
    return str(value)


def _row_key(values: Iterable[Any]) -> tuple[str, ...]:
    return tuple(_cell(v) if isinstance(v, float) else str(v) for v in values)


def _rows(frame: pd.DataFrame, keys: Sequence[Any] | None) -> list[tuple[str, ...]]:
    if keys:
        missing = [k for k in keys if k not in frame.columns]
        if missing:
            raise ReferenceRunError(f"beside: key column(s) {missing} not in the table's "
                                    f"columns {list(frame.columns)}")
        return [_row_key(r) for r in frame[list(keys)].itertuples(index=False)]
    return [_row_key(v if isinstance(v, tuple) else (v,)) for v in frame.index]


def _value_columns(frame: pd.DataFrame, keys: Sequence[Any] | None) -> list[Any]:
    """Default columns to compare: ``(*, "ours")`` of a two-level header, else every column
    that is neither a key nor the paper's."""
    if isinstance(frame.columns, pd.MultiIndex):
        return [c for c in frame.columns if c[-1] == "ours"]
    return [c for c in frame.columns if c not in (keys or ()) and "paper" not in str(c).lower()]


def _names(column: Any, label: str) -> tuple[Any, Any]:
    """(reference column, this-build column) names for ``column``."""
    if isinstance(column, tuple):
        return (*column[:-1], label), (*column[:-1], THIS_BUILD)
    text = str(column)
    if re.search(r"\bours\b", text):  # "ours", "Mean Dice (ours)", "ours: test Dice"
        return (re.sub(r"\bours\b", label, text, count=1),
                re.sub(r"\bours\b", THIS_BUILD, text, count=1))
    return f"{text}: {label}", f"{text}: {THIS_BUILD}"


def beside(frame: pd.DataFrame, table: pd.DataFrame | str | None,
           keys: Sequence[Any] | None = None, columns: Sequence[Any] | None = None, *,
           derive: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
           root: str | Path | None = None, label: str = LABEL) -> pd.DataFrame:
    """``frame`` (a table this build shows) with the reference run's numbers beside ours.

    ``table`` is the same table from the reference run: a frame, or the name of the CSV the
    chapter wrote (``"p2/P2-T5_ma20-slices.csv"``, read from :func:`reference_dir`), turned
    into the shown layout by ``derive`` (the chapter's own summary function) when given.
    Rows are matched on the ``keys`` columns (default: the index). For every compared column
    (``columns``; default: the ``"ours"`` sub-columns of a two-level header, else every
    column that is neither a key nor the paper's) a reference column is inserted before it
    and ours is renamed "this build", giving paper | reference run | this build. A row, a
    column or a whole table the reference run lacks reads "not in the reference run".
    """
    ref = _reference_frame(table, derive, root)
    cols = list(columns) if columns is not None else _value_columns(frame, keys)
    absent = [c for c in cols if c not in frame.columns]
    if absent:
        raise ReferenceRunError(f"beside: column(s) {absent} not in the table's columns "
                                f"{list(frame.columns)}")
    ours_rows = _rows(frame, keys)
    lookup: dict[tuple[str, ...], Mapping[Any, Any]] = {}
    if ref is not None:
        try:
            lookup = {k: row for k, (_i, row) in zip(_rows(ref, keys), ref.iterrows(),
                                                      strict=True)}
        except ReferenceRunError as exc:
            warnings.warn(f"reference table: {exc}; shown as {MISSING!r}", stacklevel=2)
    out = frame.copy()
    for col in cols:
        ref_name, ours_name = _names(col, label)
        values = [_cell(lookup[k].get(col)) if k in lookup and col in lookup[k].index
                  else MISSING for k in ours_rows]
        out.insert(list(out.columns).index(col), ref_name, values)
        out = out.rename(columns={col: ours_name} if not isinstance(col, tuple) else {})
        if isinstance(col, tuple):  # a two-level header: rename the one sub-column
            out.columns = pd.MultiIndex.from_tuples(
                [ours_name if c == col else c for c in out.columns])
    return out


def p2_table(report: Any, root: str | Path | None = None) -> pd.DataFrame:
    """P2's displayed table (``p2_report.display_table``) with the reference run's column per
    metric: paper | reference run (n seeds) | this build."""
    from covidlib.experiments import p2_report

    name = f"p2/{report.artifact}_{report.runs.dataset}.csv"
    ref = read_table(name, root)
    n = int(ref["n_seeds"].max()) if ref is not None and "n_seeds" in ref and len(ref) else 0
    label = f"{LABEL} ({n} seed{'s' if n != 1 else ''})" if n else LABEL
    return beside(p2_report.display_table(report.frame), ref, label=label,
                  derive=p2_report.display_table)


def artifact_table(artifact: str, paper: Mapping[str, Any] | None, ours: Mapping[str, Any],
                   root: str | Path | None = None) -> pd.DataFrame:
    """paper | reference run | this build for one artifact's headline numbers (the mappings a
    chapter records in its scorecard entry), the reference's from its scorecard entry; for
    tables no chapter CSV can rebuild (e.g. P1's headline)."""
    from covidlib.report.scorecard import format_value

    entry = entries(root).get(artifact)
    theirs = entry.get("ours") if entry is not None else None
    theirs = theirs if isinstance(theirs, Mapping) else {}
    paper = dict(paper or {})
    keys = list(dict.fromkeys([*paper, *ours, *theirs]))
    rows = [{"quantity": k, "paper": format_value(paper.get(k)),
             LABEL: format_value(theirs[k]) if k in theirs else MISSING,
             THIS_BUILD: format_value(ours[k]) if k in ours else "n/a"} for k in keys]
    return pd.DataFrame(rows, columns=["quantity", "paper", LABEL, THIS_BUILD]
                        ).set_index("quantity")


class Note(str):
    """One line a chapter shows where the reference run has no numbers for a table (instead
    of an empty column), under the table ``frame`` when one is attached; Jupyter renders it
    as Markdown (alone) or HTML (under the table)."""

    frame: pd.DataFrame | None = None

    def _repr_markdown_(self) -> str | None:
        return str(self) if self.frame is None else None

    def _repr_html_(self) -> str | None:
        if self.frame is None:
            return None
        text = html.escape(str(self).replace("*", "").replace("`", ""))
        return f"{self.frame._repr_html_()}<p><em>{text}</em></p>"


def _absent(what: str, dataset: str | None, other: str | None = None,
            frame: pd.DataFrame | None = None) -> Note:
    where = f" for `{dataset}`" if dataset else ""
    ran = f" (it ran on `{other}`)" if other else ""
    note = Note(f"*Reference run:* no {what} numbers{where}{ran}; the table shows "
                + ("the paper and this build only." if frame is None or "paper" in
                   " ".join(map(str, frame.columns)).lower() else "this build only."))
    note.frame = frame
    return note


def entry_beside(frame: pd.DataFrame | None, artifact: str, dataset: str | None = None,
                 column: str = "ours", root: str | Path | None = None
                 ) -> pd.DataFrame | Note | None:
    """``frame`` (one row per quantity of ``artifact``'s scorecard entry, this build's values
    in ``column``) with the reference run's values from its scorecard entry beside them:
    paper | reference run | this build. ``frame`` under a one-line :class:`Note` when the
    reference run has no entry for ``artifact`` (on ``dataset``, when given); ``frame`` None
    (nothing to show, e.g. no Table 1 row of the paper for ``dataset``): None."""
    if frame is None:
        return None
    entry = entries(root).get(artifact) or {}
    ran = (entry.get("provenance") or {}).get("dataset")
    theirs = entry.get("ours")
    if not isinstance(theirs, Mapping) or (dataset and ran != dataset):
        return _absent(artifact, dataset, ran if ran != dataset else None, frame)
    ref = pd.DataFrame({column: [theirs.get(k) for k in frame.index]}, index=frame.index)
    return beside(frame, ref, columns=[column], root=root)


def entry_table(artifact: str, results_dir: str | Path, root: str | Path | None = None
                ) -> pd.DataFrame | Note:
    """:func:`artifact_table` of the entry this build recorded for ``artifact`` in
    ``results_dir`` (e.g. P4-T1's headline: trainable parameters, rows matching)."""
    from covidlib.report import scorecard

    entry = scorecard.entries(results_dir).get(artifact)
    if entry is None:
        return Note(f"*{artifact}:* this build recorded no scorecard entry in `{results_dir}`.")
    ours = entry.get("ours") if isinstance(entry.get("ours"), Mapping) else {}
    paper = entry.get("paper") if isinstance(entry.get("paper"), Mapping) else {}
    return artifact_table(artifact, paper, ours, root)


def _label_demo_runs(dataset: str, root: str | Path | None) -> tuple[dict, float | None]:
    """The reference run's simulated annotators on ``dataset`` by (strategy, seed), and the
    target Dice its profile states (None: derived from the curves)."""
    from types import SimpleNamespace

    runs, target = {}, None
    for path in sorted((reference_dir(root) / "label_demo").glob("*.json")):
        try:
            record = json.loads(path.read_text())
            config, history = record["config"], record["result"]["history"]
            if config["dataset"] != dataset:
                continue
            key = (config["session"]["strategy"], int(config["seed"]))
            target = config["settings"].get("target_dice")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"{path}: not a label-demo record the chapter can read ({exc}); "
                          "left out of the reference column", stacklevel=3)
            continue
        runs[key] = SimpleNamespace(history=history)
    return runs, target


def label_demo_table(table: pd.DataFrame | None, dataset: str,
                     root: str | Path | None = None) -> pd.DataFrame | Note:
    """The label demo's summary (``label_demo.summary``: entropy vs random) with the
    reference run's, rebuilt from its published runs on ``dataset`` by the same functions,
    beside each column. The reference's target Dice is its own (90 % of its best final Dice
    unless its profile states one), so its "to target" columns count to that target."""
    from covidlib.experiments import label_demo

    runs, stated = _label_demo_runs(dataset, root)
    if table is None or len({k[0] for k in runs}) < 2:
        return _absent("entropy-vs-random", dataset, frame=table)
    frame = label_demo.curves_frame(runs)
    target = float(stated) if stated is not None else round(
        0.9 * float(frame[frame["cycle"] == frame["cycle"].max()]
                    .groupby("strategy")["dice"].mean().max()), 2)
    return beside(table, label_demo.summary(frame, target), keys=["strategy"],
                  label=f"{LABEL} (target {target:.2f})")


def label_demo_paragraph(dataset: str, root: str | Path | None = None) -> str:
    """Markdown about the reference run's simulated annotators on ``dataset`` (the label
    demo chapter glues it): per strategy its final Dice, the answers to its target Dice and
    the share of questions on infection (P1 Sec. 5.1's mechanism); says so plainly when no
    reference run, or none of its runs on ``dataset``, is published."""
    from covidlib.experiments import label_demo

    prov = load_provenance(root)
    if prov is None:
        return paragraph([], root)
    runs, stated = _label_demo_runs(dataset, root)
    if len({k[0] for k in runs}) < 2:
        return (f"{_run_sentence(prov)} published no entropy-vs-random annotator runs on "
                f"`{dataset}`: this page shows this build's numbers only.")
    frame = label_demo.curves_frame(runs)
    last = frame[frame["cycle"] == frame["cycle"].max()]
    target = float(stated) if stated is not None else round(
        0.9 * float(last.groupby("strategy")["dice"].mean().max()), 2)
    parts = []
    for row in label_demo.summary(frame, target).to_dict("records"):
        reach = row["answers to target"]
        to = (f"{reach:.0f} answers to reach Dice {target:.2f} "
              f"({row['seeds reaching target']} seeds)" if reach == reach
              else f"never reached Dice {target:.2f}")
        parts.append(f"**{row['strategy']}** ended at Dice {row['final Dice']:.3f} "
                     f"(sd {row['final Dice sd']:.3f}) and {to}, with "
                     f"{100 * row['on infection']:.0f} % of its questions on infection")
    n = frame["seed"].nunique()
    return (f"{_run_sentence(prov)} ran the simulated annotators on `{dataset}` ({n} "
            f"seed{'s' if n != 1 else ''} per strategy): " + "; ".join(parts) + ".")


# --------------------------------------------------------------------------------------------
# Scorecard entries and prose
# --------------------------------------------------------------------------------------------


def entries(root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The reference run's scorecard entries by artifact id ({} when none are published)."""
    from covidlib.report import scorecard

    return scorecard.entries(reference_dir(root))


def verdict_label(text: str) -> str:
    """The three-way label (``covidlib.verdict``) a verdict sentence starts with or names;
    "" when it uses none of them (a verdict of another vocabulary)."""
    low = str(text).strip().lower().lstrip("*")
    for label in (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED):
        if low.startswith(label):
            return label
    for label in (INCONCLUSIVE, NOT_REPRODUCED):
        if label in low:
            return label
    return REPRODUCED if "reproduced" in low.replace(NOT_REPRODUCED, "") else ""


def _baseline(text: str, label: str) -> str:
    """What the verdict says about the fully supervised baseline's convergence, or that the
    run was too small to decide (``covidlib.verdict.TOO_SMALL``, with its reason)."""
    low = text.lower()
    at = low.find(TOO_SMALL)
    if at >= 0:
        rest, depth, end = text[at + len(TOO_SMALL):], 1, None
        for i, ch in enumerate(rest):  # the reason runs to the bracket the marker opened
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                end = i
                break
        why = rest[:end].lstrip(":").strip()
        also = " and its fully supervised baseline had not converged" \
            if "not converged" in low else ""
        return f"the run was too small{f' ({why})' if why else ''}{also}"
    if "not converged" in low or label == INCONCLUSIVE:
        return "its fully supervised baseline had not converged"
    if "converged" in low or label == NOT_REPRODUCED:
        return "with a converged fully supervised baseline"
    return "no convergence check recorded for this artifact"


def _machine(prov: Mapping[str, Any]) -> str:
    m = prov.get("machine") or {}
    parts = [str(m.get("cpu") or "an unnamed CPU"), f"{m.get('cores', '?')} cores"]
    if m.get("ram_gib"):
        parts.append(f"{m['ram_gib']:g} GiB RAM")
    threads = m.get("torch_threads")
    if threads:
        parts.append(f"torch {m.get('torch', '?')} with {', '.join(map(str, threads))} "
                     "thread(s)")
    return ", ".join(parts)


def _run_sentence(prov: Mapping[str, Any]) -> str:
    wall = (prov.get("wall_seconds") or {}).get("total")
    data = "; ".join(f"{n} ({k})" if k else n for n, k in (prov.get("datasets") or {}).items())
    when = prov.get("finished") or prov.get("started") or "an unknown date"
    return (f"The published reference run (profile `{prov.get('profile', '?')}`, commit "
            f"`{str(prov.get('commit', '?'))[:12]}`, finished {when}"
            + (f" after {wall / 3600:.1f} h" if isinstance(wall, int | float) else "")
            + f", on {_machine(prov)}; data: {data or 'not recorded'})")


def _artifact_sentence(aid: str, entry: Mapping[str, Any] | None) -> str:
    from covidlib.report.scorecard import format_value

    if entry is None:
        return f"- **{aid}**: {MISSING} (it recorded no scorecard entry for it)."
    verdict = str(entry.get("verdict", ""))
    label = verdict_label(verdict)
    dataset = (entry.get("provenance") or {}).get("dataset")
    note = "; ".join(str(x) for x in (dataset, entry.get("note")) if x)
    note = f" ({note})" if note else ""
    ours, paper = entry.get("ours"), entry.get("paper")
    if isinstance(ours, Mapping) and isinstance(paper, Mapping):  # pair them key by key
        values = "; ".join(f"{k} {format_value(v)}"
                           + (f" (paper {format_value(paper[k])})" if k in paper else "")
                           for k, v in ours.items())
    else:
        values = f"{format_value(ours)} (paper: {format_value(paper)})"
    return (f"- **{aid}**{note}: {values}. Verdict **{label or 'as stated'}**, "
            f"{_baseline(verdict, label)}: {verdict.replace('**', '')}")


def paragraph(artifacts: str | Sequence[str], root: str | Path | None = None) -> str:
    """Markdown about the reference run's numbers for ``artifacts`` (a chapter glues it): its
    value against the paper's, its three-way verdict and what that says of the baseline, with
    the run's profile, commit, machine and data from ``provenance.json``. Says so plainly when
    no reference run is published or it lacks an artifact."""
    ids = [artifacts] if isinstance(artifacts, str) else list(artifacts)
    prov = load_provenance(root)
    if prov is None:
        return ("No reference run is published in this checkout (`reference/provenance.json` "
                "is absent), so this chapter shows this build's numbers only; `covidlib "
                "reference export` publishes one.")
    found = entries(root)
    counts = sorted({len(v) for v in (prov.get("seeds") or {}).values() if v})
    seed_text = f", {' or '.join(map(str, counts))} seed(s) per chapter" if counts else ""
    lines = [f"{_run_sentence(prov)}{seed_text}, found:", ""]
    lines += [_artifact_sentence(aid, found.get(aid)) for aid in ids]
    return "\n".join(lines)


def describe(root: str | Path | None = None) -> str:
    """One paragraph for the scorecard page: which reference run is published and how its
    verdicts fall into the three-way vocabulary (or that none is published)."""
    prov = load_provenance(root)
    if prov is None:
        return ("No reference run is published in this checkout (`reference/provenance.json` "
                "is absent): the *reference run* columns say so on every row.")
    labels = [verdict_label(e.get("verdict", "")) for e in entries(root).values()]
    counts = ", ".join(f"{labels.count(v)} {v}" for v in (REPRODUCED, NOT_REPRODUCED,
                                                            INCONCLUSIVE))
    other = len(labels) - sum(labels.count(v) for v in (REPRODUCED, NOT_REPRODUCED,
                                                         INCONCLUSIVE))
    return (f"{_run_sentence(prov)} recorded {len(labels)} artifacts: {counts}"
            + (f", and {other} with a verdict in other words (e.g. figures to compare by eye)"
               if other else "") + ".")


# --------------------------------------------------------------------------------------------
# Wall times (the Performance page)
# --------------------------------------------------------------------------------------------


def timings_table(root: str | Path | None = None) -> pd.DataFrame | None:
    """The reference run's wall time per chapter (minutes, longest first) and in all, from
    ``provenance.json``; ``None`` when no reference run is published."""
    prov = load_provenance(root)
    if prov is None:
        return None
    wall = prov.get("wall_seconds") or {}
    chapters = wall.get("chapters") or {}
    rows = [{"chapter": name, "minutes": round(float(s) / 60, 1)}
            for name, s in sorted(chapters.items(), key=lambda kv: (-float(kv[1]), kv[0]))]
    rows.append({"chapter": "sum of the chapters",
                 "minutes": round(sum(float(s) for s in chapters.values()) / 60, 1)})
    if isinstance(wall.get("total"), int | float):
        rows.append({"chapter": f"whole book (wall time, {wall.get('workers', '?')} chapters "
                                "at a time)", "minutes": round(float(wall["total"]) / 60, 1)})
    return pd.DataFrame(rows).set_index("chapter")


def timings_markdown(root: str | Path | None = None) -> str:
    """One paragraph introducing :func:`timings_table` (or saying it is not published)."""
    prov = load_provenance(root)
    if prov is None:
        return ("The reference run's wall times are not published yet: `reference/"
                "provenance.json` is absent from this checkout.")
    return (f"{_run_sentence(prov)} took, per chapter and in all (measured by `covidlib book`"
            ", chapters running in parallel):")
