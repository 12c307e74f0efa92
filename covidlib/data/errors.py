"""The one exception type of the data layer."""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """Bad or missing input data.

    Always names the offending file (or value) and the reason, e.g.
    ``DataError("/x/tr_mask.nii.gz", "shape (100, 512, 512) differs from image (99, 512, 512)")``.
    """

    def __init__(self, where: str | Path, reason: str):
        self.where = str(where)
        self.reason = reason
        super().__init__(f"{self.where}: {reason}")
