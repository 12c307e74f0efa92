"""Synthetic thorax CT phantom: the embedded default dataset of covidlib.

The phantom stands in for the 20 volumes of Ma et al. (P1's COVID-19-B, P2's COVID-19-C,
P4's "Benchmark") where the real data cannot be used: it has the same file layout, the
same units (Hounsfield) and the same kinds of labels, so every reader, model and notebook
runs on it unchanged.

Each case is a chest CT volume ``(Z, H, W)`` in HU with a body wall (skin, fat, muscle),
two lungs with parenchymal texture, fissures, a dependent density gradient, airways and a
tapering pulmonary vessel tree, heart, aorta, pulmonary trunk, superior vena cava,
oesophagus, spine (vertebral bodies, discs, posterior elements, spinal cord), ribs with
costal cartilage, sternum, scapulae, clavicles, liver/stomach (with its air bubble)/spleen
under the domed diaphragm, and the CT couch;
plus COVID-19-like lesions: ground-glass opacities (label 1, added on top of the
parenchyma so vessels stay visible, sometimes with "crazy paving") and consolidations
(label 2, dense, often inside a ground-glass halo), placed with the peripheral, posterior
and lower-lobe predominance of COVID-19 pneumonia.

Array convention (shared with :mod:`covidlib.data.readers`): ``image[z, y, x]`` with
``z`` inferior -> superior, ``y`` posterior -> anterior and ``x`` patient's left -> right
(RAS+); show ``image[z, ::-1, ::-1]`` for the radiological view. Files are written with
the affine ``diag(sx, sy, sz)`` (plus a translation), so they read back exactly.

Scanner "sites": case ``i`` is scanned at site ``(i // cases_per_site) % n_sites``
(default 5 cases per site: cases 0-4 site0, 5-9 site1, 10-14 site2, 15-19 site3). The
"sep" split of the 20-case set (first 15 train, 16th val, last 4 test) therefore tests on
a site never seen in training: the noisiest, blurriest scanner with the widest field of
view and a shifted contrast -- a domain shift, as between the hospitals of Ma et al.
Each site has its own quantum noise, reconstruction blur, slice thickness, gain/offset
and field of view (so in-plane spacing = FOV / W differs by site); the slice spacing is
the scanned length (the lungs plus margins, which vary by patient) divided by ``Z``.

Everything is vectorised numpy / scipy.ndimage; case ``i`` depends only on the config and
``np.random.default_rng([seed, i])``, so cases are generated independently, in parallel
and resumably.
"""

from __future__ import annotations

import gzip
import json
import math
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from covidlib.data.errors import DataError
from covidlib.data.types import Case

__all__ = [
    "DATASET_DIRNAME",
    "GENERATOR_VERSION",
    "IMAGE_DIR",
    "INFECTION_DIR",
    "INFECTION_LABELS",
    "LUNG_DIR",
    "META_NAME",
    "ORGAN_DIR",
    "ORGAN_LABELS",
    "PhantomConfig",
    "SiteProfile",
    "case_id",
    "default_sites",
    "ensure_synthetic",
    "generate_case",
    "write_dataset",
]

#: Bumped whenever the same config would produce different volumes.
GENERATOR_VERSION = "1.0.0"

#: Organ label map of ``Organ_Mask`` / ``Case.organs`` (stable; never renumber).
ORGAN_LABELS: dict[int, str] = {
    0: "background",  # air outside the body (and the couch)
    1: "left lung",
    2: "right lung",
    3: "heart",
    4: "airways",  # trachea and main bronchi (lumen); intrapulmonary airways are lung
    5: "esophagus",
    6: "spinal cord",
    7: "spine",  # vertebral bodies, discs and posterior elements
    8: "ribs",  # ribs and costal cartilage
    9: "aorta",
    10: "sternum",
    11: "liver",
    12: "soft tissue",  # skin, fat, muscle, mediastinum, other vessels, stomach, spleen
    13: "other bone",  # scapulae and clavicles
}

#: Infection label map of ``Infection_Mask`` / ``Case.mask``.
INFECTION_LABELS: dict[int, str] = {0: "background", 1: "ground-glass opacity", 2: "consolidation"}

IMAGE_DIR = "COVID-19-CT-Seg_20cases"
INFECTION_DIR = "Infection_Mask"
LUNG_DIR = "Lung_Mask"
ORGAN_DIR = "Organ_Mask"
DATASET_DIRNAME = "synthetic"
META_NAME = "phantom.json"
HU_MIN, HU_MAX = -1024, 3071
_MIN_SHAPE = (8, 48, 48)


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SiteProfile:
    """Acquisition settings of one simulated scanner ("site").

    The displayed HU are ``-1000 + gain * (HU_true + 1000) + offset_hu`` (air stays
    calibrated, contrast and the water level shift), after a Gaussian reconstruction blur
    of ``blur_mm`` in-plane and a slice profile of ``slice_thickness`` times the slice
    spacing, plus spatially correlated noise of standard deviation ``noise_hu``.
    """

    noise_hu: float
    gain: float
    offset_hu: float
    blur_mm: float
    fov_mm: float  # reconstruction field of view: in-plane spacing = fov_mm / W
    slice_thickness: float  # slice thickness / slice spacing (>= 1 means overlapping slabs)


_GAINS = (1.0, 0.96, 1.04, 0.92)
_OFFSETS = (0.0, 10.0, -10.0, 20.0)


def default_sites(n_sites: int) -> tuple[SiteProfile, ...]:
    """``n_sites`` scanners from clean/sharp/narrow-FOV (site0) to noisy/blurry/wide (last)."""
    out = []
    for k in range(n_sites):
        t = k / max(n_sites - 1, 1)
        out.append(
            SiteProfile(
                noise_hu=round(12.0 + 33.0 * t, 3),
                gain=_GAINS[k % 4],
                offset_hu=_OFFSETS[k % 4],
                blur_mm=round(0.5 + 1.1 * t, 3),
                fov_mm=round(380.0 + 60.0 * t, 3),
                slice_thickness=round(1.0 + t, 3),
            )
        )
    return tuple(out)


def _bad(field_name: str, value: Any, reason: str) -> ValueError:
    return ValueError(f"PhantomConfig.{field_name} = {value!r}: {reason}")


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that determines the phantom dataset (hashable; see :meth:`to_dict`).

    ``lesion_count`` is the inclusive range of lesions per infected case,
    ``lesion_radius_mm`` the range of lesion radii (drawn log-uniformly),
    ``p_clean_case`` the probability that a case has no lesion at all and
    ``p_consolidation`` the probability that a lesion has a consolidated core.
    ``sites=None`` means :func:`default_sites` ``(n_sites)``.
    """

    n_cases: int = 20
    shape: tuple[int, int, int] = (48, 160, 160)
    n_sites: int = 4
    sites: tuple[SiteProfile, ...] | None = None
    cases_per_site: int = 5
    lesion_count: tuple[int, int] = (1, 8)
    lesion_radius_mm: tuple[float, float] = (12.0, 55.0)
    p_clean_case: float = 0.05
    p_consolidation: float = 0.4
    seed: int = 0

    def __post_init__(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, int | np.integer) and not isinstance(v, bool)

        if not is_int(self.n_cases) or self.n_cases < 1:
            raise _bad("n_cases", self.n_cases, "must be an integer >= 1")
        shape = tuple(self.shape) if isinstance(self.shape, list | tuple) else self.shape
        if (
            not isinstance(shape, tuple)
            or len(shape) != 3
            or not all(is_int(s) for s in shape)
            or any(s < m for s, m in zip(shape, _MIN_SHAPE, strict=True))
        ):
            raise _bad("shape", self.shape, f"need three integers (Z, H, W) >= {_MIN_SHAPE}")
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))
        if not is_int(self.n_sites) or self.n_sites < 1:
            raise _bad("n_sites", self.n_sites, "must be an integer >= 1")
        if not is_int(self.cases_per_site) or self.cases_per_site < 1:
            raise _bad("cases_per_site", self.cases_per_site, "must be an integer >= 1")
        if not is_int(self.seed) or self.seed < 0:
            raise _bad("seed", self.seed, "must be an integer >= 0")
        def pair(v: Any) -> tuple:
            return tuple(v) if isinstance(v, list | tuple) and len(v) == 2 else ()

        lc = pair(self.lesion_count)
        if not lc or not all(map(is_int, lc)) or not 0 <= lc[0] <= lc[1]:
            raise _bad("lesion_count", self.lesion_count, "need (lo, hi) integers, 0 <= lo <= hi")
        object.__setattr__(self, "lesion_count", (int(lc[0]), int(lc[1])))
        lr = pair(self.lesion_radius_mm)
        if not lr or not all(map(_finite, lr)) or not 0 < lr[0] <= lr[1]:
            raise _bad("lesion_radius_mm", self.lesion_radius_mm, "need (lo, hi) with 0 < lo <= hi")
        object.__setattr__(self, "lesion_radius_mm", (float(lr[0]), float(lr[1])))
        for name in ("p_clean_case", "p_consolidation"):
            v = getattr(self, name)
            if not _finite(v) or not 0.0 <= v <= 1.0:
                raise _bad(name, v, "must be a probability in [0, 1]")
        if self.sites is not None:
            sites = tuple(SiteProfile(**s) if isinstance(s, dict) else s for s in self.sites)
            if len(sites) != self.n_sites:
                raise _bad("sites", len(sites), f"need one SiteProfile per site ({self.n_sites})")
            object.__setattr__(self, "sites", sites)
        for k, s in enumerate(self.site_profiles()):
            if not isinstance(s, SiteProfile):
                raise _bad(f"sites[{k}]", s, "must be a SiteProfile")
            checks = {
                "noise_hu": s.noise_hu >= 0,
                "gain": s.gain > 0,
                "offset_hu": True,
                "blur_mm": s.blur_mm >= 0,
                "fov_mm": s.fov_mm > 0,
                "slice_thickness": s.slice_thickness > 0,
            }
            for f in fields(SiteProfile):
                v = getattr(s, f.name)
                if not _finite(v):
                    raise _bad(f"sites[{k}].{f.name}", v, "must be a finite number")
                if not checks[f.name]:
                    what = ">= 0" if f.name in ("noise_hu", "blur_mm") else "> 0"
                    raise _bad(f"sites[{k}].{f.name}", v, f"must be {what}")

    def site_profiles(self) -> tuple[SiteProfile, ...]:
        """The ``n_sites`` site profiles (the defaults when ``sites`` is None)."""
        return self.sites if self.sites is not None else default_sites(self.n_sites)

    def site_of(self, index: int) -> int:
        """Site of case ``index``: contiguous blocks of ``cases_per_site`` cases."""
        return (index // self.cases_per_site) % self.n_sites

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (sites expanded), for hashing and phantom.json."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["lesion_count"] = list(self.lesion_count)
        d["lesion_radius_mm"] = list(self.lesion_radius_mm)
        d["sites"] = [asdict(s) for s in self.site_profiles()]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhantomConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)


def case_id(index: int) -> str:
    """File stem of case ``index``: ``synth_000``, ``synth_001``, ..."""
    return f"synth_{index:03d}"


# --------------------------------------------------------------------------- geometry
class _Grid:
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


def _frac(depth: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction from a signed depth (mm, > 0 inside) over ``width`` mm."""
    return np.clip(depth / width + 0.5, 0.0, 1.0)


def _paint(img: np.ndarray, frac: np.ndarray, hu: float | np.ndarray,
           organs: np.ndarray | None = None, label: int | None = None) -> None:
    """Blend ``hu`` into ``img`` with partial-volume ``frac``; label where frac > 0.5."""
    img += frac * (hu - img)
    if organs is not None and label is not None:
        organs[np.broadcast_to(frac > 0.5, img.shape)] = label


def _tube_depth(g: _Grid, segs: list[tuple], pad: float = 0.0) -> np.ndarray:
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


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...],
                  sigma: float | tuple[float, ...]) -> np.ndarray:
    """Gaussian-filtered white noise, normalised to zero mean and unit std."""
    n = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    n -= n.mean()
    sd = float(n.std())
    return n / sd if sd > 0 else n


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _colonise(rng: np.random.Generator, root: np.ndarray, attractors: np.ndarray, step: float,
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


# --------------------------------------------------------------------------- anatomy
def _superellipse(phi: np.ndarray, a: float, b_ant: float, b_post: float, p_ant: float,
                  p_post: float) -> np.ndarray:
    """Radius of a superellipse, rounder in front and flatter at the back (mm)."""
    c, s = np.abs(np.cos(phi)), np.abs(np.sin(phi))
    ant = np.sin(phi) > 0
    b = np.where(ant, b_ant, b_post)
    p = np.where(ant, p_ant, p_post)
    return ((c / a) ** p + (s / b) ** p) ** (-1.0 / p)


# A painter, exempt from the 100-line rule (issue 13): one straight sequence of organ
# strokes in drawing order (body, lungs, heart, vessels, spine, ...); each stroke is a few
# lines and splitting them apart would only hide that order.
def _render_anatomy(g: _Grid, rng: np.random.Generator, p: dict[str, float]
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """True-HU volume and organ map of one patient (no lesions, no scanner effects)."""
    s = g.s
    img = np.full(g.shape, -1000.0, np.float32)
    organs = np.zeros(g.shape, np.uint8)
    X, Y, Z = g.X, g.Y, g.Z
    z_low, L = p["z_low"], p["L"]
    z_apex = z_low + L
    zrel = (Z - z_low) / L  # 0 at the lung base, 1 at the apex

    # ---- body outline and wall layers (polar coordinates about the body centre)
    r2 = np.sqrt(X**2 + Y**2)  # (1, H, W)
    phi = np.arctan2(Y, X)
    pert = 1.0 + sum(p[f"c{k}"] * np.cos(k * phi + p[f"psi{k}"]) for k in (2, 3, 4))
    rb0 = _superellipse(phi, p["a"], p["b_ant"], p["b_post"], 2.1, 2.6) * pert
    zscale = 1.0 - 0.06 * np.clip(zrel, 0, 1.2) ** 2 + 0.03 * np.clip(-zrel, 0, 1)
    Rb = rb0 * zscale  # (Z, H, W)
    depth = Rb - r2  # > 0 inside the body
    sinp, cosp = np.sin(phi), np.cos(phi)
    fat = p["fat"] * (0.65 + 0.45 * cosp**2 + 0.25 * np.clip(-sinp, 0, 1)) * (1 + 0.4 * zrel)
    fat = fat * (1.0 - 0.7 * np.exp(-(((phi - np.pi / 2) / 0.25) ** 2)))  # thin over sternum
    post = np.exp(-(((phi + np.pi / 2) / 0.33) ** 2))
    pect = np.exp(-(((np.abs(phi - np.pi / 2) - 0.75) / 0.35) ** 2)) * (sinp > 0)
    # shoulder girdle: scapular muscles on the upper posterolateral chest wall
    scap_ang = np.abs(np.angle(np.exp(1j * (phi + np.pi / 2))))  # 0 at the spine, pi in front
    scap = np.exp(-(((scap_ang - 0.85) / 0.45) ** 2)) * np.clip((zrel - 0.4) / 0.2, 0, 1)
    muscle = (p["muscle"] + p["pect"] * pect * np.clip(zrel + 0.2, 0, 1) + p["paraspinal"] * post
              + 16.0 * scap)
    skin = 1.5
    rib_zone = 9.0
    wall = skin + fat + muscle + rib_zone
    # the rib cage narrows upwards (shoulder-girdle muscles fill the difference)
    cage = 1.0 - 0.2 * np.clip((zrel - 0.3) / 0.7, 0, 1) ** 1.5
    Rc = Rb * cage - wall  # thoracic cavity radius (inner surface of the ribs)
    dc = Rc - r2  # > 0 inside the cavity

    body_f = _frac(depth, s)
    tex_soft = _smooth_noise(rng, g.shape, (0.6, 2.0, 2.0))
    fat_tex = _smooth_noise(rng, g.shape, (0.5, 0.7, 0.7))
    tissue = np.where(depth < skin, 30.0,
                      np.where(depth < skin + fat, -100.0 + 12 * fat_tex, 45.0 + 6 * tex_soft))
    _paint(img, body_f, tissue.astype(np.float32), organs, 12)
    # intercostal muscle between the ribs, then the cavity contents
    cav = dc > 0
    # ---- diaphragm domes (right higher: liver), tilted up anteriorly
    a_c = p["a"] - p["fat"] - p["muscle"] - rib_zone
    b_c = p["b_ant"] - p["fat"] - p["muscle"] - rib_zone

    def diaphragm(x: Any, y: Any) -> Any:
        """Height (mm) of the diaphragm under (x, y): two paraboloid domes, max of both."""
        domes = [h * (1 - ((x - sd * 0.4 * a_c) / (0.62 * a_c)) ** 2
                      - ((y - 0.15 * b_c) / (1.05 * b_c)) ** 2)
                 for sd, h in ((1, p["dome_r"]), (-1, p["dome_l"]))]
        return z_low + np.maximum(np.maximum(domes[0], domes[1]) + 0.18 * y, 0.0)

    D = diaphragm(X, Y)  # (1, H, W)
    above = Z > D
    # lung envelopes at the apex: one shrinking ellipse over each hemithorax
    z_t = z_low + 0.6 * L
    tau = np.sqrt(np.clip(1 - np.clip((Z - z_t) / (z_apex - z_t), 0, None) ** 2.5, 0, 1))
    tau = np.where(Z < z_t, 1.0, tau)
    caps = np.zeros(g.shape, bool)
    for side in (1, -1):
        caps |= (((X - side * 0.52 * a_c) / (0.56 * a_c * tau + 1e-3)) ** 2
                 + ((Y + 0.05 * b_c) / (1.15 * b_c * tau + 1e-3)) ** 2) < 1
    # mediastinal fat; soft tissue of the thoracic inlet around the apices
    neck = (Z > z_t) & ~caps
    fill = np.where(above, np.where(neck, 25.0 + 8 * tex_soft, -70.0 + 20 * tex_soft), 0.0)
    fill = fill.astype(np.float32)
    # abdomen below the domes: liver (right + left lobe anteriorly), spleen, stomach
    def ell(x0: float, y0: float, rx: float, ry: float) -> np.ndarray:
        return ((X - x0) / rx) ** 2 + ((Y - y0) / ry) ** 2 < 1

    liver = (~above) & (ell(0.3 * a_c, 0.0, 0.95 * a_c, 1.1 * b_c)
                        | ell(-0.2 * a_c, 0.45 * b_c, 0.5 * a_c, 0.5 * b_c))
    spleen = (~above) & ~liver & ell(-0.75 * a_c, -0.45 * b_c, 0.35 * a_c, 0.45 * b_c)
    fill = np.where(liver, 58.0 + 5 * tex_soft, fill)
    fill = np.where(spleen, 48.0 + 5 * tex_soft, fill)
    stomach = (~above) & ~liver & ~spleen
    fill = np.where(stomach, 28.0 + 5 * tex_soft, fill)
    cav_f = _frac(dc, s)
    _paint(img, cav_f, fill)
    # gastric air bubble in the fundus, just under the left dome
    gx, gy, gr = -0.55 * a_c, 0.0, p["gastric_air"]
    gz = float(diaphragm(gx, gy)) - 0.6 * gr - 4.0
    q_gas = np.sqrt(((X - gx) / (0.24 * a_c)) ** 2 + ((Y - gy) / (0.26 * b_c)) ** 2
                    + ((Z - gz) / max(gr, 1.0)) ** 2)
    gas = np.where(~above & cav & (gr > 5.0), (1.0 - q_gas) * min(gr, 0.3 * b_c), -10.0)
    _paint(img, _frac(gas, s), -990.0)
    organs[(cav_f > 0.5) & liver & (gas < 0)] = 11

    # ---- mediastinal landmarks
    y_sc = -p["b_post"] + p["canal_depth"]  # spinal canal centre
    r_vb, r_can = p["r_vb"], 7.5
    y_vb = y_sc + r_can + 5.0 + r_vb  # vertebral body centre
    y_es = y_vb + r_vb + 9.0
    x_tr, r_tr = p["x_tr"], p["r_tr"]
    y_tr = y_es + 9.0 + r_tr
    z_car = z_low + 0.58 * L
    z_top = float(g.z[-1]) + g.sz
    # heart: rotated ellipsoid sitting on the left dome
    hx, hy = p["heart_x"], p["heart_y"] + 0.15 * b_c
    ha, hb, hc = p["heart_a"], p["heart_b"], p["heart_c"]
    th = math.radians(p["heart_rot"])
    ux, uy = -math.cos(th), math.sin(th)  # long axis: to the left and anterior
    pu = (X - hx) * ux + (Y - hy) * uy
    pv = -(X - hx) * uy + (Y - hy) * ux
    hz = float(diaphragm(hx, hy)) + 0.55 * hc
    q_heart = np.sqrt((pu / ha) ** 2 + (pv / hb) ** 2 + ((Z - hz) / hc) ** 2)
    heart_depth = (1.0 - q_heart) * hb
    heart_depth = np.minimum(heart_depth, (Z - D + 4.0))
    z_htop = hz + hc
    # great vessels and tubes (points are (X, Y, z) in mm)
    x_da, y_da = -(r_vb + p["r_dao"] + 2.0), y_vb + 2.0
    x_aa, y_aa = 8.0, max(hy + 0.25 * hb, y_tr + 22.0)
    z_arch = z_car + 14.0
    ctr = np.array([(x_da + x_aa) / 2, (y_da + y_aa) / 2, z_arch])
    half = np.array([x_aa - x_da, y_aa - y_da, 0.0]) / 2
    r_arch = float(np.linalg.norm(half))
    arch = [ctr + math.cos(t) * half + np.array([0, 0, math.sin(t) * r_arch * 0.8])
            for t in np.linspace(0, np.pi, 9)]
    aorta_pts = [np.array([x_aa - 4, hy + 0.1 * hb, z_htop - 25.0]), *arch,
                 np.array([x_da, y_da, z_arch - 20.0]), np.array([x_da * 0.5, y_da - 2, z_low]),
                 np.array([x_da * 0.3, y_da - 4, -40.0])]
    r_aa, r_da = p["r_aa"], p["r_dao"]
    radii = np.concatenate([[r_aa, r_aa], np.linspace(r_aa, r_da, len(arch)),
                            [r_da, r_da * 0.9]])[: len(aorta_pts)]
    aorta_segs = [(aorta_pts[i], aorta_pts[i + 1], radii[i], radii[min(i + 1, len(radii) - 1)])
                  for i in range(len(aorta_pts) - 1)]
    bif = np.array([-6.0, y_tr + 12.0, z_car - 14.0])
    hil_r = np.array([p["hilum_x"], y_tr - 4.0, z_car - 16.0])
    hil_l = np.array([-p["hilum_x"], y_tr - 6.0, z_car - 10.0])
    pa_segs = [(np.array([hx - 0.2 * ha, hy + 0.5 * hb, z_htop - 20.0]), bif, 13.0, 12.0),
               (bif, hil_r, 10.0, 8.0), (bif, hil_l, 10.0, 8.0)]
    svc_segs = [(np.array([x_aa + 22.0, y_tr + 16.0, z_top + 5]),
                 np.array([x_aa + 20.0, y_tr + 12.0, z_htop - 10.0]), 9.0, 10.0)]
    eso_pts = [np.array([x_tr - 4, y_es, z_top + 5]), np.array([-7.0, y_es, z_car]),
               np.array([-20.0, y_es + 8, z_low + 25]), np.array([-45.0, y_es + 30, z_low - 15])]
    eso_segs = [(eso_pts[i], eso_pts[i + 1], p["r_es"], p["r_es"]) for i in range(3)]
    carina = np.array([x_tr, y_tr, z_car])
    bro_r_end = np.array([x_tr + 26.0, y_tr - 6.0, z_car - 20.0])
    bro_l_end = np.array([x_tr - 42.0, y_tr - 9.0, z_car - 28.0])
    trachea_segs = [(np.array([x_tr, y_tr, z_top + 5]), carina, r_tr, r_tr),
                    (carina, bro_r_end, 0.8 * r_tr, 0.75 * r_tr),
                    (carina, bro_l_end, 0.7 * r_tr, 0.65 * r_tr)]
    aorta_d = _tube_depth(g, aorta_segs)
    pa_d = _tube_depth(g, pa_segs)
    svc_d = _tube_depth(g, svc_segs)
    eso_d = _tube_depth(g, eso_segs)
    air_d = _tube_depth(g, trachea_segs)
    # spine column
    vb_d = r_vb * (1.1 - 0.15 * zrel.clip(0, 1)) - np.sqrt(X**2 + (Y - y_vb) ** 2)
    canal_r = np.sqrt(X**2 + (Y - y_sc) ** 2)

    # ---- lungs: cavity above the diaphragm, minus the mediastinum, tapered at the apex
    x_mid = x_tr
    env = cav & above & (Z < z_apex) & caps
    upper = Z > z_htop - 25.0
    excl = (
        (heart_depth > -5.0)
        | (aorta_d > -4.0) | (pa_d > -3.0) | (svc_d > -3.0) | (eso_d > -3.0) | (air_d > -3.0)
        | (vb_d > -5.0)
        | ((np.abs(X) < 0.8 * r_vb + 4) & (Y < y_vb))
        | (np.abs(X - x_mid) < 5.0)
        | (upper & ((((X - x_mid) / p["med_w"]) ** 2 + ((Y - y_tr - 18) / 40.0) ** 2) < 1))
    )
    env &= ~excl
    sm = ndi.gaussian_filter(env.astype(np.float32), (0.5, 2.5 / s, 2.5 / s))
    lung = sm > 0.5
    lung_f = ndi.gaussian_filter(lung.astype(np.float32), (0.0, 0.45, 0.45))
    side_r = X > x_mid
    info = {
        "lung": lung, "lung_f": lung_f, "side_r": np.broadcast_to(side_r, g.shape),
        "a_c": a_c, "b_c": b_c,
        "hila": (hil_r, hil_l), "bronchi": (bro_r_end, bro_l_end),
        "veins": (np.array([30.0, y_es + 12.0, hz + 0.4 * hc]),
                  np.array([-30.0, y_es + 12.0, hz + 0.45 * hc])),
        "z_car": z_car,
        "later": dict(heart=heart_depth, aorta=aorta_d, pa=pa_d, svc=svc_d, eso=eso_d, air=air_d,
                      vb=vb_d, canal=canal_r, y_vb=y_vb, y_sc=y_sc, r_vb=r_vb, r_can=r_can,
                      Rc=Rc, Rb=Rb, r2=r2, phi=phi, cav=cav),
    }
    return img, organs, info


def _parenchyma(g: _Grid, rng: np.random.Generator, p: dict[str, float], info: dict[str, Any]
                ) -> np.ndarray:
    """Parenchyma (texture, gravity gradient, fissures); returns the lung HU array."""
    Y, Z = g.Y, g.Z
    b_c = info["b_c"]
    base = p["lung_hu"]
    t1 = _smooth_noise(rng, g.shape, (0.4, 0.8, 0.8))
    t2 = _smooth_noise(rng, g.shape, (0.8, 3.0, 3.0))
    grav = p["gravity"] * np.clip((b_c - Y) / (2 * b_c), 0, 1) ** 2
    par = (base + grav + 18.0 * t1 + 14.0 * t2).astype(np.float32)
    # oblique fissures: planes from posterior-superior to anterior-inferior through each hilum
    for k, side in enumerate((1, -1)):
        hil = info["hila"][k]
        n = _unit(np.array([0.0, p[f"fiss_k{k}"], 1.0]))
        curve = 0.004 * (g.X - side * 0.5 * info["a_c"]) ** 2  # concave anteriorly
        dist = np.abs((Y - hil[1] + curve) * n[1] + (Z - hil[2] - 8) * n[2])
        par += (90.0 * np.exp(-((dist / 0.6) ** 2)) * (g.X * side > 0)).astype(np.float32)
    return par.astype(np.float32)


def _lobes_lower(g: _Grid, p: dict[str, float], info: dict[str, Any]) -> np.ndarray:
    """True in the lower lobes (posterior-inferior to the oblique fissure)."""
    out = np.zeros(g.shape, bool)
    for k, side in enumerate((1, -1)):
        hil = info["hila"][k]
        curve = 0.004 * (g.X - side * 0.5 * info["a_c"]) ** 2
        val = (g.Z - hil[2] - 8) + p[f"fiss_k{k}"] * (g.Y - hil[1] + curve)
        out |= (val < 0) & ((g.X * side) > 0)
    return out


def _add_lesions(g: _Grid, rng: np.random.Generator, cfg: PhantomConfig, p: dict[str, float],
                 par: np.ndarray, lung: np.ndarray, dt: np.ndarray, info: dict[str, Any]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """GGO (added to the parenchyma) and consolidation (painted later) with their labels."""
    mask = np.zeros(g.shape, np.uint8)
    cons_a = np.zeros(g.shape, np.float32)
    cons_hu = np.zeros(g.shape, np.float32)
    stats = {"n_lesions": 0, "n_consolidations": 0}
    lo, hi = cfg.lesion_count
    clean = rng.random() < cfg.p_clean_case
    n = 0 if clean else int(rng.integers(lo, hi + 1))
    idx = np.flatnonzero(lung)
    if n == 0 or idx.size == 0:
        return mask, cons_a, cons_hu, stats
    lower = _lobes_lower(g, p, info)
    b_c = info["b_c"]
    zrel = np.clip((g.Z - p["z_low"]) / p["L"], 0, 1)
    post = np.clip(0.5 - g.Y / (2 * b_c), 0, 1)
    w = (np.exp(-dt / 10.0) * (1 + 2.0 * post) * (1 + 2.0 * lower) * (1.6 - zrel))
    wf = w.ravel()[idx].astype(np.float64)
    centres = rng.choice(idx, size=n, p=wf / wf.sum())
    r_lo, r_hi = cfg.lesion_radius_mm
    for c in centres:
        iz, iy, ix = np.unravel_index(int(c), g.shape)
        ctr = np.array([g.x[ix], g.y[iy], g.z[iz]], np.float32)
        r = float(math.exp(rng.uniform(math.log(r_lo), math.log(r_hi))))
        axes = np.array([r, r * rng.uniform(0.55, 1.0), r * rng.uniform(0.45, 0.9)], np.float32)
        rot, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        box = g.box(ctr - 1.4 * r, ctr + 1.4 * r)
        if box is None:
            continue
        px = g.x[box[2]][None, None, :] - ctr[0]
        py = g.y[box[1]][None, :, None] - ctr[1]
        pz = g.z[box[0]][:, None, None] - ctr[2]
        q = sum(((px * rot[0, k] + py * rot[1, k] + pz * rot[2, k]) / axes[k]) ** 2
                for k in range(3))
        shp = tuple(sl.stop - sl.start for sl in box)
        sig = (max(0.3 * r / g.sz, 0.5), max(0.3 * r / g.s, 0.8), max(0.3 * r / g.s, 0.8))
        fine = (max(0.1 * r / g.sz, 0.4), max(0.1 * r / g.s, 0.6), max(0.1 * r / g.s, 0.6))
        irregular = 0.8 * _smooth_noise(rng, shp, sig) + 0.45 * _smooth_noise(rng, shp, fine)
        amp = rng.uniform(0.25, 0.45)
        field = np.sqrt(q) + amp * irregular
        lsub = lung[box]
        has_cons = rng.random() < cfg.p_consolidation
        pure_cons = has_cons and rng.random() < 0.15
        if not pure_cons:
            alpha = np.clip((1.0 - field) / 0.25, 0, 1) * lsub
            haze = 0.8 + 0.2 * _smooth_noise(rng, shp, (0.5, 1.0, 1.0))
            target = rng.uniform(-700, -450)
            add = alpha * haze * (target - p["lung_hu"])
            if rng.random() < 0.3:  # crazy paving: reticulation (septal lines) in the GGO
                band = _smooth_noise(rng, shp, (0.3, 0.9, 0.9))
                add += 160 * np.exp(-((band / 0.25) ** 2)) * alpha
            par[box] += add
            msub = mask[box]
            msub[(alpha > 0.5) & (msub == 0)] = 1
        if has_cons:
            k = 1.0 if pure_cons else rng.uniform(0.35, 0.75)
            fc = np.sqrt(q) / k + amp * irregular
            ac = np.clip((1.0 - fc) / 0.15, 0, 1) * lsub
            sub_a, sub_h = cons_a[box], cons_hu[box]
            upd = ac > sub_a
            sub_h[upd] = rng.uniform(-70, 30)
            sub_a[upd] = ac[upd]
            mask[box][ac > 0.5] = 2
            stats["n_consolidations"] += int((ac > 0.5).any())
        stats["n_lesions"] += 1
    return mask, cons_a, cons_hu, stats


def _paint_vessels_airways(g: _Grid, rng: np.random.Generator, img: np.ndarray,
                           info: dict[str, Any], dt_ok: np.ndarray) -> None:
    """Pulmonary arteries (from the hila), veins (from the left atrium) and bronchi."""
    lung = info["lung"]
    spacing = np.array([g.s, g.s, g.sz])
    is_left = np.broadcast_to(~info["side_r"], g.shape).ravel()
    cand = np.flatnonzero(dt_ok)

    def positions(flat: np.ndarray) -> np.ndarray:
        zz, yy, xx = np.unravel_index(flat, g.shape)
        return np.stack([g.x[xx], g.y[yy], g.z[zz]], 1).astype(float)

    def attractors(k: int, n: int, near: np.ndarray | None = None, within: float = 0.0
                   ) -> np.ndarray:
        """``n`` random points in lung ``k`` (0 right, 1 left), optionally near a point."""
        pool = cand[is_left[cand] == bool(k)]
        if near is not None:
            pool = pool[np.linalg.norm(positions(pool) - near, axis=1) < within]
        if pool.size == 0:
            return np.zeros((0, 3))
        pos = positions(rng.choice(pool, size=n))
        return pos + (rng.random(pos.shape) - 0.5) * spacing

    segs: list[tuple] = []
    bro: list[tuple] = []
    for k in (0, 1):
        segs += _colonise(rng, info["hila"][k], attractors(k, 650), 6.0, 10.0, 0.65, 3.0)
        segs += _colonise(rng, info["veins"][k], attractors(k, 450), 6.0, 10.0, 0.65, 3.0)
        start = info["bronchi"][k]
        bro += _colonise(rng, start, attractors(k, 40, start, 90.0), 7.0, 14.0, 1.3)
    f = _frac(_tube_depth(g, segs), g.s) * info["later"]["cav"]
    img += f * (45.0 - img)
    fw = _frac(_tube_depth(g, bro, pad=1.0), g.s) * lung  # bronchial wall
    img += fw * (20.0 - img)
    fl = _frac(_tube_depth(g, bro), g.s) * lung  # lumen
    img += fl * (-980.0 - img)


def _paint_mediastinum_bones(g: _Grid, rng: np.random.Generator, p: dict[str, float],
                             img: np.ndarray, organs: np.ndarray, info: dict[str, Any]) -> None:
    """Heart, great vessels, oesophagus, trachea, spine, ribs, sternum, couch."""
    s = g.s
    X, Y, Z = g.X, g.Y, g.Z
    lt = info["later"]
    tex = _smooth_noise(rng, g.shape, (0.5, 1.5, 1.5))
    _paint(img, _frac(lt["heart"], s), 40.0 + 4 * tex, organs, 3)
    _paint(img, _frac(lt["pa"], s), 38.0 + 3 * tex, organs, 12)
    _paint(img, _frac(lt["svc"], s), 36.0 + 3 * tex, organs, 12)
    _paint(img, _frac(lt["aorta"], s), 42.0 + 3 * tex, organs, 9)
    _paint(img, _frac(lt["eso"], s), 35.0 + 4 * tex, organs, 5)
    if p["eso_air"] > 0:
        _paint(img, _frac(lt["eso"] - p["r_es"] + p["eso_air"], s), -950.0)
    air = lt["air"]
    _paint(img, _frac(air + 1.5, s), 25.0)  # tracheal / bronchial wall
    _paint(img, _frac(air, s), -995.0, organs, 4)

    # ---- spine: vertebral bodies (cortex + cancellous bone) and discs, posterior elements
    y_vb, y_sc, r_can = lt["y_vb"], lt["y_sc"], lt["r_can"]
    phase = np.mod(Z - p["vert_phase"], 29.0)  # (Z,1,1)
    disc = phase < 6.0
    vb = lt["vb"]
    bone_hu = np.where(vb < 2.0, 750.0, 260.0 + 30 * tex)
    hu = np.where(disc, 90.0, bone_hu).astype(np.float32)
    _paint(img, _frac(vb, s), hu, organs, 7)
    # posterior arch around the canal, spinous and transverse processes (not at disc level)
    cr = lt["canal"]
    arch = np.minimum(cr - r_can, r_can + 5.0 - cr)  # ring of bone
    dxs, dys = np.abs(X), y_sc - r_can - Y  # spinous process: posterior bar
    spin = np.minimum(2.5 - dxs, np.minimum(dys + 2, 24.0 - dys))
    # transverse processes: bars pointing postero-laterally from the arch
    ax_, ay_ = np.abs(X) - (r_can + 2.0), Y - y_sc
    along = ax_ * 0.8 - ay_ * 0.6
    across = np.abs(ax_ * 0.6 + ay_ * 0.8)
    trans = np.minimum(3.0 - across, np.minimum(along, 18.0 - along))
    pedicle = np.minimum(np.minimum(4.0 - np.abs(np.abs(X) - r_can - 1.0), Y - y_sc),
                         y_vb - Y)
    post_el = np.maximum(np.maximum(arch, spin), np.maximum(trans, pedicle))
    post_el = np.where((phase > 7.0) & (phase < 25.0), post_el, -10.0)
    _paint(img, _frac(post_el, s), 650.0, organs, 7)
    _paint(img, _frac(r_can - cr, s), 8.0, organs, 12)  # CSF
    _paint(img, _frac(5.0 - cr, s), 32.0, organs, 6)  # spinal cord

    # ---- ribs: sloping bands around the cavity, descending anteriorly
    Rc, r2, phi = lt["Rc"], lt["r2"], lt["phi"]
    wrap = np.angle(np.exp(1j * (phi + np.pi / 2)))  # 0 posterior, +-pi anterior
    psi = np.abs(wrap) / np.pi  # 0 at the spine, 1 at the sternum
    rad = r2 - (Rc + 5.5)  # radial offset from the rib centre line
    near = np.abs(rad) < 6.0 + s
    zz, yy, xx = np.nonzero(near)
    psi_v = np.broadcast_to(psi, g.shape)[zz, yy, xx]
    rad_v = rad[zz, yy, xx]
    z_v = g.z[zz]
    side_v = np.broadcast_to(wrap, g.shape)[zz, yy, xx] > 0
    rib_d = np.full(zz.shape, -1e3, np.float32)
    cart_d = np.full(zz.shape, -1e3, np.float32)
    z_apex = p["z_low"] + p["L"]
    for i in range(12):
        for sd in (True, False):
            z0 = z_apex - 2.0 - i * p["rib_gap"] + rng.normal(0, 1.5)
            drop = p["rib_drop"] * (0.8 + 0.5 * min(i, 6) / 6)
            end = (0.80, 0.80, 0.80, 0.80, 0.78, 0.76, 0.74, 0.7, 0.66, 0.6, 0.5, 0.4)[i]
            zc = z0 - drop * psi_v**1.3
            h, t = 5.5, 3.2
            q = np.sqrt(((z_v - zc) / h) ** 2 + (rad_v / t) ** 2)
            ok = (side_v == sd) & (psi_v > 0.1)
            d = np.where(ok & (psi_v < end), (1 - q) * t, -1e3)
            np.maximum(rib_d, d, out=rib_d)
            if i < 9:  # costal cartilage to the sternum
                dc = np.where(ok & (psi_v >= end) & (psi_v < 0.97), (1 - q) * t * 0.9, -1e3)
                np.maximum(cart_d, dc, out=cart_d)
    rib_full = np.full(g.shape, -1e3, np.float32)
    rib_full[zz, yy, xx] = rib_d
    cart_full = np.full(g.shape, -1e3, np.float32)
    cart_full[zz, yy, xx] = cart_d
    _paint(img, _frac(cart_full, s), 140.0, organs, 8)
    rib_hu = np.where(rib_full > 1.2, 230.0, 820.0).astype(np.float32)
    _paint(img, _frac(rib_full, s), rib_hu, organs, 8)
    # sternum: anterior plate from the manubrium down to the xiphoid
    z_car = info["z_car"]
    in_z = (Z > z_car - 95.0) & (Z < z_car + 40.0)
    st_r = r2 - (Rc + 5.0)
    st = np.minimum(np.minimum(14.0 - np.abs(X), 5.0 - np.abs(st_r)), (Y > 0) * 100.0 - 50)
    st = np.where(in_z, st, -10.0)
    st_hu = np.where(st > 1.5, 250.0, 700.0).astype(np.float32)
    _paint(img, _frac(st, s), st_hu, organs, 10)
    # scapulae: thin blades in the posterolateral muscles over the upper ribs
    zrel = (Z - p["z_low"]) / p["L"]
    ang = np.abs(wrap)
    blade = np.minimum(2.2 - np.abs(r2 - (Rc + 17.0)), (0.33 - np.abs(ang - 0.85)) * r2)
    blade = np.where((zrel > 0.5) & (zrel < 1.02), blade, -10.0)
    # clavicles: anterior bars from the manubrium to the shoulders at the thoracic inlet
    clav = np.minimum(5.0 - np.abs(r2 - (Rc + 12.0)), (0.8 - np.abs(np.pi - ang - 0.95)) * r2)
    clav = np.where(np.abs(Z - (z_apex - 5.0)) < 9.0, clav, -10.0)
    other = np.maximum(blade, clav)
    _paint(img, _frac(other, s), np.where(other > 1.5, 300.0, 700.0).astype(np.float32),
           organs, 13)


def _couch(g: _Grid, p: dict[str, float], site: int) -> np.ndarray:
    """Signed depth (mm) of the couch top plate below the patient (site-specific shape)."""
    rad = (420.0, 360.0, 480.0, 390.0)[site % 4]
    y0 = -p["b_post"] - (5.0 + 3.0 * (site % 2))
    yc = y0 + g.X**2 / (2 * rad)
    top = 1.5 - np.abs(g.Y - yc)
    bottom = 1.5 - np.abs(g.Y - (yc - 35.0))
    return np.where(np.abs(g.X) < 0.92 * p["a"], np.maximum(top, bottom), -10.0)


def _sample_patient(rng: np.random.Generator, cfg: PhantomConfig, site: SiteProfile
                    ) -> tuple[dict[str, float], _Grid]:
    """Per-patient anatomy parameters (mm) and the voxel grid of its scan."""
    nz, nx = cfg.shape[0], cfg.shape[2]
    u = rng.uniform
    p: dict[str, float] = {
        "L": u(205, 255), "m_b": u(14, 34), "m_t": u(6, 18),
        "a": u(145, 168), "b_ant": u(100, 120), "fat": u(3, 14), "muscle": u(4, 7),
        "pect": u(5, 12), "paraspinal": u(28, 36),
        "c2": rng.normal(0, 0.012), "c3": rng.normal(0, 0.01), "c4": rng.normal(0, 0.008),
        "psi2": u(0, 6.28), "psi3": u(0, 6.28), "psi4": u(0, 6.28),
        "dome_r": u(60, 80), "gastric_air": u(0, 30),
        "canal_depth": u(50, 60), "r_vb": u(16, 20), "x_tr": u(-1, 5), "r_tr": u(8, 10),
        "heart_x": -u(18, 32), "heart_y": u(0, 12), "heart_a": u(52, 62), "heart_b": u(38, 46),
        "heart_c": u(42, 52), "heart_rot": u(25, 45), "r_aa": u(14, 17), "r_dao": u(10, 12.5),
        "hilum_x": u(44, 54), "r_es": u(7, 9), "eso_air": u(0, 4) * (u() < 0.5),
        "med_w": u(26, 34), "vert_phase": u(0, 29), "rib_gap": u(20, 23), "rib_drop": u(85, 110),
        "lung_hu": u(-875, -835), "gravity": u(25, 70),
        "fiss_k0": u(0.8, 1.2), "fiss_k1": u(0.8, 1.2),
        "cx": u(-8, 8), "cy": u(-12, 4),
    }
    p["b_post"] = p["b_ant"] * u(0.92, 1.0)
    p["dome_l"] = p["dome_r"] - u(10, 22)
    p["z_low"] = p["m_b"]
    coverage = p["L"] + p["m_b"] + p["m_t"]
    g = _Grid(cfg.shape, site.fov_mm / nx, coverage / nz, p["cx"], p["cy"])
    return p, g


def _scan(g: _Grid, rng: np.random.Generator, img: np.ndarray, site: SiteProfile) -> np.ndarray:
    """Scanner model: blur (kernel + slice profile), correlated noise, gain/offset, FOV, HU."""
    sig_xy = site.blur_mm / g.s
    sig_z = 0.29 * site.slice_thickness  # slab of thickness t has sd ~ t / sqrt(12)
    out = ndi.gaussian_filter(img, (sig_z, sig_xy, sig_xy), mode="nearest", truncate=3.0)
    if site.noise_hu > 0:
        out += site.noise_hu * _smooth_noise(rng, g.shape, (0.0, 0.6, 0.6))
    out = -1000.0 + site.gain * (out + 1000.0) + site.offset_hu
    ny, nx = g.shape[1:]
    yy = (np.arange(ny) - (ny - 1) / 2)[:, None]
    xx = (np.arange(nx) - (nx - 1) / 2)[None, :]
    outside = (xx**2 + yy**2) > (nx / 2) ** 2
    out[:, outside] = HU_MIN
    return np.clip(np.rint(out), HU_MIN, HU_MAX).astype(np.float32)


def generate_case(cfg: PhantomConfig, index: int) -> Case:
    """Generate phantom case ``index`` (deterministic in ``(cfg, index)`` alone).

    Returns a :class:`Case` with ``image`` in HU (integers stored as float32),
    ``mask`` (uint8, :data:`INFECTION_LABELS`), ``lung`` (uint8 {0, 1}, infection
    included), ``organs`` (uint8, :data:`ORGAN_LABELS`), ``spacing`` (z, y, x) in mm,
    ``site`` ``"site{k}"`` and ``meta`` with the lesion counts.
    """
    if not isinstance(index, int | np.integer) or not 0 <= index < cfg.n_cases:
        raise ValueError(f"index = {index!r}: must be an integer in [0, {cfg.n_cases})")
    index = int(index)
    k = cfg.site_of(index)
    site = cfg.site_profiles()[k]
    rng = np.random.default_rng([cfg.seed, index])
    p, g = _sample_patient(rng, cfg, site)
    img, organs, info = _render_anatomy(g, rng, p)
    lung = info["lung"]
    par = _parenchyma(g, rng, p, info)
    dt = ndi.distance_transform_edt(lung, sampling=(g.sz, g.s, g.s)).astype(np.float32)
    mask, cons_a, cons_hu, stats = _add_lesions(g, rng, cfg, p, par, lung, dt, info)
    lung_f = info["lung_f"]
    img += lung_f * (par - img)
    organs[lung & info["side_r"]] = 2
    organs[lung & ~info["side_r"]] = 1
    _paint_vessels_airways(g, rng, img, info, dt > 4.0)
    img += cons_a * (cons_hu - img)
    _paint_mediastinum_bones(g, rng, p, img, organs, info)
    _paint(img, _frac(_couch(g, p, k), g.s), 150.0)
    image = _scan(g, rng, img, site)
    lung_mask = np.isin(organs, (1, 2))
    mask[~lung_mask] = 0
    infected = int((mask > 0).any(axis=(1, 2)).sum())
    meta = {
        "generator": "covidlib.data.phantom",
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "index": index,
        "site_index": k,
        "n_lesions": stats["n_lesions"],
        "n_consolidations": stats["n_consolidations"],
        "infected_slices": infected,
        "slice_thickness_mm": round(site.slice_thickness * g.sz, 4),
    }
    return Case(
        case_id=case_id(index),
        image=image,
        mask=mask,
        lung=lung_mask.astype(np.uint8),
        organs=organs,
        spacing=(float(g.sz), float(g.s), float(g.s)),
        intensity="hu",
        site=f"site{k}",
        meta=meta,
    )


# --------------------------------------------------------------------------- writing
_SUBDIRS = {"image": IMAGE_DIR, "mask": INFECTION_DIR, "lung": LUNG_DIR, "organs": ORGAN_DIR}


def _case_paths(out: Path, cid: str) -> dict[str, Path]:
    return {k: out / d / f"{cid}.nii.gz" for k, d in _SUBDIRS.items()}


def _nifti_gz(arr_zyx: np.ndarray, spacing: tuple[float, float, float], dtype: type) -> bytes:
    """gzip-compressed NIfTI-1 of ``arr_zyx`` written as (x, y, z) with a RAS+ diagonal affine."""
    data = np.ascontiguousarray(arr_zyx.transpose(2, 1, 0)).astype(dtype)
    sz, sy, sx = spacing
    aff = np.diag([sx, sy, sz, 1.0])
    aff[:3, 3] = [-(data.shape[0] - 1) / 2 * sx, -(data.shape[1] - 1) / 2 * sy, 0.0]
    img = nib.Nifti1Image(data, aff)
    img.header.set_xyzt_units("mm")
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _case_info(case: Case) -> dict[str, Any]:
    m = case.meta
    return {
        "site": case.site,
        "spacing": [round(v, 6) for v in case.spacing],
        "shape": list(case.image.shape),
        "n_lesions": m["n_lesions"],
        "n_consolidations": m["n_consolidations"],
        "infected_slices": m["infected_slices"],
    }


def _build_and_write(cfg: PhantomConfig, index: int, out: Path) -> tuple[str, dict[str, Any]]:
    """Worker: generate case ``index`` and write its four files atomically."""
    case = generate_case(cfg, index)
    paths = _case_paths(out, case.case_id)
    arrays = {"image": (case.image, np.int16), "mask": (case.mask, np.uint8),
              "lung": (case.lung, np.uint8), "organs": (case.organs, np.uint8)}
    for key, (arr, dt) in arrays.items():
        _atomic_write(paths[key], _nifti_gz(arr, case.spacing, dt))
    return case.case_id, _case_info(case)


def _write_json(path: Path, obj: dict) -> None:
    _atomic_write(path, (json.dumps(obj, indent=1) + "\n").encode())


def _load_state(meta: Path, cfg: PhantomConfig) -> dict[str, Any]:
    want = json.loads(json.dumps(cfg.to_dict()))
    if not meta.exists():
        return {"generator": "covidlib.data.phantom", "generator_version": GENERATOR_VERSION,
                "config": want, "complete": False, "cases": {}}
    try:
        state = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise DataError(meta, f"cannot read the phantom description ({e}); delete the folder "
                              "to regenerate") from e
    if not isinstance(state, dict) or not isinstance(state.get("cases"), dict):
        raise DataError(meta, "not a phantom description (no 'cases' table); delete the folder "
                              "to regenerate")
    if state.get("generator_version") != GENERATOR_VERSION:
        raise DataError(meta, f"written by phantom generator version "
                              f"{state.get('generator_version')!r}, this is {GENERATOR_VERSION!r};"
                              " delete the folder or write to another one")
    if state.get("config") != want:
        old = state.get("config") if isinstance(state.get("config"), dict) else {}
        diff = sorted(k for k in set(old) | set(want) if old.get(k) != want.get(k))
        raise DataError(meta, f"the existing phantom was generated with a different config "
                              f"(differs in {', '.join(diff) or 'format'}); delete the folder "
                              "or write to another one")
    return state


def write_dataset(cfg: PhantomConfig | None, out_dir: str | Path, progress: bool = True,
                  workers: int | None = None) -> Path:
    """Write the phantom in the Ma et al. layout under ``out_dir``; returns ``out_dir``.

    Files: ``COVID-19-CT-Seg_20cases/{case}.nii.gz`` (int16 HU), ``Infection_Mask``,
    ``Lung_Mask`` and ``Organ_Mask`` (uint8), plus ``phantom.json`` (config, generator
    version, per-case site, spacing and lesion counts). Every file is written to a
    temporary name and renamed; cases whose four files exist and are recorded in
    ``phantom.json`` are skipped, so an interrupted run resumes. ``workers`` processes
    (default ``os.cpu_count()``; 1 = in this process) generate cases in parallel.
    ``cfg=None`` means the default :class:`PhantomConfig`. Raises :class:`DataError` if
    ``out_dir`` holds a phantom of another config or generator version.
    """
    cfg = cfg or PhantomConfig()
    if workers is None:
        workers = os.cpu_count() or 1
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers = {workers!r}: must be an integer >= 1")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder")
    meta = out / META_NAME
    state = _load_state(meta, cfg)
    for d in _SUBDIRS.values():
        (out / d).mkdir(parents=True, exist_ok=True)
        for stale in (out / d).glob(".*.part"):
            stale.unlink()
    cases: dict[str, Any] = state["cases"]
    todo = [i for i in range(cfg.n_cases)
            if case_id(i) not in cases
            or not all(q.is_file() for q in _case_paths(out, case_id(i)).values())]
    if not todo and state.get("complete") and meta.exists():
        return out
    state["complete"] = False
    for i in todo:
        cases.pop(case_id(i), None)
    _write_json(meta, state)
    bar = tqdm(total=cfg.n_cases, initial=cfg.n_cases - len(todo), desc="phantom",
               unit="case", disable=not progress)

    def done(cid: str, info: dict[str, Any]) -> None:
        cases[cid] = info
        state["cases"] = dict(sorted(cases.items()))
        _write_json(meta, state)
        bar.update(1)

    try:
        n_proc = min(workers, len(todo))
        if n_proc <= 1:
            for i in todo:
                done(*_build_and_write(cfg, i, out))
        else:
            # the platform's default start method (fork on Linux; spawn elsewhere, where a
            # calling script needs the usual ``if __name__ == "__main__":`` guard)
            with ProcessPoolExecutor(max_workers=n_proc, mp_context=mp.get_context()) as ex:
                futs = [ex.submit(_build_and_write, cfg, i, out) for i in todo]
                for fut in as_completed(futs):
                    done(*fut.result())
    finally:
        bar.close()
    state["complete"] = True
    _write_json(meta, state)
    return out


def ensure_synthetic(root: str | Path, cfg: PhantomConfig | None = None,
                     progress: bool = True, workers: int | None = None) -> Path:
    """The phantom folder ``root / "synthetic"``, generated (or completed) when needed."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(root, "data root exists and is not a folder")
    return write_dataset(cfg or PhantomConfig(), root / DATASET_DIRNAME, progress=progress,
                         workers=workers)
