"""Reading one file: a NIfTI volume (Hounsfield units, labels) or an 8-bit PNG/JPEG slice.

Every failure raises :class:`~covidlib.data.errors.DataError` naming the file and the reason;
:mod:`covidlib.data.readers` reads whole datasets with these.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from PIL import Image, UnidentifiedImageError

from covidlib.data.errors import DataError, missing_reason

__all__ = [
    "read_nifti",
    "read_nifti_labels",
    "read_slice_image",
]

# --------------------------------------------------------------------------- NIfTI
_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError)


def _read_failure(e: BaseException, stage: str) -> str:
    """A readable reason for an exception raised by nibabel / gzip while reading."""
    if isinstance(e, EOFError):
        what = "truncated file (compressed stream ends early)"
    elif isinstance(e, zlib.error | gzip.BadGzipFile):
        what = "corrupt gzip stream"
    elif isinstance(e, OSError) and "Expected" in str(e):
        what = "truncated file (fewer data bytes than the header declares)"
    elif stage == "header":
        what = "not a readable NIfTI file"
    else:
        what = "corrupt NIfTI data"
    detail = " ".join(str(e).split())
    return f"{what} while reading the {stage} ({type(e).__name__}: {detail})"


def _load_nifti_array(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Shared NIfTI loading: canonical orientation, (z, y, x) axes, float32, all checks."""
    data, spacing, _ = _load_nifti(path)
    return data, spacing


def _load_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """:func:`_load_nifti_array` plus the file's own (stored) affine."""
    if not path.is_file():
        raise DataError(path, missing_reason(path))
    try:
        img = nib.load(str(path))
    except _READ_ERRORS as e:
        raise DataError(path, _read_failure(e, "header")) from e
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
        shape = shape[:3]
    if len(shape) != 3:
        raise DataError(path, f"expected a 3D volume (or 4D with a trailing 1), got shape {shape}")
    if 0 in shape:
        raise DataError(path, f"empty volume (shape {shape})")
    try:
        canon = nib.as_closest_canonical(img)
        data = np.asarray(canon.get_fdata(dtype=np.float32))
    except _READ_ERRORS as e:
        raise DataError(path, _read_failure(e, "data")) from e
    bad = ~np.isfinite(data)
    if bad.any():
        n_nan = int(np.isnan(data).sum())
        raise DataError(
            path, f"{int(bad.sum())} non-finite voxels ({n_nan} NaN, {int(bad.sum()) - n_nan} inf)"
        )
    sx, sy, sz = (float(v) for v in nib.affines.voxel_sizes(canon.affine))
    return np.ascontiguousarray(data.transpose(2, 1, 0)), (sz, sy, sx), np.asarray(img.affine)


AFFINE_TOL_MM = 1e-3  # image and mask affines may differ by float rounding only


def _check_affine(mask_aff: np.ndarray, image_aff: np.ndarray, mask_path: Path,
                  image_path: Path, tol: float = AFFINE_TOL_MM) -> None:
    """A mask must sit on its image's voxel grid: same orientation, spacing and origin
    (within ``tol`` mm); otherwise it would be read mirrored or shifted."""
    a, b = np.asarray(mask_aff, float), np.asarray(image_aff, float)
    scale = max(1.0, float(np.abs(b[:3, :3]).max()))
    if np.allclose(a[:3, :3], b[:3, :3], atol=tol * scale) and np.allclose(a[:3, 3], b[:3, 3],
                                                                        atol=max(tol, 1e-2)):
        return
    def describe(aff: np.ndarray) -> str:
        codes = "".join(nib.aff2axcodes(aff))
        zooms = ", ".join(f"{v:g}" for v in nib.affines.voxel_sizes(aff))
        origin = ", ".join(f"{v:g}" for v in aff[:3, 3])
        return f"{codes}, spacing ({zooms}) mm, origin ({origin})"
    raise DataError(mask_path, f"affine differs from its image {image_path}: mask "
                    f"{describe(a)} vs image {describe(b)}; the mask would be read mirrored or "
                    "shifted. Resample the mask onto the image grid (same affine) first")


def read_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a 3D NIfTI volume as ``(Z, H, W)`` float32 and its ``(z, y, x)`` spacing in mm.

    See the module docstring for the orientation convention. Raises ``DataError`` for a
    missing file, a corrupt gzip stream, truncated data, a non-3D array, an empty volume
    and NaN/inf values.
    """
    return _load_nifti_array(Path(path))


def read_nifti_labels(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a NIfTI label map (``(Z, H, W)`` int32) with the checks of :func:`read_nifti`.

    Non-integer or negative values raise ``DataError`` (a label map stored as float
    must hold exact integers).
    """
    p = Path(path)
    data, spacing = _load_nifti_array(p)
    return _as_labels(data, p), spacing


def _as_labels(data: np.ndarray, path: Path) -> np.ndarray:
    rounded = np.rint(data)
    frac = rounded != data
    if frac.any():
        vals = np.unique(data[frac])[:5].tolist()
        raise DataError(path, f"label map holds non-integer values, e.g. {vals}")
    if data.min() < 0:
        raise DataError(path, f"label map holds negative values (min {data.min():g})")
    return rounded.astype(np.int32)


# --------------------------------------------------------------------------- 8-bit slices
def _values(arr: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a bincount for uint8: ~20x faster than np.unique)."""
    if arr.dtype == np.uint8:
        return np.flatnonzero(np.bincount(arr.ravel(), minlength=256)).astype(np.uint8)
    return np.unique(arr)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


def _png_bit_depth(path: Path) -> tuple[int, str] | None:
    """(bits per sample, colour type) from a PNG's IHDR; None for other formats."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return head[24], _PNG_COLOUR.get(head[25], f"colour type {head[25]}")


def _open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise DataError(path, missing_reason(path))
    depth = _png_bit_depth(path)
    if depth is not None and depth[0] > 8:
        # Pillow would keep only the high byte of 16-bit RGB (0..65535 -> 0..255) silently
        raise DataError(path, f"{depth[0]}-bit {depth[1]} PNG: covidlib reads 8-bit slices "
                        "(0..255); convert it to 8 bit first (rescale your intensity window to "
                        "0..255), or give the volume as NIfTI in Hounsfield units")
    try:
        im = Image.open(path)
        im.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(path, f"cannot decode image ({type(e).__name__}: {e})") from e
    return im


def _single_channel(im: Image.Image, path: Path, what: str) -> np.ndarray:
    """An (H, W) uint8 array from an 8-bit image; colour channels must agree for masks."""
    mode = im.mode
    if mode in ("L", "P") and what == "mask":
        return np.asarray(im, dtype=np.uint8)  # palette masks: the indices are the labels
    if mode == "L":
        return np.asarray(im, dtype=np.uint8)
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8)
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("LA", "RGB", "RGBA"):
        arr = np.asarray(im, dtype=np.uint8)
        chans = arr[..., :1] if mode == "LA" else arr[..., :3]
        if (chans == chans[..., :1]).all():
            return np.ascontiguousarray(chans[..., 0])
        if what == "mask":
            raise DataError(path, f"{mode} mask has colour channels that differ")
        return np.asarray(im.convert("RGB").convert("L"), dtype=np.uint8)  # ITU-R 601 luma
    raise DataError(path, f"expected an 8-bit grayscale/RGB image, got PIL mode {mode!r}")


def read_slice_image(
    path: str | Path,
    kind: Literal["image", "mask"] = "image",
    mask_scale: int = 1,
) -> np.ndarray:
    """Read one 2D PNG/JPEG slice.

    ``kind="image"``: an (H, W) float32 array of 0..255 (RGB/RGBA made grayscale: equal
    channels are taken as is, true colour by ITU-R 601 luma). ``kind="mask"``: an (H, W)
    uint8 label array, ``value // mask_scale``; every value must be a multiple of
    ``mask_scale`` (so a {0, 255} mask with ``mask_scale=255`` gives {0, 1} and a lossy
    JPEG-style mask with in-between values raises ``DataError`` naming the values).
    Palette ("P") masks give their palette indices.
    """
    p = Path(path)
    if kind not in ("image", "mask"):
        raise ValueError(f"kind must be 'image' or 'mask', got {kind!r}")
    if int(mask_scale) < 1:
        raise ValueError(f"mask_scale must be a positive integer, got {mask_scale!r}")
    im = _open_image(p)
    arr = _single_channel(im, p, kind)
    if arr.size == 0:
        raise DataError(p, f"empty image (shape {arr.shape})")
    if kind == "image":
        return arr.astype(np.float32)
    scale = int(mask_scale)
    if scale != 1:
        values = _values(arr)
        off = values[values % scale != 0]
        if off.size:
            shown = off[:10].tolist()
            more = f" and {off.size - 10} more" if off.size > 10 else ""
            raise DataError(
                p,
                f"mask values {shown}{more} are not multiples of mask_scale={scale} "
                f"(expected only {sorted({0, scale})} etc.; a lossy/soft mask?)",
            )
        arr = arr // scale
    return arr.astype(np.uint8)
