"""The reproduction scorecard: atomic entries, one row per artifact, "not run" for the rest."""

import json
import math
import re

import numpy as np
import pytest

from covidlib.report import scorecard
from covidlib.report.scorecard import NOT_RUN, ScorecardError

PROV = {"profile": "cpu", "dataset": "synthetic", "data": "synthetic",
        "hardware": "Test CPU, 2 cores", "date": "2026-01-02", "torch": "2.14.1"}

KNOWN = {
    "P2-T2": {"title": "COVID-19-A segmentation", "kind": "table", "source": "P2 Table 2",
              "dataset": "COVID-19-A"},
    "P1-H": {"title": "7% of the effort, 90% of the Dice", "kind": "headline",
             "source": "P1 Sec 5.3", "dataset": "COVID-19-B", "values": {"effort": 0.07}},
    "P3-F9": {"title": "an extra figure", "kind": "figure", "source": "P3 Fig 9"},
    "P1-T1": {"title": "statistics", "kind": "table", "source": "P1 Table 1",
              "needs_data": ["medseg-9", "ma-20"]},
    "P4-S": {"title": "settings", "kind": "headline", "source": "P4 Sec 3",
             "values": {"model": "a residual 3D U-Net with deep supervision", "epochs": 300}},
    "P4-F2": {"title": "qualitative", "kind": "figure", "source": "P4 Fig 2", "values": {}},
}


@pytest.fixture(autouse=True)
def _known(monkeypatch, tmp_path_factory):
    monkeypatch.setattr(scorecard, "_known_ids", lambda: KNOWN)
    # no published reference run unless a test makes one (the checkout's reference/ aside)
    monkeypatch.setenv("COVIDLIB_REFERENCE", str(tmp_path_factory.mktemp("no-reference")))


def test_record_writes_one_json_file_atomically(tmp_path):
    path = scorecard.record(tmp_path, "P2-T2", paper={"PL": 0.6, "CB": 0.73},
                            ours={"PL": np.float32(0.5), "CB": 0.625}, verdict="ordering holds",
                            provenance=PROV)
    assert path == tmp_path / "scorecard" / "P2-T2.json"
    assert sorted(p.name for p in path.parent.iterdir()) == ["P2-T2.json"]  # no temp file left
    entry = json.loads(path.read_text())
    assert entry["ours"] == {"PL": 0.5, "CB": 0.625}  # numpy scalar unwrapped
    assert entry["provenance"]["hardware"] == "Test CPU, 2 cores"
    assert scorecard.load_entry(path)["verdict"] == "ordering holds"
    # a second record replaces the first
    scorecard.record(tmp_path, "P2-T2", paper=1, ours=2, verdict="v2", provenance=PROV)
    assert scorecard.entries(tmp_path)["P2-T2"]["ours"] == 2


@pytest.mark.parametrize(("kwargs", "msg"), [
    ({"artifact_id": "T2"}, "expected 'P<1-4>-<name>'"),
    ({"artifact_id": "P2-T99"}, "not in covidlib/report/paper_values"),
    ({"verdict": "  "}, "verdict must be a non-empty string"),
    ({"provenance": {"profile": "cpu"}}, "provenance lacks \\['dataset', 'hardware', 'date'\\]"),
    ({"ours": math.nan}, "P2-T2.ours: nan is not a finite number"),
    ({"ours": {"Dice": object()}}, "P2-T2.ours.Dice: object"),
    ({"paper": {1: 0.5}}, "mapping key 1 is not a string"),
])
def test_bad_records_are_refused_with_the_reason(tmp_path, kwargs, msg):
    args = {"artifact_id": "P2-T2", "paper": 0.7, "ours": 0.6, "verdict": "ok",
            "provenance": PROV, **kwargs}
    aid = args.pop("artifact_id")
    with pytest.raises(ScorecardError, match=msg):
        scorecard.record(tmp_path, aid, **args)
    assert not (tmp_path / "scorecard" / f"{aid}.json").exists()


def test_format_value_by_hand():
    assert scorecard.format_value(0.123456) == "0.123"
    assert scorecard.format_value(35328) == "35328"
    assert scorecard.format_value({"Dice": 0.78912, "n": 3}) == "Dice: 0.789; n: 3"
    assert scorecard.format_value([0.5, "x", None]) == "0.5, x, "
    assert scorecard.format_value(True) == "yes"
    assert scorecard.format_value(None) == ""


def test_table_has_every_artifact_and_says_not_run(tmp_path):
    scorecard.record(tmp_path, "P2-T2", paper={"Dice": 0.75}, ours={"Dice": 0.5},
                     verdict="lower than the paper", provenance=PROV)
    scorecard.record(tmp_path, "P1-H", paper=0.9, ours=0.8, verdict="holds", provenance=PROV)
    frame = scorecard.table(tmp_path)
    assert list(frame.columns) == scorecard.COLUMNS
    ids = list(frame["artifact"])
    # every expected artifact except P1-headline, which the paper-values headline P1-H stands for
    expected = [a for a in scorecard.EXPECTED_ARTIFACTS if a != "P1-headline"]
    assert set(ids) == set(expected) | {"P1-H", "P3-F9", "P4-S"}
    assert len(ids) == len(set(ids)) == len(scorecard.EXPECTED_ARTIFACTS) + 2
    # paper order: P1 rows first, P3's extra figure after P3-F3
    assert ids[:6] == ["P1-T1", "P1-F2", "P1-F5", "P1-F6", "P1-F7", "P1-H"]
    assert ids.index("P3-F9") == ids.index("P3-F3") + 1
    row = frame.set_index("artifact").loc["P2-T2"]
    assert (row["paper"], row["ours"], row["verdict"]) == ("Dice: 0.75", "Dice: 0.5",
                                                           "lower than the paper")
    assert (row["profile"], row["hardware"], row["date"]) == ("cpu", "Test CPU, 2 cores",
                                                              "2026-01-02")
    assert row["title"] == "COVID-19-A segmentation"
    missing = frame.set_index("artifact").loc["P3-F9"]
    assert (missing["ours"], missing["verdict"], missing["paper"]) == (NOT_RUN, NOT_RUN,
                                                                       "see P3 Fig 9")
    assert frame.set_index("artifact").loc["P4-T3", "paper"] == "(no paper values)"
    # an artifact whose data is absent says which data and how to fetch it
    t1 = frame.set_index("artifact").loc["P1-T1"]
    assert t1["verdict"] == NOT_RUN and t1["ours"] == (
        "not run: needs the medseg-9 and ma-20 data (`covidlib data fetch medseg-9`, then a "
        "00_datasets entry in book/plan.yml)")
    # long or empty paper values point to their source instead
    assert frame.set_index("artifact").loc["P4-S", "paper"] == "see P4 Sec 3"
    assert frame.set_index("artifact").loc["P4-F2", "paper"] == "see P4 Fig 2"
    assert scorecard.summary(frame) == {"artifacts": 25, "recorded": 2, "not_run": 23,
                                        "real_data": 0, "phantom": 2}
    html = scorecard.styled(frame).to_html()
    grey_rule = html.split("color: #888")[0].rsplit("}", 1)[-1]  # the selectors greyed out
    grey_rows = set(re.findall(r"_row(\d+)_col", grey_rule))
    recorded = {str(i) for i, v in enumerate(frame["verdict"]) if v != NOT_RUN}
    assert len(grey_rows) == 23 and not grey_rows & recorded
    assert "lower than the paper" in html
    shown = scorecard.display_frame(frame).set_index("artifact")
    assert list(shown.columns) == ["what", "paper", "reference run", "reference verdict",
                                   "this build", "verdict", "data", "run"]
    assert shown.loc["P2-T2", "reference run"] == "not in the reference run"
    assert shown.loc["P2-T2", "run"] == "synthetic · cpu · Test CPU, 2 cores · 2026-01-02"
    assert shown.loc["P2-T2", "data"] == "phantom"
    assert shown.loc["P3-F9", "run"] == ""


def test_a_corrupt_entry_names_its_file(tmp_path):
    folder = tmp_path / "scorecard"
    folder.mkdir()
    (folder / "P2-T3.json").write_text("{not json")
    with pytest.raises(ScorecardError, match=r"P2-T3.json: not valid JSON"):
        scorecard.table(tmp_path)
    (folder / "P2-T3.json").write_text(json.dumps({"format": scorecard.FORMAT,
                                                   "artifact": "P2-T4", "verdict": "x",
                                                   "provenance": PROV}))
    with pytest.raises(ScorecardError, match="holds artifact 'P2-T4', not 'P2-T3'"):
        scorecard.entries(tmp_path)


def test_the_shipped_paper_values_load(monkeypatch):
    monkeypatch.undo()
    frame = scorecard.table("/nonexistent-results")
    assert set(scorecard.EXPECTED_ARTIFACTS) - {"P1-headline"} <= set(frame["artifact"])
    assert (frame["verdict"] == NOT_RUN).all()


@pytest.mark.parametrize(("prov", "kind"), [
    ({"dataset": "synthetic"}, "phantom"),                 # the phantom's manifest
    ({"dataset": "covid-semiseg/mixed"}, "real"),          # name up to the split
    ({"dataset": "COVID-19-A"}, "real"),                   # a paper alias of covid-semiseg
    ({"dataset": "no-such-set", "data": "synthetic"}, "phantom"),  # old entries: data field
    ({"dataset": "no-such-set", "data": "real"}, "real"),
    ({"dataset": "no-such-set"}, ""),                      # nothing to go by: left empty
])
def test_data_kind_comes_from_the_manifest(prov, kind):
    assert scorecard.data_kind(prov) == kind


def test_data_kind_reads_the_manifests_data_kind(monkeypatch):
    from covidlib.data import manifest as manifest_mod

    class Fake:
        name, aliases, data_kind = "ma20-slices", {"P2": "COVID-19-C"}, "real 2-D derivative"

    monkeypatch.setattr(manifest_mod, "list_datasets", lambda: ["ma20-slices"])
    monkeypatch.setattr(manifest_mod, "load_manifest", lambda name: Fake())
    assert scorecard.data_kind({"dataset": "ma20-slices/sep"}) == "real 2-D derivative"
    assert scorecard.data_kind({"dataset": "COVID-19-C"}) == "real 2-D derivative"


def test_data_column_override_and_real_data_count(tmp_path):
    real = {**PROV, "dataset": "covid-semiseg/mixed", "data": "real"}
    scorecard.record(tmp_path, "P2-T2", paper=0.7, ours=0.6, verdict="holds", provenance=real)
    scorecard.record(tmp_path, "P1-H", paper=0.9, ours=0.8, verdict="holds", provenance=PROV)
    # a phantom-named run that the chapter says rests on a real 2-D derivative
    path = scorecard.record(tmp_path, "P3-F9", paper=1, ours=1, verdict="holds",
                            provenance=PROV, data="real 2-D derivative")
    assert json.loads(path.read_text())["data"] == "real 2-D derivative"
    frame = scorecard.table(tmp_path).set_index("artifact")
    assert frame.loc["P2-T2", "data"] == "real"
    assert frame.loc["P1-H", "data"] == "phantom"
    assert frame.loc["P3-F9", "data"] == "real 2-D derivative"
    assert frame.loc["P2-T3", "data"] == ""  # not run: no data
    counts = scorecard.summary(frame.reset_index())
    assert (counts["recorded"], counts["real_data"], counts["phantom"]) == (3, 2, 1)
    with pytest.raises(ScorecardError, match="data='fake' is not one of"):
        scorecard.record(tmp_path, "P2-T2", paper=0.7, ours=0.6, verdict="holds",
                         provenance=real, data="fake")


def test_reference_columns_come_from_the_published_run(tmp_path):
    results, ref = tmp_path / "results", tmp_path / "reference"
    scorecard.record(results, "P2-T2", paper={"Dice": 0.75}, ours={"Dice": 0.5},
                     verdict="not reproduced", provenance=PROV)
    scorecard.record(ref, "P2-T2", paper={"Dice": 0.75}, ours={"Dice": 0.61234},
                     verdict="reproduced: all orderings hold", provenance=PROV)
    scorecard.record(ref, "P3-F9", paper=1, ours=0.25, verdict="inconclusive",
                     provenance=PROV)
    frame = scorecard.table(results, reference=ref).set_index("artifact")
    assert list(frame.reset_index().columns) == scorecard.COLUMNS
    assert (frame.loc["P2-T2", "reference"], frame.loc["P2-T2", "reference verdict"]) == (
        "Dice: 0.612", "reproduced: all orderings hold")
    assert frame.loc["P2-T2", "ours"] == "Dice: 0.5"
    # recorded by the reference run only: its columns filled, this build's says not run
    assert (frame.loc["P3-F9", "reference"], frame.loc["P3-F9", "verdict"]) == ("0.25", NOT_RUN)
    assert frame.loc["P2-T3", "reference"] == "not in the reference run"
