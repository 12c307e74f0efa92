"""Strict parsing of a manifest's YAML into :class:`~covidlib.data.manifest_schema.Manifest`.

Unknown keys, missing keys, bad enum values, duplicate keys, splits naming unknown cases,
overlapping parts and fractions not summing to 1 raise :class:`DataError` naming the YAML
file and the key path (see :mod:`covidlib.data.manifest`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from covidlib.data.errors import DataError
from covidlib.data.manifest_layout import natural_key
from covidlib.data.manifest_schema import (
    _HEX64,
    ACCESS,
    DATA_KINDS,
    FORMATS,
    INTENSITIES,
    LABEL_KINDS,
    PAPERS,
    PARTS,
    SPLIT_METHODS,
    TEMPLATE_KEYS,
    UNPACK,
    AltMask,
    FileSpec,
    Fold,
    Group,
    Layout,
    Manifest,
    PaperStats,
    Split,
    VolumeSpec,
)


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
