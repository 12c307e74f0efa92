"""``python -m covidlib.bench --out bench_results/bench.json [--quick]``: the benchmark suite.

Runs the sections in one process, on one machine, and writes one JSON file (atomically):
``machine`` (name, CPU, cores, torch threads, GPU or none, date), ``settings``, one entry per
section (``mc``, ``train``, ``al_scaling``, ``volume_scaling``, ``determinism``,
``responsiveness``: the labelling widget's click latency and cycle time), ``checks``
(pass/fail of the correctness checks) and ``total_seconds``. Every ratio in the file is computed
from times measured in this run. The suite does not resume: a partial rerun would mix two
machines' states, so an interrupted run starts again.

Exit status 1 when a check fails (head-only and naive MC samples select different regions, or
two seeded runs differ); the file is written first so the failure can be inspected.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from covidlib.bench import SCHEMA, SECTIONS, determinism, mc, responsive, scaling, train
from covidlib.bench.measure import load_average, machine_info
from covidlib.bench.settings import FULL, FULL_CUDA, QUICK, BenchSettings
from covidlib.cache import atomic_write_text
from covidlib.engine import resolve_device

_RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "mc": mc.bench_mc,
    "train": train.bench_train,
    "al_scaling": scaling.bench_al_scaling,
    "volume_scaling": scaling.bench_volume_scaling,
    "responsiveness": responsive.bench_responsiveness,
}


def suite_settings(quick: bool, device: torch.device) -> BenchSettings:
    """The settings of every section for this run: :data:`QUICK`, or :data:`FULL` (its CUDA
    variant :data:`FULL_CUDA` on a GPU)."""
    if quick:
        return QUICK
    return FULL_CUDA if device.type == "cuda" else FULL


def checks(results: dict[str, Any]) -> dict[str, bool]:
    """Correctness checks of a results dict (sections that ran)."""
    out = {}
    if "mc" in results:
        out["mc_identical_selections"] = bool(results["mc"]["identical_selections"])
    if "determinism" in results:
        out["determinism_identical"] = bool(results["determinism"]["identical"])
    return out


def run_suite(out: str | Path, *, quick: bool = False, device: str = "auto",
              sections: Sequence[str] = SECTIONS, progress: bool = True) -> dict[str, Any]:
    """Run ``sections`` and write the results file ``out``; returns the results dict."""
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ValueError(f"bench: unknown or no sections {unknown or list(sections)}; "
                         f"choose from {SECTIONS}")
    dev = resolve_device(device)
    settings = suite_settings(quick, dev)
    t_start = time.perf_counter()
    results: dict[str, Any] = {"schema": SCHEMA, "quick": quick, "machine": machine_info(dev),
                               "settings": settings.record(sections)}
    bar = tqdm(list(sections), desc="bench", unit="section", disable=not progress)
    for section in bar:
        bar.set_postfix_str(section)

        def note(msg: str) -> None:
            bar.set_postfix_str(msg)

        t0 = time.perf_counter()
        if section == "determinism":
            det = settings.determinism
            results[section] = determinism.check_determinism(det.seed, **det.overrides())
        else:
            results[section] = _RUNNERS[section](settings.section(section), dev, note)
        results[section]["section_seconds"] = time.perf_counter() - t0
    results["checks"] = checks(results)
    results["machine"]["load_average_end"] = load_average()
    results["total_seconds"] = time.perf_counter() - t_start
    atomic_write_text(Path(out), json.dumps(results, indent=1, sort_keys=True))
    return results


def render_page(bench_file: str | Path, results_dir: str | Path, profile: str = "cpu",
                repo: Path | None = None) -> Any:
    """Execute the book's Performance chapter (``notebooks/performance.ipynb``, its entry in
    ``book/plan.yml``) on ``bench_file`` into ``book/_generated/``; returns the
    :class:`~covidlib.report.book.RunOutcome`. Unlike ``covidlib book --only``, this leaves
    the book's timing files alone."""
    from covidlib.report.book import BookError, PlanEntry, load_plan, run_entry

    repo = repo or Path(__file__).resolve().parents[2]
    plan = repo / "book" / "plan.yml"
    entry = next((e for e in load_plan(plan) if e.notebook == "performance"), None)
    if entry is None:
        raise BookError(f"{plan}: no entry for notebooks/performance.ipynb")
    entry = PlanEntry(entry.notebook, entry.output, entry.title,
                      {**entry.parameters, "bench_file": str(Path(bench_file).resolve())},
                      entry.requires, entry.stage)
    return run_entry(entry, repo, profile, Path(results_dir).resolve(), "auto",
                     log=lambda s: None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m covidlib.bench", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench_results/bench.json", help="results file to write")
    p.add_argument("--quick", action="store_true", help="tiny sizes (tests; figures mean nothing)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                   help="sections to run (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--page", action="store_true",
                   help="then execute the book's Performance page on the results")
    p.add_argument("--results-dir", default="results",
                   help="where the book's timing files are (for --page)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        results = run_suite(args.out, quick=args.quick, device=args.device,
                            sections=args.sections, progress=not args.no_progress)
    except (ValueError, RuntimeError, ImportError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print(summary(results))
    failed = [k for k, ok in results["checks"].items() if not ok]
    if failed:
        print(f"bench: checks failed: {failed} (see {args.out})", file=sys.stderr)
        return 1
    print(f"bench: wrote {args.out} in {results['total_seconds']:.0f} s")
    if args.page:
        from covidlib.report.book import BookError

        try:
            outcome = render_page(args.out, args.results_dir)
        except (BookError, ImportError) as exc:
            print(f"bench: cannot render the Performance page: {exc}", file=sys.stderr)
            return 2
        if outcome.status != "ok":
            print(f"bench: the Performance page failed:\n{outcome.error}", file=sys.stderr)
            return 1
        print(f"bench: Performance page written to book/_generated/{outcome.entry.output}.ipynb "
              f"in {outcome.seconds:.0f} s")
    return 0


def summary(results: dict[str, Any]) -> str:
    """A few lines with the headline ratios of a results dict."""
    m = results["machine"]
    lines = [f"machine: {m['hostname']} ({m['gpu'] or m['cpu']}, {m['cores']} cores, "
             f"torch threads {m['torch_threads']})"]
    if "mc" in results:
        for key, ratios in results["mc"]["speedup"].items():
            lines.append(f"mc {key}: " + ", ".join(f"I={i}: {r:.1f}x" for i, r in ratios.items()))
        lines.append(f"mc identical selections: {results['mc']['identical_selections']}")
    if "train" in results:
        for r in results["train"]["rows"]:
            if "images_per_s" in r:
                lines.append(f"train {r['network']} {r['mode']}: {r['images_per_s']:.3g} img/s, "
                             f"peak RSS {r['peak_rss_mb']:.0f} MB")
    for key in ("al_scaling", "volume_scaling"):
        if key in results:
            fits = ([("pool (whole cycle)", results[key]["pool"]["fit"]["cycle"]),
                     ("pool (score + select)", results[key]["pool"]["fit"]["acquisition"]),
                     ("K (score + select)", results[key]["regions"]["fit"]["acquisition"])]
                    if key == "al_scaling" else [("voxels", results[key]["fit"])])
            for what, fit in fits:
                lines.append(f"{key} vs {what}: exponent {fit['exponent']:.2f}")
    if "determinism" in results:
        lines.append(f"determinism identical: {results['determinism']['identical']}")
    if "responsiveness" in results:
        r = results["responsiveness"]
        lines.append(f"widget click saved: {r['click_saved_ms']} ms median, "
                     f"{r['click_saved_p95_ms']} ms p95; during training "
                     f"{r['click_during_training_ms']} ms; cycle {r['cycle_s']} s wall, "
                     f"{r['cycle_cpu_s']} s CPU (goals < {r['click_goal_ms']:g} ms, "
                     f"< {r['cycle_goal_s']:g} s)")
    return "\n".join(lines)
