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

The loop is the active-learning core :class:`covidlib.active_loop.ActiveLoop`; this module
gives it P1's parts (:class:`RegionLearner`, :class:`RegionHeuristic`, and the pool and oracle
of :mod:`covidlib.active_pools`, :func:`region_loop`). The configuration, data, model and loss
live in :mod:`covidlib.active_data`; all are re-exported here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidlib import active_data
from covidlib import checkpoint as _ckpt
from covidlib.acquisition import (
    score_images,
    select_random_regions,
    select_regions,
)
from covidlib.active_data import *  # noqa: F403  (re-exported below)
from covidlib.active_data import (
    ALConfig,
    ALData,
    RegionLabelDataset,
    _predictions,
    _rng,
    _seed,
    _test_scores,
    figure_indices,
    load_al_data,
    make_loss,
    make_model,
)
from covidlib.active_loop import (
    STATE_FORMAT,
    STATE_NAME,
    WORK_PREFIX,
    ActiveLoop,
    Learner,
    Pool,
    Query,
    Selection,
    Trained,
    load_state,
    open_state,
)
from covidlib.active_pools import RegionOracle, RegionPools
from covidlib.cache import config_hash
from covidlib.data.oracle import (
    full_effort_seconds,
)
from covidlib.engine import (
    FitResult,
    evaluate,
    fit,
    resolve_device,
)

__all__ = [
    *active_data.__all__,
    "STATE_FORMAT",
    "STATE_NAME",
    "RegionHeuristic",
    "RegionLearner",
    "RegionOracle",
    "RegionPools",
    "load_state",
    "region_loop",
    "run_active_learning",
]

_FIT_PREFIX = WORK_PREFIX
_open_state = open_state


def _save_state(ck_dir: Path, state: dict[str, Any]) -> None:
    _ckpt.save(state, ck_dir / STATE_NAME)


# --------------------------------------------------------------------------------------------
# P1's parts of the active-learning core (covidlib.active_loop)
# --------------------------------------------------------------------------------------------


Callback = Callable[[str, dict[str, Any]], None]


def _check_data(cfg: ALConfig, data: ALData) -> None:
    """``data`` must be the slices ``cfg`` asks for (dataset and resolution); a dataset given
    as the path of its manifest YAML is known by the manifest's name."""
    from covidlib.data.manifest import load_manifest

    name = data.fingerprint.get("name")
    if name != cfg.dataset and name != load_manifest(cfg.dataset).name:
        raise ValueError(f"run_active_learning: data of {data.fingerprint.get('name')!r} given "
                         f"for a run on {cfg.dataset!r}")
    if tuple(data.masks.shape[1:]) != (cfg.size, cfg.size):
        raise ValueError(f"run_active_learning: data at {tuple(data.masks.shape[1:])} pixels "
                         f"given for a run at size {cfg.size}")


@dataclass
class RegionHeuristic:
    """P1's region selection as the loop's heuristic (P1 Sec. 3, "Model Training"): the
    ``n`` images with the best unlabelled region by MC-dropout ``entropy`` or ``bald``
    (:func:`~covidlib.acquisition.score_images`, :func:`~covidlib.acquisition.select_regions`)
    give that region each; ``random`` draws images and regions
    (:func:`~covidlib.acquisition.select_random_regions`)."""

    cfg: ALConfig
    images: Any
    device: Any

    def __call__(self, trained: Trained, pool: Pool, n: int, cycle: int) -> Selection:
        assert isinstance(pool, RegionPools)
        cfg = self.cfg
        if cfg.heuristic == "random":
            picks = select_random_regions(pool.labelled, n, _rng(cfg.seed, cycle, "random"))
            return Selection([Query(p, None) for p in picks])
        cand = pool.candidates
        images = torch.utils.data.Subset(self.images, cand.tolist())
        scores = score_images(trained.model, images, cfg.n_samples, heuristic=cfg.heuristic,
                              n_regions=pool.boxes, reduce=cfg.reduce, head_only=cfg.head_only,
                              seed=_seed(cfg.seed, cycle, "mc"),
                              batch_size=cfg.score_batch_size, device=self.device)
        assert isinstance(scores, np.ndarray) and trained.model is not None
        local = select_regions(scores, n, pool.labelled[cand])
        return Selection([Query((int(cand[i]), k), float(scores[i, k])) for i, k in local])


class RegionLearner(Learner):
    """P1's network in the loop: trained on the labelled regions with P1 Eq. 1 (warm-started
    from the last cycle when configured, best validation epoch kept), scored on the test
    split (Dice, IoU, PPV, Sens., Spec.)."""

    def __init__(self, cfg: ALConfig, data: ALData, device: torch.device, chash: str,
                 emit: Callback) -> None:
        self.cfg, self.data, self.device, self.chash, self.emit = cfg, data, device, chash, emit
        self.loss_fn = make_loss(cfg.loss_balance, cfg.n_regions)
        self.fig_idx = figure_indices(data.test_masks, cfg.figure_slices)
        self.figure: dict[str, Any] = {
            "size": cfg.size, "indices": self.fig_idx,
            "refs": [list(data.test.refs[i]) for i in self.fig_idx], "pred": []}
        self.initial: list[int] = []

    def train(self, pool: Pool, cycle: int, previous: Mapping[str, torch.Tensor] | None,
              work_dir: Path | None) -> Trained:
        assert isinstance(pool, RegionPools)
        cfg, emit = self.cfg, self.emit
        train_idx = pool.training_images
        if train_idx.size == 0:
            raise ValueError("run_active_learning: no labelled image to train on; use "
                             "initial_images >= 1")
        torch.manual_seed(_seed(cfg.seed, cycle, "init"))
        model = make_model(cfg)
        if cfg.warm_start and previous is not None:
            model.load_state_dict(previous)
        res = fit(
            model, self.loss_fn, RegionLabelDataset(self.data.train, pool.label_maps,
                                                    train_idx, cfg.epoch_items),
            self.data.val, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
            device=self.device, seed=_seed(cfg.seed, cycle, "fit"), checkpoint_dir=work_dir,
            early_stopping_patience=cfg.patience, progress=False,
            on_epoch_end=lambda e, _r, c=cycle: emit("epoch", {"cycle": c, "epoch": e}),
            config={"p1_run": self.chash, "cycle": cycle, "labels": pool.labels_digest()},
        )
        weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return Trained(model, weights, {"fit": res, "train_idx": train_idx})

    def evaluate(self, trained: Trained, pool: Pool, cycle: int) -> dict[str, Any]:
        assert isinstance(pool, RegionPools) and trained.model is not None
        res: FitResult = trained.info["fit"]
        test = _test_scores(evaluate(trained.model, self.data.test, self.device,
                                     max(self.cfg.batch_size, 8)))
        return {
            "cycle": cycle,
            "n_labelled_regions": pool.n_labelled_regions,
            "n_training_images": int(trained.info["train_idx"].size),
            "seconds": pool.ledger.total,
            "pools": pool.counts(),
            "test": test,
            "val_dice": None if math.isnan(res.best_score) else float(res.best_score),
            "best_epoch": res.best_epoch,
            "epochs": res.epochs_completed,
            "selected": [], "selected_kinds": [], "selected_scores": [],
        }

    def note_answer(self, record: dict[str, Any], query: Query, answer: Any,
                    cost: float) -> None:
        record["selected"].append(list(query.unit))
        record["selected_kinds"].append(answer.kind)
        record["selected_scores"].append(query.score)

    def finish(self, trained: Trained, cycle: int) -> None:
        assert trained.model is not None
        self.figure["pred"] = _predictions(trained.model, self.data.test, self.fig_idx,
                                           self.device, max(self.cfg.batch_size, 8))

    def extras(self) -> dict[str, Any]:
        return {"initial": self.initial, "figure": self.figure}

    def load_extras(self, state: Mapping[str, Any]) -> None:
        self.initial = list(state["initial"])
        if state.get("figure") is not None:
            self.figure = state["figure"]

    def postfix(self, record: Mapping[str, Any]) -> dict[str, str]:
        dice = record["test"]["dice"]
        return {"dice": "nan" if dice is None else f"{dice:.3f}",
                "s": f"{record['seconds']:.0f}"}


def _label_initial(cfg: ALConfig, data: ALData, pools: RegionPools) -> list[int]:
    """Cycle 0's labels: ``initial_images`` images drawn at random, every region labelled
    (P1 Implementation Details)."""
    n_train = len(data.train)
    rng0 = _rng(cfg.seed, 0, "initial")
    k0 = min(cfg.initial_images, n_train)
    initial = sorted(int(i) for i in rng0.choice(n_train, size=k0, replace=False))
    for i in initial:
        pools.label_image(i, data.masks[i], cfg.supervision, rng0)
    return initial


def region_loop(cfg: ALConfig, data: ALData, device: torch.device,
                checkpoint_dir: Path | None = None, callback: Callback | None = None
                ) -> ActiveLoop:
    """P1's run as an :class:`~covidlib.active_loop.ActiveLoop` (pool, learner, heuristic,
    oracle), resumed from ``checkpoint_dir`` or with the initial images labelled."""
    emit = callback if callback is not None else (lambda _e, _i: None)
    conf = cfg.to_dict()
    pools = RegionPools(len(data.train), (cfg.size, cfg.size), cfg.n_regions)
    learner = RegionLearner(cfg, data, device, config_hash(conf), emit)
    budget = cfg.budget_seconds

    def over_budget(pool: Pool, _cycle: int) -> bool:
        return budget is not None and pools.ledger.total >= budget

    loop = ActiveLoop(pools, learner, RegionHeuristic(cfg, data.train, device),
                      RegionOracle(data.masks, pools.boxes, cfg.supervision, cfg.seed),
                      per_cycle=cfg.per_cycle, cycles=cfg.cycles, config=conf,
                      checkpoint_dir=checkpoint_dir, stop=over_budget,
                      on_cycle=lambda c, r: emit("cycle", {"cycle": c, "record": r}))
    if not loop.resume():
        learner.initial = _label_initial(cfg, data, pools)
    elif pools.labelled.shape[0] != len(data.train):  # pragma: no cover (load_state_dict)
        raise ValueError(f"{checkpoint_dir}: state does not fit the data")
    return loop


def run_active_learning(
    cfg: ALConfig | Mapping[str, Any],
    data_root: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    *,
    device: str | torch.device = "auto",
    callback: Callback | None = None,
    data: ALData | None = None,
    model_path: str | Path | None = None,
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
        model_path: where to write the last cycle's weights (a verified checkpoint,
            :func:`covidlib.checkpoint.save`; load them into :func:`make_model` of ``cfg``).

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
    loop = region_loop(cfg, data, dev, ck_dir, callback)
    loop.run(progress, desc=f"AL {cfg.heuristic} K={cfg.n_regions}")
    if model_path is not None:
        _ckpt.save(loop.weights, Path(model_path))
    assert isinstance(loop.pool, RegionPools) and isinstance(loop.learner, RegionLearner)
    return _result(cfg, data, loop.pool, loop.records, loop.learner.figure, loop.timing,
                   loop.learner.initial)


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
