"""Input checks shared by the losses: every bad tensor gives an error naming the value."""

from __future__ import annotations

import torch

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}: must be one of {choices!r}")


def check_logits(logits: torch.Tensor, *, min_classes: int = 2, name: str = "logits") -> None:
    """``logits`` must be a floating tensor ``(B, C, *spatial)`` with ``C >= min_classes``."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name}: expected a floating tensor, got dtype {logits.dtype}")
    if logits.ndim < 3:
        raise ValueError(
            f"{name}: expected shape (B, C, *spatial) with at least one spatial axis, "
            f"got {tuple(logits.shape)}"
        )
    if logits.shape[1] < min_classes:
        raise ValueError(
            f"{name}: expected at least {min_classes} channels (class 0 = background), "
            f"got shape {tuple(logits.shape)}"
        )


def check_label_map(
    labels: torch.Tensor,
    logits: torch.Tensor,
    *,
    ignore_index: int | None,
    name: str = "point_labels",
) -> torch.Tensor:
    """Check an integer label map ``(B, *spatial)`` against ``logits`` ``(B, C, *spatial)``.

    Values must lie in ``[0, C)`` or equal ``ignore_index``. Returns the map as int64.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype not in _INT_DTYPES:
        raise TypeError(f"{name}: expected an integer tensor, got dtype {labels.dtype}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"{name}: shape {tuple(labels.shape)} does not match logits "
            f"{tuple(logits.shape)} (expected {expected})"
        )
    labels = labels.long()
    n_classes = logits.shape[1]
    bad = (labels < 0) | (labels >= n_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bool(bad.any()):
        values = sorted({int(v) for v in labels[bad].unique()})
        allowed = f"0..{n_classes - 1}"
        if ignore_index is not None:
            allowed += f" or ignore_index={ignore_index}"
        raise ValueError(f"{name}: values {values} are not class labels ({allowed})")
    return labels
