"""Region-based active learning with point supervision: the loop of P1 (Laradji et al.).

P1 (Sec. 3, Fig. 3) splits the training images into labelled :math:`X_l`, partially labelled
:math:`X_p` and unlabelled :math:`X_u` ones; every image is a grid of K regions
(:func:`covidlib.data.oracle.region_grid`). The loop (:func:`run_active_learning`):

1. initial set: ``initial_images`` images drawn at random, every region labelled (P1
   Implementation Details: 5 images, "all their regions were labeled based on the required
   supervision level");
2. each cycle: train until selection (at most ``epochs`` epochs, weights of the best
   validation Dice kept: P1 "The maximum number of training epochs in a cycle is 40 ... the
   model that achieved the best score on the validation set"), score the test set, score the
   images that still have unlabelled regions (:mod:`covidlib.acquisition`), label the best
   region of each of the ``per_cycle`` best images (or random ones), repeat;
3. stop after ``cycles`` cycles, when the labelling seconds reach ``budget_seconds`` or when
   every region is labelled.

The oracle (:mod:`covidlib.data.oracle`) answers a region with a "background" tag (the whole
region becomes background, 0) or one random point on the infection (1) for ``supervision =
"point"`` (P1 Sec. 5.1), or with the region's mask for ``"pixel"``; unlabelled pixels stay
:data:`~covidlib.data.oracle.IGNORE`. Costs (P1 Sec. 5.3): 3 s per tag or point, 3 s per
polygon vertex for a mask, in a :class:`~covidlib.data.oracle.LabelCostLedger`.

Resume: with a ``checkpoint_dir`` the whole state (labels, pools, ledger, records, weights,
random states) is written atomically after every cycle, and the engine's per-epoch checkpoint
covers the training inside a cycle. Every random choice (initial images, oracle clicks,
random regions, dropout masks, data order) comes from a generator seeded by ``(seed, cycle,
purpose)``, so a run killed at any moment and started again ends with exactly the results of
an uninterrupted run on CPU.

The configuration, data, model and loss live in :mod:`covidlib.active_data`, the pools in
:mod:`covidlib.active_pools`; both are re-exported here.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from covidlib import checkpoint as _ckpt
from covidlib.acquisition import (
    score_images,
    select_random_regions,
    select_regions,
)
from covidlib.active_data import (
    LOSS_BALANCES,
    SUPERVISIONS,
    ALConfig,
    ALData,
    BalancedPointBatchLoss,
    RegionLabelDataset,
    _predictions,
    _rng,
    _seed,
    _test_scores,
    balanced_point_loss,
    decode_mask,
    encode_mask,
    evenly_spaced,
    figure_indices,
    load_al_data,
    make_loss,
    make_model,
    region_index_map,
    training_curve,
)
from covidlib.active_pools import RegionPools
from covidlib.cache import config_hash
from covidlib.data.oracle import (
    full_effort_seconds,
)
from covidlib.engine import (
    FitResult,
    _restore_rng,
    _rng_state,
    evaluate,
    fit,
    resolve_device,
    supervised_loss,
)
from covidlib.losses import structure_loss

__all__ = [
    "LOSS_BALANCES",
    "STATE_NAME",
    "SUPERVISIONS",
    "ALConfig",
    "ALData",
    "BalancedPointBatchLoss",
    "RegionLabelDataset",
    "RegionPools",
    "balanced_point_loss",
    "decode_mask",
    "encode_mask",
    "evenly_spaced",
    "figure_indices",
    "load_al_data",
    "load_state",
    "make_loss",
    "make_model",
    "region_index_map",
    "run_active_learning",
    "train_fully_supervised",
    "training_curve",
]

STATE_NAME = "al_state.pt"
STATE_FORMAT = "covidlib.active.state/1"
_FIT_PREFIX = "fit-cycle"


# --------------------------------------------------------------------------------------------
# State file
# --------------------------------------------------------------------------------------------


def load_state(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """The state written by :func:`run_active_learning` in ``checkpoint_dir`` (None if none):
    ``config``, ``cycle`` (last finished), ``done``, ``pools``, ``records``, ``model``
    (weights after that cycle), ``rng`` and, once done, ``result``."""
    path = Path(checkpoint_dir) / STATE_NAME
    if not path.exists():
        return None
    try:  # verified: length and sha256 (covidlib.checkpoint; older files load unverified)
        state = _ckpt.load(path)
    except _ckpt.CorruptCheckpointError as exc:
        raise _ckpt.CorruptCheckpointError(
            path, f"{exc.reason}; the active-learning state cannot be used: delete the folder "
            "to start again") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise RuntimeError(f"{path}: not an active-learning state ({STATE_FORMAT})")
    return state


def _save_state(ck_dir: Path, state: dict[str, Any]) -> None:
    _ckpt.save(state, ck_dir / STATE_NAME)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


Callback = Callable[[str, dict[str, Any]], None]


def _check_data(cfg: ALConfig, data: ALData) -> None:
    """``data`` must be the slices ``cfg`` asks for (dataset and resolution)."""
    if data.fingerprint.get("name") != cfg.dataset:
        raise ValueError(f"run_active_learning: data of {data.fingerprint.get('name')!r} given "
                         f"for a run on {cfg.dataset!r}")
    if tuple(data.masks.shape[1:]) != (cfg.size, cfg.size):
        raise ValueError(f"run_active_learning: data at {tuple(data.masks.shape[1:])} pixels "
                         f"given for a run at size {cfg.size}")


def _select(cfg: ALConfig, pools: RegionPools, model: nn.Module, data: ALData, cycle: int,
            device: Any) -> tuple[list[tuple[int, int]], list[float | None]]:
    """The regions labelled after ``cycle`` and their scores (None for random)."""
    if cfg.heuristic == "random":
        picks = select_random_regions(pools.labelled, cfg.per_cycle,
                                      _rng(cfg.seed, cycle, "random"))
        return picks, [None] * len(picks)
    cand = pools.candidates
    images = torch.utils.data.Subset(data.train, cand.tolist())
    scores = score_images(model, images, cfg.n_samples, heuristic=cfg.heuristic,
                          n_regions=pools.boxes, reduce=cfg.reduce, head_only=cfg.head_only,
                          seed=_seed(cfg.seed, cycle, "mc"), batch_size=cfg.score_batch_size,
                          device=device)
    assert isinstance(scores, np.ndarray)
    local = select_regions(scores, cfg.per_cycle, pools.labelled[cand])
    return ([(int(cand[i]), k) for i, k in local],
            [float(scores[i, k]) for i, k in local])


@dataclass
class _ALRun:
    """The state :func:`run_active_learning` carries from cycle to cycle (what its state
    file holds, plus the fixed inputs)."""

    cfg: ALConfig
    conf: dict[str, Any]
    chash: str
    data: ALData
    device: torch.device
    ck_dir: Path | None
    emit: Callback
    pools: RegionPools
    records: list[dict[str, Any]]
    timing: list[dict[str, float]]
    model_state: dict[str, torch.Tensor] | None
    start: int
    initial: list[int]
    figure: dict[str, Any] = field(default_factory=dict)
    fig_idx: list[int] = field(default_factory=list)
    loss_fn: nn.Module | None = None


def _open_state(ck_dir: Path | None, chash: str) -> dict[str, Any] | None:
    """Prepare ``ck_dir`` and read its state (None: none yet, or no ``ck_dir``); a state of
    another configuration raises ``ValueError``."""
    if ck_dir is None:
        return None
    if ck_dir.exists() and not ck_dir.is_dir():
        raise NotADirectoryError(f"{ck_dir}: checkpoint_dir exists and is not a folder")
    ck_dir.mkdir(parents=True, exist_ok=True)
    _ckpt.remove_dead_temps(ck_dir)  # left by killed writers; a live run's stay
    state = load_state(ck_dir)
    if state is not None and state.get("config_hash") != chash:
        raise ValueError(f"{ck_dir / STATE_NAME}: written by another configuration "
                         f"({state.get('config')}); use another checkpoint_dir or delete it")
    return state


def _start_run(cfg: ALConfig, data: ALData, device: torch.device, ck_dir: Path | None,
               emit: Callback, state: dict[str, Any] | None) -> _ALRun:
    """Cycle 0's pools (the initial images, every region labelled: P1 Implementation
    Details), or the pools, records, weights and RNGs of a resumed ``state``."""
    conf = cfg.to_dict()
    n_train = len(data.train)
    if state is None:
        pools = RegionPools(n_train, (cfg.size, cfg.size), cfg.n_regions)
        rng0 = _rng(cfg.seed, 0, "initial")
        k0 = min(cfg.initial_images, n_train)
        initial = sorted(int(i) for i in rng0.choice(n_train, size=k0, replace=False))
        for i in initial:
            pools.label_image(i, data.masks[i], cfg.supervision, rng0)
        run = _ALRun(cfg, conf, config_hash(conf), data, device, ck_dir, emit, pools,
                     [], [], None, 0, initial)
    else:
        pools = RegionPools.from_state_dict(state["pools"])
        run = _ALRun(cfg, conf, config_hash(conf), data, device, ck_dir, emit, pools,
                     list(state["records"]), list(state["timing"]), state["model"],
                     int(state["cycle"]) + 1, list(state["initial"]))
        _restore_rng(state["rng"])
        if pools.labelled.shape[0] != n_train:
            raise ValueError(f"{ck_dir}: state holds {pools.labelled.shape[0]} pool images, "
                             f"the data {n_train}")
    run.loss_fn = make_loss(cfg.loss_balance, cfg.n_regions)
    run.fig_idx = fig_idx = figure_indices(data.test_masks, cfg.figure_slices)
    run.figure = {"size": cfg.size, "indices": fig_idx,
                  "refs": [list(data.test.refs[i]) for i in fig_idx], "pred": []}
    if state is not None and state.get("figure") is not None:
        run.figure = state["figure"]
    return run


def _fit_dir(run: _ALRun, cycle: int) -> Path | None:
    """The engine's checkpoint folder of ``cycle`` (other cycles' folders are removed)."""
    if run.ck_dir is None:
        return None
    fit_dir = run.ck_dir / f"{_FIT_PREFIX}{cycle:04d}"
    for old in run.ck_dir.glob(f"{_FIT_PREFIX}*"):
        if old != fit_dir:
            shutil.rmtree(old, ignore_errors=True)
    return fit_dir


def _train_cycle(run: _ALRun, cycle: int, train_idx: np.ndarray, fit_dir: Path | None
                 ) -> tuple[nn.Module, FitResult]:
    """Train a model on the labelled regions (warm-started when configured)."""
    cfg, pools, data = run.cfg, run.pools, run.data
    torch.manual_seed(_seed(cfg.seed, cycle, "init"))
    model = make_model(cfg)
    if cfg.warm_start and run.model_state is not None:
        model.load_state_dict(run.model_state)
    emit = run.emit
    res = fit(
        model, run.loss_fn, RegionLabelDataset(data.train, pools.label_maps, train_idx,
                                               cfg.epoch_items),
        data.val, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, device=run.device,
        seed=_seed(cfg.seed, cycle, "fit"), checkpoint_dir=fit_dir,
        early_stopping_patience=cfg.patience, progress=False,
        on_epoch_end=lambda e, _r, c=cycle: emit("epoch", {"cycle": c, "epoch": e}),
        config={"p1_run": run.chash, "cycle": cycle, "labels": pools.labels_digest()},
    )
    return model, res


def _score_cycle(run: _ALRun, cycle: int, model: nn.Module, res: FitResult,
                 train_idx: np.ndarray) -> dict[str, Any]:
    """The cycle's record: pools, labelling cost so far and the test scores."""
    pools = run.pools
    test = _test_scores(evaluate(model, run.data.test, run.device, max(run.cfg.batch_size, 8)))
    return {
        "cycle": cycle,
        "n_labelled_regions": pools.n_labelled_regions,
        "n_training_images": int(train_idx.size),
        "seconds": pools.ledger.total,
        "pools": pools.counts(),
        "test": test,
        "val_dice": None if math.isnan(res.best_score) else float(res.best_score),
        "best_epoch": res.best_epoch,
        "epochs": res.epochs_completed,
        "selected": [], "selected_kinds": [], "selected_scores": [],
    }


def _is_last(run: _ALRun, cycle: int) -> bool:
    """The last cycle: ``cycles`` reached, labelling budget spent or no candidate left."""
    cfg, pools = run.cfg, run.pools
    budget_hit = cfg.budget_seconds is not None and pools.ledger.total >= cfg.budget_seconds
    return cycle == cfg.cycles or budget_hit or pools.candidates.size == 0


def _label_selected(run: _ALRun, cycle: int, model: nn.Module, record: dict[str, Any]) -> None:
    """Select the next regions with the heuristic, ask the oracle, note them in ``record``."""
    cfg, pools, data = run.cfg, run.pools, run.data
    picks, scores = _select(cfg, pools, model, data, cycle, run.device)
    rng = _rng(cfg.seed, cycle, "oracle")
    for (i, k), s in zip(picks, scores, strict=True):
        answer, _cost = pools.label_region(i, k, data.masks[i], cfg.supervision, rng)
        record["selected"].append([i, k])
        record["selected_kinds"].append(answer.kind)
        record["selected_scores"].append(s)


def _record_cycle(run: _ALRun, cycle: int, model: nn.Module, last: bool,
                  fit_dir: Path | None) -> dict[str, Any] | None:
    """Keep the cycle's weights and write the state file (atomically); the run's result
    when ``last``."""
    run.model_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    result = None
    if last:
        result = _result(run.cfg, run.data, run.pools, run.records, run.figure, run.timing,
                         run.initial)
    if run.ck_dir is not None:
        _save_state(run.ck_dir, {
            "format": STATE_FORMAT, "config": run.conf, "config_hash": run.chash,
            "cycle": cycle, "done": last, "initial": run.initial,
            "pools": run.pools.state_dict(), "records": run.records, "timing": run.timing,
            "figure": run.figure, "model": run.model_state, "rng": _rng_state(),
            "result": result, "torch_version": str(torch.__version__),
        })
        if fit_dir is not None:
            shutil.rmtree(fit_dir, ignore_errors=True)
    return result


def _run_cycle(run: _ALRun, cycle: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One cycle: train, score, then label the next regions (or draw the figure's
    predictions after the last); its record and, after the last cycle, the result."""
    t0 = time.perf_counter()
    train_idx = run.pools.training_images
    if train_idx.size == 0:
        raise ValueError("run_active_learning: no labelled image to train on; use "
                         "initial_images >= 1")
    fit_dir = _fit_dir(run, cycle)
    model, res = _train_cycle(run, cycle, train_idx, fit_dir)
    t_train = time.perf_counter() - t0
    record = _score_cycle(run, cycle, model, res, train_idx)
    t1 = time.perf_counter()
    last = _is_last(run, cycle)
    if not last:
        _label_selected(run, cycle, model, record)
    else:
        run.figure["pred"] = _predictions(model, run.data.test, run.fig_idx,
                                          run.device, max(run.cfg.batch_size, 8))
    run.records.append(record)
    run.timing.append({"cycle": cycle, "train_s": round(t_train, 3),
                       "select_s": round(time.perf_counter() - t1, 3),
                       "total_s": round(time.perf_counter() - t0, 3)})
    return record, _record_cycle(run, cycle, model, last, fit_dir)


def run_active_learning(
    cfg: ALConfig | Mapping[str, Any],
    data_root: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    *,
    device: str | torch.device = "auto",
    callback: Callback | None = None,
    data: ALData | None = None,
) -> dict[str, Any]:
    """Run P1's region-based active learning (see the module docstring); resumable.

    Args:
        cfg: an :class:`ALConfig` or a mapping of its fields.
        data_root: where the dataset lies (None: ``COVIDLIB_DATA_PATH``).
        checkpoint_dir: folder of the state file (``al_state.pt``, replaced atomically after
            every cycle) and of the engine's per-epoch checkpoint of the running cycle. A run
            with the same configuration continues from it; a finished run returns its result
            without computing. A state of another configuration raises ``ValueError``.
        progress: a progress bar over the cycles.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        callback: ``callback(event, info)`` with event ``"epoch"`` (info: cycle, epoch) after
            each epoch's checkpoint and ``"cycle"`` (info: cycle, record) after each cycle's
            state was written; it must not draw from the global random generators.
        data: the prepared slices (default: :func:`load_al_data` of the config).

    Returns:
        ``{"config", "records", "n_train", "n_val", "n_test", "n_train_split", "ledger",
        "figure", "data", "timing"}``. ``records`` has one entry per trained cycle: ``cycle``,
        ``n_labelled_regions``, ``seconds`` (labelling cost so far), ``pools`` (sizes of
        X_l, X_p, X_u), ``test`` (Dice, IoU, PPV, Sens., Spec. summed over the test split),
        ``val_dice``, ``best_epoch``, ``epochs``, then ``selected`` / ``selected_kinds`` /
        ``selected_scores`` (the regions labelled after the cycle). ``timing`` holds wall
        times (the only part that differs between identical runs).
    """
    cfg = ALConfig.from_mapping(cfg)
    dev = resolve_device(device)
    if data is None:
        data = load_al_data(cfg.dataset, cfg.split, cfg.size, cfg.max_slices, data_root)
    _check_data(cfg, data)
    ck_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state = _open_state(ck_dir, config_hash(cfg.to_dict()))
    if state is not None and state.get("done"):
        return copy.deepcopy(state["result"])
    emit = callback if callback is not None else (lambda _e, _i: None)
    run = _start_run(cfg, data, dev, ck_dir, emit, state)
    bar = tqdm(total=cfg.cycles + 1, initial=run.start, unit="cycle",
               desc=f"AL {cfg.heuristic} K={cfg.n_regions}", disable=not progress)
    try:
        for cycle in range(run.start, cfg.cycles + 1):
            record, result = _run_cycle(run, cycle)
            bar.update(1)
            dice = record["test"]["dice"]
            bar.set_postfix({"dice": "nan" if dice is None else f"{dice:.3f}",
                             "s": f"{run.pools.ledger.total:.0f}"})
            emit("cycle", {"cycle": cycle, "record": record})
            if result is not None:
                return result
    finally:
        bar.close()
    raise AssertionError("unreachable: the last cycle returns")  # pragma: no cover


def _result(cfg: ALConfig, data: ALData, pools: RegionPools, records: list[dict[str, Any]],
            figure: dict[str, Any], timing: list[dict[str, float]], initial: list[int]
            ) -> dict[str, Any]:
    return copy.deepcopy({
        "config": cfg.to_dict(),
        "data": data.fingerprint,
        "records": records,
        "initial_images": initial,
        "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
        "n_train_split": data.n_train_split,
        "ledger": pools.ledger.to_dict(),
        "label_seconds": pools.ledger.total,
        "full_effort_seconds": full_effort_seconds(len(data.train)),
        "figure": figure,
        "timing": timing,
    })


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
) -> dict[str, Any]:
    """P1's upper bound: the same network trained on every pool image with its full mask and
    the structure loss (weighted BCE + IoU of F3Net, P1 Sec. 5.3), best validation epoch.

    Its cost is the full labelling effort, ``N x 96 s`` (:func:`full_effort_seconds`).
    Returns ``{"test", "val_dice", "best_epoch", "epochs", "history", "n_train",
    "full_effort_seconds", "figure", "timing"}``; ``history`` is the training curve
    (:func:`training_curve`).
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
    return {
        "test": test,
        "val_dice": None if math.isnan(res.best_score) else float(res.best_score),
        "best_epoch": res.best_epoch,
        "epochs": res.epochs_completed,
        "history": training_curve(res.history),
        "n_train": len(data.train),
        "n_train_split": data.n_train_split,
        "full_effort_seconds": full_effort_seconds(len(data.train)),
        "figure": {"size": cfg.size, "indices": idx,
                   "refs": [list(data.test.refs[i]) for i in idx],
                   "pred": _predictions(model, data.test, idx, dev, max(cfg.batch_size, 8))},
        "timing": {"total_s": round(time.perf_counter() - t0, 3)},
    }
