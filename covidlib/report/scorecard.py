"""The reproduction scorecard: one row per published artifact, paper value beside ours.

Protocol (every chapter notebook ends with one short cell)::

    from covidlib.report import scorecard
    scorecard.record(results_dir, "P2-T2", paper=..., ours=..., verdict="ordering holds",
                     provenance=run)          # run = provenance.provenance(...)

:func:`record` writes ``<results_dir>/scorecard/<artifact_id>.json`` atomically (temporary
file + ``os.replace``), so a chapter that dies half-way leaves the previous entry intact.
:func:`table` builds the book's "Reproduction scorecard" page: one row for every artifact
listed in ``covidlib/report/paper_values/*.yaml`` and every artifact the issue asks for
(:data:`EXPECTED_ARTIFACTS`), "not run" where no chapter recorded it.

``paper`` and ``ours`` are JSON values (a number, a string, a list or a flat mapping such as
``{"Dice": 0.79, "IoU": 0.66}``); :func:`format_value` renders them for the table.

The "data" column says what an artifact rests on: ``real``, ``phantom`` or ``real 2-D
derivative`` (:data:`DATA_KINDS`). :func:`data_kind` derives it from the entry's
``provenance["dataset"]`` through the dataset manifest's ``data_kind``; ``record(...,
data=...)`` overrides it (e.g. a table that mixes a real test set with phantom training).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from covidlib.cache import atomic_write_text
from covidlib.report import paper_values

__all__ = [
    "COLUMNS",
    "DATA_KINDS",
    "EXPECTED_ARTIFACTS",
    "NOT_RUN",
    "PROVENANCE_KEYS",
    "ScorecardError",
    "data_kind",
    "display_frame",
    "entries",
    "format_value",
    "load_entry",
    "record",
    "styled",
    "summary",
    "table",
]

FORMAT = "covidlib.scorecard/1"
NOT_RUN = "not run"
PROVENANCE_KEYS = ("profile", "dataset", "hardware", "date")
COLUMNS = ["artifact", "title", "paper", "reference", "reference verdict", "ours", "verdict",
           "dataset", "data", "profile", "hardware", "date"]
"""``reference`` and ``reference verdict``: the published reference run's entry
(``reference/scorecard/<artifact>.json``, :mod:`covidlib.report.reference`)."""

DATA_KINDS = ("real", "real 2-D derivative", "phantom")
"""What an artifact's data can be; the first two count as real data on the page."""
REAL_KINDS = ("real", "real 2-D derivative")

EXPECTED_ARTIFACTS: tuple[str, ...] = (
    "P1-T1", "P1-F2", "P1-F5", "P1-F6", "P1-F7", "P1-headline",
    "P2-T1", "P2-T2", "P2-T3", "P2-T4", "P2-T5", "P2-T6", "P2-T7", "P2-T8", "P2-F3",
    "P3-F2", "P3-F3",
    "P4-T1", "P4-T2", "P4-T3", "P4-T4", "P4-F2", "P4-F3",
)
"""The artifacts the book must account for (issue 7), in page order."""

_SHORT = 60  # longer paper values of an artifact no chapter recorded: "see <source>"
_ID = re.compile(r"^P[1-4]-[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ScorecardError(ValueError):
    """A scorecard entry or call is wrong; the message names the artifact or file."""


def _check_id(artifact_id: str) -> str:
    if not isinstance(artifact_id, str) or not _ID.match(artifact_id):
        raise ScorecardError(f"artifact id {artifact_id!r}: expected 'P<1-4>-<name>', "
                             "e.g. 'P2-T2' or 'P1-F5'")
    return artifact_id


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as plain JSON (numpy scalars unwrapped); non-finite floats are refused."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ScorecardError(f"{where}: mapping key {k!r} is not a string")
            out[k] = _jsonable(v, f"{where}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ScorecardError(f"{where}: {value!r} is not a finite number")
        return value
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return _jsonable(value.item(), where)
    raise ScorecardError(f"{where}: {type(value).__name__} {value!r} is not a JSON value")


def _known_ids() -> dict[str, dict[str, Any]]:
    """Artifacts of every paper-values file, by id."""
    known: dict[str, dict[str, Any]] = {}
    for paper in paper_values.available():
        known.update(paper_values.load(paper))
    return known


def _manifest_kind(name: str) -> str | None:
    """``data_kind`` of the manifest called ``name`` (or with the paper alias ``name``)."""
    from covidlib.data.errors import DataError
    from covidlib.data.manifest import list_datasets, load_manifest

    try:
        names = list_datasets()
    except DataError:  # no manifest folder: nothing to derive from
        return None
    for candidate in names:
        try:
            m = load_manifest(candidate)
        except DataError:  # a broken manifest is reported by `covidlib data` itself
            continue
        if candidate == name or name in m.aliases.values():
            kind = getattr(m, "data_kind", None)  # Manifest.data_kind (H1); inferred if absent
            if kind is None:
                kind = "phantom" if m.name == "synthetic" else "real"
            return str(kind)
    return None


def data_kind(provenance: Mapping[str, Any]) -> str:
    """What the run of ``provenance`` rests on (one of :data:`DATA_KINDS`, or "" if unknown).

    The dataset name is ``provenance["dataset"]`` up to the first ``/`` (``"ma20-slices/sep"``
    -> ``ma20-slices``), looked up among the manifests (names and paper aliases); a name no
    manifest knows falls back on ``provenance["data"]`` ("synthetic" -> phantom, "real" ->
    real).
    """
    name = str(provenance.get("dataset") or "").split("/", 1)[0].strip()
    kind = _manifest_kind(name) if name else None
    if kind:
        return kind
    legacy = str(provenance.get("data") or "")
    if legacy in DATA_KINDS:
        return legacy
    return {"synthetic": "phantom"}.get(legacy, "phantom" if name == "synthetic" else "")


def record(results_dir: str | Path, artifact_id: str, *, paper: Any, ours: Any, verdict: str,
           provenance: Mapping[str, Any], note: str = "", data: str | None = None) -> Path:
    """Write one scorecard entry to ``<results_dir>/scorecard/<artifact_id>.json`` atomically.

    ``provenance`` is the dict of :func:`covidlib.report.provenance.provenance` (it must hold
    ``profile``, ``dataset``, ``hardware`` and ``date``). ``verdict`` says in words whether the
    paper's claim holds in our run. ``data`` (one of :data:`DATA_KINDS`) overrides the "data"
    column that :func:`data_kind` derives from the dataset. Returns the path written.
    """
    _check_id(artifact_id)
    if data is not None and data not in DATA_KINDS:
        raise ScorecardError(f"artifact {artifact_id}: data={data!r} is not one of "
                             f"{list(DATA_KINDS)}")
    known = _known_ids()
    if artifact_id not in known and artifact_id not in EXPECTED_ARTIFACTS:
        raise ScorecardError(
            f"artifact {artifact_id!r}: not in covidlib/report/paper_values/*.yaml nor in the "
            f"scorecard's list; known: {sorted(set(known) | set(EXPECTED_ARTIFACTS))}")
    if not isinstance(verdict, str) or not verdict.strip():
        raise ScorecardError(f"artifact {artifact_id}: verdict must be a non-empty string")
    if not isinstance(provenance, Mapping):
        raise ScorecardError(f"artifact {artifact_id}: provenance must be a mapping, got "
                             f"{type(provenance).__name__}")
    missing = [k for k in PROVENANCE_KEYS if not provenance.get(k)]
    if missing:
        raise ScorecardError(f"artifact {artifact_id}: provenance lacks {missing} "
                             "(pass covidlib.report.provenance.provenance(...))")
    entry = {
        "format": FORMAT,
        "artifact": artifact_id,
        "paper": _jsonable(paper, f"{artifact_id}.paper"),
        "ours": _jsonable(ours, f"{artifact_id}.ours"),
        "verdict": verdict.strip(),
        "note": str(note),
        "provenance": _jsonable(dict(provenance), f"{artifact_id}.provenance"),
    }
    if data is not None:
        entry["data"] = data
    path = Path(results_dir) / "scorecard" / f"{artifact_id}.json"
    atomic_write_text(path, json.dumps(entry, indent=1, sort_keys=True) + "\n")
    return path


def load_entry(path: str | Path) -> dict[str, Any]:
    """Read and check one entry file written by :func:`record`."""
    path = Path(path)
    try:
        entry = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ScorecardError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        raise ScorecardError(f"{path}: not a scorecard entry (format {FORMAT!r} expected)")
    for key in ("artifact", "verdict", "provenance"):
        if key not in entry:
            raise ScorecardError(f"{path}: missing key {key!r}")
    if entry["artifact"] != path.stem:
        raise ScorecardError(f"{path}: holds artifact {entry['artifact']!r}, not {path.stem!r}")
    return entry


def entries(results_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every recorded entry under ``<results_dir>/scorecard``, by artifact id."""
    folder = Path(results_dir) / "scorecard"
    if not folder.is_dir():
        return {}
    return {p.stem: load_entry(p) for p in sorted(folder.glob("P*.json"))}


def format_value(value: Any, digits: int = 3) -> str:
    """A JSON value as table text: numbers to ``digits`` significant digits, mappings as
    ``key: value`` pairs separated by ``; ``, lists by ``, ``; ``None`` as an empty string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {format_value(v, digits)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(format_value(v, digits) for v in value)
    return str(value)


def _order(ids: set[str]) -> list[str]:
    """Paper order, then the issue's order within a paper, then the rest alphabetically."""
    rank = {a: i for i, a in enumerate(EXPECTED_ARTIFACTS)}
    return sorted(ids, key=lambda a: (a.split("-", 1)[0], rank.get(a, len(rank)), a))


def _headline_alias(known: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Map ``P<n>-headline`` to a paper-values artifact of kind "headline" with another id."""
    alias = {}
    for aid, art in known.items():
        target = f"{aid.split('-', 1)[0]}-headline"
        if art.get("kind") == "headline" and aid != target and target in EXPECTED_ARTIFACTS:
            alias.setdefault(target, aid)
    return alias


def _reference_cells(entry: Mapping[str, Any] | None, digits: int) -> dict[str, str]:
    from covidlib.report.reference import MISSING

    if entry is None:
        return {"reference": MISSING, "reference verdict": MISSING}
    return {"reference": format_value(entry.get("ours"), digits),
            "reference verdict": str(entry.get("verdict", ""))}


def table(results_dir: str | Path, digits: int = 3, reference: str | Path | None = None):
    """The scorecard page as a ``pandas.DataFrame`` with :data:`COLUMNS`.

    ``reference``: the published reference run's folder (default:
    :func:`covidlib.report.reference.reference_dir`); its entries fill the ``reference`` and
    ``reference verdict`` columns ("not in the reference run" where it has none).

    Rows: every artifact of the paper-values files plus :data:`EXPECTED_ARTIFACTS`. An
    artifact no chapter recorded shows "not run" in ``ours`` and ``verdict`` and empty run
    columns (``ours`` names the datasets of its paper-values ``needs_data``, if any); the
    paper's value then comes from the paper-values file's ``values`` (when short) or says
    where to find it (its ``source``).
    """
    import pandas as pd

    from covidlib.report.reference import reference_dir

    known = _known_ids()
    alias = _headline_alias(known)
    done = entries(results_dir)
    ref = entries(reference_dir(reference))
    kinds: dict[str, str] = {}  # dataset name -> data kind, looked up once per table
    ids = (set(known) | set(EXPECTED_ARTIFACTS) | set(done)) - set(alias)
    rows = []
    for aid in _order(ids):
        art = known.get(aid) or known.get(alias.get(aid, ""), {})
        entry = done.get(aid) or done.get(alias.get(aid, ""))
        title = art.get("title", "")
        ref_cells = _reference_cells(ref.get(aid) or ref.get(alias.get(aid, "")), digits)
        if entry is None:
            paper = format_value(art.get("values"), digits)
            if (not paper or len(paper) > _SHORT) and "source" in art:
                paper = f"see {art['source']}"
            needs = art.get("needs_data") or []
            ours = (f"{NOT_RUN}: needs the {' and '.join(needs)} data "
                    f"(`covidlib data fetch {needs[0]}`, then a 00_datasets entry in "
                    "book/plan.yml)" if needs else NOT_RUN)
            rows.append({"artifact": aid, "title": title,
                         "paper": paper if art else "(no paper values)", **ref_cells,
                         "ours": ours, "verdict": NOT_RUN,
                         "dataset": "", "data": "", "profile": "",
                         "hardware": "", "date": ""})
            continue
        prov = entry["provenance"]
        kind = entry.get("data")
        if not kind:
            key = f"{prov.get('dataset', '')}|{prov.get('data', '')}"
            kind = kinds[key] = kinds.get(key) or data_kind(prov)
        rows.append({"artifact": aid, "title": title,
                     "paper": format_value(entry.get("paper"), digits), **ref_cells,
                     "ours": format_value(entry.get("ours"), digits),
                     "verdict": entry["verdict"],
                     "dataset": str(prov.get("dataset", "")), "data": kind,
                     "profile": str(prov.get("profile", "")),
                     "hardware": str(prov.get("hardware", "")), "date": str(prov.get("date", ""))})
    return pd.DataFrame(rows, columns=COLUMNS)


def summary(frame) -> dict[str, int]:
    """Counts for the page's prose: ``artifacts``, ``recorded``, ``not_run``, and of the
    recorded ones ``real_data`` (real or a real 2-D derivative) and ``phantom``."""
    not_run = int((frame["verdict"] == NOT_RUN).sum())
    ran = frame["verdict"] != NOT_RUN
    real = int((ran & frame["data"].isin(REAL_KINDS)).sum())
    phantom = int((ran & (frame["data"] == "phantom")).sum())
    return {"artifacts": len(frame), "recorded": len(frame) - not_run, "not_run": not_run,
            "real_data": real, "phantom": phantom}


def display_frame(frame):
    """The page's columns: artifact, what, paper, reference run, reference verdict, this
    build, verdict, data (real / phantom / real 2-D derivative) and one "run" column (dataset
    · profile · hardware · date of this build)."""
    run_cols = ["dataset", "profile", "hardware", "date"]
    out = frame[["artifact", "title", "paper", "reference", "reference verdict", "ours",
                 "verdict", "data"]].copy()
    out["run"] = [" · ".join(str(v) for v in row if v) for row in frame[run_cols].values]
    return out.rename(columns={"title": "what", "reference": "reference run",
                               "ours": "this build"})


def styled(frame):
    """The table for the page (:func:`display_frame`): no index, "not run" rows greyed."""
    shown = display_frame(frame)

    def row_style(row):
        grey = "color: #888; background: #f6f6f6" if row["verdict"] == NOT_RUN else ""
        return [grey] * len(row)

    return (shown.style.hide(axis="index").apply(row_style, axis=1)
            .set_properties(**{"text-align": "left", "vertical-align": "top",
                               "white-space": "normal", "font-size": "0.85em"})
            .set_properties(subset=["artifact"], **{"white-space": "nowrap"})
            .set_table_attributes('class="covidlib-scorecard"'))
