"""Training-time augmentation and patch sampling on arrays.

* :func:`flip_lr_ud`: P4's augmentation (Sec. 4: every volume and its left-right, up-down
  and combined flips), one of four flip codes applied to the last two axes.
* :func:`crop_padded`: a crop of a fixed size from a start corner, zero-padded where the
  array is smaller (patch sampling of P4's networks, Sec. 4: 96^3 patches).
* :func:`sample_crop`: where such a crop starts (a share of them centred on a labelled
  voxel) and which flip it gets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["FLIP_CODES", "crop_padded", "flip_lr_ud", "sample_crop"]

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


def sample_crop(shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator,
                foreground: np.ndarray, pos_fraction: float = 0.5, flip: bool = False
                ) -> tuple[list[int], int]:
    """``(start, flip code)`` of a random ``patch`` crop of an array of ``shape``: with
    probability ``pos_fraction`` centred on a random voxel of ``foreground`` (flat indices;
    when there is any), otherwise anywhere; clamped inside the array (a crop larger than
    the array starts at 0 and is padded by :func:`crop_padded`). ``flip``: one of P4's four
    flips (Sec. 4, :func:`flip_lr_ud`), else code 0. The draws, in order: the centring coin
    (only with a foreground), the centre or one start per axis, the flip."""
    if len(patch) != len(shape):
        raise ValueError(f"sample_crop: patch {tuple(patch)} for a {len(shape)}-D array")
    if foreground.size and rng.random() < pos_fraction:
        centre = np.unravel_index(int(foreground[rng.integers(foreground.size)]), tuple(shape))
        start = [int(c) - p // 2 for c, p in zip(centre, patch, strict=True)]
    else:
        start = [int(rng.integers(0, max(n - p, 0) + 1)) for n, p in zip(shape, patch,
                                                                           strict=True)]
    start = [min(max(st, 0), max(n - p, 0)) for st, n, p in zip(start, shape, patch,
                                                                 strict=True)]
    return start, int(rng.integers(4)) if flip else 0
