"""P3 (Rahimi et al.): choosing whole CT volumes to label by MC-dropout variance.

Profiles, the volume split, the two tasks (the heart, as in P3 Fig. 2, and COVID-19
infection), the runner over strategies and seeds, and the figures and tables of the chapter
``notebooks/p3_volume_al.ipynb``. The algorithm itself is :mod:`covidlib.volume_al`.

Reading of P3 used here (Sec. III): 50 LCTSC volumes, 22 train / 22 test / 6 validation; 11 of
the 22 labelled at the start, 5 added per iteration by the summed MC-dropout variance (T = 5,
p = 0.5), 24 training epochs per run, C = 6 classes (background + spinal cord, right lung,
left lung, heart, esophagus), Dice of the heart reported. Labelled sets 11, 16, 21 and 22 give
the "4 iterations" of Fig. 2 and 21 / 50 = 42 % of the data. The network is fine-tuned on the
grown set (P3 Sec. I, "the training model is fine-tuned using the augmented training set"),
which is how two strategies can still differ once the whole pool is labelled.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from tqdm.auto import tqdm

from covidlib.cache import ResultCache, atomic_write_text
from covidlib.data.api import Dataset
from covidlib.data.types import Case
from covidlib.engine import resolve_device
from covidlib.models import UNet3D
from covidlib.report import paper_values
from covidlib.report.figures import display_view
from covidlib.volume_al import (
    STRATEGIES,
    WEIGHTS_NAME,
    Volume,
    cached_round,
    prepare_volume,
    resample_image,
    round_weights,
    run_volume_al,
)

__all__ = [
    "AAPM_ORGANS",
    "PROFILES",
    "TASKS",
    "P3Results",
    "contour_figure",
    "curves_frame",
    "describe",
    "experiment_config",
    "figure2",
    "initial_set",
    "make_model",
    "paper_comparison",
    "plot_dice_curves",
    "prepare_task",
    "run",
    "scorecard_entries",
    "selection_table",
    "settings",
    "split_volumes",
    "task_spec",
    "verdict",
    "write_curves",
]

#: The five AAPM 2017 organs P3 segments, in its order (P3 Sec. III); C = 6 with background.
AAPM_ORGANS: tuple[str, ...] = ("spinal cord", "right lung", "left lung", "heart", "esophagus")

TASKS: tuple[str, ...] = ("heart", "infection")
"""``heart``: P3's task (organ masks; Dice of the heart); ``infection``: the same procedure on
the binary COVID-19 infection mask (any infection label)."""

_COMMON: dict[str, Any] = {
    "window": [-1000.0, 400.0],  # HU -> [0, 1] (lung window, covidlib.data.preprocess)
    "dropout": 0.5,  # P3 Sec. III: p = 0.5
    "n_samples": 5,  # P3 Sec. III: T = 5
    "split_seed": 0,  # which volumes are test / val / pool (fixed across training seeds)
}

PROFILES: dict[str, dict[str, Any]] = {
    # Minutes on 2 CPU cores: a 16x32x32 grid (about 17 mm x 12.5 mm voxels on the phantom),
    # heart-vs-rest (C = 2), a small U-Net, whole volumes, fine-tuning between rounds.
    "cpu": {
        **_COMMON,
        "loss": "dice_ce",
        "grid": [16, 32, 32],
        "organs": ["heart"],
        "base_width": 8,
        "depth": 2,
        "lr": 3e-3,
        "batch_size": 2,
        "patch": None,
        "patches_per_volume": 1,
        "epochs": 24,
        "warm_start": True,
        "warm_epochs": 6,
        "test": 4,
        "val": 2,
        "initial": 7,
        "per_iteration": 3,
        "iterations": 2,
        "full_reference": False,
    },
    # One H100: the phantom's native 48x160x160 grid, P3's C = 6 and 24 epochs, the 3D U-Net
    # of Cicek et al. (32 channels, 3 poolings), 48x96x96 patches (P4's 96^3 capped at the
    # 48 slices), batch 4 (P4 Sec. 4), 4 patches per volume per epoch.
    "gpu": {
        **_COMMON,
        "loss": "dice_ce",
        "grid": [48, 160, 160],
        "organs": list(AAPM_ORGANS),
        "base_width": 32,
        "depth": 3,
        "lr": 1e-3,
        "batch_size": 4,
        "patch": [48, 96, 96],
        "patches_per_volume": 4,
        "epochs": 24,
        "warm_start": True,
        "warm_epochs": 24,
        "test": 4,
        "val": 2,
        "initial": 7,
        "per_iteration": 3,
        "iterations": 3,
        "full_reference": True,
    },
    # P3's own settings (Sec. III): C = 6, T = 5, p = 0.5, 24 epochs per run, split as
    # fractions that give exactly 22 test / 6 val / 22 pool, 11 initial, 5 per iteration on
    # P3's 50 volumes (on the 20-volume phantom: 9 / 2 / 9, 5 initial, 2 per iteration).
    "paper": {
        **_COMMON,
        "loss": "dice_ce",
        "grid": [48, 160, 160],
        "organs": list(AAPM_ORGANS),
        "base_width": 32,
        "depth": 3,
        "lr": 1e-3,
        "batch_size": 4,
        "patch": [48, 96, 96],
        "patches_per_volume": 8,
        "epochs": 24,
        "warm_start": True,
        "warm_epochs": 24,
        "test": 0.44,
        "val": 0.12,
        "initial": 0.5,
        "per_iteration": 5 / 22,
        "iterations": 3,
        "full_reference": True,
    },
}

_KIND = "p3_volume_al"
_STRATEGY_LABELS = {"variance": "MC-dropout variance (active)", "random": "random"}
_COLOURS = {"variance": "tab:blue", "random": "tab:orange"}


# --------------------------------------------------------------------------------------------
# Settings, tasks, split
# --------------------------------------------------------------------------------------------


def settings(profile: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The profile's settings with ``overrides`` merged over them (a deep copy).

    Unknown profile or override key -> ``ValueError`` naming it.
    """
    if profile not in PROFILES:
        raise ValueError(f"p3: unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    out = copy.deepcopy(PROFILES[profile])
    unknown = sorted(set(overrides or {}) - set(out))
    if unknown:
        raise ValueError(f"p3: unknown override key(s) {unknown}; known: {sorted(out)}")
    out.update(copy.deepcopy(dict(overrides or {})))
    return out


def _count(value: float | int, n: int, name: str) -> int:
    """An int is a count; a float in (0, 1) a fraction of ``n`` (rounded half up, >= 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"p3: {name}={value!r} must be a count or a fraction")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"p3: {name}={value} must be >= 1")
        return value
    if not 0 < value < 1:
        raise ValueError(f"p3: {name}={value} must be a fraction in (0, 1) or an integer count")
    return max(1, math.floor(value * n + 0.5))


def split_volumes(case_ids: Sequence[str], s: Mapping[str, Any]) -> dict[str, list[str]]:
    """``pool`` / ``val`` / ``test`` ids, drawn at random (P3: "50 random images") with
    ``split_seed`` from the naturally sorted ids; ``test`` and ``val`` are counts or fractions
    of all volumes, the pool is the rest."""
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("p3: duplicate case ids")
    n = len(ids)
    n_test, n_val = _count(s["test"], n, "test"), _count(s["val"], n, "val")
    n_pool = n - n_test - n_val
    n_init = _count(s["initial"], n_pool, "initial") if n_pool > 0 else 0
    if n_pool < 2 or n_init >= n_pool:
        raise ValueError(
            f"p3: {n} volumes leave a pool of {n_pool} after test={n_test} and val={n_val}; "
            f"it must exceed initial={s['initial']!r} (P3 needs unlabelled volumes to choose from)"
        )
    perm = np.random.default_rng(int(s["split_seed"])).permutation(n)
    chosen = [ids[i] for i in perm]
    return {
        "test": sorted(chosen[:n_test]),
        "val": sorted(chosen[n_test:n_test + n_val]),
        "pool": sorted(chosen[n_test + n_val:]),
    }


def initial_set(pool: Sequence[str], s: Mapping[str, Any], seed: int) -> list[str]:
    """The first labelled volumes: ``initial`` drawn at random from the pool for ``seed``
    (P3: "11 randomly selected images")."""
    n = _count(s["initial"], len(pool), "initial")
    rng = np.random.default_rng([int(seed), 11])
    pool = sorted(pool)
    return sorted(pool[i] for i in rng.choice(len(pool), size=n, replace=False))


def task_spec(task: str, ds: Dataset, s: Mapping[str, Any]) -> dict[str, Any]:
    """Label source, class mapping, class names and the scored (target) class of ``task``."""
    if task == "heart":
        organ_map = ds.manifest.organ_map
        if not organ_map:
            raise ValueError(
                f"dataset {ds.name!r}: has no organ masks (manifest organ_map is empty); the "
                "heart task needs them (use the synthetic phantom or LCTSC)")
        by_name = {v: k for k, v in organ_map.items()}
        organs = list(s["organs"])
        unknown = [o for o in organs if o not in by_name]
        if unknown:
            raise ValueError(f"p3: organs {unknown} are not in {ds.name!r}'s organ_map "
                             f"({sorted(by_name)})")
        if "heart" not in organs:
            raise ValueError("p3: the heart task needs 'heart' among the organs setting")
        return {
            "source": "organs",
            "classes": {i + 1: [by_name[o]] for i, o in enumerate(organs)},
            "class_names": ["background", *organs],
            "target": organs.index("heart") + 1,
        }
    if task == "infection":
        return {
            "source": "infection",
            "classes": {1: list(ds.manifest.infection_labels)},
            "class_names": ["background", "infection"],
            "target": 1,
        }
    raise ValueError(f"p3: unknown task {task!r}; choose from {TASKS}")


def prepare_task(ds: Dataset, task: str, s: Mapping[str, Any],
                 images: Mapping[str, torch.Tensor] | None = None) -> dict[str, Volume]:
    """Every labelled case of ``ds`` windowed and resampled to ``s["grid"]`` for ``task``
    (``images``: already resampled images by case id, shared between tasks)."""
    spec = task_spec(task, ds, s)
    return {
        c.case_id: prepare_volume(c, s["grid"], source=spec["source"], classes=spec["classes"],
                                  window=tuple(s["window"]),
                                  image=None if images is None else images[c.case_id])
        for c in ds.cases()
    }


def make_model(s: Mapping[str, Any], n_classes: int) -> UNet3D:
    """P3's MC-dropout 3D U-Net at the profile's width and depth."""
    return UNet3D(1, n_classes, base_width=int(s["base_width"]), depth=int(s["depth"]),
                  dropout=float(s["dropout"]))


def experiment_config(dataset: str, task: str, s: Mapping[str, Any], spec: Mapping[str, Any]
                      ) -> dict[str, Any]:
    """The identity of one task's experiment (everything that changes its numbers)."""
    return {
        "paper": "P3",
        "dataset": dataset,
        "task": task,
        "classes": {str(k): v for k, v in spec["classes"].items()},
        "n_classes": len(spec["class_names"]),
        "target_class": spec["target"],
        "model": {"name": "unet3d_p3", "base_width": s["base_width"], "depth": s["depth"],
                  "dropout": s["dropout"]},
        **{k: s[k] for k in ("loss", "grid", "window", "lr", "batch_size", "patch",
                             "patches_per_volume", "epochs")},
    }


def describe(ds: Dataset, s: Mapping[str, Any], seeds: Sequence[int]) -> pd.DataFrame:
    """The chapter's setup beside P3's (Sec. III): split, schedule, model and MC sampling."""
    ids = [c.case_id for c in ds.cases()]
    sp = split_volumes(ids, s)
    n_pool = len(sp["pool"])
    k = _count(s["per_iteration"], n_pool, "per_iteration")
    n_init = _count(s["initial"], n_pool, "initial")
    sizes = sorted({min(n_init + i * k, n_pool) for i in range(int(s["iterations"]) + 1)})
    ref = _paper_settings()
    rows = [
        ("volumes (test / val / pool)",
         f"{ref['test']} / {ref['val']} / {ref['train']}",
         f"{len(sp['test'])} / {len(sp['val'])} / {n_pool}"),
        ("labelled at the start; added per iteration",
         f"{ref['initial_labelled']}; {ref['per_iteration']}", f"{n_init}; {k}"),
        ("labelled volumes per iteration", "11, 16, 21, 22 (our reading)",
         ", ".join(str(x) for x in sizes)),
        ("classes C (used in Eq. 1)", f"{ref['classes_C']}",
         f"{len(task_spec('heart', ds, s)['class_names']) if ds.manifest.organ_map else '-'}"
         " (heart task), 2 (infection task)"),
        ("MC passes T; dropout p", f"{ref['mc_passes_T']}; {ref['dropout_p']}",
         f"{s['n_samples']}; {s['dropout']}"),
        ("epochs per run", f"{ref['epochs_per_run']}",
         f"{s['epochs']} first, then {s['warm_epochs']} (fine-tuning)" if s["warm_start"]
         else f"{s['epochs']} (retrained from scratch)"),
        ("network", str(ref["model"]),
         f"3D U-Net, {s['base_width']} channels, {s['depth']} poolings, dropout in the decoder"),
        ("input", "LCTSC CT (about 1 mm in-plane)",
         f"{'x'.join(str(g) for g in s['grid'])} grid, HU window {s['window']} -> [0, 1]"
         + (f", {'x'.join(str(p) for p in s['patch'])} patches" if s["patch"] else
            ", whole volumes")),
        ("seeds", "not stated", ", ".join(str(x) for x in seeds)),
    ]
    return pd.DataFrame(rows, columns=["setting", "P3", "ours"])


def _paper_settings() -> dict[str, Any]:
    return paper_values.artifact("P3-F2")["settings"]


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass
class P3Results:
    """Everything the chapter shows: raw records, the prepared volumes and the setup."""

    settings: dict[str, Any]
    dataset: Dataset
    split: dict[str, list[str]]
    seeds: list[int]
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = field(default_factory=dict)
    reference: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    volumes: dict[str, dict[str, Volume]] = field(default_factory=dict)
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoint_root: Path = Path(".")

    @property
    def curves(self) -> pd.DataFrame:
        return curves_frame(self)


def run(
    ds: Dataset,
    s: Mapping[str, Any],
    *,
    tasks: Sequence[str] = TASKS,
    seeds: Sequence[int] = (0, 1),
    strategies: Sequence[str] = STRATEGIES,
    results_dir: str | Path = "../results",
    device: str = "auto",
    progress: bool = True,
) -> P3Results:
    """Run P3's loop for every task, strategy and seed (cached; resumes where it stopped).

    Results go to ``results_dir/p3_volume_al`` (one JSON per task, strategy, seed) and
    ``results_dir/p3_round`` / ``p3_scores``; weights to ``results_dir/checkpoints/p3``.
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"p3: unknown task(s) {unknown}; choose from {TASKS}")
    bad = [x for x in strategies if x not in STRATEGIES]
    if bad:
        raise ValueError(f"p3: unknown strategy(ies) {bad}; choose from {STRATEGIES}")
    if not seeds:
        raise ValueError("p3: seeds is empty")
    dev = str(resolve_device(device))
    cache = ResultCache(results_dir)
    split = split_volumes([c.case_id for c in ds.cases()], s)
    res = P3Results(dict(s), ds, split, [int(x) for x in seeds],
                    checkpoint_root=Path(results_dir) / "checkpoints" / "p3")
    jobs = [(t, st, int(sd)) for t in tasks for sd in seeds for st in strategies]
    bar = tqdm(total=len(jobs) + (len(tasks) * len(seeds) if s["full_reference"] else 0),
               desc="P3 runs", disable=not progress)
    images = {c.case_id: resample_image(c, s["grid"], tuple(s["window"])) for c in ds.cases()}
    for task in tasks:
        spec = task_spec(task, ds, s)
        res.specs[task] = spec
        res.volumes[task] = prepare_task(ds, task, s, images)
        cfg = experiment_config(ds.name, task, s, spec)
        n_classes = cfg["n_classes"]
        for seed in seeds:
            init = initial_set(split["pool"], s, seed)
            k = _count(s["per_iteration"], len(split["pool"]), "per_iteration")
            for strategy in strategies:
                run_cfg = {**cfg, "strategy": strategy, "seed": int(seed), "initial": init,
                           "per_iteration": k, "iterations": int(s["iterations"]),
                           "n_samples": int(s["n_samples"]), "split": split,
                           "warm_start": bool(s["warm_start"]),
                           "warm_epochs": s["warm_epochs"] if s["warm_start"] else None}
                records = cache.get(_KIND, run_cfg)
                if records is None or not _weights_present(res.checkpoint_root, records):
                    records = run_volume_al(
                        res.volumes[task], split, init, strategy=strategy,
                        n_iterations=int(s["iterations"]), per_iteration=k,
                        make_model=lambda n_classes=n_classes: make_model(s, n_classes),
                        config=cfg, seed=int(seed), cache=cache,
                        checkpoint_root=res.checkpoint_root, n_samples=int(s["n_samples"]),
                        warm_start=bool(s["warm_start"]), warm_epochs=s["warm_epochs"],
                        device=dev)
                    cache.put(_KIND, run_cfg, records)
                res.runs[(task, strategy, int(seed))] = records
                bar.update(1)
            if s["full_reference"]:
                rcfg = {**cfg, "split": split, "seed": int(seed), "history": [split["pool"]],
                        "warm_start": False, "reference": "all pool volumes labelled"}
                result, rhash = cached_round(
                    rcfg, split["pool"], res.volumes[task], split,
                    lambda n_classes=n_classes: make_model(s, n_classes), None, cache=cache,
                    checkpoint_root=res.checkpoint_root, device=dev, seed=int(seed))
                res.reference[(task, int(seed))] = {**result, "round": rhash}
                bar.update(1)
    bar.close()
    return res


def _weights_present(root: Path, records: Sequence[Mapping[str, Any]]) -> bool:
    """True when every round of a cached run still has its weights (figures need them);
    otherwise the run is replayed and the missing rounds are trained again."""
    return all((root / r["round"] / WEIGHTS_NAME).exists() for r in records)


def curves_frame(res: P3Results) -> pd.DataFrame:
    """One row per task, strategy, seed and iteration: test Dice of the target class (mean and
    std over test volumes), validation Dice, labelled counts and fractions, chosen volumes."""
    n_all = sum(len(v) for v in res.split.values())
    n_pool = len(res.split["pool"])
    rows = []
    for (task, strategy, seed), records in res.runs.items():
        for r in records:
            rows.append({
                "task": task,
                "strategy": strategy,
                "seed": seed,
                "iteration": r["iteration"],
                "n_labelled": r["n_labelled"],
                "fraction_of_pool": r["n_labelled"] / n_pool,
                "fraction_of_all": r["n_labelled"] / n_all,
                "dice": r["test_target_dice_mean"],
                "dice_std": r["test_target_dice_std"],
                "val_dice": r["val_dice"],
                "best_epoch": r["best_epoch"],
                "selected": " ".join(r["selected"]),
            })
    cols = ["task", "strategy", "seed", "iteration", "n_labelled", "fraction_of_pool",
            "fraction_of_all", "dice", "dice_std", "val_dice", "best_epoch", "selected"]
    return pd.DataFrame(rows, columns=cols).sort_values(
        ["task", "strategy", "seed", "iteration"], ignore_index=True)


def write_curves(curves: pd.DataFrame, path: str | Path) -> Path:
    """Write the curves table as CSV atomically (temporary file + rename)."""
    path = Path(path)
    atomic_write_text(path, curves.to_csv(index=False))
    return path


# --------------------------------------------------------------------------------------------
# Tables and verdicts
# --------------------------------------------------------------------------------------------


def _summary(curves: pd.DataFrame, task: str) -> pd.DataFrame:
    """Mean, std, min and max over seeds of the test Dice per strategy and iteration."""
    sub = curves[curves["task"] == task]
    if sub.empty:
        raise ValueError(f"p3: no results for task {task!r}")
    g = sub.groupby(["strategy", "iteration"])["dice"]
    out = g.agg(["mean", "std", "min", "max", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def _gaps(curves: pd.DataFrame, task: str) -> pd.DataFrame:
    """Per seed and iteration: Dice of variance minus Dice of random."""
    sub = curves[curves["task"] == task]
    wide = sub.pivot_table(index=["seed", "iteration"], columns="strategy", values="dice")
    if not set(STRATEGIES) <= set(wide.columns):
        raise ValueError(f"p3: task {task!r} needs both strategies to compare them")
    wide = wide.reset_index()
    wide["gap"] = wide["variance"] - wide["random"]
    return wide


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


def paper_comparison(curves: pd.DataFrame, paper: Mapping[str, Any], task: str = "heart"
                     ) -> pd.DataFrame:
    """P3's quoted numbers (Fig. 2 / Sec. III) beside ours (mean ± std over seeds).

    P3's "iteration 2" and "last" are matched to our iteration 2 and our last iteration.
    """
    summ = _summary(curves, task).set_index(["strategy", "iteration"])
    gaps = _gaps(curves, task)
    last = int(curves["iteration"].max())
    n_all_frac = curves[(curves["task"] == task)].groupby("iteration")["fraction_of_all"].first()

    def ours(strategy: str, it: int) -> str:
        if (strategy, it) not in summ.index:
            return "n/a"
        row = summ.loc[(strategy, it)]
        return _fmt(row["mean"], row["std"])

    def gap(it: int) -> str:
        g = gaps[gaps["iteration"] == it]["gap"]
        return _fmt(g.mean(), g.std(ddof=1) if len(g) > 1 else 0.0) if len(g) else "n/a"

    points = {str(p["iteration"]): p for p in paper["points"]}
    rows = [
        ("iteration 1: active - random", points["1"]["gap"], gap(1)),
        ("iteration 2: active", points["2"]["active"], ours("variance", 2)),
        ("iteration 2: random", points["2"]["random"], ours("random", 2)),
        ("iteration 2: active - random", points["2"]["gap"], gap(2)),
        ("last iteration: active", points["last"]["active"], ours("variance", last)),
        ("last iteration: random", points["last"]["random"], ours("random", last)),
        ("last iteration: active - random", points["last"]["gap"], gap(last)),
        ("labelled share of all volumes at iteration 2", 0.42,
         f"{n_all_frac.get(2, float('nan')):.2f}"),
    ]
    return pd.DataFrame(rows, columns=["quantity", "P3 (LCTSC)", "ours (mean ± std over seeds)"])


def verdict(curves: pd.DataFrame, task: str) -> str:
    """In words: does variance selection beat random, at which iterations, in how many seeds."""
    gaps = _gaps(curves, task)
    parts = []
    for it, g in gaps[gaps["iteration"] > 0].groupby("iteration"):
        wins = int((g["gap"] > 0).sum())
        ties = int((g["gap"] == 0).sum())
        tied = f", tied in {ties}" if ties else ""
        parts.append(f"iteration {it}: mean gap {g['gap'].mean():+.3f} "
                     f"(variance better in {wins} of {len(g)} seed(s){tied})")
    sub = gaps[gaps["iteration"] > 0]
    mean_gap = float(sub["gap"].mean()) if len(sub) else float("nan")
    if not len(sub):
        head = "no selection round was run, so the strategies cannot be compared"
    elif mean_gap > 0.01 and (sub["gap"] > 0).mean() > 0.5:
        head = "MC-dropout variance selection beats random selection here, as in P3"
    elif mean_gap < -0.01 and (sub["gap"] < 0).mean() > 0.5:
        head = ("random selection beats MC-dropout variance selection here: P3's ordering "
                "does not hold")
    else:
        head = ("the two strategies are within 0.01 Dice of each other or alternate: P3's "
                "advantage of variance selection is not reproduced here")
    return f"{task}: {head} (mean gap over selection rounds and seeds {mean_gap:+.3f}); " + (
        "; ".join(parts))


def scorecard_entries(res: P3Results, task: str = "heart") -> dict[str, dict[str, Any]]:
    """``paper``, ``ours`` and ``verdict`` of P3-F2, P3-headline and P3-F3 for
    :func:`covidlib.report.scorecard.record` (heart task, mean over seeds)."""
    curves = res.curves
    summ = _summary(curves, task).set_index(["strategy", "iteration"])["mean"]
    sub = curves[curves["task"] == task]
    last = int(sub["iteration"].max())
    it2 = min(2, last)
    fig2 = paper_values.artifact("P3-F2")
    pts = {str(p["iteration"]): p for p in fig2["points"]}

    def at(strategy: str, it: int) -> float:
        return round(float(summ.get((strategy, it), float("nan"))), 4)

    f2_paper = {"it. 2 active": pts["2"]["active"], "it. 2 random": pts["2"]["random"],
                "last active": pts["last"]["active"], "last random": pts["last"]["random"]}
    f2_ours = {f"it. {it2} active": at("variance", it2), f"it. {it2} random": at("random", it2),
               f"last ({last}) active": at("variance", last),
               f"last ({last}) random": at("random", last)}
    share = float(sub[sub["iteration"] == it2]["fraction_of_all"].iloc[0])
    ref = [r["test_target_dice_mean"] for (t, _), r in res.reference.items() if t == task]
    head_ours: dict[str, Any] = {"labelled share": round(share, 3),
                                 "active Dice there": at("variance", it2)}
    if ref:
        full = float(np.mean(ref))
        head_ours["Dice, whole pool labelled"] = round(full, 4)
        ratio = at("variance", it2) / full if full > 0 else float("nan")
        head_verdict = (f"with {share:.0%} of the volumes labelled, variance selection reaches "
                        f"{ratio:.0%} of the Dice of the whole pool")
    else:
        head_verdict = (f"with {share:.0%} of the volumes labelled (P3: 42 %), variance "
                        f"selection reaches Dice {at('variance', it2):.2f} (P3: 0.77); this "
                        "profile trains no whole-pool reference")
    shown = res.split["test"][:2]
    return {
        "P3-F2": {"paper": f2_paper, "ours": f2_ours, "verdict": verdict(curves, task)},
        "P3-headline": {"paper": {"labelled share": 0.42, "active Dice there": pts["2"]["active"]},
                        "ours": head_ours, "verdict": head_verdict},
        "P3-F3": {"paper": "qualitative", "ours": f"contours drawn for {', '.join(shown)}",
                  "verdict": "qualitative figure (no numbers to compare); see the P3 chapter"},
    }


def selection_table(res: P3Results, task: str, seed: int | None = None) -> pd.DataFrame:
    """Which volumes each strategy labelled at each iteration, with the P3 scores of the
    variance strategy's candidates (highest first)."""
    seed = res.seeds[0] if seed is None else int(seed)
    rows = []
    for strategy in STRATEGIES:
        for r in res.runs.get((task, strategy, seed), []):
            if not r["selected"]:
                continue
            sc = r["scores"] or {}
            ranked = ", ".join(f"{c} {v:.3g}" for c, v in
                               sorted(sc.items(), key=lambda kv: (-kv[1], kv[0])))
            rows.append({"strategy": strategy, "iteration": r["iteration"],
                         "labelled next": ", ".join(r["selected"]),
                         "P3 score of the candidates (sum of Eq. 1)": ranked or "-"})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def plot_dice_curves(curves: pd.DataFrame, task: str, paper: Mapping[str, Any] | None = None,
                     reference: Mapping[tuple[str, int], Mapping[str, Any]] | None = None
                     ) -> Figure:
    """P3 Fig. 2: test Dice of the target class vs iteration, active vs random, mean over
    seeds with a min-max band; with ``paper``, a second panel holds P3's quoted numbers."""
    summ = _summary(curves, task)
    sub = curves[curves["task"] == task]
    n_seeds = sub["seed"].nunique()
    ncols = 2 if paper is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.9), squeeze=False)
    ax = axes[0, 0]
    its = sorted(summ["iteration"].unique())
    labelled = sub.groupby("iteration")["n_labelled"].first()
    for strategy in STRATEGIES:
        s = summ[summ["strategy"] == strategy].sort_values("iteration")
        if s.empty:
            continue
        c = _COLOURS[strategy]
        ax.plot(s["iteration"], s["mean"], "o-", color=c, lw=2,
                label=f"{_STRATEGY_LABELS[strategy]}, mean of {n_seeds} seed(s)")
        if n_seeds > 1:
            ax.fill_between(s["iteration"], s["min"], s["max"], color=c, alpha=0.2, lw=0)
    if reference:
        vals = [r["test_target_dice_mean"] for (t, _), r in reference.items() if t == task]
        if vals:
            ax.axhline(float(np.mean(vals)), color="0.4", ls="--", lw=1.2,
                       label="all pool volumes labelled")
    ax.set_xticks(its, [f"{i}\n({labelled[i]} vol.)" for i in its])
    ax.set_xlabel("active-learning iteration (labelled volumes)")
    ax.set_ylabel(f"test Dice ({'heart' if task == 'heart' else 'infection'})")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    band = " (band: min-max over seeds)" if n_seeds > 1 else ""
    ax.set_title(f"ours: {task}{band}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    if paper is not None:
        ax2 = axes[0, 1]
        pts = {str(p["iteration"]): p for p in paper["points"]}
        last_x = 3  # P3: labelled sets 11, 16, 21, 22 -> iterations 0..3
        for strategy, key in (("variance", "active"), ("random", "random")):
            xs = [2, last_x]
            ys = [pts["2"][key], pts["last"][key]]
            ax2.plot(xs, ys, "s", color=_COLOURS[strategy], ms=8, label=_STRATEGY_LABELS[strategy])
            for x, y in zip(xs, ys, strict=True):
                ax2.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(8, -3),
                             fontsize=8)
        ax2.annotate(f"iteration 1: active - random = {pts['1']['gap']:+.2f}\n(values not given)",
                     (1, 0.3), fontsize=8, ha="center")
        ax2.set_xticks([0, 1, 2, 3], ["0\n(11 vol.)", "1\n(16)", "2\n(21)", "3 = last\n(22)"])
        ax2.set_xlim(-0.4, 3.6)
        ax2.set_ylim(0, 1)
        ax2.grid(alpha=0.3)
        ax2.set_xlabel("iteration (labelled volumes, our reading)")
        ax2.set_title("P3 Fig. 2, numbers quoted in Sec. III (LCTSC)", fontsize=10)
        ax2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def figure2(res: P3Results, task: str) -> Figure:
    """:func:`plot_dice_curves` of ``task``, with P3's quoted numbers for the heart."""
    paper = paper_values.artifact("P3-F2") if task == "heart" else None
    return plot_dice_curves(res.curves, task, paper, res.reference)


def _upsampled_prediction(model: torch.nn.Module, vol: Volume, target: int, device: str
                          ) -> np.ndarray:
    """Target-class mask of the argmax of the probabilities upsampled (trilinear) to the
    volume's original shape."""
    dev = resolve_device(device)
    model.to(dev).eval()
    with torch.no_grad():
        probs = torch.softmax(model(vol.image[None].to(dev)).float(), dim=1)
        probs = F.interpolate(probs, size=vol.source_shape, mode="trilinear", align_corners=False)
    return (probs.argmax(1)[0] == target).cpu().numpy()


def _truth(case: Case, spec: Mapping[str, Any]) -> np.ndarray:
    src = case.organs if spec["source"] == "organs" else case.mask
    return np.isin(src, spec["classes"][spec["target"]])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    den = a.sum() + b.sum()
    return 1.0 if den == 0 else float(2 * (a & b).sum() / den)


def _pick_z(truth: np.ndarray, n: int, largest: bool = False) -> list[int]:
    """``n`` slices: spread over the middle of the structure (its 30-70 % z range), or with
    ``largest`` the slices where it is largest (at least 3 apart); central slices if absent."""
    area = truth.reshape(truth.shape[0], -1).sum(1)
    zs = np.flatnonzero(area)
    if zs.size == 0:
        zs = np.arange(truth.shape[0])
    if largest:
        picked: list[int] = []
        for z in sorted(zs, key=lambda z: (-area[z], z)):
            if all(abs(int(z) - p) >= 3 for p in picked):
                picked.append(int(z))
            if len(picked) == n:
                break
        return sorted(picked)
    q = np.linspace(0.3, 0.7, n) if n > 1 else np.array([0.5])
    return sorted({int(zs[round(float(x) * (zs.size - 1))]) for x in q})


def contour_figure(res: P3Results, task: str = "heart", iteration: int = 1, n_patients: int = 2,
                   slices_per_patient: int = 2, device: str = "cpu") -> Figure:
    """P3 Fig. 3: contours of the truth (red) and the U-Net (blue) on test slices, for random
    and active selection at ``iteration`` (seed = first seed) and, when run, the model trained
    on the whole pool. Radiological view (:func:`covidlib.report.figures.display_view`)."""
    spec = res.specs[task]
    seed = res.seeds[0]
    methods: list[tuple[str, dict[str, Any]]] = []
    for strategy in ("random", "variance"):
        recs = res.runs.get((task, strategy, seed))
        if recs is None:
            continue
        if not 0 <= iteration < len(recs):
            raise ValueError(f"p3: iteration {iteration} not in 0..{len(recs) - 1}")
        methods.append((f"{_STRATEGY_LABELS[strategy]}, it. {iteration}", recs[iteration]))
    if (task, seed) in res.reference:
        methods.append(("all pool volumes labelled", res.reference[(task, seed)]))
    if not methods:
        raise ValueError(f"p3: no runs of task {task!r} to draw")
    n_classes = len(spec["class_names"])
    cases = {c.case_id: c for c in res.dataset.cases()}
    patients = res.split["test"][:n_patients]
    preds: dict[tuple[int, str], np.ndarray] = {}
    for m, (_, rec) in enumerate(methods):
        model = make_model(res.settings, n_classes)
        model.load_state_dict(round_weights(res.checkpoint_root, rec["round"]))
        for pid in patients:
            preds[(m, pid)] = _upsampled_prediction(model, res.volumes[task][pid], spec["target"],
                                                    device)
    rows = [(pid, z) for pid in patients
            for z in _pick_z(_truth(cases[pid], spec), slices_per_patient,
                             largest=task != "heart")]
    fig, axes = plt.subplots(len(rows), len(methods), squeeze=False,
                             figsize=(3.3 * len(methods), 3.3 * len(rows)))
    lo, hi = (-160.0, 240.0) if task == "heart" else (-1000.0, 400.0)
    for r, (pid, z) in enumerate(rows):
        case = cases[pid]
        truth = _truth(case, spec)
        t_view = display_view(case, truth[z])
        p_views = [display_view(case, preds[(m, pid)][z]) for m in range(len(methods))]
        if task == "heart":  # zoom on the heart
            box = _crop_box(t_view, *p_views)
        else:  # the body (lesions lie anywhere in the lungs)
            box = _crop_box(display_view(case, case.image[z] > -500.0), margin=2)
        for m, (name, _) in enumerate(methods):
            ax = axes[r, m]
            pred = preds[(m, pid)]
            img = display_view(case, case.image[z])[box]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            for view, colour in ((t_view, "red"), (p_views[m], "deepskyblue")):
                if view[box].any():
                    ax.contour(view[box].astype(float), levels=[0.5], colors=colour,
                               linewidths=1.4)
            ax.set_title(f"{name}\n{pid} z={z}: volume Dice {_dice(pred, truth):.2f}",
                         fontsize=8)
            ax.set_axis_off()
    handles = [Line2D([], [], color="red", lw=1.5, label="manual (truth)"),
               Line2D([], [], color="deepskyblue", lw=1.5, label="U-Net prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def _crop_box(*masks: np.ndarray, margin: int = 18) -> tuple[slice, slice]:
    """A square crop around the union of the (displayed) 2D ``masks``, with a margin; the
    whole slice when they are empty."""
    h, w = masks[0].shape
    union = np.zeros((h, w), bool)
    for m in masks:
        union |= m.astype(bool)
    if not union.any():
        return slice(None), slice(None)
    ys, xs = np.nonzero(union)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = max(ys.max() - ys.min(), xs.max() - xs.min()) / 2 + margin
    half = min(half, min(h, w) / 2)
    y0 = int(np.clip(round(cy - half), 0, h - 2 * half))
    x0 = int(np.clip(round(cx - half), 0, w - 2 * half))
    n = round(2 * half)
    return slice(y0, y0 + n), slice(x0, x0 + n)
