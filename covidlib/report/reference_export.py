"""Publishing a reference run: ``covidlib reference export --results-dir DIR --out reference``.

Issue 14, item 3: the results of the ``reference`` profile's whole-book run are committed in
one folder with their provenance. :func:`export` copies the publishable files of a results
folder (JSON and CSV: cached runs with their metrics, curves and selections, the chapters'
tables, the scorecard entries, the book timings) and leaves out everything else (weights and
checkpoints, images, arrays, logs, claims and temporary files; the masks the widget demo
keeps per cycle are stripped from its records). It writes ``provenance.json`` (profile,
commit, start and end, machine, wall time per chapter and in all, seeds, datasets and their
kinds, every file with its size and sha256) and replaces the target folder atomically.

It refuses a results folder whose book run did not finish every chapter of ``book/plan.yml``
with status "ok".
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covidlib.report.reference import FORMAT, PROVENANCE, ReferenceRunError

__all__ = ["ExportPlan", "check_finished", "export", "machine", "plan_files", "publishable"]

SUFFIXES = (".json", ".csv", ".jsonl")
"""What is published: text results only."""
MAX_BYTES = 1 << 20
"""A file larger than this (after stripping) is left out and named in the provenance."""
STRIP: dict[str, tuple[tuple[str, ...], ...]] = {
    # the widget demo keeps every cycle's predicted masks (base64 images, ~100 kB a run)
    "label_demo": (("result", "replay", "predictions"),),
}
"""Keys removed from the records of a result kind (images inside JSON)."""
_NOT_PUBLISHED_NAMES = ("book_cache_", "run.log", "started")


@dataclass
class ExportPlan:
    """The files to publish (relative paths, sorted) and those left out, by reason."""

    files: list[str] = field(default_factory=list)
    left_out: dict[str, list[str]] = field(default_factory=dict)

    def leave_out(self, rel: str, reason: str) -> None:
        self.left_out.setdefault(reason, []).append(rel)


def publishable(rel: str) -> str | None:
    """Why the results file ``rel`` (a relative POSIX path) is not published, or ``None``."""
    parts = rel.split("/")
    name = parts[-1]
    if any(p.startswith(".") for p in parts) or name.endswith((".lock", ".tmp", ".part",
                                                                ".claim")):
        return "hidden, lock or temporary file"
    if any(p == "checkpoints" or p.endswith("_checkpoints") for p in parts[:-1]):
        return "checkpoint folder"
    if name.startswith(_NOT_PUBLISHED_NAMES):
        return "book cache or run log (machine-specific)"
    if not name.endswith(SUFFIXES):
        return f"not a text result ({Path(name).suffix or 'no suffix'}: weights, images or arrays)"
    return None


def plan_files(results_dir: str | Path) -> ExportPlan:
    """Every file under ``results_dir``, sorted, split into published and left out."""
    root = Path(results_dir)
    plan = ExportPlan()
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            plan.leave_out(rel, "symbolic link")
            continue
        reason = publishable(rel)
        if reason:
            plan.leave_out(rel, reason)
        else:
            plan.files.append(rel)
    return plan


def check_finished(results_dir: str | Path, profile: str, outputs: Iterable[str]
                   ) -> dict[str, Any]:
    """The book timings of ``profile`` when every chapter in ``outputs`` finished "ok" in a
    whole-book run; else :class:`ReferenceRunError` naming the chapters and their status."""
    path = Path(results_dir) / f"book_timings_{profile}.json"
    if not path.is_file():
        raise ReferenceRunError(f"{path}: absent; `covidlib book --profile {profile} "
                                f"--results-dir {results_dir}` has not finished there")
    try:
        timings = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReferenceRunError(f"{path}: not valid JSON ({exc})") from exc
    bad = {}
    for name in outputs:
        entry = timings.get(name)
        status = entry.get("status") if isinstance(entry, Mapping) else None
        if status != "ok":
            bad[name] = status or "did not run"
    if bad:
        raise ReferenceRunError(f"{path}: not every chapter finished ok, so this run is not "
                                "publishable: " + ", ".join(f"{k} ({v})" for k, v in bad.items()))
    if not isinstance(timings.get("wall_seconds"), int | float):
        raise ReferenceRunError(f"{path}: no 'wall_seconds' of a whole-book run (only partial "
                                "or incremental runs were recorded); run the whole book")
    return timings


def machine(torch_threads: Iterable[int] = ()) -> dict[str, Any]:
    """This machine: CPU model, cores, RAM (GiB), Python and torch versions, and the torch
    thread counts the published runs used (from their cache records)."""
    import torch

    cpu = platform.processor() or platform.machine()
    ram = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram, "system": platform.system(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": sorted(set(torch_threads))}


def _strip(record: dict[str, Any], paths: Iterable[tuple[str, ...]]) -> list[str]:
    """Remove ``paths`` from ``record`` in place; the dotted paths removed."""
    gone = []
    for keys in paths:
        node: Any = record
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and keys[-1] in node:
            del node[keys[-1]]
            gone.append(".".join(keys))
    return gone


def _copy(src: Path, dst: Path, rel: str) -> list[str]:
    """Copy one file; records of a :data:`STRIP` kind lose their image fields (noted in the
    record's ``published`` key). Returns the stripped paths."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    kind = rel.split("/", 1)[0]
    if kind in STRIP and rel.endswith(".json") and "/" in rel:
        record = json.loads(src.read_text())
        gone = _strip(record, STRIP[kind]) if isinstance(record, dict) else []
        if gone:
            record["published"] = {"stripped": gone}
            dst.write_text(json.dumps(record, indent=1, sort_keys=True))
            return gone
    shutil.copyfile(src, dst)
    return []


def _records(out: Path, files: Iterable[str]) -> Iterable[dict[str, Any]]:
    for rel in files:
        if rel.count("/") == 1 and rel.endswith(".json") and not rel.startswith("scorecard/"):
            try:
                record = json.loads((out / rel).read_text())
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "config" in record and "result" in record:
                yield record


def _datasets(out: Path, files: list[str]) -> dict[str, str]:
    """Dataset name -> data kind, from the records' data fingerprints and the scorecard."""
    from covidlib.report.scorecard import data_kind

    found: dict[str, bool | None] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("name"), str) and "real" in node and "splits" in node:
                found[node["name"]] = node.get("real")
            for v in node.values():
                walk(v)

    for record in _records(out, files):
        walk(record.get("config"))
    for rel in files:
        if rel.startswith("scorecard/"):
            prov = json.loads((out / rel).read_text()).get("provenance") or {}
            name = str(prov.get("dataset") or "").split("/", 1)[0]
            if name:
                found.setdefault(name, None)
    return {name: data_kind({"dataset": name}) or ("real" if real else "phantom"
                                                   if real is False else "")
            for name, real in sorted(found.items())}


def _commits(out: Path, files: list[str]) -> list[str]:
    commits = set()
    for rel in files:
        if rel.startswith("scorecard/"):
            c = (json.loads((out / rel).read_text()).get("provenance") or {}).get("commit")
            if c:
                commits.add(str(c))
    return sorted(commits)


def _git_head(repo: Path) -> str:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, text=True,
                             capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return res.stdout.strip() or "unknown"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _provenance(out: Path, files: list[str], timings: Mapping[str, Any], profile: str,
                commit: str, seeds: Mapping[str, Any], started: str | None,
                left_out: Mapping[str, list[str]], stripped: list[str]) -> dict[str, Any]:
    chapters = {k: float(v["seconds"]) for k, v in timings.items()
                if isinstance(v, Mapping) and "seconds" in v}
    total = float(timings["wall_seconds"])
    finished = str(timings.get("date") or "")
    if not started and finished:
        with_tz = _dt.datetime.strptime(finished, "%Y-%m-%dT%H:%M:%S%z")
        started = (with_tz - _dt.timedelta(seconds=total)).strftime("%Y-%m-%dT%H:%M:%S%z")
    threads = [r["runtime"]["torch_threads"] for r in _records(out, files)
               if isinstance(r.get("runtime"), dict) and r["runtime"].get("torch_threads")]
    return {
        "format": FORMAT, "profile": profile, "commit": commit,
        "started": started or "", "finished": finished,
        "machine": machine(threads),
        "wall_seconds": {"chapters": chapters, "total": total,
                         "workers": timings.get("workers"),
                         "html": timings.get("html_seconds")},
        "seeds": dict(seeds),
        "datasets": _datasets(out, files),
        "files": {rel: {"bytes": (out / rel).stat().st_size, "sha256": _sha256(out / rel)}
                  for rel in files},
        "left_out": {reason: len(v) for reason, v in sorted(left_out.items())},
        "stripped": sorted(stripped),
    }


README = """# The published reference run

Written by `covidlib reference export` (`covidlib.report.reference_export`) from a finished
`covidlib book --profile {profile}` run; never edited by hand: `make verify-reference` checks
every file against the sha256 in `provenance.json` and recomputes a sample of the runs.

* `provenance.json`: profile, commit, start and end, machine, wall time per chapter and in
  all, seeds, datasets and their kinds, every file's size and sha256;
* `<kind>/<hash>.json`: the cached runs (config, result: metrics, curves, selections), as
  `covidlib.cache.ResultCache` stored them;
* `<paper>/<table>.csv`: the tables the chapters wrote (`p1/`, `p2/`, `p3/`, `p4/`);
* `scorecard/<artifact>.json`: the chapters' scorecard entries;
* `book_timings_{profile}.json`: the book runner's status and seconds per chapter.

Left out: weights, checkpoints, images, arrays, logs, claims and temporary files, and the
masks the widget demo keeps per cycle (`provenance.json` counts what was left out).
"""


def _replace_dir(tmp: Path, out: Path) -> None:
    """Put ``tmp`` at ``out`` by renames (an existing ``out`` is replaced as a whole)."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old.exists():
            os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export(results_dir: str | Path, out: str | Path, *, profile: str = "reference",
           commit: str | None = None, repo: str | Path | None = None) -> dict[str, Any]:
    """Publish ``results_dir`` (a finished ``profile`` book run) into the folder ``out``;
    returns the provenance written to ``out/provenance.json``. ``commit`` defaults to the
    commit the chapters recorded (their scorecard provenance), else ``git rev-parse HEAD``."""
    from covidlib.report.book_plan import load_plan

    results, out = Path(results_dir).resolve(), Path(out).resolve()
    repo = Path(repo) if repo else Path(__file__).resolve().parents[2]
    if not results.is_dir():
        raise ReferenceRunError(f"{results}: no such results folder")
    if out == results or results in out.parents:
        raise ReferenceRunError(f"{out}: the published folder must lie outside {results}")
    entries = load_plan(repo / "book" / "plan.yml")
    timings = check_finished(results, profile, [e.output for e in entries])
    seeds = {e.output: e.parameters_for(profile).get("seeds") for e in entries
             if "seeds" in e.parameters_for(profile)}
    plan = plan_files(results)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        stripped: list[str] = []
        for rel in plan.files:
            stripped += [f"{rel}:{p}" for p in _copy(results / rel, tmp / rel, rel)]
        for rel in list(plan.files):
            if (tmp / rel).stat().st_size > MAX_BYTES:
                (tmp / rel).unlink()
                plan.files.remove(rel)
                plan.leave_out(rel, f"larger than {MAX_BYTES} bytes")
        if not commit:  # the one commit the chapters recorded, else this checkout's HEAD
            found = _commits(tmp, plan.files)
            commit = found[0] if len(found) == 1 else _git_head(repo)
        start_file = results / "started"
        started = start_file.read_text().strip() if start_file.is_file() else None
        prov = _provenance(tmp, plan.files, timings, profile, commit, seeds, started,
                           plan.left_out, stripped)
        prov["commits_recorded"] = _commits(tmp, plan.files)  # by the chapters' scorecard
        (tmp / PROVENANCE).write_text(json.dumps(prov, indent=1, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(README.format(profile=profile))
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return prov
