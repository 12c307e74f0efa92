"""``covidlib train``: one P2 method on any dataset and split, scored on any test sets.

    covidlib train DATASET SPLIT LOSS [--profile cpu] [--set KEY=VALUE ...] [--seed 0]
                   [--test NAME=PART | NAME=SPLIT:PART ...] [--out DIR] [--device auto]
                   [--root DATA_ROOT]

Trains once with :func:`covidlib.experiments.p2.train_p2` (progress bar; checkpoints in
``DIR/checkpoints`` so an interrupted call resumes) and writes, next to each other in
``DIR``: ``config.json`` (the run's full settings), ``scores.json`` (one entry per test set,
plus the training curve) and ``model.pt`` (the weights of the best validation epoch).
This module imports nothing heavy until the command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_run_options", "add_train_parser", "parse_sets", "parse_tests", "run_train"]


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["epochs=3", "size=32"]`` -> ``{"epochs": 3, "size": 32}`` (values read as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set {item!r}: expected KEY=VALUE, e.g. --set epochs=3")
        out[key.strip()] = yaml.safe_load(value)
    return out


def parse_tests(items: list[str] | None) -> dict[str, Any]:
    """``["own=test", "other=mixed:test"]`` -> test sets for :func:`train_p2` (default: the
    training split's ``test`` part)."""
    from covidlib.experiments.p2 import TestSet

    out: dict[str, Any] = {}
    for item in items or ["test=test"]:
        name, sep, where = item.partition("=")
        if not sep or not name or not where:
            raise SystemExit(f"error: --test {item!r}: expected NAME=PART or NAME=SPLIT:PART")
        split, colon, part = where.rpartition(":")
        out[name] = TestSet(part=part, split=split) if colon else part
    return out


def run_train(args: argparse.Namespace) -> int:
    """The ``covidlib train`` command (see the module docstring)."""
    import torch

    from covidlib.cache import atomic_write_text
    from covidlib.experiments.p2 import train_p2

    out = Path(args.out or f"p2-{Path(args.dataset).stem}-{args.split}-{args.loss}")
    out.mkdir(parents=True, exist_ok=True)
    try:
        trained = train_p2(args.dataset, args.split, args.loss, profile=args.profile,
                           overrides=parse_sets(args.set), seed=args.seed,
                           test_sets=parse_tests(args.test), device=args.device,
                           data_root=args.root, checkpoint_dir=out / "checkpoints",
                           progress=True)
    except ValueError as exc:  # a bad loss, profile, setting or test part, named in exc
        raise SystemExit(f"error: {exc}") from None
    atomic_write_text(out / "config.json", json.dumps(trained.run.config(), indent=1))
    atomic_write_text(out / "scores.json", json.dumps(
        {"scores": trained.scores, "history": trained.history,
         "best_epoch": trained.best_epoch, "n_slices": trained.n_slices}, indent=1))
    torch.save(trained.model.state_dict(), out / "model.pt")
    for name, sc in trained.scores.items():
        print(f"{name}: Dice {sc['dice']:.3f}  IoU {sc['iou']:.3f}  ({sc['n_slices']} slices)")
    print(f"results in {out}")
    return 0


def add_train_parser(sub: Any) -> None:
    """Add ``train`` to the ``covidlib`` command's subparsers."""
    tr = sub.add_parser("train", help="train one P2 method (point labels) on any dataset")
    tr.add_argument("dataset", help="manifest name or path to a manifest YAML")
    tr.add_argument("split", help="one of the manifest's splits")
    tr.add_argument("loss", help="fully, pl, cb_flip, cb_flip_rot, lcfcn or cb_lcfcn")
    add_run_options(tr, set_example="epochs=3", out_default="p2-DATASET-SPLIT-LOSS")
    tr.set_defaults(func=run_train)


def add_run_options(tr: argparse.ArgumentParser, set_example: str, out_default: str) -> None:
    """The options every training command shares (``train``, ``train-p1``): ``--profile``,
    ``--set``, ``--seed``, ``--test``, ``--out``, ``--device`` and ``--root``."""
    tr.add_argument("--profile", default="cpu", help="cpu, reference, gpu or paper")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help=f"override a profile setting, e.g. --set {set_example} (repeatable)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--test", action="append", metavar="NAME=[SPLIT:]PART",
                    help="a test set to score (repeatable; default test=test)")
    tr.add_argument("--out", help=f"results folder (default: {out_default})")
    tr.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    tr.add_argument("--root", help="data root (default: search COVIDLIB_DATA_PATH)")
