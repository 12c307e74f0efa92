"""Masks kept in results files: a boolean 2-D mask as base64 of its packed bits.

Chapters store the predictions their figures draw inside the JSON results (P1, P2, P4), so a
figure can be redrawn from a cached result without the model; this is the one codec they use.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np

__all__ = ["decode_mask", "encode_mask"]


def encode_mask(mask: np.ndarray) -> str:
    """A boolean 2-D mask as base64 of its packed bits (row-major)."""
    return base64.b64encode(np.packbits(np.asarray(mask, dtype=bool).ravel())).decode("ascii")


def decode_mask(text: str, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`encode_mask`; a string that cannot hold ``shape`` raises ValueError."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))
    n = int(shape[0]) * int(shape[1])
    if bits.size < n or bits.size - n >= 8:
        raise ValueError(f"decode_mask: {bits.size} bits do not hold a mask of shape "
                         f"{tuple(shape)}")
    return bits[:n].reshape(tuple(int(v) for v in shape)).astype(bool)
