"""Geometry and painting primitives of the synthetic thorax phantom.

The voxel grid in patient millimetres, partial-volume painting, conical tubes (vessels,
airways), smooth noise textures and the space-colonisation tree of
:mod:`covidlib.data.phantom`. Everything is vectorised numpy / scipy.ndimage.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

__all__ = ["Grid", "colonise", "frac", "paint", "smooth_noise", "superellipse", "tube_depth",
           "unit"]


class Grid:
    """Voxel grid in patient coordinates (mm): X to the patient's right, Y anterior, z up."""

    def __init__(self, shape: tuple[int, int, int], s: float, sz: float, cx: float, cy: float):
        nz, ny, nx = shape
        self.shape, self.s, self.sz = shape, s, sz
        self.cx, self.cy = cx, cy
        self.x = ((np.arange(nx) - (nx - 1) / 2) * s - cx).astype(np.float32)
        self.y = ((np.arange(ny) - (ny - 1) / 2) * s - cy).astype(np.float32)
        self.z = ((np.arange(nz) + 0.5) * sz).astype(np.float32)
        self.X = self.x[None, None, :]
        self.Y = self.y[None, :, None]
        self.Z = self.z[:, None, None]

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index box covering the mm box [lo, hi] (X, Y, z), or None when outside."""
        nz, ny, nx = self.shape
        ix0 = math.floor((lo[0] + self.cx) / self.s + (nx - 1) / 2)
        ix1 = math.ceil((hi[0] + self.cx) / self.s + (nx - 1) / 2) + 1
        iy0 = math.floor((lo[1] + self.cy) / self.s + (ny - 1) / 2)
        iy1 = math.ceil((hi[1] + self.cy) / self.s + (ny - 1) / 2) + 1
        iz0 = math.floor(lo[2] / self.sz - 0.5)
        iz1 = math.ceil(hi[2] / self.sz - 0.5) + 1
        ix0, iy0, iz0 = max(ix0, 0), max(iy0, 0), max(iz0, 0)
        ix1, iy1, iz1 = min(ix1, nx), min(iy1, ny), min(iz1, nz)
        if ix0 >= ix1 or iy0 >= iy1 or iz0 >= iz1:
            return None
        return slice(iz0, iz1), slice(iy0, iy1), slice(ix0, ix1)

    def index(self, p: np.ndarray) -> tuple[int, int, int] | None:
        """Nearest voxel (z, y, x) of the point p (X, Y, z), or None outside the grid."""
        nz, ny, nx = self.shape
        ix = round((p[0] + self.cx) / self.s + (nx - 1) / 2)
        iy = round((p[1] + self.cy) / self.s + (ny - 1) / 2)
        iz = round(p[2] / self.sz - 0.5)
        if 0 <= ix < nx and 0 <= iy < ny and 0 <= iz < nz:
            return iz, iy, ix
        return None


def frac(depth: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction from a signed depth (mm, > 0 inside) over ``width`` mm."""
    return np.clip(depth / width + 0.5, 0.0, 1.0)


def paint(img: np.ndarray, f: np.ndarray, hu: float | np.ndarray,
          organs: np.ndarray | None = None, label: int | None = None) -> None:
    """Blend ``hu`` into ``img`` with partial-volume fraction ``f``; label where f > 0.5."""
    img += f * (hu - img)
    if organs is not None and label is not None:
        organs[np.broadcast_to(f > 0.5, img.shape)] = label


def tube_depth(g: Grid, segs: list[tuple], pad: float = 0.0) -> np.ndarray:
    """Max over conical segments ``(a, b, ra, rb)`` of ``radius + pad - distance`` (mm).

    Distances along z are shortened by a third of the slice spacing: a thin vessel that
    passes between two slice centres still shows in the slab, as in a thick-slice scan.
    """
    out = np.full(g.shape, -1e3, np.float32)
    slab = 0.33 * g.sz
    for a, b, ra, rb in segs:
        a = np.asarray(a, np.float32)
        b = np.asarray(b, np.float32)
        r = max(ra, rb) + pad + 2 * g.s
        lo = np.minimum(a, b) - r
        hi = np.maximum(a, b) + r
        lo[2] -= slab
        hi[2] += slab
        box = g.box(lo, hi)
        if box is None:
            continue
        px = g.x[box[2]][None, None, :] - a[0]
        py = g.y[box[1]][None, :, None] - a[1]
        pz = g.z[box[0]][:, None, None] - a[2]
        ab = b - a
        l2 = max(float(ab @ ab), 1e-6)
        t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / l2, 0.0, 1.0)
        dz = np.abs(pz - t * ab[2])
        dz = np.maximum(dz - slab, 0.0)
        dist = np.sqrt((px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + dz**2)
        d = ra + pad + t * (rb - ra) - dist
        sub = out[box]
        np.maximum(sub, d, out=sub)
    return out


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...],
                 sigma: float | tuple[float, ...]) -> np.ndarray:
    """Gaussian-filtered white noise, normalised to zero mean and unit std."""
    n = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    n -= n.mean()
    sd = float(n.std())
    return n / sd if sd > 0 else n


def unit(v: np.ndarray) -> np.ndarray:
    """``v`` scaled to unit length (a zero vector stays near zero)."""
    return v / max(float(np.linalg.norm(v)), 1e-9)


def colonise(rng: np.random.Generator, root: np.ndarray, attractors: np.ndarray, step: float,
             kill: float, r_leaf: float, murray: float = 2.7, max_iter: int = 80) -> list[tuple]:
    """Vessel / bronchial tree grown from ``root`` by space colonisation.

    Runions et al.'s algorithm: every attractor (a point sampled in the lung) pulls its
    nearest tree node; each pulled node grows one ``step`` towards the mean direction of its
    attractors; attractors closer than ``kill`` to the tree are consumed. Radii follow
    Murray's law from the leaves, ``r_parent**m = sum(r_child**m)``. Returns conical
    segments ``(a, b, r_a, r_b)``.
    """
    nodes = [np.asarray(root, float)[None]]
    parent = [np.array([-1])]
    pts = np.asarray(root, float)[None]
    alive = attractors
    for _ in range(max_iter):
        if len(alive) == 0:
            break
        d, near = cKDTree(pts).query(alive)
        pull = np.zeros_like(pts)
        np.add.at(pull, near, (alive - pts[near]) / np.maximum(d, 1e-6)[:, None])
        grow = np.unique(near)
        dirs = pull[grow]
        dirs += 0.08 * np.linalg.norm(dirs, axis=1, keepdims=True) * rng.standard_normal(dirs.shape)
        norm = np.linalg.norm(dirs, axis=1)
        ok = norm > 1e-6
        grow, dirs = grow[ok], dirs[ok] / norm[ok, None]
        if grow.size == 0:
            break
        new = pts[grow] + step * dirs
        nodes.append(new)
        parent.append(grow)
        pts = np.concatenate([pts, new])
        dn, _ = cKDTree(new).query(alive)
        alive = alive[dn > kill]
    pts = np.concatenate(nodes)
    par = np.concatenate(parent)
    # Murray radii: children always come after their parent, so sweep backwards
    has_child = np.zeros(len(pts), bool)
    has_child[par[par >= 0]] = True
    acc = np.where(has_child, 0.0, r_leaf**murray)
    for i in range(len(pts) - 1, 0, -1):
        acc[par[i]] += acc[i]
    rad = acc ** (1.0 / murray)
    return [(pts[par[i]], pts[i], rad[i], rad[i]) for i in range(1, len(pts))]




def superellipse(phi: np.ndarray, a: float, b_ant: float, b_post: float, p_ant: float,
                 p_post: float) -> np.ndarray:
    """Radius of a superellipse, rounder in front and flatter at the back (mm)."""
    c, s = np.abs(np.cos(phi)), np.abs(np.sin(phi))
    ant = np.sin(phi) > 0
    b = np.where(ant, b_ant, b_post)
    p = np.where(ant, p_ant, p_post)
    return ((c / a) ** p + (s / b) ** p) ** (-1.0 / p)

