"""P1's public entry point: region-based active learning (or its fully supervised baseline,
``supervision="full"``) on any dataset and split.

:func:`train_p1` runs P1's loop (Laradji et al., Sec. 3: K regions per slice, MC-dropout
entropy / BALD / random selection, point or per-pixel region labels) on any dataset covidlib
opens (shipped, or your own manifest) with a profile's settings and your overrides, and
returns the trained network plus its scores on any number of test sets from that one
training. The P1 chapters (:mod:`covidlib.experiments.p1`) run through it. Runs are cached
in a :class:`~covidlib.cache.ResultCache` under their full configuration (run settings, code
version, the data's fingerprint); the last cycle's weights lie beside the result in
``<results_dir>/p1_models/<hash>.pt``. Re-exported by :mod:`covidlib.experiments.p1`.

Example::

    from covidlib.experiments.p1 import train_p1
    run = train_p1("ma20-slices", "mixed", heuristic="entropy", profile="cpu",
                   test_sets=[("ma20-slices", "sep", "test"), ("synthetic", ["synth_003"])])
    run.model, run.scores["ma20-slices/sep/test"]["dice"], run.result["records"][-1]["test"]
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from covidlib import checkpoint as _ckpt
from covidlib.active import (
    ALConfig,
    ALData,
    _check_data,
    _predictions,
    _seed,
    _test_scores,
    figure_indices,
    load_al_data,
    make_model,
    run_active_learning,
    training_curve,
)
from covidlib.cache import ResultCache, config_hash
from covidlib.data.api import open_dataset
from covidlib.data.oracle import full_effort_seconds
from covidlib.data.torch_datasets import SliceDataset
from covidlib.engine import fit, resolve_device, supervised_loss
from covidlib.evaluate import evaluate
from covidlib.experiments.p1_settings import P1Settings, _data, al_config, settings
from covidlib.losses import structure_loss

__all__ = [
    "FULL_FIELDS",
    "KIND_AL",
    "KIND_FULL",
    "SUPERVISIONS",
    "VERSION",
    "P1Run",
    "full_model_path",
    "load_test_set",
    "model_path",
    "run_al",
    "run_full",
    "score_test_sets",
    "train_fully_supervised",
    "train_p1",
]

VERSION = "p1/2"
"""Part of every cached config: bump it when a change alters results."""
KIND_AL = "p1_al"
KIND_FULL = "p1_full"
MODELS = "p1_models"

TestSet = tuple[str, str] | tuple[str, str, str] | tuple[str, Sequence[str]]
"""``(dataset, split)``: the split's test part; ``(dataset, split, part)``: its ``train``,
``val`` or ``test`` part (capped like the run's own parts); ``(dataset, [case ids])``: every
labelled slice of those cases. :func:`train_p1` also takes P2's form, a mapping ``name ->
part`` or ``name -> TestSet(part, dataset, split, refs)``
(:class:`covidlib.experiments.p2.TestSet`)."""


# --------------------------------------------------------------------------------------------
# Cached runs
# --------------------------------------------------------------------------------------------


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


def _al_key(cfg: ALConfig, data_root: str | Path | None) -> dict[str, Any]:
    """The cache key of one AL run: code version, run settings, the data's fingerprint."""
    return {"version": VERSION, "run": cfg.to_dict(), "data": _data(cfg, data_root).fingerprint}


def model_path(results_dir: str | Path, cfg: ALConfig, data_root: str | Path | None = None
               ) -> Path:
    """Where :func:`run_al` keeps the last cycle's weights of ``cfg`` (``keep_model``)."""
    return Path(results_dir) / MODELS / f"{config_hash(_al_key(cfg, data_root))}.pt"


def run_al(cfg: ALConfig, *, data_root: str | Path | None = None,
           results_dir: str | Path | None = None, device: str = "auto",
           progress: bool = False, weights_to: str | Path | None = None) -> dict[str, Any]:
    """One active-learning run, cached by its configuration and the data's fingerprint
    (device excluded: a GPU result is reused on a CPU). While it runs its state is
    checkpointed in ``<results_dir>/p1_checkpoints/<hash>/`` after every cycle;
    ``weights_to``: write the last cycle's weights there when the run is computed."""
    data = _data(cfg, data_root)
    return _cached(KIND_AL, _al_key(cfg, data_root), lambda ck: run_active_learning(
        cfg, data_root, ck, progress, device=device, data=data, model_path=weights_to),
        results_dir)


FULL_FIELDS = ("dataset", "split", "model", "model_kwargs", "size", "max_slices",
               "batch_size", "lr", "patience", "figure_slices", "seed")
"""The run fields the fully supervised baseline reads (its cache key holds exactly these)."""


def _full_key(cfg: ALConfig, epochs: int, data_root: str | Path | None) -> dict[str, Any]:
    """The cache key of one fully supervised run: code version, the fields it reads
    (:data:`FULL_FIELDS`), ``epochs``, the data's fingerprint."""
    return {"version": VERSION, "full": {k: getattr(cfg, k) for k in FULL_FIELDS},
            "epochs": int(epochs), "data": _data(cfg, data_root).fingerprint}


def full_model_path(results_dir: str | Path, cfg: ALConfig, epochs: int,
                    data_root: str | Path | None = None) -> Path:
    """Where :func:`run_full` keeps the weights of ``cfg`` trained ``epochs`` epochs."""
    return Path(results_dir) / MODELS / f"{config_hash(_full_key(cfg, epochs, data_root))}.pt"


def run_full(cfg: ALConfig, epochs: int, *, data_root: str | Path | None = None,
             results_dir: str | Path | None = None, device: str = "auto",
             progress: bool = False, weights_to: str | Path | None = None) -> dict[str, Any]:
    """The fully supervised upper bound of ``cfg``'s data and network, cached;
    ``weights_to``: write the trained weights there when the run is computed."""
    data = _data(cfg, data_root)
    return _cached(KIND_FULL, _full_key(cfg, epochs, data_root), lambda ck: (
        train_fully_supervised(cfg, epochs, data_root, ck, progress, device=device, data=data,
                               model_path=weights_to)), results_dir)


# --------------------------------------------------------------------------------------------
# The fully supervised upper bound (P1 Sec. 5.3)
# --------------------------------------------------------------------------------------------


def train_fully_supervised(
    cfg: ALConfig | Mapping[str, Any],
    epochs: int,
    data_root: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
    *,
    device: str | torch.device = "auto",
    data: ALData | None = None,
    model_path: str | Path | None = None,
) -> dict[str, Any]:
    """P1's upper bound: the same network trained on every pool image with its full mask and
    the structure loss (weighted BCE + IoU of F3Net, P1 Sec. 5.3), best validation epoch.

    Its cost is the full labelling effort, ``N x 96 s`` (:func:`full_effort_seconds`).
    Returns ``{"test", "val_dice", "best_epoch", "epochs", "history", "n_train",
    "full_effort_seconds", "figure", "timing"}``; ``history`` is the training curve
    (:func:`training_curve`). ``model_path``: where to write the trained weights (a
    verified checkpoint, :mod:`covidlib.checkpoint`).
    """
    cfg = ALConfig.from_mapping(cfg)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"train_fully_supervised: epochs={epochs!r} must be an integer >= 1")
    dev = resolve_device(device)
    if data is None:
        data = load_al_data(cfg.dataset, cfg.split, cfg.size, cfg.max_slices, data_root)
    _check_data(cfg, data)
    t0 = time.perf_counter()
    torch.manual_seed(_seed(cfg.seed, 0, "init"))
    model = make_model(cfg)
    res = fit(model, supervised_loss(structure_loss), data.train, data.val, epochs=epochs,
              lr=cfg.lr, batch_size=cfg.batch_size, device=dev, seed=_seed(cfg.seed, "full"),
              checkpoint_dir=checkpoint_dir, early_stopping_patience=cfg.patience,
              progress=progress, config={"p1_full": config_hash(cfg.to_dict())})
    test = _test_scores(evaluate(model, data.test, dev, max(cfg.batch_size, 8)))
    idx = figure_indices(data.test_masks, cfg.figure_slices)
    figure = {"size": cfg.size, "indices": idx, "refs": [list(data.test.refs[i]) for i in idx],
              "pred": _predictions(model, data.test, idx, dev, max(cfg.batch_size, 8))}
    if model_path is not None:
        _ckpt.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                   Path(model_path))
    return {
        "test": test,
        "val_dice": None if math.isnan(res.best_score) else float(res.best_score),
        "best_epoch": res.best_epoch,
        "epochs": res.epochs_completed,
        "history": training_curve(res.history),
        "n_train": len(data.train),
        "n_train_split": data.n_train_split,
        "full_effort_seconds": full_effort_seconds(len(data.train)),
        "figure": figure,
        "timing": {"total_s": round(time.perf_counter() - t0, 3)},
    }


# --------------------------------------------------------------------------------------------
# Test sets
# --------------------------------------------------------------------------------------------


def _as_tuple(spec: Any, cfg: ALConfig) -> Any:
    """P2's form ``part`` or ``TestSet(part, dataset, split, refs)`` as P1's tuple."""
    if isinstance(spec, str):
        return (cfg.dataset, cfg.split, spec)
    if all(hasattr(spec, a) for a in ("part", "dataset", "split", "refs")):
        dataset = str(spec.dataset or cfg.dataset)
        if spec.refs is not None:
            return (dataset, tuple(spec.refs))
        return (dataset, str(spec.split or cfg.split), spec.part)
    return spec


def _slices_of(dataset: str, refs: Sequence[Any], cfg: ALConfig,
               data_root: str | Path | None) -> tuple[str, Dataset]:
    """Every slice of the case ids in ``refs``, or the ``(case_id, z)`` pairs it holds."""
    ds = open_dataset(dataset, data_root)
    cases = {c.case_id: c for c in ds.cases()}
    ids = sorted({str(r[0]) if isinstance(r, tuple | list) else str(r) for r in refs})
    unknown = sorted(set(ids) - set(cases))
    if unknown or not ids:
        raise ValueError(f"train_p1: test set of {dataset!r}: unknown case id(s) {unknown} "
                         "(or none given)")
    unlabelled = [c for c in ids if cases[c].mask is None]
    if unlabelled:
        raise ValueError(f"train_p1: test set of {dataset!r}: case(s) {unlabelled} have no "
                         "infection mask to score against")
    pairs = [(str(r[0]), int(r[1])) for r in refs if isinstance(r, tuple | list)]
    refs_ = pairs or [(c, z) for c in ids for z in range(cases[c].n_slices)]
    return f"{dataset}/{len(ids)} cases", SliceDataset(
        cases, refs_, cfg.size, infection_labels=ds.manifest.infection_labels, progress=False)


def load_test_set(spec: TestSet, cfg: ALConfig, data_root: str | Path | None = None
                  ) -> tuple[str, Dataset]:
    """``(name, slices)`` of one test set (see :data:`TestSet`) at the run's resolution."""
    if not isinstance(spec, tuple | list) or len(spec) not in (2, 3) or not isinstance(
            spec[0], str):
        raise ValueError(f"train_p1: test set {spec!r}: give (dataset, split), (dataset, split, "
                         "part) or (dataset, [case ids])")
    dataset = spec[0]
    if len(spec) == 2 and not isinstance(spec[1], str):
        return _slices_of(dataset, list(spec[1]), cfg, data_root)
    part = spec[2] if len(spec) == 3 else "test"
    if part not in ("train", "val", "test"):
        raise ValueError(f"train_p1: test set {spec!r}: part {part!r} is not train, val or test")
    data = load_al_data(dataset, str(spec[1]), cfg.size, cfg.max_slices, data_root)
    return f"{dataset}/{spec[1]}/{part}", getattr(data, part)


def score_test_sets(model: nn.Module, cfg: ALConfig,
                    test_sets: Sequence[TestSet] | Mapping[str, Any], *,
                    data_root: str | Path | None = None, device: str = "auto"
                    ) -> dict[str, dict[str, float | None]]:
    """Dice, IoU, PPV, Sens., Spec. (summed over each set, P1 Sec. 4.2) and per-volume means
    of ``model`` on each test set, by name (the mapping's keys, else ``dataset/split/part``
    or ``dataset/N cases``)."""
    items = (list(test_sets.items()) if isinstance(test_sets, Mapping)
             else [(None, t) for t in test_sets])
    out: dict[str, dict[str, float | None]] = {}
    dev = resolve_device(device)
    for key, spec in items:
        name, ds = load_test_set(_as_tuple(spec, cfg), cfg, data_root)
        scores = evaluate(model, ds, dev, max(cfg.batch_size, 8))
        out[key or name] = {k: None if isinstance(v, float) and np.isnan(v) else float(v)
                            for k, v in scores.items()}
    return out


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------


@dataclass
class P1Run:
    """What :func:`train_p1` returns: the run's ``config``, its ``result``
    (:func:`covidlib.active.run_active_learning`: per-cycle records, labelling costs; with
    ``supervision="full"`` :func:`train_fully_supervised`'s), the last cycle's ``model``
    (None with ``keep_model=False``) and its ``scores`` per test set."""

    config: ALConfig
    result: dict[str, Any]
    model: nn.Module | None = None
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)


def _load_model(cfg: ALConfig, path: Path) -> nn.Module:
    model = make_model(cfg)
    model.load_state_dict(_ckpt.load(path))  # verified (sha256)
    return model.eval()


def _with_model(cfg: ALConfig, run: Callable[[Path | None], dict[str, Any]],
                path: Path | None, recompute: Callable[[Path], Any]
                ) -> tuple[dict[str, Any], nn.Module]:
    """Run (or read back) ``cfg`` and load its weights from ``path`` (None: a temporary
    file); a cached result without weights is computed once more by ``recompute(path)``
    (same numbers) to get them."""
    if path is None:
        with tempfile.TemporaryDirectory(prefix="covidlib-p1-") as tmp:
            result = run(Path(tmp) / "model.pt")
            return result, _load_model(cfg, Path(tmp) / "model.pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    result = run(path)
    if not path.exists():  # cached by a run that did not keep its weights
        recompute(path)
    return result, _load_model(cfg, path)


SUPERVISIONS = ("point", "pixel", "full")
"""``train_p1``'s supervision: region AL with point or per-pixel region labels, or the fully
supervised baseline (every pool slice with its full mask, P1 Sec. 5.3)."""


def _full_run(dataset: str, split: str, s: P1Settings, seed: int,
              changes: Mapping[str, Any]) -> ALConfig:
    """The run settings of the fully supervised baseline: the AL run's, with the baseline's
    early stopping (``full_patience``); ``changes`` may only name :data:`FULL_FIELDS`."""
    unused = sorted(set(changes) - set(FULL_FIELDS))
    if unused:
        raise ValueError(f"train_p1: supervision='full' does not read the run field(s) "
                         f"{unused}; it reads {list(FULL_FIELDS)} (its epochs and patience "
                         "are the settings full_epochs and full_patience)")
    return al_config(dataset, split, s, seed=seed, **{"patience": s.full_patience, **changes})


def train_p1(dataset: str, split: str, *, heuristic: str = "entropy", profile: str = "cpu",
             overrides: Mapping[str, Any] | None = None, seed: int = 0,
             supervision: str = "point",
             test_sets: Sequence[TestSet] | Mapping[str, Any] = (),
             keep_model: bool = True, data_root: str | Path | None = None,
             results_dir: str | Path | None = None, device: str = "auto",
             progress: bool = False, **changes: Any) -> P1Run:
    """Train P1's region active learning (or its fully supervised baseline) on
    ``dataset``'s ``split`` and score it.

    Args:
        dataset, split: any dataset covidlib opens and one of its splits (manifest).
        heuristic: ``"entropy"`` (P1), ``"bald"`` or ``"random"`` (unused when ``"full"``).
        profile, overrides: the settings (:data:`covidlib.experiments.p1.PROFILES`;
            ``overrides`` maps :class:`~covidlib.experiments.p1_settings.P1Settings` field
            names to values, validated: an unknown name or bad value -> ``SettingsError``).
        seed, supervision: the run's seed; ``"point"`` (P1) or ``"pixel"`` region labels,
            or ``"full"``: the fully supervised baseline (P1 Sec. 5.3: every pool slice
            with its full mask, structure loss, ``full_epochs`` epochs with early stopping
            after ``full_patience``; ``result`` is :func:`train_fully_supervised`'s).
        test_sets: where to score the trained network (:data:`TestSet`, or P2's mapping
            ``name -> part | TestSet``); the run's own test split is always scored in
            ``result["records"]`` (every cycle; ``result["test"]`` when ``"full"``).
        keep_model: return the network (its weights are kept beside the cached result).
        changes: run fields replaced after the profile (e.g. ``n_regions=16, cycles=2``;
            with ``"full"`` only :data:`FULL_FIELDS`).
        results_dir: the results cache (None: compute, keep nothing).
    """
    if supervision not in SUPERVISIONS:
        raise ValueError(f"train_p1: supervision={supervision!r} is not one of "
                         f"{list(SUPERVISIONS)}")
    s = settings(profile, overrides)
    if supervision == "full":
        cfg = _full_run(dataset, split, s, seed, changes)
        epochs = s.full_epochs

        def run(weights: Path | None) -> dict[str, Any]:
            return run_full(cfg, epochs, data_root=data_root, results_dir=results_dir,
                            device=device, progress=progress, weights_to=weights)

        def recompute(path: Path) -> Any:
            return train_fully_supervised(cfg, epochs, data_root, None, False, device=device,
                                          data=_data(cfg, data_root), model_path=path)

        path = None if results_dir is None else full_model_path(results_dir, cfg, epochs,
                                                                data_root)
    else:
        cfg = al_config(dataset, split, s, heuristic=heuristic, seed=seed,
                        supervision=supervision, **changes)

        def run(weights: Path | None) -> dict[str, Any]:
            return run_al(cfg, data_root=data_root, results_dir=results_dir, device=device,
                          progress=progress, weights_to=weights)

        def recompute(path: Path) -> Any:
            return run_active_learning(cfg, data_root, None, False, data=_data(cfg, data_root),
                                       model_path=path)

        path = None if results_dir is None else model_path(results_dir, cfg, data_root)
    if not keep_model and not test_sets:
        return P1Run(cfg, run(None))
    result, model = _with_model(cfg, run, path, recompute)
    scores = score_test_sets(model, cfg, test_sets, data_root=data_root, device=device)
    return P1Run(cfg, result, model if keep_model else None, scores)
