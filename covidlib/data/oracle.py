"""Simulated annotator (oracle) for point supervision (P2) and region active learning (P1).

Everything works on one 2-D slice: ``mask2d`` is an integer label map (0 = background, the
dataset's infection labels elsewhere; see ``infection_labels`` in the manifests).

Conventions (shared with the losses, which use :data:`IGNORE` as ``ignore_index``):

* Point-label maps are ``uint8``: 0 = background point, 1 = infection point (binary task,
  ``per_class=False``) or the class value (``per_class=True``), :data:`IGNORE` = 255 =
  unlabelled pixel (P1's ``-1`` entries, P2's pixels outside the set of labelled pixels
  :math:`\\mathcal{I}_i` of Eq. 2).
* "Background" means every pixel whose value is *not* an infection label, so a label that is
  not listed in ``infection_labels`` (e.g. pleural effusion when ``infection_labels=(1, 2)``)
  counts as background.
* Boxes are ``(y0, y1, x0, x1)``, half-open, in pixel indices.
* Components use ``connectivity=2`` (8-neighbourhood) by default, ``1`` for 4-neighbourhood;
  on the 98 MedSeg slices 8-connected components number 779 against the 776 "infected
  regions" of P2 Table 1 (4-connected: 805).

P2 oracle (Sec 4.1.1): one point per connected infection component at the pixel with the
largest distance transform, plus background points ("the same amount of points are
uniformly sampled from the background", Implementation Details). P1 oracle (Sec 3, 5.1):
a region is tagged "background" when it holds no infection, otherwise it gets one random
point on the infection; the per-pixel variant reveals the mask inside the region.
Costs (P1 Sec 5.3): 3 s per point or tag; a per-pixel label costs 3 s per vertex of the
approximated polygon around the infection; a fully labelled slice costs 96 s.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from covidlib.data import oracle_base
from covidlib.data.oracle_base import *  # noqa: F403  (the records, re-exported below)
from covidlib.data.oracle_base import (
    IGNORE,
    Connectivity,
    Placement,
    Point,
    RegionKind,
    Scheme,
    _as_rng,
    _check_class_value,
    _check_mask,
    _components,
    _infection,
    _labels,
)
from covidlib.data.oracle_cost import (
    LabelCostLedger,
    full_effort_seconds,
    full_image_cost,
    pixel_label_cost,
    polygon_vertices,
    region_cost,
)
from covidlib.data.oracle_regions import (
    apply_region_label,
    region_grid,
    region_label,
    region_mask_label,
)

__all__ = [
    *oracle_base.__all__,
    "LabelCostLedger",
    "RegionKind",
    "Scheme",
    "apply_region_label",
    "background_points",
    "full_effort_seconds",
    "full_image_cost",
    "infection_points",
    "pixel_label_cost",
    "point_annotation",
    "points_to_label_map",
    "polygon_vertices",
    "region_cost",
    "region_grid",
    "region_label",
    "region_mask_label",
    "unlabelled_map",
]

def infection_points(
    mask2d: np.ndarray,
    infection_labels: Iterable[int] | None = None,
    connectivity: Connectivity = 2,
    *,
    per_class: bool = False,
    placement: Placement = "distance",
    rng: np.random.Generator | int | None = None,
) -> list[Point]:
    """One point per connected infection component (P2 Sec 4.1.1).

    ``placement="distance"`` (default) takes "the pixel with the largest distance
    transform" of the component: the Euclidean distance transform of the component alone
    (other components, other classes and the image border all count as outside, so a
    lesion cut by the border gets its point in the middle of its visible part, not on
    the edge). The maximum is taken over the component's own pixels, so the point is
    always inside it, even for rings, U shapes and 1-pixel components; ties go to the
    lowest raster index (row-major). ``placement="uniform"`` follows P2's Implementation
    Details instead ("uniformly sampling one pixel from each annotated mask") and needs
    ``rng``.

    ``per_class=False`` (P2 Tables 2-6, binary): components of the union of the infection
    labels, point label 1. ``per_class=True``: components of each class separately, point
    label = class value. ``infection_labels=None`` means every non-zero value. Points come
    in class order, then in the raster order of each component's first pixel.
    """
    m = _check_mask(mask2d)
    labels = _labels(m, infection_labels)
    if placement not in ("distance", "uniform"):
        raise ValueError(f"placement={placement!r}: expected 'distance' or 'uniform'")
    gen = None
    if placement == "uniform":
        if rng is None:
            raise ValueError("rng=None: placement='uniform' needs a Generator or a seed")
        gen = _as_rng(rng)
    points = []
    for comp, (sy, sx), value in _components(m, labels, per_class, connectivity):
        label = _check_class_value(value, True)
        if gen is None:
            dist = ndi.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]
            dist[~comp] = -1.0
            iy, ix = np.unravel_index(int(np.argmax(dist)), comp.shape)
        else:
            ys, xs = np.nonzero(comp)
            j = int(gen.integers(len(ys)))
            iy, ix = ys[j], xs[j]
        points.append(Point(int(sy.start + iy), int(sx.start + ix), label))
    return points


def background_points(
    mask2d: np.ndarray,
    n: int,
    rng: np.random.Generator | int,
    exclude: np.ndarray | Iterable[Point] | None = None,
    region_mask: np.ndarray | None = None,
    *,
    infection_labels: Iterable[int] | None = None,
) -> list[Point]:
    """``n`` background pixels sampled uniformly without replacement (P2 Sec 4.1.1), label 0.

    Candidates are the non-infection pixels, restricted to ``region_mask`` (boolean, e.g.
    the lung or a region) when given, minus ``exclude`` (a boolean map or a list of points
    already used). When fewer than ``n`` candidates exist, all of them are returned (no
    error: a slice may simply be small). Points are returned in raster order.
    """
    m = _check_mask(mask2d)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n={n!r}: expected a non-negative integer number of points")
    gen = _as_rng(rng)
    labels = _labels(m, infection_labels)
    candidates = ~_infection(m, labels)
    if region_mask is not None:
        r = np.asarray(region_mask)
        if r.shape != m.shape:
            raise ValueError(f"region_mask: shape {r.shape} differs from mask2d {m.shape}")
        candidates &= r.astype(bool)
    if exclude is not None:
        if isinstance(exclude, np.ndarray):
            if exclude.shape != m.shape:
                raise ValueError(f"exclude: shape {exclude.shape} differs from mask2d {m.shape}")
            candidates &= ~exclude.astype(bool)
        else:
            for p in exclude:
                y, x = int(p[0]), int(p[1])
                if not (0 <= y < m.shape[0] and 0 <= x < m.shape[1]):
                    raise ValueError(f"exclude: point {tuple(p)} outside the image {m.shape}")
                candidates[y, x] = False
    flat = np.flatnonzero(candidates)
    k = min(int(n), flat.size)
    chosen = np.sort(gen.choice(flat, size=k, replace=False)) if k else flat[:0]
    ys, xs = np.unravel_index(chosen, m.shape)
    return [Point(int(y), int(x), 0) for y, x in zip(ys, xs, strict=True)]


def point_annotation(
    mask2d: np.ndarray,
    rng: np.random.Generator | int,
    infection_labels: Iterable[int] | None = None,
    n_background: Literal["match"] | int = "match",
    min_background: int = 1,
    *,
    per_class: bool = False,
    connectivity: Connectivity = 2,
    background_region: np.ndarray | None = None,
    placement: Placement = "distance",
) -> list[Point]:
    """P2's full point label of a slice: infection points, then background points.

    ``n_background="match"``: as many background points as infection points ("The same
    amount of points are uniformly sampled from the background"), but at least
    ``min_background`` so that slices without infection still contribute background
    points. An integer gives that many background points (``min_background`` unused).
    ``background_region`` (boolean, e.g. the lung) restricts where background is sampled.
    """
    if isinstance(min_background, bool) or not isinstance(min_background, (int, np.integer)):
        raise ValueError(f"min_background={min_background!r}: expected an integer")
    if min_background < 0:
        raise ValueError(f"min_background={min_background}: must be >= 0")
    gen = _as_rng(rng)
    fg = infection_points(
        mask2d, infection_labels, connectivity, per_class=per_class, placement=placement, rng=gen
    )
    if isinstance(n_background, str):
        if n_background != "match":
            raise ValueError(f"n_background={n_background!r}: expected 'match' or an integer")
        n = max(len(fg), int(min_background))
    else:
        n = n_background
    bg = background_points(
        mask2d, n, gen, region_mask=background_region, infection_labels=infection_labels
    )
    return fg + bg


def unlabelled_map(shape: tuple[int, int], ignore: int = IGNORE) -> np.ndarray:
    """A ``uint8`` label map with every pixel unlabelled (``ignore``)."""
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"shape={shape!r}: expected a positive 2-D shape")
    if isinstance(ignore, bool) or not isinstance(ignore, (int, np.integer)):
        raise ValueError(f"ignore={ignore!r}: expected an integer in 0..255")
    if not 0 <= ignore <= 255:
        raise ValueError(f"ignore={ignore}: expected an integer in 0..255")
    return np.full(tuple(int(s) for s in shape), ignore, dtype=np.uint8)


def points_to_label_map(
    points: Iterable[Point], shape: tuple[int, int], ignore: int = IGNORE
) -> np.ndarray:
    """Rasterise points into a ``uint8`` map: ``label`` at each point, ``ignore`` elsewhere.

    This is P2's :math:`Y_i` of Eq. 2 (labelled pixels :math:`\\mathcal{I}_i`). Raises
    ``ValueError`` for a point outside ``shape``, a label equal to ``ignore`` or outside
    0..255, or two points on one pixel with different labels.
    """
    out = unlabelled_map(shape, ignore)
    seen: dict[tuple[int, int], int] = {}
    for p in points:
        y, x, label = (int(v) for v in p)
        if not (0 <= y < out.shape[0] and 0 <= x < out.shape[1]):
            raise ValueError(f"point {tuple(p)}: outside the map of shape {out.shape}")
        if not 0 <= label <= 255 or label == ignore:
            raise ValueError(f"point {tuple(p)}: label {label} clashes with ignore={ignore}")
        if seen.setdefault((y, x), label) != label:
            raise ValueError(f"point {tuple(p)}: pixel already labelled {seen[(y, x)]}")
        out[y, x] = label
    return out
