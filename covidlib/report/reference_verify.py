"""Verifying the published reference run: ``make verify-reference`` (issue 14, item 4).

A sample of the committed runs (``reference/<kind>/<hash>.json``) is recomputed from scratch
by today's code in an empty results folder, with the torch thread count the reference used
(its record's ``runtime.torch_threads``), and every committed number is compared with the
recomputed one (absolute tolerance :data:`TOLERANCE`: CPU training at a fixed thread count is
deterministic). A committed number the code no longer produces fails: a changed value, a
key that disappeared, a config the code can no longer build or now builds differently.

Recomputed and committed runs are matched on their config with the data digest set aside
(:data:`SET_ASIDE`: ``data.files`` is a digest of file names, sizes and modification times,
which differ on a fresh clone); the set-aside values are reported, not compared. Wall times
and the device (:data:`VOLATILE`) are never compared. A run on real data that is absent here
(``../shared/data``) is skipped with a message saying so. ``provenance.json``'s sha256 of
every published file is checked too (a hand-edited number fails).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covidlib.report.reference import PROVENANCE, ReferenceRunError, load_provenance

__all__ = ["SAMPLES", "TOLERANCE", "Check", "check_files", "compare", "match_configs",
           "recompute", "report", "select", "verify"]

TOLERANCE = 1e-5
VOLATILE: dict[str, frozenset[str]] = {
    "p2_run": frozenset({"seconds", "train_seconds", "device"}),
    "p1_al": frozenset({"timing", "device"}),  # P1's "seconds" are labelling costs: compared
    "p1_full": frozenset({"timing", "device"}),
}
"""Keys (at any depth of a result) that hold wall times or the device: never compared."""
SET_ASIDE: tuple[tuple[str, ...], ...] = (("data", "files"),)
"""Config fields that identify a copy of the data, not its content: reported, not matched."""
SAMPLES: dict[str, dict[str, Any]] = {
    # .ci/run: the cheapest committed P2 training and the cheapest P1 active-learning run
    "ci": {"kinds": ("p2_run", "p1_al"), "budget_s": 0.0},
    # make verify-reference: one of every kind, then the cheapest others within the budget
    "full": {"kinds": ("p2_run", "p1_al", "p1_full"), "budget_s": 600.0},
}
"""Which committed runs a sample recomputes: the cheapest of each kind (by the reference's
``meta.seconds``), then more of the cheapest while their summed seconds stay in budget."""


@dataclass
class Check:
    """The verification of one committed run (or of the files' checksums)."""

    kind: str
    name: str
    status: str = "pass"  # pass | fail | skip
    reason: str = ""
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    committed_seconds: float | None = None
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _short(value: Any) -> str:
    """A value for a message: strings quoted and cut to 60 characters, the rest as repr."""
    return repr(value[:60]) if isinstance(value, str) else repr(value)[:60]


def compare(committed: Any, recomputed: Any, *, tol: float = TOLERANCE,
            volatile: frozenset[str] = frozenset(), path: str = "result") -> list[str]:
    """Every place where ``recomputed`` does not reproduce ``committed``: a number off by more
    than ``tol`` (absolute), another string, bool or None, a list of another length, a key
    the recomputation lacks. Keys in ``volatile`` are skipped; keys only the recomputation
    has are new outputs, not differences."""
    if isinstance(committed, Mapping):
        if not isinstance(recomputed, Mapping):
            return [f"{path}: committed a mapping, recomputed {type(recomputed).__name__}"]
        out = []
        for key, value in committed.items():
            if key in volatile:
                continue
            if key not in recomputed:
                out.append(f"{path}.{key}: committed, no longer produced")
                continue
            out += compare(value, recomputed[key], tol=tol, volatile=volatile,
                           path=f"{path}.{key}")
        return out
    if isinstance(committed, list):
        if not isinstance(recomputed, list) or len(recomputed) != len(committed):
            n = len(recomputed) if isinstance(recomputed, list) else type(recomputed).__name__
            return [f"{path}: committed {len(committed)} items, recomputed {n}"]
        out = []
        for i, (a, b) in enumerate(zip(committed, recomputed, strict=True)):
            out += compare(a, b, tol=tol, volatile=volatile, path=f"{path}[{i}]")
        return out
    if _number(committed):
        if not _number(recomputed):
            return [f"{path}: committed {committed!r}, recomputed {recomputed!r}"]
        a, b = float(committed), float(recomputed)
        if math.isnan(a) and math.isnan(b):
            return []
        if not abs(a - b) <= tol:
            return [f"{path}: committed {committed!r}, recomputed {recomputed!r} "
                    f"(|difference| {abs(a - b):.3g} > {tol:g})"]
        return []
    if committed != recomputed:
        return [f"{path}: committed {_short(committed)}, recomputed {_short(recomputed)}"]
    return []


def _set_aside(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config`` without the :data:`SET_ASIDE` fields, and those fields by dotted path."""
    clean = json.loads(json.dumps(config))
    aside = {}
    for keys in SET_ASIDE:
        node = clean
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and keys[-1] in node:
            aside[".".join(keys)] = node.pop(keys[-1])
    return clean, aside


def match_configs(committed: Mapping[str, Any], recomputed: Mapping[str, Any]
                  ) -> tuple[list[str], list[str]]:
    """(differences, notes) between two configs: the differences with the set-aside fields
    left out; a note for each set-aside field whose values differ."""
    a, a_aside = _set_aside(committed)
    b, b_aside = _set_aside(recomputed)
    diffs = compare(a, b, tol=0.0, path="config") + [
        f"config.{k}: recomputed, not in the committed config" for k in b if k not in a]
    notes = [f"{k}: committed {v!r}, here {b_aside.get(k)!r} (data copy; set aside)"
             for k, v in a_aside.items() if b_aside.get(k) != v]
    return diffs, notes


# --------------------------------------------------------------------------------------------
# Recomputation
# --------------------------------------------------------------------------------------------


class StaleRun(ValueError):
    """The committed run cannot be rebuilt by today's code (its message says why)."""


def _p2(config: Mapping[str, Any], results_dir: Path, data_root: Any) -> None:
    from covidlib.experiments import p2

    if config.get("version") != p2.VERSION:
        raise StaleRun(f"committed by code version {config.get('version')!r}, the code is "
                       f"{p2.VERSION!r}: publish a new reference run")
    fields = {k: v for k, v in config.items() if k not in ("version", "data")}
    try:
        run = p2.P2Run(**fields)
    except TypeError as exc:
        raise StaleRun(f"today's P2Run cannot take the committed config ({exc})") from exc
    p2.run_p2(run, data_root=data_root, results_dir=results_dir, device="cpu")


def _p1_config(config: Mapping[str, Any], part: str) -> Any:
    from covidlib.experiments import p1

    if config.get("version") != p1.VERSION:
        raise StaleRun(f"committed by code version {config.get('version')!r}, the code is "
                       f"{p1.VERSION!r}: publish a new reference run")
    try:
        return p1.ALConfig.from_mapping(config[part])
    except (KeyError, TypeError, ValueError) as exc:
        raise StaleRun(f"today's ALConfig cannot take the committed config ({exc})") from exc


def _p1_al(config: Mapping[str, Any], results_dir: Path, data_root: Any) -> None:
    from covidlib.experiments import p1

    p1.run_al(_p1_config(config, "run"), data_root=data_root, results_dir=results_dir,
              device="cpu")


def _p1_full(config: Mapping[str, Any], results_dir: Path, data_root: Any) -> None:
    from covidlib.experiments import p1

    p1.run_full(_p1_config(config, "full"), int(config["epochs"]), data_root=data_root,
                results_dir=results_dir, device="cpu")


RECOMPUTE: dict[str, Callable[[Mapping[str, Any], Path, Any], None]] = {
    "p2_run": _p2, "p1_al": _p1_al, "p1_full": _p1_full}
"""Result kinds that can be recomputed from their config alone."""


@contextlib.contextmanager
def _threads(n: int | None):
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _missing_data(config: Mapping[str, Any], data_root: Any) -> str | None:
    """Why the data of ``config`` is not here (real data absent), or None."""
    from covidlib.data.errors import DataError
    from covidlib.data.manifest import load_manifest, locate

    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    name = data.get("name")
    if not name or not data.get("real"):
        return None
    try:
        locate(load_manifest(name), data_root)
    except DataError:
        return (f"the real dataset {name!r} is not on this machine (looked in "
                "COVIDLIB_DATA_PATH / ../shared/data)")
    return None


def recompute(kind: str, record: Mapping[str, Any], work: Path, data_root: Any = None
              ) -> dict[str, Any]:
    """Recompute one committed ``record`` of ``kind`` in the empty folder ``work`` with the
    reference's torch thread count; the new record (read back from the cache)."""
    if kind not in RECOMPUTE:
        raise StaleRun(f"result kind {kind!r} cannot be recomputed from its config alone; "
                       f"verifiable kinds: {sorted(RECOMPUTE)}")
    threads = (record.get("runtime") or {}).get("torch_threads")
    with _threads(threads):
        RECOMPUTE[kind](record["config"], work, data_root)
    made = sorted((work / kind).glob("*.json"))
    if len(made) != 1:
        raise StaleRun(f"recomputing stored {len(made)} {kind} records in {work / kind}, "
                       "expected exactly one")
    return json.loads(made[0].read_text())


# --------------------------------------------------------------------------------------------
# Sampling, the whole verification and its report
# --------------------------------------------------------------------------------------------


def _records(ref: Path, kinds: tuple[str, ...]) -> list[tuple[str, Path, dict[str, Any]]]:
    out = []
    for kind in kinds:
        for path in sorted((ref / kind).glob("*.json")):
            record = json.loads(path.read_text())
            if isinstance(record, dict) and "config" in record and "result" in record:
                out.append((kind, path, record))
    return out


def _cost(item: tuple[str, Path, dict[str, Any]]) -> tuple[float, str, str]:
    secs = (item[2].get("meta") or {}).get("seconds")
    return (float(secs) if _number(secs) else math.inf, item[0], item[1].name)


def select(records: list[tuple[str, Path, dict[str, Any]]], sample: str
           ) -> list[tuple[str, Path, dict[str, Any]]]:
    """The runs :data:`SAMPLES` ``[sample]`` recomputes: the cheapest of each kind, then the
    cheapest others while the committed seconds stay within the budget; deterministic."""
    if sample not in SAMPLES:
        raise ReferenceRunError(f"sample {sample!r}: choose one of {sorted(SAMPLES)}")
    spec = SAMPLES[sample]
    ordered = sorted((r for r in records if r[0] in spec["kinds"]), key=_cost)
    chosen = []
    for kind in spec["kinds"]:
        first = next((r for r in ordered if r[0] == kind), None)
        if first is not None:
            chosen.append(first)
    spent = sum(_cost(r)[0] for r in chosen if math.isfinite(_cost(r)[0]))
    for r in ordered:
        if r not in chosen and spent + _cost(r)[0] <= spec["budget_s"]:
            chosen.append(r)
            spent += _cost(r)[0]
    return chosen


def _with_data(records: list[tuple[str, Path, dict[str, Any]]], data_root: Any
               ) -> tuple[list[tuple[str, Path, dict[str, Any]]], dict[str, int]]:
    """The records whose data is on this machine, and how many lack it, by reason."""
    seen: dict[str, str | None] = {}
    kept, absent = [], {}
    for item in records:
        data = item[2]["config"].get("data") if isinstance(item[2]["config"], dict) else None
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in seen:
            seen[key] = _missing_data(item[2]["config"], data_root)
        if seen[key]:
            absent[seen[key]] = absent.get(seen[key], 0) + 1
        else:
            kept.append(item)
    return kept, absent


def check_files(ref: Path) -> Check:
    """Every file ``provenance.json`` lists is present with its size and sha256."""
    check = Check("files", PROVENANCE)
    prov = load_provenance(ref) or {}
    files = prov.get("files") or {}
    for rel, want in sorted(files.items()):
        path = ref / rel
        if not path.is_file():
            check.differences.append(f"{rel}: listed in {PROVENANCE}, absent")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != want.get("sha256"):
            check.differences.append(f"{rel}: content differs from the published sha256")
    check.notes.append(f"{len(files)} published files")
    check.status = "fail" if check.differences else "pass"
    return check


def _verify_one(kind: str, path: Path, record: dict[str, Any], tol: float, data_root: Any,
                work_root: Path) -> Check:
    check = Check(kind, path.name, committed_seconds=(record.get("meta") or {}).get("seconds"))
    why = _missing_data(record["config"], data_root)
    if why:
        check.status, check.reason = "skip", why
        return check
    work = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work_root))
    t0 = time.perf_counter()
    try:
        new = recompute(kind, record, work, data_root)
    except StaleRun as exc:
        check.status, check.reason = "fail", str(exc)
        return check
    except Exception as exc:  # the code no longer runs this config: a failure
        check.status, check.reason = "fail", f"recomputing raised {type(exc).__name__}: {exc}"
        return check
    finally:
        check.seconds = round(time.perf_counter() - t0, 1)
    diffs, notes = match_configs(record["config"], new["config"])
    check.differences += diffs
    check.notes += notes
    if record.get("runtime") != new.get("runtime"):
        check.notes.append(f"runtime: committed {record.get('runtime')}, here "
                           f"{new.get('runtime')}")
    committed, recomputed = (_set_aside(r["result"])[0] if isinstance(r["result"], Mapping)
                             else r["result"] for r in (record, new))  # results echo the data
    check.differences += compare(committed, recomputed, tol=tol,
                                 volatile=VOLATILE.get(kind, frozenset()))
    check.status = "fail" if check.differences else "pass"
    shutil.rmtree(work, ignore_errors=True)
    return check


def verify(ref: str | Path, sample: str = "ci", *, tol: float = TOLERANCE,
           data_root: Any = None, work: str | Path | None = None,
           log: Callable[[str], None] = print) -> list[Check]:
    """Verify the reference folder ``ref``: its files' checksums, then the runs of
    ``sample`` recomputed in ``work`` (default: a new temporary folder, removed after)."""
    ref = Path(ref)
    if load_provenance(ref) is None:
        raise ReferenceRunError(f"{ref}: no published reference run ({PROVENANCE} absent); "
                                "nothing to verify")
    checks = [check_files(ref)]
    records, absent = _with_data(_records(ref, tuple(RECOMPUTE)), data_root)
    for why, n in sorted(absent.items()):
        checks.append(Check("data", f"{n} committed run(s)", "skip", why))
    chosen = select(records, sample)
    own = work is None
    work_root = Path(tempfile.mkdtemp(prefix="covidlib-verify-")) if own else Path(work)
    work_root.mkdir(parents=True, exist_ok=True)
    try:
        for i, (kind, path, record) in enumerate(chosen, 1):
            secs = _cost((kind, path, record))[0]
            log(f"[{i}/{len(chosen)}] recomputing {kind}/{path.name} (took {secs:.0f} s in "
                "the reference run)")
            checks.append(_verify_one(kind, path, record, tol, data_root, work_root))
            log(f"    {checks[-1].status} in {checks[-1].seconds:.0f} s"
                + (f": {checks[-1].reason}" if checks[-1].reason else ""))
    finally:
        if own:
            shutil.rmtree(work_root, ignore_errors=True)
    return checks


def report(checks: list[Check]) -> tuple[str, int]:
    """The verification's text and exit status (1 when a check failed, else 0)."""
    lines = []
    for c in checks:
        head = f"{c.status.upper():4}  {c.kind}/{c.name}"
        if c.committed_seconds is not None:
            head += f"  ({c.seconds:.0f} s here, {c.committed_seconds:.0f} s in the reference)"
        lines.append(head + (f": {c.reason}" if c.reason else ""))
        lines += [f"      differs: {d}" for d in c.differences[:20]]
        if len(c.differences) > 20:
            lines.append(f"      ... and {len(c.differences) - 20} more differences")
        lines += [f"      note: {n}" for n in c.notes]
    counts = {s: sum(c.status == s for c in checks) for s in ("pass", "fail", "skip")}
    lines.append(f"reference verification: {counts['pass']} passed, {counts['fail']} failed, "
                 f"{counts['skip']} skipped")
    return "\n".join(lines), 1 if counts["fail"] else 0
