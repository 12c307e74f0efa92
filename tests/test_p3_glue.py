"""covidlib.experiments.p3_glue: the P3 chapter's per-task glue values, verdict inputs and
scorecard rows, against hand-computed values."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from covidlib.experiments import p3_glue, p3_report


def test_paper_setup_glue_is_p3_yaml():
    # P3 Sec. III: 50 LCTSC volumes, 22 for training, 21 labelled at the last cycle, 5 added
    # per iteration, T = 5 passes at p = 0.5, C = 6 classes, 24 epochs per run
    assert p3_glue.paper_setup_glue() == {
        "p3_paper_volumes": 50, "p3_paper_train": 22, "p3_paper_labelled": 21,
        "p3_paper_per_iteration": 5, "p3_paper_T": 5, "p3_paper_p": 0.5,
        "p3_paper_classes": 6, "p3_paper_epochs": 24}


def test_cpu_profile_glue_counts_the_background():
    # the cpu profile segments the heart alone: C = 1 organ + background = 2
    assert p3_glue.cpu_profile_glue() == {"p3_cpu_classes": 2}
    two = SimpleNamespace(organs=("heart", "esophagus"))
    assert p3_glue.cpu_profile_glue({"cpu": two}) == {"p3_cpu_classes": 3}
    with pytest.raises(p3_glue.P3GlueError, match="no 'cpu' profile"):
        p3_glue.cpu_profile_glue({"gpu": two})


def _curves() -> pd.DataFrame:
    rows = [("heart", s, seed, it, d) for s, ds in (("variance", (0.2, 0.6, 0.3, 0.8)),
                                                    ("random", (0.2, 0.5, 0.3, 0.55)))
            for (seed, it), d in zip(((0, 0), (0, 1), (1, 0), (1, 1)), ds, strict=True)]
    rows += [("infection", "variance", 0, 1, 0.1), ("infection", "random", 0, 1, 0.05)]
    return pd.DataFrame(rows, columns=["task", "strategy", "seed", "iteration", "dice"])


def test_glue_values_last_iteration_means():
    mech = {"heart": {"mean_spearman": 0.12345}, "infection": {"mean_spearman": -0.5}}
    g = p3_glue.glue_values(_curves(), {"heart": "reproduced", "infection": "inconclusive"},
                            mech)
    # heart, iteration 1: variance (0.6 + 0.8) / 2 = 0.7, random (0.5 + 0.55) / 2 = 0.525
    assert g == {"p3_heart_random_last": 0.525, "p3_heart_variance_last": 0.7,
                 "p3_heart_verdict": "reproduced", "p3_heart_mechanism_rho": 0.123,
                 "p3_infection_random_last": 0.05, "p3_infection_variance_last": 0.1,
                 "p3_infection_verdict": "inconclusive", "p3_infection_mechanism_rho": -0.5}
    with pytest.raises(p3_glue.P3GlueError, match="no row of task 'lung'"):
        p3_glue.glue_values(_curves(), {"lung": "x"}, {"lung": {"mean_spearman": 0.0}})


def test_baselines_reason_per_task():
    # val Dice 0.5, 0.6, 0.6, 0.6, 0.6: the last 3 epochs gain 0 over 0.6 -> converged
    curve = [{"epoch": e + 1, "val_dice": d} for e, d in enumerate((0.5, 0.6, 0.6, 0.6, 0.6))]
    res = SimpleNamespace(reference={("heart", 0): {"curve": curve}})
    converged, reasons = p3_glue.baselines(res, ["heart", "infection"], plot=False)
    assert converged["infection"] is None and reasons["infection"] == "not trained"
    assert converged["heart"].converged and reasons["heart"] == converged["heart"].reason


def test_mechanisms_stack_frames_with_task(monkeypatch):
    frames = {"heart": pd.DataFrame({"iteration": [1, 2], "spearman": [0.5, 0.3]}),
              "infection": pd.DataFrame({"iteration": [1], "spearman": [-0.2]})}
    monkeypatch.setattr(p3_report, "mechanism_frame", lambda res, task, device: frames[task])
    stacked, summaries = p3_glue.mechanisms(None, ["heart", "infection"])
    assert stacked.columns.tolist() == ["task", "iteration", "spearman"]
    assert stacked["task"].tolist() == ["heart", "heart", "infection"]
    assert summaries["heart"]["mean_spearman"] == pytest.approx(0.4)  # (0.5 + 0.3) / 2
    assert summaries["infection"]["present"] is False


def test_record_scorecard_writes_each_entry(tmp_path):
    prov = {"profile": "cpu", "dataset": "synthetic", "hardware": "cpu", "date": "2026-12-03"}
    entries = {"P3-F2": {"paper": {"a": 1}, "ours": {"a": 2}, "verdict": "heart: reproduced"}}
    assert p3_glue.record_scorecard(tmp_path, entries, prov) == {"P3-F2": "heart: reproduced"}
    written = json.loads((tmp_path / "scorecard" / "P3-F2.json").read_text())
    assert written["verdict"] == "heart: reproduced" and written["ours"] == {"a": 2}


def test_verdicts_pass_each_task_its_baseline_and_mechanism(monkeypatch):
    seen = []
    monkeypatch.setattr(p3_report, "verdict", lambda curves, task, baseline, mechanism:
                        seen.append((task, baseline, mechanism)) or f"{task}: ok")
    out = p3_glue.verdicts(_curves(), ["heart"], {"heart": None}, {"heart": {"n": 0}})
    assert out == {"heart": "heart: ok"} and seen == [("heart", None, {"n": 0})]
