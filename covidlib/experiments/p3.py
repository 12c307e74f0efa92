"""P3 (Rahimi et al.): choosing whole CT volumes to label by MC-dropout variance.

Profiles, the volume split, the two tasks (the heart, as in P3 Fig. 2, and COVID-19
infection) and the runner over strategies and seeds of ``notebooks/p3_volume_al.ipynb``; its
tables, verdicts and figures are in :mod:`covidlib.experiments.p3_report`. The algorithm
itself is :mod:`covidlib.volume_al`.

Reading of P3 used here (Sec. III; its settings and quoted numbers are in
``covidlib/report/paper_values/p3.yaml``): LCTSC volumes split into train / test /
validation, half of the training volumes labelled at the start, a few added per iteration by
the summed MC-dropout variance, C = 6 classes (background + spinal cord, right lung, left
lung, heart, esophagus), validation Dice of the heart reported. On LCTSC the split is the
manifest's ``p3`` split (``data_manifests/lctsc.yaml``). The network is fine-tuned on the
grown set (P3 Sec. I, "the training model is fine-tuned using the augmented training set"),
which is how two strategies can still differ once the whole pool is labelled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from covidlib.cache import ResultCache, atomic_write_text
from covidlib.data.api import Dataset
from covidlib.data.manifest import Split
from covidlib.engine import resolve_device
from covidlib.experiments.typed_settings import SettingsError, check_fields, from_profile
from covidlib.models import UNet3D
from covidlib.volume_al import (
    STRATEGIES,
    WEIGHTS_NAME,
    Volume,
    cached_round,
    prepare_volume,
    resample_image,
    run_volume_al,
)

__all__ = [
    "AAPM_ORGANS",
    "ORGAN_ALIASES",
    "PROFILES",
    "TASKS",
    "P3Results",
    "P3Settings",
    "SettingsError",
    "curves_frame",
    "default_tasks",
    "experiment_config",
    "initial_set",
    "make_model",
    "organ_labels",
    "prepare_task",
    "run",
    "settings",
    "split_volumes",
    "task_spec",
    "volume_split",
    "write_curves",
]

#: The five AAPM 2017 organs P3 segments, in its order (P3 Sec. III); C = 6 with background.
AAPM_ORGANS: tuple[str, ...] = ("spinal cord", "right lung", "left lung", "heart", "esophagus")

#: Spellings of P3's organ names in datasets' organ maps, after :func:`_norm` (lower case,
#: letters and digits only): the phantom writes "right lung", LCTSC's RTSTRUCTs "Lung_R".
ORGAN_ALIASES: dict[str, tuple[str, ...]] = {
    "spinal cord": ("spinalcord", "cord"),
    "right lung": ("rightlung", "lungr"),
    "left lung": ("leftlung", "lungl"),
    "heart": ("heart",),
    "esophagus": ("esophagus", "oesophagus"),
}

TASKS: tuple[str, ...] = ("heart", "infection")
"""``heart``: P3's task (organ masks; Dice of the heart); ``infection``: the same procedure on
the binary COVID-19 infection mask (any infection label). :func:`default_tasks` picks those a
dataset has labels for."""

@dataclass(frozen=True)
class P3Settings:
    """One P3 profile (P3 Sec. III; the cpu / gpu profiles shrink it). Validated on creation:
    a value of the wrong type or range -> :class:`SettingsError` naming it.

    ``test`` / ``val`` / ``initial`` / ``per_iteration``: an int is a count of volumes, a
    float in (0, 1) a fraction (of all volumes, of the pool). ``split``: ``"auto"`` uses the
    manifest's ``p3`` split when the dataset has one (LCTSC: P3's 22 / 6 / 22), else draws
    test / val / pool with ``split_seed``; ``"random"`` always draws. ``reference_seeds``:
    the fully supervised baseline (whole pool labelled) for the first this many seeds
    (None: every seed).
    """

    loss: Literal["dice_ce", "combo"]
    grid: tuple[int, int, int]
    organs: tuple[str, ...]
    base_width: int
    depth: int
    lr: float
    batch_size: int
    patch: tuple[int, int, int] | None
    patches_per_volume: int
    epochs: int
    warm_start: bool
    warm_epochs: int
    test: int | float
    val: int | float
    initial: int | float
    per_iteration: int | float
    iterations: int
    reference_seeds: int | None
    window: tuple[float, float] = (-1000.0, 400.0)  # HU -> [0, 1] (lung window)
    dropout: float = 0.5  # P3 Sec. III: p = 0.5
    n_samples: int = 5  # P3 Sec. III: T = 5
    split_seed: int = 0  # which volumes are test / val / pool (fixed across training seeds)
    split: Literal["auto", "random"] = "auto"

    def __post_init__(self) -> None:
        check_fields(self, "p3")
        for name in ("base_width", "depth", "batch_size", "patches_per_volume", "epochs",
                     "warm_epochs", "n_samples"):
            if getattr(self, name) < 1:
                raise SettingsError(f"p3 setting {name}={getattr(self, name)!r}: must be >= 1")
        for name in ("iterations", "split_seed"):
            if getattr(self, name) < 0:
                raise SettingsError(f"p3 setting {name}={getattr(self, name)!r}: must be >= 0")
        if self.reference_seeds is not None and self.reference_seeds < 0:
            raise SettingsError(f"p3 setting reference_seeds={self.reference_seeds!r}: None "
                                "(all seeds) or a count >= 0")
        if not self.lr > 0:
            raise SettingsError(f"p3 setting lr={self.lr!r}: must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise SettingsError(f"p3 setting dropout={self.dropout!r}: must lie in [0, 1)")
        if any(g < 1 for g in self.grid) or (self.patch and any(p < 1 for p in self.patch)):
            raise SettingsError(f"p3 setting grid={self.grid!r} / patch={self.patch!r}: "
                                "sizes must be >= 1")
        if not self.organs:
            raise SettingsError("p3 setting organs=(): name at least one organ")


PROFILES: dict[str, P3Settings] = {
    # About 1.5 minutes on one CPU core (the book's P3 budget is 100 s): a 12x24x24 grid (about
    # 22 mm x 16 mm voxels on the phantom), heart-vs-rest (C = 2), a small U-Net, whole volumes,
    # fine-tuning between rounds, and the fully supervised baseline for the first seed. The
    # combo loss is MONAI's Dice + CE in kind for two classes, without MONAI's import time.
    "cpu": P3Settings(
        loss="combo", grid=(12, 24, 24), organs=("heart",), base_width=8, depth=2, lr=3e-3,
        batch_size=2, patch=None, patches_per_volume=1, epochs=24, warm_start=True,
        warm_epochs=6, test=4, val=2,
        # P3's 11 of 22 and 5 of 22 as fractions of the pool: 7 and 3 of the phantom's 14,
        # 11 and 5 of LCTSC's 22
        initial=0.5, per_iteration=5 / 22, iterations=2,
        # the fully supervised baseline (whole pool labelled, its training curve shown) for
        # the first seed: it tells whether this small run has converged
        reference_seeds=1),
    # The published reference run (about 10 minutes of one CPU core): a 16x32x32 grid, 32
    # epochs (8 to fine-tune between rounds), three acquisition rounds, the fully supervised
    # baseline for every seed (its curve tells whether the run has converged).
    "reference": P3Settings(
        loss="combo", grid=(16, 32, 32), organs=("heart",), base_width=8, depth=2, lr=3e-3,
        batch_size=2, patch=None, patches_per_volume=1, epochs=32, warm_start=True,
        warm_epochs=8, test=4, val=2, initial=0.5, per_iteration=5 / 22, iterations=3,
        reference_seeds=None),
    # One H100: the phantom's native 48x160x160 grid, P3's C = 6 and 24 epochs, the 3D U-Net
    # of Cicek et al. (32 channels, 3 poolings), 48x96x96 patches (P4's 96^3 capped at the
    # 48 slices), batch 4 (P4 Sec. 4), 4 patches per volume per epoch; every seed's baseline.
    "gpu": P3Settings(
        loss="dice_ce", grid=(48, 160, 160), organs=AAPM_ORGANS, base_width=32, depth=3,
        lr=1e-3, batch_size=4, patch=(48, 96, 96), patches_per_volume=4, epochs=24,
        warm_start=True, warm_epochs=24, test=4, val=2,
        initial=0.5, per_iteration=5 / 22,  # as in cpu: 7 / 3 of the phantom's pool
        iterations=3, reference_seeds=None),
    # P3's own settings (Sec. III): C = 6, T = 5, p = 0.5, 24 epochs per run, split as
    # fractions that give exactly 22 test / 6 val / 22 pool, 11 initial, 5 per iteration on
    # P3's 50 volumes (on the 20-volume phantom: 9 / 2 / 9, 5 initial, 2 per iteration).
    "paper": P3Settings(
        loss="dice_ce", grid=(48, 160, 160), organs=AAPM_ORGANS, base_width=32, depth=3,
        lr=1e-3, batch_size=4, patch=(48, 96, 96), patches_per_volume=8, epochs=24,
        warm_start=True, warm_epochs=24, test=0.44, val=0.12, initial=0.5,
        per_iteration=5 / 22, iterations=3, reference_seeds=None),
}
"""The profiles as data (:func:`settings` applies and validates overrides)."""

_KIND = "p3_volume_al"
_STRATEGY_LABELS = {"variance": "MC-dropout variance (active)", "random": "random"}
_COLOURS = {"variance": "tab:blue", "random": "tab:orange"}


# --------------------------------------------------------------------------------------------
# Settings, tasks, split
# --------------------------------------------------------------------------------------------


def settings(profile: str, overrides: Mapping[str, Any] | None = None) -> P3Settings:
    """Profile ``profile`` with ``overrides`` (setting name -> value) applied and validated.

    Unknown profile or override key -> :class:`SettingsError` naming it and the valid ones;
    a bad value -> :class:`SettingsError` naming the setting and the value.
    """
    return from_profile(PROFILES, profile, overrides, "p3")


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


def split_volumes(case_ids: Sequence[str], s: P3Settings,
                  manifest_split: Split | None = None) -> dict[str, list[str]]:
    """``pool`` / ``val`` / ``test`` ids.

    With ``manifest_split`` (a dataset's by-case ``p3`` split, e.g. LCTSC's 22 / 6 / 22 of P3
    Sec. III) its train / val / test ids, which must all be among ``case_ids``; the profile's
    ``test`` / ``val`` are then unused. Otherwise drawn at random (P3: "50 random images")
    with ``split_seed`` from the sorted ids; ``test`` and ``val`` are counts or fractions of
    all volumes, the pool is the rest.
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("p3: duplicate case ids")
    if manifest_split is not None:
        return _manifest_split(ids, s, manifest_split)
    n = len(ids)
    n_test, n_val = _count(s.test, n, "test"), _count(s.val, n, "val")
    n_pool = n - n_test - n_val
    n_init = _count(s.initial, n_pool, "initial") if n_pool > 0 else 0
    if n_pool < 2 or n_init >= n_pool:
        raise ValueError(
            f"p3: {n} volumes leave a pool of {n_pool} after test={n_test} and val={n_val}; "
            f"it must exceed initial={s.initial!r} (P3 needs unlabelled volumes to choose from)"
        )
    perm = np.random.default_rng(int(s.split_seed)).permutation(n)
    chosen = [ids[i] for i in perm]
    return {
        "test": sorted(chosen[:n_test]),
        "val": sorted(chosen[n_test:n_test + n_val]),
        "pool": sorted(chosen[n_test + n_val:]),
    }


def _manifest_split(ids: Sequence[str], s: P3Settings, sp: Split) -> dict[str, list[str]]:
    if sp.method != "by-case":
        raise ValueError(f"p3: split {sp.name!r} is {sp.method!r}; P3 needs a by-case split of "
                         "whole volumes")
    out = {"pool": sorted(sp.train or ()), "val": sorted(sp.val or ()),
           "test": sorted(sp.test or ())}
    missing = sorted(set().union(*out.values()) - set(ids))
    if missing:
        raise ValueError(f"p3: split {sp.name!r} names {len(missing)} volume(s) the dataset does "
                         f"not have: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if not out["val"]:
        raise ValueError(f"p3: split {sp.name!r} has no validation volumes (P3 selects epochs "
                         "on them)")
    n_pool = len(out["pool"])
    if n_pool < 2 or _count(s.initial, n_pool, "initial") >= n_pool:
        raise ValueError(f"p3: split {sp.name!r} has a pool of {n_pool}; it must exceed "
                         f"initial={s.initial!r}")
    return out


def volume_split(ds: Dataset, s: P3Settings) -> dict[str, list[str]]:
    """:func:`split_volumes` of ``ds``: its manifest's ``p3`` split when it has one and
    ``s.split`` is ``"auto"``, else a random draw (``"random"``)."""
    mode = s.split
    if mode not in ("auto", "random"):
        raise ValueError(f"p3: split={mode!r} must be 'auto' or 'random'")
    sp = ds.manifest.splits.get("p3") if mode == "auto" else None
    return split_volumes([c.case_id for c in ds.cases()], s, sp)


def initial_set(pool: Sequence[str], s: P3Settings, seed: int) -> list[str]:
    """The first labelled volumes: ``initial`` drawn at random from the pool for ``seed``
    (P3: "11 randomly selected images")."""
    n = _count(s.initial, len(pool), "initial")
    rng = np.random.default_rng([int(seed), 11])
    pool = sorted(pool)
    return sorted(pool[i] for i in rng.choice(len(pool), size=n, replace=False))


def default_tasks(ds: Dataset) -> tuple[str, ...]:
    """The tasks ``ds`` has labels for: ``heart`` with organ masks, ``infection`` with
    infection labels (LCTSC: heart only; the phantom: both)."""
    m = ds.manifest
    out = tuple(t for t, ok in (("heart", bool(m.organ_map)),
                                ("infection", bool(m.infection_labels))) if ok)
    if not out:
        raise ValueError(f"dataset {ds.name!r}: has neither organ masks nor infection labels; "
                         "P3 has nothing to segment")
    return out


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def organ_labels(organ_map: Mapping[int, str], organs: Sequence[str], dataset: str
                 ) -> dict[str, int]:
    """The organ-map label of each of P3's ``organs`` ("heart", "spinal cord", ...), matching
    the dataset's spelling ("Heart", "SpinalCord", "Lung_R") through :data:`ORGAN_ALIASES`."""
    by_norm: dict[str, list[int]] = {}
    for k, v in organ_map.items():
        by_norm.setdefault(_norm(str(v)), []).append(int(k))
    out: dict[str, int] = {}
    unknown = []
    for o in organs:
        keys = {_norm(o), *ORGAN_ALIASES.get(o, ())}
        hits = sorted({lab for key in keys for lab in by_norm.get(key, [])})
        if len(hits) > 1:
            raise ValueError(f"p3: organ {o!r} matches labels {hits} of {dataset!r}'s organ_map")
        if hits:
            out[o] = hits[0]
        else:
            unknown.append(o)
    if unknown:
        raise ValueError(f"p3: organs {unknown} are not in {dataset!r}'s organ_map "
                         f"({sorted(str(v) for v in organ_map.values())})")
    return out


def task_spec(task: str, ds: Dataset, s: P3Settings) -> dict[str, Any]:
    """Label source, class mapping, class names and the scored (target) class of ``task``."""
    if task == "heart":
        organ_map = ds.manifest.organ_map
        if not organ_map:
            raise ValueError(
                f"dataset {ds.name!r}: has no organ masks (manifest organ_map is empty); the "
                "heart task needs them (use the synthetic phantom or LCTSC)")
        organs = list(s.organs)
        if "heart" not in organs:
            raise ValueError("p3: the heart task needs 'heart' among the organs setting")
        by_name = organ_labels(organ_map, organs, ds.name)
        return {
            "source": "organs",
            "classes": {i + 1: [by_name[o]] for i, o in enumerate(organs)},
            "class_names": ["background", *organs],
            "target": organs.index("heart") + 1,
        }
    if task == "infection":
        if not ds.manifest.infection_labels:
            raise ValueError(f"dataset {ds.name!r}: has no infection labels (manifest "
                             "infection_labels is empty); run the heart task only")
        return {
            "source": "infection",
            "classes": {1: list(ds.manifest.infection_labels)},
            "class_names": ["background", "infection"],
            "target": 1,
        }
    raise ValueError(f"p3: unknown task {task!r}; choose from {TASKS}")


def prepare_task(ds: Dataset, task: str, s: P3Settings,
                 images: Mapping[str, torch.Tensor] | None = None,
                 ids: Sequence[str] | None = None) -> dict[str, Volume]:
    """The cases of ``ds`` (those in ``ids``, default all) windowed and resampled to
    ``s.grid`` for ``task`` (``images``: already resampled images by case id, shared
    between tasks)."""
    spec = task_spec(task, ds, s)
    keep = None if ids is None else set(ids)
    return {
        c.case_id: prepare_volume(c, s.grid, source=spec["source"], classes=spec["classes"],
                                  window=tuple(s.window),
                                  image=None if images is None else images[c.case_id])
        for c in ds.cases() if keep is None or c.case_id in keep
    }


def make_model(s: P3Settings, n_classes: int) -> UNet3D:
    """P3's MC-dropout 3D U-Net at the profile's width and depth."""
    return UNet3D(1, n_classes, base_width=int(s.base_width), depth=int(s.depth),
                  dropout=float(s.dropout))


def experiment_config(dataset: str, task: str, s: P3Settings, spec: Mapping[str, Any]
                      ) -> dict[str, Any]:
    """The identity of one task's experiment (everything that changes its numbers)."""
    return {
        "paper": "P3",
        "dataset": dataset,
        "task": task,
        "classes": {str(k): v for k, v in spec["classes"].items()},
        "n_classes": len(spec["class_names"]),
        "target_class": spec["target"],
        "model": {"name": "unet3d_p3", "base_width": s.base_width, "depth": s.depth,
                  "dropout": s.dropout},
        **{k: getattr(s, k) for k in ("loss", "grid", "window", "lr", "batch_size", "patch",
                                      "patches_per_volume", "epochs")},
    }


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass
class P3Results:
    """Everything the chapter shows: raw records, the prepared volumes and the setup."""

    settings: P3Settings
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
    s: P3Settings,
    *,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1),
    strategies: Sequence[str] = STRATEGIES,
    results_dir: str | Path = "../results",
    device: str = "auto",
    progress: bool = True,
) -> P3Results:
    """Run P3's loop for every task, strategy and seed (cached; resumes where it stopped).

    ``tasks`` None: :func:`default_tasks` of ``ds``. Results go to ``results_dir/p3_volume_al``
    (one JSON per task, strategy, seed) and ``results_dir/p3_round`` / ``p3_scores``; weights
    to ``results_dir/checkpoints/p3``.
    """
    tasks = default_tasks(ds) if tasks is None else tuple(tasks)
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
    split = volume_split(ds, s)
    used = sorted(set().union(*split.values()))
    res = P3Results(s, ds, split, [int(x) for x in seeds],
                    checkpoint_root=Path(results_dir) / "checkpoints" / "p3")
    jobs = [(t, st, int(sd)) for t in tasks for sd in seeds for st in strategies]
    ref_seeds = _reference_seeds(s, seeds)
    bar = tqdm(total=len(jobs) + len(tasks) * len(ref_seeds), desc="P3 runs",
               disable=not progress)
    images = {c.case_id: resample_image(c, s.grid, tuple(s.window))
              for c in ds.cases() if c.case_id in used}
    for task in tasks:
        spec = task_spec(task, ds, s)
        res.specs[task] = spec
        res.volumes[task] = prepare_task(ds, task, s, images, used)
        cfg = experiment_config(ds.name, task, s, spec)
        n_classes = cfg["n_classes"]
        for seed in seeds:
            init = initial_set(split["pool"], s, seed)
            k = _count(s.per_iteration, len(split["pool"]), "per_iteration")
            for strategy in strategies:
                run_cfg = {**cfg, "strategy": strategy, "seed": int(seed), "initial": init,
                           "per_iteration": k, "iterations": int(s.iterations),
                           "n_samples": int(s.n_samples), "split": split,
                           "warm_start": bool(s.warm_start),
                           "warm_epochs": s.warm_epochs if s.warm_start else None}
                records = cache.get(_KIND, run_cfg)
                if records is None or not _weights_present(res.checkpoint_root, records):
                    records = run_volume_al(
                        res.volumes[task], split, init, strategy=strategy,
                        n_iterations=int(s.iterations), per_iteration=k,
                        make_model=lambda n_classes=n_classes: make_model(s, n_classes),
                        config=cfg, seed=int(seed), cache=cache,
                        checkpoint_root=res.checkpoint_root, n_samples=int(s.n_samples),
                        warm_start=bool(s.warm_start), warm_epochs=s.warm_epochs,
                        device=dev)
                    cache.put(_KIND, run_cfg, records)
                res.runs[(task, strategy, int(seed))] = records
                bar.update(1)
            if int(seed) in ref_seeds:
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


def _reference_seeds(s: P3Settings, seeds: Sequence[int]) -> list[int]:
    """The seeds the fully supervised baseline is trained for: the first
    ``reference_seeds`` (None: all)."""
    n = s.reference_seeds
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"p3: reference_seeds={n!r} must be None (all seeds) or a count >= 0")
    return [int(x) for x in (seeds if n is None else seeds[:n])]


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


