"""The simulated annotator's records and checks: costs in seconds, points, region labels.

Shared by :mod:`covidlib.data.oracle` (its module docstring states the conventions),
:mod:`covidlib.data.oracle_regions` and :mod:`covidlib.data.oracle_cost`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "DEFAULT_TOLERANCE",
    "FULL_SLICE_SECONDS",
    "IGNORE",
    "MIN_POLYGON_VERTICES",
    "POINT_SECONDS",
    "Box",
    "Point",
    "RegionLabel",
]

IGNORE: int = 255
"""Value of an unlabelled pixel in a point/region label map (the losses' ``ignore_index``).

P1 writes unlabelled entries as -1; a ``uint8`` map cannot hold -1, so 255 stands for it.
"""
POINT_SECONDS: float = 3.0
"""Seconds for one click (point, background tag or polygon vertex): P1 Sec 5.3, "For the
point-level labeler it takes around 3 seconds to make a single point annotation [40]"."""
FULL_SLICE_SECONDS: float = 96.0
"""Seconds to label one slice per pixel. P1 Sec 5.3: "The total labeling cost is 35328
seconds as the training set consists of 368 slices and it takes around 96 seconds to label
a slice accurately [36]" (400 min for a 250-slice scan, Ma et al., = 1.6 min per slice)."""
DEFAULT_TOLERANCE: float = 1.0
"""Douglas-Peucker tolerance (pixels) of the approximated polygon: the polygon stays within
one pixel of the marching-squares contour, about the precision of a click. P1 does not give
its value; it is a parameter of every cost function."""
MIN_POLYGON_VERTICES: int = 3
"""A closed polygon needs at least three clicks, however small the component."""
Box = tuple[int, int, int, int]
Connectivity = Literal[1, 2]
Placement = Literal["distance", "uniform"]
RegionKind = Literal["background", "point", "mask"]
Scheme = Literal["point", "pixel"]


class Point(NamedTuple):
    """One clicked pixel: row ``y``, column ``x`` and its ``label`` (0 = background)."""

    y: int
    x: int
    label: int


@dataclass(frozen=True)
class RegionLabel:
    """The oracle's answer for one region (P1 Sec 3).

    ``kind`` is "background" (tag: the whole region is background), "point" (``point`` is
    one click on an infection, image coordinates) or "mask" (``mask`` holds the revealed
    per-pixel labels of the region, shape ``(y1 - y0, x1 - x0)``, ``uint8``).
    """

    kind: RegionKind
    point: Point | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("background", "point", "mask"):
            raise ValueError(f"kind={self.kind!r}: expected 'background', 'point' or 'mask'")
        if (self.kind == "point") != (self.point is not None):
            raise ValueError(f"kind={self.kind!r}: a point is required for, and only for, 'point'")
        if (self.kind == "mask") != (self.mask is not None):
            raise ValueError(f"kind={self.kind!r}: a mask is required for, and only for, 'mask'")


def _check_mask(mask2d: np.ndarray, name: str = "mask2d") -> np.ndarray:
    """Return ``mask2d`` as a non-negative integer 2-D array or raise ``ValueError``."""
    m = np.asarray(mask2d)
    if m.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D label map, got shape {m.shape}")
    if m.size == 0:
        raise ValueError(f"{name}: empty array of shape {m.shape}")
    if m.dtype == bool:
        return m.astype(np.uint8)
    if np.issubdtype(m.dtype, np.floating):
        if not np.all(np.isfinite(m)) or not np.array_equal(m, np.round(m)):
            raise ValueError(f"{name}: float label map with non-integer values (dtype {m.dtype})")
        m = m.astype(np.int64)
    elif not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer label map, got dtype {m.dtype}")
    if m.min() < 0:
        raise ValueError(f"{name}: negative label {int(m.min())}")
    return m


def _labels(m: np.ndarray, infection_labels: Iterable[int] | None) -> list[int]:
    """Sorted infection labels; ``None`` means every non-zero value present in ``m``."""
    if infection_labels is None:
        return [int(v) for v in np.unique(m) if v != 0]
    labels = list(infection_labels)
    if not labels:
        raise ValueError("infection_labels: empty; give at least one label or None")
    out = []
    for v in labels:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"infection_labels: {v!r} is not a positive integer label")
        out.append(int(v))
    return sorted(set(out))


def _infection(m: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    return np.isin(m, labels) if labels else np.zeros(m.shape, dtype=bool)


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (1, 2) or isinstance(connectivity, bool):
        raise ValueError(f"connectivity={connectivity!r}: expected 1 (4-nbhd) or 2 (8-nbhd)")
    return ndi.generate_binary_structure(2, connectivity)


def _check_class_value(label: int, per_class: bool) -> int:
    out = label if per_class else 1
    if out >= IGNORE:
        raise ValueError(f"label {label}: class values must be below IGNORE={IGNORE}")
    return out


def _check_box(box: Sequence[int], shape: tuple[int, int]) -> Box:
    if not isinstance(box, (tuple, list, np.ndarray)) or len(box) != 4 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in box
    ):
        raise ValueError(f"box={box!r}: expected four integers (y0, y1, x0, x1)")
    y0, y1, x0, x1 = (int(v) for v in box)
    h, w = shape
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise ValueError(
            f"box={box!r}: not a non-empty half-open box inside the image of shape {shape}"
        )
    return y0, y1, x0, x1


def _as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng={rng!r}: expected a numpy Generator or an integer seed")


def _components(
    m: np.ndarray, labels: Sequence[int], per_class: bool, connectivity: int
) -> list[tuple[np.ndarray, tuple[slice, slice], int]]:
    """Connected components as (boolean crop, its slices in the image, class value).

    Per class when ``per_class`` (class order, then ``ndi.label`` raster order), otherwise
    of the binary infection mask with class value 1.
    """
    structure = _structure(connectivity)
    groups = [(np.asarray(m == c), c) for c in labels] if per_class else [
        (_infection(m, labels), 1)
    ]
    out = []
    for binary, value in groups:
        lab, _ = ndi.label(binary, structure=structure)
        for k, sl in enumerate(ndi.find_objects(lab), start=1):
            if sl is not None:
                out.append((lab[sl] == k, sl, value))
    return out
