"""Dataset manifests (``data_manifests/<name>.yaml``): strict loading, lookup and checksums.

A manifest describes one dataset of the papers (P1 Sec 4.1, P2 Sec 4.1.1, P3 Sec III,
P4 Sec 3): where it comes from (URLs, sha256, licence, citation), how its files are laid
out on disk (``layout.groups``: path templates with a ``{case}`` placeholder), what the mask
values mean (``label_map``) and the train/val/test splits exactly as the papers define
them. :func:`load_manifest` validates a YAML file strictly (unknown keys, missing keys,
bad enum values, duplicate keys, splits naming unknown cases, overlapping parts, fractions
not summing to 1) and raises :class:`DataError` naming the YAML file and the key path.

Where the data live: :func:`data_search_path` (env ``COVIDLIB_DATA_PATH``) lists the data
roots; a dataset sits in ``<root>/<local_dir>``; :func:`locate` finds it or says where it
looked and how to get the files. :func:`tree_digest` / :func:`verify_tree` check a whole
distribution layout against the recorded ``tree_sha256`` of each group.

Slices grouped into volumes (``image-slices`` groups with ``volumes:``, see
:class:`VolumeSpec`): a CSV (``slice,volume``) or a file-name pattern assigns each slice to a
volume; each volume is read as ONE case, a ``(Z, H, W)`` stack in slice order, and splits name
the volume ids (``ma20-slices`` is built this way; so can any folder of your own slices).

``data_kind`` (``real`` / ``phantom`` / ``real 2-D derivative``) says what the data are;
when absent it is inferred (:attr:`Manifest.data_kind`). ``access: local`` is your own
folder: only ``name``, ``layout`` and ``label_map`` are required (see ``_local_defaults``),
and the folder may sit beside the manifest. ``$COVIDLIB_MANIFESTS`` ADDS folders of
manifests before the shipped ones (:func:`manifest_search_path`).

Case ids from ``case_glob``: the glob holds exactly one ``*`` and the case id is the text the
``*`` matched, e.g. ``"Train/*_ct.nii.gz"`` matches ``Train/volume-covid19-A-0003_ct.nii.gz``
with case ``volume-covid19-A-0003`` (for ``"dir/*.nii.gz"`` this is the file stem).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from covidlib.data import manifest_schema
from covidlib.data.errors import DataError, missing_reason
from covidlib.data.manifest_digest import (
    file_sha256,
    read_checksum_file,
    sha256_listing,
    tree_digest,
    verify_files,
)
from covidlib.data.manifest_layout import (
    group_files,
    group_volumes,
    missing_files,
    natural_key,
    read_volume_csv,
    resolve_cases,
)
from covidlib.data.manifest_parse import (  # noqa: F401  (private names: data/check.py)
    _V,
    LOCAL_REQUIRED,
    _known_ids,
    _local_defaults,
    _parse,
    _parse_files,
    _parse_group,
    _parse_split,
    _StrictLoader,
)
from covidlib.data.manifest_schema import *  # noqa: F403  (the records, re-exported below)
from covidlib.data.manifest_schema import ENV_DATA_PATH, ENV_MANIFESTS, Manifest

__all__ = [
    *manifest_schema.__all__,
    "data_search_path",
    "file_sha256",
    "find_manifest",
    "group_files",
    "group_volumes",
    "how_to_get",
    "list_datasets",
    "load_manifest",
    "locate",
    "manifest_dir",
    "manifest_search_path",
    "missing_files",
    "natural_key",
    "read_checksum_file",
    "read_volume_csv",
    "resolve_cases",
    "scan_manifests",
    "sha256_listing",
    "tree_digest",
    "verify_files",
    "verify_tree",
]


# --------------------------------------------------------------------------- locations
def _shipped_dir() -> Path:
    import covidlib

    return Path(covidlib.__file__).resolve().parents[1] / "data_manifests"


def manifest_search_path() -> list[Path]:
    """Folders searched for ``<name>.yaml``, in order: the entries of ``$COVIDLIB_MANIFESTS``
    (``os.pathsep``-separated; each must exist), then the shipped ``data_manifests/``.

    User manifests are ADDED to the shipped ones; a user manifest with a shipped name takes
    its place (the first folder on the path wins, as with ``PATH``).
    """
    out = []
    for entry in os.environ.get(ENV_MANIFESTS, "").split(os.pathsep):
        if entry.strip():
            p = Path(entry).expanduser()
            if not p.is_dir():
                raise DataError(p, f"${ENV_MANIFESTS} names a folder that does not exist")
            out.append(p)
    shipped = _shipped_dir()
    if shipped.is_dir():
        out.append(shipped)
    if not out:
        raise DataError(
            shipped,
            "manifest folder not found (a non-editable install does not ship it); "
            f"set ${ENV_MANIFESTS} to a copy of the repository's data_manifests/ folder",
        )
    return out


def manifest_dir() -> Path:
    """The folder of the shipped manifests (``data_manifests/`` next to the package), or the
    first ``$COVIDLIB_MANIFESTS`` folder where none is shipped (see
    :func:`manifest_search_path`, which every lookup uses)."""
    shipped = _shipped_dir()
    return shipped if shipped.is_dir() else manifest_search_path()[0]


def find_manifest(name: str) -> Path | None:
    """The first ``<name>.yaml`` on :func:`manifest_search_path` (None: none)."""
    for folder in manifest_search_path():
        p = folder / f"{name}.yaml"
        if p.is_file() or p.is_symlink():
            return p
    return None


def list_datasets() -> list[str]:
    """Names of every manifest on :func:`manifest_search_path` (user and shipped), sorted."""
    return sorted({p.stem for d in manifest_search_path() for p in d.glob("*.yaml")})


def data_search_path() -> list[Path]:
    """Data roots from ``$COVIDLIB_DATA_PATH`` (``os.pathsep``-separated); the first entry is
    where downloads and generated data go. Default: ``pooch.os_cache("covidlib")``."""
    env = os.environ.get(ENV_DATA_PATH, "")
    roots = [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    if roots:
        return roots
    import pooch

    return [Path(pooch.os_cache("covidlib"))]


def scan_manifests() -> list[tuple[str, Manifest | DataError]]:
    """Every manifest on the search path, loaded: ``(name, Manifest)`` or ``(name, DataError)``
    for one that does not load, so one bad file never hides the others."""
    out: list[tuple[str, Manifest | DataError]] = []
    for name in list_datasets():
        try:
            out.append((name, load_manifest(name)))
        except DataError as e:
            out.append((name, e))
    return out


def _as_manifest(m: Manifest | str | os.PathLike) -> Manifest:
    return m if isinstance(m, Manifest) else load_manifest(m)


def how_to_get(manifest: Manifest, folder: Path | None = None) -> str:
    """A user-facing paragraph: URLs, manual instructions and the target folder."""
    urls = ", ".join(f.url for f in manifest.files if f.url) or manifest.homepage
    where = f" Target folder: {folder}." if folder is not None else ""
    names = ", ".join(f.name for f in manifest.files)
    files = f" Files: {names}." if names else ""
    return (
        f"Sources: {urls} (homepage {manifest.homepage}).{files}{where} "
        f"How to place the files by hand: {manifest.manual_instructions.strip()}"
    )


def locate(manifest: Manifest | str | os.PathLike, data_root: str | Path | None = None) -> Path:
    """The dataset folder: ``data_root/<local_dir>`` if given, else the first folder on
    :func:`data_search_path` that holds the complete layout. Raises :class:`DataError` naming
    every place looked, the URLs and the manual instructions."""
    m = _as_manifest(manifest)
    roots = [Path(data_root).expanduser()] if data_root is not None else data_search_path()
    if m.access == "local" and data_root is None and m.path is not None:
        roots = [*roots, m.path.parent]  # your own data may sit beside its manifest
    looked = []
    for root in roots:
        folder = root / m.local_dir
        if not folder.is_dir():
            looked.append(f"{folder} (no such folder)")
            continue
        miss = missing_files(m, folder, limit=4)
        if not miss:
            return folder
        looked.append(f"{folder} (incomplete: missing {', '.join(miss[:3])}...)")
    hint = ""
    if m.access == "download":
        hint = f" Or download it with covidlib.data.fetch.fetch({m.name!r})."
    elif m.access == "generated":
        hint = f" Generate it with covidlib.data.fetch.fetch({m.name!r})."
    target = roots[0] / m.local_dir
    raise DataError(
        m.name,
        f"dataset not found; looked in: {'; '.join(looked)}.{hint} "
        f"(${ENV_DATA_PATH} sets the search path.) {how_to_get(m, target)}",
    )


def verify_tree(
    manifest: Manifest | str | os.PathLike,
    folder: str | Path | None = None,
    groups: Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, str]:
    """Verify the ``tree_sha256`` of the given groups (default: all groups that have one).

    With the manifest's ``file_checksums`` listing, every file is compared first, so the
    error names the first missing or differing file; then the group digest is compared.
    Returns {group: digest}.
    """
    m = _as_manifest(manifest)
    folder = Path(folder) if folder is not None else locate(m)
    chosen = [m.group(n) for n in groups] if groups else [g for g in m.groups if g.tree_sha256]
    per_file = read_checksum_file(m.file_checksums) if m.file_checksums else {}
    out = {}
    for g in chosen:
        if not g.tree_sha256:
            raise DataError(m.path or m.name, f"group {g.name!r} has no tree_sha256")
        paths = group_files(g, folder)
        if per_file:
            unlisted = [p for p in paths if p not in per_file]
            if unlisted:
                raise DataError(
                    m.file_checksums, f"no checksum for {unlisted[0]} (group {g.name!r})"
                )
            verify_files(folder, {p: per_file[p] for p in paths}, progress)
        digest = tree_digest(folder, paths, progress)
        if digest != g.tree_sha256:
            raise DataError(
                folder,
                f"group {g.name!r}: tree sha256 {digest} differs from the manifest's "
                f"{g.tree_sha256} ({len(paths)} files)",
            )
        out[g.name] = digest
    return out


_CACHE: dict[tuple[str, int, int], Manifest] = {}


def load_manifest(name_or_path: str | os.PathLike) -> Manifest:
    """Load and strictly validate a manifest by dataset name (``"ma-20"``) or YAML path."""
    s = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or s.endswith((".yaml", ".yml")) or os.sep in s:
        path = Path(s).expanduser()
        if not path.is_file():
            raise DataError(path, f"manifest {missing_reason(path)}")
    else:
        found = find_manifest(s)
        if found is None:
            raise DataError(s, f"unknown dataset; known datasets: {list_datasets()} (folders "
                            f"searched: {[str(d) for d in manifest_search_path()]}; "
                            f"${ENV_MANIFESTS} adds folders)")
        path = found
        if not path.is_file():
            raise DataError(path, f"manifest {missing_reason(path)}")
    path = path.resolve()
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key in _CACHE:
        return _CACHE[key]
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise DataError(path, f"invalid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                        f"{e.start}); save the manifest as UTF-8") from None
    m = _parse(data, path)
    _CACHE[key] = m
    return m
