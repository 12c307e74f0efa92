"""Table 1 statistics: slices with infection and connected infected regions (4 vs 8)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidlib.data.errors import DataError
from covidlib.data.stats import TABLE1_COLUMNS, count_regions, dataset_stats, table1
from covidlib.data.types import Case

# Slice 0 of the hand-drawn volume. With infection labels {1, 2}:
#   the diagonal pair (0,0)-(1,1) is 1 region with 8-connectivity, 2 with 4-connectivity;
#   (0,3)-(1,3) is 1 region; (3,0)-(3,1) (label 2) is 1 region; label 3 is not infection.
SLICE0 = np.array(
    [
        [1, 0, 0, 1],
        [0, 1, 0, 1],
        [0, 0, 0, 0],
        [2, 2, 0, 3],
    ],
    np.uint8,
)


def hand_volume() -> Case:
    mask = np.zeros((3, 4, 4), np.uint8)
    mask[0] = SLICE0
    mask[2, 1:3, 1:3] = 1  # one square region; slice 1 is empty
    return Case("v", np.zeros((3, 4, 4), np.float32), mask=mask)


def test_count_regions_4_vs_8():
    b = np.isin(SLICE0, [1, 2])
    assert count_regions(b, connectivity=1) == 4
    assert count_regions(b, connectivity=2) == 3
    with pytest.raises(ValueError, match="connectivity"):
        count_regions(b, connectivity=4)


def test_dataset_stats_hand_volume():
    cases = [hand_volume(), Case("s", np.zeros((1, 2, 2), np.float32),
                                 mask=np.array([[[0, 1], [1, 0]]], np.uint8))]
    s8 = dataset_stats(cases, infection_labels=[1, 2])
    # slices: 3 + 1; with infection: slice 0, slice 2 and the single slice = 3
    # regions (8): 3 + 0 + 1 + 1 (the anti-diagonal pair) = 5
    assert s8 == {"cases": 2, "slices": 4, "slices_with_infection": 3,
                  "pct_with_infection": 75.0, "infected_regions": 5}
    s4 = dataset_stats(cases, infection_labels=[1, 2], connectivity=1)
    assert s4["infected_regions"] == 4 + 0 + 1 + 2
    anything = dataset_stats(cases, infection_labels=None)  # label 3 counts as well
    assert anything["infected_regions"] == 6


def test_infection_labels_from_case_meta():
    case = hand_volume()
    case.meta["infection_labels"] = (1,)  # label 2 is then not infection
    s = dataset_stats([case])
    # slice 0 (8-nbr): the diagonal pair and the right column = 2; slice 2: 1
    assert s["infected_regions"] == 3 and s["slices_with_infection"] == 2


def test_slice_cases_of_one_stack_count_as_one_case():
    cases = [Case(f"s_{z:03d}", np.zeros((1, 2, 2), np.float32),
                  mask=np.zeros((1, 2, 2), np.uint8), meta={"stack": "s"}) for z in range(4)]
    s = dataset_stats(cases, [1])
    assert s["cases"] == 1 and s["slices"] == 4 and s["slices_with_infection"] == 0
    assert s["infected_regions"] == 0 and s["pct_with_infection"] == 0.0
    assert math.isnan(dataset_stats([], [1])["pct_with_infection"])


def test_case_without_mask_is_an_error():
    with pytest.raises(DataError, match="nomask: no infection mask"):
        dataset_stats([Case("nomask", np.zeros((1, 2, 2), np.float32))], [1])


def test_table1_format():
    df = table1({
        "COVID-19-B": {"cases": 9, "slices": 829, "slices_with_infection": 372,
                       "infected_regions": 1488},
        "ours": {"cases": 2, "slices": 4, "slices_with_infection": 3,
                 "pct_with_infection": 75.0, "infected_regions": 5},
    })
    assert list(df.columns) == list(TABLE1_COLUMNS)
    assert df.loc["COVID-19-B", "# Slices with Infections (%)"] == "372 (44.9%)"
    assert df.loc["ours", "# Slices with Infections (%)"] == "3 (75.0%)"
    assert df.loc["COVID-19-B", "# Infected Regions"] == 1488
    rows = table1([{"name": "COVID-19-C", "cases": 20, "slices": 3520,
                    "slices_with_infection": 1841, "infected_regions": 5608}])
    assert rows.loc["COVID-19-C", "# Slices with Infections (%)"] == "1841 (52.3%)"


@pytest.mark.realdata
def test_real_covid_semiseg_reproduces_p2_table1_row_a(semiseg_cases):
    m, cases = semiseg_cases
    s8 = dataset_stats(cases, m.infection_labels)
    s4 = dataset_stats(cases, m.infection_labels, connectivity=1)
    # P2 Table 1, COVID-19-A: 98 slices, 98 (100.0%) with infection, 776 infected regions
    assert s8["slices"] == 98 and s8["slices_with_infection"] == 98
    assert s8["pct_with_infection"] == 100.0
    # measured on the released files: 8-connectivity 779 (0.4% above P2), 4-connectivity 805
    assert s8["infected_regions"] == 779 and s4["infected_regions"] == 805
    assert abs(s8["infected_regions"] - 776) < abs(s4["infected_regions"] - 776)
    # the release has no patient ids, so each slice counts as a case (P2 says 60 patients)
    assert s8["cases"] == 98
    df = table1({"P2 COVID-19-A": m.paper_stats["P2"], "ours": s8})
    assert df.loc["P2 COVID-19-A", "# Slices with Infections (%)"] == "98 (100.0%)"
    assert df.loc["ours", "# Infected Regions"] == 779
