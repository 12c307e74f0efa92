"""Volume-level active learning with MC-dropout variance (P3, Rahimi et al.).

P3 trains a 3D U-Net on a few labelled CT volumes, scores every unlabelled volume by the
summed per-voxel variance of T Monte-Carlo dropout predictions (P3 Eq. 1) and asks the expert
to label the most uncertain volumes; random selection is the baseline (P3 Fig. 2).

* The loop is the active-learning core :class:`covidlib.active_loop.ActiveLoop`; this module
  gives it P3's parts: :class:`VolumePool` (whole volumes), :class:`VolumeLearner` (one
  cached training round per cycle), :class:`VolumeHeuristic` and :class:`VolumeOracle`.
* P3 Eq. 1 and the volume score are :func:`covidlib.acquisition.mc_variance_score` and
  :func:`covidlib.acquisition.volume_variance_score`; :func:`volume_scores` runs a trained
  model's T MC-dropout passes over a set of volumes and scores each. The acquisition rules
  (:func:`~covidlib.acquisition.select_top_k`, :func:`~covidlib.acquisition.select_random`)
  and the mechanism check (:func:`~covidlib.acquisition.score_error_correlation`) live in
  :mod:`covidlib.acquisition`; the volumes on a fixed grid in :mod:`covidlib.data.volumes`;
  all are re-exported here.
* :func:`run_volume_al`: the loop. Every round (one training on the current labelled set) is
  cached in a :class:`~covidlib.cache.ResultCache` under the hash of its full configuration
  and the labelled sets that led to it, with its weights in ``checkpoint_root/<hash>/``;
  training inside a round resumes from the engine's per-epoch checkpoint. A stopped run
  therefore continues at the epoch it reached, and a finished one is read back without
  training. Two strategies with the same seed share their first round (same initial set).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from covidlib import checkpoint as _ckpt
from covidlib.acquisition import (
    score_error_correlation,
    select_random,
    select_top_k,
    volume_variance_score,
)
from covidlib.active_loop import ActiveLoop, Learner, Pool, Query, Selection, Trained
from covidlib.cache import ResultCache, config_hash
from covidlib.data.volumes import Volume, VolumeDataset, prepare_volume, relabel, resample_image
from covidlib.engine import fit, resolve_device, supervised_loss
from covidlib.losses.dice_ce import DiceCELoss
from covidlib.metrics import per_class_dice
from covidlib.models import mc_predict

__all__ = [
    "LOSSES",
    "STRATEGIES",
    "Volume",
    "VolumeDataset",
    "VolumeHeuristic",
    "VolumeLearner",
    "VolumeOracle",
    "VolumePool",
    "cached_round",
    "make_loss",
    "mc_samples",
    "predict_volume",
    "prepare_volume",
    "relabel",
    "resample_image",
    "round_weights",
    "run_volume_al",
    "score_error_correlation",
    "select_random",
    "select_top_k",
    "training_curve",
    "volume_dice",
    "volume_scores",
]

STRATEGIES = ("variance", "random")
"""``variance``: top-k of the summed MC-dropout variance (P3); ``random``: the baseline."""

ROUND_KIND = "p3_round"
SCORE_KIND = "p3_scores"
WEIGHTS_NAME = "model.pt"


LOSSES = ("dice_ce", "combo")
"""``dice_ce``: MONAI's DiceCELoss (Dice averaged over the foreground classes, pooled over the
batch, + cross-entropy); ``combo``: covidlib's P4 Eq. 1 combo loss (one soft Dice over all
foreground voxels + cross-entropy), identical in kind for two classes and free of MONAI's
import time. P3 does not name its loss."""


def make_loss(name: str) -> nn.Module:
    """The criterion ``loss(logits (B, C, ...), target (B, ...))`` called ``name``."""
    if name == "dice_ce":
        return DiceCELoss()
    if name == "combo":
        from covidlib.losses import ComboLoss

        return ComboLoss(reduction="mean", dice_classes="foreground", smooth=1e-5)
    raise ValueError(f"make_loss: unknown loss {name!r}; choose one of {LOSSES}")


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


def predict_volume(model: nn.Module, volume: Volume, device: str | torch.device = "cpu"
                   ) -> torch.Tensor:
    """Softmax probabilities ``(C, D, H, W)`` (CPU, float32) of the whole volume, eval mode."""
    dev = resolve_device(device)
    model.to(dev).eval()
    with torch.no_grad():
        logits = model(volume.image[None].to(dev))
    return torch.softmax(logits.float(), dim=1)[0].cpu()


def mc_samples(model: nn.Module, volume: Volume, n_samples: int, *, seed: int,
               device: str | torch.device = "cpu") -> torch.Tensor:
    """``n_samples`` MC-dropout softmax maps ``(T, C, D, H, W)`` of one volume (P3 Sec. II)."""
    dev = resolve_device(device)
    model.to(dev)
    out = mc_predict(model, volume.image[None].to(dev), n_samples, seed=seed)
    return out[:, 0].float().cpu()


def volume_scores(
    model: nn.Module,
    volumes: Sequence[Volume],
    *,
    n_samples: int = 5,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, float]:
    """P3's uncertainty score of each volume: T MC-dropout passes -> Eq. 1 -> sum over voxels.

    Sample ``i`` of every volume uses the dropout masks of ``torch.manual_seed(seed + i)``.
    """
    out: dict[str, float] = {}
    for v in tqdm(volumes, desc="MC scores", leave=False, disable=not progress):
        samples = mc_samples(model, v, n_samples, seed=seed, device=device)
        out[v.case_id] = float(volume_variance_score(samples, class_axis=1))
    return out


def volume_dice(model: nn.Module, volumes: Sequence[Volume], target: int,
                device: str | torch.device = "cpu") -> dict[str, float]:
    """Dice of class ``target`` of the model's (eval-mode, argmax) prediction, per volume."""
    return {v.case_id: per_class_dice(predict_volume(model, v, device).argmax(0), v.label,
                                      [target])[target] for v in volumes}


def _mean_dice(model: nn.Module, volumes: Sequence[Volume], target: int, device: Any) -> float:
    return float(np.mean(list(volume_dice(model, volumes, target, device).values())))


def training_curve(history: Sequence[Mapping[str, float]]) -> list[dict[str, float]]:
    """``epoch``, ``train_loss`` and ``val_dice`` (nan when not validated) of each epoch of a
    :func:`covidlib.engine.fit` history (JSON-able; no wall times, so runs compare equal)."""
    return [{"epoch": int(h["epoch"]), "train_loss": float(h["train_loss"]),
             "val_dice": float(h.get("val_dice", math.nan))} for h in history]


# --------------------------------------------------------------------------------------------
# The active-learning loop
# --------------------------------------------------------------------------------------------


def _derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] % 2**31)


def _train_round(cfg: Mapping[str, Any], labelled: Sequence[str], volumes: Mapping[str, Volume],
                 split: Mapping[str, Sequence[str]], make_model: Callable[[], nn.Module],
                 init_state: Mapping[str, torch.Tensor] | None, ck_dir: Path, device: Any,
                 seed: int, progress: bool) -> dict[str, Any]:
    """One training on ``labelled`` (P3 "Network Training"), scored on val and test."""
    torch.manual_seed(seed)
    model = make_model()
    if init_state is not None:
        model.load_state_dict(init_state)
    target = int(cfg["target_class"])
    val = [volumes[c] for c in split["val"]]
    res = fit(
        model,
        supervised_loss(make_loss(str(cfg.get("loss", "dice_ce")))),
        VolumeDataset([volumes[c] for c in labelled], cfg["patch"],
                      int(cfg.get("patches_per_volume", 1))),
        None,
        epochs=int(cfg["epochs"]),
        lr=float(cfg["lr"]),
        batch_size=int(cfg["batch_size"]),
        device=device,
        seed=seed,
        checkpoint_dir=ck_dir / "fit",
        val_fn=lambda m: {"dice": _mean_dice(m, val, target, device)},
        progress=progress,
        config={"round": config_hash(cfg)},
    )
    model.load_state_dict(res.best_state)
    classes = list(range(1, int(cfg["n_classes"])))
    test = {}
    for cid in split["test"]:
        pred = predict_volume(model, volumes[cid], device).argmax(0)
        dice = per_class_dice(pred, volumes[cid].label, classes)
        test[cid] = {str(k): d for k, d in dice.items()}
    _ckpt.save({k: v.cpu() for k, v in model.state_dict().items()}, ck_dir / WEIGHTS_NAME)
    shutil.rmtree(ck_dir / "fit", ignore_errors=True)  # the round is finished: no resume needed
    tgt = [t[str(target)] for t in test.values()]
    return {
        "labelled": sorted(labelled),
        "best_epoch": res.best_epoch,
        "val_dice": res.best_score,
        "test_dice": test,
        "test_target_dice_mean": float(np.mean(tgt)),
        "test_target_dice_std": float(np.std(tgt)),
        "epochs": res.epochs_completed,
        "curve": training_curve(res.history),
        "seconds_train": float(sum(h.get("seconds", 0.0) for h in res.history)),
    }


def cached_round(
    cfg: Mapping[str, Any],
    labelled: Sequence[str],
    volumes: Mapping[str, Volume],
    split: Mapping[str, Sequence[str]],
    make_model: Callable[[], nn.Module],
    init_state: Mapping[str, torch.Tensor] | None = None,
    *,
    cache: ResultCache,
    checkpoint_root: str | Path,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> tuple[dict[str, Any], str]:
    """One training round identified by ``cfg``: read back when finished (result cached and
    weights present), else trained (resuming an interrupted fit). Returns (result, hash); the
    weights lie in ``checkpoint_root/<hash>/model.pt`` (:func:`round_weights`)."""
    rhash = config_hash(cfg)
    ck_dir = Path(checkpoint_root) / rhash
    result = cache.get(ROUND_KIND, cfg)
    if result is None or not (ck_dir / WEIGHTS_NAME).exists():
        result = _train_round(cfg, labelled, volumes, split, make_model, init_state, ck_dir,
                              resolve_device(device), seed, progress)
        cache.put(ROUND_KIND, cfg, result)
    return result, rhash


def _round_config(base: Mapping[str, Any], seed: int, history: list[list[str]],
                  warm_start: bool) -> dict[str, Any]:
    # a cold-started round depends on its labelled set only; a warm-started one on all sets
    hist = history if warm_start else history[-1:]
    return {**base, "seed": seed, "history": [sorted(h) for h in hist]}


def _check_loop_inputs(volumes: Mapping[str, Volume], split: Mapping[str, Sequence[str]],
                       initial: Sequence[str], strategy: str, config: Mapping[str, Any],
                       warm_without_epochs: bool) -> None:
    """The argument checks of :func:`run_volume_al` (each error names the bad value)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"run_volume_al: strategy={strategy!r} is not one of {STRATEGIES}")
    for key in ("pool", "val", "test"):
        if key not in split or not split[key]:
            raise ValueError(f"run_volume_al: split has no {key!r} volumes")
    missing = sorted({c for k in ("pool", "val", "test") for c in split[k]} - set(volumes))
    if missing:
        raise ValueError(f"run_volume_al: split names volumes that were not prepared: {missing}")
    if not initial or not set(initial) <= set(split["pool"]):
        raise ValueError("run_volume_al: the initial labelled set must be a non-empty pool subset")
    for name in ("target_class", "n_classes", "epochs", "lr", "batch_size", "patch"):
        if name not in config:
            raise ValueError(f"run_volume_al: config has no {name!r}")
    if warm_without_epochs:
        raise ValueError("run_volume_al: warm_start needs warm_epochs")


class VolumePool(Pool):
    """P3's pool: whole volumes (case ids) of ``split["pool"]``, ``labelled`` the sorted ids
    whose masks the expert gave (P3 Sec. II)."""

    def __init__(self, ids: Sequence[str], initial: Sequence[str]) -> None:
        self.ids = list(ids)
        self.labelled = sorted(initial)

    def unlabelled(self) -> list[str]:
        return sorted(set(self.ids) - set(self.labelled))

    def label(self, unit: str, answer: Any) -> float:
        if unit not in self.ids or unit in self.labelled:
            raise ValueError(f"VolumePool: volume {unit!r} is not an unlabelled pool volume")
        self.labelled = sorted({*self.labelled, unit})
        return 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "labelled": list(self.labelled)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ids, self.labelled = list(state["ids"]), list(state["labelled"])


class VolumeOracle:
    """P3's expert, simulated: answers a volume with its ground-truth class map."""

    def __init__(self, volumes: Mapping[str, Volume]) -> None:
        self.volumes = volumes

    def __call__(self, queries: Sequence[Query], cycle: int) -> list[torch.Tensor]:
        return [self.volumes[q.unit].label for q in queries]


class VolumeLearner(Learner):
    """P3's network in the loop: one :func:`cached_round` per cycle (cold-started, or
    warm-started from the last round's weights with ``warm_epochs``, P3 Sec. I)."""

    def __init__(self, volumes: Mapping[str, Volume], split: Mapping[str, Sequence[str]],
                 make_model: Callable[[], nn.Module], base: Mapping[str, Any], seed: int,
                 cache: ResultCache, root: Path, device: Any, warm_epochs: int | None,
                 progress: bool) -> None:
        self.volumes, self.split, self.make_model, self.base = volumes, split, make_model, base
        self.seed, self.cache, self.root, self.device = seed, cache, root, device
        self.warm_epochs, self.progress = warm_epochs, progress
        self.history: list[list[str]] = []
        self.last_round: str | None = None

    def train(self, pool: Pool, cycle: int, previous: Mapping[str, torch.Tensor] | None,
              work_dir: Path | None) -> Trained:
        assert isinstance(pool, VolumePool)
        self.history.append(list(pool.labelled))
        warm = bool(self.base["warm_start"]) and cycle > 0
        epochs = int(self.warm_epochs) if warm else int(self.base["epochs"])  # type: ignore
        rcfg = _round_config({**self.base, "epochs": epochs}, self.seed, self.history,
                             bool(self.base["warm_start"]))
        init = round_weights(self.root, self.last_round) if warm and self.last_round else None
        result, rhash = cached_round(
            rcfg, pool.labelled, self.volumes, self.split, self.make_model, init,
            cache=self.cache, checkpoint_root=self.root, device=self.device, seed=self.seed,
            progress=self.progress)
        self.last_round = rhash
        return Trained(None, None, {"result": result, "round": rhash, "config": rcfg})

    def evaluate(self, trained: Trained, pool: Pool, cycle: int) -> dict[str, Any]:
        assert isinstance(pool, VolumePool)
        return {"iteration": cycle, "n_labelled": len(pool.labelled),
                **trained.info["result"], "round": trained.info["round"],
                "selected": [], "scores": None}

    def note_answer(self, record: dict[str, Any], query: Query, answer: Any,
                    cost: float) -> None:
        record["selected"] = sorted([*record["selected"], query.unit])


class VolumeHeuristic:
    """P3's acquisition as the loop's heuristic: ``variance`` ranks the unlabelled volumes by
    the summed MC-dropout variance (P3 Eq. 1, :func:`volume_scores`, cached under the round
    and the candidates) and takes the top ``n`` (:func:`select_top_k`); ``random`` draws
    ``n`` (:func:`select_random`, generator ``[seed, cycle, 5]``)."""

    def __init__(self, strategy: str, learner: VolumeLearner, n_samples: int) -> None:
        self.strategy, self.learner, self.n_samples = strategy, learner, n_samples

    def __call__(self, trained: Trained, pool: Pool, n: int, cycle: int) -> Selection:
        lr = self.learner
        remaining = pool.unlabelled()
        k = min(n, len(remaining))
        if self.strategy != "variance":
            chosen = select_random(remaining, k, np.random.default_rng([lr.seed, cycle, 5]))
            return Selection([Query(c) for c in chosen])
        scfg = {"round": trained.info["config"], "n_samples": self.n_samples,
                "candidates": remaining}

        def compute() -> dict[str, float]:
            model = lr.make_model()
            model.load_state_dict(round_weights(lr.root, trained.info["round"]))
            return volume_scores(model, [lr.volumes[c] for c in remaining],
                                 n_samples=self.n_samples, seed=_derived_seed(lr.seed, cycle, 3),
                                 device=lr.device, progress=lr.progress)

        scores = lr.cache.cached(SCORE_KIND, scfg, compute)
        return Selection([Query(c, scores[c]) for c in select_top_k(scores, k)],
                         {"scores": scores})


def run_volume_al(
    volumes: Mapping[str, Volume],
    split: Mapping[str, Sequence[str]],
    initial: Sequence[str],
    *,
    strategy: str,
    n_iterations: int,
    per_iteration: int,
    make_model: Callable[[], nn.Module],
    config: Mapping[str, Any],
    seed: int,
    cache: ResultCache,
    checkpoint_root: str | Path,
    n_samples: int = 5,
    warm_start: bool = False,
    warm_epochs: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """P3's loop: train on the labelled set, score the unlabelled pool, label the top
    ``per_iteration`` (or random ones), repeat ``n_iterations`` times.

    Args:
        volumes: every volume by id; ``split`` names the ``pool``, ``val`` and ``test`` ids.
        initial: the first labelled volumes (a subset of the pool).
        strategy: ``"variance"`` (P3 Eq. 1, top-k) or ``"random"``.
        config: JSON-able identity of the experiment; must hold ``target_class`` (the class
            whose Dice selects the epoch), ``n_classes``, ``epochs``, ``lr``, ``batch_size``
            and ``patch`` (None: whole volumes); optional ``patches_per_volume`` and ``loss``
            (:data:`LOSSES`, default ``dice_ce``). Results are cached under it.
        warm_start: fine-tune the previous round's weights (P3 Sec. I) instead of training
            from scratch (P3 Sec. II: "retrained"); ``warm_epochs`` then replaces ``epochs``.
        n_samples: T MC-dropout passes (P3: 5).

    Returns one record per iteration ``0..n_iterations`` (fewer when the pool runs out
    first): ``iteration``, ``n_labelled``,
    ``labelled``, test/val Dice (see :func:`_train_round`), ``selected`` (ids labelled next),
    ``scores`` (the pool's P3 scores, variance strategy only) and ``round`` (its cache hash).
    """
    _check_loop_inputs(volumes, split, initial, strategy, config,
                       warm_start and warm_epochs is None)
    base = {**config, "split": {k: list(split[k]) for k in ("pool", "val", "test")},
            "warm_start": bool(warm_start)}
    learner = VolumeLearner(volumes, split, make_model, base, seed, cache,
                            Path(checkpoint_root), resolve_device(device), warm_epochs, progress)
    loop = ActiveLoop(VolumePool(split["pool"], initial), learner,
                      VolumeHeuristic(strategy, learner, n_samples), VolumeOracle(volumes),
                      per_cycle=per_iteration, cycles=n_iterations)
    return loop.run(progress=False)


def round_weights(checkpoint_root: str | Path, round_hash: str) -> dict[str, torch.Tensor]:
    """The trained weights of a finished round (``record["round"]``)."""
    path = Path(checkpoint_root) / round_hash / WEIGHTS_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: weights of round {round_hash} are missing; run the experiment again "
            "(the round is retrained)")
    return _ckpt.load(path)  # verified (sha256); older files load unverified
