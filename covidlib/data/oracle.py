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

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import approximate_polygon, find_contours

__all__ = [
    "DEFAULT_TOLERANCE",
    "FULL_SLICE_SECONDS",
    "IGNORE",
    "MIN_POLYGON_VERTICES",
    "POINT_SECONDS",
    "Box",
    "LabelCostLedger",
    "Point",
    "RegionLabel",
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


# --------------------------------------------------------------------------- validation


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


# ------------------------------------------------------------------------- P2 points


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


# ------------------------------------------------------------------------- P1 regions


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


# ----------------------------------------------------------------------------- costs


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
