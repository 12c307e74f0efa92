"""Incremental book builds: a chapter's key, why it is stale, the cache file and the timings.

A chapter is re-executed only when something it depends on changed since its last successful
run (see :mod:`covidlib.report.book`); its key and the chapters' run times live under
``results_dir``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from covidlib.cache import atomic_write_text
from covidlib.report.book_plan import PlanEntry

CACHE_FORMAT = "covidlib.book-cache/1"


def _sha(path: Path) -> str | None:
    """sha256 of a file's bytes, ``None`` when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def source_digest(package: Path | None = None) -> str:
    """sha256 over the path and content of every file of the ``covidlib`` package and of the
    ``data_manifests/`` folder beside it (``__pycache__`` left out)."""
    if package is None:
        import covidlib

        package = Path(covidlib.__file__).resolve().parent
    h = hashlib.sha256()
    for root in (package, package.parent / "data_manifests"):
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if "__pycache__" in path.parts or path.suffix == ".pyc" or not path.is_file():
                continue
            h.update(f"{root.name}/{path.relative_to(root)}\0".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _volatile(rel: str) -> bool:
    """Files of ``results_dir`` that are not cached results: the scorecard entries, the
    book's own timing and cache files, claims, locks and temporary files."""
    name = rel.rsplit("/", 1)[-1]
    return (rel.startswith("scorecard/") or name.startswith(("book_timings_", "book_cache_", "."))
            or name.endswith((".lock", ".claim", ".tmp", ".part")))


def results_digest(results_dir: Path) -> str:
    """The state of the results cache: sha256 over the name, size and modification time of
    every file under ``results_dir`` that is not :func:`_volatile` (absent = empty)."""
    rows = []
    for folder, dirs, files in os.walk(results_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel_dir = os.path.relpath(folder, results_dir).replace(os.sep, "/")
        for name in files:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if _volatile(rel):
                continue
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:  # removed while we looked (a claim released)
                continue
            rows.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()


def scorecard_digest(results_dir: Path) -> str:
    """sha256 of the contents of the scorecard entries (what a later-stage chapter reads)."""
    h = hashlib.sha256()
    for path in sorted((Path(results_dir) / "scorecard").glob("*.json")):
        h.update(path.name.encode() + b"\0" + (_sha(path) or "").encode())
    return h.hexdigest()


def _entry_params(entry: PlanEntry, profile: str, device: str, results_dir: Path) -> dict:
    return {"profile": profile, "device": device, "results_dir": str(results_dir),
            **entry.parameters_for(profile)}


def chapter_key(entry: PlanEntry, repo: Path, profile: str, device: str, results_dir: Path,
                sources: str, results: str, scorecard: str) -> dict[str, Any]:
    """What a chapter's executed copy depends on (see the module docstring)."""
    params = _entry_params(entry, profile, device, results_dir)
    return {
        "notebook": _sha(repo / "notebooks" / f"{entry.notebook}.ipynb"),
        "parameters": json.loads(json.dumps(params, sort_keys=True, default=str)),
        "sources": sources,
        "inputs": {p: _sha(repo / p) for p in entry.inputs},
        "results": results,
        "scorecard": scorecard if entry.stage > 0 else "",
    }


_REASONS = {"notebook": "the notebook changed", "parameters": "its parameters changed",
            "sources": "the covidlib sources changed", "inputs": "an input file changed",
            "results": "the results cache changed",
            "scorecard": "the scorecard entries changed"}


def stale_reason(key: Mapping[str, Any], record: Mapping[str, Any] | None,
                 executed: Path) -> str | None:
    """Why a chapter must be re-executed, or ``None`` when its executed copy ``executed``
    is up to date with ``key`` (the record of its last successful run: ``record``)."""
    if not record or record.get("format") != CACHE_FORMAT:
        return "never executed with this profile"
    sha = _sha(executed)
    if sha is None:
        return f"no executed copy ({executed.name})"
    if sha != record.get("output"):
        return "the executed copy is another run's"
    for field_name, reason in _REASONS.items():
        if key.get(field_name) != record.get(field_name):
            return reason
    return None


def _cache_path(results_dir: Path, profile: str) -> Path:
    return Path(results_dir) / f"book_cache_{profile}.json"


def load_cache(results_dir: Path, profile: str) -> dict[str, dict]:
    """The chapters' records (``book_cache_<profile>.json``); empty when absent or unreadable
    (every chapter then runs)."""
    try:
        data = json.loads(_cache_path(results_dir, profile).read_text())
    except (OSError, ValueError):
        return {}
    chapters = data.get("chapters") if isinstance(data, dict) else None
    return chapters if isinstance(chapters, dict) else {}


def save_cache(results_dir: Path, profile: str, chapters: Mapping[str, dict]) -> Path:
    path = _cache_path(results_dir, profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"format": CACHE_FORMAT, "chapters": dict(chapters)},
                                       indent=1, sort_keys=True))
    return path


def record_timings(results_dir: Path, profile: str, chapters: Mapping[str, Any] | None = None,
                   **fields: Any) -> Path:
    """Merge ``chapters`` (name -> status, seconds, worker) and top-level ``fields`` (e.g.
    ``wall_seconds``: the whole run, ``html_seconds``: the jupyter-book build) into
    ``<results_dir>/book_timings_<profile>.json``, written atomically."""
    path = Path(results_dir) / f"book_timings_{profile}.json"
    try:
        timings = json.loads(path.read_text())
        timings = timings if isinstance(timings, dict) else {}
    except (OSError, ValueError):
        timings = {}
    timings.update(chapters or {})
    timings.update(fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(timings, indent=1))
    return path


def previous_seconds(results_dir: Path, profile: str) -> dict[str, float]:
    """Each chapter's time in the last run (``book_timings_<profile>.json``), if any."""
    path = Path(results_dir) / f"book_timings_{profile}.json"
    try:
        data = json.loads(path.read_text())
        return {k: float(v["seconds"]) for k, v in data.items()
                if isinstance(v, dict) and "seconds" in v}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def longest_first(entries: list[PlanEntry], seconds: dict[str, float]) -> list[PlanEntry]:
    """Submission order: chapters never timed first, then by their last time, longest first
    (so the longest notebooks do not start last); ties keep the plan order."""
    return sorted(entries, key=lambda e: -seconds.get(e.output, float("inf")))
