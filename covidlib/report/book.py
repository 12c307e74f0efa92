"""Execute the book's notebooks with papermill and build the HTML book.

The book's chapters are listed in ``book/plan.yml``: each entry names a notebook in
``notebooks/``, the executed copy it produces in ``book/_generated/`` (the page the table of
contents points to) and its papermill parameters. ``profile``, ``device`` and
``results_dir`` are added to every entry. An entry may require a dataset (``requires``):
when that data cannot be found, a short page saying so replaces the chapter instead of
failing the build. A failing notebook is reported by name with its traceback; the other
notebooks still run and the command exits non-zero.

Parallel execution (:func:`execute_plan`): the notebooks run on a Dask cluster, one notebook
per worker at a time. By default a ``distributed.LocalCluster`` on 127.0.0.1 with one worker
per GPU (each worker's kernels see only their GPU through ``CUDA_VISIBLE_DEVICES``), or one
worker per CPU core when there is no GPU (each kernel then gets ``cores // workers`` torch
threads). ``COVIDLIB_SCHEDULER=tcp://host:port`` (or ``scheduler=``) sends the notebooks to an
existing Dask scheduler instead, so a sweep can use many machines: every worker must see the
checkout at the same path and share ``results_dir`` (a network file system), so that finished
configurations are reused from the results cache (:class:`covidlib.cache.ResultCache`). With
one worker or one notebook everything runs in this process, in plan order.

Plan entries may set ``stage`` (an integer, default 0): stage ``n + 1`` starts once every
notebook of stage ``n`` has finished (the scorecard page, which reads what the chapters
recorded, is the last stage), and ``inputs`` (paths relative to the repository, e.g.
``bench_results/bench.json``): files outside ``covidlib`` that the chapter reads.

Incremental builds (as jupyter-cache does): a chapter is re-executed only when something it
depends on changed since its last successful run, else its executed copy in
``book/_generated`` is reused as it is (:func:`stale_reason`). Its key
(``<results_dir>/book_cache_<profile>.json``) holds the notebook's hash, its parameters, a
hash of every file of the ``covidlib`` package and of ``data_manifests/`` (the whole package,
not only the modules the notebook imports: simple and safe, at the cost of re-executing every
chapter after any library change), the hashes of its ``inputs``, the state of the results
cache (names, sizes and times of every file under ``results_dir`` except the scorecard
entries, the book's own timing/cache files and claims) and, for a chapter of a later stage,
the contents of the scorecard entries. ``force=True`` (``covidlib book --force``)
re-executes every chapter; ``only=[...]`` (``--only NAME``) re-executes the named ones.

Plumbing stays out of the pages (:func:`hide_plumbing`, applied to every executed copy):
readers see prose, tables and figures, not the code that records timings, glues values or
writes scorecard rows. A chapter author marks a cell as plumbing with the cell tag
``plumbing`` or a first line ``# plumbing``; such cells, the parameter cells and cells made
only of imports and plumbing calls (``glue(...)``, ``scorecard.record(...)``,
``provenance.provenance(...)``, timers) are removed from the page (``remove-cell``); any
other cell that makes such a call shows its output without its code (``remove-input``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from covidlib.cache import atomic_write_text

PROFILES = ("cpu", "gpu", "paper")
_ENTRY_KEYS = {"notebook", "output", "title", "parameters", "requires", "stage", "inputs"}
CACHE_FORMAT = "covidlib.book-cache/1"
_SCHEDULER = re.compile(r"^(tcp|tls|ucx|inproc)://\S+$")
SCHEDULER_ENV = "COVIDLIB_SCHEDULER"
KERNEL_START_TIMEOUT = 300  # seconds; kernels start slowly on a busy 2-core machine


class BookError(Exception):
    """The book plan or a notebook run is wrong; the message names the file and reason."""


@dataclass(frozen=True)
class PlanEntry:
    notebook: str
    output: str
    title: str
    parameters: dict[str, Any] = field(default_factory=dict)
    requires: str | None = None
    stage: int = 0
    inputs: tuple[str, ...] = ()


@dataclass
class RunOutcome:
    entry: PlanEntry
    status: str  # "ok" | "failed" | "missing-data" | "reused" (unchanged: not re-executed)
    seconds: float
    error: str = ""
    worker: str = "local"  # the Dask worker address, or "local" when run in this process


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
        stage = item.get("stage", 0)
        if isinstance(stage, bool) or not isinstance(stage, int) or stage < 0:
            raise BookError(f"{where}: 'stage' must be an integer >= 0, got {stage!r}")
        inputs = item.get("inputs") or []
        if not isinstance(inputs, list) or not all(isinstance(i, str) and i for i in inputs):
            raise BookError(f"{where}: 'inputs' must be a list of paths, got {inputs!r}")
        entries.append(PlanEntry(item["notebook"], item["output"], item["title"], params,
                                 item.get("requires"), stage, tuple(inputs)))
    return entries


def _missing_data_notebook(entry: PlanEntry, reason: str) -> dict:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(
        f"# {entry.title}\n\n"
        f"This chapter was **not executed**: it needs the `{entry.requires}` dataset, "
        f"which was not found on this machine.\n\n```\n{reason}\n```\n\n"
        "Place the data as described above and run `make book` again.")]
    nb.cells[0]["id"] = "missing-data"  # fixed: the same page is byte-identical next time
    return nb


PLUMBING_TAG = "plumbing"
_PLUMBING_CALL = re.compile(
    r"\bglue\(|\bscorecard\.record\w*\(|\brecord_scorecard\w*\(|\bprovenance\.provenance\("
    r"|\bperf_counter\(|\brecord_timings\(|\bnotebook_timer\(|\bwrite_csv\(")
_IMPORT = re.compile(r"^(from\s+\S+\s+import\s|import\s)")


def plumbing_kind(cell: Mapping[str, Any]) -> str | None:
    """``"remove-cell"``, ``"remove-input"`` or ``None`` for one notebook cell (see the module
    docstring)."""
    if cell.get("cell_type") != "code":
        return None
    tags = set(cell.get("metadata", {}).get("tags", []))
    source = cell.get("source", "")
    source = "".join(source) if isinstance(source, list) else str(source)
    lines = [ln.strip() for ln in source.splitlines() if ln.strip()]
    if (PLUMBING_TAG in tags or tags & {"parameters", "injected-parameters"}
            or (lines and lines[0].lower().startswith("# plumbing"))):
        return "remove-cell"
    found, rest, depth, inside = False, 0, 0, False
    for ln in (ln for ln in lines if not ln.startswith("#")):
        if depth <= 0:  # a new statement
            inside = bool(_PLUMBING_CALL.search(ln))
            found = found or inside
            rest += not (inside or _IMPORT.match(ln))
        # the arguments of a call spread over several lines belong to its statement
        depth += sum(ln.count(c) for c in "([{") - sum(ln.count(c) for c in ")]}")
    if not found:
        return None
    return "remove-cell" if not rest else "remove-input"


_GLUE_ROLE = re.compile(r"\{glue(?::\w+)?\}`([^`:]+)|^[`:]{3,}\{glue(?::\w+)?\}\s+(\S+)",
                        re.MULTILINE)


def unresolved_glue(nb: Any) -> list[str]:
    """The glue keys that markdown cells of executed notebook ``nb`` cite (``{glue:text}`key```,
    ``{glue}`` roles and directives) but no code cell's output glued (``myst_nb.glue``): the
    references Jupyter Book would leave empty on the page. Sorted, empty when all resolve."""
    glued = {o.get("metadata", {}).get("scrapbook", {}).get("name")
             for c in nb.cells if c.get("cell_type") == "code" for o in c.get("outputs", [])}
    cited = set()
    for cell in nb.cells:
        if cell.get("cell_type") == "markdown":
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else str(source)
            cited |= {a or b for a, b in _GLUE_ROLE.findall(source)}
    return sorted(cited - glued)


def hide_plumbing(nb: Any) -> int:
    """Tag the plumbing cells of notebook ``nb`` (in place) so that Jupyter Book leaves their
    code (and, for pure plumbing, their output) off the page; returns how many were tagged."""
    n = 0
    for cell in nb.cells:
        kind = plumbing_kind(cell)
        if kind is None:
            continue
        tags = list(cell.metadata.get("tags", []))
        if kind not in tags:
            cell.metadata["tags"] = [*tags, kind]
            n += 1
    return n


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
            page = nbformat.writes(_missing_data_notebook(entry, str(exc)))
            if not out.exists() or out.read_text() != page:  # unchanged: the HTML stays fresh
                atomic_write_text(out, page)
            log(f"[book] {entry.output}: skipped, dataset '{entry.requires}' not found")
            return RunOutcome(entry, "missing-data", time.perf_counter() - t0, str(exc))
    if not src.exists():
        return RunOutcome(entry, "failed", 0.0, f"{src}: notebook not found")
    params = _entry_params(entry, profile, device, results_dir)
    tmp = out.with_name(f".{out.stem}.running.ipynb")
    log(f"[book] {entry.output}: running {src.name} with {params}")
    try:
        papermill.execute_notebook(str(src), str(tmp), parameters=params, kernel_name="python3",
                                   language="python",
                                   cwd=str(src.parent), progress_bar=False,
                                   start_timeout=KERNEL_START_TIMEOUT)
    except Exception as exc:  # the notebook's own error: report it, keep going
        if hasattr(exc, "ename"):
            detail = f"{exc.ename}: {exc.evalue}\n" + "\n".join(exc.traceback)
        else:
            detail = "".join(traceback.format_exception(exc))
        return RunOutcome(entry, "failed", time.perf_counter() - t0, _strip_ansi(detail))
    executed = nbformat.read(tmp, as_version=4)
    if hide_plumbing(executed):
        nbformat.write(executed, tmp)
    os.replace(tmp, out)
    return RunOutcome(entry, "ok", time.perf_counter() - t0)


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


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
            **entry.parameters}


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


def _missing_data(entry: PlanEntry) -> bool:
    if not entry.requires:
        return False
    from covidlib.data.errors import DataError
    from covidlib.data.manifest import load_manifest, locate

    try:
        locate(load_manifest(entry.requires))
    except DataError:
        return True
    return False


def default_workers(device: str = "auto") -> tuple[int, int]:
    """``(workers, gpus)``: one worker per GPU, else one per CPU core."""
    gpus = 0
    if device != "cpu":
        try:
            import torch

            gpus = torch.cuda.device_count()
        except ImportError:  # pragma: no cover - torch is a dependency
            gpus = 0
    return (gpus if gpus else max(1, os.cpu_count() or 1)), gpus


def worker_env(worker_index: int, n_workers: int, n_gpus: int, cpus: int | None = None,
               environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the kernels a worker starts: its GPU, and its share of the CPU threads.

    Worker ``i`` of ``n`` sees GPU ``i mod n_gpus`` alone (``CUDA_VISIBLE_DEVICES``) and gets
    ``max(1, cpus // n)`` OpenMP/MKL threads, unless the environment already fixes them.
    """
    environ = os.environ if environ is None else environ
    if cpus is None:
        cpus = os.cpu_count() or 1
    out: dict[str, str] = {}
    if n_gpus > 0 and "CUDA_VISIBLE_DEVICES" not in environ:
        out["CUDA_VISIBLE_DEVICES"] = str(worker_index % n_gpus)
    threads = str(max(1, cpus // max(1, n_workers)))
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if key not in environ:
            out[key] = threads
    return out


def dask_spawn_keys() -> list[str]:
    """The environment variables Dask's nanny sets in every worker process it spawns
    (``distributed.nanny.pre-spawn-environ`` and ``.environ``: ``MALLOC_TRIM_THRESHOLD_``,
    ``OMP_NUM_THREADS``, ...)."""
    import dask
    import distributed  # noqa: F401  (loads the distributed.* defaults into dask.config)

    keys: set[str] = set()
    for name in ("distributed.nanny.pre-spawn-environ", "distributed.nanny.environ"):
        keys |= set(dask.config.get(name, default={}) or {})
    return sorted(keys)


def restore_environ(parent: Mapping[str, str | None],
                    environ: MutableMapping[str, str] | None = None) -> None:
    """Put back, in a Dask worker, the values ``parent`` (the client's environment) had for
    the variables the nanny overrode; ``None`` = unset there, so removed here.

    The kernels a worker starts inherit its environment. Dask's ``MALLOC_TRIM_THRESHOLD_=
    65536`` makes glibc return freed memory to the system at once, so every large PyTorch
    allocation faults its pages in again: on 2 cores it made the notebooks 1.5x slower,
    with a third of their CPU time spent in the kernel.
    """
    environ = os.environ if environ is None else environ
    for key, value in parent.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value


def _run_on_worker(entry: PlanEntry, repo: str, profile: str, results_dir: str, device: str,
                   n_workers: int, n_gpus: int,
                   parent_env: Mapping[str, str | None] | None = None) -> RunOutcome:
    """Dask task: one notebook, with the client's environment (less what the nanny set) plus
    this worker's GPU and thread share."""
    from distributed import get_worker

    worker = get_worker()
    try:
        index = int(worker.name)
    except (TypeError, ValueError):  # workers of a remote cluster may have any name
        index = int.from_bytes(str(worker.name).encode(), "little") % max(1, n_workers)
    restore_environ(parent_env or {})
    os.environ.update(worker_env(index, n_workers, n_gpus))
    outcome = run_entry(entry, Path(repo), profile, Path(results_dir), device,
                        log=lambda s: None)
    outcome.worker = str(worker.address)
    return outcome


def _connect(scheduler: str | None, n_workers: int, log: Callable[[str], None]):
    """A ``distributed.Client`` on ``scheduler`` or on a new LocalCluster; and the cluster."""
    from distributed import Client, LocalCluster

    if scheduler:
        if not _SCHEDULER.match(scheduler):
            raise BookError(f"{SCHEDULER_ENV}={scheduler!r}: expected a Dask scheduler address "
                            "such as tcp://host:8786")
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise BookError(f"{SCHEDULER_ENV}={scheduler!r}: cannot reach the Dask scheduler "
                            f"({exc})") from exc
        log(f"[book] running on the Dask scheduler {scheduler} "
            f"({len(client.scheduler_info()['workers'])} workers)")
        return client, None
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address="127.0.0.1:0", memory_limit=0)
    log(f"[book] running on a local Dask cluster of {n_workers} workers")
    return Client(cluster), cluster


def _dask_failure(entry: PlanEntry, exc: BaseException, seconds: float) -> RunOutcome:
    detail = "".join(traceback.format_exception(exc))
    return RunOutcome(entry, "failed", seconds,
                      f"the Dask task running this notebook failed:\n{_strip_ansi(detail)}",
                      worker="dask")


def execute_plan(repo: Path, profile: str, results_dir: Path, device: str = "auto",
                 only: list[str] | None = None, log: Callable[[str], None] = print, *,
                 workers: int | None = None, scheduler: str | None = None,
                 force: bool = False) -> list[RunOutcome]:
    """Run the plan's chapters that changed (all with ``force``, the ``only`` ones when given);
    never stops at a failure.

    A chapter whose executed copy is up to date (:func:`stale_reason`) is reused (status
    "reused"). ``workers``: size of the local Dask cluster (default: one per GPU, else one per
    core). ``scheduler``: address of an existing Dask scheduler (default:
    ``$COVIDLIB_SCHEDULER``). Outcomes come back in plan order;
    ``<results_dir>/book_timings_<profile>.json`` records each executed notebook's status,
    seconds and worker (the next run starts the longest first).
    """
    if profile not in PROFILES:
        raise BookError(f"profile {profile!r} is not one of {PROFILES}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise BookError(f"workers={workers!r}: expected a positive integer")
    started = time.perf_counter()
    entries = load_plan(repo / "book" / "plan.yml")
    if only:
        unknown = set(only) - {e.output for e in entries}
        if unknown:
            raise BookError(f"unknown chapters {sorted(unknown)}; "
                            f"known: {[e.output for e in entries]}")
    results_dir = Path(results_dir).resolve()
    plan = _plan_runs(entries, Path(repo), profile, device, results_dir, only, force, log)
    kernels = [e for e in entries if plan[e.output] == "run"]
    done: dict[str, RunOutcome] = {}
    for e in entries:  # cheap: no kernel
        if plan[e.output] == "missing":
            done[e.output] = run_entry(e, repo, profile, results_dir, device, log)
        elif plan[e.output] in ("reused", "skip"):
            done[e.output] = RunOutcome(e, "reused", 0.0)
    scheduler = scheduler or os.environ.get(SCHEDULER_ENV) or None
    n_default, n_gpus = default_workers(device)
    n_workers = max(1, min(workers or n_default, len(kernels)))
    if kernels and scheduler is None and n_workers <= 1:
        done.update((e.output, run_entry(e, repo, profile, results_dir, device, log))
                    for e in kernels)
    elif kernels:
        ran = _execute_dask(kernels, Path(repo).resolve(), profile, results_dir, device,
                            scheduler, n_workers, n_gpus, log)
        done.update((o.entry.output, o) for o in ran)
    outcomes = [done[e.output] for e in entries if not (only and plan[e.output] == "skip")]
    _update_cache(entries, done, plan, Path(repo), profile, device, results_dir)
    executed = [o for o in outcomes if o.status != "reused"]
    chapters = {o.entry.output: {"status": o.status, "seconds": round(o.seconds, 2),
                                 "worker": o.worker} for o in executed}
    wall = round(time.perf_counter() - started, 2)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if only:  # a partial run: the other chapters and the last whole run's wall time stay
        record_timings(results_dir, profile, chapters)
    elif len(executed) == len(outcomes):  # every chapter executed: a whole build
        record_timings(results_dir, profile, chapters, wall_seconds=wall,
                       workers=n_workers, date=stamp)
    else:  # an incremental build: the last whole build's wall time stays
        record_timings(results_dir, profile, chapters, last_incremental={
            "wall_seconds": wall, "executed": len(executed),
            "reused": len(outcomes) - len(executed), "date": stamp})
    return outcomes


def _plan_runs(entries: list[PlanEntry], repo: Path, profile: str, device: str,
               results_dir: Path, only: list[str] | None, force: bool,
               log: Callable[[str], None]) -> dict[str, str]:
    """For each chapter: "run", "reused" (up to date), "skip" (not in ``only``) or "missing"
    (its data is absent: a page saying so, no kernel)."""
    cache = load_cache(results_dir, profile)
    sources = source_digest()
    results = results_digest(results_dir)
    cards = scorecard_digest(results_dir)
    plan: dict[str, str] = {}
    earlier_ran = False
    for stage in sorted({e.stage for e in entries}):
        ran_here = False
        for e in (e for e in entries if e.stage == stage):
            out = repo / "book" / "_generated" / f"{e.output}.ipynb"
            key = chapter_key(e, repo, profile, device, results_dir, sources, results, cards)
            reason = stale_reason(key, cache.get(e.output), out)
            if reason is None and earlier_ran:
                reason = "a chapter of an earlier stage was re-executed"
            if only:
                plan[e.output] = "run" if e.output in only else "skip"
            else:
                plan[e.output] = "run" if force or reason else "reused"
            if plan[e.output] == "run" and _missing_data(e):
                plan[e.output] = "missing"
            if plan[e.output] == "run":
                ran_here = True
                why = "forced" if force or only else reason
                log(f"[book] {e.output}: will execute ({why})")
            elif plan[e.output] == "reused":
                log(f"[book] {e.output}: unchanged, executed copy reused")
        earlier_ran = earlier_ran or ran_here
    return plan


def _update_cache(entries: list[PlanEntry], done: Mapping[str, RunOutcome],
                  plan: Mapping[str, str], repo: Path, profile: str, device: str,
                  results_dir: Path) -> None:
    """Record each chapter's key after the build: executed ones with the final state of the
    results cache; up-to-date ones keep their key with that state too (a build's chapters are
    consistent with its results); failed ones lose their record (they run next time)."""
    cache = load_cache(results_dir, profile)
    sources = source_digest()
    results = results_digest(results_dir)
    cards = scorecard_digest(results_dir)
    for e in entries:
        outcome = done.get(e.output)
        out = repo / "book" / "_generated" / f"{e.output}.ipynb"
        if outcome is not None and outcome.status == "ok":
            key = chapter_key(e, repo, profile, device, results_dir, sources, results, cards)
            cache[e.output] = {"format": CACHE_FORMAT, **key, "output": _sha(out)}
        elif outcome is not None and outcome.status == "reused" and e.output in cache:
            if plan.get(e.output) == "reused":
                cache[e.output]["results"] = results
        elif outcome is not None:  # failed or missing data
            cache.pop(e.output, None)
    save_cache(results_dir, profile, cache)


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


def _execute_dask(entries: list[PlanEntry], repo: Path, profile: str, results_dir: Path,
                  device: str, scheduler: str | None, n_workers: int, n_gpus: int,
                  log: Callable[[str], None]) -> list[RunOutcome]:
    from distributed import as_completed
    from tqdm.auto import tqdm

    # before the LocalCluster starts: its nannies write their settings into os.environ too
    parent_env = {key: os.environ.get(key) for key in dask_spawn_keys()}
    client, cluster = _connect(scheduler, n_workers, log)
    restore_environ(parent_env)
    if scheduler:
        n_workers = max(1, len(client.scheduler_info()["workers"]))
    before = previous_seconds(results_dir, profile)
    done: dict[str, RunOutcome] = {}
    try:
        with tqdm(total=len(entries), desc="book", unit="notebook") as bar:
            for stage in sorted({e.stage for e in entries}):
                batch = [e for e in entries if e.stage == stage]
                started = time.perf_counter()
                futures = {}
                for e in longest_first(batch, before):
                    log(f"[book] {e.output}: queued {e.notebook}.ipynb (stage {stage})")
                    fut = client.submit(_run_on_worker, e, str(repo), profile, str(results_dir),
                                        device, n_workers, n_gpus, parent_env, pure=False,
                                        priority=-len(futures),
                                        key=f"book-{e.output}-{time.time_ns()}")
                    futures[fut] = e
                for fut in as_completed(list(futures)):
                    e = futures[fut]
                    try:
                        outcome = fut.result()
                    except Exception as exc:  # worker died, task lost: report, keep going
                        outcome = _dask_failure(e, exc, time.perf_counter() - started)
                    done[e.output] = outcome
                    log(f"[book] {e.output}: {outcome.status} in {outcome.seconds:.1f} s "
                        f"on {outcome.worker}")
                    bar.update(1)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return [done[e.output] for e in entries]


def ensure_offline_assets(repo: Path, log: Callable[[str], None] = print) -> Path:
    """``book/_assets/vendor`` (the JavaScript pages load), copied from ``node_modules``."""
    from covidlib.report import offline

    dest = repo / "book" / "_assets" / "vendor"
    if offline.assets_ready(dest):
        return dest
    node_modules = repo / "node_modules"
    if not node_modules.is_dir():
        raise BookError(f"{dest}: the book's JavaScript is not installed; run `npm ci` in "
                        f"{repo} (make book does) so the pages need no network")
    try:
        offline.install_assets(node_modules, dest)
    except offline.AssetError as exc:
        raise BookError(str(exc)) from exc
    log(f"[book] offline assets copied to {dest}")
    return dest


API_PAGE = "api.md"


def public_modules() -> list[str]:
    """Every public module of the ``covidlib`` package (no ``_private`` part, no
    ``__main__``), sorted."""
    import pkgutil

    import covidlib

    names = ["covidlib"] + [m.name for m in pkgutil.walk_packages(covidlib.__path__,
                                                                    "covidlib.")]
    return sorted(n for n in names if not any(p.startswith("_") for p in n.split(".")))


def api_page_text(modules: list[str] | None = None) -> str:
    """``book/api.md``: one section per public module, its functions and classes with their
    docstrings (Sphinx autodoc, offline: it imports the installed package)."""
    parts = ["# API reference\n",
             "Every public module of `covidlib` with its classes and functions, as their "
             "docstrings describe them. This page is generated by `covidlib book` "
             "(`covidlib.report.book.api_page_text`) from the installed sources.\n"]
    import importlib.util

    for name in modules if modules is not None else public_modules():
        spec = importlib.util.find_spec(name)
        # a package re-exports its modules' names: documented there, not indexed twice; what
        # the package defines itself is indexed here (autofunction / autoclass)
        package = spec is not None and spec.submodule_search_locations is not None
        own = package_own_members(name) if package else []
        parts.append(f"## `{name}`\n\n```{{eval-rst}}\n.. automodule:: {name}\n"
                     "   :members:\n   :undoc-members:\n   :show-inheritance:\n"
                     + ("   :no-index:\n" if package else "")
                     + (f"   :exclude-members: {', '.join(n for n, _ in own)}\n" if own else "")
                     + "".join(f"\n.. auto{kind}:: {name}.{n}\n" + (
                         "   :members:\n   :undoc-members:\n   :show-inheritance:\n"
                         if kind == "class" else "") for n, kind in own)
                     + "```\n")
    return "\n".join(parts)


def package_own_members(name: str) -> list[tuple[str, str]]:
    """``(name, "function" | "class")`` of the public functions and classes package ``name``
    defines itself (in its ``__init__``; in ``__all__`` when it has one), not re-exported."""
    import importlib
    import inspect

    module = importlib.import_module(name)
    listed = getattr(module, "__all__", None)
    out = []
    for attr in listed if listed is not None else sorted(vars(module)):
        obj = getattr(module, attr, None)
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            out.append((attr, "function" if inspect.isfunction(obj) else "class"))
    return out


def write_api_page(repo: Path) -> Path:
    """Write ``book/api.md`` when its text changed (an unchanged page keeps Sphinx's
    incremental build incremental)."""
    path = Path(repo) / "book" / API_PAGE
    text = api_page_text()
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)
    return path


def _html_fresh(book: Path, stamp: Path) -> bool:
    """Whether no source of the book (pages, executed copies, assets, configuration) is newer
    than the last successful HTML build (its ``stamp``)."""
    built = stamp.stat().st_mtime_ns
    for folder, dirs, files in os.walk(book):
        dirs[:] = [d for d in dirs if d not in ("_build",) and not d.startswith(".")]
        for name in files:
            if os.stat(os.path.join(folder, name)).st_mtime_ns > built:
                return False
    return True


def build_html(repo: Path, log: Callable[[str], None] = print) -> Path:
    """``jupyter-book build book`` (Sphinx, offline); returns the HTML folder.

    Fails (``BookError``) when a page would fetch anything from another host.
    """
    from covidlib.report.offline import external_references

    exe = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or shutil.which(
        "jupyter-book")
    if exe is None:
        raise BookError("jupyter-book is not installed: run `make book` (installs the book extra)")
    ensure_offline_assets(repo, log)
    write_api_page(repo)
    # --all when the navigation, the configuration or the covidlib sources (the API page's
    # docstrings) changed (an incremental Sphinx build
    # keeps stale navigation when only book/_toc.yml changed); otherwise Sphinx rewrites only
    # the pages whose executed copy changed
    html = repo / "book" / "_build" / "html"
    stamp = repo / "book" / "_build" / ".covidlib-layout"
    layout = hashlib.sha256("".join(
        [*(_sha(repo / "book" / n) or "" for n in ("_toc.yml", "_config.yml")),
         source_digest()]).encode()).hexdigest()
    same_layout = stamp.exists() and stamp.read_text() == layout
    full = not (html / "index.html").exists() or not same_layout
    if not full and _html_fresh(repo / "book", stamp):
        log("[book] HTML up to date: no page changed since the last build")
        return html
    cmd = [exe, "build", *(["--all"] if full else []), str(repo / "book"), "--builder", "html"]
    log(f"[book] {' '.join(cmd)}")
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BookError(f"jupyter-book build failed (exit {proc.returncode}):\n"
                        f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    atomic_write_text(stamp, layout)
    external = external_references(html)
    if external:
        listing = "\n".join(f"  {page}: {', '.join(urls[:5])}" for page, urls in external.items())
        raise BookError(f"{html}: pages reference other hosts (the book must work offline):\n"
                        f"{listing}")
    return html


def report(outcomes: list[RunOutcome]) -> str:
    """Human summary: one line per chapter, then each failure's traceback."""
    lines = [f"  {o.status:<12} {o.seconds:7.1f} s  {o.entry.output}" for o in outcomes]
    for o in outcomes:
        if o.status == "failed":
            lines.append(f"\n--- {o.entry.output} ({o.entry.notebook}.ipynb) failed ---\n"
                         f"{o.error}")
    return "\n".join(lines)
