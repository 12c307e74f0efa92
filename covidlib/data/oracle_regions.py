"""P1's region oracle (Sec 3, 5.1): region grids, a region's label, applying it to a label map.

Conventions as in :mod:`covidlib.data.oracle`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from covidlib.data.oracle_base import (
    Box,
    Point,
    RegionLabel,
    _as_rng,
    _check_box,
    _check_class_value,
    _check_mask,
    _infection,
    _labels,
)

__all__ = [
    "apply_region_label",
    "region_grid",
    "region_label",
    "region_mask_label",
]

def region_grid(shape: tuple[int, int], n_regions: int) -> list[Box]:
    """The K "equally-sized non-overlapping rectangles" of P1 Sec 3 (K = 64 in P1).

    ``n_regions`` must be a perfect square (a sqrt(K) x sqrt(K) grid); when the image side
    is not divisible, the cuts are rounded so sizes differ by at most one pixel. Boxes are
    listed in raster order.
    """
    if len(shape) != 2:
        raise ValueError(f"shape={shape!r}: expected (H, W)")
    h, w = (int(s) for s in shape)
    if isinstance(n_regions, bool) or not isinstance(n_regions, (int, np.integer)):
        raise ValueError(f"n_regions={n_regions!r}: expected a positive perfect square")
    side = math.isqrt(int(n_regions)) if n_regions > 0 else 0
    if side == 0 or side * side != n_regions:
        raise ValueError(f"n_regions={n_regions}: expected a positive perfect square (e.g. 64)")
    if side > h or side > w:
        raise ValueError(f"n_regions={n_regions}: a {side}x{side} grid does not fit {shape}")
    ys = np.round(np.linspace(0, h, side + 1)).astype(int)
    xs = np.round(np.linspace(0, w, side + 1)).astype(int)
    return [
        (int(ys[i]), int(ys[i + 1]), int(xs[j]), int(xs[j + 1]))
        for i in range(side)
        for j in range(side)
    ]


def region_label(
    mask2d: np.ndarray,
    box: Box,
    rng: np.random.Generator | int,
    infection_labels: Iterable[int] | None = None,
    *,
    per_class: bool = False,
) -> RegionLabel:
    """P1's point-level region oracle (Sec 3 and 5.1).

    "If it has no infected region, then it is labeled with the tag background; otherwise
    the label is a random point annotation on top of an infected region": the point is
    drawn uniformly among the infection pixels inside ``box``; its label is 1, or the class
    value with ``per_class=True``.
    """
    m = _check_mask(mask2d)
    y0, y1, x0, x1 = _check_box(box, m.shape)
    gen = _as_rng(rng)
    crop = m[y0:y1, x0:x1]
    inf = _infection(crop, _labels(m, infection_labels))
    flat = np.flatnonzero(inf)
    if flat.size == 0:
        return RegionLabel("background")
    iy, ix = np.unravel_index(int(gen.choice(flat)), crop.shape)
    label = _check_class_value(int(crop[iy, ix]), per_class)
    return RegionLabel("point", point=Point(int(y0 + iy), int(x0 + ix), label))


def region_mask_label(
    mask2d: np.ndarray,
    box: Box,
    infection_labels: Iterable[int] | None = None,
    *,
    per_class: bool = False,
) -> RegionLabel:
    """P1's per-pixel region oracle (Sec 3, Fig 7): reveal the mask inside ``box``.

    Returns kind "background" when the region holds no infection (a tag), otherwise kind
    "mask" with the region's labels (0 background, 1 infection or the class value).
    """
    m = _check_mask(mask2d)
    y0, y1, x0, x1 = _check_box(box, m.shape)
    labels = _labels(m, infection_labels)
    crop = m[y0:y1, x0:x1]
    inf = _infection(crop, labels)
    if not inf.any():
        return RegionLabel("background")
    if per_class:
        for c in labels:
            _check_class_value(c, True)
        out = np.where(inf, crop, 0).astype(np.uint8)
    else:
        out = inf.astype(np.uint8)
    return RegionLabel("mask", mask=out)


def apply_region_label(label_map: np.ndarray, box: Box, region: RegionLabel) -> np.ndarray:
    """Write a region's answer into a P1 label map in place (and return it).

    "background": every pixel of the box becomes 0. "point": only the clicked pixel gets
    its label; the rest of the box stays as it was (unlabelled = ``IGNORE``, P1's -1).
    "mask": the box receives the revealed labels.
    """
    lm = np.asarray(label_map)
    if not isinstance(label_map, np.ndarray) or lm.ndim != 2 or lm.dtype != np.uint8:
        raise ValueError(
            f"label_map: expected a 2-D uint8 array, got {type(label_map).__name__} "
            f"shape {getattr(lm, 'shape', None)} dtype {getattr(lm, 'dtype', None)}"
        )
    y0, y1, x0, x1 = _check_box(box, lm.shape)
    if region.kind == "background":
        lm[y0:y1, x0:x1] = 0
    elif region.kind == "point":
        assert region.point is not None
        y, x, label = region.point
        if not (y0 <= y < y1 and x0 <= x < x1):
            raise ValueError(f"point {tuple(region.point)}: outside box {box}")
        lm[y, x] = label
    else:
        assert region.mask is not None
        if region.mask.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"region mask: shape {region.mask.shape} does not fit box {box}")
        lm[y0:y1, x0:x1] = region.mask
    return lm
