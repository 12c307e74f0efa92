"""COVID-19-like lesions of the synthetic thorax phantom.

Ground-glass opacities (label 1, added on top of the parenchyma so vessels stay visible,
sometimes with "crazy paving") and consolidations (label 2, dense, often inside a
ground-glass halo), placed with the peripheral, posterior and lower-lobe predominance of
COVID-19 pneumonia; see :mod:`covidlib.data.phantom`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from covidlib.data.phantom_anatomy import lobes_lower
from covidlib.data.phantom_geometry import Grid, smooth_noise

if TYPE_CHECKING:
    from covidlib.data.phantom import PhantomConfig

__all__ = ["add_lesions"]


def add_lesions(g: Grid, rng: np.random.Generator, cfg: PhantomConfig, p: dict[str, float],
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
    lower = lobes_lower(g, p, info)
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
        irregular = 0.8 * smooth_noise(rng, shp, sig) + 0.45 * smooth_noise(rng, shp, fine)
        amp = rng.uniform(0.25, 0.45)
        field = np.sqrt(q) + amp * irregular
        lsub = lung[box]
        has_cons = rng.random() < cfg.p_consolidation
        pure_cons = has_cons and rng.random() < 0.15
        if not pure_cons:
            alpha = np.clip((1.0 - field) / 0.25, 0, 1) * lsub
            haze = 0.8 + 0.2 * smooth_noise(rng, shp, (0.5, 1.0, 1.0))
            target = rng.uniform(-700, -450)
            add = alpha * haze * (target - p["lung_hu"])
            if rng.random() < 0.3:  # crazy paving: reticulation (septal lines) in the GGO
                band = smooth_noise(rng, shp, (0.3, 0.9, 0.9))
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
