"""The published reference run beside this build: beside(), the prose, the wall-time table."""

import json

import pandas as pd
import pytest

from covidlib.report import reference, scorecard
from covidlib.report.reference import MISSING

PROV = {"profile": "reference", "dataset": "ma20-slices/mixed", "hardware": "Test CPU",
        "date": "2026-12-03", "commit": "abc1234"}

# ``ref``: the empty default reference folder of conftest.py.


def _publish(folder, **extra):
    prov = {"format": reference.FORMAT, "profile": "reference", "commit": "abc1234",
            "started": "2026-12-03T19:17:00", "finished": "2026-12-03T21:00:00+0000",
            "machine": {"cpu": "Test CPU", "cores": 2, "ram_gib": 23.5, "torch": "2.14.1",
                        "torch_threads": [1]},
            "wall_seconds": {"chapters": {"p2_table2": 1800.0, "p1_b": 600.0, "gpu": 6.0},
                             "total": 2700.0, "workers": 2},
            "seeds": {"p2_table2": [0, 1, 2]},
            "datasets": {"ma20-slices": "real 2-D derivative"}, **extra}
    (folder / "provenance.json").write_text(json.dumps(prov))


def test_beside_flat_table_matches_rows_on_keys_and_says_what_is_missing(ref):
    ours = pd.DataFrame({"split": ["mixed", "mixed", "sep"],
                         "heuristic": ["random", "entropy", "random"],
                         "paper": ["0.7", "0.8", ""],
                         "Dice": ["0.100 ± 0.010", "0.200 ± 0.020", "0.300"]})
    (ref / "p1").mkdir()
    pd.DataFrame({"split": ["mixed", "mixed"], "heuristic": ["entropy", "random"],
                  "Dice": ["0.500 ± 0.050", "0.400 ± 0.040"]}).to_csv(
        ref / "p1" / "fig5.csv", index=False)
    out = reference.beside(ours, "p1/fig5.csv", keys=["split", "heuristic"])
    assert list(out.columns) == ["split", "heuristic", "paper", "Dice: reference run",
                                 "Dice: this build"]
    assert list(out["Dice: reference run"]) == ["0.400 ± 0.040", "0.500 ± 0.050", MISSING]
    assert list(out["Dice: this build"]) == list(ours["Dice"])
    assert list(ours.columns) == ["split", "heuristic", "paper", "Dice"]  # input untouched


def test_beside_two_level_header_and_derive_from_the_chapter_csv(ref):
    def shown(frame):  # the chapter's own display function
        cols = pd.MultiIndex.from_tuples([("Dice", "paper"), ("Dice", "ours")])
        pairs = zip(frame["dice_mean"], frame["dice_std"], strict=True)
        return pd.DataFrame({("Dice", "paper"): frame["dice_paper"],
                             ("Dice", "ours"): [f"{m:.2f} ± {s:.2f}" for m, s in pairs]},
                            columns=cols).set_axis(list(frame["label"]))

    ours = pd.DataFrame({"label": ["PL", "CB"], "dice_paper": [0.5, 0.6],
                         "dice_mean": [0.1, 0.2], "dice_std": [0.01, 0.02]})
    (ref / "p2").mkdir()
    pd.DataFrame({"label": ["CB"], "dice_paper": [0.6], "dice_mean": [0.55],
                  "dice_std": [0.05]}).to_csv(ref / "p2" / "T.csv", index=False)
    out = reference.beside(shown(ours), "p2/T.csv", derive=shown, label="reference run (3)")
    assert list(out.columns) == [("Dice", "paper"), ("Dice", "reference run (3)"),
                                 ("Dice", "this build")]
    assert list(out[("Dice", "reference run (3)")]) == [MISSING, "0.55 ± 0.05"]
    assert list(out[("Dice", "this build")]) == ["0.10 ± 0.01", "0.20 ± 0.02"]


def test_beside_never_fails_on_an_absent_or_unusable_reference(ref):
    ours = pd.DataFrame({"method": ["a"], "Mean Dice (paper)": ["0.7"],
                         "Mean Dice (ours)": [0.123456]})
    out = reference.beside(ours, "p4/absent.csv", keys=["method"])
    assert list(out.columns) == ["method", "Mean Dice (paper)", "Mean Dice (reference run)",
                                 "Mean Dice (this build)"]
    assert out.iloc[0, 2] == MISSING
    (ref / "p4").mkdir()
    (ref / "p4" / "T.csv").write_text("method,Mean Dice (ours)\na,0.5\n")
    with pytest.warns(UserWarning, match="could not summarise it"):
        out = reference.beside(ours, "p4/T.csv", keys=["method"], derive=lambda f: f["nope"])
    assert out.iloc[0, 2] == MISSING
    out = reference.beside(ours, "p4/T.csv", keys=["method"])
    assert out.iloc[0, 2] == "0.5"
    assert reference.beside(ours, None, keys=["method"]).iloc[0, 2] == MISSING
    with pytest.raises(reference.ReferenceRunError, match="not in the table's columns"):
        reference.beside(ours, None, keys=["method"], columns=["Dice"])
    with pytest.raises(reference.ReferenceRunError, match="inside the reference folder"):
        reference.read_table("../results/x.csv")


@pytest.mark.parametrize(("text", "label"), [
    ("reproduced: every ordering holds", "reproduced"),
    ("not reproduced with a converged baseline, mechanism absent", "not reproduced"),
    ("**inconclusive**, the fully supervised baseline has not converged", "inconclusive"),
    ("heart: not reproduced ...; infection: inconclusive", "inconclusive"),
    ("drawn: compare by eye", ""),
])
def test_verdict_label_uses_the_three_way_vocabulary(text, label):
    assert reference.verdict_label(text) == label


def test_paragraph_without_a_published_run_says_so(ref):
    text = reference.paragraph(["P2-T2"])
    assert "No reference run is published" in text and "P2-T2" not in text


def test_paragraph_gives_value_paper_verdict_baseline_and_provenance(ref):
    _publish(ref)
    scorecard.record(ref, "P2-T2", paper={"Dice": 0.65}, ours={"Dice": 0.71234},
                     verdict="not reproduced with a converged baseline, mechanism absent: x",
                     provenance=PROV, note="3 seed(s); mean over seeds")
    text = reference.paragraph(["P2-T2", "P2-F3"])
    assert "profile `reference`" in text and "commit `abc1234`" in text
    assert "Test CPU, 2 cores, 23.5 GiB RAM, torch 2.14.1 with 1 thread(s)" in text
    assert "ma20-slices (real 2-D derivative)" in text and "3 seed(s) per chapter" in text
    assert "after 0.8 h" in text
    assert ("- **P2-T2** (ma20-slices/mixed; 3 seed(s); mean over seeds): Dice 0.712 (paper "
            "0.65). Verdict **not reproduced**, with a converged fully supervised baseline: not "
            "reproduced with a converged baseline") in text
    assert f"- **P2-F3**: {MISSING}" in text


def test_timings_table_from_provenance(ref):
    assert reference.timings_table() is None
    assert "not published yet" in reference.timings_markdown()
    _publish(ref)
    table = reference.timings_table()
    assert list(table.index) == ["p2_table2", "p1_b", "gpu", "sum of the chapters",
                                 "whole book (wall time, 2 chapters at a time)"]
    assert list(table["minutes"]) == [30.0, 10.0, 0.1, 40.1, 45.0]
    assert "profile `reference`" in reference.timings_markdown()


def test_a_foreign_provenance_file_is_refused(ref):
    (ref / "provenance.json").write_text('{"format": "other"}')
    with pytest.raises(reference.ReferenceRunError, match="not a reference provenance file"):
        reference.load_provenance()


def test_column_names_replace_ours_where_it_is_named(ref):
    ours = pd.DataFrame({"q": ["a"], "ours: test Dice": ["0.1"], "P3": ["0.7"]})
    out = reference.beside(ours, None, keys=["q"], columns=["ours: test Dice"])
    assert list(out.columns) == ["q", "reference run: test Dice", "this build: test Dice", "P3"]


def test_artifact_table_from_the_reference_scorecard_entry(ref):
    scorecard.record(ref, "P1-headline", paper={"full Dice": 0.84}, provenance=PROV,
                     ours={"full Dice": 0.61, "AL Dice": 0.4}, verdict="not reproduced")
    table = reference.artifact_table("P1-headline", {"full Dice": 0.84},
                                     {"full Dice": 0.5, "effort fraction": 0.27})
    assert table.to_dict("index") == {
        "full Dice": {"paper": "0.84", "reference run": "0.61", "this build": "0.5"},
        "effort fraction": {"paper": "", "reference run": MISSING, "this build": "0.27"},
        "AL Dice": {"paper": "", "reference run": "0.4", "this build": "n/a"}}


def test_describe_counts_the_reference_verdicts(ref):
    assert "No reference run is published" in reference.describe()
    _publish(ref)
    for aid, verdict in (("P2-T2", "reproduced: x"), ("P2-T3", "inconclusive, y"),
                         ("P2-F3", "drawn: compare by eye")):
        scorecard.record(ref, aid, paper=1, ours=1, verdict=verdict, provenance=PROV)
    text = reference.describe()
    assert text.endswith("recorded 3 artifacts: 1 reproduced, 0 not reproduced, 1 "
                         "inconclusive, and 1 with a verdict in other words (e.g. figures to "
                         "compare by eye).")


def test_p2_table_puts_the_reference_seeds_in_the_header(ref):
    from types import SimpleNamespace

    frame = pd.DataFrame({"loss": ["fully", "pl"], "label": ["Fully Supervised", "PL"],
                          "n_seeds": [2, 2], "dice_paper": [0.78, 0.12],
                          "dice_mean": [0.475, 0.111], "dice_std": [0.013, 0.002]})
    report = SimpleNamespace(artifact="P2-T5", runs=SimpleNamespace(dataset="ma20-slices"),
                             frame=frame)
    (ref / "p2").mkdir()
    frame.assign(n_seeds=3, dice_mean=[0.6, 0.2]).iloc[:1].to_csv(
        ref / "p2" / "P2-T5_ma20-slices.csv", index=False)
    out = reference.p2_table(report)
    assert list(out.columns) == [("Dice", "paper"), ("Dice", "reference run (3 seeds)"),
                                 ("Dice", "this build")]
    assert list(out[("Dice", "reference run (3 seeds)")]) == ["0.60 ± 0.01", MISSING]


def test_every_reference_paragraph_a_chapter_cites_is_glued():
    import re
    from pathlib import Path

    cited_any = 0
    for path in sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        text = {kind: "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == kind)
                for kind in ("markdown", "code")}
        for key in re.findall(r"\{glue:md\}\s+(\S+)", text["markdown"]):
            cited_any += 1
            glued = rf'glue\(\s*"{key}",\s*Markdown\(reference\.'
            # or through a helper that glues it (tests/test_chapter_glue.py checks they do)
            prefix = key.removesuffix("_reference")
            helper = (rf'chapter_glue\.(reports_opening|opening_values)\(\s*"{prefix}",'
                      if key != "label_demo_reference" else r"label_demo_glue\.chapter_values\(")
            assert re.search(glued, text["code"]) or re.search(helper, text["code"]), (
                path.name, key)
    assert cited_any >= 10  # P1 (4), P2 (2), P3, P4 (2) and the scorecard page
