"""Slice preprocessing of P1/P2 (Sec. 4.1 of P1, Sec. 4.2 of P2).

"Images were first converted from Hounsfield units to unsigned 8-bit integers, then resized
to 352 x 352 pixels and normalized using ImageNet statistics." Two HU -> uint8 conversions:

* ``method="window"`` (default): a fixed lung window ``window=(lo, hi)`` in HU (lower and
  upper bound, *not* level/width); ``u8 = floor((clip(x, lo, hi) - lo) * 255 / (hi - lo))``,
  so ``lo -> 0``, ``hi -> 255`` and, for (-1000, 400), ``-300 -> floor(127.5) = 127``.
* ``method="minmax"``: the authors' code (covid19_v3): per *volume*
  ``u8 = floor((x - min) * 255 / (max - min))`` with the volume's min and max.

The floor matches the authors' ``astype('uint8')`` truncation. Images are resized bilinearly
with antialiasing (``torch.nn.functional.interpolate(..., antialias=True)``, close to the PIL
resize of torchvision used by the authors); masks with ``nearest-exact`` (pixel-centre
nearest neighbour as PIL's NEAREST: output pixel ``i`` takes input ``floor((i + 0.5) * in / out)``),
so no new label values appear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from covidlib.data.errors import DataError
from covidlib.data.types import Case

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LUNG_WINDOW",
    "MAX_UPSCALE",
    "check_upscale",
    "hu_to_uint8",
    "imagenet_normalize",
    "preprocess_slice",
    "resize_image",
    "resize_mask",
    "to_uint8",
]

LUNG_WINDOW: tuple[float, float] = (-1000.0, 400.0)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
Method = Literal["window", "minmax"]


def _size2(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int | np.integer) else size
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(h), int(w)


def hu_to_uint8(
    hu: np.ndarray,
    window: tuple[float, float] = LUNG_WINDOW,
    method: Method = "window",
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Hounsfield units -> uint8 (same shape) by lung window or by the authors' min-max.

    ``window`` is ``(lo, hi)`` in HU. For ``minmax`` the range is the array's own
    ``(min, max)`` unless ``value_range`` gives the whole volume's (use it when converting
    one slice of a volume); values outside ``value_range`` are clipped.
    """
    x = np.asarray(hu, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("hu_to_uint8: input contains NaN or inf")
    if method == "window":
        lo, hi = float(window[0]), float(window[1])
    elif method == "minmax":
        vr = (x.min(), x.max()) if value_range is None else value_range
        lo, hi = float(vr[0]), float(vr[1])
    else:
        raise ValueError(f"method must be 'window' or 'minmax', got {method!r}")
    if not hi > lo:
        raise ValueError(f"hu_to_uint8 ({method}): need hi > lo, got lo={lo:g}, hi={hi:g}")
    scaled = (np.clip(x, lo, hi) - lo) * 255.0 / (hi - lo)
    return np.floor(scaled).astype(np.uint8)


def to_uint8(
    case: Case, window: tuple[float, float] = LUNG_WINDOW, method: Method = "window"
) -> np.ndarray:
    """The case's image as (Z, H, W) uint8: 8-bit sources pass through, HU is converted.

    For ``method="minmax"`` the min and max are those of the whole case volume (authors' code).
    """
    if case.intensity == "uint8":
        img = np.asarray(case.image)
        if img.dtype == np.uint8:  # nothing to check or convert (and no float copy)
            return img
        if img.size and (img.min() < 0 or img.max() > 255 or (np.rint(img) != img).any()):
            raise ValueError(
                f"case {case.case_id}: intensity 'uint8' but values are not integers in 0..255"
            )
        return img.astype(np.uint8)
    if case.intensity == "hu":
        return hu_to_uint8(case.image, window=window, method=method)
    raise ValueError(f"case {case.case_id}: unknown intensity {case.intensity!r}")


MAX_UPSCALE = 8.0  # a slice side may grow at most 8x to reach the model grid


def check_upscale(shape: tuple[int, ...], size: int | tuple[int, int], where: str = "slice"
                  ) -> None:
    """Reject a slice far smaller than the model grid (``size``): upscaling a side more than
    :data:`MAX_UPSCALE` times invents detail (a 1 x 1 infection mask would become a whole
    grid of infection). Raises ``DataError`` naming ``where``, both sizes and the fix."""
    h, w = _size2(size)
    sh, sw = int(shape[-2]), int(shape[-1])
    if sh < 1 or sw < 1 or h / sh > MAX_UPSCALE or w / sw > MAX_UPSCALE:
        raise DataError(where, f"slice of {sh} x {sw} pixels is too small for the model grid "
                        f"{h} x {w} (at most {MAX_UPSCALE:g}x upscaling per side, i.e. at least "
                        f"{int(np.ceil(h / MAX_UPSCALE))} x {int(np.ceil(w / MAX_UPSCALE))} "
                        "pixels); check the file, or use a profile with a smaller grid")


def resize_image(img2d: np.ndarray, size: int | tuple[int, int] = 352) -> np.ndarray:
    """Bilinear (antialiased) resize of a 2D image to ``size`` (int or (H, W)); float32 out."""
    h, w = _size2(size)
    t = torch.from_numpy(np.ascontiguousarray(img2d, dtype=np.float32))[None, None]
    if tuple(t.shape[-2:]) == (h, w):
        return t[0, 0].numpy().copy()
    out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].numpy()


def resize_mask(mask2d: np.ndarray, size: int | tuple[int, int] = 352) -> np.ndarray:
    """Nearest-neighbour (pixel-centre) resize of a 2D label map; dtype and labels preserved."""
    h, w = _size2(size)
    m = np.asarray(mask2d)
    if m.ndim != 2:
        raise ValueError(f"resize_mask expects a 2D array, got shape {m.shape}")
    if np.abs(m).max(initial=0) >= 2**24:
        raise ValueError("resize_mask: label values must be below 2**24 (exact in float32)")
    t = torch.from_numpy(m.astype(np.float32))[None, None]
    out = F.interpolate(t, size=(h, w), mode="nearest-exact")
    return out[0, 0].numpy().astype(m.dtype)


def imagenet_normalize(gray: np.ndarray) -> np.ndarray:
    """(H, W) gray in 0..255 -> (3, H, W) float32: ``(gray / 255 - mean_c) / std_c``.

    The gray slice is replicated to the three channels of the ImageNet-pretrained backbone
    (the authors' ``convert('RGB')``, ``ToTensor`` and ``Normalize``).
    """
    g = np.asarray(gray, dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    return ((g[None] - mean) / std).astype(np.float32)


def preprocess_slice(
    image2d: np.ndarray,
    mask2d: np.ndarray | None,
    intensity: Literal["hu", "uint8"],
    size: int | tuple[int, int] = 352,
    window: tuple[float, float] = LUNG_WINDOW,
    method: Method = "window",
    value_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One slice through the whole pipeline: uint8, resize to ``size``, ImageNet statistics.

    Returns ``(image (3, S, S) float32, mask (S, S) or None)``. The resized image is rounded
    to uint8 before normalisation, as with the authors' PIL pipeline. For HU input with
    ``method="minmax"`` pass the volume's ``value_range``, else the slice's own range is used.
    """
    check_upscale(np.shape(image2d), size, "image")
    if intensity == "uint8":
        u8 = to_uint8(Case("slice", np.asarray(image2d), intensity="uint8"))
    elif intensity == "hu":
        u8 = hu_to_uint8(image2d, window=window, method=method, value_range=value_range)
    else:
        raise ValueError(f"unknown intensity {intensity!r}")
    resized = np.clip(np.rint(resize_image(u8, size)), 0, 255).astype(np.uint8)
    image = imagenet_normalize(resized)
    mask = None if mask2d is None else resize_mask(mask2d, size)
    return image, mask


__all__ += ["hu_to_unit", "resample_volume", "resize_probabilities"]


def hu_to_unit(image: np.ndarray, window: Sequence[float] = LUNG_WINDOW) -> np.ndarray:
    """Hounsfield units clipped to ``window`` = (lo, hi) and scaled to float32 [0, 1] (the
    intensity normalisation of P3 and P4 before their 3D networks)."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"hu_to_unit: window {tuple(window)!r} must be (lo, hi) with hi > lo")
    return ((np.clip(image, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def resample_volume(array: np.ndarray, spacing: Sequence[float], target: Sequence[float],
                    kind: str = "image") -> np.ndarray:
    """Resample a ``(Z, Y, X)`` array from ``spacing`` to ``target`` mm (P4 Sec. 4 uses
    trilinear interpolation): images are Gaussian pre-filtered where downsampled (sigma =
    (factor - 1) / 2, as scikit-image's anti-aliasing), masks interpolated and cut at 0.5."""
    from scipy import ndimage

    sp = [float(v) for v in spacing]
    if len(sp) != 3 or not all(math.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"resample_volume: spacing {spacing!r} is unknown or invalid; P4 "
                         "resamples to a common spacing, which needs the voxel size")
    if kind not in ("image", "mask"):
        raise ValueError(f"resample_volume: kind={kind!r} must be 'image' or 'mask'")
    factors = [t / s for s, t in zip(sp, target, strict=True)]
    shape = [max(1, round(n / f)) for n, f in zip(array.shape, factors, strict=True)]
    x = array.astype(np.float32)
    if kind == "image":
        sigma = [max(0.0, (f - 1) / 2) for f in factors]
        if any(sigma):
            x = ndimage.gaussian_filter(x, sigma)
    t = torch.from_numpy(np.ascontiguousarray(x))[None, None]
    out = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()
    if kind == "image":
        return out.astype(np.float32)
    return (out > 0.5).astype(np.uint8)


def resize_probabilities(prob: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A probability map of a 2-D slice or 3-D volume interpolated (bilinear / trilinear)
    back to ``shape``, the original grid the scores are computed on (P4 Sec. 4)."""
    if prob.ndim not in (2, 3) or len(shape) != prob.ndim:
        raise ValueError(f"resize_probabilities: a {prob.ndim}-D map to shape {tuple(shape)}; "
                         "expected a 2-D or 3-D map and a shape of the same length")
    t = torch.from_numpy(np.ascontiguousarray(prob))[None, None]
    mode = "trilinear" if prob.ndim == 3 else "bilinear"
    return F.interpolate(t, size=tuple(shape), mode=mode, align_corners=False)[0, 0].numpy()
