"""Painters of the synthetic thorax phantom drawn after the lungs.

Pulmonary vessels and bronchi (space-colonisation trees), the mediastinum (heart, great
vessels, oesophagus, trachea), the bones (spine, ribs and costal cartilage, sternum,
scapulae, clavicles) and the CT couch; see :mod:`covidlib.data.phantom`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from covidlib.data.phantom_geometry import Grid, colonise, frac, paint, smooth_noise, tube_depth

__all__ = ["couch", "paint_mediastinum_bones", "paint_vessels_airways"]


def paint_vessels_airways(g: Grid, rng: np.random.Generator, img: np.ndarray,
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
        segs += colonise(rng, info["hila"][k], attractors(k, 650), 6.0, 10.0, 0.65, 3.0)
        segs += colonise(rng, info["veins"][k], attractors(k, 450), 6.0, 10.0, 0.65, 3.0)
        start = info["bronchi"][k]
        bro += colonise(rng, start, attractors(k, 40, start, 90.0), 7.0, 14.0, 1.3)
    f = frac(tube_depth(g, segs), g.s) * info["later"]["cav"]
    img += f * (45.0 - img)
    fw = frac(tube_depth(g, bro, pad=1.0), g.s) * lung  # bronchial wall
    img += fw * (20.0 - img)
    fl = frac(tube_depth(g, bro), g.s) * lung  # lumen
    img += fl * (-980.0 - img)


def _paint_mediastinum(g: Grid, p: dict[str, float], img: np.ndarray, organs: np.ndarray,
                       lt: dict[str, Any], tex: np.ndarray) -> None:
    """Heart, pulmonary trunk, superior vena cava, aorta, oesophagus and trachea."""
    s = g.s
    paint(img, frac(lt["heart"], s), 40.0 + 4 * tex, organs, 3)
    paint(img, frac(lt["pa"], s), 38.0 + 3 * tex, organs, 12)
    paint(img, frac(lt["svc"], s), 36.0 + 3 * tex, organs, 12)
    paint(img, frac(lt["aorta"], s), 42.0 + 3 * tex, organs, 9)
    paint(img, frac(lt["eso"], s), 35.0 + 4 * tex, organs, 5)
    if p["eso_air"] > 0:
        paint(img, frac(lt["eso"] - p["r_es"] + p["eso_air"], s), -950.0)
    air = lt["air"]
    paint(img, frac(air + 1.5, s), 25.0)  # tracheal / bronchial wall
    paint(img, frac(air, s), -995.0, organs, 4)


def _paint_spine(g: Grid, p: dict[str, float], img: np.ndarray, organs: np.ndarray,
                 lt: dict[str, Any], tex: np.ndarray) -> None:
    """Spine: vertebral bodies (cortex + cancellous bone) and discs, posterior elements,
    CSF and spinal cord."""
    s = g.s
    X, Y, Z = g.X, g.Y, g.Z
    y_vb, y_sc, r_can = lt["y_vb"], lt["y_sc"], lt["r_can"]
    phase = np.mod(Z - p["vert_phase"], 29.0)  # (Z,1,1)
    disc = phase < 6.0
    vb = lt["vb"]
    bone_hu = np.where(vb < 2.0, 750.0, 260.0 + 30 * tex)
    hu = np.where(disc, 90.0, bone_hu).astype(np.float32)
    paint(img, frac(vb, s), hu, organs, 7)
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
    paint(img, frac(post_el, s), 650.0, organs, 7)
    paint(img, frac(r_can - cr, s), 8.0, organs, 12)  # CSF
    paint(img, frac(5.0 - cr, s), 32.0, organs, 6)  # spinal cord


def _paint_ribs(g: Grid, rng: np.random.Generator, p: dict[str, float], img: np.ndarray,
                organs: np.ndarray, lt: dict[str, Any], wrap: np.ndarray) -> None:
    """Ribs and costal cartilage: sloping bands around the cavity, descending anteriorly."""
    s = g.s
    Rc, r2 = lt["Rc"], lt["r2"]
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
    paint(img, frac(cart_full, s), 140.0, organs, 8)
    rib_hu = np.where(rib_full > 1.2, 230.0, 820.0).astype(np.float32)
    paint(img, frac(rib_full, s), rib_hu, organs, 8)


def _paint_sternum_girdle(g: Grid, p: dict[str, float], img: np.ndarray, organs: np.ndarray,
                          info: dict[str, Any], wrap: np.ndarray) -> None:
    """Sternum, scapulae and clavicles."""
    s = g.s
    X, Y, Z = g.X, g.Y, g.Z
    lt = info["later"]
    Rc, r2 = lt["Rc"], lt["r2"]
    z_apex = p["z_low"] + p["L"]
    # sternum: anterior plate from the manubrium down to the xiphoid
    z_car = info["z_car"]
    in_z = (Z > z_car - 95.0) & (Z < z_car + 40.0)
    st_r = r2 - (Rc + 5.0)
    st = np.minimum(np.minimum(14.0 - np.abs(X), 5.0 - np.abs(st_r)), (Y > 0) * 100.0 - 50)
    st = np.where(in_z, st, -10.0)
    st_hu = np.where(st > 1.5, 250.0, 700.0).astype(np.float32)
    paint(img, frac(st, s), st_hu, organs, 10)
    # scapulae: thin blades in the posterolateral muscles over the upper ribs
    zrel = (Z - p["z_low"]) / p["L"]
    ang = np.abs(wrap)
    blade = np.minimum(2.2 - np.abs(r2 - (Rc + 17.0)), (0.33 - np.abs(ang - 0.85)) * r2)
    blade = np.where((zrel > 0.5) & (zrel < 1.02), blade, -10.0)
    # clavicles: anterior bars from the manubrium to the shoulders at the thoracic inlet
    clav = np.minimum(5.0 - np.abs(r2 - (Rc + 12.0)), (0.8 - np.abs(np.pi - ang - 0.95)) * r2)
    clav = np.where(np.abs(Z - (z_apex - 5.0)) < 9.0, clav, -10.0)
    other = np.maximum(blade, clav)
    paint(img, frac(other, s), np.where(other > 1.5, 300.0, 700.0).astype(np.float32),
          organs, 13)


def paint_mediastinum_bones(g: Grid, rng: np.random.Generator, p: dict[str, float],
                            img: np.ndarray, organs: np.ndarray, info: dict[str, Any]) -> None:
    """Heart, great vessels, oesophagus, trachea, spine, ribs, sternum, scapulae, clavicles."""
    lt = info["later"]
    tex = smooth_noise(rng, g.shape, (0.5, 1.5, 1.5))
    _paint_mediastinum(g, p, img, organs, lt, tex)
    _paint_spine(g, p, img, organs, lt, tex)
    wrap = np.angle(np.exp(1j * (lt["phi"] + np.pi / 2)))  # 0 posterior, +-pi anterior
    _paint_ribs(g, rng, p, img, organs, lt, wrap)
    _paint_sternum_girdle(g, p, img, organs, info, wrap)


def couch(g: Grid, p: dict[str, float], site: int) -> np.ndarray:
    """Signed depth (mm) of the couch top plate below the patient (site-specific shape)."""
    rad = (420.0, 360.0, 480.0, 390.0)[site % 4]
    y0 = -p["b_post"] - (5.0 + 3.0 * (site % 2))
    yc = y0 + g.X**2 / (2 * rad)
    top = 1.5 - np.abs(g.Y - yc)
    bottom = 1.5 - np.abs(g.Y - (yc - 35.0))
    return np.where(np.abs(g.X) < 0.92 * p["a"], np.maximum(top, bottom), -10.0)

