"""Manifest records: the typed, validated content of one ``data_manifests/<name>.yaml``.

The dataclasses :func:`covidlib.data.manifest.load_manifest` builds (see that module's
docstring for the YAML format) and the allowed values of the manifest's enum keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from covidlib.data.errors import DataError

__all__ = [
    "ACCESS",
    "DATA_KINDS",
    "ENV_DATA_PATH",
    "ENV_MANIFESTS",
    "FORMATS",
    "INTENSITIES",
    "LABEL_KINDS",
    "PAPERS",
    "PARTS",
    "SPLIT_METHODS",
    "TEMPLATE_KEYS",
    "UNPACK",
    "AltMask",
    "FileSpec",
    "Fold",
    "Group",
    "Layout",
    "Manifest",
    "PaperStats",
    "Split",
    "VolumeSpec",
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
