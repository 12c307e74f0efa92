"""The papermill book runner: plan validation, failures reported by name, missing data."""

import json
from pathlib import Path

import nbformat
import pytest

from covidlib.report.book import BookError, execute_plan, load_plan, report

REPO = Path(__file__).resolve().parents[1]


def _notebook(path: Path, code: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("profile = 'cpu'\nresults_dir = ''\ndevice = 'auto'\nx = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def test_the_shipped_plan_is_valid_and_its_notebooks_exist():
    entries = load_plan(REPO / "book" / "plan.yml")
    toc = (REPO / "book" / "_toc.yml").read_text()
    for e in entries:
        assert (REPO / "notebooks" / f"{e.notebook}.ipynb").exists(), e.notebook
        assert f"_generated/{e.output}" in toc, f"{e.output} is not in book/_toc.yml"


@pytest.mark.parametrize(("text", "msg"), [
    ("[]", "non-empty list"),
    ("- {notebook: a, output: b}", "'title' must be"),
    ("- {notebook: a, output: b, title: t, colour: red}", "unknown keys"),
    ("- {notebook: a, output: b, title: t}\n- {notebook: c, output: b, title: u}", "used twice"),
    ("- [", "not valid YAML"),
])
def test_bad_plans_name_the_file_and_reason(tmp_path, text, msg):
    plan = tmp_path / "plan.yml"
    plan.write_text(text)
    with pytest.raises(BookError, match=msg) as err:
        load_plan(plan)
    assert str(plan) in str(err.value)


@pytest.mark.slow
def test_a_failing_notebook_is_reported_and_the_others_still_run(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "plan.yml").write_text(
        "- {notebook: bad, output: bad_out, title: Bad}\n"
        "- {notebook: good, output: good_out, title: Good, parameters: {x: 41}}\n")
    _notebook(tmp_path / "notebooks" / "bad.ipynb", "raise ValueError('broken on purpose')")
    _notebook(tmp_path / "notebooks" / "good.ipynb", "print('answer', x + 1)")
    outcomes = execute_plan(tmp_path, "cpu", tmp_path / "results", log=lambda s: None)
    assert [(o.entry.output, o.status) for o in outcomes] == [("bad_out", "failed"),
                                                              ("good_out", "ok")]
    assert "ValueError: broken on purpose" in outcomes[0].error
    text = report(outcomes)
    assert "bad_out (bad.ipynb) failed" in text and "broken on purpose" in text
    executed = nbformat.read(tmp_path / "book" / "_generated" / "good_out.ipynb", as_version=4)
    assert "answer 42" in executed.cells[-1].outputs[0]["text"]
    assert not (tmp_path / "book" / "_generated" / "bad_out.ipynb").exists()
    timings = json.loads((tmp_path / "results" / "book_timings_cpu.json").read_text())
    assert timings["good_out"]["status"] == "ok"


def test_unknown_profile_and_chapter_are_refused(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "plan.yml").write_text("- {notebook: a, output: a, title: A}\n")
    with pytest.raises(BookError, match="profile 'fast'"):
        execute_plan(tmp_path, "fast", tmp_path / "r")
    with pytest.raises(BookError, match="unknown chapters"):
        execute_plan(tmp_path, "cpu", tmp_path / "r", only=["zzz"])


def test_a_chapter_whose_data_is_absent_becomes_a_page_saying_so(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDLIB_DATA_PATH", str(tmp_path / "empty"))
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "plan.yml").write_text(
        "- {notebook: real, output: real_out, title: Real data, requires: covid-semiseg}\n")
    outcomes = execute_plan(tmp_path, "cpu", tmp_path / "results", log=lambda s: None)
    assert [o.status for o in outcomes] == ["missing-data"]
    page = nbformat.read(tmp_path / "book" / "_generated" / "real_out.ipynb", as_version=4)
    text = page.cells[0].source
    assert text.startswith("# Real data") and "not executed" in text
    assert "covid-semiseg" in text and str(tmp_path / "empty") in text
