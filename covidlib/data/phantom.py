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
and resumably. The painters live beside this module: :mod:`~covidlib.data.phantom_geometry`
(grid, partial-volume painting, tubes, trees), :mod:`~covidlib.data.phantom_anatomy` (body
wall, abdomen, mediastinal geometry, lungs), :mod:`~covidlib.data.phantom_lesions` and
:mod:`~covidlib.data.phantom_organs` (vessels, mediastinum, bones, couch); this module holds
the config, the per-patient parameters, the scanner model and the file writer.
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
from tqdm.auto import tqdm

from covidlib.data.errors import DataError
from covidlib.data.phantom_anatomy import parenchyma, render_anatomy
from covidlib.data.phantom_geometry import Grid, frac, paint, smooth_noise
from covidlib.data.phantom_lesions import add_lesions
from covidlib.data.phantom_organs import couch, paint_mediastinum_bones, paint_vessels_airways
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


# --------------------------------------------------------------------------- patient
def _sample_patient(rng: np.random.Generator, cfg: PhantomConfig, site: SiteProfile
                    ) -> tuple[dict[str, float], Grid]:
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
    g = Grid(cfg.shape, site.fov_mm / nx, coverage / nz, p["cx"], p["cy"])
    return p, g


def _scan(g: Grid, rng: np.random.Generator, img: np.ndarray, site: SiteProfile) -> np.ndarray:
    """Scanner model: blur (kernel + slice profile), correlated noise, gain/offset, FOV, HU."""
    sig_xy = site.blur_mm / g.s
    sig_z = 0.29 * site.slice_thickness  # slab of thickness t has sd ~ t / sqrt(12)
    out = ndi.gaussian_filter(img, (sig_z, sig_xy, sig_xy), mode="nearest", truncate=3.0)
    if site.noise_hu > 0:
        out += site.noise_hu * smooth_noise(rng, g.shape, (0.0, 0.6, 0.6))
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
    img, organs, info = render_anatomy(g, rng, p)
    lung = info["lung"]
    par = parenchyma(g, rng, p, info)
    dt = ndi.distance_transform_edt(lung, sampling=(g.sz, g.s, g.s)).astype(np.float32)
    mask, cons_a, cons_hu, stats = add_lesions(g, rng, cfg, p, par, lung, dt, info)
    lung_f = info["lung_f"]
    img += lung_f * (par - img)
    organs[lung & info["side_r"]] = 2
    organs[lung & ~info["side_r"]] = 1
    paint_vessels_airways(g, rng, img, info, dt > 4.0)
    img += cons_a * (cons_hu - img)
    paint_mediastinum_bones(g, rng, p, img, organs, info)
    paint(img, frac(couch(g, p, k), g.s), 150.0)
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
