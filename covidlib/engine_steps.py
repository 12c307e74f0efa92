"""The steps every training run of covidlib is made of, and the step-driven loop.

:func:`covidlib.engine.fit` (epochs over a dataset, best validation epoch) and
:func:`train_steps` (a fixed number of optimiser steps on batches drawn per step, e.g. P4's
teacher and students, Alg. 1) are built from the same pieces:

* **train step** (:func:`train_step`): one optimiser step of ``loss_fn(model, batch)`` under
  the run's autocast; any other step function with its signature plugs in (P4's
  re-weighted step of Alg. 1, :class:`covidlib.experiments.p4_train.ReweightedStep`);
* **validate** (:func:`validate_step`): scores of the model in eval mode without gradients,
  appended to the history;
* **checkpoint**: :mod:`covidlib.checkpoint` (atomic, sha256-verified on load), resumed
  exactly (model, optimiser, history, random generators);
* **run identity** (:func:`run_config`): what changes the trajectory, the key of a
  checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from covidlib import checkpoint as _ckpt
from covidlib.evaluate import _describe, _floats, _prepare
from covidlib.runtime import autocast

__all__ = [
    "StepFn",
    "StepState",
    "Validation",
    "run_config",
    "train_step",
    "train_steps",
    "validate_step",
]


@dataclass
class StepState:
    """What a step function works on: the network, its training ``forward`` (the network
    itself, or its ``torch.compile``'d form), the ``loss_fn(model, batch) -> (loss, parts)``,
    the optimiser, the device and the precision (``amp_dtype`` of autocast, memory ``fmt``
    of the images)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    loss_fn: Any = None
    amp_dtype: torch.dtype | None = None
    fmt: torch.memory_format = torch.contiguous_format
    forward: nn.Module | None = None

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = self.model


StepFn = Callable[[Any, Any, str], tuple[float, Mapping[str, Any]]]
"""``step_fn(state, batch, where) -> (loss value, parts)``: one optimiser step on ``batch``
(``state``: a :class:`StepState` or anything with its fields; ``where`` names the step in
error messages)."""


def train_step(state: Any, raw: Any, where: str) -> tuple[float, dict[str, float]]:
    """One optimiser step of ``state.loss_fn`` on batch ``raw`` (moved to the device): zero
    the gradients, forward under autocast, backward, step. Returns the loss value and its
    parts; a non-finite loss raises :class:`FloatingPointError` naming the step."""
    batch = _prepare(raw, state.device, state.fmt, where)
    state.optimizer.zero_grad(set_to_none=True)
    with autocast(state.device, state.amp_dtype):
        out = state.loss_fn(state.forward, batch)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"{where}: loss_fn must return (loss, dict of floats)")
    loss, parts = out
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"{where}: loss must be a scalar tensor, got {loss!r}")
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"{where}: loss is {value}; lower lr or check the inputs/labels")
    loss.backward()
    state.optimizer.step()
    return value, _floats(parts, where)


@dataclass(frozen=True)
class Validation:
    """The validate step of :func:`train_steps`: ``fn(model) -> scores`` after the steps in
    ``at`` (counted from 1), recorded as ``history[key + "_step"]`` and
    ``history[key + "_" + score]``."""

    fn: Callable[[nn.Module], Mapping[str, float]]
    at: Collection[int]
    key: str = "val"


def validate_step(state: Any, validation: Validation, step: int,
                  history: dict[str, Any]) -> dict[str, float]:
    """Score the model in eval mode without gradients, append the scores to ``history``
    and put the model back in training mode."""
    state.model.eval()
    with torch.no_grad():
        scores = {str(k): float(v) for k, v in validation.fn(state.model).items()}
    state.model.train()
    history.setdefault(f"{validation.key}_step", []).append(step)
    for k, v in scores.items():
        history.setdefault(f"{validation.key}_{k}", []).append(v)
    return scores


def train_steps(state: Any, batch_fn: Callable[[int], Any], steps: int, *,
                step_fn: StepFn = train_step,
                on_step: Callable[[int, Any, float, Mapping[str, Any]], None] | None = None,
                validation: Validation | None = None, checkpoint: str | Path | None = None,
                checkpoint_every: int = 0, history: dict[str, Any] | None = None,
                config_digest: str | None = None, progress: bool = True,
                desc: str = "train") -> dict[str, Any]:
    """Train for ``steps`` optimiser steps: per step ``batch_fn(step)`` (which must draw its
    randomness from its own stream, e.g. :func:`covidlib.runtime.stream_rng`, so that a
    resumed run sees the same batches), ``step_fn(state, batch, where)``,
    ``on_step(step, batch, value, parts)`` (e.g. to log), the :class:`Validation` when due,
    and the checkpoint every ``checkpoint_every`` steps (:func:`covidlib.checkpoint.
    step_checkpoints`: resumed when ``checkpoint`` exists, deleted at the end). Returns
    ``history`` (updated in place)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"train_steps: steps must be an int >= 1, got {steps!r}")
    history = {} if history is None else history
    state.model.train()
    with _ckpt.step_checkpoints(checkpoint, int(checkpoint_every), state.model,
                                state.optimizer, history, config_digest=config_digest
                                ) as (start, save):
        for step in tqdm(range(start, steps), desc=desc, disable=not progress, leave=False):
            batch = batch_fn(step)
            value, parts = step_fn(state, batch, f"{desc} step {step + 1}")
            if on_step is not None:
                on_step(step, batch, value, parts)
            if validation is not None and step + 1 in validation.at:
                validate_step(state, validation, step + 1, history)
            save(step + 1)
    return history


# --------------------------------------------------------------------------------------------
# Run identity
# --------------------------------------------------------------------------------------------


def run_config(
    model: nn.Module,
    loss_fn: Any,
    train_data: Dataset,
    val_data: Dataset | None,
    *,
    lr: float,
    betas: tuple[float, float],
    batch_size: int,
    seed: int,
    val_every: int,
    metric: str,
    max_steps_per_epoch: int | None,
    num_workers: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that changes the training trajectory of :func:`covidlib.engine.fit` (not
    ``epochs``: a run may be extended)."""
    cfg = {
        "model": _describe(model),
        "parameters": [[k, list(v.shape)] for k, v in model.state_dict().items()],
        "loss": _describe(loss_fn),
        "n_train": len(train_data),  # type: ignore[arg-type]
        "n_val": None if val_data is None else len(val_data),  # type: ignore[arg-type]
        "lr": float(lr),
        "betas": [float(b) for b in betas],
        "batch_size": int(batch_size),
        "seed": int(seed),
        "val_every": int(val_every),
        "metric": metric,
        "max_steps_per_epoch": max_steps_per_epoch,
        "num_workers": int(num_workers),
        "extra": dict(extra or {}),
    }
    try:
        json.dumps(cfg, sort_keys=True, allow_nan=True)
    except TypeError as exc:
        raise TypeError(f"config: values must be JSON-serialisable ({exc})") from None
    return cfg


def _config_hash(cfg: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
