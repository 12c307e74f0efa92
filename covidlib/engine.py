"""Training engine shared by the experiments of the four papers.

:func:`fit` trains any model with any loss on any dataset of dicts (2-D slices or 3-D
volumes) with Adam (P2 Sec. 4.2: lr 1e-4, batch size 8) and keeps the weights of the epoch
with the best validation score (the papers report test scores at the best validation epoch).

* The loss owns the forward pass: ``loss_fn(model, batch) -> (loss, parts)`` with ``parts`` a
  dict of floats for the history, so point loss, consistency loss (two forward passes),
  structure loss or combo loss all plug in; :func:`supervised_loss` adapts a plain
  ``criterion(logits, target)``.
* Deterministic: :func:`set_determinism` seeds Python, NumPy and torch and asks torch for
  deterministic algorithms; the training order of epoch ``e`` comes from a generator seeded
  with ``(seed, e)``.
* Resumable: after every epoch ``checkpoint_dir/checkpoint.pt`` is replaced atomically
  (temporary file in the same folder + ``os.replace``; the one before it is kept as
  ``checkpoint.prev.pt``); a later call with the same configuration continues from it and
  ends with bit-identical weights on CPU. Checkpoints are written by
  :mod:`covidlib.checkpoint` with the sha256 of their payload and the configuration's
  digest, both verified on load: a corrupt file is moved aside and the run resumes from the
  last good checkpoint (or from epoch 0), saying so in a warning.
* ``device="auto"`` picks CUDA when present; there the forward pass runs under bf16 autocast
  and tensors use channels_last (channels_last_3d for volumes); on CPU everything is float32.
  One switch changes that: :func:`acceleration` (a context) or :func:`set_acceleration` (the
  process default; ``$COVIDLIB_ACCELERATION``, e.g. ``channels_last`` or
  ``bf16,channels_last,compile``) forces bf16 autocast, channels_last and/or
  ``torch.compile`` of the training forward on any device, so the GPU's code path also runs
  on a CPU (the profile dry-run tests) and ``make bench`` can measure what each one buys.

``fit`` is a sequence of small steps (:func:`_run_epoch`): train an epoch
(:func:`_train_epoch`, one :func:`~covidlib.engine_steps.train_step` per batch), validate
(:func:`_validate`), checkpoint (:func:`_save_checkpoint`), early stop
(:func:`_should_stop`). Runs counted in optimiser steps rather than epochs (P4's teacher and
students) use the same train step, validation and checkpointer through
:func:`~covidlib.engine_steps.train_steps`, with their own step function when the update is
not a plain loss (P4's Alg. 1).

The pieces live in their concept modules, re-exported here: devices, precision and
determinism in :mod:`covidlib.runtime`; the batch protocol, :func:`predict` and
:func:`evaluate` in :mod:`covidlib.evaluate`; the train step, the step loop and the run
configuration in :mod:`covidlib.engine_steps`; checkpoints in :mod:`covidlib.checkpoint`.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from covidlib import checkpoint as _ckpt
from covidlib import runtime as _runtime
from covidlib.checkpoint import (
    _BEST_PREFIX,  # noqa: F401  (re-exported)
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    PREVIOUS_NAME,
    CheckpointMismatchError,
    _best_name,
    _load_best,  # noqa: F401  (re-exported)
    _remove_stale_best,
    load_checkpoint,
    resume_fit,
)
from covidlib.checkpoint import config_diff as _config_diff  # noqa: F401  (re-exported)
from covidlib.engine_steps import (
    StepState,
    Validation,
    _config_hash,
    _cpu_state,
    run_config,
    train_step,
    train_steps,
)
from covidlib.evaluate import (
    SupervisedLoss,
    _describe,  # noqa: F401  (re-exported)
    _probabilities,  # noqa: F401  (re-exported)
    _spatial_dims,
    _to_device,  # noqa: F401  (re-exported)
    binarize,
    evaluate,
    predict,
    supervised_loss,
)
from covidlib.runtime import (
    Acceleration,
    _env_acceleration,  # noqa: F401  (re-exported)
    _epoch_seed,
    _restore_rng,
    _rng_state,
    _seed_worker,
    acceleration,
    amp_settings,
    autocast,
    resolve_device,
    set_acceleration,
    set_determinism,
)

__all__ = [
    "CHECKPOINT_NAME",
    "Acceleration",
    "CheckpointMismatchError",
    "FitResult",
    "StepState",
    "SupervisedLoss",
    "Validation",
    "acceleration",
    "amp_settings",
    "autocast",
    "binarize",
    "evaluate",
    "fit",
    "load_checkpoint",
    "predict",
    "resolve_device",
    "run_config",
    "set_acceleration",
    "set_determinism",
    "supervised_loss",
    "train_step",
    "train_steps",
]

log = logging.getLogger(__name__)


LossFn = Callable[[nn.Module, dict[str, Any]], tuple[torch.Tensor, Mapping[str, Any]]]


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    ``history`` has one dict per epoch: ``epoch``, ``steps``, ``train_loss``,
    ``train_<part>`` (means over the epoch's steps), ``val_<score>`` on validated epochs,
    ``seconds`` (wall time, the only entry that differs between identical runs).
    ``best_epoch`` is None (and ``best_score`` nan, ``best_state`` the final weights) when
    no validation produced a finite score.
    """

    best_epoch: int | None
    best_score: float
    history: list[dict[str, float]]
    final_state: dict[str, torch.Tensor]
    best_state: dict[str, torch.Tensor]
    epochs_completed: int
    stopped_early: bool
    device: torch.device
    checkpoint_path: Path | None = None
    best_path: Path | None = None


def _should_stop(epoch: int, best_epoch: int | None, patience: int | None) -> bool:
    return patience is not None and epoch - (best_epoch or 0) >= patience


def _check_positive_int(name: str, value: Any, allow_none: bool = False, minimum: int = 1) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class _FitSpec:
    """The per-call settings of :func:`fit` that its steps read (see its docstring)."""

    train_data: Dataset
    val_data: Dataset | None
    epochs: int
    batch_size: int
    seed: int
    val_every: int
    metric: str
    patience: int | None
    num_workers: int
    progress: bool
    max_steps_per_epoch: int | None
    val_fn: Callable[[nn.Module], Mapping[str, float]] | None
    on_epoch_end: Callable[[int, dict[str, float]], None] | None
    collate_fn: Callable | None

    @property
    def validates(self) -> bool:
        return self.val_fn is not None or self.val_data is not None


@dataclass
class _FitRun:
    """The state one :func:`fit` call carries from epoch to epoch (what a checkpoint holds);
    a :class:`~covidlib.engine_steps.StepState` for :func:`train_step`."""

    spec: _FitSpec
    model: nn.Module
    forward: nn.Module  # the training forward (``torch.compile``'d when switched on)
    loss_fn: Any
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp_dtype: torch.dtype | None
    fmt: torch.memory_format
    cfg: dict[str, Any]
    cfg_hash: str
    ck_dir: Path | None
    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0
    best_epoch: int | None = None
    best_score: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_file: str | None = None
    saved_best: str | None = None  # the best file the last written checkpoint names

    @property
    def ck_path(self) -> Path | None:
        return self.ck_dir / CHECKPOINT_NAME if self.ck_dir is not None else None


def _check_fit_args(spec: _FitSpec, lr: Any, betas: tuple[float, float]) -> None:
    """Clear errors for bad :func:`fit` arguments, before any work."""
    _check_positive_int("epochs", spec.epochs)
    _check_positive_int("batch_size", spec.batch_size)
    _check_positive_int("val_every", spec.val_every)
    _check_positive_int("num_workers", spec.num_workers, minimum=0)
    _check_positive_int("early_stopping_patience", spec.patience, allow_none=True)
    _check_positive_int("max_steps_per_epoch", spec.max_steps_per_epoch, allow_none=True)
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if len(spec.train_data) == 0:  # type: ignore[arg-type]
        raise ValueError("train_data is empty")
    if spec.val_fn is None and spec.val_data is not None:
        if len(spec.val_data) == 0:  # type: ignore[arg-type]
            raise ValueError("val_data is empty")
        first = spec.val_data[0]
        if not isinstance(first, Mapping) or not {"image", "mask"} <= set(first):
            keys = sorted(first) if isinstance(first, Mapping) else type(first).__name__
            raise KeyError(f"val_data: items must be dicts with 'image' and 'mask', got {keys}")


def _setup_run(model: nn.Module, loss_fn: Any, spec: _FitSpec, *, lr: float,
               betas: tuple[float, float], device: str | torch.device,
               checkpoint_dir: str | Path | None, config: Mapping[str, Any] | None) -> _FitRun:
    """Device, determinism, acceleration (amp, channels_last, compile), optimizer and the
    run's configuration hash: the fresh state of epoch 0."""
    dev = resolve_device(device)
    set_determinism(spec.seed)
    spatial = (_spatial_dims(spec.train_data, "train_data")
               if dev.type == "cuda" or _runtime._ACCEL.channels_last else 2)
    amp_dtype, fmt = amp_settings(dev, spatial)
    model.to(dev)
    if fmt is not torch.contiguous_format:
        model.to(memory_format=fmt)
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=lr, betas=(float(betas[0]), float(betas[1])))
    # the training forward; torch.compile shares the parameters, checkpoints hold `model`'s
    forward: nn.Module = torch.compile(model) if _runtime._ACCEL.compile else model  # type: ignore[assignment]
    cfg = run_config(
        model, loss_fn, spec.train_data, spec.val_data, lr=lr, betas=betas,
        batch_size=spec.batch_size, seed=spec.seed, val_every=spec.val_every,
        metric=spec.metric, max_steps_per_epoch=spec.max_steps_per_epoch,
        num_workers=spec.num_workers, extra=config,
    )
    return _FitRun(spec=spec, model=model, forward=forward, loss_fn=loss_fn,
                   optimizer=optimizer, device=dev, amp_dtype=amp_dtype, fmt=fmt, cfg=cfg,
                   cfg_hash=_config_hash(cfg),
                   ck_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None)


def _open_checkpoints(run: _FitRun, overwrite: bool) -> None:
    """Prepare ``checkpoint_dir`` (remove dead processes' temporary files) and resume from
    its newest good checkpoint, or delete it all when ``overwrite``."""
    ck_dir = run.ck_dir
    if ck_dir is None:
        return
    if ck_dir.exists() and not ck_dir.is_dir():
        raise NotADirectoryError(f"{ck_dir}: checkpoint_dir exists and is not a folder")
    ck_dir.mkdir(parents=True, exist_ok=True)
    _ckpt.remove_dead_temps(ck_dir)  # left by killed processes; live writers' stay
    if overwrite:
        (ck_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
        (ck_dir / PREVIOUS_NAME).unlink(missing_ok=True)
        _remove_stale_best(ck_dir, keep=None)
        return
    resumed = resume_fit(ck_dir, run.cfg, run.cfg_hash, stacklevel=4)  # fit's caller
    if resumed is not None:
        _apply_resume(run, *resumed)


def _apply_resume(run: _FitRun, ck: Mapping[str, Any],
                  best_state: dict[str, torch.Tensor] | None) -> None:
    """Load checkpoint ``ck`` into the model, optimizer, loss state, RNGs and ``run``."""
    run.model.load_state_dict(ck["model"])
    run.optimizer.load_state_dict(ck["optimizer"])
    run.history = list(ck["history"])
    run.start_epoch = int(ck["epoch"])
    run.best_epoch = ck["best_epoch"]
    run.best_score = float(ck["best_score"])
    run.best_state = best_state
    run.best_file = run.saved_best = ck["best_file"]
    if ck.get("loss_fn") is not None:
        if not hasattr(run.loss_fn, "load_state_dict"):
            raise RuntimeError(f"{run.ck_path}: holds loss state but loss_fn cannot load it")
        run.loss_fn.load_state_dict(ck["loss_fn"])
    _restore_rng(ck["rng"])
    log.info("resuming from %s after epoch %d", run.ck_path, run.start_epoch)


def _train_loader(run: _FitRun, epoch: int) -> DataLoader:
    """The epoch's shuffled loader; its order depends on ``seed`` and ``epoch`` only."""
    spec = run.spec
    gen = torch.Generator()
    gen.manual_seed(_epoch_seed(spec.seed, epoch))
    return DataLoader(
        spec.train_data,
        batch_size=spec.batch_size,
        shuffle=True,
        generator=gen,
        num_workers=spec.num_workers,
        collate_fn=spec.collate_fn,
        worker_init_fn=_seed_worker if spec.num_workers else None,
        pin_memory=run.device.type == "cuda",
    )


def _train_epoch(run: _FitRun, epoch: int) -> dict[str, float]:
    """Train one epoch; the epoch's record (``epoch``, ``steps``, ``train_*`` means)."""
    spec = run.spec
    run.model.train()
    loader = _train_loader(run, epoch)
    n_steps = len(loader)
    if spec.max_steps_per_epoch is not None:
        n_steps = min(n_steps, spec.max_steps_per_epoch)
    sums: dict[str, float] = {}
    loss_sum = 0.0
    steps = 0
    bar = tqdm(loader, total=n_steps, desc=f"epoch {epoch}/{spec.epochs}", leave=False,
               disable=not spec.progress)
    for raw in bar:
        if steps >= n_steps:
            break
        value, parts = train_step(run, raw, f"epoch {epoch} step {steps + 1}")
        loss_sum += value
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        steps += 1
    bar.close()
    record: dict[str, float] = {"epoch": epoch, "steps": steps}
    record.update({f"train_{k}": v / steps for k, v in sums.items()})
    record["train_loss"] = loss_sum / steps
    return record


def _validate(run: _FitRun, epoch: int, record: dict[str, float]) -> bool:
    """Score the model (``val_fn`` or :func:`evaluate`), add ``val_*`` to ``record``; True
    when ``metric`` improved (the best state is then kept)."""
    spec = run.spec
    if spec.val_fn is not None:
        run.model.eval()
        with torch.no_grad():
            val_scores = dict(spec.val_fn(run.model))
    else:
        val_scores = evaluate(run.model, spec.val_data, run.device,  # type: ignore[arg-type]
                              spec.batch_size, num_workers=spec.num_workers,
                              collate_fn=spec.collate_fn, progress=spec.progress)
    if spec.metric not in val_scores:
        raise KeyError(f"metric={spec.metric!r} is not among the validation scores "
                       f"{sorted(val_scores)}")
    record.update({f"val_{k}": float(v) for k, v in val_scores.items()})
    score = float(val_scores[spec.metric])
    if not math.isnan(score) and score > run.best_score:
        run.best_score, run.best_epoch = score, epoch
        run.best_state = _cpu_state(run.model)
        return True
    return False


def _save_checkpoint(run: _FitRun, epoch: int, improved: bool) -> None:
    """Write the best weights (when ``improved``) and the epoch's checkpoint through
    :mod:`covidlib.checkpoint` (atomic, previous kept), then drop stale best files."""
    ck_dir, ck_path = run.ck_dir, run.ck_path
    if ck_dir is None or ck_path is None:
        return
    if improved:
        run.best_file = _best_name(epoch)
        _ckpt.save({"epoch": epoch, "score": run.best_score, "model": run.best_state},
                   ck_dir / run.best_file, config_digest=run.cfg_hash)
    loss_fn = run.loss_fn
    _ckpt.save(
        {
            "format": CHECKPOINT_FORMAT,
            "config": run.cfg,
            "config_hash": run.cfg_hash,
            "epoch": epoch,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "history": run.history,
            "best_epoch": run.best_epoch,
            "best_score": run.best_score,
            "best_file": run.best_file,
            "rng": _rng_state(),
            "loss_fn": loss_fn.state_dict() if hasattr(loss_fn, "state_dict") else None,
            "torch_version": str(torch.__version__),
        },
        ck_path, config_digest=run.cfg_hash, keep_previous=ck_dir / PREVIOUS_NAME,
    )
    _remove_stale_best(ck_dir, run.best_file, run.saved_best)  # saved_best: the previous's
    run.saved_best = run.best_file


def _run_epoch(run: _FitRun, epoch: int, epoch_bar: Any) -> bool:
    """Train, validate, checkpoint, report epoch ``epoch``; True when training should stop
    early (``early_stopping_patience`` epochs without improvement)."""
    spec = run.spec
    t0 = time.perf_counter()
    record = _train_epoch(run, epoch)
    validated = spec.validates and epoch % spec.val_every == 0
    improved = _validate(run, epoch, record) if validated else False
    record["seconds"] = time.perf_counter() - t0
    run.history.append(record)
    _save_checkpoint(run, epoch, improved)
    epoch_bar.update(1)
    postfix = {"loss": f"{record['train_loss']:.4g}"}
    if validated:
        postfix[f"val_{spec.metric}"] = f"{record[f'val_{spec.metric}']:.4g}"
    epoch_bar.set_postfix(postfix)
    if spec.on_epoch_end is not None:
        spec.on_epoch_end(epoch, record)
    if validated and _should_stop(epoch, run.best_epoch, spec.patience):
        log.info("early stopping after epoch %d (best epoch %s)", epoch, run.best_epoch)
        return True
    return False


def _stopped_before(run: _FitRun) -> bool:
    """True when the resumed checkpoint's last epoch already triggered early stopping."""
    return bool(run.history and any(k.startswith("val_") for k in run.history[-1])
                and _should_stop(run.start_epoch, run.best_epoch, run.spec.patience))


def _finish(run: _FitRun, stopped: bool, restore_best: bool) -> FitResult:
    """The :class:`FitResult`; loads the best weights into the model when ``restore_best``."""
    final_state = _cpu_state(run.model)
    best_state = run.best_state
    if best_state is None:
        best_state = final_state
    elif restore_best:
        run.model.load_state_dict(best_state)
    ck_dir = run.ck_dir
    return FitResult(
        best_epoch=run.best_epoch,
        best_score=run.best_score if run.best_epoch is not None else math.nan,
        history=run.history,
        final_state=final_state,
        best_state=best_state,
        epochs_completed=len(run.history),
        stopped_early=stopped,
        device=run.device,
        checkpoint_path=run.ck_path,
        best_path=ck_dir / run.best_file if ck_dir is not None and run.best_file else None,
    )


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train_data: Dataset,
    val_data: Dataset | None = None,
    *,
    epochs: int,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    batch_size: int = 8,
    device: str | torch.device = "auto",
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    val_every: int = 1,
    metric: str = "dice",
    early_stopping_patience: int | None = None,
    num_workers: int = 0,
    progress: bool = True,
    max_steps_per_epoch: int | None = None,
    val_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    overwrite: bool = False,
    restore_best: bool = True,
    collate_fn: Callable | None = None,
    config: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` with Adam, select the epoch with the best validation ``metric``.

    Args:
        loss_fn: ``loss_fn(model, batch) -> (loss, parts)``; ``batch`` is the collated dict on
            the device. If it has ``state_dict``/``load_state_dict`` (e.g. a random generator
            for transforms) that state is checkpointed too.
        train_data, val_data: datasets of dicts with ``"image"`` (and ``"mask"`` for val,
            scored by :func:`evaluate`; optional ``"case_id"`` for per-volume scores).
        epochs: total number of epochs (a resumed run continues up to it).
        lr, betas: Adam hyper-parameters (P2: lr 1e-4).
        seed: for :func:`set_determinism` and the per-epoch data order.
        checkpoint_dir: where ``checkpoint.pt`` and ``best-epochNNNN.pt`` go; resumes from
            an existing checkpoint of the same configuration. A checkpoint of another
            configuration raises :class:`CheckpointMismatchError` unless ``overwrite=True``
            (which deletes it and starts again).
        val_every: validate on epochs that are multiples of it.
        metric: validation key to maximise (``"dice"``: Dice of the summed counts).
        early_stopping_patience: stop once this many epochs passed without improvement.
        max_steps_per_epoch: cap on optimizer steps per epoch (smoke tests).
        val_fn: custom validation ``val_fn(model) -> scores`` (called in eval mode, no grad)
            used instead of :func:`evaluate` on ``val_data``.
        on_epoch_end: ``callback(epoch, record)`` after the epoch's checkpoint was written;
            it must not draw from the global random generators.
        restore_best: load the best weights into ``model`` before returning.
        config: extra JSON-serialisable settings that belong to the run identity (dataset,
            split, ...); they are part of the checkpoint's configuration hash.

    Returns:
        :class:`FitResult`. The model stays on the chosen device (in eval mode when the
        last epoch was validated).
    """
    spec = _FitSpec(
        train_data=train_data, val_data=val_data, epochs=epochs, batch_size=batch_size,
        seed=seed, val_every=val_every, metric=metric, patience=early_stopping_patience,
        num_workers=num_workers, progress=progress, max_steps_per_epoch=max_steps_per_epoch,
        val_fn=val_fn, on_epoch_end=on_epoch_end, collate_fn=collate_fn,
    )
    _check_fit_args(spec, lr, betas)
    run = _setup_run(model, loss_fn, spec, lr=lr, betas=betas, device=device,
                     checkpoint_dir=checkpoint_dir, config=config)
    _open_checkpoints(run, overwrite)
    stopped = _stopped_before(run)
    if run.start_epoch > epochs:
        warnings.warn(
            f"{run.ck_path}: already holds {run.start_epoch} epochs, more than "
            f"epochs={epochs}; returning the checkpointed model without training",
            stacklevel=2,
        )
    epoch_bar = tqdm(total=epochs, initial=min(run.start_epoch, epochs), desc="fit",
                     unit="epoch", disable=not progress)
    try:
        epoch = run.start_epoch
        while not stopped and epoch < epochs:
            epoch += 1
            stopped = _run_epoch(run, epoch, epoch_bar)
    finally:
        epoch_bar.close()
    return _finish(run, stopped, restore_best)
