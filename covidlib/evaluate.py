"""The batch protocol of the engine, and inference: :func:`predict`, :func:`evaluate`.

* The loss owns the forward pass: ``loss_fn(model, batch) -> (loss, parts)``;
  :func:`supervised_loss` adapts a plain ``criterion(logits, target)``.
* :func:`predict` yields probabilities per batch; :func:`evaluate` turns them into the
  overlap scores of :mod:`covidlib.metrics` (P2 Sec. 4.1.2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from covidlib.metrics import SegmentationMeter
from covidlib.runtime import amp_settings, autocast, resolve_device

__all__ = [
    "SupervisedLoss",
    "binarize",
    "evaluate",
    "predict",
    "supervised_loss",
]


# --------------------------------------------------------------------------------------------
# Losses and batches
# --------------------------------------------------------------------------------------------


class SupervisedLoss(nn.Module):
    """``loss_fn`` for a plain criterion: ``criterion(model(batch[image]), batch[target])``."""

    def __init__(
        self,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        image_key: str = "image",
        target_key: str = "mask",
    ) -> None:
        super().__init__()
        if not callable(criterion):
            raise TypeError(f"criterion must be callable, got {type(criterion).__name__}")
        self.criterion = criterion
        self.image_key = image_key
        self.target_key = target_key

    def forward(
        self, model: nn.Module, batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        for key in (self.image_key, self.target_key):
            if key not in batch:
                raise KeyError(f"batch has no {key!r} (keys: {sorted(batch)})")
        logits = model(batch[self.image_key])
        loss = self.criterion(logits, batch[self.target_key])
        return loss, {"loss": float(loss.detach())}


def supervised_loss(
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    image_key: str = "image",
    target_key: str = "mask",
) -> SupervisedLoss:
    """Adapt ``criterion(logits, target)`` to the ``loss_fn(model, batch)`` protocol."""
    return SupervisedLoss(criterion, image_key=image_key, target_key=target_key)


def _to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_device(v, device, non_blocking) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_to_device(v, device, non_blocking) for v in obj)
    return obj


def _prepare(
    batch: Any, device: torch.device, fmt: torch.memory_format, where: str
) -> dict[str, Any]:
    if not isinstance(batch, Mapping):
        raise TypeError(f"{where}: datasets must yield dicts, got a {type(batch).__name__}")
    if "image" not in batch:
        raise KeyError(f"{where}: batch has no 'image' (keys: {sorted(batch)})")
    out = _to_device(batch, device, non_blocking=device.type == "cuda")
    img = out["image"]
    if fmt is not torch.contiguous_format and isinstance(img, torch.Tensor):
        if img.ndim == (4 if fmt is torch.channels_last else 5):
            out["image"] = img.contiguous(memory_format=fmt)
    return out


def _spatial_dims(dataset: Dataset, where: str) -> int:
    item = dataset[0]
    if not isinstance(item, Mapping) or "image" not in item:
        raise KeyError(f"{where}: items must be dicts with an 'image' entry")
    return int(torch.as_tensor(item["image"]).ndim) - 1  # (C, H, W) or (C, D, H, W)


def _floats(parts: Mapping[str, Any], where: str) -> dict[str, float]:
    if not isinstance(parts, Mapping):
        raise TypeError(f"{where}: loss_fn must return (loss, dict), got {type(parts).__name__}")
    out = {}
    for k, v in parts.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise ValueError(f"{where}: loss part {k!r} has {v.numel()} elements, expected 1")
            v = v.detach().item()
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            raise TypeError(f"{where}: loss part {k!r} is not a number: {v!r}") from None
    return out


def _describe(obj: Any) -> str:
    """Stable description of a model/loss for the run configuration (no memory addresses)."""
    if isinstance(obj, SupervisedLoss):
        return f"SupervisedLoss({_describe(obj.criterion)}, {obj.image_key}, {obj.target_key})"
    name = getattr(obj, "__qualname__", None)
    if isinstance(name, str):
        return f"{getattr(obj, '__module__', '?')}.{name}"
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


# --------------------------------------------------------------------------------------------
# Inference and evaluation
# --------------------------------------------------------------------------------------------


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    if logits.ndim < 3:
        raise ValueError(f"model output: expected (B, C, ...) logits, got {tuple(logits.shape)}")
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else F.softmax(logits, dim=1)


def binarize(probs: torch.Tensor) -> torch.Tensor:
    """Foreground of probabilities ``(B, C, ...)``: ``argmax > 0`` (C >= 2) or ``p > 0.5``."""
    return probs[:, 0] > 0.5 if probs.shape[1] == 1 else probs.argmax(1) > 0


def predict(
    model: nn.Module,
    dataset: Dataset,
    device: str | torch.device = "auto",
    batch_size: int = 8,
    *,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    progress: bool = False,
) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
    """Yield ``(probabilities, batch)`` per batch, in dataset order.

    ``probabilities`` is float32 on the CPU: softmax over channels, or sigmoid for a
    single-channel model. The model is moved to ``device`` and left in eval mode.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    model.to(dev)
    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=dev.type == "cuda",
    )
    fmt: torch.memory_format | None = None
    dtype: torch.dtype | None = None
    for batch in tqdm(loader, desc="predict", leave=False, disable=not progress):
        if fmt is None:
            if not isinstance(batch, Mapping) or "image" not in batch:
                raise KeyError("predict: dataset items must be dicts with an 'image' entry")
            dtype, fmt = amp_settings(dev, batch["image"].ndim - 2)
            if fmt is not torch.contiguous_format:
                model.to(memory_format=fmt)
        image = _prepare({"image": batch["image"]}, dev, fmt, "predict")["image"]
        with torch.no_grad(), autocast(dev, dtype):
            logits = model(image)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"predict: model returned {type(logits).__name__}, expected a tensor")
        # the contexts end before yielding so that grad mode does not leak into the caller
        yield _probabilities(logits).cpu(), batch


def evaluate(model: nn.Module, dataset: Dataset, device: str | torch.device = "auto",
             batch_size: int = 8, *, num_workers: int = 0, collate_fn: Callable | None = None,
             progress: bool = False, mask_key: str = "mask") -> dict[str, float]:
    """Overlap scores of ``model`` on ``dataset`` (P2 Sec. 4.1.2), via :mod:`covidlib.metrics`.

    Prediction = ``argmax > 0`` of the logits (``p > 0.5`` for one channel); truth =
    ``batch[mask_key] > 0`` (any infection label). Returns
    :meth:`~covidlib.metrics.SegmentationMeter.compute`: ``dice``, ``iou``, ``ppv``,
    ``sens``, ``spec`` from counts summed over the split, plus per-volume ``<name>_mean``,
    ``<name>_std``, ``<name>_n`` grouped by ``batch["case_id"]`` (each item its own unit when
    the dataset has no case ids) and ``n_volumes``.
    """
    meter = SegmentationMeter()
    for probs, batch in predict(model, dataset, device, batch_size, num_workers=num_workers,
                                collate_fn=collate_fn, progress=progress):
        if mask_key not in batch:
            raise KeyError(f"evaluate: batch has no {mask_key!r} (keys: {sorted(batch)})")
        pred = binarize(probs)
        mask = torch.as_tensor(batch[mask_key])
        if mask.ndim == pred.ndim + 1 and mask.shape[1] == 1:
            mask = mask[:, 0]
        if mask.shape != pred.shape:
            raise ValueError(
                f"evaluate: batch[{mask_key!r}] has shape {tuple(mask.shape)}, the prediction "
                f"{tuple(pred.shape)}"
            )
        if mask.is_floating_point() and not bool(torch.isfinite(mask).all()):
            raise ValueError(f"evaluate: batch[{mask_key!r}] holds nan/inf values")
        if bool((mask < 0).any()):
            raise ValueError(f"evaluate: batch[{mask_key!r}] holds negative labels")
        ids = batch.get("case_id")
        if ids is not None:
            ids = [str(i.item() if isinstance(i, torch.Tensor) else i) for i in ids]
        meter.update(pred, mask > 0, ids)
    if meter.counts.total == 0:
        raise ValueError("evaluate: the dataset is empty")
    return meter.compute()
