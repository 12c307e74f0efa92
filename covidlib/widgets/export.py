"""Labels out (and back in): the widget's annotations as files other tools open.

Three formats, each with a reader that gives the same :class:`Annotation` list back:

* **point CSV** (:func:`write_points_csv` / :func:`read_points_csv`): one row per answer,
  columns ``kind, case_id, z, y, x, label, y0, y1, x0, x1, time`` (``y``/``x`` empty for a
  background tag; ``box`` half-open, image pixels of the original slice). A spreadsheet or
  ``pandas.read_csv`` reads it.
* **label masks** (:func:`write_label_masks` / :func:`read_label_masks`): one volume per
  case in the image's geometry, uint8, P1's label map: the point's label at each click,
  0 on regions tagged background, 255 (:data:`~covidlib.data.oracle.IGNORE`) unlabelled.
  NIfTI (``<case>.labels.nii.gz``, nibabel) with the affine ``diag(sx, sy, sz, 1)`` covidlib
  reads volumes in (RAS+, axes ``(x, y, z)``; :mod:`covidlib.data.readers`), or one PNG per
  slice (``<case>/<z:04d>.png``). Reading back needs the region grid ``n_regions`` (a
  point's region is the grid cell it lies in).
* **3D Slicer markups** (:func:`write_slicer_markups` / :func:`read_slicer_markups`): one
  ``<case>.mrk.json`` per case (Slicer's markups JSON schema v1.0.3): the clicks as a
  ``Fiducial`` list named "infection", each background tag as a ``ROI`` box, positions in
  millimetres, LPS (Slicer's file convention: ``L = -x``, ``P = -y`` of RAS). Each point
  keeps its slice, box and label in its ``description`` so the round trip is exact.

Points from P2's oracle (:func:`covidlib.data.oracle.point_annotation`, ``(y, x, label)``
with label 0 for background points) become annotations with :func:`from_points`: an
infection point is a ``point`` and a background point a ``background`` tag of its own
1-pixel box.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covidlib.data.errors import DataError
from covidlib.data.oracle import IGNORE, region_grid
from covidlib.data.types import Case
from covidlib.widgets.annotations import Annotation

__all__ = ["CSV_COLUMNS", "SLICER_SCHEMA", "from_points", "label_volume", "read_label_masks",
           "read_points_csv", "read_slicer_markups", "write_label_masks", "write_points_csv",
           "write_slicer_markups"]

CSV_COLUMNS = ("kind", "case_id", "z", "y", "x", "label", "y0", "y1", "x0", "x1", "time")
SLICER_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/"
                 "Markups/Resources/Schema/markups-schema-v1.0.3.json#")
Ref = tuple[str, int]


def _cases(cases: Sequence[Case] | Mapping[str, Case]) -> dict[str, Case]:
    return dict(cases) if isinstance(cases, Mapping) else {c.case_id: c for c in cases}


def from_points(points: Mapping[Ref, Iterable[Sequence[int]]]) -> list[Annotation]:
    """P2-style point labels ``{(case_id, z): [(y, x, label), ...]}`` as annotations: label >
    0 -> a ``point`` in its 1-pixel box, label 0 -> a ``background`` tag of that pixel."""
    out = []
    for (cid, z), pts in points.items():
        for p in pts:
            y, x, label = (int(v) for v in p)
            box = (y, y + 1, x, x + 1)
            out.append(Annotation("point", str(cid), int(z), box, y, x, label) if label
                       else Annotation("background", str(cid), int(z), box, label=0))
    return out


# ------------------------------------------------------------------------------- CSV


def write_points_csv(annotations: Iterable[Annotation], path: str | Path) -> Path:
    """One CSV row per answer (columns :data:`CSV_COLUMNS`); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for a in annotations:
            pt = a.kind == "point"
            w.writerow([a.kind, a.case_id, a.z, a.y if pt else "", a.x if pt else "", a.label,
                        *a.box, a.time])
    return path


def _int(row: Mapping[str, str], key: str, where: str) -> int | None:
    text = (row.get(key) or "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError as exc:
        raise DataError(where, f"{key}={text!r} is not an integer") from exc


def read_points_csv(path: str | Path) -> list[Annotation]:
    """The annotations of a :func:`write_points_csv` file, every row checked (a bad row raises
    :class:`DataError` naming the file, the line and the value)."""
    path = Path(path)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(str(path), f"missing CSV column(s) {missing}; expected "
                            f"{list(CSV_COLUMNS)}")
        out = []
        for i, row in enumerate(reader, start=2):
            where = f"{path}: line {i}"
            obj: dict[str, Any] = {"kind": row["kind"], "case_id": row["case_id"],
                                   "box": [_int(row, k, where) for k in ("y0", "y1", "x0", "x1")],
                                   "time": row.get("time") or ""}
            for key in ("z", "label", "y", "x"):
                value = _int(row, key, where)
                if value is not None:
                    obj[key] = value
            out.append(Annotation.from_json(obj, where))
    return out


# ------------------------------------------------------------------------- label masks


def label_volume(annotations: Iterable[Annotation], shape: Sequence[int],
                 case_id: str) -> np.ndarray:
    """P1's label map of case ``case_id`` as a ``(Z, H, W)`` uint8 volume: 255 unlabelled,
    0 on background regions, the label at each click (a click wins over a background tag)."""
    vol = np.full(tuple(int(s) for s in shape), IGNORE, dtype=np.uint8)
    anns = [a for a in annotations if a.case_id == case_id]
    for a in anns:
        if not 0 <= a.z < vol.shape[0]:
            raise DataError(case_id, f"label on slice z={a.z} outside 0..{vol.shape[0] - 1}")
        y0, y1, x0, x1 = a.box
        if y1 > vol.shape[1] or x1 > vol.shape[2]:
            raise DataError(case_id, f"box {list(a.box)} outside the slice {vol.shape[1:]}")
        if a.kind == "background":
            vol[a.z, y0:y1, x0:x1] = 0
    for a in anns:
        if a.kind == "point":
            vol[a.z, a.y, a.x] = a.label
    return vol


def _spacing(case: Case) -> tuple[float, float, float]:
    """``(sx, sy, sz)`` in mm, 1 where unknown (8-bit slice sets)."""
    sz, sy, sx = (float(v) if math.isfinite(float(v)) and float(v) > 0 else 1.0
                  for v in case.spacing)
    return sx, sy, sz


def _labelled_cases(annotations: Iterable[Annotation],
                    cases: Sequence[Case] | Mapping[str, Case], folder: Path, unknown: str
                    ) -> Iterator[tuple[str, Case, list[Annotation]]]:
    """Create ``folder``, then yield ``(case id, case, its labels)`` for each labelled case
    (in the order of its first label); a label of a case not in ``cases`` raises
    :class:`DataError` saying that the case's ``unknown`` (shape, geometry) is unknown."""
    by_id, anns = _cases(cases), list(annotations)
    folder.mkdir(parents=True, exist_ok=True)
    for cid in dict.fromkeys(a.case_id for a in anns):
        if cid not in by_id:
            raise DataError(cid, f"labels of a case that is not loaded (its {unknown} is unknown)")
        yield cid, by_id[cid], [a for a in anns if a.case_id == cid]


def write_label_masks(annotations: Iterable[Annotation], cases: Sequence[Case] | Mapping[str, Case],
                      folder: str | Path, fmt: str = "nifti") -> list[Path]:
    """One label volume per labelled case (see the module docstring); returns the files."""
    import nibabel as nib
    from PIL import Image

    if fmt not in ("nifti", "png"):
        raise ValueError(f"write_label_masks: fmt={fmt!r}; choose 'nifti' or 'png'")
    folder = Path(folder)
    out = []
    for cid, case, anns in _labelled_cases(annotations, cases, folder, "shape"):
        vol = label_volume(anns, case.image.shape, cid)
        if fmt == "nifti":
            sx, sy, sz = _spacing(case)
            img = nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)),
                                  np.diag([sx, sy, sz, 1.0]))
            img.header.set_data_dtype(np.uint8)
            path = folder / f"{cid}.labels.nii.gz"
            nib.save(img, str(path))
            out.append(path)
        else:
            (folder / cid).mkdir(exist_ok=True)
            for z in sorted({a.z for a in anns}):
                path = folder / cid / f"{z:04d}.png"
                Image.fromarray(vol[z], mode="L").save(path)
                out.append(path)
    return out


def _slice_annotations(cid: str, z: int, lab: np.ndarray, n_regions: int,
                       where: str) -> list[Annotation]:
    out = []
    for box in region_grid(lab.shape, n_regions):
        y0, y1, x0, x1 = box
        region = lab[y0:y1, x0:x1]
        pts = np.argwhere((region > 0) & (region < IGNORE))
        if len(pts) > 1:
            raise DataError(where, f"{len(pts)} points in region {list(box)}; the widget "
                            "gives one answer per region")
        if len(pts) == 1:
            py, px = (int(v) for v in pts[0])
            out.append(Annotation("point", cid, z, box, y0 + py, x0 + px,
                                  int(region[py, px])))
        elif (region == 0).all():
            out.append(Annotation("background", cid, z, box, label=0))
        elif (region == 0).any():
            raise DataError(where, f"region {list(box)} is partly background: not a "
                            f"{n_regions}-region label map")
    return out


def read_label_masks(folder: str | Path, n_regions: int) -> list[Annotation]:
    """The annotations of a :func:`write_label_masks` folder (NIfTI or PNG), regions on the
    ``n_regions`` grid; ordered by case, slice and region (the file keeps no answer order)."""
    import nibabel as nib
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(str(folder), "no such folder of label masks")
    out = []
    for path in sorted(folder.glob("*.labels.nii.gz")):
        vol = np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)
        vol = vol.transpose(2, 1, 0).astype(np.uint8)
        cid = path.name[:-len(".labels.nii.gz")]
        for z in range(vol.shape[0]):
            out += _slice_annotations(cid, z, vol[z], n_regions, f"{path}: slice {z}")
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(sub.glob("*.png")):
            try:
                z = int(path.stem)
            except ValueError as exc:
                raise DataError(str(path), "a label PNG is named <z>.png, e.g. 0012.png"
                                ) from exc
            lab = np.asarray(Image.open(path))
            out += _slice_annotations(sub.name, z, lab, n_regions, str(path))
    return out


# ------------------------------------------------------------------------ 3D Slicer


def _lps(case: Case, z: float, y: float, x: float) -> list[float]:
    sx, sy, sz = _spacing(case)
    return [-x * sx + 0.0, -y * sy + 0.0, z * sz]


def _voxel(case: Case, pos: Sequence[float]) -> tuple[float, float, float]:
    sx, sy, sz = _spacing(case)
    return pos[2] / sz, -pos[1] / sy, -pos[0] / sx


def _markup(kind: str, name: str, points: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"type": kind, "name": name, "coordinateSystem": "LPS", "coordinateUnits": "mm",
            "locked": False, "labelFormat": "%N-%d", "controlPoints": points,
            "measurements": [], **extra}


def _control_point(i: int, label: str, pos: list[float], description: str) -> dict[str, Any]:
    return {"id": str(i), "label": label, "description": description, "associatedNodeID": "",
            "position": pos, "orientation": [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0],
            "selected": True, "locked": False, "visibility": True, "positionStatus": "defined"}


def write_slicer_markups(annotations: Iterable[Annotation],
                         cases: Sequence[Case] | Mapping[str, Case],
                         folder: str | Path) -> list[Path]:
    """One 3D Slicer ``<case>.mrk.json`` per labelled case (see the module docstring)."""
    folder = Path(folder)
    out = []
    for cid, case, mine in _labelled_cases(annotations, cases, folder, "geometry"):
        sx, sy, sz = _spacing(case)
        points = [_control_point(i + 1, f"infection-{i + 1}", _lps(case, a.z, a.y, a.x),
                                 json.dumps({"z": a.z, "box": list(a.box), "label": a.label,
                                             "time": a.time}))
                  for i, a in enumerate(a for a in mine if a.kind == "point")]
        markups = [_markup("Fiducial", "infection", points)]
        for i, a in enumerate(a for a in mine if a.kind == "background"):
            y0, y1, x0, x1 = a.box
            centre = _lps(case, a.z, (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2)
            desc = json.dumps({"z": a.z, "box": list(a.box), "time": a.time})
            markups.append(_markup(
                "ROI", f"background-{i + 1}",
                [_control_point(1, f"background-{i + 1}", centre, desc)], roiType="Box",
                center=centre, size=[(x1 - x0) * sx, (y1 - y0) * sy, sz],
                orientation=[-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]))
        path = folder / f"{cid}.mrk.json"
        path.write_text(json.dumps({"@schema": SLICER_SCHEMA, "markups": markups}, indent=2))
        out.append(path)
    return out


def _from_markup(m: Mapping[str, Any], case: Case, cid: str, where: str) -> list[Annotation]:
    if m.get("coordinateSystem", "LPS") != "LPS":
        raise DataError(where, f"coordinateSystem {m.get('coordinateSystem')!r}: only LPS "
                        "(Slicer's file default) is read")
    out = []
    for p in m.get("controlPoints", []):
        try:
            meta = json.loads(p.get("description") or "{}")
        except json.JSONDecodeError:
            meta = {}
        z, y, x = (round(v) for v in _voxel(case, p["position"]))
        if m["type"] == "Fiducial":
            box = tuple(meta.get("box", (y, y + 1, x, x + 1)))
            out.append(Annotation.from_json(
                {"kind": "point", "case_id": cid, "z": int(meta.get("z", z)), "box": list(box),
                 "y": y, "x": x, "label": int(meta.get("label", 1)),
                 "time": meta.get("time", "")}, where))
    if m["type"] == "ROI":
        sx, sy, _sz = _spacing(case)
        z, cy, cx = _voxel(case, m["center"])
        h, w = round(m["size"][1] / sy), round(m["size"][0] / sx)
        y0, x0 = round(cy - (h - 1) / 2), round(cx - (w - 1) / 2)
        meta = {}
        if m.get("controlPoints"):
            try:
                meta = json.loads(m["controlPoints"][0].get("description") or "{}")
            except json.JSONDecodeError:
                meta = {}
        out.append(Annotation.from_json(
            {"kind": "background", "case_id": cid, "z": round(z),
             "box": [y0, y0 + h, x0, x0 + w], "label": 0, "time": meta.get("time", "")},
            where))
    return out


def read_slicer_markups(folder_or_file: str | Path,
                        cases: Sequence[Case] | Mapping[str, Case]) -> list[Annotation]:
    """The annotations of :func:`write_slicer_markups` files (a folder of ``*.mrk.json`` or one
    file): positions turned back into pixels with each case's spacing; points first, then
    background tags, per case."""
    by_id = _cases(cases)
    src = Path(folder_or_file)
    files = sorted(src.glob("*.mrk.json")) if src.is_dir() else [src]
    out = []
    for path in files:
        cid = path.name[:-len(".mrk.json")]
        if cid not in by_id:
            raise DataError(str(path), f"case {cid!r} is not loaded (its geometry is unknown)")
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(str(path), f"not a markups JSON file ({exc})") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("markups"), list):
            raise DataError(str(path), "no 'markups' list: not a Slicer .mrk.json file")
        for i, m in enumerate(doc["markups"]):
            if m.get("type") not in ("Fiducial", "ROI"):
                continue  # other markups (lines, curves) carry no labels
            out += _from_markup(m, by_id[cid], cid, f"{path}: markup {i + 1}")
    return out
