"""covidlib.report.opening: the two lines that open every chapter."""

from __future__ import annotations

import pytest

from covidlib.report.opening import OpeningError, chapter_data, chapter_verdict
from covidlib.verdict import Verdict


def test_one_verdict_is_its_text():
    assert chapter_verdict({"mixed": Verdict("reproduced", "entropy beats random")}) == \
        "entropy beats random"


def test_verdicts_combine_worst_label_first():
    parts = {"mixed": Verdict("reproduced", "a"), "sep": Verdict("inconclusive", "b")}
    assert chapter_verdict(parts) == "inconclusive (mixed: a; sep: b)"


def test_strings_and_lists_are_listed_by_name():
    parts = {"P2-T5": ["ordering holds", Verdict("reproduced", "CB best")], "P2-T6": " x "}
    assert chapter_verdict(parts) == "P2-T5: ordering holds; CB best; P2-T6: x"
    assert chapter_verdict({"": "only this"}) == "only this"
    assert chapter_verdict({"": "**inconclusive**, n = 2."}) == "inconclusive, n = 2."


@pytest.mark.parametrize("parts", [{}, {"P4-T2": ""}, {"P4-T2": []}, {"P4-T2": 3}])
def test_bad_verdicts_name_the_part(parts):
    with pytest.raises(OpeningError, match="chapter verdict"):
        chapter_verdict(parts)


def test_data_names_dataset_and_kind():
    prov = {"dataset": "synthetic", "data": "synthetic"}
    assert chapter_data({"P2-T3": prov, "P2-T4": prov}) == "synthetic (phantom)"
    two = chapter_data({"P2-T3": prov, "P2-T5": {"dataset": "ma20-slices/sep"}})
    assert two == "P2-T3: synthetic (phantom); P2-T5: ma20-slices/sep (real 2-D derivative)"


def test_data_without_dataset_is_an_error():
    with pytest.raises(OpeningError, match=r"'P4-T2'.*no 'dataset'"):
        chapter_data({"P4-T2": {"profile": "cpu"}})
    with pytest.raises(OpeningError, match="no provenance"):
        chapter_data({})


def test_unresolved_glue_lists_cited_keys_no_output_glued():
    import nbformat

    from covidlib.report.book import unresolved_glue

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("**Verdict:** {glue:text}`a_verdict`, {glue}`b` and "
                                      "{glue:text}`c:.2f`\n\n```{glue:figure} fig\n```"),
        nbformat.v4.new_code_cell("glue('a_verdict', 'x', display=False)")]
    nb.cells[1].outputs = [nbformat.v4.new_output(
        "display_data", data={"text/plain": "'x'"}, metadata={"scrapbook": {"name": "a_verdict"}})]
    assert unresolved_glue(nb) == ["b", "c", "fig"]
    nb.cells[0].source = "no glue here"
    assert unresolved_glue(nb) == []
