"""DICOM CT + RTSTRUCT -> NIfTI conversion for LCTSC (P3 Sec. III's dataset).

TCIA publishes LCTSC as ``LCTSC/<PatientID>/<StudyUID>/<SeriesUID>/*.dcm`` (the NBIA Data
Retriever's layout; the folder names below the patient do not matter here): one CT series and
one RTSTRUCT per patient. :func:`convert_patient` turns one patient folder into the layout of
``data_manifests/lctsc.yaml``: ``image.nii.gz`` and ``organs.nii.gz``;
:func:`convert_lctsc` (``covidlib data convert lctsc --source FOLDER``) does every patient.

Geometry (DICOM PS3.3 C.7.6.2.1.1)
----------------------------------
DICOM positions are in LPS millimetres (x towards the patient's Left, y Posterior, z
Superior). With ``ImageOrientationPatient = (r, c)`` (r: the direction along a row, i.e. of
increasing column index; c: of increasing row index), ``PixelSpacing = (dr, dc)`` (between
rows, between columns) and the slice normal ``n = r x c``, the slices are sorted by ``n . P``
(``P`` = ``ImagePositionPatient``, the centre of the first pixel) and must be evenly spaced by
``s``. The voxel ``(row, col, slice k)`` sits at ``P_0 + col*dc*r + row*dr*c + k*s*n``.

The NIfTI array is stored as ``data[col, row, k]`` with the affine of that mapping in nibabel's
RAS+ world (x towards the patient's Right, y Anterior, z Superior), i.e. the LPS affine with its
first two rows negated. For the usual axial CT (``r = (1,0,0)``, ``c = (0,1,0)``) this is
``[[-dc, 0, 0, -P0x], [0, -dr, 0, -P0y], [0, 0, s, P0z]]``. Readers that canonicalise
(:func:`covidlib.data.readers.read_nifti`) then return ``image[z, y, x]`` with ``x`` towards
the patient's right.

Intensities: ``HU = stored * RescaleSlope + RescaleIntercept`` per slice, written as int16
when every value is an integer in range, else float32 (no ``scl_slope`` / ``scl_inter``).

Organ labels: every ``CLOSED_PLANAR`` contour of an ROI is mapped into the voxel grid and
filled with :func:`skimage.draw.polygon` (pixel centres inside or on the contour) on its
slice; several contours of one ROI on one slice combine by exclusive or (an inner contour is
a hole, disjoint ones add up). ROI names match the manifest's ``organ_map`` ignoring case
and punctuation, plus :data:`ROI_VARIANTS`; organs are painted in label order (a later organ
wins where contours overlap, as the manifest says). Unknown ROIs are reported, not painted.

Each output folder also gets ``conversion.json`` (source file digest, CT series, ROI -> label,
unknown ROIs, organs without an ROI); a rerun skips patients whose outputs read back and
match it. Outputs are written into a hidden folder and swapped in, never half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covidlib.data.errors import DataError, missing_reason

__all__ = [
    "ROI_VARIANTS",
    "CTSeries",
    "ConversionReport",
    "convert_lctsc",
    "convert_patient",
    "find_patients",
    "match_rois",
    "rasterise_rois",
    "read_ct_series",
]

#: Other spellings of LCTSC's ROI names after :func:`_norm` (lower case, letters and digits).
ROI_VARIANTS: dict[str, tuple[str, ...]] = {
    "spinalcord": ("cord", "spinecord", "spinal"),
    "lungr": ("rightlung", "lungright", "rlung", "rtlung", "lungrt"),
    "lungl": ("leftlung", "lungleft", "llung", "ltlung", "lunglt"),
    "heart": ("cor",),
    "esophagus": ("oesophagus", "esoph", "eso"),
}

SIDECAR = "conversion.json"
_FORMAT_VERSION = 1
_POS_TOL_MM = 0.05  # slack for positions written with 2 decimals by treatment-planning systems


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


# --------------------------------------------------------------------------- scanning
def _pydicom():
    try:
        import pydicom
    except ImportError as e:  # pragma: no cover - pydicom is a declared dependency
        raise DataError("pydicom", "not installed; `pip install pydicom` to convert DICOM") from e
    return pydicom


def _read_dicoms(patient_dir: Path) -> list[tuple[Path, Any]]:
    """Every ``*.dcm`` below ``patient_dir`` as (path, dataset), pixel data read lazily."""
    pydicom = _pydicom()
    files = sorted(p for p in patient_dir.rglob("*") if p.is_file() and p.suffix.lower() == ".dcm")
    if not files:
        raise DataError(patient_dir, "no DICOM (*.dcm) files in this patient folder")
    out = []
    for p in files:
        try:
            out.append((p, pydicom.dcmread(p)))
        except Exception as e:  # pydicom raises several unrelated types for bad files
            raise DataError(p, f"not a readable DICOM file ({type(e).__name__}: {e})") from e
    return out


def _by_modality(items: list[tuple[Path, Any]]) -> tuple[dict[str, list], list]:
    """CT slices grouped by SeriesInstanceUID, and the RTSTRUCT files."""
    cts: dict[str, list] = {}
    rts = []
    for p, ds in items:
        mod = str(getattr(ds, "Modality", ""))
        if mod == "CT":
            cts.setdefault(str(ds.SeriesInstanceUID), []).append((p, ds))
        elif mod == "RTSTRUCT":
            rts.append((p, ds))
    return cts, rts


# --------------------------------------------------------------------------- CT geometry
@dataclass
class CTSeries:
    """One CT volume: ``hu[k, row, col]`` (slices sorted along the normal), geometry in LPS."""

    hu: np.ndarray
    origin: np.ndarray  # LPS position of voxel (row 0, col 0, slice 0), mm
    row_dir: np.ndarray  # r: direction of increasing column index
    col_dir: np.ndarray  # c: direction of increasing row index
    normal: np.ndarray
    spacing: tuple[float, float, float]  # (slice s, row dr, col dc) mm
    series_uid: str
    frame_of_reference: str
    sop_uids: frozenset[str]

    def lps_affine(self) -> np.ndarray:
        """4x4: (col, row, k, 1) -> LPS mm."""
        s, dr, dc = self.spacing
        a = np.eye(4)
        a[:3, 0], a[:3, 1], a[:3, 2] = self.row_dir * dc, self.col_dir * dr, self.normal * s
        a[:3, 3] = self.origin
        return a

    def ras_affine(self) -> np.ndarray:
        """4x4: (col, row, k, 1) -> RAS mm (nibabel's world), the NIfTI affine."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.lps_affine()


def _floats(ds: Any, key: str, n: int, path: Path) -> np.ndarray:
    v = getattr(ds, key, None)
    if v is None or len(v) != n:
        raise DataError(path, f"CT slice lacks a valid {key} (got {v!r})")
    return np.asarray([float(x) for x in v])


def _slice_geometry(slices: list[tuple[Path, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Common (row_dir, col_dir, pixel spacing) of all slices; DataError when they differ."""
    p0, d0 = slices[0]
    iop = _floats(d0, "ImageOrientationPatient", 6, p0)
    ps = _floats(d0, "PixelSpacing", 2, p0)
    shape = (int(d0.Rows), int(d0.Columns))
    for p, ds in slices[1:]:
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, p), iop, atol=1e-4):
            raise DataError(p, "ImageOrientationPatient differs from the series' first slice")
        if not np.allclose(_floats(ds, "PixelSpacing", 2, p), ps, atol=1e-4):
            raise DataError(p, f"PixelSpacing differs from the series' first slice ({list(ps)})")
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise DataError(p, f"size {int(ds.Rows)}x{int(ds.Columns)} differs from {shape}")
    r, c = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    return r, c, ps


def _check_spacing(where: Path, dist: np.ndarray) -> float:
    """The uniform slice spacing of sorted slice positions ``dist`` (mm along the normal).

    Raises DataError for duplicates, gaps that are whole multiples of the spacing (missing
    slices) and any other unevenness (non-uniform spacing)."""
    if len(dist) < 2:
        raise DataError(where, f"CT series has {len(dist)} slice(s); a volume needs >= 2")
    gaps = np.diff(dist)
    if (gaps < _POS_TOL_MM).any():
        k = int(np.argmin(gaps))
        raise DataError(where, f"two CT slices share the position {dist[k]:.2f} mm along the "
                               "slice normal (duplicate slices)")
    s = float(np.median(gaps))
    tol = max(_POS_TOL_MM, 0.01 * s)
    for k, g in enumerate(gaps):
        if abs(g - s) <= tol:
            continue
        ratio = g / s
        if ratio > 1.5 and abs(ratio - round(ratio)) * s <= tol:
            n = round(ratio)
            raise DataError(where, f"missing slices: a gap of {g:.2f} mm between slices at "
                                   f"{dist[k]:.2f} and {dist[k + 1]:.2f} mm is {n} x the "
                                   f"spacing {s:.2f} mm ({n - 1} slice(s) missing)")
        raise DataError(where, f"non-uniform slice spacing: gap {g:.2f} mm between slices at "
                               f"{dist[k]:.2f} and {dist[k + 1]:.2f} mm, others {s:.2f} mm")
    return s


def _hu(p: Path, ds: Any) -> np.ndarray:
    try:
        pix = ds.pixel_array
    except Exception as e:  # missing PixelData, unsupported transfer syntax, ...
        raise DataError(p, f"cannot decode the pixel data ({type(e).__name__}: {e})") from e
    slope = float(getattr(ds, "RescaleSlope", 1.0))
    inter = float(getattr(ds, "RescaleIntercept", 0.0))
    return pix.astype(np.float32) * np.float32(slope) + np.float32(inter)


def read_ct_series(slices: Sequence[tuple[Path, Any]], where: Path) -> CTSeries:
    """Sort one CT series along its normal, check its spacing and return it in HU."""
    slices = list(slices)
    r, c, ps = _slice_geometry(slices)
    n = np.cross(r, c)
    pos = np.stack([_floats(ds, "ImagePositionPatient", 3, p) for p, ds in slices])
    order = np.argsort(pos @ n, kind="stable")
    slices, pos = [slices[i] for i in order], pos[order]
    s = _check_spacing(where, pos @ n)
    drift = (pos - pos[0]) - np.outer((pos - pos[0]) @ n, n)
    if np.abs(drift).max() > max(_POS_TOL_MM, 0.01 * min(ps)):
        raise DataError(where, "CT slice positions drift within the image plane (a tilted "
                               f"gantry?; up to {np.abs(drift).max():.2f} mm); not supported")
    hu = np.stack([_hu(p, ds) for p, ds in slices])
    d0 = slices[0][1]
    return CTSeries(hu=hu, origin=pos[0], row_dir=r, col_dir=c, normal=n,
                    spacing=(s, float(ps[0]), float(ps[1])),
                    series_uid=str(d0.SeriesInstanceUID),
                    frame_of_reference=str(getattr(d0, "FrameOfReferenceUID", "")),
                    sop_uids=frozenset(str(ds.SOPInstanceUID) for _, ds in slices))


# --------------------------------------------------------------------------- RTSTRUCT
def _referenced_series(rt: Any) -> set[str]:
    out = set()
    for fr in getattr(rt, "ReferencedFrameOfReferenceSequence", []):
        for st in getattr(fr, "RTReferencedStudySequence", []):
            for se in getattr(st, "RTReferencedSeriesSequence", []):
                out.add(str(se.SeriesInstanceUID))
    return out


def _referenced_images(rt: Any) -> set[str]:
    return {str(im.ReferencedSOPInstanceUID)
            for roi in getattr(rt, "ROIContourSequence", [])
            for ct in getattr(roi, "ContourSequence", [])
            for im in getattr(ct, "ContourImageSequence", [])}


def _pick_rtstruct(rts: list, cts: dict[str, list], patient_dir: Path) -> tuple[Path, Any, str]:
    """The RTSTRUCT and the UID of the CT series it references (DataError when none fits)."""
    if not rts:
        found = ", ".join(f"{len(v)} CT slice(s) of series {k}" for k, v in cts.items()) or "no CT"
        raise DataError(patient_dir, f"no RTSTRUCT file in this patient folder (found {found}); "
                                     "download the patient's RTSTRUCT series too")
    if not cts:
        raise DataError(patient_dir, "no CT slices in this patient folder")
    if len(rts) > 1:
        names = ", ".join(str(p) for p, _ in rts)
        raise DataError(patient_dir, f"{len(rts)} RTSTRUCT files ({names}); expected one per "
                                     "patient")
    p, rt = rts[0]
    refs = _referenced_series(rt)
    hits = [uid for uid in cts if uid in refs]
    if not refs:  # no series reference: fall back to the contours' image references
        imgs = _referenced_images(rt)
        hits = [uid for uid, sl in cts.items()
                if imgs and imgs <= {str(ds.SOPInstanceUID) for _, ds in sl}]
    if len(hits) != 1:
        raise DataError(p, f"the RTSTRUCT references series {sorted(refs) or 'none'}, but the "
                           f"CT series here are {sorted(cts)}: it belongs to another series")
    return p, rt, hits[0]


def match_rois(roi_names: Mapping[int, str], organ_map: Mapping[int, str], where: Path | str
               ) -> tuple[dict[int, int], list[str]]:
    """``{ROINumber: label}`` for the ROIs naming an organ of ``organ_map`` (case, spaces and
    punctuation ignored, plus :data:`ROI_VARIANTS`), and the unknown ROI names."""
    keys: dict[str, int] = {}
    for label, organ in organ_map.items():
        for k in (_norm(organ), *ROI_VARIANTS.get(_norm(organ), ())):
            keys[k] = int(label)
    out: dict[int, int] = {}
    unknown: list[str] = []
    seen: dict[int, str] = {}
    for number, name in roi_names.items():
        label = keys.get(_norm(name))
        if label is None:
            unknown.append(name)
            continue
        if label in seen:
            raise DataError(where, f"ROIs {seen[label]!r} and {name!r} both name the organ "
                                   f"{organ_map[label]!r}; cannot tell which to use")
        seen[label] = name
        out[int(number)] = label
    return out, unknown


def _contour_mask(points: np.ndarray, ct: CTSeries, shape: tuple[int, int, int], where: str
                  ) -> tuple[int, np.ndarray] | None:
    """One CLOSED_PLANAR contour (N x 3 LPS mm) filled on its slice: (k, 2-D mask)."""
    from skimage.draw import polygon

    inv = np.linalg.inv(ct.lps_affine())
    vox = (inv @ np.c_[points, np.ones(len(points))].T)[:3].T  # (col, row, k)
    k = float(np.median(vox[:, 2]))
    kk = round(k)
    if np.abs(vox[:, 2] - kk).max() > 0.25:
        raise DataError(where, f"contour at {points[0, 2]:.2f} mm does not lie on a CT slice "
                               f"(slice index {k:.2f})")
    if not 0 <= kk < shape[0]:
        return None
    rr, cc = polygon(vox[:, 1], vox[:, 0], shape[1:])
    m = np.zeros(shape[1:], bool)
    m[rr, cc] = True
    return kk, m


def rasterise_rois(rt: Any, ct: CTSeries, labels: Mapping[int, int], where: Path
                   ) -> tuple[np.ndarray, list[str]]:
    """The ``(k, row, col)`` uint8 label map of the ROIs in ``labels`` and notes on skipped
    contours (outside the volume, not CLOSED_PLANAR)."""
    shape = ct.hu.shape
    organs = np.zeros(shape, np.uint8)
    notes: list[str] = []
    by_label: dict[int, np.ndarray] = {}
    for roi in getattr(rt, "ROIContourSequence", []):
        label = labels.get(int(roi.ReferencedROINumber))
        if label is None:
            continue
        mask = by_label.setdefault(label, np.zeros(shape, bool))
        for i, c in enumerate(getattr(roi, "ContourSequence", [])):
            kind = str(getattr(c, "ContourGeometricType", "CLOSED_PLANAR"))
            pts = np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)
            if kind != "CLOSED_PLANAR" or len(pts) < 3:
                notes.append(f"label {label}: skipped {kind} contour {i} ({len(pts)} points)")
                continue
            hit = _contour_mask(pts, ct, shape, f"{where} (label {label}, contour {i})")
            if hit is None:
                notes.append(f"label {label}: contour {i} lies outside the CT volume")
                continue
            mask[hit[0]] ^= hit[1]
    for label in sorted(by_label):  # a later organ wins where contours overlap
        if not by_label[label].any():
            notes.append(f"label {label}: the ROI has no contour inside the CT volume")
        organs[by_label[label]] = label
    return organs, notes


# --------------------------------------------------------------------------- one patient
@dataclass
class ConversionReport:
    """What :func:`convert_patient` did for one patient (``status``: converted / skipped /
    failed). ``rois``: ROI name -> label painted; ``unknown_rois``: ROIs not in the organ map
    (not painted); ``missing_organs``: organs of the map without an ROI (left 0)."""

    patient: str
    folder: str
    status: str
    shape: tuple[int, int, int] | None = None  # (Z, H, W)
    spacing: tuple[float, float, float] | None = None  # (z, y, x) mm
    rois: dict[str, int] = field(default_factory=dict)
    unknown_rois: list[str] = field(default_factory=list)
    missing_organs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def _source_digest(patient_dir: Path) -> str:
    """sha256 of the patient's DICOM file list (relative paths and sizes)."""
    h = hashlib.sha256()
    for p in sorted(patient_dir.rglob("*.dcm")):
        h.update(f"{p.relative_to(patient_dir).as_posix()}\t{p.stat().st_size}\n".encode())
    return h.hexdigest()


def _nifti(data: np.ndarray, affine: np.ndarray):
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def _hu_storage(hu: np.ndarray) -> np.ndarray:
    """int16 when every HU value is an integer int16 holds, else float32."""
    if np.array_equal(hu, np.rint(hu)) and hu.min() >= -32768 and hu.max() <= 32767:
        return hu.astype(np.int16)
    return hu.astype(np.float32)


def _write_outputs(out_dir: Path, files: Mapping[str, Any], sidecar: dict) -> None:
    """Write every NIfTI of ``files`` and the sidecar into a hidden temporary folder, then
    swap it in for ``out_dir``: a crash leaves the old outputs or none, never half of them."""
    import nibabel as nib

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, img in files.items():
            nib.save(img, str(tmp / name))
        (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=1, sort_keys=True) + "\n")
        if out_dir.exists():
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if old.exists() and not out_dir.exists():
                os.replace(old, out_dir)  # put the previous outputs back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _outputs_ok(out_dir: Path, names: tuple[str, str], digest: str) -> dict | None:
    """Resume check: both NIfTIs read back in full with one shape and, when the sidecar is
    there, it matches the source and that shape. Returns the sidecar ({} for outputs another
    tool wrote, which have none), None when the patient must be converted (again)."""
    from covidlib.data.readers import read_nifti, read_nifti_labels

    if not all((out_dir / n).is_file() for n in names):
        return None
    try:
        side = json.loads((out_dir / SIDECAR).read_text()) if (out_dir / SIDECAR).exists() else {}
        if side and (side.get("format") != _FORMAT_VERSION or side.get("source_digest") != digest):
            return None
        shape = read_nifti(out_dir / names[0])[0].shape
        if read_nifti_labels(out_dir / names[1])[0].shape != shape:
            return None
        if side and tuple(side["shape"]) != shape:
            return None
        return side or {"shape": shape}
    except (OSError, ValueError, KeyError, TypeError, DataError):
        return None


def convert_patient(patient_dir: str | Path, out_dir: str | Path, organ_map: Mapping[int, str],
                    names: tuple[str, str] = ("image.nii.gz", "organs.nii.gz"),
                    force: bool = False) -> ConversionReport:
    """Convert one patient folder (CT series + RTSTRUCT, any sub-folders) into
    ``out_dir/<names[0]>`` (HU) and ``out_dir/<names[1]>`` (organ labels of ``organ_map``);
    see the module docstring for geometry and labels. Skips (status "skipped") when the
    outputs exist, read back and were made from the same DICOM files (or by another tool:
    no sidecar), unless ``force``.
    Raises DataError for a missing RTSTRUCT, an RTSTRUCT of another series, missing slices
    and non-uniform slice spacing (and any unreadable file)."""
    src, out = Path(patient_dir), Path(out_dir)
    if not src.is_dir():
        raise DataError(src, missing_reason(src, "folder"))
    digest = _source_digest(src)
    side = None if force else _outputs_ok(out, names, digest)
    if side is not None:
        if "source_digest" not in side:
            return ConversionReport(src.name, str(out), "skipped", tuple(side["shape"]), notes=[
                f"kept {names[0]} and {names[1]} written by another tool (no {SIDECAR}); "
                "convert with force (--force) to replace them"])
        return ConversionReport(src.name, str(out), "skipped", tuple(side["shape"]),
                                tuple(side["spacing"]), side["rois"], side["unknown_rois"],
                                side["missing_organs"], side.get("notes", []))
    cts, rts = _by_modality(_read_dicoms(src))
    rt_path, rt, uid = _pick_rtstruct(rts, cts, src)
    ct = read_ct_series(cts[uid], src / f"(CT series {uid})")
    rois = {int(r.ROINumber): str(r.ROIName) for r in getattr(rt, "StructureSetROISequence", [])}
    labels, unknown = match_rois(rois, organ_map, rt_path)
    organs, notes = rasterise_rois(rt, ct, labels, rt_path)
    painted = {rois[n]: lab for n, lab in labels.items()}
    missing = [str(organ_map[k]) for k in sorted(organ_map) if k not in labels.values()]
    affine = ct.ras_affine()
    rep = ConversionReport(src.name, str(out), "converted", tuple(ct.hu.shape), ct.spacing,
                           painted, unknown, missing, notes)
    side = {"format": _FORMAT_VERSION, "source": str(src), "source_digest": digest,
            "ct_series": uid, "rtstruct": str(rt_path.relative_to(src)),
            "affine_ras": affine.round(6).tolist(), **asdict(rep)}
    _write_outputs(out, {names[0]: _nifti(_hu_storage(ct.hu).transpose(2, 1, 0), affine),
                         names[1]: _nifti(organs.transpose(2, 1, 0), affine)}, side)
    return rep


# --------------------------------------------------------------------------- a collection
def find_patients(source: str | Path, collection: str = "LCTSC") -> list[Path]:
    """Patient folders (named ``<collection>-...``, as TCIA's PatientIDs) of a TCIA download:
    ``source`` may be the folder holding ``<collection>/``, the ``<collection>/`` folder
    itself or one patient folder."""
    from covidlib.data.manifest import natural_key

    src = Path(source).expanduser()
    if not src.is_dir():
        raise DataError(src, missing_reason(src, "folder"))
    base = src / collection if (src / collection).is_dir() else src
    if base.name.upper().startswith(f"{collection.upper()}-"):
        return [base]  # one patient folder
    dirs = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    found = [base / n for n in dirs if n.upper().startswith(f"{collection.upper()}-")
             and next((base / n).rglob("*.dcm"), None) is not None]
    if not found:
        seen = f"folders {', '.join(dirs[:5])}{'...' if len(dirs) > 5 else ''}" if dirs else "none"
        raise DataError(src, f"no patient folders ({collection}-...) with DICOM files (found "
                             f"{seen}); expected TCIA's layout "
                             f"{collection}/<PatientID>/<StudyUID>/<SeriesUID>/*.dcm")
    return sorted(found, key=lambda d: natural_key(d.name))


def _out_names(manifest: Any) -> tuple[str, tuple[str, str]]:
    """(folder template, (image name, organs name)) from the manifest's first group."""
    g = manifest.layout.groups[0]
    if not g.organs:
        raise DataError(manifest.name, "the manifest's layout has no organs template")
    img, org = Path(g.image), Path(g.organs)
    if img.parent != org.parent or "{case}" not in str(img.parent):
        raise DataError(manifest.name, f"image {g.image!r} and organs {g.organs!r} must sit in "
                                       "one per-case folder to convert into")
    return str(img.parent), (img.name, org.name)


def convert_lctsc(source: str | Path, data_root: str | Path | None = None,
                  dataset: str = "lctsc", force: bool = False, progress: bool = True
                  ) -> list[ConversionReport]:
    """Convert every patient of a TCIA download (:func:`find_patients`) into the dataset's
    NIfTI layout under ``data_root`` (default: the first entry of ``$COVIDLIB_DATA_PATH``),
    with a tqdm bar over patients. Resumes: patients already converted from the same files
    are verified and skipped. A failing patient does not stop the others; its report has
    ``status == "failed"`` and the DataError text in ``error``."""
    from tqdm.auto import tqdm

    from covidlib.data.manifest import data_search_path, load_manifest

    m = load_manifest(dataset)
    if not m.organ_map:
        raise DataError(m.name, "the manifest has no organ_map to label the RTSTRUCT ROIs with")
    folder_tpl, names = _out_names(m)
    root = Path(data_root).expanduser() if data_root is not None else data_search_path()[0]
    known = set(m.case_ids())
    reports = []
    patients = find_patients(source, collection=m.name.upper())
    bar = tqdm(patients, desc=f"convert {m.name}", unit="patient", disable=not progress)
    for pdir in bar:
        bar.set_postfix_str(pdir.name)
        out = root / m.local_dir / folder_tpl.format(case=pdir.name)
        try:
            rep = convert_patient(pdir, out, m.organ_map, names, force)
        except DataError as e:
            rep = ConversionReport(pdir.name, str(out), "failed", error=str(e))
        if known and pdir.name not in known:
            rep.notes.append(f"{pdir.name} is not among the manifest's cases")
        reports.append(rep)
    return reports
