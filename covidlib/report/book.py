"""Execute the book's notebooks with papermill and build the HTML book.

The book's chapters are listed in ``book/plan.yml``: each entry names a notebook in
``notebooks/``, the executed copy it produces in ``book/_generated/`` (the page the table of
contents points to) and its papermill parameters. ``profile``, ``device`` and
``results_dir`` are added to every entry. An entry may require a dataset (``requires``):
when that data cannot be found, a short page saying so replaces the chapter instead of
failing the build. A failing notebook is reported by name with its traceback; the other
notebooks still run and the command exits non-zero.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from covidlib.cache import atomic_write_text

PROFILES = ("cpu", "gpu", "paper")
_ENTRY_KEYS = {"notebook", "output", "title", "parameters", "requires"}


class BookError(Exception):
    """The book plan or a notebook run is wrong; the message names the file and reason."""


@dataclass(frozen=True)
class PlanEntry:
    notebook: str
    output: str
    title: str
    parameters: dict[str, Any] = field(default_factory=dict)
    requires: str | None = None


@dataclass
class RunOutcome:
    entry: PlanEntry
    status: str  # "ok" | "failed" | "missing-data"
    seconds: float
    error: str = ""


def load_plan(path: Path) -> list[PlanEntry]:
    """Read and validate ``book/plan.yml``."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise BookError(f"{path}: book plan not found") from exc
    except yaml.YAMLError as exc:
        raise BookError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, list) or not raw:
        raise BookError(f"{path}: expected a non-empty list of chapters")
    entries, outputs = [], set()
    for i, item in enumerate(raw):
        where = f"{path}: entry {i}"
        if not isinstance(item, dict):
            raise BookError(f"{where}: expected a mapping, got {type(item).__name__}")
        unknown = set(item) - _ENTRY_KEYS
        if unknown:
            raise BookError(f"{where}: unknown keys {sorted(unknown)}")
        for key in ("notebook", "output", "title"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise BookError(f"{where}: '{key}' must be a non-empty string")
        if item["output"] in outputs:
            raise BookError(f"{where}: output '{item['output']}' is used twice")
        outputs.add(item["output"])
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise BookError(f"{where}: 'parameters' must be a mapping")
        entries.append(PlanEntry(item["notebook"], item["output"], item["title"], params,
                                 item.get("requires")))
    return entries


def _missing_data_notebook(entry: PlanEntry, reason: str) -> dict:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(
        f"# {entry.title}\n\n"
        f"This chapter was **not executed**: it needs the `{entry.requires}` dataset, "
        f"which was not found on this machine.\n\n```\n{reason}\n```\n\n"
        "Place the data as described above and run `make book` again.")]
    return nb


def run_entry(entry: PlanEntry, repo: Path, profile: str, results_dir: Path,
              device: str = "auto", log: Callable[[str], None] = print) -> RunOutcome:
    """Execute one plan entry into ``book/_generated/<output>.ipynb``."""
    import nbformat
    import papermill

    src = repo / "notebooks" / f"{entry.notebook}.ipynb"
    out = repo / "book" / "_generated" / f"{entry.output}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if entry.requires:
        from covidlib.data.errors import DataError
        from covidlib.data.manifest import load_manifest, locate

        try:
            locate(load_manifest(entry.requires))
        except DataError as exc:
            atomic_write_text(out, nbformat.writes(_missing_data_notebook(entry, str(exc))))
            log(f"[book] {entry.output}: skipped, dataset '{entry.requires}' not found")
            return RunOutcome(entry, "missing-data", time.perf_counter() - t0, str(exc))
    if not src.exists():
        return RunOutcome(entry, "failed", 0.0, f"{src}: notebook not found")
    params = {"profile": profile, "device": device, "results_dir": str(results_dir),
              **entry.parameters}
    tmp = out.with_name(f".{out.stem}.running.ipynb")
    log(f"[book] {entry.output}: running {src.name} with {params}")
    try:
        papermill.execute_notebook(str(src), str(tmp), parameters=params, kernel_name="python3",
                                   language="python",
                                   cwd=str(src.parent), progress_bar=False)
    except Exception as exc:  # the notebook's own error: report it, keep going
        if hasattr(exc, "ename"):
            detail = f"{exc.ename}: {exc.evalue}\n" + "\n".join(exc.traceback)
        else:
            detail = "".join(traceback.format_exception(exc))
        return RunOutcome(entry, "failed", time.perf_counter() - t0, _strip_ansi(detail))
    os.replace(tmp, out)
    return RunOutcome(entry, "ok", time.perf_counter() - t0)


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def execute_plan(repo: Path, profile: str, results_dir: Path, device: str = "auto",
                 only: list[str] | None = None, log: Callable[[str], None] = print
                 ) -> list[RunOutcome]:
    """Run every (or the ``only``) plan entries in order; never stops at a failure."""
    if profile not in PROFILES:
        raise BookError(f"profile {profile!r} is not one of {PROFILES}")
    entries = load_plan(repo / "book" / "plan.yml")
    if only:
        unknown = set(only) - {e.output for e in entries}
        if unknown:
            raise BookError(f"unknown chapters {sorted(unknown)}; "
                            f"known: {[e.output for e in entries]}")
        entries = [e for e in entries if e.output in only]
    outcomes = [run_entry(e, repo, profile, results_dir, device, log) for e in entries]
    timings = {o.entry.output: {"status": o.status, "seconds": round(o.seconds, 2)}
               for o in outcomes}
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results_dir / f"book_timings_{profile}.json",
                      json.dumps(timings, indent=1))
    return outcomes


def build_html(repo: Path, log: Callable[[str], None] = print) -> Path:
    """``jupyter-book build book`` (Sphinx, offline); returns the HTML folder."""
    exe = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or shutil.which(
        "jupyter-book")
    if exe is None:
        raise BookError("jupyter-book is not installed: run `make book` (installs the book extra)")
    cmd = [exe, "build", str(repo / "book"), "--builder", "html"]
    log(f"[book] {' '.join(cmd)}")
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BookError(f"jupyter-book build failed (exit {proc.returncode}):\n"
                        f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return repo / "book" / "_build" / "html"


def report(outcomes: list[RunOutcome]) -> str:
    """Human summary: one line per chapter, then each failure's traceback."""
    lines = [f"  {o.status:<12} {o.seconds:7.1f} s  {o.entry.output}" for o in outcomes]
    for o in outcomes:
        if o.status == "failed":
            lines.append(f"\n--- {o.entry.output} ({o.entry.notebook}.ipynb) failed ---\n"
                         f"{o.error}")
    return "\n".join(lines)
