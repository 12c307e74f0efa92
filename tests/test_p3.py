"""The P3 chapter: profiles, split, tasks, comparison tables and the notebook end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from covidlib.data.api import open_dataset
from covidlib.experiments import p3
from covidlib.report import paper_values

REPO = Path(__file__).resolve().parents[1]


def test_settings_merge_overrides_and_reject_unknown_names():
    s = p3.settings("cpu", {"epochs": 3})
    assert s["epochs"] == 3 and s["n_samples"] == 5 and s["dropout"] == 0.5
    s["grid"].append(1)  # a deep copy: the profile is untouched
    assert len(p3.PROFILES["cpu"]["grid"]) == 3
    with pytest.raises(ValueError, match="'tpu'"):
        p3.settings("tpu")
    with pytest.raises(ValueError, match=r"\['epoch'\]"):
        p3.settings("cpu", {"epoch": 3})
    assert p3.settings("paper")["epochs"] == 24  # P3 Sec. III


def test_split_counts_on_twenty_volumes():
    ids = [f"synth_{i:03d}" for i in range(20)]
    sp = p3.split_volumes(ids, p3.settings("cpu"))
    assert [len(sp[k]) for k in ("test", "val", "pool")] == [4, 2, 14]
    assert set(sp["test"]) | set(sp["val"]) | set(sp["pool"]) == set(ids)
    assert not set(sp["test"]) & set(sp["pool"])
    assert p3.split_volumes(list(reversed(ids)), p3.settings("cpu")) == sp  # order-free
    other = p3.split_volumes(ids, p3.settings("cpu", {"split_seed": 1}))
    assert other != sp
    init = p3.initial_set(sp["pool"], p3.settings("cpu"), seed=0)
    assert len(init) == 7 and set(init) <= set(sp["pool"])
    assert p3.initial_set(sp["pool"], p3.settings("cpu"), seed=0) == init
    assert p3.initial_set(sp["pool"], p3.settings("cpu"), seed=1) != init


def test_paper_profile_fractions_give_p3_counts_on_fifty_volumes():
    s = p3.settings("paper")
    sp = p3.split_volumes([f"c{i:02d}" for i in range(50)], s)
    assert [len(sp[k]) for k in ("test", "val", "pool")] == [22, 6, 22]
    assert len(p3.initial_set(sp["pool"], s, 0)) == 11
    assert p3._count(s["per_iteration"], 22, "per_iteration") == 5
    with pytest.raises(ValueError, match="pool of 1"):
        p3.split_volumes(["a", "b", "c", "d"], p3.settings("cpu", {"test": 2, "val": 1}))


def test_task_specs_follow_the_manifest(synthetic_root):
    ds = open_dataset("synthetic", synthetic_root)
    heart = p3.task_spec("heart", ds, p3.settings("cpu"))
    assert heart["classes"] == {1: [3]} and heart["target"] == 1  # heart = organ label 3
    six = p3.task_spec("heart", ds, p3.settings("gpu"))
    # P3's order: spinal cord, right lung, left lung, heart, esophagus (phantom labels 6 2 1 3 5)
    assert six["classes"] == {1: [6], 2: [2], 3: [1], 4: [3], 5: [5]}
    assert six["target"] == 4 and len(six["class_names"]) == 6
    inf = p3.task_spec("infection", ds, p3.settings("cpu"))
    assert inf["classes"] == {1: [1, 2]} and inf["target"] == 1
    with pytest.raises(ValueError, match="'kidney'"):
        p3.task_spec("heart", ds, p3.settings("cpu", {"organs": ["heart", "kidney"]}))
    with pytest.raises(ValueError, match="unknown task"):
        p3.task_spec("lungs", ds, p3.settings("cpu"))


def _curves(gaps: dict[int, tuple[float, float]]) -> pd.DataFrame:
    """Two seeds; iteration -> (variance Dice, random Dice) for seed 0, seed 1 adds 0.1."""
    rows = []
    for seed in (0, 1):
        for it, (act, rnd) in gaps.items():
            for strategy, d in (("variance", act), ("random", rnd)):
                rows.append({"task": "heart", "strategy": strategy, "seed": seed,
                             "iteration": it, "n_labelled": 7 + 3 * it,
                             "fraction_of_all": (7 + 3 * it) / 20, "dice": d + 0.1 * seed})
    return pd.DataFrame(rows)


def test_paper_comparison_and_verdict_by_hand():
    curves = _curves({0: (0.5, 0.5), 1: (0.7, 0.6), 2: (0.8, 0.5)})
    table = p3.paper_comparison(curves, paper_values.artifact("P3-F2"), "heart")
    row = dict(zip(table["quantity"], table["ours (mean ± std over seeds)"], strict=True))
    paper = dict(zip(table["quantity"], table["P3 (LCTSC)"], strict=True))
    assert paper["iteration 2: active"] == 0.77 and paper["iteration 2: random"] == 0.52
    assert paper["last iteration: active"] == 0.87 and paper["last iteration: random"] == 0.76
    # iteration 2 variance: 0.8 and 0.9 -> mean 0.85, sample std 0.0707
    assert row["iteration 2: active"] == "0.85 ± 0.07"
    assert row["iteration 1: active - random"] == "0.10 ± 0.00"
    assert row["last iteration: active - random"] == "0.30 ± 0.00"
    assert row["labelled share of all volumes at iteration 2"] == "0.65"
    text = p3.verdict(curves, "heart")
    assert "beats random selection here, as in P3" in text and "+0.200" in text
    worse = p3.verdict(_curves({0: (0.5, 0.5), 1: (0.5, 0.7), 2: (0.6, 0.8)}), "heart")
    assert "random selection beats" in worse
    tied = p3.verdict(_curves({0: (0.5, 0.5), 1: (0.6, 0.6)}), "heart")
    assert "not reproduced" in tied and "tied in 2" in tied


def test_paper_values_file_holds_the_quoted_numbers():
    f2 = paper_values.artifact("P3-F2")
    pts = {str(p["iteration"]): p for p in f2["points"]}
    assert pts["1"]["gap"] == 0.15 and pts["2"]["gap"] == pytest.approx(0.77 - 0.52)
    assert pts["last"]["gap"] == pytest.approx(pts["last"]["active"] - pts["last"]["random"])
    assert f2["settings"]["mc_passes_T"] == 5 and f2["settings"]["dropout_p"] == 0.5
    head = paper_values.artifact("P3-headline")["values"]
    assert head["labelled_volumes"] / head["total_volumes"] == head["labelled_fraction"]


@pytest.mark.slow
def test_notebook_runs_with_tiny_overrides(synthetic_root, tmp_path):
    papermill = pytest.importorskip("papermill")
    results = tmp_path / "results"
    overrides = {"grid": [8, 16, 16], "base_width": 2, "depth": 1, "epochs": 1,
                 "warm_epochs": 1, "iterations": 1, "initial": 2, "per_iteration": 2}
    papermill.execute_notebook(
        str(REPO / "notebooks" / "p3_volume_al.ipynb"), str(tmp_path / "out.ipynb"),
        parameters={"profile": "cpu", "dataset": "synthetic", "data_root": str(synthetic_root),
                    "device": "cpu", "seeds": [0, 1], "results_dir": str(results),
                    "overrides": overrides},
        kernel_name="python3", cwd=str(REPO / "notebooks"), progress_bar=False)
    curves = pd.read_csv(results / "p3" / "curves_synthetic_cpu.csv")
    assert list(curves.columns) == ["task", "strategy", "seed", "iteration", "n_labelled",
                                    "fraction_of_pool", "fraction_of_all", "dice", "dice_std",
                                    "val_dice", "best_epoch", "selected"]
    keys = set(zip(curves.task, curves.strategy, curves.seed, curves.iteration, strict=True))
    assert keys == {(t, s, seed, it) for t in ("heart", "infection")
                    for s in ("variance", "random") for seed in (0, 1) for it in (0, 1)}
    assert curves["dice"].between(0, 1).all() and not curves["dice"].isna().any()
    assert (curves[curves.iteration == 1]["n_labelled"] == 4).all()
    for artifact in ("P3-F2", "P3-F3", "P3-headline"):
        entry = json.loads((results / "scorecard" / f"{artifact}.json").read_text())
        assert entry["verdict"] and entry["provenance"]["profile"] == "cpu"
