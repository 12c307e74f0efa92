"""``covidlib`` command line: data management and the book build.

    covidlib data list | synthetic | fetch NAME | stats NAME | check NAME_OR_YAML
    covidlib data convert lctsc --source TCIA_FOLDER [--root DATA_ROOT] [--force]
    covidlib book [--profile cpu] [--results-dir results] [--only CHAPTER ...] [--no-html]
                  [--workers N] [--scheduler tcp://host:port]
    covidlib reference export --results-dir DIR [--out reference] [--commit SHA]
    covidlib reference verify [--sample ci|full] [--out reference]
    covidlib train DATASET SPLIT METHOD [--paper auto|p2|p4] [--fold N] [--set KEY=VALUE ...]
                   [--test NAME=...] [--out DIR]   (P2's losses, P4's re-weighting methods)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from covidlib.data.errors import DataError


def _repo_root() -> Path:
    root = Path(__file__).resolve().parents[1]
    if not (root / "book" / "plan.yml").exists():
        raise SystemExit(f"error: {root} is not a covidlib checkout (book/plan.yml missing); "
                         "the book commands run from the source tree")
    return root


def _cmd_data(args: argparse.Namespace) -> int:
    from covidlib.data import manifest as mf

    root = Path(args.root) if args.root else None
    if args.action == "list":
        broken = 0
        for name, m in mf.scan_manifests():  # one bad manifest never hides the others
            if isinstance(m, DataError):
                broken += 1
                print(f"{name:<16} {'BROKEN':<9} {m}")
                continue
            try:
                where = str(mf.locate(m, root))
            except DataError:
                where = "not present"
            print(f"{name:<16} {m.access:<9} {where}")
        if broken:
            print(f"error: {broken} manifest(s) could not be loaded (see BROKEN above)",
                  file=sys.stderr)
        return 1 if broken else 0
    if args.action == "synthetic":
        from covidlib.data.phantom import ensure_synthetic

        target = root or mf.data_search_path()[0]
        print(f"synthetic phantom ready in {ensure_synthetic(target)}")
        return 0
    if not args.name:
        raise SystemExit(f"error: 'covidlib data {args.action}' needs a dataset name; "
                         f"known: {', '.join(mf.list_datasets())}")
    if args.action == "convert":  # DICOM CT + RTSTRUCT (TCIA) -> the manifest's NIfTI layout
        return _cmd_convert(args, root)
    if args.action == "fetch":
        from covidlib.data.fetch import fetch

        print(f"{args.name} ready in {fetch(args.name, root)}")
        return 0
    if args.action == "check":  # every problem of a manifest and its data at once
        from covidlib.data.check import check_dataset

        problems = check_dataset(args.name, root)
        for p in problems:
            print(f"problem: {p}")
        print(f"{args.name}: " + (f"{len(problems)} problem(s)" if problems else "OK"))
        return 1 if problems else 0
    if args.action == "stats":
        from covidlib.data.api import open_dataset

        ds = open_dataset(args.name, root)
        for key, value in ds.stats().items():
            print(f"{key:<24} {value}")
        return 0
    raise AssertionError(args.action)


def _cmd_convert(args: argparse.Namespace, root: Path | None) -> int:
    from covidlib.data.dicom import convert_lctsc

    if not args.source:
        raise SystemExit(f"error: 'covidlib data convert {args.name}' needs --source, the "
                         "folder of the TCIA download (holding LCTSC/<PatientID>/...)")
    reports = convert_lctsc(args.source, root, args.name, force=args.force)
    for r in reports:
        if r.status == "failed":
            print(f"{r.patient}: FAILED: {r.error}")
            continue
        for note in ([f"unknown ROI {n!r} not painted" for n in r.unknown_rois]
                     + [f"no ROI for organ {o!r} (left 0)" for o in r.missing_organs] + r.notes):
            print(f"{r.patient}: {note}")
    counts = {s: sum(r.status == s for r in reports) for s in ("converted", "skipped", "failed")}
    where = Path(reports[0].folder).parent if reports else "-"
    print(f"{args.name}: {counts['converted']} converted, {counts['skipped']} already done, "
          f"{counts['failed']} failed; NIfTI in {where}")
    return 1 if counts["failed"] else 0


def _cmd_book(args: argparse.Namespace) -> int:
    from covidlib.params import check_device, check_profile
    from covidlib.report import book

    check_profile(args.profile, book.PROFILES)  # before any work starts
    check_device(args.device)
    repo = _repo_root()
    results = Path(args.results_dir).resolve()
    outcomes = book.execute_plan(repo, args.profile, results, args.device, args.only or None,
                                 workers=args.workers, scheduler=args.scheduler,
                                 force=args.force, prebuild_html=not args.no_html)
    print(book.report(outcomes))
    failed = [o.entry.output for o in outcomes if o.status == "failed"]
    if not args.no_html:
        started = time.perf_counter()
        html = book.build_html(repo)
        if not args.only:  # the HTML build of a whole-book run
            book.record_timings(results, args.profile,
                                html_seconds=round(time.perf_counter() - started, 2))
        print(f"HTML book: {html / 'index.html'}")
    if failed:
        print(f"error: {len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _cmd_reference(args: argparse.Namespace) -> int:
    """``covidlib reference export|verify``: publish a reference run, or recompute a sample of
    it and compare (covidlib.report.reference_export / reference_verify)."""
    from covidlib.report.reference import ReferenceRunError, reference_dir

    out = Path(args.out) if args.out else reference_dir()
    try:
        if args.action == "export":
            from covidlib.report.reference_export import export

            if not args.results_dir:
                raise ReferenceRunError("'covidlib reference export' needs --results-dir, the "
                                        "results folder of a finished reference book run")
            prov = export(args.results_dir, out, profile=args.profile, commit=args.commit)
            print(f"published {len(prov['files'])} files of the {prov['profile']} run (commit "
                  f"{prov['commit']}) to {out}; left out: {prov['left_out']}")
            return 0
        from covidlib.report.reference import load_provenance
        from covidlib.report.reference_verify import report, verify

        if load_provenance(out) is None:
            print(f"no published reference run in {out} (provenance.json absent): nothing to "
                  "verify")
            return 0
        text, status = report(verify(out, args.sample, work=args.results_dir))
        print(text)
        return status
    except ReferenceRunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covidlib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="list, generate, download or describe datasets")
    data.add_argument("action", choices=["list", "synthetic", "fetch", "stats", "check",
                                         "convert"])
    data.add_argument("name", nargs="?", help="dataset name (a manifest in data_manifests/; "
                                              "for check also a manifest YAML path)")
    data.add_argument("--root", help="data root (default: first entry of COVIDLIB_DATA_PATH)")
    data.add_argument("--source", help="convert: the TCIA download folder (DICOM + RTSTRUCT)")
    data.add_argument("--force", action="store_true",
                      help="convert: redo patients that are already converted")
    data.set_defaults(func=_cmd_data)
    bk = sub.add_parser("book", help="execute the notebooks with papermill and build the book")
    bk.add_argument("--profile", default="cpu",
                    help="run profile (cpu, gpu, paper; see covidlib.params)")
    bk.add_argument("--results-dir", default="results")
    bk.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    bk.add_argument("--only", nargs="*", help="chapter outputs to (re-)execute")
    bk.add_argument("--force", action="store_true",
                    help="re-execute every chapter (default: only those whose notebook, "
                         "parameters, covidlib sources or cached results changed)")
    bk.add_argument("--no-html", action="store_true", help="execute notebooks only")
    bk.add_argument("--workers", type=int, default=None,
                    help="local Dask workers (default: one per GPU, else one per core)")
    bk.add_argument("--scheduler", default=None,
                    help="existing Dask scheduler, e.g. tcp://host:8786 "
                         "(default: $COVIDLIB_SCHEDULER; none: a local cluster)")
    bk.set_defaults(func=_cmd_book)
    ref = sub.add_parser("reference", help="publish the reference run (export) or recompute "
                                          "a sample of it and compare (verify)")
    ref.add_argument("action", choices=["export", "verify"])
    ref.add_argument("--results-dir", help="export: the finished run's results folder; "
                                           "verify: where to recompute (default: a temporary "
                                           "folder)")
    ref.add_argument("--out", help="the reference folder (default: <repo>/reference)")
    ref.add_argument("--profile", default="reference", help="export: the run's profile")
    ref.add_argument("--commit", help="export: the commit the run used (default: the one its "
                                      "chapters recorded, else git rev-parse HEAD)")
    ref.add_argument("--sample", default="ci", choices=["ci", "full"],
                     help="verify: ci = the cheapest P2 and P1 runs, full = a larger sample")
    ref.set_defaults(func=_cmd_reference)
    from covidlib.experiments.p2_cli import add_train_parser  # covidlib train (P2 methods)
    from covidlib.experiments.p4_cli import extend_train_parser  # ... and P4's

    add_train_parser(sub)
    extend_train_parser(sub.choices["train"])
    from covidlib.experiments.p1_cli import add_train_p1_parser  # covidlib train-p1 (P1)

    add_train_p1_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from covidlib.params import ParameterError
    from covidlib.report.book import BookError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, BookError, ParameterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
