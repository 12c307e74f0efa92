"""Volume-level active learning with MC-dropout variance (P3, Rahimi et al.).

P3 trains a 3D U-Net on a few labelled CT volumes, scores every unlabelled volume by the
summed per-voxel variance of T Monte-Carlo dropout predictions (P3 Eq. 1) and asks the expert
to label the most uncertain volumes; random selection is the baseline (P3 Fig. 2).

* P3 Eq. 1 and the volume score are :func:`covidlib.acquisition.mc_variance_score` and
  :func:`covidlib.acquisition.volume_variance_score`; :func:`volume_scores` runs a trained
  model's T MC-dropout passes over a set of volumes and scores each.
* :func:`select_top_k` / :func:`select_random`: the two acquisition rules.
* :func:`score_error_correlation`: the mechanism P3's rule rests on, measured: Spearman's rank
  correlation between the volumes' scores and the current model's error (1 - Dice) on them.
* :func:`prepare_volume`: HU window to [0, 1] and resampling to a fixed grid (anti-aliased
  linear for the image, nearest for the labels, via scikit-image); :class:`VolumeDataset`
  serves whole volumes or random patches to :func:`covidlib.engine.fit`.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.transform import resize
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from covidlib import checkpoint as _ckpt
from covidlib.acquisition import volume_variance_score
from covidlib.cache import ResultCache, config_hash
from covidlib.data.types import Case
from covidlib.engine import fit, resolve_device, supervised_loss
from covidlib.losses.dice_ce import DiceCELoss
from covidlib.metrics import per_class_dice
from covidlib.models import mc_predict

__all__ = [
    "LOSSES",
    "STRATEGIES",
    "Volume",
    "VolumeDataset",
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


# --------------------------------------------------------------------------------------------
# Acquisition
# --------------------------------------------------------------------------------------------


def _check_k(k: int, n: int, who: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"{who}: k={k!r} must be an integer >= 0")
    if k > n:
        raise ValueError(f"{who}: k={k} but only {n} unlabelled volume(s) remain")


def select_top_k(scores_by_id: Mapping[str, float], k: int) -> list[str]:
    """The ``k`` ids with the highest score (P3: "select 5 images with the highest total
    uncertainties"); ties go to the smaller id so the choice is deterministic."""
    _check_k(k, len(scores_by_id), "select_top_k")
    for cid, s in scores_by_id.items():
        if not isinstance(s, int | float) or math.isnan(float(s)):
            raise ValueError(f"select_top_k: score of {cid!r} is {s!r}, not a number")
    ranked = sorted(scores_by_id, key=lambda c: (-float(scores_by_id[c]), c))
    return ranked[:k]


def score_error_correlation(scores_by_id: Mapping[str, float],
                            dice_by_id: Mapping[str, float]) -> float:
    """Spearman's rank correlation between each volume's P3 score and the model's error
    ``1 - Dice`` on it (does the score point at the volumes the model gets wrong?).

    Both mappings must name the same volumes. Fewer than 3 volumes, or constant scores or
    errors, give nan (no ranking to compare).
    """
    if set(scores_by_id) != set(dice_by_id):
        raise ValueError(
            "score_error_correlation: scores and Dice name different volumes "
            f"({sorted(set(scores_by_id) ^ set(dice_by_id))})")
    ids = sorted(scores_by_id)
    s = np.array([float(scores_by_id[c]) for c in ids])
    d = np.array([float(dice_by_id[c]) for c in ids])
    for name, arr in (("score", s), ("Dice", d)):
        if not np.isfinite(arr).all():
            bad = [c for c, x in zip(ids, arr, strict=True) if not np.isfinite(x)]
            raise ValueError(f"score_error_correlation: {name} of {bad} is not finite")
    if (d < 0).any() or (d > 1).any():
        raise ValueError("score_error_correlation: Dice values must lie in [0, 1]")
    if len(ids) < 3 or np.ptp(s) == 0 or np.ptp(d) == 0:
        return math.nan
    from scipy.stats import spearmanr

    return float(spearmanr(s, 1.0 - d).statistic)


def select_random(candidates: Sequence[str], k: int, rng: np.random.Generator) -> list[str]:
    """``k`` ids drawn uniformly without replacement (the random baseline of P3 Fig. 2)."""
    if len(set(candidates)) != len(candidates):
        raise ValueError("select_random: candidates hold duplicate ids")
    _check_k(k, len(candidates), "select_random")
    pool = sorted(candidates)
    return sorted(pool[i] for i in rng.choice(len(pool), size=k, replace=False))


# --------------------------------------------------------------------------------------------
# Volumes on a fixed grid
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Volume:
    """One preprocessed volume: ``image`` (1, D, H, W) float32 in [0, 1], ``label`` (D, H, W)
    int64 class map, ``spacing`` (z, y, x) mm of the grid, ``source_shape`` before resampling."""

    case_id: str
    image: torch.Tensor
    label: torch.Tensor
    spacing: tuple[float, float, float]
    source_shape: tuple[int, int, int]


def relabel(labels: np.ndarray, classes: Mapping[int, Sequence[int]], where: str = "labels"
            ) -> np.ndarray:
    """Map source label values to training classes: ``classes = {1: [6], 2: [2, 7], ...}``
    sends every value listed under ``k`` to ``k``; everything else becomes 0 (background)."""
    lab = np.asarray(labels)
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"{where}: integer labels expected, got dtype {lab.dtype}")
    out = np.zeros(lab.shape, dtype=np.int64)
    seen: set[int] = set()
    for k, values in classes.items():
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"{where}: class index {k!r} must be an integer >= 1")
        for v in values:
            if v in seen:
                raise ValueError(f"{where}: source label {v} is mapped to two classes")
            seen.add(int(v))
            out[lab == v] = k
    return out


def _source_labels(case: Case, source: str) -> np.ndarray:
    arr = {"organs": case.organs, "infection": case.mask}.get(source, "bad")
    if isinstance(arr, str):
        raise ValueError(f"prepare_volume: source={source!r} must be 'organs' or 'infection'")
    if arr is None:
        raise ValueError(
            f"case {case.case_id}: has no {source} mask "
            f"({'Organ_Mask' if source == 'organs' else 'Infection_Mask'}); this task needs it"
        )
    return arr


def _check_case(case: Case) -> np.ndarray:
    where = f"case {case.case_id}"
    if case.intensity != "hu":
        raise ValueError(f"{where}: volume AL needs HU volumes, got intensity {case.intensity!r}")
    img = np.asarray(case.image)
    if img.ndim != 3:
        raise ValueError(f"{where}: image of shape {img.shape}, expected (Z, H, W)")
    return img


def _check_grid(grid: Sequence[int]) -> tuple[int, int, int]:
    out = tuple(int(g) for g in grid)
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"prepare_volume: grid={tuple(grid)!r} must be three positive sizes")
    return out  # type: ignore[return-value]


def resample_image(case: Case, grid: Sequence[int],
                   window: tuple[float, float] = (-1000.0, 400.0)) -> torch.Tensor:
    """``(1, D, H, W)`` float32: HU clipped to ``window`` and scaled to [0, 1], resampled to
    ``grid`` linearly with Gaussian anti-aliasing (``skimage.transform.resize``)."""
    img = _check_case(case)
    grid = _check_grid(grid)
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"prepare_volume: window={window!r} needs lo < hi")
    if not np.isfinite(img).all():
        raise ValueError(f"case {case.case_id}: image holds nan or inf")
    unit = ((np.clip(img, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    out = resize(unit, grid, order=1, anti_aliasing=True, preserve_range=True)
    return torch.from_numpy(out.astype(np.float32))[None]


def prepare_volume(
    case: Case,
    grid: Sequence[int],
    *,
    source: str,
    classes: Mapping[int, Sequence[int]],
    window: tuple[float, float] = (-1000.0, 400.0),
    image: torch.Tensor | None = None,
) -> Volume:
    """HU window -> [0, 1], resample image and labels to ``grid`` (D, H, W).

    The image goes through :func:`resample_image` (pass ``image`` to reuse one already
    resampled), the labels are resampled by nearest neighbour; ``source`` picks
    ``case.organs`` or ``case.mask`` and ``classes`` maps its values to training classes
    (:func:`relabel`).
    """
    img = _check_case(case)
    grid = _check_grid(grid)
    labels = relabel(_source_labels(case, source), classes, f"case {case.case_id} {source}")
    if labels.shape != img.shape:
        raise ValueError(f"case {case.case_id}: {source} mask {labels.shape} != image {img.shape}")
    if image is None:
        image = resample_image(case, grid, window)
    elif tuple(image.shape) != (1, *grid):
        raise ValueError(f"case {case.case_id}: given image {tuple(image.shape)} is not "
                         f"(1, *grid) = {(1, *grid)}")
    label = resize(labels, grid, order=0, anti_aliasing=False, preserve_range=True)
    sp = [float(x) for x in case.spacing]
    spacing = tuple(x * n / g for x, n, g in zip(sp, img.shape, grid, strict=True))
    return Volume(case.case_id, image, torch.from_numpy(label.astype(np.int64)),
                  spacing, tuple(img.shape))  # type: ignore[arg-type]


class VolumeDataset(Dataset):
    """Dicts ``image`` (1, d, h, w), ``mask`` (d, h, w) int64, ``case_id`` for :func:`fit`.

    With ``patch`` each item is a random crop of that size (capped at the volume size),
    drawn from torch's global generator (seeded and checkpointed by :func:`fit`), and an
    epoch visits every volume ``patches_per_volume`` times.
    """

    def __init__(self, volumes: Sequence[Volume], patch: Sequence[int] | None = None,
                 patches_per_volume: int = 1) -> None:
        if not volumes:
            raise ValueError("VolumeDataset: no volumes")
        if patch is not None and (len(patch) != 3 or min(int(p) for p in patch) < 1):
            raise ValueError(f"VolumeDataset: patch={patch!r} must be three positive sizes")
        if isinstance(patches_per_volume, bool) or not isinstance(patches_per_volume, int) or (
                patches_per_volume < 1):
            raise ValueError(f"VolumeDataset: patches_per_volume={patches_per_volume!r} must be "
                             "an integer >= 1")
        if patch is None and patches_per_volume != 1:
            raise ValueError("VolumeDataset: patches_per_volume > 1 needs a patch size")
        self.volumes = list(volumes)
        self.patch = None if patch is None else tuple(int(p) for p in patch)
        self.patches_per_volume = patches_per_volume

    def __len__(self) -> int:
        return len(self.volumes) * self.patches_per_volume

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"VolumeDataset: index {i} out of range 0..{len(self) - 1}")
        v = self.volumes[i % len(self.volumes)]
        image, label = v.image, v.label
        if self.patch is not None:
            starts = [
                int(torch.randint(0, n - min(p, n) + 1, ()))
                for p, n in zip(self.patch, label.shape, strict=True)
            ]
            sl = tuple(slice(s, s + min(p, n))
                       for s, p, n in zip(starts, self.patch, label.shape, strict=True))
            image, label = image[(slice(None), *sl)], label[sl]
        return {"image": image, "mask": label, "case_id": v.case_id}


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


def _train_round(
    cfg: Mapping[str, Any],
    labelled: Sequence[str],
    volumes: Mapping[str, Volume],
    split: Mapping[str, Sequence[str]],
    make_model: Callable[[], nn.Module],
    init_state: Mapping[str, torch.Tensor] | None,
    ck_dir: Path,
    device: Any,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
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
    pool = list(split["pool"])
    dev = resolve_device(device)
    root = Path(checkpoint_root)
    base = {**config, "split": {k: list(split[k]) for k in ("pool", "val", "test")},
            "warm_start": bool(warm_start)}

    labelled = sorted(initial)
    history: list[list[str]] = [labelled]
    state: dict[str, torch.Tensor] | None = None
    records: list[dict[str, Any]] = []
    for it in range(n_iterations + 1):
        warm = warm_start and it > 0
        rcfg = _round_config(
            {**base, "epochs": int(warm_epochs) if warm else int(config["epochs"])},
            seed, history, warm_start)
        result, rhash = cached_round(
            rcfg, labelled, volumes, split, make_model, state if warm else None,
            cache=cache, checkpoint_root=root, device=dev, seed=seed, progress=progress)
        ck_dir = root / rhash
        record = {"iteration": it, "n_labelled": len(labelled), **result, "round": rhash,
                  "selected": [], "scores": None}
        remaining = sorted(set(pool) - set(labelled))
        need_model = it < n_iterations and remaining and (strategy == "variance" or warm_start)
        if need_model:
            state = _ckpt.load(ck_dir / WEIGHTS_NAME)  # verified (sha256)
        if it < n_iterations and remaining:
            k = min(per_iteration, len(remaining))
            if strategy == "variance":
                scfg = {"round": rcfg, "n_samples": n_samples, "candidates": remaining}

                def compute(state=state, it=it, remaining=remaining) -> dict[str, float]:
                    model = make_model()
                    model.load_state_dict(state)  # type: ignore[arg-type]
                    return volume_scores(model, [volumes[c] for c in remaining],
                                         n_samples=n_samples, seed=_derived_seed(seed, it, 3),
                                         device=dev, progress=progress)

                record["scores"] = cache.cached(SCORE_KIND, scfg, compute)
                chosen = select_top_k(record["scores"], k)
            else:
                chosen = select_random(remaining, k, np.random.default_rng([seed, it, 5]))
            record["selected"] = sorted(chosen)
            labelled = sorted(set(labelled) | set(chosen))
            history.append(labelled)
        records.append(record)
        if not remaining:  # the whole pool is labelled: nothing left to choose (P3 Sec. II)
            break
    return records


def round_weights(checkpoint_root: str | Path, round_hash: str) -> dict[str, torch.Tensor]:
    """The trained weights of a finished round (``record["round"]``)."""
    path = Path(checkpoint_root) / round_hash / WEIGHTS_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: weights of round {round_hash} are missing; run the experiment again "
            "(the round is retrained)")
    return _ckpt.load(path)  # verified (sha256); older files load unverified
