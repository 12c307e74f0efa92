"""Readers: NIfTI volumes in Hounsfield units and 8-bit PNG/JPEG slice sets.

Array convention (every reader, the phantom and the oracle share it)
--------------------------------------------------------------------
Volumes are returned as ``(Z, H, W)`` float32 arrays indexed ``image[z, y, x]`` with
spacing ``(z, y, x)`` in millimetres. A NIfTI file is first brought to the closest
canonical (RAS+) orientation with :func:`nibabel.as_closest_canonical` and its voxel
axes ``(i, j, k)`` are then transposed to ``(k, j, i)``. Hence

* ``z`` runs inferior -> superior, ``y`` posterior -> anterior and ``x`` from the patient's
  left to the patient's right (RAS+: each axis grows towards R, A and S);
* a file written with the affine ``diag(sx, sy, sz, 1)`` (already RAS+, as the phantom
  writes it) round-trips exactly: ``read_nifti(p)[0] == data_xyz.transpose(2, 1, 0)``;
* for the usual radiological display (patient's right on the viewer's left, anterior at the
  top) show ``image[z, ::-1, ::-1]``.

Intensities are ``get_fdata()`` values, i.e. with ``scl_slope`` / ``scl_inter`` applied.
Every problem raises :class:`~covidlib.data.errors.DataError` naming the file and the reason;
nothing is skipped silently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from covidlib.data.errors import DataError, missing_reason
from covidlib.data.readers_io import (
    AFFINE_TOL_MM,
    _as_labels,
    _check_affine,
    _load_nifti,
    _values,
    read_nifti,
    read_nifti_labels,
    read_slice_image,
)
from covidlib.data.types import Case

__all__ = [
    "AFFINE_TOL_MM",
    "CaseRef",
    "iter_case_refs",
    "iter_cases",
    "load_cases",
    "read_nifti",
    "read_nifti_labels",
    "read_slice_image",
]

TEMPLATES = ("image", "mask", "lung", "organs", "teacher")
_MISSING = object()


# --------------------------------------------------------------------------- manifests
def _get(obj: Any, key: str, default: Any = _MISSING) -> Any:
    """Field of a manifest-like object: attribute or mapping access (both are accepted)."""
    if isinstance(obj, Mapping):
        if key in obj:
            return obj[key]
    elif hasattr(obj, key):
        return getattr(obj, key)
    if default is _MISSING:
        raise KeyError(key)
    return default


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _manifest_label(manifest: Any) -> str:
    name = _get(manifest, "name", "?")
    src = _get(manifest, "path", None) or _get(manifest, "source", None)
    return f"manifest '{name}'" + (f" ({src})" if src else "")


class CaseRef:
    """Where one case (or one nifti-stack of cases) lives on disk, before loading.

    ``slices``: for a volume of slices (a group with ``volumes``), ``(slice id, files)`` per
    slice in slice order; ``files`` is then the first slice's.
    """

    __slots__ = ("case_id", "files", "group", "intensity", "labels", "site", "slices")

    def __init__(
        self,
        case_id: str,
        group: str,
        files: dict[str, Path],
        site: str | None = None,
        intensity: str | None = None,
        labels: str = "expert",
        slices: list[tuple[str, dict[str, Path]]] | None = None,
    ):
        self.slices = slices
        self.case_id = case_id
        self.group = group
        self.files = files  # keys: image and optional mask / lung / organs / teacher
        self.site = site
        self.intensity = intensity  # the group's override of the manifest's intensity
        self.labels = labels  # expert | noisy-teacher | none

    def __repr__(self) -> str:
        return f"CaseRef({self.case_id!r}, group={self.group!r}, image={self.files['image']})"


def _dataset_dir(manifest: Any, root: str | Path) -> Path:
    """The dataset folder: ``root`` itself, or ``root / local_dir`` when root is a data root."""
    local = str(_get(manifest, "local_dir", None) or _get(manifest, "name"))
    root = Path(root)
    if root.name != local and (root / local).is_dir():
        return root / local
    return root


def _select_groups(manifest: Any, group: str | Sequence[str] | None) -> list[Any]:
    groups = list(_get(_get(manifest, "layout"), "groups"))
    names = [str(_get(g, "name")) for g in groups]
    if group is None:
        return groups
    wanted = [group] if isinstance(group, str) else list(group)
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise DataError(
            _manifest_label(manifest), f"unknown group(s) {unknown}; known groups: {names}"
        )
    return [g for g in groups if str(_get(g, "name")) in wanted]


def _group_case_ids(manifest: Any, g: Any, ddir: Path) -> list[str]:
    ids = _get(g, "cases", None)
    if ids:
        return [str(c) for c in ids]
    pattern = _get(g, "case_glob", None)
    if not pattern:
        raise DataError(
            _manifest_label(manifest), f"group '{_get(g, 'name')}' has neither cases nor case_glob"
        )
    pattern = str(pattern)
    if pattern.count("*") != 1:
        raise DataError(_manifest_label(manifest), f"case_glob {pattern!r} needs exactly one '*'")
    pre, post = pattern.split("*")
    found = []
    for p in ddir.glob(pattern):
        rel = p.relative_to(ddir).as_posix()
        if rel.startswith(pre) and rel.endswith(post) and len(rel) > len(pre) + len(post):
            found.append(rel[len(pre) : len(rel) - len(post)])  # the text matched by '*'
    found = sorted(set(found), key=_natural_key)
    if not found:
        raise DataError(
            ddir / pattern,
            f"no files match case_glob of group '{_get(g, 'name')}' in {_manifest_label(manifest)}",
        )
    return found


def _alt_mask(manifest: Any, g: Any, alt_mask: str) -> Any:
    alts = _get(g, "alt_masks", None) or {}
    if alt_mask not in alts:
        raise DataError(
            _manifest_label(manifest),
            f"group '{_get(g, 'name')}' has no alt mask {alt_mask!r}; it has {sorted(alts)}",
        )
    return alts[alt_mask]


def _case_files(manifest: Any, g: Any, cid: str, ddir: Path, alt_mask: str | None
                ) -> dict[str, Path]:
    """The existing files of case (or slice) ``cid`` of group ``g``, by template key."""
    gname, label = str(_get(g, "name")), _manifest_label(manifest)
    files: dict[str, Path] = {}
    for key in TEMPLATES:
        tpl = _get(g, key, None)
        if key == "mask" and alt_mask is not None:
            tpl = _get(_alt_mask(manifest, g, alt_mask), "path")
        if not tpl:
            continue
        p = ddir / str(tpl).format(case=cid)
        if not p.is_file():
            raise DataError(p, f"missing {key} file of case '{cid}' (group '{gname}', {label}): "
                            f"{missing_reason(p)}")
        files[key] = p
    if "image" not in files:
        raise DataError(label, f"group '{gname}' has no image template")
    return files


def _volume_refs(manifest: Any, g: Any, ddir: Path, wanted: set[str] | None,
                 matched: set[str], alt_mask: str | None) -> list[CaseRef]:
    """One CaseRef per volume of a group whose slices are grouped (``volumes``)."""
    from covidlib.data.manifest import group_volumes

    refs = []
    for vid, slice_ids in group_volumes(g, ddir).items():
        if wanted is not None:
            if vid not in wanted:
                continue
            matched.add(vid)
        slices = [(sl, _case_files(manifest, g, sl, ddir, alt_mask)) for sl in slice_ids]
        refs.append(CaseRef(vid, str(_get(g, "name")), slices[0][1], _get(g, "site", None),
                            _get(g, "intensity", None), str(_get(g, "labels", "expert")),
                            slices=slices))
    return refs


def iter_case_refs(
    manifest: Any,
    root: str | Path,
    group: str | Sequence[str] | None = None,
    cases: Iterable[str] | None = None,
    alt_mask: str | None = None,
) -> Iterator[CaseRef]:
    """Resolve the manifest layout to file paths, checking that every file exists.

    ``root`` is the dataset folder, or a data root (one entry of ``COVIDLIB_DATA_PATH``)
    holding it as ``root / manifest.local_dir``. ``cases`` filters by case id (for
    ``nifti-stack`` either the stack's id or a slice id ``{stack}_{z:03d}`` selects it).
    Unknown case ids and missing files raise ``DataError``. ``alt_mask`` picks a group's
    alternative mask (e.g. the multi-class masks of COVID-SemiSeg) instead of ``mask``.
    """
    ddir = _dataset_dir(manifest, root)
    label = _manifest_label(manifest)
    if not ddir.is_dir():
        raise DataError(ddir, f"dataset folder not found ({label}); see its manual_instructions")
    fmt = _get(_get(manifest, "layout"), "format")
    wanted = None if cases is None else {str(c) for c in cases}
    matched: set[str] = set()
    refs: list[CaseRef] = []
    for g in _select_groups(manifest, group):
        gname = str(_get(g, "name"))
        if _get(g, "volumes", None) is not None:
            refs.extend(_volume_refs(manifest, g, ddir, wanted, matched, alt_mask))
            continue
        for cid in _group_case_ids(manifest, g, ddir):
            if wanted is not None:
                hits = {cid} if cid in wanted else set()
                if fmt == "nifti-stack":
                    hits |= {w for w in wanted if re.fullmatch(re.escape(cid) + r"_\d{3,}", w)}
                if not hits:
                    continue
                matched |= hits
            files = _case_files(manifest, g, cid, ddir, alt_mask)
            refs.append(
                CaseRef(cid, gname, files, _get(g, "site", None), _get(g, "intensity", None),
                        str(_get(g, "labels", "expert")))
            )
    if wanted is not None:
        missing = sorted(wanted - matched, key=_natural_key)
        if missing:
            raise DataError(label, f"unknown case id(s) {missing[:10]} in the selected groups")
    yield from refs


def _check_shape(other: np.ndarray, ref_shape: tuple, other_path: Path, image_path: Path) -> None:
    if tuple(other.shape) != tuple(ref_shape):
        raise DataError(
            other_path,
            f"shape {tuple(other.shape)} differs from image {image_path} shape {tuple(ref_shape)}",
        )


def _scale_hint(values: set[int], allowed: set[int], scale_key: str | None) -> str:
    """' ... set mask_scale: 255 ...' when every value is a multiple of one scale whose
    quotients are allowed labels (a {0, 255} mask read with mask_scale 1)."""
    nonzero = [int(v) for v in values if v]
    if scale_key is None or not nonzero:
        return ""
    g = int(np.gcd.reduce(nonzero))
    if g > 1 and all(v // g in allowed for v in nonzero):
        return (f"; the mask looks scaled by {g} (values {sorted(values)[:6]}): set "
                f"{scale_key}: {g} in the manifest (label = value / {g})")
    return ""


def _check_labels(
    mask: np.ndarray, allowed: set[int] | None, path: Path, label: str, what: str = "label_map",
    scale_key: str | None = None,
) -> None:
    if allowed is None:
        return
    values = set(_values(mask).tolist())
    unknown = sorted(values - allowed)
    if unknown:
        raise DataError(
            path, f"unknown label values {unknown[:10]}; {what} of {label} allows "
            f"{sorted(allowed)}{_scale_hint(values, allowed, scale_key)}"
        )


def _mask_dtype(allowed: set[int] | None) -> type:
    if allowed is not None and max(allowed, default=0) <= 255:
        return np.uint8
    return np.int32


class _SliceChecks:
    """What a slice's masks are checked against (one manifest / alt mask)."""

    def __init__(self, scale: int, allowed: set[int] | None, organs_allowed: set[int] | None,
                 mdtype: type, label: str, scale_key: str = "mask_scale"):
        self.scale, self.allowed, self.organs_allowed = scale, allowed, organs_allowed
        self.mdtype, self.label, self.scale_key = mdtype, label, scale_key


def _group_of(manifest: Any, name: str) -> Any:
    return next(g for g in _get(_get(manifest, "layout"), "groups") if _get(g, "name") == name)


def _read_lung(path: Path) -> np.ndarray:
    """A binary lung mask (any non-zero value is lung: {0,1}, {0,255}, left/right {0,1,2}).

    The manifest's ``mask_scale`` belongs to the infection mask and is not applied here; a
    soft or lossy mask (more than 3 distinct values) raises ``DataError``.
    """
    arr = read_slice_image(path, "mask")
    values = np.flatnonzero(np.bincount(arr.ravel(), minlength=256))
    if values.size > 3:
        raise DataError(path, f"lung mask holds {values.size} distinct values "
                        f"({values[:6].tolist()}...): a soft/lossy mask? expected a label mask "
                        "such as {0, 1}, {0, 255} or {0, 1, 2}")
    return (arr != 0).astype(np.uint8)


def _read_slice_files(f: dict[str, Path], c: _SliceChecks
                      ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One slice's image (1, H, W) float32 and its masks (1, H, W), checked."""
    image = read_slice_image(f["image"], "image")[None]
    arrays: dict[str, np.ndarray] = {}
    for key in ("mask", "lung", "organs"):
        if key in f:
            if key == "lung":
                arr = _read_lung(f[key])[None]
            else:
                arr = read_slice_image(f[key], "mask", mask_scale=c.scale)[None]
            _check_shape(arr, image.shape, f[key], f["image"])
            arrays[key] = arr
    if "mask" in arrays:
        what = "label_map" if c.scale_key == "mask_scale" else c.scale_key.rsplit(".", 1)[0]
        _check_labels(arrays["mask"], c.allowed, f["mask"], c.label,
                      what + (".label_map" if what != "label_map" else ""), c.scale_key)
        arrays["mask"] = arrays["mask"].astype(c.mdtype)
    if "organs" in arrays:
        _check_labels(arrays["organs"], c.organs_allowed, f["organs"], c.label, "organ_map")
    return image, arrays


def _read_slice_stack(ref: CaseRef, c: _SliceChecks
                      ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A volume of slices: every slice read and checked, stacked to (Z, H, W) in order."""
    assert ref.slices is not None
    images, stacks = [], {}
    first = ref.slices[0][1]["image"]
    for _, files in ref.slices:
        image, arrays = _read_slice_files(files, c)
        if images and image.shape != images[0].shape:
            raise DataError(files["image"], f"slice shape {image.shape[1:]} differs from "
                            f"{first} {images[0].shape[1:]} in volume '{ref.case_id}'")
        images.append(image)
        for k, a in arrays.items():
            stacks.setdefault(k, []).append(a)
    return np.concatenate(images), {k: np.concatenate(v) for k, v in stacks.items()}


def _read_slice_stack_cached(ref: CaseRef, c: _SliceChecks, manifest: Any,
                             alt_mask: str | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """:func:`_read_slice_stack` through the decoded-stack disk cache (covidlib.data.stackcache).

    The image comes back as uint8 (Z, H, W): the 8-bit values as stored, 4x smaller.
    """
    from covidlib.data.stackcache import cached_arrays

    assert ref.slices is not None

    def compute() -> dict[str, np.ndarray]:
        image, arrays = _read_slice_stack(ref, c)
        return {"image": image.astype(np.uint8), **arrays}

    files = [p for _, fs in ref.slices for p in fs.values()]
    settings = {"scale": c.scale, "allowed": sorted(c.allowed or []), "alt_mask": alt_mask,
                "organs": sorted(c.organs_allowed or []), "dtype": np.dtype(c.mdtype).name,
                "keys": sorted(ref.files)}
    arrays = cached_arrays(str(_get(manifest, "name", "dataset")), ref.case_id, files,
                           settings, compute, variant=alt_mask or "mask")
    image = arrays.pop("image")
    return image, arrays


def _read_ref(ref: CaseRef, manifest: Any, alt_mask: str | None = None) -> Iterator[Case]:
    """Load one CaseRef into one Case (or Z Cases for nifti-stack)."""
    fmt = _get(_get(manifest, "layout"), "format")
    label = _manifest_label(manifest)
    label_map = _get(manifest, "label_map", None)
    scale = int(_get(manifest, "mask_scale", 1) or 1)
    inf = _get(manifest, "infection_labels", None)
    if alt_mask is not None:
        groups = _get(_get(manifest, "layout"), "groups")
        alt = _alt_mask(manifest, next(g for g in groups if _get(g, "name") == ref.group), alt_mask)
        label_map = _get(alt, "label_map")
        scale = int(_get(alt, "mask_scale", 1) or 1)
        inf = [int(k) for k in label_map if int(k) != 0]  # every non-zero class of the alt map
    allowed = None if not label_map else {int(k) for k in label_map}
    organ_map = _get(manifest, "organ_map", None)
    organs_allowed = None if not organ_map else {0} | {int(k) for k in organ_map}
    mdtype = _mask_dtype(allowed)
    intensity = str(ref.intensity or _get(manifest, "intensity", "hu"))
    meta_base = {
        "dataset": _get(manifest, "name", None),
        "group": ref.group,
        "labels": ref.labels,
        "infection_labels": None if inf is None else tuple(int(v) for v in inf),
        **{f"{k}_path": str(v) for k, v in ref.files.items()},
    }
    if alt_mask is not None:
        meta_base["alt_mask"] = alt_mask
    f = ref.files
    if fmt == "image-slices":
        scale_key = "mask_scale" if alt_mask is None else f"alt_masks.{alt_mask}.mask_scale"
        checks = _SliceChecks(scale, allowed, organs_allowed, mdtype, label, scale_key)
        if ref.slices is None:
            image, arrays = _read_slice_files(f, checks)
        else:
            image, arrays = _read_slice_stack_cached(ref, checks, manifest, alt_mask)
            meta_base["slice_ids"] = tuple(sl for sl, _ in ref.slices)
            meta_base.update({f"{k}_paths": tuple(str(fs[k]) for _, fs in ref.slices)
                              for k in f})
            meta_base["volume_derived"] = bool(_get(_get(
                _group_of(manifest, ref.group), "volumes"), "derived", False))
        yield Case(
            case_id=ref.case_id,
            image=image,
            spacing=(math.nan, math.nan, math.nan),
            intensity="uint8",
            site=ref.site,
            meta=meta_base,
            **arrays,
        )
        return
    if fmt not in ("nifti-volumes", "nifti-stack"):
        raise DataError(
            label,
            f"layout format {fmt!r} is not readable by covidlib.data.readers "
            "(it reads nifti-volumes, nifti-stack and image-slices; convert the data first)",
        )
    image, spacing, image_aff = _load_nifti(f["image"])
    arrays = {}
    for key in ("mask", "lung", "organs"):
        if key in f:
            data, _, aff = _load_nifti(f[key])
            arr = _as_labels(data, f[key])
            _check_shape(arr, image.shape, f[key], f["image"])
            _check_affine(aff, image_aff, f[key], f["image"])
            arrays[key] = arr
    if "mask" in arrays:
        _check_labels(arrays["mask"], allowed, f["mask"], label)
        arrays["mask"] = arrays["mask"].astype(mdtype)
    if "lung" in arrays:
        arrays["lung"] = (arrays["lung"] != 0).astype(np.uint8)
    if "organs" in arrays:
        _check_labels(arrays["organs"], organs_allowed, f["organs"], label, "organ_map")
        if arrays["organs"].max() <= 255:
            arrays["organs"] = arrays["organs"].astype(np.uint8)
    if fmt == "nifti-volumes":
        yield Case(ref.case_id, image, spacing=spacing, intensity=intensity, site=ref.site,
                   meta=meta_base, **arrays)
        return
    for z in range(image.shape[0]):
        yield Case(
            case_id=f"{ref.case_id}_{z:03d}",
            image=image[z : z + 1].copy(),
            spacing=spacing,
            intensity=intensity,
            site=ref.site,
            meta={**meta_base, "stack": ref.case_id, "source_z": z},
            **{k: v[z : z + 1].copy() for k, v in arrays.items()},
        )


def iter_cases(
    manifest: Any,
    root: str | Path,
    group: str | Sequence[str] | None = None,
    cases: Iterable[str] | None = None,
    progress: bool = True,
    alt_mask: str | None = None,
) -> Iterator[Case]:
    """Yield the manifest's cases one at a time (constant memory; see :func:`load_cases`).

    All paths are resolved and checked for existence before the first case is read.
    """
    wanted = None if cases is None else [str(c) for c in cases]
    refs = list(iter_case_refs(manifest, root, group, wanted, alt_mask))
    fmt = _get(_get(manifest, "layout"), "format")
    keep = None if wanted is None or fmt != "nifti-stack" else set(wanted)
    name = _get(manifest, "name", "dataset")
    for ref in tqdm(refs, desc=f"reading {name}", unit="file", disable=not progress):
        for case in _read_ref(ref, manifest, alt_mask):
            if keep is None or case.case_id in keep or ref.case_id in keep:
                yield case


def load_cases(manifest: Any, root: str | Path, group: str | Sequence[str] | None = None,
               cases: Iterable[str] | None = None, progress: bool = True,
               alt_mask: str | None = None) -> list[Case]:
    """Read the cases a manifest describes (all groups, or ``group``; all cases or ``cases``).

    Layouts: ``nifti-volumes`` (one Case per file), ``nifti-stack`` (each z-slice of each
    file is a Case ``{stack}_{z:03d}`` with Z == 1) and ``image-slices`` (one Case per 8-bit
    image, Z == 1, ``intensity="uint8"``, spacing NaN). Checks: files exist, image and mask
    shapes agree, mask labels are keys of ``label_map`` (organ labels of ``organ_map``).
    ``alt_mask`` reads a group's alternative mask (its own label map and mask scale).
    ``meta["infection_labels"]`` carries the manifest's ``infection_labels`` (for an alt mask:
    all its non-zero labels); :class:`~covidlib.data.torch_datasets.SliceDataset` and
    :func:`~covidlib.data.stats.dataset_stats` use it when not told otherwise.
    Noisy-teacher predictions (template ``teacher``) are never read as masks: their path is
    in ``meta["teacher_path"]`` and ``meta["labels"]`` tells expert / noisy-teacher / none.
    Use :func:`iter_cases` to stream large pools: the 1600-slice COVID-SemiSeg pseudo-label
    pool reads in about 1 s but holds 0.6 GB as float32.
    """
    return list(iter_cases(manifest, root, group, cases, progress, alt_mask))
