"""Checkpoints of :func:`covidlib.engine.fit` and the run configuration they are keyed by.

``config`` and ``config_hash`` (see :func:`run_config`), ``epoch`` (epochs completed),
``model``, ``optimizer``, ``history``, ``best_epoch``, ``best_score``, ``best_file`` (name of
``best-epochNNNN.pt`` in the same folder, holding ``{"epoch", "score", "model"}``), ``rng``
(torch, CUDA, NumPy and Python states), ``loss_fn`` (its ``state_dict()`` when it has one, e.g.
the transform generator of the consistency loss) and ``torch_version``.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from covidlib import checkpoint as _ckpt
from covidlib.cache import atomic_write_bytes
from covidlib.evaluate import _describe

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointMismatchError",
    "atomic_save",
    "load_checkpoint",
    "run_config",
]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "covidlib.engine.checkpoint/1"
_BEST_PREFIX = "best-epoch"

CheckpointMismatchError = _ckpt.CheckpointMismatchError
PREVIOUS_NAME = "checkpoint.prev.pt"  # the checkpoint before the newest (the fallback)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file next to ``path``, fsync, then ``os.replace``.

    A crash or error leaves either the old file or the new one, never a partial file.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, config_hash: str | None = None,
                    config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`fit` (:func:`covidlib.checkpoint.load`:
    length, sha256 and, when ``config_hash`` is given, the configuration that wrote it)."""
    path = Path(path)
    try:
        ck = _ckpt.load(path, config_digest=config_hash, config=config)
    except CheckpointMismatchError as exc:
        raise CheckpointMismatchError(path, f"{exc.reason}; use another checkpoint_dir or "
                                      "pass overwrite=True to discard it") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise _ckpt.CorruptCheckpointError(
            path, f"not a covidlib.engine checkpoint ({CHECKPOINT_FORMAT})")
    if config_hash is not None and ck.get("config_hash") != config_hash:
        what = _config_diff(ck.get("config", {}), config or {})
        raise CheckpointMismatchError(path, f"written by a different configuration ({what}); "
                                      "use another checkpoint_dir or pass overwrite=True to "
                                      "discard it")
    return ck


def _load_best(ck_dir: Path, ck: Mapping[str, Any], path: Path, cfg_hash: str
               ) -> dict[str, torch.Tensor] | None:
    """The verified best weights named by checkpoint ``ck`` (read from ``path``)."""
    if ck["best_file"] is None:
        return None
    bpath = ck_dir / ck["best_file"]
    if not bpath.exists():
        raise _ckpt.CorruptCheckpointError(path, f"the best weights it names ({bpath.name}) "
                                           "are missing")
    best = _ckpt.load(bpath, config_digest=cfg_hash)
    if not isinstance(best, dict) or best.get("epoch") != ck["best_epoch"]:
        got = best.get("epoch") if isinstance(best, dict) else None
        raise _ckpt.CorruptCheckpointError(bpath, f"holds epoch {got}, {path.name} expects "
                                           f"{ck['best_epoch']}")
    return best["model"]


def _resume_state(ck_dir: Path, cfg: Mapping[str, Any], cfg_hash: str, stacklevel: int = 3
                  ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None] | None:
    """The newest good checkpoint in ``ck_dir`` (``checkpoint.pt``, else the one before it)
    with its best weights. A corrupt file is moved aside (kept) and the run restarts from the
    last good checkpoint, saying so (a warning)."""
    notes: list[str] = []
    for path in (ck_dir / CHECKPOINT_NAME, ck_dir / PREVIOUS_NAME):
        if not path.exists():
            continue
        try:
            ck = load_checkpoint(path, cfg_hash, cfg)
            best = _load_best(ck_dir, ck, path, cfg_hash)
        except _ckpt.CorruptCheckpointError as exc:
            moved = [_ckpt.move_aside(p).name for p in dict.fromkeys((exc.path, path))
                     if p.exists()]  # a checkpoint naming bad best weights is unusable too
            notes.append(f"{exc}" + (f" (moved to {', '.join(moved)})" if moved else ""))
            continue
        if notes:
            warnings.warn("; ".join(notes) + f"; resuming from {path} after epoch "
                          f"{ck['epoch']}", stacklevel=stacklevel)
        return ck, best
    if notes:
        warnings.warn("; ".join(notes) + "; no good checkpoint is left: training starts "
                      "again from epoch 0", stacklevel=stacklevel)
    return None


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
    """Everything that changes the training trajectory (not ``epochs``: a run may be extended)."""
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


_config_diff = _ckpt.config_diff


def _best_name(epoch: int) -> str:
    return f"{_BEST_PREFIX}{epoch:04d}.pt"


def _remove_stale_best(directory: Path, keep: str | None, *also: str | None) -> None:
    for f in directory.glob(f"{_BEST_PREFIX}*.pt"):
        if f.name not in (keep, *also):
            f.unlink(missing_ok=True)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
