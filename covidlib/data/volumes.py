"""Volumes on a fixed grid for 3-D training (P3, Rahimi et al., Sec. II "Data").

:func:`prepare_volume`: HU window to [0, 1] and resampling to a fixed grid (anti-aliased
linear for the image, nearest for the labels, via scikit-image); :func:`relabel` maps source
label values to training classes; :class:`VolumeDataset` serves whole volumes or random
patches to :func:`covidlib.engine.fit`. Re-exported by :mod:`covidlib.volume_al`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from skimage.transform import resize
from torch.utils.data import Dataset

from covidlib.data.types import Case

__all__ = ["Volume", "VolumeDataset", "prepare_volume", "relabel", "resample_image"]


@dataclass(frozen=True)
class Volume:
    """One preprocessed volume: ``image`` (1, D, H, W) float32 in [0, 1], ``label`` (D, H, W)
    int64 class map, ``spacing`` (z, y, x) mm of the grid, ``source_shape`` before resampling."""

    case_id: str
    image: torch.Tensor
    label: torch.Tensor
    spacing: tuple[float, float, float]
    source_shape: tuple[int, int, int]


def relabel(labels: np.ndarray, classes: Mapping[int, Sequence[int]], where: str = "labels"
            ) -> np.ndarray:
    """Map source label values to training classes: ``classes = {1: [6], 2: [2, 7], ...}``
    sends every value listed under ``k`` to ``k``; everything else becomes 0 (background)."""
    lab = np.asarray(labels)
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"{where}: integer labels expected, got dtype {lab.dtype}")
    out = np.zeros(lab.shape, dtype=np.int64)
    seen: set[int] = set()
    for k, values in classes.items():
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"{where}: class index {k!r} must be an integer >= 1")
        for v in values:
            if v in seen:
                raise ValueError(f"{where}: source label {v} is mapped to two classes")
            seen.add(int(v))
            out[lab == v] = k
    return out


def _source_labels(case: Case, source: str) -> np.ndarray:
    arr = {"organs": case.organs, "infection": case.mask}.get(source, "bad")
    if isinstance(arr, str):
        raise ValueError(f"prepare_volume: source={source!r} must be 'organs' or 'infection'")
    if arr is None:
        raise ValueError(
            f"case {case.case_id}: has no {source} mask "
            f"({'Organ_Mask' if source == 'organs' else 'Infection_Mask'}); this task needs it"
        )
    return arr


def _check_case(case: Case) -> np.ndarray:
    where = f"case {case.case_id}"
    if case.intensity != "hu":
        raise ValueError(f"{where}: volume AL needs HU volumes, got intensity {case.intensity!r}")
    img = np.asarray(case.image)
    if img.ndim != 3:
        raise ValueError(f"{where}: image of shape {img.shape}, expected (Z, H, W)")
    return img


def _check_grid(grid: Sequence[int]) -> tuple[int, int, int]:
    out = tuple(int(g) for g in grid)
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"prepare_volume: grid={tuple(grid)!r} must be three positive sizes")
    return out  # type: ignore[return-value]


def resample_image(case: Case, grid: Sequence[int],
                   window: tuple[float, float] = (-1000.0, 400.0)) -> torch.Tensor:
    """``(1, D, H, W)`` float32: HU clipped to ``window`` and scaled to [0, 1], resampled to
    ``grid`` linearly with Gaussian anti-aliasing (``skimage.transform.resize``)."""
    img = _check_case(case)
    grid = _check_grid(grid)
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"prepare_volume: window={window!r} needs lo < hi")
    if not np.isfinite(img).all():
        raise ValueError(f"case {case.case_id}: image holds nan or inf")
    unit = ((np.clip(img, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    out = resize(unit, grid, order=1, anti_aliasing=True, preserve_range=True)
    return torch.from_numpy(out.astype(np.float32))[None]


def prepare_volume(
    case: Case,
    grid: Sequence[int],
    *,
    source: str,
    classes: Mapping[int, Sequence[int]],
    window: tuple[float, float] = (-1000.0, 400.0),
    image: torch.Tensor | None = None,
) -> Volume:
    """HU window -> [0, 1], resample image and labels to ``grid`` (D, H, W).

    The image goes through :func:`resample_image` (pass ``image`` to reuse one already
    resampled), the labels are resampled by nearest neighbour; ``source`` picks
    ``case.organs`` or ``case.mask`` and ``classes`` maps its values to training classes
    (:func:`relabel`).
    """
    img = _check_case(case)
    grid = _check_grid(grid)
    labels = relabel(_source_labels(case, source), classes, f"case {case.case_id} {source}")
    if labels.shape != img.shape:
        raise ValueError(f"case {case.case_id}: {source} mask {labels.shape} != image {img.shape}")
    if image is None:
        image = resample_image(case, grid, window)
    elif tuple(image.shape) != (1, *grid):
        raise ValueError(f"case {case.case_id}: given image {tuple(image.shape)} is not "
                         f"(1, *grid) = {(1, *grid)}")
    label = resize(labels, grid, order=0, anti_aliasing=False, preserve_range=True)
    sp = [float(x) for x in case.spacing]
    spacing = tuple(x * n / g for x, n, g in zip(sp, img.shape, grid, strict=True))
    return Volume(case.case_id, image, torch.from_numpy(label.astype(np.int64)),
                  spacing, tuple(img.shape))  # type: ignore[arg-type]


class VolumeDataset(Dataset):
    """Dicts ``image`` (1, d, h, w), ``mask`` (d, h, w) int64, ``case_id`` for :func:`fit`.

    With ``patch`` each item is a random crop of that size (capped at the volume size),
    drawn from torch's global generator (seeded and checkpointed by :func:`fit`), and an
    epoch visits every volume ``patches_per_volume`` times.
    """

    def __init__(self, volumes: Sequence[Volume], patch: Sequence[int] | None = None,
                 patches_per_volume: int = 1) -> None:
        if not volumes:
            raise ValueError("VolumeDataset: no volumes")
        if patch is not None and (len(patch) != 3 or min(int(p) for p in patch) < 1):
            raise ValueError(f"VolumeDataset: patch={patch!r} must be three positive sizes")
        if isinstance(patches_per_volume, bool) or not isinstance(patches_per_volume, int) or (
                patches_per_volume < 1):
            raise ValueError(f"VolumeDataset: patches_per_volume={patches_per_volume!r} must be "
                             "an integer >= 1")
        if patch is None and patches_per_volume != 1:
            raise ValueError("VolumeDataset: patches_per_volume > 1 needs a patch size")
        self.volumes = list(volumes)
        self.patch = None if patch is None else tuple(int(p) for p in patch)
        self.patches_per_volume = patches_per_volume

    def __len__(self) -> int:
        return len(self.volumes) * self.patches_per_volume

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"VolumeDataset: index {i} out of range 0..{len(self) - 1}")
        v = self.volumes[i % len(self.volumes)]
        image, label = v.image, v.label
        if self.patch is not None:
            starts = [
                int(torch.randint(0, n - min(p, n) + 1, ()))
                for p, n in zip(self.patch, label.shape, strict=True)
            ]
            sl = tuple(slice(s, s + min(p, n))
                       for s, p, n in zip(starts, self.patch, label.shape, strict=True))
            image, label = image[(slice(None), *sl)], label[sl]
        return {"image": image, "mask": label, "case_id": v.case_id}
