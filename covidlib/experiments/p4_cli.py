"""``covidlib train`` for P4's methods: one network by example re-weighting, any test sets.

    covidlib train DATASET SPLIT METHOD [--paper p4] [--fold 0] [--teacher ours]
                   [--pool GROUP|DATASET] [--profile cpu] [--set KEY=VALUE ...] [--seed 0]
                   [--test NAME=[DATASET:|SPLIT:]PART[@FOLD] ...] [--out DIR] [--device auto]

``DATASET`` is one of P4's (``SPLIT`` its P4 split) or your own (a manifest name or YAML
path; ``SPLIT`` any of its by-case / k-fold splits: ``train`` trains the teacher, ``val`` is
Alg. 1's clean meta set, ``test`` is scored; ``--pool`` the unlabelled pool, default the
cases the split does not list; :mod:`covidlib.experiments.p4_user`).

``METHOD`` is one of P4's (``semi``, ``rgs``, ``rgm``, ``rgsm``, ``rgs_al``, ``rgsm_al``;
``fully`` with ``--paper p4``, otherwise P2's). Trains once with
:func:`covidlib.experiments.p4.train_p4` (progress bars; the teacher is cached in
``DIR/work`` so an interrupted call resumes it) and writes, next to each other in ``DIR``:
``config.json`` (the run's full settings), ``scores.json`` (per test set the summary and the
per-case scores, plus the training history) and ``model.pt`` (the student's weights,
:func:`covidlib.checkpoint.save`). This module imports nothing heavy until the command runs.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

__all__ = ["P4_ONLY", "extend_train_parser", "parse_p4_tests", "run_train"]

P4_ONLY = ("semi", "rgs", "rgm", "rgsm", "rgs_al", "rgsm_al")
"""Methods that name P4 (``fully`` is P2's unless ``--paper p4``)."""


def parse_p4_tests(items: list[str] | None) -> dict[str, Any]:
    """``["own=test", "next=test@1", "semiseg=covid-semiseg:test", "b=other-split:test"]``
    -> test sets for :func:`~covidlib.experiments.p4.train_p4` (default: the fold's
    ``test``)."""
    from covidlib.experiments.p4_method import parse_test_set

    out: dict[str, Any] = {}
    for item in items or ["test=test"]:
        name, sep, where = item.partition("=")
        if not sep or not name or not where:
            raise SystemExit(f"error: --test {item!r}: expected NAME=[DATASET:|SPLIT:]PART"
                             "[@FOLD], e.g. --test next=test@1")
        try:
            out[name] = parse_test_set(where)
        except ValueError as exc:
            raise SystemExit(f"error: --test {item!r}: {exc}") from None
    return out


def _check_split(dataset: str, split: str) -> None:
    from covidlib.experiments.p4_settings import DATASETS

    spec = DATASETS.get(dataset)
    if spec is not None and split != spec["split"]:
        raise SystemExit(f"error: P4 on {dataset} uses split {spec['split']!r} (choose the "
                         f"fold with --fold), not {split!r}")


def run_train(args: argparse.Namespace) -> int:
    """The ``covidlib train`` command for a P4 method (see the module docstring)."""
    from covidlib import checkpoint
    from covidlib.cache import atomic_write_text
    from covidlib.experiments.p2_cli import parse_sets
    from covidlib.experiments.p4 import train_p4

    _check_split(args.dataset, args.split)
    out = Path(args.out or f"p4-{Path(args.dataset).stem}-fold{args.fold}-{args.loss}")
    out.mkdir(parents=True, exist_ok=True)
    overrides = parse_sets(args.set)
    try:
        trained = train_p4(args.dataset, args.loss, split=args.split, pool=args.pool,
                           fold=args.fold, seed=args.seed,
                           profile=args.profile, overrides=overrides, teacher=args.teacher,
                           test_sets=parse_p4_tests(args.test), device=args.device,
                           data_root=args.root, results_dir=out / "work", progress=True)
    except ValueError as exc:  # a bad method, profile, setting, fold or test set, named
        raise SystemExit(f"error: {exc}") from None
    config = {"paper": "p4", "dataset": trained.dataset.name, "split": args.split,
              "fold": args.fold, "method": args.loss, "seed": args.seed,
              "profile": args.profile, "overrides": overrides, "teacher": args.teacher,
              "tests": args.test or ["test=test"], "settings": asdict(trained.settings)}
    if args.pool is not None:
        config["pool"] = args.pool
    atomic_write_text(out / "config.json", json.dumps(config, indent=1))
    atomic_write_text(out / "scores.json", json.dumps(
        {"scores": trained.scores,
         "cases": {k: v["cases"] for k, v in trained.results.items()},
         "history": trained.history}, indent=1))
    checkpoint.save(trained.model.state_dict(), out / "model.pt")
    for name, sc in trained.scores.items():
        print(f"{name}: Dice {_fmt(sc['dice'])} +- {_fmt(sc['dice_sd'])}  HD {_fmt(sc['hd'])} "
              f"({sc['n_infected']} infected of {sc['n_cases']} cases)")
    print(f"results in {out}")
    return 0


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _dispatch(p2_run: Any, args: argparse.Namespace) -> int:
    paper = args.paper
    if paper == "auto":
        paper = "p4" if args.loss in P4_ONLY else "p2"
    if paper == "p2":  # P4's options mean nothing to a P2 method: say so, never ignore them
        given = [f"--{k} {v}" for k, v, default in (("pool", args.pool, None),
                 ("teacher", args.teacher, "ours"), ("fold", args.fold, 0)) if v != default]
        if given:
            raise SystemExit(f"error: {', '.join(given)}: P4 options, but {args.loss!r} trains "
                             f"P2's method (use --paper p4 for P4's fully supervised baseline)")
    return run_train(args) if paper == "p4" else p2_run(args)


def extend_train_parser(train: argparse.ArgumentParser) -> None:
    """Add P4's methods to ``covidlib train`` (the P2 parser of
    :func:`covidlib.experiments.p2_cli.add_train_parser`)."""
    train.add_argument("--paper", default="auto", choices=["auto", "p2", "p4"],
                       help="whose method: auto = P4 for semi/rgs/rgm/rgsm/rgs_al/rgsm_al, "
                            "else P2 (use --paper p4 for P4's fully supervised baseline)")
    train.add_argument("--fold", type=int, default=0, help="P4: the fold of the split")
    train.add_argument("--teacher", default="ours", choices=["ours", "provided"],
                       help="P4: pseudo-labels of our teacher or the provided ones "
                            "(COVID-SemiSeg's, or the masks of your --pool)")
    train.add_argument("--pool", default=None,
                       help="P4 on your own dataset: the unlabelled pool, a group of its "
                            "manifest or another dataset (default: the cases SPLIT does not "
                            "list)")
    train.set_defaults(func=partial(_dispatch, train.get_default("func")))
