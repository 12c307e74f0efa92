"""Training-time augmentation and patch sampling on arrays.

* :func:`flip_lr_ud`: P4's augmentation (Sec. 4: every volume and its left-right, up-down
  and combined flips), one of four flip codes applied to the last two axes.
* :func:`crop_padded`: a crop of a fixed size from a start corner, zero-padded where the
  array is smaller (patch sampling of P4's networks, Sec. 4: 96^3 patches).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["FLIP_CODES", "crop_padded", "flip_lr_ud"]

FLIP_CODES: tuple[int, ...] = (0, 1, 2, 3)
"""0 none, 1 left-right (last axis), 2 up-down (second-last axis), 3 both."""


def flip_lr_ud(arr: np.ndarray, code: int) -> np.ndarray:
    """One of P4's four flips (Sec. 4) of ``arr``'s last two axes: ``code`` 0 none, 1
    left-right (last axis), 2 up-down, 3 both (a view, not a copy)."""
    if code not in FLIP_CODES:
        raise ValueError(f"flip_lr_ud: code={code!r} must be one of {FLIP_CODES}")
    if code & 1:
        arr = arr[..., ::-1]
    if code & 2:
        arr = arr[..., ::-1, :]
    return arr


def crop_padded(arr: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """``arr[start : start + size]`` on every axis, zero-padded at the end to ``size`` where
    ``arr`` is smaller (``start`` must lie inside ``arr``)."""
    if not len(start) == len(size) == arr.ndim:
        raise ValueError(f"crop_padded: start {tuple(start)} and size {tuple(size)} for a "
                         f"{arr.ndim}-D array")
    sl = tuple(slice(st, st + p) for st, p in zip(start, size, strict=True))
    part = arr[sl]
    pad = [(0, p - n) for p, n in zip(size, part.shape, strict=True)]
    if any(b for _, b in pad):
        part = np.pad(part, pad)
    return part
