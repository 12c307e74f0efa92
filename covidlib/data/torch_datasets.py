"""PyTorch dataset of preprocessed 2D slices (P1/P2 pipeline: uint8, 352 x 352, ImageNet).

Every referenced slice is preprocessed once on construction (progress bar) and cached as
resized ``uint8`` gray + mask (about 0.25 MB per 352 x 352 slice, so the 3520 slices of
Ma et al. need under 1 GB); ``__getitem__`` only applies the ImageNet normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from covidlib.data.errors import DataError
from covidlib.data.oracle import IGNORE
from covidlib.data.preprocess import (
    LUNG_WINDOW,
    Method,
    check_upscale,
    imagenet_normalize,
    resize_image,
    resize_mask,
    to_uint8,
)
from covidlib.data.stats import infection_mask
from covidlib.data.types import Case

__all__ = ["SliceDataset", "scale_points"]


def scale_points(
    points: Iterable[Sequence[int]], in_shape: tuple[int, int], out_shape: tuple[int, int]
) -> list[tuple[int, int, int]]:
    """Map ``(y, x, label)`` points to a resized grid with the masks' pixel-centre rule.

    ``y' = floor((y + 0.5) * H' / H)`` (same for x), i.e. the output pixel whose centre
    is nearest to the input pixel's centre.
    """
    (h, w), (oh, ow) = in_shape, out_shape
    out = []
    for p in points:
        y, x, label = (int(v) for v in p)
        if not (0 <= y < h and 0 <= x < w):
            raise ValueError(f"point {(y, x, label)} outside a slice of shape {(h, w)}")
        yy = min(oh - 1, (2 * y + 1) * oh // (2 * h))
        xx = min(ow - 1, (2 * x + 1) * ow // (2 * w))
        out.append((yy, xx, label))
    return out


class SliceDataset(Dataset):
    """Slices ``refs`` of ``cases`` as dicts ready for a 2D segmentation network.

    Items: ``image`` (3, S, S) float32 ImageNet-normalised; ``mask`` (S, S) int64, binary
    infection (labels in ``infection_labels`` -> 1, others 0; default: each case's
    ``meta["infection_labels"]``, else any non-zero label) or, with ``multiclass=True``, the
    labels themselves; ``case_id``; ``z``; and, when ``points`` is given, ``points`` (S, S)
    int64 point map with ``IGNORE`` (255) on unlabelled pixels. Cases without a mask give
    no ``mask``.

    ``points``: mapping ``(case_id, z)`` -> points ``(y, x, label)`` in the *original* slice
    pixel grid (e.g. :func:`covidlib.data.oracle.point_annotation`), or a uint8 point map of
    the original slice shape; they are moved to the resized grid by :func:`scale_points`
    (when two land on one pixel the larger label wins, so an infection point is never lost).
    ``transform``: optional callable applied to each item dict (augmentation).
    """

    def __init__(
        self,
        cases: Sequence[Case] | Mapping[str, Case],
        refs: Iterable[tuple[str, int]],
        size: int = 352,
        window: tuple[float, float] = LUNG_WINDOW,
        method: Method = "window",
        points: Mapping[tuple[str, int], Any] | None = None,
        transform: Callable[[dict], dict] | None = None,
        infection_labels: Iterable[int] | None = None,
        multiclass: bool = False,
        progress: bool = True,
    ):
        by_id = dict(cases) if isinstance(cases, Mapping) else {c.case_id: c for c in cases}
        self.refs = [(str(c), int(z)) for c, z in refs]
        self.size = int(size)
        self.transform = transform
        self.multiclass = multiclass
        labels = None if infection_labels is None else [int(v) for v in infection_labels]
        for cid, z in self.refs:
            if cid not in by_id:
                raise DataError(cid, "slice reference to a case that is not loaded")
            if not 0 <= z < by_id[cid].n_slices:
                raise DataError(cid, f"slice z={z} outside 0..{by_id[cid].n_slices - 1}")
        if points is not None:
            unknown = set(points) - set(self.refs)
            if unknown:
                raise ValueError(f"points given for slices not in refs: {sorted(unknown)[:5]}")
        self._images: list[np.ndarray] = []
        self._masks: list[np.ndarray | None] = []
        self._points: list[np.ndarray | None] = []
        u8_cache: dict[str, np.ndarray] = {}
        order = sorted(range(len(self.refs)), key=lambda i: self.refs[i][0])
        slots: list[tuple] = [()] * len(self.refs)
        current = None
        for i in tqdm(order, desc="preprocessing slices", unit="slice", disable=not progress):
            cid, z = self.refs[i]
            case = by_id[cid]
            if current != cid:  # one case's uint8 volume at a time (minmax is per volume)
                u8_cache.clear()
                u8_cache[cid] = to_uint8(case, window=window, method=method)
                current = cid
            check_upscale(u8_cache[cid].shape, size, f"case {cid!r} slice {z}")
            img = np.clip(np.rint(resize_image(u8_cache[cid][z], size)), 0, 255).astype(np.uint8)
            mask = None
            if case.mask is not None:
                m2 = case.mask[z]
                if not multiclass:
                    inf = labels if labels is not None else case.meta.get("infection_labels")
                    m2 = infection_mask(m2, inf).astype(np.uint8)
                mask = resize_mask(m2, size)
            pts = None
            if points is not None and (cid, z) in points:
                pts = self._render_points(points[(cid, z)], case.image.shape[1:])
            slots[i] = (img, mask, pts)
        for img, mask, pts in slots:
            self._images.append(img)
            self._masks.append(mask)
            self._points.append(pts)

    def _render_points(self, given: Any, shape: tuple[int, int]) -> np.ndarray:
        if isinstance(given, np.ndarray) and given.shape == tuple(shape):  # a point-label map
            ys, xs = np.nonzero(given != IGNORE)
            given = [(y, x, given[y, x]) for y, x in zip(ys, xs, strict=True)]
        elif isinstance(given, np.ndarray) and (given.ndim != 2 or given.shape[1] != 3):
            raise ValueError(
                f"point map of shape {given.shape} does not match the slice shape {tuple(shape)}"
            )
        out = np.full((self.size, self.size), IGNORE, dtype=np.uint8)
        for y, x, label in scale_points(given, tuple(shape), (self.size, self.size)):
            if not 0 <= label < IGNORE:
                raise ValueError(f"point label {label} out of 0..{IGNORE - 1}")
            if out[y, x] == IGNORE or label > out[y, x]:
                out[y, x] = label
        return out

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        cid, z = self.refs[i]
        item: dict[str, Any] = {
            "image": torch.from_numpy(imagenet_normalize(self._images[i])),
            "case_id": cid,
            "z": z,
        }
        if self._masks[i] is not None:
            item["mask"] = torch.from_numpy(self._masks[i].astype(np.int64))
        if self._points[i] is not None:
            item["points"] = torch.from_numpy(self._points[i].astype(np.int64))
        if self.transform is not None:
            item = self.transform(item)
        return item
