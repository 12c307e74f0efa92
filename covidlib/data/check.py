"""``covidlib data check``: every problem of a manifest and its data, reported at once.

:func:`~covidlib.data.manifest.load_manifest` stops at the first problem (it must: a half
valid manifest cannot be used). To fix a new manifest for your own data it is quicker to see
them all: :func:`check_dataset` validates each top-level key, each layout group and each split
on its own, then (when the manifest loads) looks for the folder, lists every missing file,
checks the volume tables, reads every case (collecting each case's error instead of stopping),
verifies the recorded tree digests and forms every split.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from covidlib.data import manifest as mf
from covidlib.data.errors import DataError

__all__ = ["check_dataset"]

MAX_LISTED = 20  # files / cases listed one by one before "... and N more"


def _attempt(problems: list[str], fn: Callable[[], Any]) -> Any:
    """``fn()``, or None with its DataError's reason added to ``problems``."""
    try:
        return fn()
    except DataError as e:
        problems.append(e.reason)
        return None


def _top_level(v: Any, d: dict) -> tuple[dict, list[str]]:
    """Missing and unknown top-level keys (all of them); ``d`` with access-local defaults."""
    out: list[str] = []
    if d.get("access") == "local":
        missing = [k for k in mf.LOCAL_REQUIRED if k not in d]
        out += [f"{k}: missing required key (access: local)" for k in missing]
        if not missing:
            d = mf._local_defaults(v, d)
    else:
        missing = [k for k in _REQUIRED if k not in d]
        out += [f"{k}: missing required key" for k in missing]
        if missing:
            out.append("(your own data? 'access: local' needs only "
                       f"{', '.join(mf.LOCAL_REQUIRED)})")
    allowed = set(_REQUIRED) | set(_OPTIONAL)
    out += [f"{k}: unknown key (allowed: {sorted(allowed)})" for k in d if k not in allowed]
    return d, out


def _schema_problems(path: Path) -> list[str]:
    """Each top-level key, group and split validated on its own (all problems, not the first)."""
    v = mf._V(path)
    try:
        d = yaml.load(path.read_text(encoding="utf-8"), Loader=mf._StrictLoader)
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        return [_attempt_reason(lambda: mf.load_manifest(path)) or str(e)]
    if not isinstance(d, dict):
        return [f"expected a mapping at the top level, got {type(d).__name__}"]
    d, out = _top_level(v, d)
    if d.get("name") != path.stem:
        out.append(f"name: {d.get('name')!r} must equal the file name stem {path.stem!r}")
    layout = d.get("layout") if isinstance(d.get("layout"), dict) else {}
    fmt = layout.get("format")
    checks: list[Callable[[], Any]] = [
        lambda: v.enum(d.get("access"), "access", mf.ACCESS),
        lambda: v.enum(d.get("intensity"), "intensity", mf.INTENSITIES),
        lambda: v.labelmap(d.get("label_map"), "label_map"),
        lambda: mf._parse_files(v, d, str(d.get("access"))) if "files" in d else None,
        lambda: v.enum(fmt, "layout.format", mf.FORMATS),
    ]
    for fn in checks:
        _attempt(out, fn)
    groups = layout.get("groups")
    parsed = [_attempt(out, lambda g=g, i=i: mf._parse_group(v, g, f"layout.groups[{i}]",
                                                              str(fmt)))
              for i, g in enumerate(groups if isinstance(groups, list) else [])]
    known = None
    if parsed and all(parsed):
        known = mf._known_ids(mf.Layout(str(fmt), tuple(parsed)))
    splits = d.get("splits")
    for n, s in (splits.items() if isinstance(splits, dict) else []):
        _attempt(out, lambda n=n, s=s: mf._parse_split(v, str(n), s, known))
    whole = _attempt_reason(lambda: mf.load_manifest(path))  # what the parts did not show
    if whole and not any(p.startswith(whole.split(":")[0]) for p in out):
        out.append(whole)
    return list(dict.fromkeys(out))  # each problem once, in order


def _attempt_reason(fn: Callable[[], Any]) -> str | None:
    try:
        fn()
    except DataError as e:
        return e.reason
    return None


_REQUIRED = ["name", "title", "homepage", "licence", "citation", "access", "local_dir", "files",
             "manual_instructions", "intensity", "layout", "label_map", "infection_labels",
             "splits"]
_OPTIONAL = ["aliases", "mask_scale", "organ_map", "paper_stats", "notes", "file_checksums",
             "data_kind", "derived_from"]


def _listed(items: list[str], what: str) -> list[str]:
    shown = [f"{what}: {x}" for x in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        shown.append(f"... and {len(items) - MAX_LISTED} more {what}(s)")
    return shown


def _data_problems(m: mf.Manifest, data_root: str | Path | None) -> list[str]:
    """Folder, files, volume tables, every case and every split of a loaded manifest."""
    from covidlib.data.readers import _read_ref, iter_case_refs
    from covidlib.data.splits import make_split

    try:
        folder = mf.locate(m, data_root)
    except DataError as e:  # an incomplete folder: list all it lacks
        roots = [Path(data_root)] if data_root is not None else mf.data_search_path()
        if m.access == "local" and data_root is None and m.path is not None:
            roots.append(m.path.parent)
        found = [r / m.local_dir for r in roots if (r / m.local_dir).is_dir()]
        if not found:
            return [e.reason]
        folder = found[0]
    out = _listed(mf.missing_files(m, folder), "missing file")
    if out:
        return out
    sizes: dict[str, int] = {}
    for g in m.groups:
        if g.volumes is not None:
            if _attempt(out, lambda g=g: mf.group_volumes(g, folder)) is None:
                continue
        try:
            refs = list(iter_case_refs(m, folder, g.name))
        except DataError as e:
            out.append(str(e))
            continue
        bad = []
        for ref in refs:
            try:
                for case in _read_ref(ref, m):
                    sizes[case.case_id] = case.n_slices
            except DataError as e:
                bad.append(str(e))
        out += _listed(bad, "case")
    for g in m.groups:  # the recorded tree digests: a changed or replaced file is a problem
        if g.tree_sha256:
            _attempt(out, lambda g=g: mf.verify_tree(m, folder, [g.name]))
    if out:  # splits are formed only over a dataset whose every case reads
        return out
    for name, spec in m.splits.items():
        folds = range(len(spec.folds)) if spec.folds else [None]
        for f in folds:
            try:
                make_split(sizes, spec, fold=f)
            except DataError as e:
                out.append(f"split {name!r}" + (f" fold {f}" if f is not None else "")
                           + f": {e}")
    return out


def check_dataset(manifest: str | os.PathLike, data_root: str | Path | None = None
                  ) -> list[str]:
    """Every problem of ``manifest`` (a name or a YAML path) and of its data; [] = all good.

    Schema problems are reported per key, group and split; the data are checked only once
    the manifest loads (missing files, volume tables, every case read, every split formed).
    """
    s = os.fspath(manifest)
    path = Path(s).expanduser() if s.endswith((".yaml", ".yml")) or os.sep in s else None
    if path is None:
        found = mf.find_manifest(s)
        if found is None:
            return [_attempt_reason(lambda: mf.load_manifest(s)) or f"unknown dataset {s!r}"]
        path = found
    if not path.is_file():
        return [f"{path}: manifest {mf.missing_reason(path)}"]
    try:
        m = mf.load_manifest(path)
    except DataError:
        return [f"{path}: {p}" for p in _schema_problems(path)]
    return _data_problems(m, data_root)
