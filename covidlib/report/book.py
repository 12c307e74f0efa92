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

import os
import re
import time
import traceback
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path

from covidlib.cache import atomic_write_text
from covidlib.report.book_cache import (
    CACHE_FORMAT,
    _entry_params,
    _sha,
    chapter_key,
    load_cache,
    longest_first,
    previous_seconds,
    record_timings,
    results_digest,
    save_cache,
    scorecard_digest,
    source_digest,
    stale_reason,
)
from covidlib.report.book_pages import (  # noqa: F401  (_html_fresh: tests)
    API_PAGE,
    PLUMBING_TAG,
    HtmlPrebuild,
    _html_fresh,
    api_page_text,
    build_html,
    ensure_offline_assets,
    hide_plumbing,
    package_own_members,
    plumbing_kind,
    public_modules,
    start_html_prebuild,
    unresolved_glue,
    write_api_page,
)
from covidlib.report.book_plan import PROFILES, BookError, PlanEntry, RunOutcome, load_plan

__all__ = [
    "API_PAGE",
    "CACHE_FORMAT",
    "KERNEL_START_ATTEMPTS",
    "KERNEL_START_TIMEOUT",
    "PLUMBING_TAG",
    "PROFILES",
    "SCHEDULER_ENV",
    "BookError",
    "HtmlPrebuild",
    "PlanEntry",
    "RunOutcome",
    "api_page_text",
    "build_html",
    "chapter_key",
    "dask_spawn_keys",
    "default_workers",
    "ensure_offline_assets",
    "execute_plan",
    "hide_plumbing",
    "load_cache",
    "load_plan",
    "longest_first",
    "package_own_members",
    "plumbing_kind",
    "previous_seconds",
    "public_modules",
    "record_timings",
    "report",
    "restore_environ",
    "results_digest",
    "run_entry",
    "save_cache",
    "scorecard_digest",
    "source_digest",
    "stale_reason",
    "start_html_prebuild",
    "unresolved_glue",
    "worker_env",
    "write_api_page",
]

_SCHEDULER = re.compile(r"^(tcp|tls|ucx|inproc)://\S+$")
SCHEDULER_ENV = "COVIDLIB_SCHEDULER"
KERNEL_START_TIMEOUT = 300  # seconds; kernels start slowly on a busy 2-core machine
KERNEL_START_ATTEMPTS = 3
"""Times a chapter is started when its kernel dies before answering: kernels started at once
on several workers may pick the same free TCP port ("Address already in use")."""
_KERNEL_START_FAILED = ("Kernel died before replying to kernel_info", "Address already in use")


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
    for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
        try:
            papermill.execute_notebook(str(src), str(tmp), parameters=params,
                                       kernel_name="python3", language="python",
                                       cwd=str(src.parent), progress_bar=False,
                                       start_timeout=KERNEL_START_TIMEOUT)
            break
        except Exception as exc:  # the notebook's own error: report it, keep going
            if hasattr(exc, "ename"):
                detail = f"{exc.ename}: {exc.evalue}\n" + "\n".join(exc.traceback)
            else:
                detail = "".join(traceback.format_exception(exc))
                if attempt < KERNEL_START_ATTEMPTS and any(m in detail
                                                           for m in _KERNEL_START_FAILED):
                    log(f"[book] {entry.output}: the kernel died while starting (attempt "
                        f"{attempt} of {KERNEL_START_ATTEMPTS}); starting it again")
                    continue
            return RunOutcome(entry, "failed", time.perf_counter() - t0, _strip_ansi(detail))
    executed = nbformat.read(tmp, as_version=4)
    if hide_plumbing(executed):
        nbformat.write(executed, tmp)
    os.replace(tmp, out)
    return RunOutcome(entry, "ok", time.perf_counter() - t0)


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


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
                 force: bool = False, prebuild_html: bool = False) -> list[RunOutcome]:
    """Run the plan's chapters that changed (all with ``force``, the ``only`` ones when given);
    never stops at a failure.

    A chapter whose executed copy is up to date (:func:`stale_reason`) is reused (status
    "reused"). ``workers``: size of the local Dask cluster (default: one per GPU, else one per
    core). ``scheduler``: address of an existing Dask scheduler (default:
    ``$COVIDLIB_SCHEDULER``). Outcomes come back in plan order;
    ``<results_dir>/book_timings_<profile>.json`` records each executed notebook's status,
    seconds and worker (the next run starts the longest first). ``prebuild_html``: when
    chapters run and the next HTML build would be a full one, start it in the background
    now and wait for it at the end (:func:`start_html_prebuild`), so that the
    :func:`build_html` after the notebooks is incremental.
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
    prebuild = start_html_prebuild(Path(repo), log) if prebuild_html and kernels else None
    try:
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
    finally:
        if prebuild is not None:
            prebuild.finish(Path(repo), log)
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


def report(outcomes: list[RunOutcome]) -> str:
    """Human summary: one line per chapter, then each failure's traceback."""
    lines = [f"  {o.status:<12} {o.seconds:7.1f} s  {o.entry.output}" for o in outcomes]
    for o in outcomes:
        if o.status == "failed":
            lines.append(f"\n--- {o.entry.output} ({o.entry.notebook}.ipynb) failed ---\n"
                         f"{o.error}")
    return "\n".join(lines)
