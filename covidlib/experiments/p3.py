"""P3 (Rahimi et al.): choosing whole CT volumes to label by MC-dropout variance.

Profiles, the volume split, the two tasks (the heart, as in P3 Fig. 2, and COVID-19
infection), the runner over strategies and seeds, and the figures and tables of the chapter
``notebooks/p3_volume_al.ipynb``. The algorithm itself is :mod:`covidlib.volume_al`.

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
from covidlib.data.manifest import Split
from covidlib.data.types import Case
from covidlib.engine import resolve_device
from covidlib.experiments.typed_settings import SettingsError, check_fields, from_profile
from covidlib.models import UNet3D
from covidlib.report import paper_values
from covidlib.report.figures import display_view
from covidlib.verdict import Convergence, three_way_verdict
from covidlib.verdict import baseline_converged as _converged
from covidlib.volume_al import (
    STRATEGIES,
    WEIGHTS_NAME,
    Volume,
    cached_round,
    prepare_volume,
    resample_image,
    round_weights,
    run_volume_al,
    score_error_correlation,
    volume_dice,
)

__all__ = [
    "AAPM_ORGANS",
    "MECHANISM_RHO",
    "ORGAN_ALIASES",
    "PROFILES",
    "TASKS",
    "P3Results",
    "P3Settings",
    "SettingsError",
    "baseline_converged",
    "baseline_convergence",
    "baseline_curve",
    "contour_figure",
    "curves_frame",
    "default_tasks",
    "describe",
    "experiment_config",
    "figure2",
    "initial_set",
    "make_model",
    "mechanism_frame",
    "mechanism_summary",
    "organ_labels",
    "paper_comparison",
    "paper_numbers",
    "plot_baseline_curve",
    "plot_dice_curves",
    "prepare_task",
    "run",
    "scorecard_entries",
    "selection_table",
    "settings",
    "split_volumes",
    "task_spec",
    "verdict",
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


def settings(profile: str, overrides: P3Settings | None = None) -> P3Settings:
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


def describe(ds: Dataset, s: P3Settings, seeds: Sequence[int]) -> pd.DataFrame:
    """The chapter's setup beside P3's (Sec. III): split, schedule, model and MC sampling."""
    sp = volume_split(ds, s)
    n_pool = len(sp["pool"])
    k = _count(s.per_iteration, n_pool, "per_iteration")
    n_init = _count(s.initial, n_pool, "initial")
    sizes = sorted({min(n_init + i * k, n_pool) for i in range(int(s.iterations) + 1)})
    ref = _paper_settings()
    ref_sizes = sorted({min(ref["initial_labelled"] + i * ref["per_iteration"], ref["train"])
                        for i in range(4)})
    source = "the manifest's p3 split" if s.split == "auto" and \
        "p3" in ds.manifest.splits else f"drawn with split_seed {s.split_seed}"
    rows = [
        ("volumes (test / val / pool)",
         f"{ref['test']} / {ref['val']} / {ref['train']}",
         f"{len(sp['test'])} / {len(sp['val'])} / {n_pool} ({source})"),
        ("labelled at the start; added per iteration",
         f"{ref['initial_labelled']}; {ref['per_iteration']}", f"{n_init}; {k}"),
        ("labelled volumes per iteration",
         ", ".join(str(x) for x in ref_sizes) + " (our reading)",
         ", ".join(str(x) for x in sizes)),
        ("classes C (used in Eq. 1)", f"{ref['classes_C']}",
         ", ".join(f"{len(task_spec(t, ds, s)['class_names'])} ({t} task)"
                   for t in default_tasks(ds))),
        ("MC passes T; dropout p", f"{ref['mc_passes_T']}; {ref['dropout_p']}",
         f"{s.n_samples}; {s.dropout}"),
        ("epochs per run", f"{ref['epochs_per_run']}",
         f"{s.epochs} first, then {s.warm_epochs} (fine-tuning)" if s.warm_start
         else f"{s.epochs} (retrained from scratch)"),
        ("network", str(ref["model"]),
         f"3D U-Net, {s.base_width} channels, {s.depth} poolings, dropout in the decoder"),
        ("input", "LCTSC CT (about 1 mm in-plane)",
         f"{'x'.join(str(g) for g in s.grid)} grid, HU window {s.window} -> [0, 1]"
         + (f", {'x'.join(str(p) for p in s.patch)} patches" if s.patch else
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


# --------------------------------------------------------------------------------------------
# Tables and verdicts
# --------------------------------------------------------------------------------------------


def _summary(curves: pd.DataFrame, task: str, metric: str = "dice") -> pd.DataFrame:
    """Mean, std, min and max over seeds of ``metric`` (``dice``: test, ``val_dice``:
    validation) per strategy and iteration."""
    sub = curves[curves["task"] == task]
    if sub.empty:
        raise ValueError(f"p3: no results for task {task!r}")
    g = sub.groupby(["strategy", "iteration"])[metric]
    out = g.agg(["mean", "std", "min", "max", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def _gaps(curves: pd.DataFrame, task: str, metric: str = "dice") -> pd.DataFrame:
    """Per seed and iteration: ``metric`` of variance minus that of random."""
    sub = curves[curves["task"] == task]
    wide = sub.pivot_table(index=["seed", "iteration"], columns="strategy", values=metric)
    if not set(STRATEGIES) <= set(wide.columns):
        raise ValueError(f"p3: task {task!r} needs both strategies to compare them")
    wide = wide.reset_index()
    wide["gap"] = wide["variance"] - wide["random"]
    return wide


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


def paper_comparison(curves: pd.DataFrame, paper: Mapping[str, Any], task: str = "heart"
                     ) -> pd.DataFrame:
    """P3's quoted numbers (Fig. 2 / Sec. III: validation Dice) beside our validation Dice
    (like with like) and our test Dice (ours only: P3 quotes none), mean ± std over seeds.

    P3's "iteration 2" and "last" are matched to our iteration 2 and our last iteration.
    """
    val = _summary(curves, task, "val_dice").set_index(["strategy", "iteration"])
    test = _summary(curves, task, "dice").set_index(["strategy", "iteration"])
    gaps = {m: _gaps(curves, task, m) for m in ("val_dice", "dice")}
    last = int(curves["iteration"].max())
    n_all_frac = curves[(curves["task"] == task)].groupby("iteration")["fraction_of_all"].first()

    def ours(summ: pd.DataFrame, strategy: str, it: int) -> str:
        if (strategy, it) not in summ.index:
            return "n/a"
        row = summ.loc[(strategy, it)]
        return _fmt(row["mean"], row["std"])

    def gap(metric: str, it: int) -> str:
        g = gaps[metric]
        g = g[g["iteration"] == it]["gap"]
        return _fmt(g.mean(), g.std(ddof=1) if len(g) > 1 else 0.0) if len(g) else "n/a"

    points = {str(p["iteration"]): p for p in paper["points"]}
    rows = []
    for label, it, pt in (("iteration 1", 1, points["1"]), ("iteration 2", 2, points["2"]),
                          ("last iteration", last, points["last"])):
        for strategy, key in (("variance", "active"), ("random", "random")):
            if key in pt:
                rows.append((f"{label}: {key}", pt[key], ours(val, strategy, it),
                             ours(test, strategy, it)))
        rows.append((f"{label}: active - random", pt["gap"], gap("val_dice", it),
                     gap("dice", it)))
    share = paper_values.artifact("P3-headline")["values"]["labelled_fraction"]
    frac = f"{n_all_frac.get(2, float('nan')):.2f}"
    rows.append(("labelled share of all volumes at iteration 2", share, frac, frac))
    return pd.DataFrame(rows, columns=["quantity", "P3 (LCTSC, validation Dice)",
                                       "ours: validation Dice", "ours: test Dice (P3: none)"])


def paper_numbers() -> dict[str, Any]:
    """P3's quoted numbers for the chapter's prose (glue names -> values), from
    ``paper_values/p3.yaml``: validation Dice at iteration 2 and the last, labelled share."""
    pts = {str(p["iteration"]): p for p in paper_values.artifact("P3-F2")["points"]}
    share = paper_values.artifact("P3-headline")["values"]["labelled_fraction"]
    return {"p3_paper_it2_active": pts["2"]["active"], "p3_paper_it2_random": pts["2"]["random"],
            "p3_paper_last_active": pts["last"]["active"], "p3_paper_share": f"{share:.0%}"}


# --------------------------------------------------------------------------------------------
# The fully supervised baseline and the mechanism (issue: converged baselines, mechanisms)
# --------------------------------------------------------------------------------------------


def baseline_converged(curve: Sequence[Mapping[str, float]], window: int = 3,
                       tol: float = 0.01) -> Convergence:
    """:func:`covidlib.verdict.baseline_converged` of a round's training curve (its
    ``val_dice`` per epoch): flat when the last ``window`` epochs gain less than ``tol``."""
    return _converged([c.get("val_dice") for c in curve], window=window, tol=tol)


def baseline_curve(res: P3Results, task: str) -> pd.DataFrame:
    """Train loss and validation Dice per epoch of the fully supervised baseline (every pool
    volume labelled), one block per seed it was trained for."""
    rows = [{"seed": seed, **c} for (t, seed), r in sorted(res.reference.items()) if t == task
            for c in r.get("curve", [])]
    return pd.DataFrame(rows, columns=["seed", "epoch", "train_loss", "val_dice"])


def plot_baseline_curve(res: P3Results, task: str) -> Figure:
    """The baseline's training loss (left) and validation Dice (right) against epochs."""
    df = baseline_curve(res, task)
    if df.empty:
        raise ValueError(f"p3: no fully supervised baseline of task {task!r} (profile setting "
                         "reference_seeds is 0)")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for seed, g in df.groupby("seed"):
        a1.plot(g["epoch"], g["train_loss"], "o-", ms=3, label=f"seed {seed}")
        a2.plot(g["epoch"], g["val_dice"], "o-", ms=3, label=f"seed {seed}")
    a1.set(xlabel="epoch", ylabel="training loss", title=f"{task}: training loss")
    a2.set(xlabel="epoch", ylabel="validation Dice", ylim=(0, 1),
           title=f"{task}: validation Dice")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    return fig


def mechanism_frame(res: P3Results, task: str, device: str = "cpu") -> pd.DataFrame:
    """Per seed and iteration of the variance strategy: Spearman's rho between the candidates'
    P3 scores and the current model's error (1 - Dice of the target class) on them, and the
    mean error of the volumes it selected and of those it left."""
    spec = res.specs[task]
    rows = []
    for (t, strategy, seed), records in sorted(res.runs.items()):
        if t != task or strategy != "variance":
            continue
        for r in records:
            if not r["scores"]:
                continue
            model = make_model(res.settings, len(spec["class_names"]))
            model.load_state_dict(round_weights(res.checkpoint_root, r["round"]))
            dice = volume_dice(model, [res.volumes[task][c] for c in sorted(r["scores"])],
                               spec["target"], device)
            err = {c: 1.0 - d for c, d in dice.items()}
            chosen = set(r["selected"])
            rest = [err[c] for c in err if c not in chosen]
            rows.append({"seed": seed, "iteration": r["iteration"], "candidates": len(err),
                         "spearman": score_error_correlation(r["scores"], dice),
                         "error_selected": float(np.mean([err[c] for c in chosen])),
                         "error_left": float(np.mean(rest)) if rest else math.nan})
    return pd.DataFrame(rows, columns=["seed", "iteration", "candidates", "spearman",
                                       "error_selected", "error_left"])


#: Mean Spearman rho from which the variance score counts as pointing at the model's errors.
MECHANISM_RHO = 0.3


def mechanism_summary(frame: pd.DataFrame) -> dict[str, Any]:
    """Mean rho over seeds and iterations, the share of positive rhos, and whether the
    mechanism is present (mean rho >= :data:`MECHANISM_RHO`); nan / None without data."""
    rho = frame["spearman"].dropna()
    if rho.empty:
        return {"mean_spearman": math.nan, "positive_share": math.nan, "n": 0, "present": None}
    mean = float(rho.mean())
    return {"mean_spearman": mean, "positive_share": float((rho > 0).mean()), "n": int(rho.size),
            "present": bool(mean >= MECHANISM_RHO)}


def verdict(curves: pd.DataFrame, task: str, *,
            baseline: Convergence | bool | None = None,
            mechanism: Mapping[str, Any] | None = None, metric: str = "val_dice") -> str:
    """Three-way verdict (:func:`covidlib.verdict.three_way_verdict`) on P3's claim that
    variance selection beats random, on ``metric`` (validation Dice, as P3 reports):
    ``reproduced``; ``not reproduced`` with a converged ``baseline`` and the ``mechanism``
    (:func:`mechanism_summary`) present or absent; ``inconclusive`` when the baseline has not
    converged or was not trained (None)."""
    gaps = _gaps(curves, task, metric)
    parts = []
    for it, g in gaps[gaps["iteration"] > 0].groupby("iteration"):
        wins = int((g["gap"] > 0).sum())
        ties = int((g["gap"] == 0).sum())
        tied = f", tied in {ties}" if ties else ""
        parts.append(f"iteration {it}: mean gap {g['gap'].mean():+.3f} "
                     f"(variance better in {wins} of {len(g)} seed(s){tied})")
    sub = gaps[gaps["iteration"] > 0]
    if not len(sub):
        return f"{task}: inconclusive: no selection round was run, so nothing is compared"
    mean_gap = float(sub["gap"].mean())
    holds = mean_gap > 0.01 and bool((sub["gap"] > 0).mean() > 0.5)
    if holds:
        order = "MC-dropout variance selection beats random selection, as in P3"
    elif mean_gap < -0.01:
        order = "random selection beats MC-dropout variance selection"
    else:
        order = "the two strategies are within 0.01 Dice of each other or alternate"
    if baseline is None:
        baseline = Convergence(False, math.nan, None, math.nan,
                               "no fully supervised baseline was trained")
    mech = mechanism or {}
    rho = mech.get("mean_spearman", math.nan)
    what = "validation" if metric == "val_dice" else "test"
    detail = (f"{order} (mean {what} Dice gap over selection rounds and seeds {mean_gap:+.3f}; "
              f"mean Spearman rho of P3 score vs error {rho:+.2f}); " + "; ".join(parts))
    v = three_way_verdict(holds, baseline, mech.get("present"), detail,
                          mechanism="mechanism (variance points at the model's errors)")
    return f"{task}: {v.text}"


def baseline_convergence(res: P3Results, task: str) -> Convergence | None:
    """:func:`baseline_converged` of ``task``'s fully supervised baseline (the first seed's
    that has not converged when several were trained); None when none was trained."""
    out = [baseline_converged(r["curve"]) for (t, _), r in sorted(res.reference.items())
           if t == task and r.get("curve")]
    if not out:
        return None
    return next((c for c in out if not c.converged), out[0])


def scorecard_entries(res: P3Results, task: str = "heart", device: str = "cpu",
                      mechanism: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``paper``, ``ours`` and ``verdict`` of P3-F2, P3-headline and P3-F3 for
    :func:`covidlib.report.scorecard.record` (heart task, mean over seeds). P3 quotes
    validation Dice, so ours is validation Dice too. ``mechanism``: the task's
    :func:`mechanism_summary` (computed when not given)."""
    curves = res.curves
    summ = _summary(curves, task, "val_dice").set_index(["strategy", "iteration"])["mean"]
    sub = curves[curves["task"] == task]
    last = int(sub["iteration"].max())
    it2 = min(2, last)
    fig2 = paper_values.artifact("P3-F2")
    head_paper = paper_values.artifact("P3-headline")["values"]
    pts = {str(p["iteration"]): p for p in fig2["points"]}

    def at(strategy: str, it: int) -> float:
        return round(float(summ.get((strategy, it), float("nan"))), 4)

    f2_paper = {"it. 2 active": pts["2"]["active"], "it. 2 random": pts["2"]["random"],
                "last active": pts["last"]["active"], "last random": pts["last"]["random"]}
    f2_ours = {f"it. {it2} active": at("variance", it2), f"it. {it2} random": at("random", it2),
               f"last ({last}) active": at("variance", last),
               f"last ({last}) random": at("random", last)}
    share = float(sub[sub["iteration"] == it2]["fraction_of_all"].iloc[0])
    ref = [r["val_dice"] for (t, _), r in res.reference.items() if t == task]
    head_ours: dict[str, Any] = {"labelled share": round(share, 3),
                                 "active val. Dice there": at("variance", it2)}
    if ref:
        full = float(np.mean(ref))
        head_ours["val. Dice, whole pool labelled"] = round(full, 4)
        ratio = at("variance", it2) / full if full > 0 else float("nan")
        head_verdict = (f"with {share:.0%} of the volumes labelled, variance selection reaches "
                        f"{ratio:.0%} of the validation Dice of the whole pool")
    else:
        head_verdict = (f"with {share:.0%} of the volumes labelled (P3: "
                        f"{head_paper['labelled_fraction']:.0%}), variance selection reaches "
                        f"validation Dice {at('variance', it2):.2f} (P3: {pts['2']['active']}); "
                        "this profile trains no whole-pool reference")
    mech = mechanism_summary(mechanism_frame(res, task, device)) if mechanism is None \
        else mechanism
    shown = res.split["test"][:2]
    return {
        "P3-F2": {"paper": f2_paper, "ours": f2_ours,
                  "verdict": verdict(curves, task, baseline=baseline_convergence(res, task),
                                     mechanism=mech)},
        "P3-headline": {"paper": {"labelled share": head_paper["labelled_fraction"],
                                  "active val. Dice there": pts["2"]["active"]},
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


_METRIC_WORDS = {"val_dice": "validation Dice", "dice": "test Dice"}


def plot_dice_curves(curves: pd.DataFrame, task: str, paper: Mapping[str, Any] | None = None,
                     reference: Mapping[tuple[str, int], Mapping[str, Any]] | None = None,
                     metric: str = "val_dice") -> Figure:
    """P3 Fig. 2: validation (``metric="val_dice"``, what P3 plots) or test (``"dice"``) Dice
    of the target class vs iteration, active vs random, mean over seeds with a min-max band;
    with ``paper``, a second panel holds P3's quoted (validation) numbers."""
    if metric not in _METRIC_WORDS:
        raise ValueError(f"p3: metric={metric!r} must be one of {sorted(_METRIC_WORDS)}")
    summ = _summary(curves, task, metric)
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
        key = "val_dice" if metric == "val_dice" else "test_target_dice_mean"
        vals = [r[key] for (t, _), r in reference.items() if t == task]
        if vals:
            ax.axhline(float(np.mean(vals)), color="0.4", ls="--", lw=1.2,
                       label="all pool volumes labelled")
    ax.set_xticks(its, [f"{i}\n({labelled[i]} vol.)" for i in its])
    ax.set_xlabel("active-learning iteration (labelled volumes)")
    ax.set_ylabel(f"{_METRIC_WORDS[metric]} ({task})")
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
        ref = _paper_settings()
        sizes = [min(ref["initial_labelled"] + i * ref["per_iteration"], ref["train"])
                 for i in range(last_x + 1)]
        ax2.set_xticks(range(last_x + 1), [f"{i}{' = last' if i == last_x else ''}\n({n} vol.)"
                                           for i, n in enumerate(sizes)])
        ax2.set_xlim(-0.4, 3.6)
        ax2.set_ylim(0, 1)
        ax2.grid(alpha=0.3)
        ax2.set_xlabel("iteration (labelled volumes, our reading)")
        ax2.set_title("P3 Fig. 2, numbers quoted in Sec. III (LCTSC)", fontsize=10)
        ax2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def figure2(res: P3Results, task: str, metric: str = "val_dice") -> Figure:
    """:func:`plot_dice_curves` of ``task``; for the heart's validation Dice with P3's quoted
    (validation) numbers beside it. Test Dice is ours only (P3 quotes none)."""
    paper = paper_values.artifact("P3-F2") if task == "heart" and metric == "val_dice" else None
    return plot_dice_curves(res.curves, task, paper, res.reference, metric)


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
