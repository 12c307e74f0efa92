"""``make verify-reference`` beyond P1 / P2: which P3 / P4 runs the full sample recomputes,
what they cost, the records they make on the way, and the kinds it cannot recompute (tiny
fake records, no training)."""

import json
import math

import pytest

from covidlib.cache import ResultCache
from covidlib.report import reference_recompute as rr
from covidlib.report import reference_verify as rv
from covidlib.report.reference import FORMAT

TEACHER = {"version": "p4/1", "kind": "teacher", "fold": 0, "seed": 0,
           "data": {"name": "ma20-slices", "real": True, "files": "f1", "splits": "s"}}
OTHER_TEACHER = {**TEACHER, "fold": 1}


def _write(ref, kind, name, config, result, seconds=None):
    path = ref / kind / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {} if seconds is None else {"seconds": seconds}
    path.write_text(json.dumps({"config": config, "result": result, "meta": meta,
                                "runtime": {"torch_threads": 1}}))
    return path


def _p3_rounds(*secs):
    return [{"iteration": i, "seconds_train": s, "test_dice": 0.5} for i, s in enumerate(secs)]


@pytest.fixture
def published(tmp_path):
    """A reference folder with records of every kind the full sample draws from."""
    ref = tmp_path
    _write(ref, "p4_teacher", "t0", TEACHER, {"dice": 0.3}, 50.0)
    _write(ref, "p4_teacher", "t1", OTHER_TEACHER, {"dice": 0.3}, 200.0)
    specs = [("p2_run", "p2a", {"e": 1}, {}, 15.0), ("p2_run", "p2b", {"e": 2}, {}, 25.0),
             ("p1_al", "al", {"r": 1}, {}, 45.0), ("p1_full", "full", {"f": 1}, {}, 100.0),
             # P3 runs record no total: the sum of their rounds' seconds_train
             ("p3_volume_al", "p3slow", {"s": 1}, _p3_rounds(20.0, 10.0), None),
             ("p3_volume_al", "p3fast", {"s": 2}, _p3_rounds(10.0, 5.0, 1.0), None),
             # a P4 run costs its own seconds plus its teacher's
             ("p4_run", "run_t1", {"kind": "run", "teacher": OTHER_TEACHER}, {}, 5.0),
             ("p4_run", "run_t0", {"kind": "run", "teacher": TEACHER}, {}, 20.0),
             ("p4_mechanism", "mech", {"kind": "mechanism", "teacher": TEACHER}, {}, 9.0),
             ("label_demo", "demo", {"dataset": "x"}, {}, None)]
    for kind, name, config, result, secs in specs:
        _write(ref, kind, name, config, result, secs)
    return ref


def test_estimate_sums_p3_rounds_and_adds_the_p4_teacher(published):
    recs = {p.stem: (k, p, r) for k, p, r in rv._records(published, tuple(rv.RECOMPUTE))}
    assert rv.estimate(*recs["p3fast"]) == pytest.approx(16.0)
    assert rv.estimate(*recs["run_t1"]) == pytest.approx(205.0)
    assert rv.estimate(*recs["run_t0"]) == pytest.approx(70.0)
    assert rv.estimate(*recs["mech"]) == pytest.approx(59.0)
    assert rv.estimate(*recs["p2a"]) == pytest.approx(15.0)
    assert math.isinf(rv.estimate("p3_volume_al", published / "x.json", {"result": []}))


def test_full_sample_takes_the_cheapest_of_every_recomputable_kind(published, monkeypatch):
    records = rv._records(published, tuple(rv.RECOMPUTE))
    assert "label_demo" not in {r[0] for r in records}
    monkeypatch.setitem(rv.SAMPLES, "full", {**rv.SAMPLES["full"], "budget_s": 340.0})
    chosen = [(k, p.stem) for k, p, _r in rv.select(records, "full")]
    # firsts: 15 + 45 + 100 + 16 + 70 (not run_t1: 5 s but a 200 s teacher) + 59 = 305 s,
    # then the cheapest others within 340 s: p2b (25 s); p3slow (30 s) no longer fits
    assert chosen == [("p2_run", "p2a"), ("p1_al", "al"), ("p1_full", "full"),
                      ("p3_volume_al", "p3fast"), ("p4_run", "run_t0"),
                      ("p4_mechanism", "mech"), ("p2_run", "p2b")]


def test_every_recomputable_kind_is_in_the_full_sample_or_made_on_the_way():
    full = set(rv.SAMPLES["full"]["kinds"])
    made = {k for kind in full for k in rv.COMPANIONS.get(kind, ())}
    assert set(rv.RECOMPUTE) <= full | made
    assert set(rv.SAMPLES["ci"]["kinds"]) == {"p2_run", "p1_al"}
    assert not set(rr.NOT_RECOMPUTED) & set(rv.RECOMPUTE)


def test_unrecomputable_kinds_are_reported_as_skipped_with_their_reason(published):
    (check,) = rv.unverified(published)  # label_demo_warm is not published here
    assert (check.kind, check.name, check.status) == ("label_demo", "1 committed run(s)",
                                                      "skip")
    assert "wall-clock time" in check.reason


def _provenance(ref):
    files = {str(p.relative_to(ref)): {"sha256": __import__("hashlib").sha256(
        p.read_bytes()).hexdigest()} for p in sorted(ref.rglob("*.json"))}
    (ref / "provenance.json").write_text(json.dumps({"format": FORMAT, "files": files}))


def test_records_made_on_the_way_are_compared_with_their_committed_twins(tmp_path,
                                                                        monkeypatch):
    config, part = {"run": 1}, {"round": 0, "data": {"files": "f1"}}
    _write(tmp_path, "main", "m", config, {"dice": 0.5}, 1.0)
    _write(tmp_path, "part", "p", part, {"dice": 0.25, "seconds_train": 3.0})
    (tmp_path / "label_demo").mkdir()
    _write(tmp_path, "label_demo", "d", {"dataset": "x"}, {})
    _provenance(tmp_path)
    made = {"part": {"dice": 0.25, "seconds_train": 9.0}}

    def recompute(cfg, results_dir, data_root):
        cache = ResultCache(results_dir)
        cache.put("main", cfg, {"dice": 0.5})
        cache.put("part", {**part, "data": {"files": "elsewhere"}}, made["part"])
        cache.put("part", {"round": 1}, {"dice": 0.1})  # no committed twin: a note

    monkeypatch.setitem(rv.RECOMPUTE, "main", recompute)
    monkeypatch.setitem(rv.COMPANIONS, "main", ("part",))
    monkeypatch.setitem(rv.VOLATILE, "part", frozenset({"seconds_train"}))
    monkeypatch.setitem(rv.SAMPLES, "test", {"kinds": ("main",), "budget_s": 0.0,
                                             "unverified": True})
    checks = rv.verify(tmp_path, "test", log=lambda s: None)
    assert [(c.kind, c.name, c.status) for c in checks] == [
        ("files", "provenance.json", "pass"), ("label_demo", "1 committed run(s)", "skip"),
        ("main", "m.json", "pass"), ("part", "p.json", "pass")]
    assert checks[3].notes[0] == "recomputed as part of main/m.json"
    assert any("no committed record with its config" in n for n in checks[2].notes)
    made["part"] = {"dice": 0.3, "seconds_train": 3.0}
    checks = rv.verify(tmp_path, "test", log=lambda s: None)
    assert checks[3].status == "fail"
    assert checks[3].differences[0].startswith("result.dice: committed 0.25, recomputed 0.3")
    assert rv.report(checks)[1] == 1


def test_p4_runs_on_absent_real_data_are_skipped_by_their_teachers_data(tmp_path):
    config = {"kind": "run", "teacher": TEACHER}
    why = rv._missing_data(config, tmp_path / "no-data")
    assert why is not None and "'ma20-slices' is not on this machine" in why
    assert rv._missing_data({"dataset": "synthetic", "task": "heart"}, tmp_path) is None


P3_CONFIG = {"loss": "combo", "grid": [16, 32, 32], "window": [-1000.0, 400.0], "lr": 0.003,
             "batch_size": 2, "patch": None, "patches_per_volume": 1, "epochs": 32,
             "iterations": 3, "n_samples": 5, "warm_start": True, "warm_epochs": 8,
             "model": {"base_width": 8, "depth": 2, "dropout": 0.5},
             "split": {"pool": ["a"] * 14, "test": ["t"] * 4, "val": ["v"] * 2},
             "initial": ["a"] * 7, "per_iteration": 3}


def test_p3_overrides_rebuild_the_settings_of_a_committed_run():
    out = rr.p3_overrides(P3_CONFIG)
    assert out == {"loss": "combo", "grid": [16, 32, 32], "window": [-1000.0, 400.0],
                   "lr": 0.003, "batch_size": 2, "patch": None, "patches_per_volume": 1,
                   "epochs": 32, "iterations": 3, "n_samples": 5, "warm_start": True,
                   "warm_epochs": 8, "base_width": 8, "depth": 2, "dropout": 0.5, "test": 4,
                   "val": 2, "initial": 7, "per_iteration": 3, "reference_seeds": 0}
    from covidlib.experiments import p3

    s = rr._settings(p3, out, "P3")
    assert s.grid == (16, 32, 32) and s.initial == 7 and s.reference_seeds == 0
    with pytest.raises(rr.StaleRun, match="lacks 'model'"):
        rr.p3_overrides({k: v for k, v in P3_CONFIG.items() if k != "model"})
    with pytest.raises(rr.StaleRun, match="cannot take the committed config"):
        rr._settings(p3, {**out, "epochs": 0}, "P3")


def test_p4_overrides_take_the_teacher_and_student_fields():
    teacher = {**TEACHER, **{k: 1 for k in rr._P4_TEACHER}, "patch": [32, 32, 32]}
    run = {"kind": "run", "teacher": teacher, "student_steps": 100, "init": "teacher",
           "lam": 0.5, "meta_lr": 0.01, "rgs_method": "jvp"}
    out = rr.p4_overrides(run)
    assert out["patch"] == [32, 32, 32] and out["folds"] == (0,)
    assert (out["student_steps"], out["init"], out["lam"], out["rgs_method"]) == (
        100, "teacher", 0.5, "jvp")
    assert "expert_term" not in out  # not recorded: the profile's value
    only_teacher = rr.p4_overrides(teacher)
    assert "student_steps" not in only_teacher and only_teacher["teacher_steps"] == 1
    with pytest.raises(rr.StaleRun, match="expected 'teacher', 'run' or 'mechanism'"):
        rr.p4_overrides({"kind": "table"})
    with pytest.raises(rr.StaleRun, match="lacks 'student_steps'"):
        rr.p4_overrides({k: v for k, v in run.items() if k != "student_steps"})
