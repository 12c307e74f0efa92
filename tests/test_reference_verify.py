"""Verifying the published reference run: the comparison, the matching, the sampling."""

import json
import math

import pytest

from covidlib.cache import ResultCache
from covidlib.report import reference_verify as rv
from covidlib.report.reference import FORMAT, ReferenceRunError

CONFIG = {"version": "k/1", "seed": 0, "data": {"name": "synthetic", "real": False,
                                                "splits": "s1", "files": "f1"}}
RESULT = {"scores": {"dice": 0.5, "n": 3}, "history": [{"val_dice": 0.25, "seconds": 1.5}],
          "label": "x", "best": None, "seconds": 9.0}


def test_compare_identical_and_within_tolerance():
    assert rv.compare(RESULT, json.loads(json.dumps(RESULT))) == []
    near = {**RESULT, "scores": {"dice": 0.5 + 5e-6, "n": 3}}
    assert rv.compare(RESULT, near) == []
    assert rv.compare({"x": math.nan}, {"x": math.nan}) == []


def test_compare_a_changed_number_fails():
    changed = {**RESULT, "scores": {"dice": 0.5 + 2e-5, "n": 3}}
    (diff,) = rv.compare(RESULT, changed)
    assert diff.startswith("result.scores.dice: committed 0.5, recomputed 0.50002")
    assert rv.compare(RESULT, {**RESULT, "label": "y"}) == [
        "result.label: committed 'x', recomputed 'y'"]
    assert rv.compare(RESULT, {**RESULT, "best": 1}) == ["result.best: committed None, "
                                                         "recomputed 1"]


def test_compare_a_number_no_longer_produced_fails():
    gone = {k: v for k, v in RESULT.items() if k != "scores"}
    assert rv.compare(RESULT, gone) == ["result.scores: committed, no longer produced"]
    short = {**RESULT, "history": []}
    assert rv.compare(RESULT, short) == ["result.history: committed 1 items, recomputed 0"]
    # a new output is not a difference
    assert rv.compare(RESULT, {**RESULT, "new": 1}) == []


def test_compare_skips_wall_times_only_where_told():
    slower = {**RESULT, "seconds": 99.0,
              "history": [{"val_dice": 0.25, "seconds": 7.0}]}
    assert rv.compare(RESULT, slower, volatile=frozenset({"seconds"})) == []
    assert len(rv.compare(RESULT, slower)) == 2


def test_configs_match_with_the_data_digest_set_aside():
    other_copy = json.loads(json.dumps(CONFIG))
    other_copy["data"]["files"] = "f2"
    diffs, notes = rv.match_configs(CONFIG, other_copy)
    assert diffs == [] and notes == ["data.files: committed 'f1', here 'f2' (data copy; set "
                                     "aside)"]
    changed = json.loads(json.dumps(CONFIG))
    changed["data"]["splits"] = "s2"
    changed["epochs"] = 3
    diffs, _ = rv.match_configs(CONFIG, changed)
    assert diffs == ["config.data.splits: committed 's1', recomputed 's2'",
                     "config.epochs: recomputed, not in the committed config"]


def _publish(ref, records):
    """A reference folder holding ``records`` {(kind, name): (config, result, seconds)}."""
    files = {}
    for (kind, name), (config, result, secs) in records.items():
        path = ref / kind / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"config": config, "result": result, "meta": {
            "seconds": secs}, "runtime": {"covidlib": "0.1.0", "torch_threads": 1}}))
        files[f"{kind}/{name}.json"] = {"sha256": __import__("hashlib").sha256(
            path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}
    (ref / "provenance.json").write_text(json.dumps({"format": FORMAT, "files": files}))


@pytest.fixture
def fake_kind(monkeypatch):
    """A result kind "fake" whose recomputation stores ``produce(config)``."""
    state = {"produce": lambda config: RESULT, "threads": []}

    def recompute(config, results_dir, data_root):
        import torch

        state["threads"].append(torch.get_num_threads())
        out = state["produce"](config)
        if out is not None:
            ResultCache(results_dir).put("fake", {**config, "data": {**config["data"],
                                                                     "files": "elsewhere"}},
                                         out)

    monkeypatch.setitem(rv.RECOMPUTE, "fake", recompute)
    monkeypatch.setitem(rv.SAMPLES, "test", {"kinds": ("fake",), "budget_s": 0.0})
    return state


def test_verify_passes_when_the_code_reproduces_the_committed_run(tmp_path, fake_kind):
    _publish(tmp_path, {("fake", "a"): (CONFIG, RESULT, 5.0)})
    lines: list[str] = []
    checks = rv.verify(tmp_path, "test", log=lines.append, progress=False)
    assert lines == [f"fake/a.json: pass in {checks[1].seconds:.0f} s"]  # one line per run
    assert [(c.kind, c.status) for c in checks] == [("files", "pass"), ("fake", "pass")]
    assert checks[1].notes == ["data.files: committed 'f1', here 'elsewhere' (data copy; set "
                               "aside)"]
    assert fake_kind["threads"] == [1]  # the reference's thread count
    text, status = rv.report(checks)
    assert status == 0 and "1 failed" not in text and "2 passed" in text


def test_verify_fails_on_a_changed_or_missing_number(tmp_path, fake_kind):
    _publish(tmp_path, {("fake", "a"): (CONFIG, RESULT, 5.0)})
    fake_kind["produce"] = lambda config: {**RESULT, "scores": {"dice": 0.4, "n": 3}}
    checks = rv.verify(tmp_path, "test", log=lambda s: None)
    assert checks[1].status == "fail"
    assert checks[1].differences[0].startswith("result.scores.dice: committed 0.5")
    fake_kind["produce"] = lambda config: None  # the code no longer stores the run
    checks = rv.verify(tmp_path, "test", log=lambda s: None)
    assert checks[1].status == "fail" and "expected exactly one" in checks[1].reason
    text, status = rv.report(checks)
    assert status == 1 and "FAIL  fake/a.json" in text


def test_verify_fails_on_a_hand_edited_file_and_skips_absent_real_data(tmp_path, fake_kind):
    real = {**CONFIG, "data": {**CONFIG["data"], "name": "ma20-slices", "real": True}}
    _publish(tmp_path, {("fake", "a"): (real, RESULT, 5.0)})
    path = tmp_path / "fake" / "a.json"
    path.write_text(path.read_text().replace("0.5", "0.6"))
    checks = rv.verify(tmp_path, "test", data_root=tmp_path / "no-data", log=lambda s: None)
    assert checks[0].status == "fail"
    assert checks[0].differences == ["fake/a.json: content differs from the published sha256"]
    assert len(checks) == 2 and fake_kind["threads"] == []  # nothing recomputed
    assert (checks[1].kind, checks[1].name, checks[1].status) == ("data", "1 committed run(s)",
                                                                  "skip")
    assert "'ma20-slices' is not on this machine" in checks[1].reason


def test_verify_needs_a_published_run(tmp_path):
    with pytest.raises(ReferenceRunError, match="no published reference run"):
        rv.verify(tmp_path, "ci")


def test_select_takes_the_cheapest_of_each_kind_then_fills_the_budget(tmp_path, monkeypatch):
    records = [(kind, tmp_path / f"{name}.json", {"meta": {"seconds": secs}})
               for kind, name, secs in [("p2_run", "a", 30.0), ("p2_run", "b", 10.0),
                                        ("p1_al", "c", 50.0), ("p1_al", "d", 40.0),
                                        ("p1_full", "e", 100.0), ("p2_run", "f", 20.0)]]
    assert [r[1].stem for r in rv.select(records, "ci")] == ["b", "d"]
    monkeypatch.setitem(rv.SAMPLES, "full", {"kinds": ("p2_run", "p1_al", "p1_full"),
                                             "budget_s": 190.0})
    assert [r[1].stem for r in rv.select(records, "full")] == ["b", "d", "e", "f"]
    with pytest.raises(ReferenceRunError, match="choose one of"):
        rv.select(records, "huge")


def test_cli_verify_without_a_published_run_says_so(tmp_path, capsys):
    from covidlib.cli import main

    assert main(["reference", "verify", "--out", str(tmp_path)]) == 0
    assert "no published reference run" in capsys.readouterr().out
