"""reference.beside(derive=...): a reference table the chapter's summary cannot read (another
code state: a missing column, a wrong type or value) is shown as missing with a warning; any
other error of the summary function (a bug) propagates."""

import pandas as pd
import pytest

from covidlib.report import reference
from covidlib.report.reference import MISSING


@pytest.fixture
def ours(tmp_path):
    (tmp_path / "p4").mkdir()
    (tmp_path / "p4" / "T.csv").write_text("method,Mean Dice (ours)\na,0.5\n")
    return pd.DataFrame({"method": ["a"], "Mean Dice (ours)": [0.25]})


def _raise(exc):
    def derive(frame):
        raise exc
    return derive


@pytest.mark.parametrize("exc", [KeyError("Dice"), ValueError("bad value"),
                                 TypeError("not a number"), IndexError("row 3")])
def test_a_table_from_another_code_state_is_shown_missing(ours, tmp_path, exc):
    with pytest.warns(UserWarning, match=f"could not summarise it \\({type(exc).__name__}"):
        out = reference.beside(ours, "p4/T.csv", keys=["method"], derive=_raise(exc),
                               root=tmp_path)
    assert out.iloc[0, 1] == MISSING


@pytest.mark.parametrize("exc", [RuntimeError("bug in the summary"),
                                 ZeroDivisionError("division by zero"),
                                 AttributeError("'DataFrame' object has no attribute 'x'")])
def test_an_unexpected_error_of_the_summary_propagates(ours, tmp_path, exc):
    with pytest.raises(type(exc), match=str(exc).split("'")[0] or "."):
        reference.beside(ours, "p4/T.csv", keys=["method"], derive=_raise(exc), root=tmp_path)
