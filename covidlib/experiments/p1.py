"""P1 (Laradji et al.): region-based active learning with point supervision, the book's runs.

Profiles, run configurations, the runners behind Figures 5, 6, 7 and the Sec. 5.3 headline,
their tables, verdicts (computed, never typed) and figures. The algorithm is
:mod:`covidlib.active` (loop, pools, oracle, costs) and :mod:`covidlib.acquisition`
(heuristics, region scores, selection). Every run is cached in a
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
"""

from __future__ import annotations

import copy
import itertools
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from covidlib.acquisition import infected_share
from covidlib.active import (
    ALConfig,
    ALData,
    decode_mask,
    load_al_data,
    run_active_learning,
    train_fully_supervised,
)
from covidlib.cache import ResultCache, atomic_write_text, config_hash
from covidlib.data.errors import DataError
from covidlib.data.manifest import load_manifest, locate
from covidlib.data.oracle import (
    FULL_SLICE_SECONDS,
    POINT_SECONDS,
    full_effort_seconds,
    region_grid,
    region_label,
)
from covidlib.report.figures import display_view
from covidlib.verdict import (
    INCONCLUSIVE,
    Convergence,
    Verdict,
    baseline_converged,
    combine_verdicts,
    three_way_verdict,
)

__all__ = [
    "DATASET_NAMES",
    "HEURISTIC_LABELS",
    "MECHANISMS",
    "PROFILES",
    "REAL_DATASET",
    "Runs",
    "al_config",
    "baseline",
    "baseline_convergence",
    "baseline_curves",
    "ceiling_config",
    "chapter_verdict",
    "curves_frame",
    "data_note",
    "describe",
    "effort_arithmetic",
    "effort_table",
    "entropy_vs_random",
    "fig5_paper_table",
    "fig5_scorecard",
    "fig5_summary",
    "fig5_verdict",
    "fig5_verdicts",
    "fig6_initial_images",
    "fig6_scorecard",
    "fig6_summary",
    "fig6_verdict",
    "fig7_scorecard",
    "fig7_summary",
    "fig7_verdict",
    "figure2",
    "figure5",
    "figure6",
    "figure7",
    "figure_baseline",
    "headline_numbers",
    "headline_scorecard",
    "headline_table",
    "headline_verdict",
    "load_data",
    "mechanism_present",
    "mechanism_summary",
    "point_vs_pixel",
    "pool_infected_share",
    "random_specificity_range",
    "records_scorecard",
    "region_size",
    "resolve_dataset",
    "run_al",
    "run_full",
    "selection_shares",
    "settings",
    "upper_bound",
    "upper_bound_check",
    "upper_bound_table",
    "whole_image_costs",
    "write_csv",
]

VERSION = "p1/2"
"""Part of every cached config: bump it when a change alters results."""
KIND_AL = "p1_al"
KIND_FULL = "p1_full"

HEURISTIC_LABELS = {"random": "random", "entropy": "entropy (MC dropout)", "bald": "BALD"}
_COLOURS = {"random": "tab:orange", "entropy": "tab:blue", "bald": "tab:green",
            "point": "tab:blue", "pixel": "tab:red"}

_COMMON: dict[str, Any] = {
    "n_regions": 64,  # P1 Implementation Details: 64 regions per image
    "initial_images": 5,  # P1: 5 images, every region labelled, in the first cycle
    "reduce": "max",  # P1 "Model Training": region score = maximum pixel entropy
    "head_only": True,  # MC samples through the dropout head only (same masks, same scores)
    "warm_start": True,  # each cycle fine-tunes the previous cycle's best weights
    "fig6_initial_regions": 192,  # P1 Sec. 5.2 (see the module docstring)
    "figure_slices": 3,  # test slices of the qualitative figure (P1 Fig. 2)
}

PROFILES: dict[str, dict[str, Any]] = {
    # Minutes on 2 CPU cores for the four P1 chapters: 64 x 64 slices, a U-Net (8 channels
    # at the first of 3 levels, MC dropout p = 0.5 after the bottleneck and each decoder
    # block) trained from scratch at lr 1e-3, 4 epochs of at least 24 images per cycle,
    # 3 cycles of 10 regions after the 5 initial images, I = 8 MC draws; a pool of 40
    # slices, 8 validation and 40 test slices spread over the split.
    "cpu": {
        **_COMMON,
        "model": "unet2d",
        "model_kwargs": {"base_width": 8, "depth": 3, "dropout": 0.5},
        "size": 64,
        "max_slices": {"train": 40, "val": 8, "test": 40},
        "batch_size": 4,
        "lr": 1e-3,
        "epochs": 4,
        "epoch_items": 24,
        "patience": None,
        "n_samples": 8,
        "score_batch_size": 16,
        "loss_balance": "class",
        "per_cycle": 10,
        "cycles": 3,
        "fig6_regions": [16, 64, 256],
        # the fully supervised baseline and the every-region run: 30 epochs, best
        # validation epoch kept (early stopping cut noisy curves short; none here)
        "full_epochs": 30,
        "full_patience": None,
    },
    # One H100 (about 5 of the book's 20 GPU minutes): P1's network (ImageNet FCN8-VGG16,
    # dropout 0.5 after fc6 and fc7) at 352 px, I = 20, K = 64, 5 regions per cycle; 10
    # cycles of at most 5 epochs of 64 images, batch 8, lr 1e-4, on a pool of 160 slices.
    "gpu": {
        **_COMMON,
        "model": "fcn8_vgg16",
        "model_kwargs": {"weights": "imagenet", "layout": "same", "dropout": 0.5},
        "size": 352,
        "max_slices": {"train": 160, "val": 16, "test": 160},
        "batch_size": 8,
        "lr": 1e-4,
        "epochs": 5,
        "epoch_items": 64,
        "patience": None,
        "n_samples": 20,
        "score_batch_size": 16,
        "loss_balance": "class",
        "per_cycle": 5,
        "cycles": 10,
        "fig6_regions": [16, 64, 256],
        "full_epochs": 40,
        "full_patience": None,
    },
    # P1's own settings (Sec. 3, Implementation Details, Sec. 5): ImageNet VGG16-FCN8 with
    # dropout 0.5 after fc6 and fc7, 352 x 352 slices, 100 cycles, 5 initial images, K = 64,
    # 5 regions per cycle, at most 40 epochs per cycle with the best validation epoch kept,
    # batch size 1, Adam lr 1e-4, Eq. 1 as printed (cross-entropy of the labelled pixels);
    # I is not given in P1 (20 here); every slice of every split.
    "paper": {
        **_COMMON,
        "model": "fcn8_vgg16",
        "model_kwargs": {"weights": "imagenet", "layout": "classic", "dropout": 0.5},
        "size": 352,
        "max_slices": {"train": None, "val": None, "test": None},
        "batch_size": 1,
        "lr": 1e-4,
        "epochs": 40,
        "epoch_items": None,
        "patience": None,
        "n_samples": 20,
        "score_batch_size": 8,
        "loss_balance": "none",
        "per_cycle": 5,
        "cycles": 100,
        "fig6_regions": [16, 64, 256],
        "full_epochs": 40,
        "full_patience": None,
    },
}

_RUN_KEYS = ("n_regions", "initial_images", "reduce", "head_only", "warm_start", "model",
             "model_kwargs", "size", "max_slices", "batch_size", "lr", "epochs", "epoch_items",
             "patience", "n_samples", "score_batch_size", "loss_balance", "per_cycle",
             "cycles", "figure_slices")


def settings(profile: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of profile ``profile`` with ``overrides`` merged over it (top-level keys).

    Unknown profile or override key -> ``ValueError`` naming it.
    """
    if profile not in PROFILES:
        raise ValueError(f"p1: unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    out = copy.deepcopy(PROFILES[profile])
    unknown = sorted(set(overrides or {}) - set(out))
    if unknown:
        raise ValueError(f"p1: unknown override key(s) {unknown}; known: {sorted(out)}")
    out.update(copy.deepcopy(dict(overrides or {})))
    return out


def al_config(dataset: str, split: str, s: Mapping[str, Any], *, heuristic: str = "entropy",
              seed: int = 0, supervision: str = "point", **changes: Any) -> ALConfig:
    """The :class:`~covidlib.active.ALConfig` of one run from profile settings ``s``;
    ``changes`` replace run fields (e.g. ``n_regions``, ``initial_images``, ``cycles``)."""
    missing = [k for k in _RUN_KEYS if k not in s]
    if missing:
        raise ValueError(f"p1: settings lack {missing}")
    fields_ = {k: copy.deepcopy(s[k]) for k in _RUN_KEYS}
    fields_.update(changes)
    return ALConfig(dataset=dataset, split=split, heuristic=heuristic, seed=int(seed),
                    supervision=supervision, **fields_)


def fig6_initial_images(n_regions: int, budget_regions: int = 192) -> int:
    """Initial images of the region-size study: ``round(budget / K)``, at least one (P1 Sec.
    5.2: 192 at K = 64 "corresponds to 3 images")."""
    if n_regions < 1 or budget_regions < 1:
        raise ValueError(f"fig6_initial_images: K={n_regions}, budget={budget_regions} must "
                         "be >= 1")
    return max(1, math.floor(budget_regions / n_regions + 0.5))


REAL_DATASET = "ma20-slices"
"""P1's COVID-19-B (Ma et al.'s volumes, here the 10 Coronacases volumes as 2-D slices)."""
DATASET_NAMES = {
    "ma20-slices": "P1's COVID-19-B: real CT slices of Ma et al.'s Coronacases volumes "
                   "(real 2-D derivative: infected slices only, 8-bit CLAHE)",
    "synthetic": "the synthetic thorax phantom (a stand-in: no real data of this set here)",
    "covid-semiseg": "COVID-SemiSeg (real slices, MedSeg; not one of P1's sets)",
}


def resolve_dataset(dataset: str, data_root: str | Path | None = None) -> str:
    """The dataset a chapter runs on: ``"auto"`` -> :data:`REAL_DATASET` when its files are
    found (``data_root`` or ``COVIDLIB_DATA_PATH``), else ``"synthetic"``; any other name is
    returned as it is (opening it later names what is missing)."""
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"p1: dataset={dataset!r}: give 'auto' or a dataset name")
    if dataset != "auto":
        return dataset
    try:
        locate(load_manifest(REAL_DATASET), data_root)
    except (DataError, FileNotFoundError):
        return "synthetic"
    return REAL_DATASET


def records_scorecard(dataset: str, data_root: str | Path | None = None) -> bool:
    """Whether a chapter on ``dataset`` writes P1's scorecard rows: it does when ``dataset``
    is the best data found (:func:`resolve_dataset` of "auto"), so a phantom run never
    overwrites a real one."""
    return dataset == resolve_dataset("auto", data_root)


def data_note(dataset: str) -> str:
    """One line saying which data produced a table or figure."""
    return f"data: {dataset}, {DATASET_NAMES.get(dataset, 'see its manifest')}"


# --------------------------------------------------------------------------------------------
# Cached runs
# --------------------------------------------------------------------------------------------


def _data(cfg: ALConfig, data_root: str | Path | None) -> ALData:
    return load_al_data(cfg.dataset, cfg.split, cfg.size, cfg.max_slices, data_root)


def load_data(dataset: str, split: str, s: Mapping[str, Any],
              data_root: str | Path | None = None) -> ALData:
    """The pool, validation and test slices the profile ``s`` uses for ``split``."""
    return load_al_data(dataset, split, s["size"], s["max_slices"], data_root)


def _cached(kind: str, config: dict[str, Any], compute: Any, results_dir: str | Path | None,
            wait_seconds: float = 6 * 3600) -> dict[str, Any]:
    """The stored result of ``config``, else computed once: a run another process is
    computing (a chapter running in parallel) is waited for, not repeated."""
    if results_dir is None:
        return compute(None)
    cache = ResultCache(results_dir)
    ck = Path(results_dir) / "p1_checkpoints" / config_hash(config)  # used under the claim
    out = cache.compute_once(kind, config, lambda: compute(ck), wait_s=wait_seconds)
    if ck.exists():  # finished: the result is stored, the states are not needed
        shutil.rmtree(ck, ignore_errors=True)
    return out


def run_al(cfg: ALConfig, *, data_root: str | Path | None = None,
           results_dir: str | Path | None = None, device: str = "auto",
           progress: bool = False) -> dict[str, Any]:
    """One active-learning run, cached by its configuration and the data's fingerprint
    (device excluded: a GPU result is reused on a CPU). While it runs its state is
    checkpointed in ``<results_dir>/p1_checkpoints/<hash>/`` after every cycle."""
    data = _data(cfg, data_root)
    config = {"version": VERSION, "run": cfg.to_dict(), "data": data.fingerprint}
    return _cached(KIND_AL, config, lambda ck: run_active_learning(
        cfg, data_root, ck, progress, device=device, data=data), results_dir)


def run_full(cfg: ALConfig, epochs: int, *, data_root: str | Path | None = None,
             results_dir: str | Path | None = None, device: str = "auto",
             progress: bool = False) -> dict[str, Any]:
    """The fully supervised upper bound of ``cfg``'s data and network, cached."""
    data = _data(cfg, data_root)
    keys = ("dataset", "split", "model", "model_kwargs", "size", "max_slices", "batch_size",
            "lr", "patience", "figure_slices", "seed")
    config = {"version": VERSION, "full": {k: getattr(cfg, k) for k in keys},
              "epochs": int(epochs), "data": data.fingerprint}
    return _cached(KIND_FULL, config, lambda ck: train_fully_supervised(
        cfg, epochs, data_root, ck, progress, device=device, data=data), results_dir)


class Runs:
    """The runs of one chapter: ``items`` is a list of ``(labels, result)`` where ``labels``
    holds split, heuristic, n_regions, supervision and seed; ``full`` the fully supervised
    baselines and ``ceiling`` the every-region-labelled runs, as ``({"split", "seed"},
    result)``."""

    def __init__(self, profile: str, dataset: str, s: Mapping[str, Any]) -> None:
        self.profile, self.dataset, self.settings = profile, dataset, dict(s)
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


def _run_all(runs: Runs, jobs: Sequence[tuple[dict[str, Any], ALConfig]], *,
             data_root: Any, results_dir: Any, device: str, progress: bool) -> Runs:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    for labels, cfg in tqdm(jobs, desc=f"P1 runs ({runs.dataset})", unit="run",
                            disable=not progress):
        res = run_al(cfg, data_root=data_root, results_dir=results_dir, device=device)
        runs.items.append((labels, res))
    runs.seconds += time.perf_counter() - t0
    return runs


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    if not seeds:
        raise ValueError("p1: seeds is empty; give at least one seed")
    return [int(s) for s in seeds]


def entropy_vs_random(dataset: str, splits: Sequence[str], *, profile: str = "cpu",
                      overrides: Mapping[str, Any] | None = None, seeds: Sequence[int] = (0, 1),
                      heuristics: Sequence[str] = ("random", "entropy"),
                      n_regions: int | None = None, supervision: str = "point",
                      cycles: int | None = None,
                      data_root: Any = None, results_dir: Any = None, device: str = "auto",
                      progress: bool = True) -> Runs:
    """P1 Fig. 5: every (split, heuristic, seed) run at K (default: the profile's, 64)."""
    s = settings(profile, overrides)
    runs = Runs(profile, dataset, s)
    jobs = []
    for split in splits:
        for h in heuristics:
            for seed in _check_seeds(seeds):
                ch = {"n_regions": int(n_regions or s["n_regions"])}
                if cycles is not None:
                    ch["cycles"] = int(cycles)
                cfg = al_config(dataset, split, s, heuristic=h, seed=seed,
                                supervision=supervision, **ch)
                jobs.append(({"split": split, "heuristic": h, "n_regions": cfg.n_regions,
                              "supervision": supervision, "seed": seed}, cfg))
    return _run_all(runs, jobs, data_root=data_root, results_dir=results_dir, device=device,
                    progress=progress)


def region_size(dataset: str, split: str, *, profile: str = "cpu",
                overrides: Mapping[str, Any] | None = None, seeds: Sequence[int] = (0, 1),
                region_counts: Sequence[int] | None = None, heuristic: str = "entropy",
                supervision: str = "point", cycles: int | None = None, data_root: Any = None,
                results_dir: Any = None, device: str = "auto", progress: bool = True) -> Runs:
    """P1 Fig. 6: one run per K and seed, initial set of ``round(192 / K)`` images."""
    s = settings(profile, overrides)
    runs = Runs(profile, dataset, s)
    jobs = []
    for k in (region_counts or s["fig6_regions"]):
        for seed in _check_seeds(seeds):
            ch = {"n_regions": int(k),
                  "initial_images": fig6_initial_images(int(k), int(s["fig6_initial_regions"]))}
            if cycles is not None:
                ch["cycles"] = int(cycles)
            cfg = al_config(dataset, split, s, heuristic=heuristic, seed=seed,
                            supervision=supervision, **ch)
            jobs.append(({"split": split, "heuristic": heuristic, "n_regions": int(k),
                          "supervision": supervision, "seed": seed}, cfg))
    return _run_all(runs, jobs, data_root=data_root, results_dir=results_dir, device=device,
                    progress=progress)


def point_vs_pixel(dataset: str, split: str, *, profile: str = "cpu",
                   overrides: Mapping[str, Any] | None = None, seeds: Sequence[int] = (0, 1),
                   n_regions: int | None = None, heuristic: str = "entropy",
                   supervisions: Sequence[str] = ("point", "pixel"), cycles: int | None = None,
                   data_root: Any = None, results_dir: Any = None, device: str = "auto",
                   progress: bool = True) -> Runs:
    """P1 Fig. 7: the same loop with point-level and with per-pixel region labels."""
    s = settings(profile, overrides)
    runs = Runs(profile, dataset, s)
    jobs = []
    for sup in supervisions:
        for seed in _check_seeds(seeds):
            ch = {"n_regions": int(n_regions or s["n_regions"])}
            if cycles is not None:
                ch["cycles"] = int(cycles)
            cfg = al_config(dataset, split, s, heuristic=heuristic, seed=seed,
                            supervision=sup, **ch)
            jobs.append(({"split": split, "heuristic": heuristic, "n_regions": cfg.n_regions,
                          "supervision": sup, "seed": seed}, cfg))
    return _run_all(runs, jobs, data_root=data_root, results_dir=results_dir, device=device,
                    progress=progress)


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
        cfg = _full_config(dataset, split, runs.settings, seed)
        res = run_full(cfg, int(runs.settings["full_epochs"]), data_root=data_root,
                       results_dir=results_dir, device=device)
        runs.full.append(({"split": split, "seed": seed}, res))
    # the upper-bound check's end point: one seed (the first), a ceiling, not a curve
    first = _full_config(dataset, split, runs.settings, _check_seeds(seeds)[0])
    runs.ceiling.append(({"split": split, "seed": first.seed}, run_al(
        ceiling_config(first, runs.settings, data_root), data_root=data_root,
        results_dir=results_dir, device=device)))
    runs.seconds += time.perf_counter() - t0
    return runs


def _full_config(dataset: str, split: str, s: Mapping[str, Any], seed: int) -> ALConfig:
    """The run settings of the fully supervised baseline: the AL run's, with the baseline's
    early stopping (``full_patience``)."""
    return al_config(dataset, split, s, seed=seed, patience=s.get("full_patience"))


def ceiling_config(cfg: ALConfig, s: Mapping[str, Any], data_root: Any = None) -> ALConfig:
    """The upper-bound check's run: ``cfg`` with every region of every pool image labelled
    at the start (point labels on the whole pool: the end point of the AL curve), no
    selection cycle, trained like the fully supervised baseline (at most ``full_epochs``
    epochs over every image, early stopping after ``full_patience``)."""
    n = len(_data(cfg, data_root).train)
    return ALConfig.from_mapping({**cfg.to_dict(), "initial_images": n, "cycles": 0,
                                  "epochs": int(s["full_epochs"]), "epoch_items": None,
                                  "patience": s.get("full_patience")})


def baseline(runs: Runs, splits: Sequence[str], seed: int = 0, *, data_root: Any = None,
             results_dir: Any = None, device: str = "auto") -> Runs:
    """Add the fully supervised baseline (per-pixel masks, structure loss) of each split at
    ``seed`` to ``runs.full`` (cached: the headline chapter's runs of the same split and
    seed are these)."""
    t0 = time.perf_counter()
    for split in splits:
        if any(lab["split"] == split and lab["seed"] == seed for lab, _ in runs.full):
            continue
        cfg = _full_config(runs.dataset, split, runs.settings, seed)
        res = run_full(cfg, int(runs.settings["full_epochs"]), data_root=data_root,
                       results_dir=results_dir, device=device)
        runs.full.append(({"split": split, "seed": seed}, res))
    runs.seconds += time.perf_counter() - t0
    return runs


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

CURVE_COLUMNS = ["dataset", "split", "heuristic", "n_regions", "supervision", "seed", "cycle",
                 "n_labelled_regions", "seconds", "dice", "iou", "ppv", "sens", "spec",
                 "val_dice", "best_epoch", "n_selected_points"]


def curves_frame(items: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> pd.DataFrame:
    """One row per (run, cycle): labels, labelled regions, seconds and test scores."""
    rows = []
    for labels, res in items:
        for rec in res["records"]:
            rows.append({
                "dataset": res["config"]["dataset"], "split": labels["split"],
                "heuristic": labels["heuristic"], "n_regions": labels["n_regions"],
                "supervision": labels["supervision"], "seed": labels["seed"],
                "cycle": rec["cycle"], "n_labelled_regions": rec["n_labelled_regions"],
                "seconds": rec["seconds"],
                **{k: (np.nan if rec["test"][k] is None else rec["test"][k])
                   for k in ("dice", "iou", "ppv", "sens", "spec")},
                "val_dice": np.nan if rec["val_dice"] is None else rec["val_dice"],
                "best_epoch": rec["best_epoch"],
                "n_selected_points": sum(k == "point" for k in rec["selected_kinds"]),
            })
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` as CSV atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, frame.to_csv(index=False))
    return path


def _final(frame: pd.DataFrame) -> pd.DataFrame:
    """The last cycle of every run."""
    keys = ["split", "heuristic", "n_regions", "supervision", "seed"]
    last = frame.groupby(keys)["cycle"].transform("max")
    return frame[frame["cycle"] == last]


def _mean_std(values: pd.Series) -> str:
    v = values.dropna()
    if v.empty:
        return "n/a"
    return f"{v.mean():.3f} ± {v.std(ddof=0):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def fig5_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per split and heuristic: final Dice and specificity (mean ± std over seeds), the mean
    Dice over the cycles after the first (the curve's height) and the points labelled."""
    rows = []
    for (split, h), g in frame.groupby(["split", "heuristic"], sort=False):
        fin = _final(g)
        later = g[g["cycle"] > 0]
        rows.append({
            "split": split, "heuristic": h,
            "seeds": int(g["seed"].nunique()),
            "labelled regions (last)": int(fin["n_labelled_regions"].max()),
            "Dice (last cycle)": _mean_std(fin["dice"]),
            "Dice (mean over cycles >= 1)": _mean_std(later.groupby("seed")["dice"].mean())
            if not later.empty else "n/a",
            "specificity (last cycle)": _mean_std(fin["spec"]),
            "points picked": int(g["n_selected_points"].sum()),
        })
    return pd.DataFrame(rows)


def _curve_means(g: pd.DataFrame) -> pd.Series:
    """Per seed: mean Dice over the cycles after the first (cycle 0 is shared by both)."""
    later = g[g["cycle"] > 0]
    return (later if not later.empty else g).groupby("seed")["dice"].mean()


def fig5_verdict(frame: pd.DataFrame, split: str, better: str = "entropy",
                 baseline: str = "random") -> str:
    """Does ``better`` beat ``baseline`` on ``split`` (mean Dice over the cycles after the
    first, per seed)? "holds" when it is higher on average and for every seed, "not
    reproduced" when it is higher for no seed, "mixed" otherwise."""
    g = frame[frame["split"] == split]
    a, b = _curve_means(g[g["heuristic"] == better]), _curve_means(g[g["heuristic"] == baseline])
    common = sorted(set(a.index) & set(b.index))
    if not common:
        return f"{split}: no paired runs of {better} and {baseline}"
    diff = a[common] - b[common]
    wins = int((diff > 0).sum())
    d = float(diff.mean())
    text = (f"split {split}: {better} - {baseline} = {d:+.3f} mean Dice over cycles >= 1 "
            f"({wins}/{len(common)} seeds higher)")
    if d > 0 and wins == len(common):
        return f"holds, {text}"
    if wins == 0:
        return f"not reproduced, {text}"
    return f"mixed result, {text}"


def random_specificity_range(frame: pd.DataFrame) -> tuple[float, float]:
    """Lowest and highest last-cycle specificity of the random runs (P1 Sec. 5.1 states
    0.85-0.99 for random sampling)."""
    spec = _final(frame[frame["heuristic"] == "random"])["spec"]
    if spec.empty:
        raise ValueError("random_specificity_range: no random-selection run in the frame")
    return float(spec.min()), float(spec.max())


def fig5_scorecard(frame: pd.DataFrame, verdicts: Mapping[str, Verdict],
                   paper: Mapping[str, Any], shares: pd.DataFrame | None = None
                   ) -> dict[str, Any]:
    """The P1-F5 scorecard entry (``paper``, ``ours``, ``verdict``): entropy's last-cycle
    Dice per split, random's specificity range, the infected share of the selected regions
    per heuristic (with ``shares``), and the per-split three-way verdicts combined
    (:func:`covidlib.verdict.combine_verdicts`)."""
    lo, hi = paper["values"]["random_specificity_range"]
    dice = fig5_summary(frame).set_index(["split", "heuristic"])["Dice (last cycle)"]
    r_lo, r_hi = random_specificity_range(frame)
    ours: dict[str, Any] = {f"{split} entropy Dice": dice.loc[(split, "entropy")]
                            for split in verdicts}
    ours["random spec"] = f"{r_lo:.2f}-{r_hi:.2f}"
    if shares is not None and not shares.empty:
        for (split, h), g in shares.groupby(["split", "heuristic"], sort=False):
            ours[f"{split} {h} infected share"] = round(float(g["infected share"].mean()), 2)
    return {
        "paper": f"entropy beats random on Dice (A/B, mixed and sep); random spec {lo}-{hi}",
        "ours": ours,
        "verdict": combine_verdicts(verdicts).text,
    }


def fig6_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per K: initial images, labelling seconds and Dice at the last cycle."""
    rows = []
    for k, g in frame.groupby("n_regions"):
        fin = _final(g)
        first = g[g["cycle"] == 0]
        rows.append({
            "K (regions per image)": int(k),
            "initial labelled regions": int(first["n_labelled_regions"].iloc[0]),
            "labelling seconds (last)": float(fin["seconds"].mean()),
            "Dice (last cycle)": _mean_std(fin["dice"]),
            "dice_mean": float(fin["dice"].mean()),
        })
    return pd.DataFrame(rows)


def fig6_verdict(summary: pd.DataFrame) -> str:
    """P1: "bigger region sizes led to significantly worse performance": holds when the
    smallest K (biggest regions) has the lowest mean final Dice."""
    if len(summary) < 2:
        return "only one region count: no comparison"
    s = summary.sort_values("K (regions per image)")
    ks, d = s["K (regions per image)"].tolist(), s["dice_mean"].tolist()
    order = ", ".join(f"K={k}: {v:.3f}" for k, v in zip(ks, d, strict=True))
    if d[0] < min(d[1:]):
        mono = all(x <= y for x, y in itertools.pairwise(d))
        return (f"holds{' (Dice rises with K throughout)' if mono else ''}: the biggest "
                f"regions give the lowest Dice ({order})")
    return f"not reproduced: the biggest regions are not the worst ({order})"


def _dice_at_cost(g: pd.DataFrame, cost: float) -> float:
    """Mean over seeds of the Dice of the last cycle whose cost is <= ``cost``."""
    vals = []
    for _seed, r in g.groupby("seed"):
        r = r.sort_values("seconds")
        ok = r[r["seconds"] <= cost + 1e-9]
        if not ok.empty:
            vals.append(float(ok["dice"].iloc[-1]))
    return float(np.mean(vals)) if vals else float("nan")


def fig7_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per supervision: labelling seconds of the initial set and at the last cycle, Dice at
    the last cycle, and Dice at the largest cost both schemes reach."""
    both = frame.groupby("supervision")["seconds"].max()
    common = float(both.min()) if len(both) else float("nan")
    rows = []
    for sup, g in frame.groupby("supervision", sort=False):
        fin = _final(g)
        rows.append({
            "supervision": sup,
            "seconds (initial set)": float(g[g["cycle"] == 0]["seconds"].mean()),
            "seconds (last)": float(fin["seconds"].mean()),
            "labelled regions (last)": int(fin["n_labelled_regions"].max()),
            "Dice (last cycle)": _mean_std(fin["dice"]),
            f"Dice at <= {common:.0f} s": _dice_at_cost(g, common),
        })
    return pd.DataFrame(rows)


def fig7_verdict(frame: pd.DataFrame) -> str:
    """P1: point-level labels give a higher Dice than per-pixel labels for the same cost.
    Compared at the largest cost both schemes reach (Dice of each run's last cycle within
    it, mean over seeds)."""
    sups = set(frame["supervision"])
    if not {"point", "pixel"} <= sups:
        return "needs both point and pixel runs"
    common = float(frame.groupby("supervision")["seconds"].max().min())
    p = _dice_at_cost(frame[frame["supervision"] == "point"], common)
    q = _dice_at_cost(frame[frame["supervision"] == "pixel"], common)
    text = f"at <= {common:.0f} s: point {p:.3f} vs per-pixel {q:.3f} Dice"
    if not math.isnan(p) and not math.isnan(q):
        return ("holds: " if p > q else "not reproduced: ") + text
    # the costs do not overlap: point labels hold when, cheaper, they still score higher
    pt, px = frame[frame["supervision"] == "point"], frame[frame["supervision"] == "pixel"]
    p_cost, q_cost = float(pt["seconds"].max()), float(px["seconds"].min())
    if p_cost < q_cost:
        p, q = _dice_at_cost(pt, p_cost), _dice_at_cost(px, q_cost)
        text = (f"point {p:.3f} Dice at <= {p_cost:.0f} s vs per-pixel {q:.3f} at its "
                f"cheapest, {q_cost:.0f} s")
        if p >= q:
            return f"holds (cheaper and higher): {text}"
    return f"no comparison at equal cost: {text}"


def headline_table(runs: Runs, paper: Mapping[str, Any]) -> pd.DataFrame:
    """P1 Sec. 5.3 beside ours: full-supervision Dice, AL (entropy) Dice and cost at the last
    cycle, the two fractions; ours as mean ± std over seeds."""
    full = [r for _l, r in runs.full]
    frame = runs.curves
    fin = _final(frame)
    ent = fin[fin["heuristic"] == "entropy"]
    rnd = fin[fin["heuristic"] == "random"]
    full_dice = pd.Series([r["test"]["dice"] for r in full], dtype=float)
    effort = full[0]["full_effort_seconds"] if full else float("nan")
    v = paper.get("values", {})
    rows = [
        ("pool slices (fully labelled at 96 s each)", v.get("train_slices"),
         f"{full[0]['n_train']}" if full else "n/a"),
        ("full labelling effort (s)", v.get("full_effort_seconds"), f"{effort:.0f}"),
        ("fully supervised Dice", v.get("full_dice"), _mean_std(full_dice)),
        ("AL labelling cost (s)", v.get("al_seconds"), f"{ent['seconds'].mean():.0f}"),
        ("AL (entropy) Dice", v.get("al_dice"), _mean_std(ent["dice"])),
        ("AL (random) Dice", None, _mean_std(rnd["dice"])),
        ("fraction of the effort", v.get("effort_fraction"),
         f"{ent['seconds'].mean() / effort:.3f}" if full else "n/a"),
        ("fraction of the fully supervised Dice", v.get("dice_fraction"),
         f"{ent['dice'].mean() / full_dice.mean():.3f}" if full and full_dice.mean() > 0
         else "n/a"),
    ]
    out = pd.DataFrame(rows, columns=["quantity", "paper (P1 Sec. 5.3)", "ours"])
    out["paper (P1 Sec. 5.3)"] = [
        "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:g}"
        for x in out["paper (P1 Sec. 5.3)"]]
    return out


def fig6_scorecard(summary: pd.DataFrame, verdict: str, paper: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """The P1-F6 scorecard entry: mean last-cycle Dice per K (from :func:`fig6_summary`)."""
    return {"paper": paper["claims"][0],
            "ours": {f"K={int(k)}": round(float(d), 3) for k, d in
                     zip(summary["K (regions per image)"], summary["dice_mean"], strict=True)},
            "verdict": verdict}


def fig7_scorecard(summary: pd.DataFrame, verdict: str, paper: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """The P1-F7 scorecard entry: last-cycle Dice and labelling seconds per supervision
    (from :func:`fig7_summary`)."""
    ours = {f"{r['supervision']} Dice (last)": r["Dice (last cycle)"]
            for _, r in summary.iterrows()}
    ours |= {f"{r['supervision']} seconds (last)": round(r["seconds (last)"])
             for _, r in summary.iterrows()}
    return {"paper": paper["claims"][0], "ours": ours, "verdict": verdict}


def headline_scorecard(numbers: Mapping[str, float], values: Mapping[str, Any], verdict: str,
                       check: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The P1-headline scorecard entry: effort fraction, Dice fraction, AL and full Dice
    (ours from :func:`headline_numbers`, the paper's from its Sec. 5.3 values); with the
    upper-bound ``check`` (:func:`upper_bound_check`) also the every-region Dice."""
    keys = {"effort fraction": "effort_fraction", "Dice fraction": "dice_fraction",
            "AL Dice": "al_dice", "full Dice": "full_dice"}
    ours = {name: round(float(numbers[key]), 3) for name, key in keys.items()}
    if check is not None:
        ours["every-region point Dice"] = round(float(check["ceiling_dice"]), 3)
    return {"paper": {name: values[key] for name, key in keys.items()}, "ours": ours,
            "verdict": str(verdict)}


def headline_numbers(runs: Runs) -> dict[str, float]:
    """``effort_fraction``, ``dice_fraction`` (mean entropy-AL Dice / mean full Dice),
    ``al_dice``, ``full_dice``, ``al_seconds``, ``full_effort_seconds``."""
    fin = _final(runs.curves)
    ent = fin[fin["heuristic"] == "entropy"].set_index("seed")
    full = {lab["seed"]: r for lab, r in runs.full}
    seeds = sorted(set(ent.index) & set(full))
    if not seeds:
        raise ValueError("p1: headline needs entropy runs and full-supervision runs of a seed")
    effort = float(full[seeds[0]]["full_effort_seconds"])
    fd = np.array([full[s]["test"]["dice"] for s in seeds], dtype=float)
    ad = np.array([ent.loc[s, "dice"] for s in seeds], dtype=float)
    cost = float(np.mean([ent.loc[s, "seconds"] for s in seeds]))
    frac = float(ad.mean() / fd.mean()) if fd.mean() > 0 else float("nan")
    return {"effort_fraction": cost / effort, "dice_fraction": frac,
            "al_dice": float(ad.mean()), "full_dice": float(fd.mean()), "al_seconds": cost,
            "full_effort_seconds": effort}


def headline_verdict(runs: Runs, paper: Mapping[str, Any]) -> str:
    """Whether our AL run reaches P1's share of the fully supervised Dice (~90 %) and at what
    share of the full effort (P1: ~7 %)."""
    n = headline_numbers(runs)
    v = paper.get("values", {})
    target_d, target_e = float(v.get("dice_fraction", 0.9)), float(v.get("effort_fraction", 0.07))
    if math.isnan(n["dice_fraction"]):
        return "no comparison: the fully supervised network has Dice 0"
    text = (f"{n['dice_fraction']:.0%} of the fully supervised Dice with "
            f"{n['effort_fraction']:.0%} of the full labelling effort (P1: "
            f"{target_d:.0%} with {target_e:.0%})")
    if n["dice_fraction"] >= target_d - 0.05 and n["effort_fraction"] <= 2 * target_e:
        return f"holds: {text}"
    if n["dice_fraction"] >= target_d - 0.05:
        return f"Dice share reached at a larger effort share: {text}"
    return f"not reproduced: {text}"


def describe(s: Mapping[str, Any], data: ALData, paper_profile: Mapping[str, Any] | None = None
             ) -> pd.DataFrame:
    """The settings of this profile beside P1's (the ``paper`` profile)."""
    p = dict(paper_profile or PROFILES["paper"])
    rows = [
        ("network", f"{s['model']} {s['model_kwargs']}", f"{p['model']} {p['model_kwargs']}"),
        ("slice size (px)", s["size"], p["size"]),
        ("pool / val / test slices", f"{len(data.train)} / {len(data.val)} / {len(data.test)}",
         "all slices of the split"),
        ("regions per image K", s["n_regions"], p["n_regions"]),
        ("initial images (all regions labelled)", s["initial_images"], p["initial_images"]),
        ("regions labelled per cycle", s["per_cycle"], p["per_cycle"]),
        ("cycles", s["cycles"], p["cycles"]),
        ("epochs per cycle (best validation kept)", s["epochs"], p["epochs"]),
        ("images per epoch (at least)", s["epoch_items"] or "labelled images", "labelled images"),
        ("batch size / Adam lr", f"{s['batch_size']} / {s['lr']:g}",
         f"{p['batch_size']} / {p['lr']:g}"),
        ("MC-dropout draws I", s["n_samples"], "not stated (20 here)"),
        ("fully supervised baseline: epochs (early-stopping patience)",
         f"<= {s['full_epochs']} ({s.get('full_patience')})",
         f"<= {p['full_epochs']} (best validation epoch kept)"),
        ("region score", s["reduce"], "max (Model Training) or mean (Fig. 4)"),
        ("loss normalisation", s["loss_balance"], "Eq. 1 (labelled pixels)"),
        ("cost per point / tag", f"{POINT_SECONDS:g} s", "3 s [40]"),
        ("cost of a full slice", f"{FULL_SLICE_SECONDS:g} s", "96 s [36]"),
    ]
    return pd.DataFrame(rows, columns=["setting", "this profile", "P1"])


# --------------------------------------------------------------------------------------------
# Mechanism checks, the baseline's convergence and the three-way verdicts (issue 14)
# --------------------------------------------------------------------------------------------


def selection_shares(runs: Runs, data_root: Any = None) -> pd.DataFrame:
    """Per run and cycle: the regions selected after that cycle and the share of them that
    hold infection (:func:`covidlib.acquisition.infected_share` on the pool's masks). P1
    Sec. 5.1 explains entropy's win by this share."""
    rows = []
    for labels, res in runs.items:
        cfg = ALConfig.from_mapping(res["config"])
        data = _data(cfg, data_root)
        boxes = region_grid((cfg.size, cfg.size), cfg.n_regions)
        for rec in res["records"]:
            picks = [tuple(p) for p in rec["selected"]]
            if not picks:
                continue
            rows.append({"split": labels["split"], "heuristic": labels["heuristic"],
                         "seed": labels["seed"], "cycle": rec["cycle"],
                         "selected regions": len(picks),
                         "infected share": infected_share(data.masks, boxes, picks)})
    return pd.DataFrame(rows, columns=["split", "heuristic", "seed", "cycle",
                                       "selected regions", "infected share"])


def mechanism_summary(shares: pd.DataFrame, pool_share: Mapping[str, float] | None = None
                      ) -> pd.DataFrame:
    """Per split and heuristic: the mean infected share of the selected regions over cycles
    and seeds, and its range over the cycles; with ``pool_share`` (split -> share of all
    pool regions holding infection) the share random selection should approach."""
    rows = []
    for (split, h), g in shares.groupby(["split", "heuristic"], sort=False):
        per_cycle = g.groupby("cycle")["infected share"].mean()
        row = {"split": split, "heuristic": h,
               "infected share (mean)": round(float(g["infected share"].mean()), 3),
               "per cycle": ", ".join(f"{v:.2f}" for v in per_cycle)}
        if pool_share is not None:
            row["share in the whole pool"] = round(float(pool_share[split]), 3)
        rows.append(row)
    return pd.DataFrame(rows)


def pool_infected_share(runs: Runs, split: str, data_root: Any = None) -> float:
    """The share of all pool regions (of ``split``'s first run) that hold infection."""
    res = runs.get(split=split)[0]
    cfg = ALConfig.from_mapping(res["config"])
    data = _data(cfg, data_root)
    boxes = region_grid((cfg.size, cfg.size), cfg.n_regions)
    picks = [(i, k) for i in range(len(data.masks)) for k in range(len(boxes))]
    return infected_share(data.masks, boxes, picks)


def mechanism_present(shares: pd.DataFrame, split: str, better: str = "entropy",
                      baseline: str = "random") -> bool | None:
    """P1's mechanism on ``split``: ``better`` selects a larger share of infected regions
    than ``baseline`` (mean over cycles and seeds); None without both heuristics."""
    g = shares[shares["split"] == split]
    a = g[g["heuristic"] == better]["infected share"]
    b = g[g["heuristic"] == baseline]["infected share"]
    if a.empty or b.empty:
        return None
    return bool(a.mean() > b.mean())


def baseline_curves(runs: Runs) -> pd.DataFrame:
    """The fully supervised baselines' training curves: split, seed, epoch, train loss,
    validation Dice."""
    rows = [{"split": lab["split"], "seed": lab["seed"], **h}
            for lab, r in runs.full for h in r.get("history", [])]
    return pd.DataFrame(rows, columns=["split", "seed", "epoch", "train_loss", "val_dice"])


def baseline_convergence(runs: Runs, split: str, window: int = 3, tol: float = 0.01
                         ) -> Convergence:
    """:func:`covidlib.verdict.baseline_converged` on the mean validation curve (over seeds)
    of ``split``'s fully supervised baseline."""
    c = baseline_curves(runs)
    c = c[c["split"] == split]
    if c.empty:
        raise ValueError(f"p1: no fully supervised baseline of split {split!r} (run baseline())")
    curve = c.groupby("epoch")["val_dice"].mean().sort_index()
    return baseline_converged(curve.tolist(), window=window, tol=tol)


def upper_bound_check(al_dice: float, ceiling_dice: float, full_dice: float,
                      share: float = 0.9) -> dict[str, float | bool]:
    """The upper-bound check (issue 14): how far the AL run is from its own end point (every
    region labelled with points, ``ceiling_dice``), and how far that end point is from the
    fully supervised Dice (``full_dice``). ``ceiling_reaches_full``: the point labels on the
    whole pool reach ``share`` of the fully supervised Dice (P1's headline ratio, 0.9); when
    they do not, no selection rule can reach P1's headline."""
    def ratio(a: float, b: float) -> float:
        return float(a) / float(b) if b > 0 else float("nan")

    c_f = ratio(ceiling_dice, full_dice)
    return {"al_dice": float(al_dice), "ceiling_dice": float(ceiling_dice),
            "full_dice": float(full_dice), "al_of_ceiling": ratio(al_dice, ceiling_dice),
            "ceiling_of_full": c_f, "al_of_full": ratio(al_dice, full_dice),
            "ceiling_reaches_full": bool(c_f >= share) if math.isfinite(c_f) else False}


def upper_bound_table(runs: Runs, split: str) -> tuple[pd.DataFrame, dict[str, float | bool]]:
    """:func:`upper_bound_check` of ``split`` (means over seeds: entropy AL at its last cycle,
    the every-region run, the fully supervised baseline) and a table of it."""
    fin = _final(runs.curves)
    al = fin[(fin["split"] == split) & (fin["heuristic"] == "entropy")]["dice"]
    ceil = [r["records"][-1]["test"]["dice"] or 0.0 for lab, r in runs.ceiling
            if lab["split"] == split]
    full = [r["test"]["dice"] or 0.0 for lab, r in runs.full if lab["split"] == split]
    if al.empty or not ceil or not full:
        raise ValueError(f"p1: the upper-bound check of {split!r} needs entropy, ceiling and "
                         "fully supervised runs (upper_bound())")
    chk = upper_bound_check(float(al.mean()), float(np.mean(ceil)), float(np.mean(full)))
    n_reg = [r["records"][-1]["n_labelled_regions"] for lab, r in runs.ceiling
             if lab["split"] == split]
    al_reg = fin[(fin["split"] == split) & (fin["heuristic"] == "entropy")][
        "n_labelled_regions"].mean()
    table = pd.DataFrame([
        ("AL (entropy), last cycle", f"{al_reg:.0f}", round(chk["al_dice"], 3)),
        ("every region labelled with points (AL end point)", f"{np.mean(n_reg):.0f}",
         round(chk["ceiling_dice"], 3)),
        ("fully supervised (per-pixel masks)", "all pixels", round(chk["full_dice"], 3)),
    ], columns=["run", "labelled regions", "test Dice"])
    return table, chk


MECHANISMS = {
    "P1-F5": "P1's mechanism (entropy selects more regions with infection than random)",
    "P1-headline": "the upper bound (point labels on every region reach 90 % of the fully "
                   "supervised Dice)",
}


def chapter_verdict(runs: Runs, split: str, comparison: str,
                    mechanism_present: bool | None = None, mechanism: str = "mechanism"
                    ) -> Verdict:
    """The three-way verdict (:func:`covidlib.verdict.three_way_verdict`) of one claim on
    ``split``: it holds when ``comparison`` (the sentence of :func:`fig5_verdict`,
    :func:`fig6_verdict`, :func:`fig7_verdict` or :func:`headline_verdict`) starts with
    "holds"; the baseline's convergence is :func:`baseline_convergence` of ``split``."""
    if comparison.startswith("no comparison"):
        return Verdict(INCONCLUSIVE, f"{INCONCLUSIVE}, no comparison possible: {comparison}")
    return three_way_verdict(comparison.startswith("holds"), baseline_convergence(runs, split),
                             mechanism_present, comparison, mechanism)


def fig5_verdicts(runs: Runs, shares: pd.DataFrame, splits: Sequence[str]
                  ) -> dict[str, Verdict]:
    """Per split: :func:`chapter_verdict` of :func:`fig5_verdict` with P1's mechanism
    (:func:`mechanism_present` on the selection ``shares``)."""
    curves = runs.curves
    return {split: chapter_verdict(runs, split, fig5_verdict(curves, split),
                                   mechanism_present(shares, split), MECHANISMS["P1-F5"])
            for split in splits}


def figure_baseline(runs: Runs) -> Figure:
    """The fully supervised baseline's training loss and validation Dice per epoch (one line
    per split and seed); the dot marks the kept (best validation) epoch."""
    c = baseline_curves(runs)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.5, 3.3))
    for (split, seed), g in c.groupby(["split", "seed"], sort=False):
        lab = f"{split}, seed {seed}"
        a.plot(g["epoch"], g["train_loss"], "-", lw=1.5, label=lab)
        line = b.plot(g["epoch"], g["val_dice"], "-", lw=1.5, label=lab)[0]
        if g["val_dice"].notna().any():
            best = g.loc[g["val_dice"].idxmax()]
            b.plot([best["epoch"]], [best["val_dice"]], "o", color=line.get_color())
    a.set(xlabel="epoch", ylabel="training loss (structure loss)", title="training")
    b.set(xlabel="epoch", ylabel="validation Dice", title="validation")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    b.legend(fontsize=8)
    fig.suptitle(f"fully supervised baseline ({runs.dataset})", fontsize=11)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _band(ax: Any, g: pd.DataFrame, x: str, y: str, colour: str, label: str) -> None:
    stats = g.groupby(x)[y].agg(["mean", "min", "max"]).sort_index()
    ax.plot(stats.index, stats["mean"], "-o", color=colour, label=label, lw=2, ms=4)
    if g["seed"].nunique() > 1:
        ax.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.2,
                        lw=0)


def figure5(frame: pd.DataFrame, metrics: Sequence[str] = ("dice", "spec"),
            title: str = "") -> Figure:
    """P1 Fig. 5: Dice and specificity (rows) against labelled regions, one column per split;
    line = mean over seeds, band = lowest to highest seed."""
    splits = list(dict.fromkeys(frame["split"]))
    names = {"dice": "Dice", "spec": "specificity", "sens": "sensitivity"}
    fig, axes = plt.subplots(len(metrics), len(splits), figsize=(5.2 * len(splits),
                             3.4 * len(metrics)), squeeze=False)
    for j, split in enumerate(splits):
        g = frame[frame["split"] == split]
        for i, m in enumerate(metrics):
            ax = axes[i, j]
            for h in dict.fromkeys(g["heuristic"]):
                _band(ax, g[g["heuristic"] == h], "n_labelled_regions", m, _COLOURS.get(h, "k"),
                      HEURISTIC_LABELS.get(h, h))
            ax.set_title(f"{frame['dataset'].iloc[0]} {split}", fontsize=11)
            ax.set_xlabel("labelled regions")
            ax.set_ylabel(names.get(m, m))
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=9)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def figure6(summary: pd.DataFrame, frame: pd.DataFrame) -> Figure:
    """P1 Fig. 6: Dice at the last cycle per K (bars: mean over seeds, dots: seeds); under
    each bar the size of the initial set."""
    fin = _final(frame)
    s = summary.sort_values("K (regions per image)")
    ks = s["K (regions per image)"].tolist()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    means = [float(fin[fin["n_regions"] == k]["dice"].mean()) for k in ks]
    xs = np.arange(len(ks))
    ax.bar(xs, means, color="tab:blue", alpha=0.7, width=0.6)
    for x, k in zip(xs, ks, strict=True):
        d = fin[fin["n_regions"] == k]["dice"].to_numpy()
        ax.plot(np.full(d.shape, x), d, "ko", ms=4)
    labels = [f"K = {k}\n{n // k} initial image{'s' if n // k > 1 else ''}"
              for k, n in zip(ks, s["initial labelled regions"], strict=True)]
    ax.set_xticks(xs, labels)
    ax.set_ylabel("test Dice (last cycle)")
    ax.set_xlabel("regions per image (more = smaller regions)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def figure7(frame: pd.DataFrame) -> Figure:
    """P1 Fig. 7: Dice against labelling cost (seconds), point-level vs per-pixel labels;
    thin lines = seeds, thick = mean (at each cycle)."""
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    for sup, g in frame.groupby("supervision", sort=False):
        c = _COLOURS.get(sup, "k")
        for _seed, r in g.groupby("seed"):
            r = r.sort_values("cycle")
            ax.plot(r["seconds"], r["dice"], "-", color=c, alpha=0.35, lw=1)
        m = g.groupby("cycle")[["seconds", "dice"]].mean()
        ax.plot(m["seconds"], m["dice"], "-o", color=c, lw=2, ms=4,
                label={"point": "point-level", "pixel": "per-pixel"}.get(sup, sup))
    ax.set_xlabel("labelling cost (s): 3 s per point or tag, 3 s per polygon vertex")
    ax.set_ylabel("test Dice")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def figure2(runs: Runs, split: str, seed: int | None = None, data_root: Any = None) -> Figure:
    """P1 Fig. 2: test slices; columns: ground truth (red) with the oracle's point labels on
    the K grid (crosses), then the predictions (cyan, truth outlined in red) of the fully
    supervised network and of the random and entropy AL runs at their last cycle, with each
    slice's Dice (radiological view)."""
    seed = runs.get(split=split)[0]["config"]["seed"] if seed is None else seed
    ent = runs.get(split=split, heuristic="entropy", seed=seed)
    rnd = runs.get(split=split, heuristic="random", seed=seed)
    full = [r for lab, r in runs.full if lab["split"] == split and lab["seed"] == seed]
    if not ent:
        raise ValueError(f"p1: no entropy run of split {split!r} and seed {seed}")
    cfg = ALConfig.from_mapping(ent[0]["config"])
    data = _data(cfg, data_root)
    fig_info = ent[0]["figure"]
    idx, size = fig_info["indices"], fig_info["size"]
    cols = [("ground truth + point labels", None)]
    if full:
        cols.append((f"fully supervised ({full[0]['full_effort_seconds']:.0f} s)", full[0]))
    if rnd:
        cols.append((f"AL random ({rnd[0]['label_seconds']:.0f} s)", rnd[0]))
    cols.append((f"AL entropy ({ent[0]['label_seconds']:.0f} s)", ent[0]))
    fig, axes = plt.subplots(len(idx), len(cols), figsize=(2.9 * len(cols), 2.9 * len(idx)),
                             squeeze=False)
    view = SimpleNamespace(intensity=data.intensity)
    boxes = region_grid((size, size), cfg.n_regions)
    rng = np.random.default_rng(0)
    for r, i in enumerate(idx):
        gray = display_view(view, data.test_gray[i])
        truth = display_view(view, data.test_masks[i].astype(bool))
        for c, (name, res) in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(gray, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if res is None:
                shown = truth
                pts = [region_label(data.test_masks[i], b, rng, [1]) for b in boxes]
                yx = np.array([(p.point.y, p.point.x) for p in pts if p.point is not None])
                if yx.size:
                    yx = yx.reshape(-1, 2)
                    if data.intensity == "hu":
                        yx = (size - 1) - yx
                    ax.scatter(yx[:, 1], yx[:, 0], s=14, c="red", marker="x", lw=1)
                dice = None
            else:
                j = res["figure"]["indices"].index(i)
                pred = decode_mask(res["figure"]["pred"][j], (size, size))
                shown = display_view(view, pred)
                t = data.test_masks[i].astype(bool)
                den = pred.sum() + t.sum()
                dice = 1.0 if den == 0 else 2 * (pred & t).sum() / den
            colour = "red" if res is None else "cyan"
            ax.imshow(np.ma.masked_equal(shown.astype(np.uint8), 0),
                      cmap=ListedColormap([colour]), alpha=0.45, vmin=0, vmax=1,
                      interpolation="nearest")
            if res is not None and truth.any():
                ax.contour(truth.astype(float), levels=[0.5], colors="red", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if dice is not None:
                ax.set_xlabel(f"Dice {dice:.2f}", fontsize=9)
            ref = data.test.refs[i]
            if c == 0:
                ax.set_ylabel(f"{ref[0]} z={ref[1]}", fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Paper values
# --------------------------------------------------------------------------------------------


def effort_arithmetic(initial_images: int, n_regions: int, cycles: int, per_cycle: int,
                      n_slices: int) -> dict[str, float]:
    """P1 Sec. 5.3's arithmetic: ``initial x 3 x K + cycles x per_cycle x 3`` seconds against
    ``n_slices x 96`` s (P1: 5 x 3 x 64 + 100 x 5 x 3 = 2460 s of 35328 s)."""
    al = POINT_SECONDS * (initial_images * n_regions + cycles * per_cycle)
    full = full_effort_seconds(n_slices)
    return {"al_seconds": al, "full_effort_seconds": full, "fraction": al / full}


def effort_table(values: Mapping[str, Any], settings: Mapping[str, Any], n_regions: int,
                 cycles: int, n_train: int) -> pd.DataFrame:
    """:func:`effort_arithmetic` for P1's schedule on P1's pool (``values``: the paper's
    Sec. 5.3 numbers), ours on our pool of ``n_train`` slices, and ours on P1's pool."""
    v, s = values, settings
    ours = (s["initial_images"], n_regions, cycles, s["per_cycle"])
    return pd.DataFrame({
        "P1 schedule, P1 pool": effort_arithmetic(v["initial_images"], v["regions_per_image"],
                                                  v["cycles"], v["regions_per_cycle"],
                                                  v["train_slices"]),
        "our schedule, our pool": effort_arithmetic(*ours, n_train),
        "our schedule, P1's pool": effort_arithmetic(*ours, v["train_slices"]),
    }).T.round(4)


def whole_image_costs(data: ALData, n_regions: int = 64) -> pd.DataFrame:
    """Seconds to label the pool's slices by each scheme (P1 Sec. 5.3): every region with a
    tag or a point (K x 3 s), every region per pixel (3 s per tag, 3 s per polygon vertex
    inside each region), the whole slice per pixel as one polygon drawing (3 s per vertex, 3 s
    for a clean slice) and P1's 96 s per slice; mean and total over the pool."""
    from covidlib.data.oracle import full_image_cost

    boxes = region_grid(tuple(data.masks.shape[1:]), n_regions)
    cols = {
        f"points and tags, K = {n_regions}": [full_image_cost(m, "point", boxes=boxes)
                                              for m in data.masks],
        f"per-pixel by region, K = {n_regions}": [full_image_cost(m, "pixel", boxes=boxes)
                                                  for m in data.masks],
        "per-pixel, whole slice": [full_image_cost(m, "pixel") for m in data.masks],
        "P1's full slice (96 s)": [FULL_SLICE_SECONDS] * len(data.masks),
    }
    rows = [{"scheme": k, "seconds per slice (mean)": float(np.mean(v)),
             "seconds for the pool": float(np.sum(v))} for k, v in cols.items()]
    return pd.DataFrame(rows)


def fig5_paper_table(paper: Mapping[str, Any]) -> pd.DataFrame:
    """The Dice-axis ranges of P1 Fig. 5's panels (read off the figure, not data points)."""
    ax = paper.get("axes_read_off_figure", {})
    rows = [{"P1 panel": name, "Dice axis from": v["dice_axis"][0],
             "Dice axis to": v["dice_axis"][1], "x axis": f"{ax['x']['label']} "
             f"{ax['x']['range'][0]}-{ax['x']['range'][1]}"}
            for name, v in ax.get("panels", {}).items()]
    return pd.DataFrame(rows)
