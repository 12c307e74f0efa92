"""The loader of the papers' published numbers."""

import pytest

from covidlib.report import paper_values as pv


@pytest.fixture
def values_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(pv, "_HERE", tmp_path)
    pv.load.cache_clear()
    yield tmp_path
    pv.load.cache_clear()


def test_loads_artifacts_by_id(values_dir):
    (values_dir / "p2.yaml").write_text(
        "paper: P2\nartifacts:\n  P2-T2:\n    title: COVID-19-A\n    kind: table\n"
        "    source: P2 Table 2\n    rows: {PL: {dice: 0.54}}\n")
    assert pv.load("P2")["P2-T2"]["rows"]["PL"]["dice"] == 0.54
    assert pv.artifact("P2-T2")["source"] == "P2 Table 2"
    assert pv.available() == ["p2"]
    with pytest.raises(KeyError, match="P2-T9"):
        pv.artifact("P2-T9")


@pytest.mark.parametrize(("text", "msg"), [
    ("artifacts: []", "'artifacts' mapping"),
    ("artifacts:\n  P1-T2: {title: t, kind: table, source: s}", "must start with 'P2-'"),
    ("artifacts:\n  P2-T2: {title: t, kind: chart, source: s}", "kind: 'chart'"),
    ("artifacts:\n  P2-T2: {title: t, kind: table}", "source: missing"),
    ("artifacts: [", "not valid YAML"),
])
def test_malformed_files_name_the_file_and_key(values_dir, text, msg):
    (values_dir / "p2.yaml").write_text(text)
    with pytest.raises(pv.PaperValuesError, match=msg) as err:
        pv.load("p2")
    assert "p2.yaml" in str(err.value)


def test_unknown_paper(values_dir):
    with pytest.raises(pv.PaperValuesError, match="'P7'"):
        pv.load("P7")
    with pytest.raises(pv.PaperValuesError, match="no paper values"):
        pv.load("p3")
