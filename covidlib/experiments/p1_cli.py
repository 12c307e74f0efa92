"""``covidlib train-p1``: P1's region active learning (or its fully supervised baseline,
``--supervision full``) on any dataset and split, scored on any test sets.

    covidlib train-p1 DATASET SPLIT [--heuristic entropy] [--profile cpu]
                      [--set KEY=VALUE ...] [--seed 0] [--supervision point|pixel|full]
                      [--test NAME=PART | NAME=SPLIT:PART ...] [--out DIR] [--device auto]
                      [--root DATA_ROOT]

Trains once with :func:`covidlib.experiments.p1_train.train_p1` (progress bar over the
cycles; the run is cached and checkpointed in ``DIR`` so an interrupted call resumes) and
writes, next to each other in ``DIR``: ``config.json`` (the run's full settings),
``scores.json`` (one entry per test set, plus every cycle's record; with ``--supervision
full`` the baseline's own test scores, best epoch and training curve instead) and
``model.pt`` (the last cycle's weights). ``--set`` and ``--test`` read like ``covidlib
train`` (P2). This module imports nothing heavy until the command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_train_p1_parser", "run_train_p1"]


def add_train_p1_parser(sub: Any) -> None:
    """Add ``train-p1`` to the ``covidlib`` command's subparsers."""
    from covidlib.experiments.p2_cli import add_run_options

    tr = sub.add_parser("train-p1", help="P1's region active learning (point labels) on any "
                                         "dataset")
    tr.add_argument("dataset", help="manifest name or path to a manifest YAML")
    tr.add_argument("split", help="one of the manifest's splits")
    tr.add_argument("--heuristic", default="entropy", help="entropy, bald or random")
    tr.add_argument("--supervision", default="point",
                    help="point or pixel region labels, or full: the fully supervised "
                         "baseline (every pool slice with its full mask, P1 Sec. 5.3)")
    add_run_options(tr, set_example="cycles=2", out_default="p1-DATASET-SPLIT-HEURISTIC")
    tr.set_defaults(func=run_train_p1)


def _summary(run: Any) -> dict[str, Any]:
    """What ``scores.json`` holds: the scores per test set and the run's own record."""
    keys = (("test", "val_dice", "best_epoch", "epochs", "n_train", "full_effort_seconds",
             "history") if "records" not in run.result else ("records", "label_seconds"))
    return {"scores": run.scores, **{k: run.result[k] for k in keys}}


def run_train_p1(args: argparse.Namespace) -> int:
    """The ``covidlib train-p1`` command (see the module docstring)."""
    import torch

    from covidlib.cache import atomic_write_text
    from covidlib.experiments.p1_train import train_p1
    from covidlib.experiments.p2_cli import parse_sets, parse_tests

    method = "full" if args.supervision == "full" else args.heuristic
    out = Path(args.out or f"p1-{Path(args.dataset).stem}-{args.split}-{method}")
    out.mkdir(parents=True, exist_ok=True)
    try:
        run = train_p1(args.dataset, args.split, heuristic=args.heuristic,
                       profile=args.profile, overrides=parse_sets(args.set), seed=args.seed,
                       supervision=args.supervision, test_sets=parse_tests(args.test),
                       data_root=args.root, results_dir=out, device=args.device,
                       progress=True)
    except ValueError as exc:  # a bad heuristic, profile, setting or test set, named in exc
        raise SystemExit(f"error: {exc}") from None
    assert run.model is not None
    atomic_write_text(out / "config.json", json.dumps(run.config.to_dict(), indent=1))
    atomic_write_text(out / "scores.json", json.dumps(_summary(run), indent=1))
    torch.save(run.model.state_dict(), out / "model.pt")
    for name, sc in run.scores.items():
        print(f"{name}: Dice {sc['dice']:.3f}  IoU {sc['iou']:.3f}")
    print(f"results in {out}")
    return 0
