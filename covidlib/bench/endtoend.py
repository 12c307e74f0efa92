"""End-to-end book times, as ``covidlib book`` records them.

:func:`covidlib.report.book.execute_plan` writes ``<results_dir>/book_timings_<profile>.json``:
one entry per chapter with its ``status``, ``seconds`` and the worker that ran it. Notebooks may
run in parallel (one per core, or one per GPU), so the book's wall time lies between the
longest chapter and the sum of all chapters. A run of the whole plan also records
``wall_seconds`` (all notebooks, measured), ``workers`` and, when the HTML was built,
``html_seconds`` (the jupyter-book build); an incremental run (some chapters reused because
nothing they depend on changed) records ``last_incremental`` (its wall seconds, executed and
reused chapters, date) and leaves the whole run's figures as they were.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from covidlib.jsonio import read_json_if_present

GOALS_S = {"cpu": 480.0, "reference": 4 * 3600.0, "gpu": 1200.0}
"""Wall-time goals of the whole book: 8 min (cpu) and 4 h (reference) on the 2-core CPU machine,
20 min on one GPU."""
INCREMENTAL_GOAL_S = 20.0
"""A rebuild in which nothing changed (every chapter reused, the HTML rebuilt)."""


def book_timings(results_dir: str | Path, profile: str) -> dict[str, Any] | None:
    """Per-chapter seconds of the last ``covidlib book --profile <profile>`` run, with the
    file's modification time, the sum, the longest chapter and the measured wall time when
    recorded; ``None`` when the book has not been run with this profile. A file that is not
    the expected JSON raises ``ValueError`` naming it."""
    path = Path(results_dir) / f"book_timings_{profile}.json"
    raw = read_json_if_present(path)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of chapter -> timing")
    chapters = []
    for name, entry in raw.items():
        if isinstance(entry, dict) and "seconds" in entry:
            try:
                seconds = float(entry["seconds"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}: chapter {name!r} has seconds="
                                 f"{entry['seconds']!r}, not a number") from None
            chapters.append({"chapter": name, "status": str(entry.get("status", "")),
                             "seconds": seconds, "worker": str(entry.get("worker", ""))})
    if not chapters:
        raise ValueError(f"{path}: no chapter timings found")
    wall, html = raw.get("wall_seconds"), raw.get("html_seconds")
    mtime = _dt.datetime.fromtimestamp(path.stat().st_mtime).astimezone()
    return {
        "file": str(path),
        "written": mtime.isoformat(timespec="seconds"),
        "profile": profile,
        "chapters": chapters,
        "sum_seconds": sum(c["seconds"] for c in chapters),
        "max_seconds": max(c["seconds"] for c in chapters),
        "wall_seconds": float(wall) if isinstance(wall, int | float) else None,
        "html_seconds": float(html) if isinstance(html, int | float) else None,
        "workers": raw.get("workers"),
        "incremental": raw.get("last_incremental") if isinstance(
            raw.get("last_incremental"), dict) else None,
        "goal_seconds": GOALS_S.get(profile),
        "all_ok": all(c["status"] in ("ok", "missing-data") for c in chapters),
    }


def config_times(results_dir: str | Path) -> list[dict[str, Any]]:
    """Compute seconds of every cached experiment configuration, per result kind and profile.

    :meth:`covidlib.cache.ResultCache.cached` stores each result as
    ``<results_dir>/<kind>/<hash>.json`` with its wall seconds in ``meta.seconds``; the profile is
    the configuration's ``profile`` entry when it has one. Returns one row per (kind, profile):
    ``configs`` (results found), ``timed`` (with seconds), ``total_seconds``, ``max_seconds``
    (0.0 when none is timed). A result file that is not JSON raises ``ValueError`` naming it.
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    root = Path(results_dir)
    if not root.is_dir():
        return []
    for path in sorted(root.glob("*/*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(record, dict) or "config" not in record or "kind" not in record:
            continue  # not a ResultCache record (e.g. a scorecard entry)
        config = record["config"] if isinstance(record["config"], dict) else {}
        key = (str(record["kind"]), str(config.get("profile", "")))
        row = rows.setdefault(key, {"kind": key[0], "profile": key[1], "configs": 0, "timed": 0,
                                    "total_seconds": 0.0, "max_seconds": 0.0})
        row["configs"] += 1
        seconds = (record.get("meta") or {}).get("seconds")
        if isinstance(seconds, int | float):
            row["timed"] += 1
            row["total_seconds"] += float(seconds)
            row["max_seconds"] = max(row["max_seconds"], float(seconds))
    return [rows[k] for k in sorted(rows)]
