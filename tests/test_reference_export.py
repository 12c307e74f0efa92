"""Publishing a reference run: what is copied, what is left out, the provenance, refusals."""

import json

import pytest

from covidlib.cli import main
from covidlib.report import reference_export as rx
from covidlib.report.reference import ReferenceRunError, load_provenance

PLAN = """\
- notebook: p2_segmentation
  output: p2_table2
  title: "P2 Table 2"
  parameters: {dataset: auto}
  profiles: {reference: {seeds: [0, 1, 2]}}
- notebook: scorecard
  output: scorecard
  title: "Scorecard"
"""


def _record(config, result):
    return json.dumps({"schema": 1, "kind": "k", "config": config, "result": result,
                       "runtime": {"covidlib": "0.1.0", "torch_threads": 1},
                       "meta": {"seconds": 2.0}}, indent=1)


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "repo" / "book").mkdir(parents=True)
    (tmp_path / "repo" / "book" / "plan.yml").write_text(PLAN)
    return tmp_path / "repo"


@pytest.fixture
def results(tmp_path):
    r = tmp_path / "results"
    files = {
        "p2_run/aaaa.json": _record({"data": {"name": "synthetic", "real": False,
                                              "splits": "s", "files": "f"}}, {"dice": 0.5}),
        "p2_run/aaaa.lock": "{}",
        "p2_run/.aaaa.json.host.1.tmp": "{",
        "p2/P2-T2_synthetic.csv": "loss,dice_mean\nfully,0.5\n",
        "p4_teacher/bbbb.json": _record({"x": 1}, {"dice": 0.4}),
        "p4_teacher/bbbb.pt": "weights",
        "checkpoints/p3/cccc/state.json": "{}",
        "p1_checkpoints/dddd/cycle.json": "{}",
        "label_demo/eeee.json": _record({"y": 2}, {"replay": {"predictions": ["AAAA"] * 50,
                                                              "dice": [0.1]}}),
        "label_demo/eeee.pt": "weights",
        "label_demo/runs/synthetic-entropy-0.jsonl": '{"click": 1}\n',
        "p3/figure.png": "png",
        "p4/arrays.npz": "npz",
        "book_cache_reference.json": "{}",
        "run.log": "log",
        "started": "2026-12-03T19:17:00",
        "scorecard/P2-T2.json": json.dumps({"artifact": "P2-T2", "provenance": {
            "dataset": "synthetic/a-like", "commit": "abc1234"}}),
        "book_timings_reference.json": json.dumps({
            "p2_table2": {"status": "ok", "seconds": 100.0},
            "scorecard": {"status": "ok", "seconds": 2.0},
            "wall_seconds": 103.5, "workers": 2, "date": "2026-12-03T21:00:00+0000"}),
    }
    for rel, text in files.items():
        (r / rel).parent.mkdir(parents=True, exist_ok=True)
        (r / rel).write_text(text)
    return r


def test_publishable_rules():
    assert rx.publishable("p2_run/aa.json") is None
    assert rx.publishable("p1/fig5_ma20-slices_reference.csv") is None
    assert rx.publishable("p2_run/aa.lock") == "hidden, lock or temporary file"
    assert rx.publishable("p1_checkpoints/x/state.json") == "checkpoint folder"
    assert rx.publishable("checkpoints/p3/x.json") == "checkpoint folder"
    assert rx.publishable("label_demo/x.pt").startswith("not a text result (.pt")
    assert rx.publishable("p3/f.png").startswith("not a text result (.png")
    assert rx.publishable("book_cache_cpu.json") == "book cache or run log (machine-specific)"


def test_export_copies_results_and_writes_provenance(results, repo, tmp_path):
    out = tmp_path / "reference"
    prov = rx.export(results, out, repo=repo)
    published = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert published == sorted([
        "book_timings_reference.json", "label_demo/eeee.json",
        "label_demo/runs/synthetic-entropy-0.jsonl", "p2/P2-T2_synthetic.csv",
        "README.md", "p2_run/aaaa.json", "p4_teacher/bbbb.json", "provenance.json",
        "scorecard/P2-T2.json"])
    assert "covidlib book --profile reference" in (out / "README.md").read_text()
    assert list(prov["files"]) == sorted(prov["files"])  # deterministic order
    assert prov["files"]["p2_run/aaaa.json"]["bytes"] == (out / "p2_run/aaaa.json").stat().st_size
    demo = json.loads((out / "label_demo/eeee.json").read_text())
    assert "predictions" not in demo["result"]["replay"] and demo["result"]["replay"]["dice"]
    assert demo["published"] == {"stripped": ["result.replay.predictions"]}
    assert prov["stripped"] == ["label_demo/eeee.json:result.replay.predictions"]
    assert prov["left_out"] == {"book cache or run log (machine-specific)": 3,
                                "checkpoint folder": 2, "hidden, lock or temporary file": 2,
                                "not a text result (.npz: weights, images or arrays)": 1,
                                "not a text result (.png: weights, images or arrays)": 1,
                                "not a text result (.pt: weights, images or arrays)": 2}
    assert (prov["profile"], prov["commit"], prov["commits_recorded"]) == (
        "reference", "abc1234", ["abc1234"])
    assert (prov["started"], prov["finished"]) == ("2026-12-03T19:17:00",
                                                   "2026-12-03T21:00:00+0000")
    assert prov["wall_seconds"] == {"chapters": {"p2_table2": 100.0, "scorecard": 2.0},
                                    "total": 103.5, "workers": 2, "html": None}
    assert prov["seeds"] == {"p2_table2": [0, 1, 2]}
    assert prov["datasets"] == {"synthetic": "phantom"}
    assert prov["machine"]["torch_threads"] == [1] and prov["machine"]["cores"] >= 1
    assert load_provenance(out) == prov
    # a second export replaces the folder as a whole (nothing stale stays)
    (out / "stale.json").write_text("{}")
    rx.export(results, out, repo=repo, commit="f00d")
    assert not (out / "stale.json").exists()
    assert load_provenance(out)["commit"] == "f00d"
    assert not list(tmp_path.glob(".reference*"))  # no temporary folder left


def test_export_refuses_an_unfinished_run(results, repo, tmp_path):
    timings = results / "book_timings_reference.json"
    data = json.loads(timings.read_text())
    data["p2_table2"]["status"] = "failed"
    del data["scorecard"]
    timings.write_text(json.dumps(data))
    with pytest.raises(ReferenceRunError, match=r"p2_table2 \(failed\), scorecard \(did not "
                                                r"run\)"):
        rx.export(results, tmp_path / "reference", repo=repo)
    assert not (tmp_path / "reference").exists()
    with pytest.raises(ReferenceRunError, match=r"book_timings_cpu\.json: absent"):
        rx.export(results, tmp_path / "reference", repo=repo, profile="cpu")
    with pytest.raises(ReferenceRunError, match="must lie outside"):
        rx.export(results, results / "reference", repo=repo)


def test_export_refuses_a_partial_run(results, repo, tmp_path):
    timings = results / "book_timings_reference.json"
    data = json.loads(timings.read_text())
    del data["wall_seconds"]
    timings.write_text(json.dumps(data))
    with pytest.raises(ReferenceRunError, match="no 'wall_seconds' of a whole-book run"):
        rx.export(results, tmp_path / "reference", repo=repo)


def test_cli_export_error_is_a_clear_message(tmp_path, capsys):
    assert main(["reference", "export", "--results-dir", str(tmp_path / "none"),
                 "--out", str(tmp_path / "ref")]) == 2
    assert "no such results folder" in capsys.readouterr().err
