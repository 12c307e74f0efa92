"""Small helpers shared by the models: input checks, pad-to-multiple / crop, parameter counts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def count_trainable_parameters(model: nn.Module) -> int:
    """Number of scalars in ``model.parameters()`` with ``requires_grad`` (P4 Table 1 "Total")."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_sizes(who: str, dropout: float, **sizes: object) -> None:
    """Raise a ``ValueError`` naming ``who`` unless every one of ``sizes`` (channels, widths,
    depths) is a positive integer and ``dropout`` lies in [0, 1)."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{who}: {name}={value!r} must be a positive integer")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"{who}: dropout={dropout!r} must lie in [0, 1)")


def check_input(x: torch.Tensor, *, spatial_dims: int, in_channels: int, who: str) -> None:
    """Raise a clear error unless ``x`` is a floating ``(B, in_channels, *spatial)`` tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor input, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: expected a floating-point input, got dtype {x.dtype}")
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        axes = ", ".join(["B", str(in_channels), *("HW" if spatial_dims == 2 else "DHW")])
        raise ValueError(f"{who}: expected input shape ({axes}), got {tuple(x.shape)}")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{who}: input has an empty axis, shape {tuple(x.shape)}")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the spatial axes of ``x`` at their high end up to a multiple of ``multiple``."""
    pads: list[int] = []
    for size in reversed(x.shape[2:]):  # F.pad wants the last axis first
        pads += [0, (-size) % multiple]
    if not any(pads):
        return x
    return F.pad(x, pads)


def crop_to(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Crop the spatial axes of ``x`` to ``size`` (keeping the low-index corner)."""
    index = (slice(None), slice(None), *(slice(0, s) for s in size))
    return x[index].contiguous()
