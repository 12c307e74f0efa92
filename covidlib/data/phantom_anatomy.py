"""Anatomy of one synthetic thorax patient: body wall, abdomen, mediastinum and lungs.

:func:`render_anatomy` paints the true-HU volume and organ map of
:mod:`covidlib.data.phantom` in drawing order (body wall, abdomen under the diaphragm,
mediastinal landmarks and tubes, lungs); :func:`parenchyma` and :func:`lobes_lower` give
the lung texture and lobes. Coordinates are patient millimetres on a
:class:`~covidlib.data.phantom_geometry.Grid`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from covidlib.data.phantom_geometry import (
    Grid,
    frac,
    paint,
    smooth_noise,
    superellipse,
    tube_depth,
    unit,
)

__all__ = ["Thorax", "lobes_lower", "parenchyma", "render_anatomy"]

#: Thickness (mm) of the rib layer of the chest wall.
RIB_ZONE = 9.0


@dataclass(frozen=True)
class Thorax:
    """The body-wall geometry every later stroke builds on (mm; arrays broadcast to the grid).

    ``zrel`` is 0 at the lung base and 1 at the apex; ``r2``/``phi`` are polar coordinates
    about the body centre, ``Rb``/``Rc`` the radii of the skin and of the thoracic cavity
    (inner surface of the ribs), ``dc`` the depth inside the cavity and ``cav`` its mask;
    ``a_c``/``b_c`` the cavity's half-width and anterior half-depth; ``tex_soft`` the
    soft-tissue texture.
    """

    zrel: np.ndarray
    r2: np.ndarray
    phi: np.ndarray
    Rb: np.ndarray
    Rc: np.ndarray
    dc: np.ndarray
    cav: np.ndarray
    a_c: float
    b_c: float
    tex_soft: np.ndarray


def _body_wall(g: Grid, rng: np.random.Generator, p: dict[str, float], img: np.ndarray,
               organs: np.ndarray) -> Thorax:
    """Body outline and wall layers (skin, fat, muscle), in polar coordinates; paints them."""
    s = g.s
    X, Y, Z = g.X, g.Y, g.Z
    z_low, L = p["z_low"], p["L"]
    zrel = (Z - z_low) / L  # 0 at the lung base, 1 at the apex
    r2 = np.sqrt(X**2 + Y**2)  # (1, H, W)
    phi = np.arctan2(Y, X)
    pert = 1.0 + sum(p[f"c{k}"] * np.cos(k * phi + p[f"psi{k}"]) for k in (2, 3, 4))
    rb0 = superellipse(phi, p["a"], p["b_ant"], p["b_post"], 2.1, 2.6) * pert
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
    wall = skin + fat + muscle + RIB_ZONE
    # the rib cage narrows upwards (shoulder-girdle muscles fill the difference)
    cage = 1.0 - 0.2 * np.clip((zrel - 0.3) / 0.7, 0, 1) ** 1.5
    Rc = Rb * cage - wall  # thoracic cavity radius (inner surface of the ribs)
    dc = Rc - r2  # > 0 inside the cavity

    body_f = frac(depth, s)
    tex_soft = smooth_noise(rng, g.shape, (0.6, 2.0, 2.0))
    fat_tex = smooth_noise(rng, g.shape, (0.5, 0.7, 0.7))
    tissue = np.where(depth < skin, 30.0,
                      np.where(depth < skin + fat, -100.0 + 12 * fat_tex, 45.0 + 6 * tex_soft))
    paint(img, body_f, tissue.astype(np.float32), organs, 12)
    return Thorax(zrel=zrel, r2=r2, phi=phi, Rb=Rb, Rc=Rc, dc=dc, cav=dc > 0,
                  a_c=p["a"] - p["fat"] - p["muscle"] - RIB_ZONE,
                  b_c=p["b_ant"] - p["fat"] - p["muscle"] - RIB_ZONE, tex_soft=tex_soft)


def _diaphragm(p: dict[str, float], th: Thorax, x: Any, y: Any) -> Any:
    """Height (mm) of the diaphragm under (x, y): two paraboloid domes (right higher: liver),
    max of both, tilted up anteriorly."""
    a_c, b_c = th.a_c, th.b_c
    domes = [h * (1 - ((x - sd * 0.4 * a_c) / (0.62 * a_c)) ** 2
                  - ((y - 0.15 * b_c) / (1.05 * b_c)) ** 2)
             for sd, h in ((1, p["dome_r"]), (-1, p["dome_l"]))]
    return p["z_low"] + np.maximum(np.maximum(domes[0], domes[1]) + 0.18 * y, 0.0)


def _apex_caps(g: Grid, p: dict[str, float], th: Thorax) -> tuple[np.ndarray, float]:
    """Lung envelopes at the apex (one shrinking ellipse over each hemithorax) and the height
    ``z_t`` where they start to shrink."""
    X, Y, Z = g.X, g.Y, g.Z
    z_low, L = p["z_low"], p["L"]
    z_apex = z_low + L
    a_c, b_c = th.a_c, th.b_c
    z_t = z_low + 0.6 * L
    tau = np.sqrt(np.clip(1 - np.clip((Z - z_t) / (z_apex - z_t), 0, None) ** 2.5, 0, 1))
    tau = np.where(Z < z_t, 1.0, tau)
    caps = np.zeros(g.shape, bool)
    for side in (1, -1):
        caps |= (((X - side * 0.52 * a_c) / (0.56 * a_c * tau + 1e-3)) ** 2
                 + ((Y + 0.05 * b_c) / (1.15 * b_c * tau + 1e-3)) ** 2) < 1
    return caps, z_t


def _cavity_fill(g: Grid, p: dict[str, float], th: Thorax, img: np.ndarray,
                 organs: np.ndarray, above: np.ndarray, caps: np.ndarray, z_t: float) -> None:
    """Mediastinal fat, the thoracic inlet and, below the domes, liver, spleen, stomach and
    the gastric air bubble; labels the liver."""
    s = g.s
    X, Y, Z = g.X, g.Y, g.Z
    a_c, b_c, tex_soft = th.a_c, th.b_c, th.tex_soft
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
    cav_f = frac(th.dc, s)
    paint(img, cav_f, fill)
    # gastric air bubble in the fundus, just under the left dome
    gx, gy, gr = -0.55 * a_c, 0.0, p["gastric_air"]
    gz = float(_diaphragm(p, th, gx, gy)) - 0.6 * gr - 4.0
    q_gas = np.sqrt(((X - gx) / (0.24 * a_c)) ** 2 + ((Y - gy) / (0.26 * b_c)) ** 2
                    + ((Z - gz) / max(gr, 1.0)) ** 2)
    gas = np.where(~above & th.cav & (gr > 5.0), (1.0 - q_gas) * min(gr, 0.3 * b_c), -10.0)
    paint(img, frac(gas, s), -990.0)
    organs[(cav_f > 0.5) & liver & (gas < 0)] = 11


def _landmarks(g: Grid, p: dict[str, float]) -> dict[str, float]:
    """Mediastinal landmarks (mm): spinal canal, vertebral body, oesophagus, trachea, carina."""
    y_sc = -p["b_post"] + p["canal_depth"]  # spinal canal centre
    r_vb = p["r_vb"]
    r_can = 7.5
    y_vb = y_sc + r_can + 5.0 + r_vb  # vertebral body centre
    y_es = y_vb + r_vb + 9.0
    r_tr = p["r_tr"]
    return {"y_sc": y_sc, "r_vb": r_vb, "r_can": r_can, "y_vb": y_vb, "y_es": y_es,
            "x_tr": p["x_tr"], "r_tr": r_tr, "y_tr": y_es + 9.0 + r_tr,
            "z_car": p["z_low"] + 0.58 * p["L"], "z_top": float(g.z[-1]) + g.sz}


def _heart(g: Grid, p: dict[str, float], th: Thorax, D: np.ndarray) -> dict[str, Any]:
    """Heart: a rotated ellipsoid sitting on the left dome; its depth (mm), centre and axes."""
    X, Y, Z = g.X, g.Y, g.Z
    hx, hy = p["heart_x"], p["heart_y"] + 0.15 * th.b_c
    ha, hb, hc = p["heart_a"], p["heart_b"], p["heart_c"]
    rot = math.radians(p["heart_rot"])
    ux, uy = -math.cos(rot), math.sin(rot)  # long axis: to the left and anterior
    pu = (X - hx) * ux + (Y - hy) * uy
    pv = -(X - hx) * uy + (Y - hy) * ux
    hz = float(_diaphragm(p, th, hx, hy)) + 0.55 * hc
    q_heart = np.sqrt((pu / ha) ** 2 + (pv / hb) ** 2 + ((Z - hz) / hc) ** 2)
    depth = (1.0 - q_heart) * hb
    depth = np.minimum(depth, (Z - D + 4.0))
    return {"depth": depth, "x": hx, "y": hy, "z": hz, "a": ha, "b": hb, "c": hc,
            "top": hz + hc}


def _aorta(p: dict[str, float], lm: dict[str, float], heart: dict[str, Any]
           ) -> tuple[list[tuple], float]:
    """Ascending aorta, arch and descending aorta as conical segments; the ascending aorta's
    x (mm)."""
    r_vb, y_vb, y_tr = lm["r_vb"], lm["y_vb"], lm["y_tr"]
    hy, hb = heart["y"], heart["b"]
    x_da, y_da = -(r_vb + p["r_dao"] + 2.0), y_vb + 2.0
    x_aa, y_aa = 8.0, max(hy + 0.25 * hb, y_tr + 22.0)
    z_arch = lm["z_car"] + 14.0
    ctr = np.array([(x_da + x_aa) / 2, (y_da + y_aa) / 2, z_arch])
    half = np.array([x_aa - x_da, y_aa - y_da, 0.0]) / 2
    r_arch = float(np.linalg.norm(half))
    arch = [ctr + math.cos(t) * half + np.array([0, 0, math.sin(t) * r_arch * 0.8])
            for t in np.linspace(0, np.pi, 9)]
    aorta_pts = [np.array([x_aa - 4, hy + 0.1 * hb, heart["top"] - 25.0]), *arch,
                 np.array([x_da, y_da, z_arch - 20.0]),
                 np.array([x_da * 0.5, y_da - 2, p["z_low"]]),
                 np.array([x_da * 0.3, y_da - 4, -40.0])]
    r_aa, r_da = p["r_aa"], p["r_dao"]
    radii = np.concatenate([[r_aa, r_aa], np.linspace(r_aa, r_da, len(arch)),
                            [r_da, r_da * 0.9]])[: len(aorta_pts)]
    segs = [(aorta_pts[i], aorta_pts[i + 1], radii[i], radii[min(i + 1, len(radii) - 1)])
            for i in range(len(aorta_pts) - 1)]
    return segs, x_aa


def _tubes(p: dict[str, float], lm: dict[str, float], heart: dict[str, Any]
           ) -> dict[str, Any]:
    """Great vessels and tubes as conical segments (points (X, Y, z) in mm): aorta,
    pulmonary trunk, superior vena cava, oesophagus, trachea and main bronchi; plus the
    hila and the ends of the main bronchi."""
    x_tr, y_tr, r_tr, y_es = lm["x_tr"], lm["y_tr"], lm["r_tr"], lm["y_es"]
    z_car, z_top, z_htop = lm["z_car"], lm["z_top"], heart["top"]
    hx, hy, ha, hb = heart["x"], heart["y"], heart["a"], heart["b"]
    aorta_segs, x_aa = _aorta(p, lm, heart)
    bif = np.array([-6.0, y_tr + 12.0, z_car - 14.0])
    hil_r = np.array([p["hilum_x"], y_tr - 4.0, z_car - 16.0])
    hil_l = np.array([-p["hilum_x"], y_tr - 6.0, z_car - 10.0])
    pa_segs = [(np.array([hx - 0.2 * ha, hy + 0.5 * hb, z_htop - 20.0]), bif, 13.0, 12.0),
               (bif, hil_r, 10.0, 8.0), (bif, hil_l, 10.0, 8.0)]
    svc_segs = [(np.array([x_aa + 22.0, y_tr + 16.0, z_top + 5]),
                 np.array([x_aa + 20.0, y_tr + 12.0, z_htop - 10.0]), 9.0, 10.0)]
    eso_pts = [np.array([x_tr - 4, y_es, z_top + 5]), np.array([-7.0, y_es, z_car]),
               np.array([-20.0, y_es + 8, p["z_low"] + 25]),
               np.array([-45.0, y_es + 30, p["z_low"] - 15])]
    eso_segs = [(eso_pts[i], eso_pts[i + 1], p["r_es"], p["r_es"]) for i in range(3)]
    carina = np.array([x_tr, y_tr, z_car])
    bro_r_end = np.array([x_tr + 26.0, y_tr - 6.0, z_car - 20.0])
    bro_l_end = np.array([x_tr - 42.0, y_tr - 9.0, z_car - 28.0])
    trachea_segs = [(np.array([x_tr, y_tr, z_top + 5]), carina, r_tr, r_tr),
                    (carina, bro_r_end, 0.8 * r_tr, 0.75 * r_tr),
                    (carina, bro_l_end, 0.7 * r_tr, 0.65 * r_tr)]
    return {"segs": {"aorta": aorta_segs, "pa": pa_segs, "svc": svc_segs, "eso": eso_segs,
                     "air": trachea_segs},
            "hila": (hil_r, hil_l), "bronchi": (bro_r_end, bro_l_end)}


def _lungs(g: Grid, p: dict[str, float], th: Thorax, env: np.ndarray, lm: dict[str, float],
           heart: dict[str, Any], d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Lung mask and its partial-volume fraction: the envelope ``env`` minus the
    mediastinum (heart, tubes ``d``, spine, midline), smoothed."""
    s = g.s
    X, Y, Z = g.X, g.Y, g.Z
    x_mid, r_vb = lm["x_tr"], lm["r_vb"]
    upper = Z > heart["top"] - 25.0
    excl = (
        (heart["depth"] > -5.0)
        | (d["aorta"] > -4.0) | (d["pa"] > -3.0) | (d["svc"] > -3.0) | (d["eso"] > -3.0)
        | (d["air"] > -3.0)
        | (d["vb"] > -5.0)
        | ((np.abs(X) < 0.8 * r_vb + 4) & (Y < lm["y_vb"]))
        | (np.abs(X - x_mid) < 5.0)
        | (upper & ((((X - x_mid) / p["med_w"]) ** 2 + ((Y - lm["y_tr"] - 18) / 40.0) ** 2) < 1))
    )
    env = env & ~excl
    sm = ndi.gaussian_filter(env.astype(np.float32), (0.5, 2.5 / s, 2.5 / s))
    lung = sm > 0.5
    lung_f = ndi.gaussian_filter(lung.astype(np.float32), (0.0, 0.45, 0.45))
    return lung, lung_f


def render_anatomy(g: Grid, rng: np.random.Generator, p: dict[str, float]
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """True-HU volume and organ map of one patient (no lesions, no scanner effects).

    Draws, in order: the body wall, the abdomen under the diaphragm domes, then computes
    the mediastinal structures (painted later by
    :func:`covidlib.data.phantom_organs.paint_mediastinum_bones`) and the lungs. The
    returned ``info`` carries the lung mask and what the later painters need.
    """
    img = np.full(g.shape, -1000.0, np.float32)
    organs = np.zeros(g.shape, np.uint8)
    X, Y, Z = g.X, g.Y, g.Z
    th = _body_wall(g, rng, p, img, organs)
    D = _diaphragm(p, th, X, Y)  # (1, H, W)
    above = Z > D
    caps, z_t = _apex_caps(g, p, th)
    _cavity_fill(g, p, th, img, organs, above, caps, z_t)
    lm = _landmarks(g, p)
    heart = _heart(g, p, th, D)
    tubes = _tubes(p, lm, heart)
    d = {k: tube_depth(g, segs) for k, segs in tubes["segs"].items()}
    # spine column
    r_vb, y_vb, y_sc = lm["r_vb"], lm["y_vb"], lm["y_sc"]
    d["vb"] = r_vb * (1.1 - 0.15 * th.zrel.clip(0, 1)) - np.sqrt(X**2 + (Y - y_vb) ** 2)
    canal_r = np.sqrt(X**2 + (Y - y_sc) ** 2)
    # lungs: cavity above the diaphragm, minus the mediastinum, tapered at the apex
    env = th.cav & above & (Z < p["z_low"] + p["L"]) & caps
    lung, lung_f = _lungs(g, p, th, env, lm, heart, d)
    side_r = X > lm["x_tr"]
    info = {
        "lung": lung, "lung_f": lung_f, "side_r": np.broadcast_to(side_r, g.shape),
        "a_c": th.a_c, "b_c": th.b_c,
        "hila": tubes["hila"], "bronchi": tubes["bronchi"],
        "veins": (np.array([30.0, lm["y_es"] + 12.0, heart["z"] + 0.4 * heart["c"]]),
                  np.array([-30.0, lm["y_es"] + 12.0, heart["z"] + 0.45 * heart["c"]])),
        "z_car": lm["z_car"],
        "later": dict(heart=heart["depth"], aorta=d["aorta"], pa=d["pa"], svc=d["svc"],
                      eso=d["eso"], air=d["air"], vb=d["vb"], canal=canal_r, y_vb=y_vb,
                      y_sc=y_sc, r_vb=r_vb, r_can=lm["r_can"], Rc=th.Rc, Rb=th.Rb, r2=th.r2,
                      phi=th.phi, cav=th.cav),
    }
    return img, organs, info


def parenchyma(g: Grid, rng: np.random.Generator, p: dict[str, float], info: dict[str, Any]
               ) -> np.ndarray:
    """Parenchyma (texture, gravity gradient, fissures); returns the lung HU array."""
    Y, Z = g.Y, g.Z
    b_c = info["b_c"]
    base = p["lung_hu"]
    t1 = smooth_noise(rng, g.shape, (0.4, 0.8, 0.8))
    t2 = smooth_noise(rng, g.shape, (0.8, 3.0, 3.0))
    grav = p["gravity"] * np.clip((b_c - Y) / (2 * b_c), 0, 1) ** 2
    par = (base + grav + 18.0 * t1 + 14.0 * t2).astype(np.float32)
    # oblique fissures: planes from posterior-superior to anterior-inferior through each hilum
    for k, side in enumerate((1, -1)):
        hil = info["hila"][k]
        n = unit(np.array([0.0, p[f"fiss_k{k}"], 1.0]))
        curve = 0.004 * (g.X - side * 0.5 * info["a_c"]) ** 2  # concave anteriorly
        dist = np.abs((Y - hil[1] + curve) * n[1] + (Z - hil[2] - 8) * n[2])
        par += (90.0 * np.exp(-((dist / 0.6) ** 2)) * (g.X * side > 0)).astype(np.float32)
    return par.astype(np.float32)


def lobes_lower(g: Grid, p: dict[str, float], info: dict[str, Any]) -> np.ndarray:
    """True in the lower lobes (posterior-inferior to the oblique fissure)."""
    out = np.zeros(g.shape, bool)
    for k, side in enumerate((1, -1)):
        hil = info["hila"][k]
        curve = 0.004 * (g.X - side * 0.5 * info["a_c"]) ** 2
        val = (g.Z - hil[2] - 8) + p[f"fiss_k{k}"] * (g.Y - hil[1] + curve)
        out |= (val < 0) & ((g.X * side) > 0)
    return out
