"""Report helpers: Table 1 beside the papers, slice picking, the gallery figure."""

import matplotlib
import numpy as np
import pytest

from covidlib.data.types import Case
from covidlib.report import figures, tables

matplotlib.use("Agg")


def test_paper_rows_come_from_the_manifests_in_paper_order():
    rows = tables.paper_table1_rows("P2")
    assert list(rows) == ["COVID-19-A", "COVID-19-B", "COVID-19-C"]
    assert rows["COVID-19-B"] == {"cases": 9, "slices": 829, "slices_with_infection": 372,
                                  "infected_regions": 1488}
    assert list(tables.paper_table1_rows("P1")) == ["COVID-19-A", "COVID-19-B"]
    with pytest.raises(KeyError, match="P9"):
        tables.paper_table1_rows("P9")


def test_comparison_appends_our_row_and_names_the_matching_paper_dataset():
    ours = {"cases": None, "slices": 98, "slices_with_infection": 98,
            "pct_with_infection": 100.0, "infected_regions": 779}
    frame = tables.table1_comparison("P2", "covid-semiseg", ours)
    assert list(frame["source"]) == ["P2", "P2", "P2", "measured"]
    last = frame.iloc[-1]
    assert frame.index[-1] == "ours: covid-semiseg (= P2 COVID-19-A)"
    assert (last.iloc[1], last.iloc[3], last.iloc[4]) == ("n/a", "98 (100.0%)", 779)
    agree = tables.table1_agreement("P2", "covid-semiseg", ours)
    assert agree.loc["slices", "agrees"] == "yes"
    assert agree.loc["infected_regions", "difference"] == 3
    assert agree.loc["infected_regions", "agrees"] == "no (+0.4%)"  # 3/776 = 0.39 %
    assert agree.loc["cases", "ours"] == "unknown"
    assert tables.table1_agreement("P2", "synthetic", ours) is None


def _cases():
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[0, 2:4, 2:4] = 1
    mask[2, 5:7, 1:3] = 2
    image = np.full((4, 8, 8), -800.0, np.float32)
    return [Case("a", image, mask), Case("b", image.copy(), mask.copy())]


def test_pick_slices_mixes_infected_and_clean_and_fills_when_short():
    cases = _cases()  # infected: (0,0) (0,2) (1,0) (1,2); clean: (0,1) (0,3) (1,1) (1,3)
    picks = figures.pick_slices(cases, 4, seed=0, infected_fraction=0.75)
    infected = [p for p in picks if cases[p[0]].mask[p[1]].any()]
    assert len(picks) == 4 and len(infected) == 3
    assert figures.pick_slices(cases, 4, seed=0) == picks  # deterministic
    only_infected = figures.pick_slices(cases, 6, seed=1, infected_fraction=1.0)
    assert len(only_infected) == 6  # 4 infected, then filled with clean slices
    assert sum(cases[i].mask[z].any() for i, z in only_infected) == 4


def test_display_view_turns_hu_volumes_only():
    a = np.arange(4).reshape(2, 2)
    hu, u8 = _cases()[0], Case("s", np.zeros((1, 2, 2)), intensity="uint8")
    assert figures.display_view(hu, a).tolist() == [[3, 2], [1, 0]]
    assert figures.display_view(u8, a).tolist() == [[0, 1], [2, 3]]


def test_gallery_draws_one_panel_per_pick_with_oracle_points():
    fig = figures.slice_gallery(_cases(), n=4, seed=0, columns=2)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titled) == 4
    assert sum("1 region(s)" in t for t in titled) == 3
