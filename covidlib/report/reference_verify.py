"""Verifying the published reference run: ``make verify-reference`` (issue 14, item 4).

A sample of the committed runs (``reference/<kind>/<hash>.json``) is recomputed from scratch
by today's code in an empty results folder, with the torch thread count the reference used
(its record's ``runtime.torch_threads``), and every committed number is compared with the
recomputed one (absolute tolerance :data:`TOLERANCE`: CPU training at a fixed thread count is
deterministic). A committed number the code no longer produces fails: a changed value, a
key that disappeared, a config the code can no longer build or now builds differently.

Recomputed and committed runs are matched on their config with the data digest set aside
(:data:`SET_ASIDE`: ``data.files`` is the digest of the data files' contents, which differs
wherever a file was re-exported or re-encoded, e.g. a regenerated phantom); the set-aside
values are reported, not compared. Wall times
and the device (:data:`VOLATILE`) are never compared. A run on real data that is absent here
(``../shared/data``) is skipped with a message saying so. ``provenance.json``'s sha256 of
every published file is checked too (a hand-edited number fails).

Recomputable kinds (:data:`RECOMPUTE`): P2 trainings, P1 active-learning runs and fully
supervised baselines, P3 volume-level active-learning runs, P4 teachers, runs and mechanism
probes (P3 and P4 are rebuilt by :mod:`covidlib.report.reference_recompute`). A run that
caches other records on the way (:data:`COMPANIONS`: P3's rounds and MC scores, P4's teacher)
has those compared too, each against the committed record of the same config. The label
demo (``label_demo``, ``label_demo_warm``) is NOT recomputed: its annotation files stamp
wall-clock times (:data:`~covidlib.report.reference_recompute.NOT_RECOMPUTED` says why); the
report lists it as skipped, and its files are covered by the checksums only.

Cost of a run (for the samples): its committed ``meta.seconds``, else the sum of its
``seconds_train`` (P3 runs record no total), plus the committed seconds of the teacher a P4
run or probe trains first (an estimate: data loading is not recorded).
"""

from __future__ import annotations

import contextlib
import functools
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

from tqdm.auto import tqdm

from covidlib.report.reference import PROVENANCE, ReferenceRunError, load_provenance
from covidlib.report.reference_recompute import NOT_RECOMPUTED, StaleRun, recompute_p3, recompute_p4

__all__ = ["COMPANIONS", "SAMPLES", "TOLERANCE", "Check", "StaleRun", "check_files",
           "compare", "estimate", "match_configs", "recompute", "report", "select", "verify"]

TOLERANCE = 1e-5
VOLATILE: dict[str, frozenset[str]] = {
    "p2_run": frozenset({"seconds", "train_seconds", "device"}),
    "p1_al": frozenset({"timing", "device"}),  # P1's "seconds" are labelling costs: compared
    "p1_full": frozenset({"timing", "device"}),
    "p3_volume_al": frozenset({"seconds_train"}),
    "p3_round": frozenset({"seconds_train"}),
    "p3_scores": frozenset(),
    "p4_teacher": frozenset({"seconds"}),
    "p4_run": frozenset({"seconds"}),
    "p4_mechanism": frozenset({"seconds"}),
}
"""Keys (at any depth of a result) that hold wall times or the device: never compared."""
SET_ASIDE: tuple[tuple[str, ...], ...] = (("data", "files"), ("teacher", "data", "files"))
"""Config fields that identify a copy of the data, not its content: reported, not matched."""
SAMPLES: dict[str, dict[str, Any]] = {
    # .ci/run: the cheapest committed P2 training and the cheapest P1 active-learning run
    "ci": {"kinds": ("p2_run", "p1_al"), "budget_s": 0.0},
    # make verify-reference: one of every recomputable kind (P4's teacher is verified as
    # the first step of its run and probe), then the cheapest others within the budget
    "full": {"kinds": ("p2_run", "p1_al", "p1_full", "p3_volume_al", "p4_run",
                       "p4_mechanism"), "budget_s": 540.0, "unverified": True},
}
"""Which committed runs a sample recomputes: the cheapest of each kind (by the reference's
:func:`estimate`), then more of the cheapest while their summed seconds stay in budget."""
COMPANIONS: dict[str, tuple[str, ...]] = {
    "p3_volume_al": ("p3_round", "p3_scores"), "p4_run": ("p4_teacher",),
    "p4_mechanism": ("p4_teacher",)}
"""Kinds a recomputation caches on the way; each is compared with its committed record."""


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
    "p2_run": _p2, "p1_al": _p1_al, "p1_full": _p1_full, "p3_volume_al": recompute_p3,
    "p4_teacher": recompute_p4, "p4_run": recompute_p4, "p4_mechanism": recompute_p4}
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


def _data_of(config: Any) -> Mapping[str, Any]:
    """The data fingerprint of a config (a P4 run's or probe's is its teacher's), or {}."""
    if not isinstance(config, Mapping):
        return {}
    data = config.get("data")
    if not isinstance(data, Mapping) and isinstance(config.get("teacher"), Mapping):
        data = config["teacher"].get("data")
    return data if isinstance(data, Mapping) else {}


def _missing_data(config: Mapping[str, Any], data_root: Any) -> str | None:
    """Why the data of ``config`` is not here (real data absent), or None."""
    from covidlib.data.errors import DataError
    from covidlib.data.manifest import load_manifest, locate

    data = _data_of(config)
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


def _own_seconds(record: Mapping[str, Any]) -> float | None:
    """A record's committed ``meta.seconds``, else the sum of the ``seconds_train`` of its
    rounds (a P3 run's list of iterations), else None."""
    secs = (record.get("meta") or {}).get("seconds")
    if _number(secs):
        return float(secs)
    rounds = record.get("result")
    parts = [r.get("seconds_train") for r in rounds if isinstance(r, Mapping)] \
        if isinstance(rounds, list) else []
    if parts and all(_number(x) for x in parts):
        return float(sum(parts))
    return None


@functools.lru_cache(maxsize=8)
def _teacher_index(folder: str) -> dict[str, float]:
    """Committed seconds of the P4 teachers in ``folder``, by their config as JSON."""
    out = {}
    for path in sorted(Path(folder).glob("*.json")):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and "config" in record:
            out[json.dumps(record["config"], sort_keys=True)] = _own_seconds(record) or 0.0
    return out


def _teacher_seconds(folder: Path, teacher: Any) -> float:
    """The committed seconds of the P4 teacher with config ``teacher`` in ``folder``
    (``p4_teacher/``); 0 when it is not published."""
    return _teacher_index(str(folder)).get(json.dumps(teacher, sort_keys=True), 0.0)


def estimate(kind: str, path: Path, record: Mapping[str, Any]) -> float:
    """Seconds a recomputation of ``record`` takes, from the reference's own times: its
    :func:`_own_seconds` plus, for a P4 run or probe, its teacher's; inf when unknown."""
    own = _own_seconds(record)
    if own is None:
        return math.inf
    config = record.get("config")
    if kind in ("p4_run", "p4_mechanism") and isinstance(config, Mapping):
        own += _teacher_seconds(path.parent.parent / "p4_teacher", config.get("teacher"))
    return own


def _cost(item: tuple[str, Path, dict[str, Any]]) -> tuple[float, str, str]:
    return (estimate(*item), item[0], item[1].name)


def select(records: list[tuple[str, Path, dict[str, Any]]], sample: str
           ) -> list[tuple[str, Path, dict[str, Any]]]:
    """The runs :data:`SAMPLES` ``[sample]`` recomputes: the cheapest of each kind, then the
    cheapest others while the committed seconds stay within the budget; deterministic."""
    if sample not in SAMPLES:
        raise ReferenceRunError(f"sample {sample!r}: choose one of {sorted(SAMPLES)}")
    spec = SAMPLES[sample]
    _teacher_index.cache_clear()
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
        key = json.dumps(_data_of(item[2]["config"]), sort_keys=True, default=str)
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


def _compare_record(check: Check, kind: str, record: Mapping[str, Any],
                    new: Mapping[str, Any], tol: float) -> Check:
    """Fill ``check`` with the differences between a committed and a recomputed record."""
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
    return check


def companions(kind: str, name: str, ref: Path, work: Path, tol: float = TOLERANCE
               ) -> tuple[list[Check], list[str]]:
    """The records of :data:`COMPANIONS` ``[kind]`` that recomputing ``kind/name`` cached in
    ``work``, each compared with the committed record of the same config (data digests set
    aside); and a note for each that has no committed counterpart."""
    checks, notes = [], []
    for other in COMPANIONS.get(kind, ()):
        committed = _records(ref, (other,))
        for made in sorted((work / other).glob("*.json")):
            new = json.loads(made.read_text())
            twin = next((c for c in committed if not match_configs(c[2]["config"],
                                                                   new["config"])[0]), None)
            if twin is None:
                notes.append(f"{other}/{made.name}: recomputed, no committed record with its "
                             "config")
                continue
            check = Check(other, twin[1].name, notes=[f"recomputed as part of {kind}/{name}"])
            checks.append(_compare_record(check, other, twin[2], new, tol))
    return checks, notes


def _verify_one(kind: str, path: Path, record: dict[str, Any], tol: float, data_root: Any,
                work_root: Path) -> list[Check]:
    secs = estimate(kind, path, record)
    check = Check(kind, path.name, committed_seconds=secs if math.isfinite(secs) else None)
    why = _missing_data(record["config"], data_root)
    if why:
        check.status, check.reason = "skip", why
        return [check]
    work = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work_root))
    t0 = time.perf_counter()
    try:
        new = recompute(kind, record, work, data_root)
    except StaleRun as exc:
        check.status, check.reason = "fail", str(exc)
        return [check]
    except Exception as exc:  # the code no longer runs this config: a failure
        check.status, check.reason = "fail", f"recomputing raised {type(exc).__name__}: {exc}"
        return [check]
    finally:
        check.seconds = round(time.perf_counter() - t0, 1)
    _compare_record(check, kind, record, new, tol)
    extra, notes = companions(kind, path.name, path.parent.parent, work, tol)
    check.notes += notes
    shutil.rmtree(work, ignore_errors=True)
    return [check, *extra]


def unverified(ref: Path) -> list[Check]:
    """A skip for every published kind of :data:`NOT_RECOMPUTED`, saying why."""
    return [Check(kind, f"{n} committed run(s)", "skip", NOT_RECOMPUTED[kind])
            for kind in sorted(NOT_RECOMPUTED)
            if (n := len(list((ref / kind).glob("*.json")))) > 0]


def verify(ref: str | Path, sample: str = "ci", *, tol: float = TOLERANCE,
           data_root: Any = None, work: str | Path | None = None,
           log: Callable[[str], None] | None = None, progress: bool = True) -> list[Check]:
    """Verify the reference folder ``ref``: its files' checksums, then the runs of
    ``sample`` recomputed in ``work`` (default: a new temporary folder, removed after).
    A tqdm bar follows the recomputed runs (``progress``); ``log`` gets one status line per
    run (default: ``tqdm.write``, printed above the bar)."""
    ref = Path(ref)
    if load_provenance(ref) is None:
        raise ReferenceRunError(f"{ref}: no published reference run ({PROVENANCE} absent); "
                                "nothing to verify")
    checks = [check_files(ref)]
    records, absent = _with_data(_records(ref, tuple(RECOMPUTE)), data_root)
    for why, n in sorted(absent.items()):
        checks.append(Check("data", f"{n} committed run(s)", "skip", why))
    chosen = select(records, sample)
    if SAMPLES[sample].get("unverified"):
        checks += unverified(ref)
    own = work is None
    work_root = Path(tempfile.mkdtemp(prefix="covidlib-verify-")) if own else Path(work)
    work_root.mkdir(parents=True, exist_ok=True)
    try:
        checks += _recompute_all(chosen, tol, data_root, work_root, log or tqdm.write,
                                 progress)
    finally:
        if own:
            shutil.rmtree(work_root, ignore_errors=True)
    return checks


def _recompute_all(chosen: list[tuple[str, Path, dict[str, Any]]], tol: float, data_root: Any,
                   work_root: Path, log: Callable[[str], None], progress: bool) -> list[Check]:
    """Recompute the ``chosen`` runs one by one under a tqdm bar; one ``log`` line per run."""
    checks: list[Check] = []
    bar = tqdm(chosen, desc="verify", unit="run", disable=not progress)
    for kind, path, record in bar:
        secs = _cost((kind, path, record))[0]
        bar.set_postfix_str(f"{kind}/{path.name} (about {secs:.0f} s in the reference run)")
        done = _verify_one(kind, path, record, tol, data_root, work_root)
        checks += done
        log(f"{kind}/{path.name}: {done[0].status} in {done[0].seconds:.0f} s"
            + (f": {done[0].reason}" if done[0].reason else "")
            + (f" (+ {len(done) - 1} record(s) it made on the way)" if len(done) > 1 else ""))
    bar.close()
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
