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


def _recorder() -> tuple[dict, object]:
    glued: dict = {}
    return glued, lambda name, value: glued.__setitem__(name, value)


def test_runtime_line_names_profile_seeds_and_data():
    from covidlib.report.opening import runtime_line

    assert runtime_line(1.25, "cpu", [0, 1], "synthetic") == \
        "chapter ran in 1.2 min (cpu profile, 2 seed(s), synthetic)"
    assert runtime_line(0.04, "gpu") == "chapter ran in 0.0 min (gpu profile)"


def test_glue_runtime_glues_rounded_minutes():
    from covidlib.report.opening import glue_runtime

    glued, rec = _recorder()
    # 100 s -> 1.666.. min -> glued 1.7, printed "1.7"
    line = glue_runtime("p1_f5", 10.0, "cpu", [0], "ma20-slices", now=110.0, glue=rec)
    assert glued == {"p1_f5_minutes": 1.7}
    assert line == "chapter ran in 1.7 min (cpu profile, 1 seed(s), ma20-slices)"
    with pytest.raises(OpeningError, match=r"glue_runtime 'p3'.*lies after"):
        glue_runtime("p3", 20.0, "cpu", now=10.0, glue=rec)


def test_glue_all_and_convergence_rule():
    from covidlib.report.opening import convergence_rule, glue_all

    glued, rec = _recorder()
    assert glue_all({"a": 1, "b": "x"}, glue=rec) == ["a", "b"]
    assert glued == {"a": 1, "b": "x"}
    with pytest.raises(OpeningError, match="name ''"):
        glue_all({"": 1}, glue=rec)
    glued.clear()
    # covidlib.verdict.baseline_converged(window=3, tol=0.01)
    assert convergence_rule("p3", glue=rec) == {"window": 3, "tol": 0.01}
    assert glued == {"p3_conv_window": 3, "p3_conv_tol": 0.01}


def test_convergence_rule_reads_a_wrapper_and_falls_back():
    from covidlib.report.opening import convergence_rule

    glued, rec = _recorder()

    def wrapper(curve, window: int = 5):  # no tol: baseline_converged's 0.01 applies
        return None

    assert convergence_rule("p2", rule=wrapper, glue=rec) == {"window": 5, "tol": 0.01}
    assert glued == {"p2_conv_window": 5, "p2_conv_tol": 0.01}
