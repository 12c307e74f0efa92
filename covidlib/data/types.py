"""In-memory records shared by every reader, the phantom and the oracle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Intensity = Literal["hu", "uint8"]


@dataclass
class Case:
    """One CT case: a volume (Z, H, W) or a single slice stored as Z == 1.

    ``image`` is float32 in Hounsfield units when ``intensity == "hu"`` (NIfTI sources,
    the phantom) or 0..255 when ``intensity == "uint8"`` (JPEG/PNG slice sets: float32 for
    single slices, uint8 for volumes of slices grouped by a manifest's ``volumes``, e.g.
    ``ma20-slices``).
    ``mask`` holds integer infection labels (0 = background; the meaning of the other
    values is the dataset's label map), ``lung`` a binary lung mask and ``organs`` an
    integer organ map (phantom / LCTSC), each with the image's shape or ``None``.
    ``spacing`` is (z, y, x) in millimetres, ``nan`` where unknown (8-bit slices).
    """

    case_id: str
    image: np.ndarray
    mask: np.ndarray | None = None
    lung: np.ndarray | None = None
    organs: np.ndarray | None = None
    spacing: tuple[float, float, float] = (float("nan"),) * 3
    intensity: Intensity = "hu"
    site: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[0])
