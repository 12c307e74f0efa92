"""Manifest layouts on disk: case ids, slices grouped into volumes, the files of a group.

Case ids come from a group's explicit list, its ``case_glob`` or its ``volumes.csv``;
:func:`group_volumes` groups slices into volume cases (CSV or file-name pattern) and
:func:`missing_files` lists what a dataset folder lacks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from covidlib.data.errors import DataError
from covidlib.data.manifest_schema import TEMPLATE_KEYS, Group, Manifest, VolumeSpec


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
