"""The reference column of the datasets, P4-T1 and label-demo tables (or a one-line note
where the reference run has no numbers)."""

import json

import pandas as pd

from covidlib.report import reference, scorecard
from covidlib.report.reference import MISSING

PROV = {"profile": "reference", "dataset": "covid-semiseg", "hardware": "Test CPU",
        "date": "2026-12-03", "commit": "abc1234"}

# ``ref``: the empty default reference folder of conftest.py.


def _agreement():
    return pd.DataFrame({"statistic": ["slices", "infected_regions"], "paper": [98, 776],
                         "ours": [98, 779], "agrees": ["yes", "no (+0.4%)"]}
                        ).set_index("statistic")


def test_entry_beside_puts_the_reference_entry_between_paper_and_this_build(ref):
    scorecard.record(ref, "P2-T1", paper={"slices": 98}, provenance=PROV, verdict="ok",
                     ours={"slices": 97, "infected_regions": 779})
    out = reference.entry_beside(_agreement(), "P2-T1", "covid-semiseg")
    assert list(out.columns) == ["paper", reference.LABEL, reference.THIS_BUILD, "agrees"]
    assert list(out[reference.LABEL]) == ["97", "779"]
    assert list(out[reference.THIS_BUILD]) == [98, 779]


def test_entry_beside_says_so_in_one_line_when_the_reference_has_no_numbers(ref):
    note = reference.entry_beside(_agreement(), "P2-T1", "covid-semiseg")
    assert isinstance(note, reference.Note) and "no P2-T1 numbers" in note
    assert "\n" not in note and note.frame.equals(_agreement())  # the table, then the line
    assert note._repr_markdown_() is None
    shown = note._repr_html_()
    assert shown.index("infected_regions") < shown.index("<em>Reference run: no P2-T1")
    scorecard.record(ref, "P2-T1", paper={}, ours={"slices": 97}, verdict="ok",
                     provenance=PROV)
    other = reference.entry_beside(_agreement(), "P2-T1", "ma20-slices")
    assert "for `ma20-slices` (it ran on `covid-semiseg`)" in other
    assert reference.entry_beside(None, "P1-T1", "synthetic") is None  # no row to show
    alone = reference._absent("P1-T1", "synthetic")
    assert alone._repr_markdown_() == str(alone) and alone._repr_html_() is None


def test_entry_table_shows_this_builds_recorded_entry_beside_the_reference(ref, tmp_path):
    results = tmp_path / "results"
    scorecard.record(results, "P4-T1", paper={"trainable parameters": 4806481},
                     ours={"trainable parameters": 4806481, "rows matching": 25},
                     verdict="equal", provenance=PROV)
    out = reference.entry_table("P4-T1", results)
    assert list(out.columns) == ["paper", reference.LABEL, reference.THIS_BUILD]
    assert list(out[reference.LABEL]) == [MISSING, MISSING]
    scorecard.record(ref, "P4-T1", paper={}, ours={"trainable parameters": 4806481,
                                                   "rows matching": 24},
                     verdict="equal", provenance=PROV)
    out = reference.entry_table("P4-T1", results)
    assert out.loc["rows matching"].tolist() == ["", "24", "25"]
    assert out.loc["trainable parameters", "paper"] == "4806481"
    assert "recorded no scorecard entry" in reference.entry_table("P4-T1", tmp_path / "none")


def _history(dice):
    """Cycles 0..2: 5 answers per cycle, 2 of them clicks on infection."""
    return [{"cycle": c, "labels": 5 * c, "points": 2 * c, "cost_seconds": 15.0 * c,
             "test_dice": d} for c, d in enumerate(dice)]


def _demo(folder, name, strategy, seed, dice, dataset="ma20-slices"):
    (folder / "label_demo").mkdir(exist_ok=True)
    record = {"config": {"dataset": dataset, "seed": seed, "session": {"strategy": strategy},
                         "settings": {"target_dice": None}},
              "result": {"history": _history(dice)}}
    (folder / "label_demo" / f"{name}.json").write_text(json.dumps(record))


def test_label_demo_table_rebuilds_the_reference_summary_from_its_runs(ref):
    from covidlib.experiments import label_demo

    _demo(ref, "a", "entropy", 0, [0.1, 0.5, 0.6])
    _demo(ref, "b", "random", 0, [0.1, 0.2, 0.4])
    _demo(ref, "c", "entropy", 0, [0.9, 0.9, 0.9], dataset="synthetic")  # another dataset
    ours = label_demo.summary(label_demo.curves_frame(
        {("entropy", 0): type("R", (), {"history": _history([0.1, 0.3, 0.3])}),
         ("random", 0): type("R", (), {"history": _history([0.1, 0.2, 0.2])})}), 0.27)
    out = reference.label_demo_table(ours, "ma20-slices")
    label = f"{reference.LABEL} (target 0.54)"  # 90 % of the reference's best final 0.6
    assert list(out.columns[:3]) == ["strategy", f"final Dice: {label}",
                                     "final Dice: this build"]
    assert list(out[f"final Dice: {label}"]) == ["0.6", "0.4"]
    assert list(out[f"answers to target: {label}"]) == ["10", "n/a"]
    assert out["answers to target: this build"].iloc[0] == 5.0  # ours: target 0.27
    assert out["answers to target: this build"].isna().iloc[1]
    assert list(out[f"on infection: {label}"]) == ["0.4", "0.4"]
    note = reference.label_demo_table(ours, "synthetic")  # one strategy only: no comparison
    assert isinstance(note, reference.Note) and "`synthetic`" in note and note.frame is ours


def test_label_demo_paragraph_states_the_reference_annotators_numbers(ref):
    assert "No reference run is published" in reference.label_demo_paragraph("ma20-slices")
    (ref / "provenance.json").write_text(json.dumps({
        "format": reference.FORMAT, "profile": "reference", "commit": "abc1234",
        "finished": "2026-12-03T21:00:00+0000", "machine": {"cpu": "Test CPU", "cores": 2}}))
    assert "published no entropy-vs-random annotator runs on `ma20-slices`" in \
        reference.label_demo_paragraph("ma20-slices")
    _demo(ref, "a", "entropy", 0, [0.1, 0.5, 0.6])
    _demo(ref, "b", "random", 0, [0.1, 0.2, 0.4])
    text = reference.label_demo_paragraph("ma20-slices")
    assert "(1 seed per strategy)" in text
    assert ("**entropy** ended at Dice 0.600 (sd 0.000) and 10 answers to reach Dice 0.54 "
            "(1/1 seeds), with 40 % of its questions on infection") in text
    assert "**random** ended at Dice 0.400 (sd 0.000) and never reached Dice 0.54" in text
