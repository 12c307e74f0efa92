"""A disk cache of decoded slice stacks (volumes of PNG/JPEG slices, e.g. ``ma20-slices``).

Decoding 1247 x 3 PNGs costs seconds on every kernel that opens the dataset; a volume's
decoded, checked arrays are kept as one ``.npz`` per volume under
``<first data root>/.covidlib-decoded/<dataset>/`` (``$COVIDLIB_DECODED_CACHE`` moves it).
The key covers everything the arrays depend on: every file's path, size and mtime, the mask
scale and label checks, and :data:`FORMAT_VERSION`; a changed file gives a new key, so a
stale entry is never used. Writes are atomic (temp file + rename), so a killed process
leaves no half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

__all__ = ["ENV_CACHE", "FORMAT_VERSION", "cache_dir", "cached_arrays"]

ENV_CACHE = "COVIDLIB_DECODED_CACHE"
FORMAT_VERSION = 2  # bump when the readers change what they return
_warned: set[str] = set()


def cache_dir(dataset: str) -> Path | None:
    """Where ``dataset``'s decoded stacks live; None when caching is off
    (``COVIDLIB_DECODED_CACHE=off``)."""
    env = os.environ.get(ENV_CACHE, "")
    if env.lower() in ("off", "0", "none"):
        return None
    if env:
        return Path(env).expanduser() / dataset
    from covidlib.data.manifest import data_search_path

    return data_search_path()[0] / ".covidlib-decoded" / dataset


def _key(files: list[Path], settings: Mapping) -> str:
    h = hashlib.sha256(json.dumps({"v": FORMAT_VERSION, **settings}, sort_keys=True,
                                  default=str).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _pack(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Binary uint8 masks as bits (8x less to read back); other arrays as they are."""
    out = {}
    for k, a in arrays.items():
        if a.dtype == np.uint8 and k != "image" and a.size and a.max() <= 1:
            out[f"bits.{k}"] = np.packbits(a.ravel())
            out[f"shape.{k}"] = np.asarray(a.shape, dtype=np.int64)
        else:
            out[k] = a
    return out


def _unpack(z: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {k: v for k, v in z.items() if not k.startswith(("bits.", "shape."))}
    for k in z:
        if k.startswith("bits."):
            name = k[5:]
            shape = tuple(int(s) for s in z[f"shape.{name}"])
            out[name] = np.unpackbits(z[k], count=int(np.prod(shape))).reshape(shape)
    return out


def cached_arrays(
    dataset: str,
    case_id: str,
    files: list[Path],
    settings: Mapping,
    compute: Callable[[], dict[str, np.ndarray]],
    variant: str = "default",
) -> dict[str, np.ndarray]:
    """``compute()``'s arrays for this case, from the disk cache when the key matches.

    ``files``: every file the arrays are decoded from; ``settings``: everything else they
    depend on (JSON-serialisable); ``variant`` names one kind of reading of the case (e.g.
    an alt mask): a new key replaces the old entry of the same variant only. An unwritable
    cache folder only costs speed (one warning).
    """
    folder = cache_dir(dataset)
    if folder is None:
        return compute()
    stem = f"{case_id}.{variant}"
    path = folder / f"{stem}-{_key(files, settings)}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return _unpack({k: z[k] for k in z.files})
        except (OSError, ValueError, EOFError, KeyError):
            pass  # unreadable entry: decode again and overwrite it
    arrays = compute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(f"{stem}-*.npz"):  # stale keys of this case and variant
            if old != path:
                old.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **_pack(arrays))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        if str(folder) not in _warned:
            _warned.add(str(folder))
            warnings.warn(f"{folder}: cannot keep decoded slices there ({e}); set "
                          f"${ENV_CACHE} to a writable folder (or 'off')", stacklevel=2)
    return arrays
