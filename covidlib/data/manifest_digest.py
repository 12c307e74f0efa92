"""Checksums of dataset files: sha256 of files, ``sha256sum`` listings and tree digests.

:func:`tree_digest` is the digest recorded as a group's ``tree_sha256``;
:func:`covidlib.data.manifest.verify_tree` checks a whole layout against it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from covidlib.data.errors import DataError, missing_reason


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of one file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_listing(hashes: Mapping[str, str]) -> str:
    """``sha256sum``-format listing (``<hex>  <relative path>``), sorted by path."""
    return "".join(f"{hashes[p]}  {p}\n" for p in sorted(hashes))


def _hash_files(folder: Path, paths: Iterable[str], progress: bool = False) -> dict[str, str]:
    paths = sorted(set(paths))
    it: Iterable[str] = paths
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(paths, desc=f"sha256 {folder.name}", unit="file")
    out = {}
    for rel in it:
        p = folder / rel
        if not p.is_file():
            raise DataError(p, f"missing file (listed in the manifest layout): "
                            f"{missing_reason(p)}")
        out[rel] = file_sha256(p)
    return out


def tree_digest(folder: str | Path, paths: Iterable[str], progress: bool = False) -> str:
    """sha256 over the sorted (relative path, sha256 of file) list of ``paths`` in ``folder``.

    Exactly ``sha256(sha256_listing(...))``, i.e. in a shell (GNU coreutils, C locale):
    ``sha256sum FILES | sort -k2 | sha256sum``. A missing file raises :class:`DataError`.
    """
    hashes = _hash_files(Path(folder), paths, progress)
    return hashlib.sha256(sha256_listing(hashes).encode("utf-8")).hexdigest()


def read_checksum_file(path: str | Path) -> dict[str, str]:
    """Parse a ``sha256sum``-format listing into {relative path: hex}."""
    out: dict[str, str] = {}
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
        if not m:
            raise DataError(path, f"line {i}: not '<sha256>  <path>': {line[:80]!r}")
        out[m.group(2)] = m.group(1)
    return out


def verify_files(folder: str | Path, expected: Mapping[str, str], progress: bool = False) -> None:
    """Check each file's sha256; :class:`DataError` names the first missing/differing file
    (in sorted path order) with the expected and actual hash."""
    folder = Path(folder)
    it: Iterable[str] = sorted(expected)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(list(it), desc=f"verify {folder.name}", unit="file")
    for rel in it:
        p = folder / rel
        if not p.is_file():
            raise DataError(p, f"missing file (expected sha256 {expected[rel]})")
        actual = file_sha256(p)
        if actual != expected[rel]:
            raise DataError(p, f"sha256 {actual} differs from the expected {expected[rel]}")
