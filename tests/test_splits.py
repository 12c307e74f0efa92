"""Splits: by-case ("separate") and by-slice-fraction ("mixed", first 45% / next 5% / rest)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from covidlib.data.errors import DataError
from covidlib.data.splits import fraction_bounds, make_split
from covidlib.data.types import Case

MIXED = {"method": "by-slice-fraction", "train": 0.45, "val": 0.05, "test": 0.50}


def vol(cid: str, z: int, **meta) -> Case:
    return Case(cid, np.zeros((z, 2, 2), np.float32), meta=meta)


@pytest.mark.parametrize(
    ("z", "n_train", "n_val", "n_test"),
    [
        (10, 4, 1, 5),  # floor(4.5) = 4, floor(5.0) = 5
        (21, 9, 1, 11),  # floor(9.45) = 9, floor(10.5) = 10
        (100, 45, 5, 50),
        (1, 0, 0, 1),
        (19, 8, 1, 10),  # floor(8.55) = 8, floor(9.5) = 9
    ],
)
def test_slice_fraction_rounding(z, n_train, n_val, n_test):
    assert fraction_bounds(z) == (n_train, n_train + n_val)
    split = make_split([vol("a", z)], MIXED)
    assert split["train"] == [("a", k) for k in range(n_train)]
    assert split["val"] == [("a", k) for k in range(n_train, n_train + n_val)]
    assert split["test"] == [("a", k) for k in range(n_train + n_val, z)]


def test_slice_fraction_matches_the_authors_float_code():
    # the authors write int(0.45 * Z) and int(0.5 * Z); the exact fractions agree for all Z
    for z in range(1, 2000):
        assert fraction_bounds(z) == (int(0.45 * z), int(0.5 * z))


def test_slice_fraction_over_listed_cases_in_order():
    cases = [vol("b", 10), vol("a", 21), vol("c", 3)]
    spec = SimpleNamespace(**MIXED, cases=["a", "b"])  # attribute access works too
    split = make_split(cases, spec)
    assert split["val"] == [("a", 9), ("b", 4)]
    assert len(split["train"]) == 9 + 4 and len(split["test"]) == 11 + 5
    assert all(c != "c" for part in split.values() for c, _ in part)
    every = make_split({"x": 10, "y": 21}, MIXED)  # mapping id -> number of slices
    assert len(every["train"]) == 13


def test_by_case_whole_volumes():
    cases = [vol("v1", 2), vol("v2", 3), vol("v3", 1)]
    spec = {"method": "by-case", "train": ["v2", "v1"], "val": [], "test": ["v3"]}
    split = make_split(cases, spec)
    assert split == {
        "train": [("v2", 0), ("v2", 1), ("v2", 2), ("v1", 0), ("v1", 1)],
        "val": [],
        "test": [("v3", 0)],
    }


def test_by_case_on_slice_cases_covid19_a_style():
    # P2 COVID-19-A: each case is one slice image; val taken out of the training list
    cases = [vol(str(i), 1) for i in range(8)]
    spec = {"method": "by-case", "train": ["0", "1", "2", "3"], "val": ["4"],
            "test": ["5", "6", "7"]}
    split = make_split(cases, spec)
    assert split["val"] == [("4", 0)] and split["test"][-1] == ("7", 0)


def test_by_case_stack_id_stands_for_its_slices():
    cases = [vol(f"s_{z:03d}", 1, stack="s", source_z=z) for z in range(3)] + [vol("t_000", 1)]
    split = make_split(cases, {"method": "by-case", "train": ["s"], "test": ["t_000"]})
    assert split["train"] == [("s_000", 0), ("s_001", 0), ("s_002", 0)]


def test_unknown_or_duplicated_cases_are_errors():
    cases = [vol("a", 2), vol("b", 2)]
    with pytest.raises(DataError, match="zz: case listed in split part 'test'"):
        make_split(cases, {"method": "by-case", "train": ["a"], "test": ["zz"]})
    with pytest.raises(DataError, match="b: case is in both 'train' and 'test'"):
        make_split(cases, {"method": "by-case", "train": ["a", "b"], "test": ["b"]})
    with pytest.raises(DataError, match="nope: case listed in by-slice-fraction"):
        make_split(cases, {**MIXED, "cases": ["a", "nope"]})
    with pytest.raises(DataError, match="sum to"):
        make_split(cases, {**MIXED, "test": 0.4})
    with pytest.raises(DataError, match="unknown split method"):
        make_split(cases, {"method": "random"})


def test_k_fold_needs_a_fold():
    spec = {"method": "k-fold", "k": 2, "train": ["a"],
            "folds": [{"val": ["b"], "test": ["c"]}, {"val": ["c"], "test": ["b"]}]}
    cases = {"a": 1, "b": 2, "c": 3}
    assert make_split(cases, spec, fold=1) == {
        "train": [("a", 0)], "val": [("c", 0), ("c", 1), ("c", 2)], "test": [("b", 0), ("b", 1)]
    }
    with pytest.raises(DataError, match=r"needs fold in 0\.\.1"):
        make_split(cases, spec)


def test_shipped_manifest_splits():
    from covidlib.data.manifest import load_manifest

    semiseg = load_manifest("covid-semiseg")
    ids = {c: 1 for g in semiseg.groups if g.labels == "expert" for c in g.cases}
    p2 = make_split(ids, semiseg.split("p2"))  # P2 COVID-19-A: 45 / 5 / 48 single slices
    assert {k: len(v) for k, v in p2.items()} == {"train": 45, "val": 5, "test": 48}
    synth = load_manifest("synthetic")
    z48 = {c: 48 for c in synth.case_ids()}
    sep = make_split(z48, synth.split("sep"))
    assert {k: len(v) for k, v in sep.items()} == {"train": 15 * 48, "val": 48, "test": 4 * 48}
    mixed = make_split(z48, synth.split("mixed"))
    # per case floor(0.45 * 48) = 21 train, floor(0.5 * 48) - 21 = 3 val, 24 test
    assert {k: len(v) for k, v in mixed.items()} == {"train": 420, "val": 60, "test": 480}
    fold0 = make_split(z48, synth.split("p4-cv4"), fold=0)
    assert {k: len(v) // 48 for k, v in fold0.items()} == {"train": 4, "val": 12, "test": 4}
