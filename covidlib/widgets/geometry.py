"""Canvas <-> image coordinates of the labelling widget (exact, rational arithmetic).

The widget draws the image window ``view = (vy0, vy1, vx0, vx1)`` (half-open, image pixels)
stretched over a canvas shown ``width x height`` CSS pixels wide (the browser may scale
the canvas, so the size is the one it measured at the click). Image pixel ``(y, x)`` covers
the canvas rectangle ``[(x - vx0) * sx, (x + 1 - vx0) * sx) x [(y - vy0) * sy, ...)`` with
``sx = width / (vx1 - vx0)``, ``sy = height / (vy1 - vy0)``. A click at ``(cx, cy)`` therefore
lands on ``x = vx0 + floor(cx / sx)``; computed with :class:`fractions.Fraction` so a click
exactly on a pixel edge always goes to the pixel right of / below it, whatever the scale.
"""

from __future__ import annotations

import math
from fractions import Fraction
from numbers import Real

import numpy as np

View = tuple[int, int, int, int]

__all__ = ["View", "body_mask", "body_regions", "canvas_size", "canvas_to_image",
           "check_view", "image_to_canvas", "zoom_view"]


def check_view(view: View, shape: tuple[int, int] | None = None) -> View:
    """``view`` as four ints ``(vy0, vy1, vx0, vx1)``, non-empty and inside ``shape``."""
    if len(view) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in view):
        raise ValueError(f"view={view!r}: expected four integers (y0, y1, x0, x1)")
    vy0, vy1, vx0, vx1 = view
    if not (0 <= vy0 < vy1 and 0 <= vx0 < vx1):
        raise ValueError(f"view={view!r}: not a non-empty half-open window")
    if shape is not None and (vy1 > shape[0] or vx1 > shape[1]):
        raise ValueError(f"view={view!r}: outside the image of shape {tuple(shape)}")
    return vy0, vy1, vx0, vx1


def _number(name: str, value: Real) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: expected a finite number")
    return Fraction(value)


def canvas_to_image(cx: Real, cy: Real, width: Real, height: Real, view: View
                    ) -> tuple[int, int]:
    """Image pixel ``(y, x)`` under the canvas point ``(cx, cy)`` (CSS pixels from the
    canvas' top-left corner; ``width x height`` its displayed size).

    A point on the far edge (``cx == width``) belongs to the last column; a point outside
    the canvas raises ``ValueError``.
    """
    vy0, vy1, vx0, vx1 = check_view(view)
    fx, fy = _number("cx", cx), _number("cy", cy)
    fw, fh = _number("width", width), _number("height", height)
    if fw <= 0 or fh <= 0:
        raise ValueError(f"canvas size {width!r} x {height!r}: must be positive")
    if not (0 <= fx <= fw and 0 <= fy <= fh):
        raise ValueError(f"click ({cx}, {cy}) is outside the canvas of {width} x {height}")
    x = vx0 + math.floor(fx * (vx1 - vx0) / fw)
    y = vy0 + math.floor(fy * (vy1 - vy0) / fh)
    return min(y, vy1 - 1), min(x, vx1 - 1)


def image_to_canvas(y: float, x: float, width: Real, height: Real, view: View
                    ) -> tuple[float, float]:
    """Canvas point ``(cx, cy)`` of the image point ``(y, x)``; the centre of pixel
    ``(i, j)`` is ``image_to_canvas(i + 0.5, j + 0.5, ...)``."""
    vy0, vy1, vx0, vx1 = check_view(view)
    return (float((Fraction(x) - vx0) * Fraction(width) / (vx1 - vx0)),
            float((Fraction(y) - vy0) * Fraction(height) / (vy1 - vy0)))


def canvas_size(view: View, max_side: int = 480) -> tuple[int, int]:
    """Canvas ``(width, height)`` in CSS pixels: the view scaled so its longer side is
    ``max_side``, keeping its aspect ratio (to the nearest pixel, at least 1)."""
    vy0, vy1, vx0, vx1 = check_view(view)
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
        raise ValueError(f"max_side={max_side!r}: expected a positive integer")
    h, w = vy1 - vy0, vx1 - vx0
    scale = Fraction(max_side, max(h, w))
    return max(1, round(w * scale)), max(1, round(h * scale))


def zoom_view(box: tuple[int, int, int, int], shape: tuple[int, int],
              margin: float = 0.5) -> View:
    """The window shown when zoomed on ``box``: the box grown by ``margin`` times its size on
    every side, shifted (not cut) to stay inside the image when it can."""
    y0, y1, x0, x1 = check_view(tuple(int(v) for v in box), shape)
    if not (isinstance(margin, int | float) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin={margin!r}: expected a finite number >= 0")

    def grow(a: int, b: int, n: int) -> tuple[int, int]:
        pad = math.ceil((b - a) * margin)
        size = min(n, (b - a) + 2 * pad)
        lo = max(0, min(a - pad, n - size))
        return lo, lo + size

    vy0, vy1 = grow(y0, y1, int(shape[0]))
    vx0, vx1 = grow(x0, x1, int(shape[1]))
    return vy0, vy1, vx0, vx1


def body_mask(gray: np.ndarray) -> np.ndarray:
    """The patient's body on a gray slice (uint8, bright = dense): Otsu's threshold, the
    largest 8-connected component, holes (the dark lungs) filled. A slice with no contrast
    gives an all-True mask (nothing is left out rather than everything)."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    g = np.asarray(gray, dtype=np.float32)
    if g.ndim != 2:
        raise ValueError(f"body_mask: expected a 2-D slice, got shape {g.shape}")
    if not np.isfinite(g).all() or float(g.max()) <= float(g.min()):
        return np.ones(g.shape, dtype=bool)
    fg = g > threshold_otsu(g)
    lab, n = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.ones(g.shape, dtype=bool)
    sizes = np.bincount(lab.ravel())[1:]
    body = lab == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(body)


def body_regions(mask: np.ndarray, boxes: list[tuple[int, int, int, int]],
                 min_fraction: float = 0.05) -> np.ndarray:
    """Which ``boxes`` (``(y0, y1, x0, x1)``, half-open) overlap ``mask``: at least
    ``min_fraction`` of the region's pixels (and at least one pixel) are in the mask.
    Returns a boolean array, one entry per box."""
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"body_regions: expected a 2-D mask, got shape {m.shape}")
    if not 0.0 <= float(min_fraction) <= 1.0:
        raise ValueError(f"body_regions: min_fraction={min_fraction!r} must be in [0, 1]")
    out = np.zeros(len(boxes), dtype=bool)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        inside = int(m[y0:y1, x0:x1].sum())
        out[i] = inside > 0 and inside >= min_fraction * (y1 - y0) * (x1 - x0)
    return out
