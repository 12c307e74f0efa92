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

import hashlib
import os
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from covidlib.data.errors import DataError, missing_reason

__all__ = [
    "ACCESS",
    "DATA_KINDS",
    "FORMATS",
    "SPLIT_METHODS",
    "AltMask",
    "FileSpec",
    "Fold",
    "Group",
    "Layout",
    "Manifest",
    "PaperStats",
    "Split",
    "VolumeSpec",
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

ACCESS = ("download", "manual", "generated", "local")
DATA_KINDS = ("real", "phantom", "real 2-D derivative")
INTENSITIES = ("hu", "uint8")
FORMATS = ("nifti-volumes", "nifti-stack", "image-slices", "dicom-rtstruct")
UNPACK = ("zip", "tar", "none")
LABEL_KINDS = ("expert", "noisy-teacher", "none")
SPLIT_METHODS = ("by-case", "by-slice-fraction", "k-fold")
PAPERS = ("P1", "P2", "P3", "P4")
PARTS = ("train", "val", "test")
TEMPLATE_KEYS = ("image", "mask", "lung", "organs", "teacher")

ENV_MANIFESTS = "COVIDLIB_MANIFESTS"
ENV_DATA_PATH = "COVIDLIB_DATA_PATH"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class FileSpec:
    """One file that :func:`covidlib.data.fetch.fetch` downloads into the dataset folder."""

    name: str
    url: str | None
    sha256: str | None  # None: unknown, trust on first use (recorded in .checksums.json)
    unpack: str = "none"  # zip | tar | none
    extract_to: str = "."  # folder (relative to the dataset folder) the archive unpacks into
    note: str | None = None


@dataclass(frozen=True)
class AltMask:
    """An optional alternative mask of a group (e.g. the multi-class masks of COVID-SemiSeg)."""

    path: str
    label_map: dict[int, str]
    mask_scale: int = 1


@dataclass(frozen=True)
class VolumeSpec:
    """How the slices of an ``image-slices`` group form volumes (one Case stack per volume).

    Either ``csv`` (a file in the dataset folder with one row per slice: ``slice_column`` =
    the slice id that fills ``{case}`` in the templates, ``volume_column`` = its volume) or
    ``pattern`` (a regular expression on the slice id with a named group ``volume`` and an
    optional named group ``z``). ``case_id`` formats the volume value into the case id
    (``"coronacases_{volume:03d}"``; digits are passed as int). Slices keep the CSV's row
    order (``pattern``: ``z`` order, else natural order of the slice ids). ``ids`` lists the
    expected volume case ids (checked on reading; splits are validated against them).
    ``derived``: the grouping was inferred, not published with the data.
    """

    csv: str | None = None
    pattern: str | None = None
    slice_column: str = "slice"
    volume_column: str = "volume"
    case_id: str = "{volume}"
    ids: tuple[str, ...] | None = None
    derived: bool = False
    note: str | None = None


@dataclass(frozen=True)
class Group:
    """A set of cases sharing path templates (relative to the dataset folder)."""

    name: str
    image: str
    mask: str | None = None
    lung: str | None = None
    organs: str | None = None
    teacher: str | None = None  # noisy-teacher predictions (never ground truth)
    cases: tuple[str, ...] | None = None
    case_glob: str | None = None
    labels: str = "expert"  # expert | noisy-teacher | none
    site: str | None = None
    intensity: str | None = None  # overrides the manifest's intensity for this group
    alt_masks: dict[str, AltMask] = field(default_factory=dict)
    extras: dict[str, str] = field(default_factory=dict)  # files that belong to the group
    tree_sha256: str | None = None
    n_cases: int | None = None
    note: str | None = None
    volumes: VolumeSpec | None = None  # slices grouped into volumes (image-slices only)

    def templates(self) -> dict[str, str]:
        """Every path template of the group: image/mask/lung/organs/teacher, alt masks, extras."""
        out = {k: getattr(self, k) for k in TEMPLATE_KEYS if getattr(self, k)}
        out.update({f"alt_masks.{k}": v.path for k, v in self.alt_masks.items()})
        out.update({f"extras.{k}": v for k, v in self.extras.items()})
        return out


@dataclass(frozen=True)
class Layout:
    format: str
    groups: tuple[Group, ...]


@dataclass(frozen=True)
class Fold:
    val: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    """One paper split. ``by-case``: id lists; ``by-slice-fraction``: fractions per case;
    ``k-fold``: fixed ``train`` ids plus ``folds`` (or ``k`` + ``seed`` when ids are globbed)."""

    name: str
    method: str
    train: tuple[str, ...] | float | None = None
    val: tuple[str, ...] | float | None = None
    test: tuple[str, ...] | float | None = None
    cases: tuple[str, ...] | None = None
    k: int | None = None
    seed: int | None = None
    folds: tuple[Fold, ...] | None = None
    note: str | None = None


@dataclass(frozen=True)
class PaperStats:
    """A row of Table 1 of P1 / P2."""

    name: str
    cases: int
    slices: int
    slices_with_infection: int
    infected_regions: int
    note: str | None = None


@dataclass(frozen=True, eq=False)  # identity equality/hash: usable as a cache key
class Manifest:
    """A validated ``data_manifests/<name>.yaml`` (see the module docstring)."""

    name: str
    title: str
    aliases: dict[str, str]
    homepage: str
    licence: str
    citation: str
    access: str
    local_dir: str
    files: tuple[FileSpec, ...]
    manual_instructions: str
    intensity: str
    layout: Layout
    label_map: dict[int, str]
    infection_labels: tuple[int, ...]
    mask_scale: int
    splits: dict[str, Split]
    paper_stats: dict[str, PaperStats]
    organ_map: dict[int, str] = field(default_factory=dict)
    notes: str | None = None
    file_checksums: Path | None = None  # sha256sum-format listing of the distribution
    path: Path | None = None  # the YAML file this was loaded from
    declared_data_kind: str | None = None  # the YAML's data_kind (None: inferred)
    derived_from: dict[str, str] = field(default_factory=dict)  # dataset: <manifest>, ...

    @property
    def data_kind(self) -> str:
        """``real``, ``phantom`` or ``real 2-D derivative``: the YAML's ``data_kind``, else
        inferred (``access: generated`` -> ``phantom``, anything else -> ``real``)."""
        if self.declared_data_kind:
            return self.declared_data_kind
        return "phantom" if self.access == "generated" else "real"

    @property
    def groups(self) -> tuple[Group, ...]:
        return self.layout.groups

    @property
    def format(self) -> str:
        return self.layout.format

    @property
    def urls(self) -> list[str]:
        return [f.url for f in self.files if f.url] or [self.homepage]

    def group(self, name: str) -> Group:
        for g in self.layout.groups:
            if g.name == name:
                return g
        known = [g.name for g in self.layout.groups]
        raise DataError(self.path or self.name, f"unknown group {name!r}; groups: {known}")

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(
                self.path or self.name, f"unknown split {name!r}; splits: {sorted(self.splits)}"
            )
        return self.splits[name]

    def case_ids(self) -> list[str]:
        """All explicitly listed case ids, in group order (globbed groups contribute none;
        a group with ``volumes`` contributes its volume ``ids``)."""
        out: list[str] = []
        for g in self.layout.groups:
            out.extend(g.volumes.ids or () if g.volumes is not None else g.cases or ())
        return out


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


def natural_key(s: str) -> list:
    """Sort key that orders embedded numbers numerically (``radiopaedia_4`` < ``_10``)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s) if t]


def resolve_cases(group: Group, folder: str | Path) -> list[str]:
    """Case ids of ``group``: its explicit list, or the ``case_glob`` matches in ``folder``
    (the text matched by ``*``), naturally sorted; for a group whose slices come from a
    ``volumes.csv`` (no list, no glob) the CSV's slice ids in row order.

    For a group with ``volumes`` these are the SLICE ids that fill ``{case}`` in the
    templates; :func:`group_volumes` turns them into volume case ids."""
    if group.cases is not None:
        return list(group.cases)
    if group.case_glob is None:
        assert group.volumes is not None and group.volumes.csv is not None
        return [sl for sl, _ in read_volume_csv(group, folder)]
    pre, post = group.case_glob.split("*")
    folder = Path(folder)
    found = []
    for p in folder.glob(group.case_glob):
        rel = p.relative_to(folder).as_posix()
        if rel.startswith(pre) and rel.endswith(post) and len(rel) > len(pre) + len(post):
            found.append(rel[len(pre) : len(rel) - len(post)])
    return sorted(set(found), key=natural_key)


def read_volume_csv(group: Group, folder: str | Path) -> list[tuple[str, str]]:
    """Rows ``(slice id, volume value)`` of a group's ``volumes.csv``, in file order.

    Raises :class:`DataError` naming the CSV for a missing file, a missing column, an empty
    value or a slice listed twice.
    """
    import csv

    spec = group.volumes
    assert spec is not None and spec.csv is not None
    path = Path(folder) / spec.csv
    if not path.is_file():
        raise DataError(path, f"volume table of group {group.name!r} not found")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            header = list(rows[0]) if rows else []
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(path, f"not a readable UTF-8 CSV ({type(e).__name__}: {e})") from None
    for col in (spec.slice_column, spec.volume_column):
        if rows and col not in header:
            raise DataError(path, f"no column {col!r} (columns: {header}); see volumes of "
                            f"group {group.name!r} (slice_column / volume_column)")
    if not rows:
        raise DataError(path, "volume table is empty (expected a header and one row per slice)")
    out, seen = [], set()
    for i, r in enumerate(rows, 2):
        sl = (r.get(spec.slice_column) or "").strip()
        vol = (r.get(spec.volume_column) or "").strip()
        if not sl or not vol:
            raise DataError(path, f"line {i}: empty slice or volume value")
        if sl in seen:
            raise DataError(path, f"line {i}: slice {sl!r} listed twice")
        seen.add(sl)
        out.append((sl, vol))
    return out


def _volume_case_id(spec: VolumeSpec, value: str) -> str:
    return spec.case_id.format(volume=int(value) if value.isdigit() else value)


def group_volumes(group: Group, folder: str | Path) -> dict[str, list[str]]:
    """Volume case id -> its slice ids (in slice order) for a group with ``volumes``.

    Every slice of the group (see :func:`resolve_cases`) must belong to exactly one volume
    and every CSV row must name a slice of the group; listed ``ids`` must be exactly the
    volumes found. Volumes come in order of first appearance (CSV) or natural order (pattern).
    """
    spec = group.volumes
    if spec is None:
        raise DataError(group.name, "group has no 'volumes' (its slices are separate cases)")
    slices = resolve_cases(group, folder)
    where: str | Path = Path(folder) / spec.csv if spec.csv else f"group {group.name!r}"
    out: dict[str, list[str]] = {}
    if spec.csv:
        rows = read_volume_csv(group, folder)
        listed = {sl for sl, _ in rows}
        stray = [sl for sl in slices if sl not in listed]
        if stray:
            raise DataError(where, f"{len(stray)} slice(s) of group {group.name!r} have no row, "
                            f"e.g. {stray[:5]}")
        present = set(slices)
        extra = [sl for sl, _ in rows if sl not in present]
        if extra:
            raise DataError(where, f"{len(extra)} row(s) name slices without files in group "
                            f"{group.name!r}, e.g. {extra[:5]}")
        for sl, vol in rows:
            out.setdefault(_volume_case_id(spec, vol), []).append(sl)
    else:
        rx = re.compile(str(spec.pattern))
        keyed: dict[str, list[tuple[Any, str]]] = {}
        for sl in slices:
            m = rx.fullmatch(sl)
            if m is None:
                raise DataError(sl, f"slice id does not match volumes.pattern {spec.pattern!r} "
                                f"of group {group.name!r}")
            z = m.groupdict().get("z")
            key = natural_key(z) if z is not None else natural_key(sl)
            keyed.setdefault(_volume_case_id(spec, m.group("volume")), []).append((key, sl))
        for vid in sorted(keyed, key=natural_key):
            out[vid] = [sl for _, sl in sorted(keyed[vid])]
    if spec.ids is not None and set(spec.ids) != set(out):
        raise DataError(where, f"volumes found {sorted(out, key=natural_key)[:12]} differ from "
                        f"the manifest's volumes.ids {list(spec.ids)[:12]} (group {group.name!r})")
    return out


def group_files(
    group: Group, folder: str | Path | None = None, *, required_only: bool = False
) -> list[str]:
    """Relative paths of every file of ``group`` (all templates x cases, sorted).

    ``required_only``: only image/mask/lung/organs/teacher (not alt masks or extras).
    ``folder`` is needed only for globbed groups.
    """
    if group.cases is None and folder is None:
        raise DataError(group.name, "group uses case_glob; pass the dataset folder")
    cases = resolve_cases(group, folder if folder is not None else ".")
    tpls = group.templates()
    if required_only:
        tpls = {k: v for k, v in tpls.items() if k in TEMPLATE_KEYS}
    out = {t.format(case=c) for t in tpls.values() for c in cases}
    if group.volumes is not None and group.volumes.csv:
        out.add(group.volumes.csv)
    return sorted(out)


def missing_files(manifest: Manifest, folder: str | Path, limit: int | None = None) -> list[str]:
    """Required files of ``manifest`` absent from ``folder`` (relative paths; [] = complete).

    Every image/mask/lung/organs/teacher file of every case; a globbed group must match at
    least one case (exactly ``n_cases`` when given). ``dicom-rtstruct`` templates name
    folders, which must exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return ["."]
    out: list[str] = []
    for g in manifest.layout.groups:
        if g.cases is None:
            found = resolve_cases(g, folder)
            if not found or (g.n_cases is not None and len(found) != g.n_cases):
                out.append(f"{g.case_glob} (matches {len(found)} of {g.n_cases or '>= 1'} cases)")
                continue
        for rel in group_files(g, folder, required_only=True):
            p = folder / rel
            ok = p.is_dir() if manifest.layout.format == "dicom-rtstruct" else p.is_file()
            if not ok:
                out.append(rel)
                if limit is not None and len(out) >= limit:
                    return out
    return out


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


# --------------------------------------------------------------------------- checksums
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


# --------------------------------------------------------------------------- YAML loading
class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe loader that rejects duplicate mapping keys."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    out = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _V:
    """Validation context: the YAML file and a key path, for error messages."""

    def __init__(self, src: Path):
        self.src = src

    def fail(self, key: str, reason: str) -> DataError:
        return DataError(self.src, f"{key}: {reason}" if key else reason)

    def mapping(self, d: Any, key: str, required: Iterable[str], optional: Iterable[str]) -> dict:
        if not isinstance(d, dict):
            raise self.fail(key, f"expected a mapping, got {type(d).__name__}")
        req, opt = list(required), set(optional)
        missing = [r for r in req if r not in d]
        hint = (" (your own data? 'access: local' needs only "
                f"{', '.join(LOCAL_REQUIRED)})") if key == "" else ""
        if len(missing) == 1:
            raise self.fail(_join(key, missing[0]), "missing required key" + hint)
        if missing:  # every missing key at once
            raise self.fail(key, f"missing required keys {missing}{hint}")
        unknown = [str(k) for k in d if k not in opt and k not in req]
        if unknown:
            allowed = sorted([*req, *opt])
            where = _join(key, unknown[0]) if len(unknown) == 1 else key
            what = "unknown key" if len(unknown) == 1 else f"unknown keys {unknown}"
            raise self.fail(where, f"{what} (allowed: {allowed})")
        return d

    def str_(self, v: Any, key: str, allow_none: bool = False) -> str | None:
        if v is None and allow_none:
            return None
        if not isinstance(v, str) or not v.strip():
            raise self.fail(key, f"expected a non-empty string, got {v!r}")
        return v

    def enum(self, v: Any, key: str, values: Sequence[str]) -> str:
        if v not in values:
            raise self.fail(key, f"{v!r} is not one of {list(values)}")
        return v

    def int_(self, v: Any, key: str, lo: int | None = None) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(key, f"expected an integer, got {v!r}")
        if lo is not None and v < lo:
            raise self.fail(key, f"must be >= {lo}, got {v}")
        return v

    def hex64(self, v: Any, key: str) -> str | None:
        if v is None:
            return None
        if not isinstance(v, str) or not _HEX64.match(v):
            raise self.fail(key, f"expected null or 64 lowercase hex digits, got {v!r}")
        return v

    def ids(self, v: Any, key: str) -> tuple[str, ...]:
        if not isinstance(v, list):
            raise self.fail(key, f"expected a list of case ids, got {type(v).__name__}")
        out = []
        for i, c in enumerate(v):
            if isinstance(c, int | float) and not isinstance(c, bool):
                raise self.fail(f"{key}[{i}]", f"case id {c!r} is a YAML number, not a string: "
                                f"quote every case id, e.g. [\"{c}\"] (unquoted, YAML reads 01 "
                                "as 1 and 010 as the octal 8)")
            if not isinstance(c, str) or c == "":
                raise self.fail(f"{key}[{i}]", f"case id must be a string, got {c!r}")
            out.append(str(c))
        dup = _first_dup(out)
        if dup is not None:
            raise self.fail(key, f"case id {dup!r} listed twice")
        return tuple(out)

    def relpath(self, v: Any, key: str, template: bool) -> str:
        s = self.str_(v, key)
        assert s is not None
        if s.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", s) or ".." in Path(s).parts:
            raise self.fail(key, f"must be a relative path inside the dataset folder: {s!r}")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(s) if f is not None]
        except ValueError as e:
            raise self.fail(key, f"bad template {s!r}: {e}") from None
        bad = [f for f in fields if f != "case"]
        if bad or (fields and not template):
            raise self.fail(key, f"only the placeholder {{case}} is allowed here: {s!r}")
        return s

    def labelmap(self, v: Any, key: str, need_zero: bool = True) -> dict[int, str]:
        if not isinstance(v, dict) or not v:
            raise self.fail(key, "expected a non-empty mapping {int: name}")
        out = {}
        for k, name in v.items():
            kk = self.int_(k, f"{key}.{k}", lo=0)
            out[kk] = self.str_(name, f"{key}.{k}")
        if need_zero and 0 not in out:
            raise self.fail(key, "must map 0 (background)")
        return out


def _join(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else sub


def _first_dup(items: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for x in items:
        if x in seen:
            return x
        seen.add(x)
    return None


def _parse_files(v: _V, d: dict, access: str) -> tuple[FileSpec, ...]:
    raw = d["files"]
    if not isinstance(raw, list):
        raise v.fail("files", "expected a list (may be empty)")
    out = []
    for i, f in enumerate(raw):
        k = f"files[{i}]"
        v.mapping(f, k, ["name", "url", "sha256"], ["unpack", "extract_to", "note"])
        name = v.str_(f["name"], f"{k}.name")
        assert name is not None
        if "/" in name or "\\" in name or name.startswith("."):
            raise v.fail(f"{k}.name", f"must be a plain file name, got {name!r}")
        url = v.str_(f["url"], f"{k}.url", allow_none=True)
        if url is None and access == "download":
            raise v.fail(f"{k}.url", "required (not null) when access is 'download'")
        unpack = v.enum(f.get("unpack", "none"), f"{k}.unpack", UNPACK)
        extract_to = v.relpath(f.get("extract_to", "."), f"{k}.extract_to", template=False)
        if "extract_to" in f and unpack == "none":
            raise v.fail(f"{k}.extract_to", "only meaningful with unpack: zip or tar")
        out.append(
            FileSpec(
                name=name,
                url=url,
                sha256=v.hex64(f["sha256"], f"{k}.sha256"),
                unpack=unpack,
                extract_to=extract_to,
                note=v.str_(f.get("note"), f"{k}.note", allow_none=True),
            )
        )
    dup = _first_dup(f.name for f in out)
    if dup:
        raise v.fail("files", f"file name {dup!r} listed twice")
    if access == "download" and not out:
        raise v.fail("files", "access 'download' needs at least one file")
    if access in ("generated", "local") and out:
        raise v.fail("files", f"access {access!r} downloads nothing; use files: []")
    return tuple(out)


def _parse_group(v: _V, g: Any, k: str, fmt: str) -> Group:
    v.mapping(
        g,
        k,
        ["name", "image"],
        [
            "mask", "lung", "organs", "teacher", "cases", "case_glob", "labels", "site",
            "intensity", "alt_masks", "extras", "tree_sha256", "n_cases", "note", "volumes",
        ],
    )  # fmt: skip
    name = v.str_(g["name"], f"{k}.name")
    assert name is not None
    needs_case = fmt != "nifti-stack"
    tpl = {}
    for key in TEMPLATE_KEYS:
        if g.get(key) is not None:
            tpl[key] = v.relpath(g[key], f"{k}.{key}", template=True)
            if needs_case and "{case}" not in tpl[key]:
                raise v.fail(f"{k}.{key}", f"format {fmt!r} needs {{case}} in the template")
    has_cases, has_glob = "cases" in g, "case_glob" in g
    volumes = _parse_volumes(v, g["volumes"], f"{k}.volumes", fmt) if "volumes" in g else None
    from_csv = volumes is not None and volumes.csv is not None
    if (has_cases and has_glob) or (not from_csv and has_cases == has_glob):
        raise v.fail(k, "give exactly one of 'cases' (explicit list) or 'case_glob'"
                     + (" (or neither: slices from volumes.csv)" if volumes else ""))
    cases = glob = None
    if has_cases:
        cases = v.ids(g["cases"], f"{k}.cases")
        if not cases:
            raise v.fail(f"{k}.cases", "empty case list")
    elif has_glob:
        glob = v.relpath(g["case_glob"], f"{k}.case_glob", template=False)
        if glob.count("*") != 1 or any(c in glob for c in "?[]"):
            raise v.fail(f"{k}.case_glob", f"needs exactly one '*' and no ?/[ ]: {glob!r}")
        if fmt == "nifti-stack":
            raise v.fail(f"{k}.case_glob", "nifti-stack groups list their stacks explicitly")
    labels = v.enum(g.get("labels", "expert"), f"{k}.labels", LABEL_KINDS)
    if tpl.get("teacher") and labels != "noisy-teacher":
        raise v.fail(f"{k}.teacher", "a teacher mask needs labels: noisy-teacher")
    if labels == "noisy-teacher" and "mask" in tpl:
        raise v.fail(f"{k}.mask", "noisy-teacher groups put the predictions under 'teacher'")
    alt = {}
    if "alt_masks" in g:
        if not isinstance(g["alt_masks"], dict):
            raise v.fail(f"{k}.alt_masks", "expected a mapping name -> {path, label_map}")
        for an, a in g["alt_masks"].items():
            ak = f"{k}.alt_masks.{an}"
            v.mapping(a, ak, ["path", "label_map"], ["mask_scale"])
            alt[str(an)] = AltMask(
                path=v.relpath(a["path"], f"{ak}.path", template=True),
                label_map=v.labelmap(a["label_map"], f"{ak}.label_map"),
                mask_scale=v.int_(a.get("mask_scale", 1), f"{ak}.mask_scale", lo=1),
            )
    extras = {}
    if "extras" in g:
        if not isinstance(g["extras"], dict):
            raise v.fail(f"{k}.extras", "expected a mapping name -> path template")
        for en, e in g["extras"].items():
            extras[str(en)] = v.relpath(e, f"{k}.extras.{en}", template=True)
    n_cases = None
    if "n_cases" in g:
        n_cases = v.int_(g["n_cases"], f"{k}.n_cases", lo=1)
        if cases is not None and n_cases != len(cases):
            raise v.fail(f"{k}.n_cases", f"{n_cases} but {len(cases)} cases are listed")
    return Group(
        name=name,
        cases=cases,
        case_glob=glob,
        labels=labels,
        site=v.str_(g.get("site"), f"{k}.site", allow_none=True),
        intensity=(
            v.enum(g["intensity"], f"{k}.intensity", INTENSITIES) if "intensity" in g else None
        ),
        alt_masks=alt,
        extras=extras,
        tree_sha256=v.hex64(g.get("tree_sha256"), f"{k}.tree_sha256"),
        n_cases=n_cases,
        note=v.str_(g.get("note"), f"{k}.note", allow_none=True),
        volumes=volumes,
        **tpl,
    )


def _parse_volumes(v: _V, d: Any, k: str, fmt: str) -> VolumeSpec:
    """``volumes:`` of an image-slices group (see :class:`VolumeSpec`)."""
    v.mapping(d, k, [], ["csv", "pattern", "slice_column", "volume_column", "case_id", "ids",
                         "derived", "note"])
    if fmt != "image-slices":
        raise v.fail(k, f"volumes group slices into volumes; format {fmt!r} has volumes already")
    if ("csv" in d) == ("pattern" in d):
        raise v.fail(k, "give exactly one of 'csv' (slice,volume table) or 'pattern' (regex)")
    pattern = v.str_(d.get("pattern"), f"{k}.pattern", allow_none=True)
    if pattern is not None:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise v.fail(f"{k}.pattern", f"not a regular expression: {e}") from None
        if "volume" not in rx.groupindex:
            raise v.fail(f"{k}.pattern", "needs a named group (?P<volume>...)")
    case_id = v.str_(d.get("case_id", "{volume}"), f"{k}.case_id") or "{volume}"
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(case_id) if f is not None]
    except ValueError as e:
        raise v.fail(f"{k}.case_id", f"bad template {case_id!r}: {e}") from None
    if fields != ["volume"]:
        raise v.fail(f"{k}.case_id", f"needs exactly one placeholder {{volume}}: {case_id!r}")
    derived = d.get("derived", False)
    if not isinstance(derived, bool):
        raise v.fail(f"{k}.derived", f"expected true or false, got {derived!r}")
    return VolumeSpec(
        csv=v.relpath(d["csv"], f"{k}.csv", template=False) if "csv" in d else None,
        pattern=pattern,
        slice_column=v.str_(d.get("slice_column", "slice"), f"{k}.slice_column") or "slice",
        volume_column=v.str_(d.get("volume_column", "volume"), f"{k}.volume_column") or "volume",
        case_id=case_id,
        ids=v.ids(d["ids"], f"{k}.ids") if "ids" in d else None,
        derived=derived,
        note=v.str_(d.get("note"), f"{k}.note", allow_none=True),
    )


def _parse_layout(v: _V, d: dict) -> Layout:
    lay = v.mapping(d["layout"], "layout", ["format", "groups"], [])
    fmt = v.enum(lay["format"], "layout.format", FORMATS)
    if not isinstance(lay["groups"], list) or not lay["groups"]:
        raise v.fail("layout.groups", "expected a non-empty list of groups")
    groups = tuple(
        _parse_group(v, g, f"layout.groups[{i}]", fmt) for i, g in enumerate(lay["groups"])
    )
    dup = _first_dup(g.name for g in groups)
    if dup:
        raise v.fail("layout.groups", f"group name {dup!r} used twice")
    owner: dict[str, str] = {}
    for g in groups:
        for c in g.cases or ():
            if c in owner:
                raise v.fail(
                    f"layout.groups.{g.name}.cases", f"case {c!r} is also in group {owner[c]!r}"
                )
            owner[c] = g.name
    return Layout(format=fmt, groups=groups)


def _known_ids(layout: Layout) -> set[str] | None:
    """Case ids splits may name: listed cases, or a volume group's ``ids`` (None: unknown)."""
    known: set[str] = set()
    for g in layout.groups:
        ids = g.volumes.ids if g.volumes is not None else g.cases
        if ids is None:
            return None
        known.update(ids)
    return known


def _check_known(v: _V, ids: Sequence[str], key: str, known: set[str] | None) -> None:
    if known is None:
        return
    for i, c in enumerate(ids):
        if c not in known:
            raise v.fail(f"{key}[{i}]", f"unknown case {c!r} (not in any layout group)")


def _check_disjoint(v: _V, parts: Mapping[str, Sequence[str]], key: str) -> None:
    owner: dict[str, str] = {}
    for part, ids in parts.items():
        for c in ids:
            if c in owner:
                raise v.fail(f"{key}.{part}", f"case {c!r} is also in '{owner[c]}' (overlap)")
            owner[c] = part


def _parse_split(v: _V, name: str, s: Any, known: set[str] | None) -> Split:
    k = f"splits.{name}"
    if not isinstance(s, dict) or "method" not in s:
        raise v.fail(_join(k, "method"), "missing required key")
    method = v.enum(s["method"], f"{k}.method", SPLIT_METHODS)
    note = None
    if method == "by-case":
        v.mapping(s, k, ["method", *PARTS], ["note"])
        parts = {p: v.ids(s[p], f"{k}.{p}") for p in PARTS}
        for p, ids in parts.items():
            _check_known(v, ids, f"{k}.{p}", known)
        _check_disjoint(v, parts, k)
        if not parts["train"] or not parts["test"]:
            raise v.fail(k, "train and test must not be empty")
        note = v.str_(s.get("note"), f"{k}.note", allow_none=True)
        return Split(name, method, parts["train"], parts["val"], parts["test"], note=note)
    if method == "by-slice-fraction":
        v.mapping(s, k, ["method", *PARTS], ["cases", "note"])
        fr = {}
        for p in PARTS:
            x = s[p]
            if isinstance(x, bool) or not isinstance(x, int | float) or not 0 <= x <= 1:
                raise v.fail(f"{k}.{p}", f"expected a fraction in [0, 1], got {x!r}")
            fr[p] = float(x)
        total = sum(Fraction(str(x)) for x in fr.values())
        if total != 1:
            raise v.fail(k, f"fractions train+val+test sum to {float(total):g}, not 1")
        cases = None
        if "cases" in s:
            cases = v.ids(s["cases"], f"{k}.cases")
            _check_known(v, cases, f"{k}.cases", known)
        note = v.str_(s.get("note"), f"{k}.note", allow_none=True)
        return Split(name, method, fr["train"], fr["val"], fr["test"], cases=cases, note=note)
    # k-fold (P4 Sec 4): fixed train ids + k folds of (val, test); test sets partition the pool
    v.mapping(s, k, ["method", "k"], ["seed", "train", "folds", "note"])
    kk = v.int_(s["k"], f"{k}.k", lo=2)
    seed = v.int_(s["seed"], f"{k}.seed") if "seed" in s else None
    train = v.ids(s.get("train", []), f"{k}.train")
    _check_known(v, train, f"{k}.train", known)
    folds = None
    if "folds" in s:
        if not isinstance(s["folds"], list) or len(s["folds"]) != kk:
            raise v.fail(f"{k}.folds", f"expected a list of k={kk} folds")
        fl = []
        pool: set[str] | None = None
        tested: dict[str, int] = {}
        for i, f in enumerate(s["folds"]):
            fk = f"{k}.folds[{i}]"
            v.mapping(f, fk, ["val", "test"], [])
            parts = {"train": train, "val": v.ids(f["val"], f"{fk}.val")}
            parts["test"] = v.ids(f["test"], f"{fk}.test")
            for p in ("val", "test"):
                _check_known(v, parts[p], f"{fk}.{p}", known)
            _check_disjoint(v, parts, fk)
            these = set(parts["val"]) | set(parts["test"])
            if pool is not None and these != pool:
                raise v.fail(fk, "val + test must cover the same cases in every fold")
            pool = these
            for c in parts["test"]:
                if c in tested:
                    raise v.fail(f"{fk}.test", f"case {c!r} is also tested in fold {tested[c]}")
                tested[c] = i
            fl.append(Fold(parts["val"], parts["test"]))
        assert pool is not None
        if set(tested) != pool:
            left = sorted(pool - set(tested), key=natural_key)
            raise v.fail(f"{k}.folds", f"cases never tested: {left[:5]}")
        folds = tuple(fl)
    note = v.str_(s.get("note"), f"{k}.note", allow_none=True)
    return Split(name, method, train=train, k=kk, seed=seed, folds=folds, note=note)


LOCAL_REQUIRED = ("name", "access", "layout", "label_map")


def _local_defaults(v: _V, d: dict) -> dict:
    """``access: local`` (your own folder): only name, layout and label_map are needed; the
    provenance keys default to "not stated", ``local_dir`` to the name, ``intensity`` to
    uint8 for image slices (else hu), ``infection_labels`` to every non-zero label and
    ``splits`` to none. Every missing required key is named at once."""
    missing = [k for k in LOCAL_REQUIRED if k not in d]
    if missing:
        raise v.fail("", f"missing required key(s) {missing} (access: local needs only "
                     f"{list(LOCAL_REQUIRED)})")
    name = str(d["name"])
    fmt = d["layout"].get("format") if isinstance(d["layout"], dict) else None
    labels = d["label_map"] if isinstance(d["label_map"], dict) else {}
    defaults = {
        "title": name, "homepage": "not stated (local data)",
        "licence": "not stated (local data)", "citation": "not stated (local data)",
        "local_dir": name, "files": [],
        "manual_instructions": f"Local data: the folder {d.get('local_dir', name)}/ in a data "
                               "root ($COVIDLIB_DATA_PATH) or next to this manifest.",
        "intensity": "uint8" if fmt == "image-slices" else "hu",
        "infection_labels": [k for k in labels if k != 0], "splits": {},
    }  # fmt: skip
    return {**defaults, **d}


def _parse(d: Any, src: Path) -> Manifest:
    v = _V(src)
    if isinstance(d, dict) and d.get("access") == "local":
        d = _local_defaults(v, d)
    required = [
        "name", "title", "homepage", "licence", "citation", "access", "local_dir", "files",
        "manual_instructions", "intensity", "layout", "label_map", "infection_labels", "splits",
    ]  # fmt: skip
    optional = ["aliases", "mask_scale", "organ_map", "paper_stats", "notes", "file_checksums",
                "data_kind", "derived_from"]
    v.mapping(d, "", required, optional)
    name = v.str_(d["name"], "name")
    if name != src.stem:
        raise v.fail("name", f"{name!r} must equal the file name stem {src.stem!r}")
    for key in ("title", "homepage", "licence", "citation", "manual_instructions"):
        v.str_(d[key], key)
    access = v.enum(d["access"], "access", ACCESS)
    local_dir = v.str_(d["local_dir"], "local_dir")
    assert local_dir is not None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", local_dir):
        raise v.fail("local_dir", f"must be a plain folder name, got {local_dir!r}")
    aliases = d.get("aliases") or {}
    if not isinstance(aliases, dict):
        raise v.fail("aliases", "expected a mapping paper -> name")
    for p, a in aliases.items():
        v.enum(p, f"aliases.{p}", PAPERS)
        v.str_(a, f"aliases.{p}")
    files = _parse_files(v, d, access)
    intensity = v.enum(d["intensity"], "intensity", INTENSITIES)
    layout = _parse_layout(v, d)
    label_map = v.labelmap(d["label_map"], "label_map")
    organ_map = v.labelmap(d["organ_map"], "organ_map", need_zero=False) if "organ_map" in d else {}
    inf = d["infection_labels"]
    if not isinstance(inf, list):
        raise v.fail("infection_labels", "expected a list of label values")
    for i, x in enumerate(inf):
        v.int_(x, f"infection_labels[{i}]", lo=1)
        if x not in label_map:
            raise v.fail(f"infection_labels[{i}]", f"{x} is not a key of label_map")
    mask_scale = v.int_(d.get("mask_scale", 1), "mask_scale", lo=1)
    known = _known_ids(layout)
    if not isinstance(d["splits"], dict):
        raise v.fail("splits", "expected a mapping name -> split (may be empty: {})")
    splits = {str(n): _parse_split(v, str(n), s, known) for n, s in d["splits"].items()}
    stats = {}
    if "paper_stats" in d:
        if not isinstance(d["paper_stats"], dict):
            raise v.fail("paper_stats", "expected a mapping paper -> Table 1 row")
        for p, row in d["paper_stats"].items():
            k = f"paper_stats.{p}"
            v.enum(p, k, PAPERS)
            keys = ["name", "cases", "slices", "slices_with_infection", "infected_regions"]
            v.mapping(row, k, keys, ["note"])
            nums = {x: v.int_(row[x], f"{k}.{x}", lo=0) for x in keys[1:]}
            if nums["slices_with_infection"] > nums["slices"]:
                raise v.fail(f"{k}.slices_with_infection", "exceeds slices")
            stats[p] = PaperStats(
                name=v.str_(row["name"], f"{k}.name"),  # type: ignore[arg-type]
                note=v.str_(row.get("note"), f"{k}.note", allow_none=True),
                **nums,
            )
    checks = None
    if "file_checksums" in d:
        rel = v.relpath(d["file_checksums"], "file_checksums", template=False)
        checks = src.parent / rel
        if not checks.is_file():
            raise v.fail("file_checksums", f"listing {checks} not found")
    data_kind = v.enum(d["data_kind"], "data_kind", DATA_KINDS) if "data_kind" in d else None
    derived: dict[str, str] = {}
    if "derived_from" in d:
        v.mapping(d["derived_from"], "derived_from", ["dataset"],
                  ["group", "kept", "intensity", "source", "note"])
        derived = {str(a): str(v.str_(b, f"derived_from.{a}")) for a, b in
                   d["derived_from"].items()}
    return Manifest(
        declared_data_kind=data_kind,
        derived_from=derived,
        name=name,  # type: ignore[arg-type]
        title=d["title"],
        aliases={str(k): str(a) for k, a in aliases.items()},
        homepage=d["homepage"],
        licence=d["licence"],
        citation=d["citation"],
        access=access,
        local_dir=local_dir,
        files=files,
        manual_instructions=d["manual_instructions"],
        intensity=intensity,
        layout=layout,
        label_map=label_map,
        organ_map=organ_map,
        infection_labels=tuple(inf),
        mask_scale=mask_scale,
        splits=splits,
        paper_stats=stats,
        notes=v.str_(d.get("notes"), "notes", allow_none=True),
        file_checksums=checks,
        path=src,
    )


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
