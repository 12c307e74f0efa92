"""Labelling cost of P1 Sec 5.3: 3 s per point or tag, 3 s per polygon vertex, a ledger.

Conventions as in :mod:`covidlib.data.oracle`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import approximate_polygon, find_contours

from covidlib.data.oracle_base import (
    DEFAULT_TOLERANCE,
    FULL_SLICE_SECONDS,
    MIN_POLYGON_VERTICES,
    POINT_SECONDS,
    Box,
    Connectivity,
    RegionKind,
    RegionLabel,
    Scheme,
    _check_box,
    _check_mask,
    _components,
    _labels,
    _structure,
)
from covidlib.data.oracle_regions import region_mask_label

__all__ = [
    "LabelCostLedger",
    "full_effort_seconds",
    "full_image_cost",
    "pixel_label_cost",
    "polygon_vertices",
    "region_cost",
]

def polygon_vertices(
    mask2d: np.ndarray,
    tolerance: float = DEFAULT_TOLERANCE,
    infection_labels: Iterable[int] | None = None,
    *,
    per_class: bool = False,
    connectivity: Connectivity = 2,
    count_holes: bool = True,
) -> int:
    """Total vertices of the approximated polygons around the infection (P1 Sec 5.3).

    For each connected component: marching-squares contours at level 0.5
    (``skimage.measure.find_contours`` on the component padded by one pixel, so components
    touching the border close along it), simplified by Douglas-Peucker
    (``approximate_polygon`` with ``tolerance`` pixels). A closed polygon counts its
    vertices once (the repeated closing vertex is dropped) and at least
    :data:`MIN_POLYGON_VERTICES`. Holes are outlined too when ``count_holes`` (the annotator
    must trace them for the mask to be right); otherwise they are filled first.
    """
    m = _check_mask(mask2d)
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, (int, float, np.number))
        or not math.isfinite(float(tolerance))
        or tolerance < 0
    ):
        raise ValueError(f"tolerance={tolerance!r}: expected a finite number >= 0 (pixels)")
    labels = _labels(m, infection_labels)
    # 8-connected foreground <-> 4-connected background (and vice versa).
    fully = "high" if connectivity == 2 else "low"
    bg_structure = _structure(1 if connectivity == 2 else 2)
    total = 0
    for comp, _, _ in _components(m, labels, per_class, connectivity):
        if not count_holes:
            comp = ndi.binary_fill_holes(comp, structure=bg_structure)
        padded = np.pad(comp, 1).astype(np.float64)
        for contour in find_contours(padded, 0.5, fully_connected=fully):
            poly = approximate_polygon(contour, tolerance=float(tolerance))
            closed = len(poly) > 1 and np.array_equal(poly[0], poly[-1])
            total += max(MIN_POLYGON_VERTICES, len(poly) - 1 if closed else len(poly))
    return total


def pixel_label_cost(
    mask2d: np.ndarray,
    tolerance: float = DEFAULT_TOLERANCE,
    infection_labels: Iterable[int] | None = None,
    *,
    per_class: bool = False,
) -> float:
    """Seconds to draw the per-pixel label: 3 s x polygon vertices (P1 Sec 5.3); 0 if empty."""
    n = polygon_vertices(mask2d, tolerance, infection_labels, per_class=per_class)
    return POINT_SECONDS * n


def region_cost(region: RegionLabel | RegionKind, *, tolerance: float = DEFAULT_TOLERANCE) -> float:
    """Seconds for one labelled region (P1 Sec 5.1, 5.3).

    A background tag or a point costs 3 s ("The annotation cost for each region is
    similar"); a revealed mask costs 3 s per vertex of the polygons of its components
    (per class when the mask holds several classes), and 3 s if it has none.
    """
    kind = region.kind if isinstance(region, RegionLabel) else region
    if kind in ("background", "point"):
        return POINT_SECONDS
    if kind == "mask":
        if not isinstance(region, RegionLabel):
            raise ValueError("region='mask': pass the RegionLabel, its mask sets the cost")
        assert region.mask is not None
        n = polygon_vertices(region.mask, tolerance, per_class=True)
        return POINT_SECONDS * max(n, 1)
    raise ValueError(f"region={region!r}: expected a RegionLabel or 'background'/'point'/'mask'")


def full_image_cost(
    mask2d: np.ndarray,
    scheme: Scheme = "pixel",
    *,
    boxes: Sequence[Box] | None = None,
    infection_labels: Iterable[int] | None = None,
    per_class: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
) -> float:
    """Seconds to label every region of an image (P1's initial cycle, Sec 5.3).

    ``boxes`` defaults to the whole image as one region. ``scheme="point"``: one tag or
    point per region, 3 s each (P1: 5 images x 64 regions -> ``5 * 3 * 64`` s).
    ``scheme="pixel"``: the sum of :func:`region_cost` of each region's revealed mask
    (3 s x vertices inside it, 3 s for a background tag).
    """
    m = _check_mask(mask2d)
    regions = [(0, m.shape[0], 0, m.shape[1])] if boxes is None else list(boxes)
    if not regions:
        raise ValueError("boxes: empty list of regions")
    if scheme == "point":
        for b in regions:
            _check_box(b, m.shape)
        return POINT_SECONDS * len(regions)
    if scheme != "pixel":
        raise ValueError(f"scheme={scheme!r}: expected 'point' or 'pixel'")
    return float(
        sum(
            region_cost(
                region_mask_label(m, b, infection_labels, per_class=per_class),
                tolerance=tolerance,
            )
            for b in regions
        )
    )


def full_effort_seconds(n_slices: int) -> float:
    """Fully supervised labelling effort: ``n_slices`` x 96 s (P1 Sec 5.3: 368 -> 35328 s)."""
    if isinstance(n_slices, bool) or not isinstance(n_slices, (int, np.integer)) or n_slices < 0:
        raise ValueError(f"n_slices={n_slices!r}: expected a non-negative integer")
    return FULL_SLICE_SECONDS * int(n_slices)


@dataclass
class LabelCostLedger:
    """Running total of labelling seconds by kind (e.g. "initial", "point", "background").

    Serialisable with :meth:`to_dict` / :meth:`from_dict` for active-learning checkpoints.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, seconds: float, count: int = 1) -> None:
        """Record ``count`` labels of ``kind`` costing ``seconds`` in total."""
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind={kind!r}: expected a non-empty string")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.number)):
            raise ValueError(f"seconds={seconds!r}: expected a number")
        if not math.isfinite(float(seconds)) or seconds < 0:
            raise ValueError(f"seconds={seconds!r}: expected a finite number >= 0")
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"count={count!r}: expected a non-negative integer")
        self.seconds[kind] = self.seconds.get(kind, 0.0) + float(seconds)
        self.counts[kind] = self.counts.get(kind, 0) + int(count)

    def add_region(self, region: RegionLabel, *, tolerance: float = DEFAULT_TOLERANCE) -> float:
        """Record one region label under its kind; returns its cost in seconds."""
        s = region_cost(region, tolerance=tolerance)
        self.add(region.kind, s)
        return s

    @property
    def total(self) -> float:
        """All seconds recorded."""
        return float(sum(self.seconds.values()))

    def to_dict(self) -> dict:
        """Plain-JSON form: ``{"seconds": {...}, "counts": {...}, "total": ...}``."""
        return {"seconds": dict(self.seconds), "counts": dict(self.counts), "total": self.total}

    @classmethod
    def from_dict(cls, d: dict) -> LabelCostLedger:
        """Inverse of :meth:`to_dict` (``total`` is checked, not trusted)."""
        if not isinstance(d, dict) or "seconds" not in d or "counts" not in d:
            raise ValueError(f"ledger dict: expected keys 'seconds' and 'counts', got {d!r}")
        if set(d["seconds"]) != set(d["counts"]):
            raise ValueError(f"ledger dict: kinds differ between seconds and counts: {d!r}")
        out = cls()
        for kind, s in d["seconds"].items():
            out.add(kind, s, d["counts"][kind])
        if "total" in d and not math.isclose(out.total, float(d["total"]), abs_tol=1e-6):
            raise ValueError(f"ledger dict: total {d['total']} != sum of seconds {out.total}")
        return out
