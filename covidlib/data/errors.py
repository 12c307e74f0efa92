"""The one exception type of the data layer."""

from __future__ import annotations

import errno
import os
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


def missing_reason(path: str | Path, what: str = "file") -> str:
    """Why ``path`` cannot be read as a ``what``: a symlink loop, a dangling symlink, a folder
    where a file was expected, or simply not there (used in every "not found" message)."""
    p = Path(path)
    if p.is_symlink():
        try:
            p.resolve(strict=True)
        except RuntimeError:
            return f"symlink loop (the link {p} leads back to itself)"
        except OSError as e:
            if e.errno == errno.ELOOP:
                return f"symlink loop (the link {p} leads back to itself)"
            return f"broken symlink (points to {os.readlink(p)}, which does not exist)"
    if what == "file" and p.is_dir():
        return "is a folder, expected a file"
    return f"{what} not found"
