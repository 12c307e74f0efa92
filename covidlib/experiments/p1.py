"""P1 (Laradji et al.): region-based active learning with point supervision, the book's runs.

Profiles, run configurations, the runners behind Figures 5, 6, 7 and the Sec. 5.3 headline,
their tables, verdicts (computed, never typed) and figures. The algorithm is P1's part of
the active-learning core (:mod:`covidlib.active_loop`): :mod:`covidlib.active` (learner,
pools, oracle, costs) and :mod:`covidlib.acquisition` (heuristics, region scores,
selection). Every run goes through the public entry point :func:`train_p1`
(:mod:`covidlib.experiments.p1_train`) and is cached in a
:class:`~covidlib.cache.ResultCache` under its full configuration (run settings, code version
and the data's fingerprint) and checkpointed after every cycle while it runs, so a stopped
chapter continues where it stopped and a finished one is read back.

Reading of P1 used here:

* Fig. 5 (Sec. 5.1): random vs entropy, K = 64, 5 initial images labelled with points, 5
  regions per cycle; Dice and specificity against the number of labelled regions.
* Fig. 6 (Sec. 5.2): several K at "a budget of 192 seconds to label the initial set ... For
  images with 64 regions that corresponds to 3 images (64 x 3)". At P1's own 3 s per region,
  192 s buys 64 regions (one image at K = 64); the stated count (3 images at K = 64) means
  192 *regions*. We follow the stated count, ``round(192 / K)`` images (at least one), and
  report the seconds it really costs (576 s at 3 s per region).
* Fig. 7 (Sec. 5.3): point-level vs per-pixel labels of the same selected regions at K = 64,
  Dice against the labelling cost in seconds (3 s per point or tag, 3 s per polygon vertex).
* Headline (Sec. 5.3): the AL run's cost as a fraction of labelling every pool slice (96 s
  each) and its Dice as a fraction of the same network trained on every full mask with the
  structure loss.

The entry point and the cached runs live in :mod:`covidlib.experiments.p1_train`, the
settings in :mod:`covidlib.experiments.p1_settings`, the tables and verdicts in
:mod:`covidlib.experiments.p1_report`, the mechanism checks and figures in
:mod:`covidlib.experiments.p1_mechanism`; all are re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from covidlib.active import ALConfig
from covidlib.experiments import p1_report
from covidlib.experiments.p1_mechanism import (
    MECHANISMS,
    baseline_convergence,
    baseline_curves,
    chapter_verdict,
    fig5_verdicts,
    figure2,
    figure5,
    figure6,
    figure7,
    figure_baseline,
    mechanism_present,
    mechanism_summary,
    pool_infected_share,
    selection_shares,
    upper_bound_check,
    upper_bound_table,
)
from covidlib.experiments.p1_report import *  # noqa: F403  (re-exported below)
from covidlib.experiments.p1_report import curves_frame
from covidlib.experiments.p1_settings import (
    DATASET_NAMES,
    HEURISTIC_LABELS,
    PROFILES,
    REAL_DATASET,
    RUN_KEYS,
    P1Settings,
    SettingsError,
    _data,
    al_config,
    data_note,
    fig6_initial_images,
    load_data,
    records_scorecard,
    resolve_dataset,
    settings,
)
from covidlib.experiments.p1_train import (
    KIND_AL,
    KIND_FULL,
    VERSION,
    P1Run,
    TestSet,
    load_test_set,
    model_path,
    run_al,
    run_full,
    score_test_sets,
    train_p1,
)
from covidlib.experiments.p1_train import (
    _cached as _cached,  # the claim-and-wait helper (tests, reference_verify)
)

__all__ = [
    *p1_report.__all__,
    "DATASET_NAMES",
    "HEURISTIC_LABELS",
    "KIND_AL",
    "KIND_FULL",
    "MECHANISMS",
    "PROFILES",
    "REAL_DATASET",
    "RUN_KEYS",
    "VERSION",
    "P1Run",
    "P1Settings",
    "Runs",
    "SettingsError",
    "TestSet",
    "al_config",
    "baseline",
    "baseline_convergence",
    "baseline_curves",
    "ceiling_changes",
    "ceiling_config",
    "chapter_verdict",
    "data_note",
    "entropy_vs_random",
    "fig5_verdicts",
    "fig6_initial_images",
    "figure2",
    "figure5",
    "figure6",
    "figure7",
    "figure_baseline",
    "load_data",
    "load_test_set",
    "mechanism_present",
    "mechanism_summary",
    "model_path",
    "point_vs_pixel",
    "pool_infected_share",
    "records_scorecard",
    "region_size",
    "resolve_dataset",
    "run_al",
    "run_full",
    "score_test_sets",
    "selection_shares",
    "settings",
    "train_p1",
    "upper_bound",
    "upper_bound_check",
    "upper_bound_table",
]

class Runs:
    """The runs of one chapter: ``items`` is a list of ``(labels, result)`` where ``labels``
    holds split, heuristic, n_regions, supervision and seed; ``full`` the fully supervised
    baselines and ``ceiling`` the every-region-labelled runs, as ``({"split", "seed"},
    result)``; ``settings`` is the chapter's :class:`P1Settings`, ``settings(profile,
    overrides)``."""

    def __init__(self, profile: str, dataset: str, s: P1Settings,
                 overrides: Mapping[str, Any] | None = None) -> None:
        self.profile, self.dataset, self.settings = profile, dataset, s
        self.overrides = dict(overrides) if overrides else None  # s = settings(profile, these)
        self.items: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.full: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.ceiling: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.seconds = 0.0

    @property
    def curves(self) -> pd.DataFrame:
        return curves_frame(self.items)

    def get(self, **labels: Any) -> list[dict[str, Any]]:
        """Results whose labels match ``labels``."""
        return [r for lab, r in self.items if all(lab.get(k) == v for k, v in labels.items())]


def _run_all(runs: Runs, jobs: Sequence[tuple[dict[str, Any], dict[str, Any]]], *,
             data_root: Any, results_dir: Any, device: str, progress: bool,
             overrides: Mapping[str, Any] | None = None) -> Runs:
    """Each job ``(labels, run fields)`` through :func:`train_p1` (cached, no model kept)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    for labels, kw in tqdm(jobs, desc=f"P1 runs ({runs.dataset})", unit="run",
                           disable=not progress):
        res = train_p1(runs.dataset, labels["split"], profile=runs.profile, overrides=overrides,
                       keep_model=False, data_root=data_root, results_dir=results_dir,
                       device=device, **kw)
        runs.items.append((labels, res.result))
    runs.seconds += time.perf_counter() - t0
    return runs


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    if not seeds:
        raise ValueError("p1: seeds is empty; give at least one seed")
    return [int(s) for s in seeds]


def _job(split: str, heuristic: str, supervision: str, seed: int, n_regions: int,
         cycles: int | None, **changes: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """One run of a figure for :func:`_run_all`: its labels, and its run fields (K,
    ``changes``, ``cycles`` when given) for :func:`train_p1`."""
    ch: dict[str, Any] = {"n_regions": int(n_regions), **changes}
    if cycles is not None:
        ch["cycles"] = int(cycles)
    return ({"split": split, "heuristic": heuristic, "n_regions": ch["n_regions"],
             "supervision": supervision, "seed": seed},
            {"heuristic": heuristic, "seed": seed, "supervision": supervision, **ch})


def entropy_vs_random(dataset: str, splits: Sequence[str], *, profile: str = "cpu",
                      overrides: Mapping[str, Any] | None = None, seeds: Sequence[int] = (0, 1),
                      heuristics: Sequence[str] = ("random", "entropy"),
                      n_regions: int | None = None, supervision: str = "point",
                      cycles: int | None = None,
                      data_root: Any = None, results_dir: Any = None, device: str = "auto",
                      progress: bool = True) -> Runs:
    """P1 Fig. 5: every (split, heuristic, seed) run at K (default: the profile's, 64)."""
    s = settings(profile, overrides)
    runs = Runs(profile, dataset, s, overrides)
    jobs = [_job(split, h, supervision, seed, n_regions or s.n_regions, cycles)
            for split in splits for h in heuristics for seed in _check_seeds(seeds)]
    return _run_all(runs, jobs, data_root=data_root, results_dir=results_dir, device=device,
                    progress=progress, overrides=overrides)


def region_size(dataset: str, split: str, *, profile: str = "cpu",
                overrides: Mapping[str, Any] | None = None, seeds: Sequence[int] = (0, 1),
                region_counts: Sequence[int] | None = None, heuristic: str = "entropy",
                supervision: str = "point", cycles: int | None = None, data_root: Any = None,
                results_dir: Any = None, device: str = "auto", progress: bool = True) -> Runs:
    """P1 Fig. 6: one run per K and seed, initial set of ``round(192 / K)`` images."""
    s = settings(profile, overrides)
    runs = Runs(profile, dataset, s, overrides)
    jobs = [_job(split, heuristic, supervision, seed, k, cycles,
                 initial_images=fig6_initial_images(int(k), s.fig6_initial_regions))
            for k in (region_counts or s.fig6_regions) for seed in _check_seeds(seeds)]
    return _run_all(runs, jobs, data_root=data_root, results_dir=results_dir, device=device,
                    progress=progress, overrides=overrides)


def point_vs_pixel(dataset: str, split: str, *, profile: str = "cpu",
                   overrides: Mapping[str, Any] | None = None, seeds: Sequence[int] = (0, 1),
                   n_regions: int | None = None, heuristic: str = "entropy",
                   supervisions: Sequence[str] = ("point", "pixel"), cycles: int | None = None,
                   data_root: Any = None, results_dir: Any = None, device: str = "auto",
                   progress: bool = True) -> Runs:
    """P1 Fig. 7: the same loop with point-level and with per-pixel region labels."""
    s = settings(profile, overrides)
    runs = Runs(profile, dataset, s, overrides)
    jobs = [_job(split, heuristic, sup, seed, n_regions or s.n_regions, cycles)
            for sup in supervisions for seed in _check_seeds(seeds)]
    return _run_all(runs, jobs, data_root=data_root, results_dir=results_dir, device=device,
                    progress=progress, overrides=overrides)


def upper_bound(dataset: str, split: str, *, profile: str = "cpu",
                overrides: Mapping[str, Any] | None = None, seeds: Sequence[int] = (0, 1),
                n_regions: int | None = None, supervision: str = "point",
                heuristics: Sequence[str] = ("random", "entropy"), cycles: int | None = None,
                data_root: Any = None, results_dir: Any = None, device: str = "auto",
                progress: bool = True) -> Runs:
    """P1 Sec. 5.3: the AL runs (entropy, and random for Fig. 2) plus the fully supervised
    network, per seed, and the upper-bound check's every-region run (first seed,
    :func:`ceiling_config`)."""
    if "entropy" not in heuristics:
        raise ValueError(f"p1: the headline needs the entropy runs; heuristics={heuristics}")
    runs = entropy_vs_random(dataset, [split], profile=profile, overrides=overrides,
                             seeds=seeds, heuristics=heuristics, n_regions=n_regions,
                             supervision=supervision,
                             cycles=cycles, data_root=data_root, results_dir=results_dir,
                             device=device, progress=progress)
    t0 = time.perf_counter()
    for seed in _check_seeds(seeds):
        _add_full(runs, split, seed, data_root=data_root, results_dir=results_dir,
                  device=device)
    # the upper-bound check's end point: one seed (the first), a ceiling, not a curve
    first = _check_seeds(seeds)[0]
    runs.ceiling.append(({"split": split, "seed": first}, train_p1(
        dataset, split, profile=profile, overrides=overrides, seed=first, keep_model=False,
        data_root=data_root, results_dir=results_dir, device=device,
        **ceiling_changes(dataset, split, runs.settings, data_root)).result))
    runs.seconds += time.perf_counter() - t0
    return runs


def _add_full(runs: Runs, split: str, seed: int, *, data_root: Any, results_dir: Any,
              device: str) -> None:
    """The fully supervised baseline of ``split`` at ``seed`` through :func:`train_p1`
    (``supervision="full"``, cached, no model kept), appended to ``runs.full``."""
    if settings(runs.profile, runs.overrides) != runs.settings:
        raise ValueError(f"p1: runs.settings differ from settings({runs.profile!r}, "
                         f"{runs.overrides!r}); build Runs with the overrides of its settings")
    res = train_p1(runs.dataset, split, profile=runs.profile, overrides=runs.overrides,
                   seed=seed, supervision="full", keep_model=False, data_root=data_root,
                   results_dir=results_dir, device=device)
    runs.full.append(({"split": split, "seed": seed}, res.result))


def ceiling_changes(dataset: str, split: str, s: P1Settings, data_root: Any = None
                    ) -> dict[str, Any]:
    """The run fields of the upper-bound check's run (see :func:`ceiling_config`)."""
    n = len(load_data(dataset, split, s, data_root).train)
    return {"patience": s.full_patience, "initial_images": n, "cycles": 0,
            "epochs": s.full_epochs, "epoch_items": None}


def ceiling_config(cfg: ALConfig, s: P1Settings, data_root: Any = None) -> ALConfig:
    """The upper-bound check's run: ``cfg`` with every region of every pool image labelled
    at the start (point labels on the whole pool: the end point of the AL curve), no
    selection cycle, trained like the fully supervised baseline (at most ``full_epochs``
    epochs over every image, early stopping after ``full_patience``)."""
    n = len(_data(cfg, data_root).train)
    return ALConfig.from_mapping({**cfg.to_dict(), "initial_images": n, "cycles": 0,
                                  "epochs": s.full_epochs, "epoch_items": None,
                                  "patience": s.full_patience})


def baseline(runs: Runs, splits: Sequence[str], seed: int = 0, *, data_root: Any = None,
             results_dir: Any = None, device: str = "auto") -> Runs:
    """Add the fully supervised baseline (per-pixel masks, structure loss) of each split at
    ``seed`` to ``runs.full`` (cached: the headline chapter's runs of the same split and
    seed are these)."""
    t0 = time.perf_counter()
    for split in splits:
        if any(lab["split"] == split and lab["seed"] == seed for lab, _ in runs.full):
            continue
        _add_full(runs, split, seed, data_root=data_root, results_dir=results_dir,
                  device=device)
    runs.seconds += time.perf_counter() - t0
    return runs


# --------------------------------------------------------------------------------------------
