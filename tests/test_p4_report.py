"""P4's claim verdict follows the shared rule (issue 14, item 2): a paired difference within
two standard errors, or one training run (the cpu profile's one fold and seed), is
"inconclusive (run too small: ...)"; "not reproduced" needs RGS&M+AL worse than a baseline
by more than two standard errors and a converged baseline. Hand-made per-case scores."""

from __future__ import annotations

import pandas as pd
import pytest

from covidlib.experiments import p4
from covidlib.experiments import p4_report as report

FLAT = {"step": [0], "loss": [1.0], "curve_step": [1, 2, 3], "curve_dice": [0.6, 0.6, 0.6]}
RISING = {"step": [0], "loss": [1.0], "curve_step": [1, 2, 3], "curve_dice": [0.2, 0.4, 0.6]}


def _res(scores: dict[str, list[float]], folds: list[int], curve: dict = FLAT
         ) -> p4.P4Results:
    """Per method: the Dice of cases c0, c1, ...; case i is tested in fold ``folds[i]``."""
    rows = [{"method": m, "fold": folds[i], "seed": 0, "case_id": f"c{i}", "dice": d,
             "hd": 1.0, "hd95": 1.0, "empty_truth": False, "empty_pred": False}
            for m, ds in scores.items() for i, d in enumerate(ds)]
    return p4.P4Results("synthetic", False, 3, tuple(scores),
                        p4.settings("cpu", {"folds": sorted(set(folds))}), (0,), "ours",
                        pd.DataFrame(rows), {("fully", 0, 0): {"history": curve}}, {}, {},
                        0.0)


FULLY = [0.40, 0.50, 0.60, 0.45]


def test_within_two_standard_errors_is_too_small_not_a_finding():
    # differences +0.05, -0.05, +0.05, -0.05: mean 0, sd 0.0577, 2 SE 0.0577
    res = _res({"fully": FULLY, "rgsm_al": [0.45, 0.45, 0.65, 0.40]}, [0, 1, 0, 1])
    v = report.claim_verdict(res, "P4-T3")
    assert v["verdict"] == "inconclusive" and v["converged"] is True
    assert v["text"].startswith("**inconclusive** (run too small: the difference 0.000 is "
                                "inside two standard errors 0.058)")
    # differences -0.02, -0.06, -0.02, -0.06: mean -0.04, sd 0.0231, 2 SE 0.0231: worse
    res = _res({"fully": FULLY, "rgsm_al": [0.38, 0.44, 0.58, 0.39]}, [0, 1, 0, 1])
    v = report.claim_verdict(res, "P4-T3")
    assert v["verdict"] == "not reproduced" and v["diff"] == pytest.approx(-0.04)
    assert v["text"].startswith("**not reproduced** with a converged baseline")


def test_one_training_run_is_too_small_whatever_the_gain():
    # the cpu profile: one fold, one seed; +0.2 on every case
    res = _res({"fully": FULLY, "rgsm_al": [d + 0.2 for d in FULLY]}, [0, 0, 0, 0])
    v = report.claim_verdict(res, "P4-T3")
    assert v["verdict"] == "inconclusive" and v["holds"]
    assert v["text"].startswith("**inconclusive** (run too small: one training run, no "
                                "spread to compare the difference with)")
    assert "(n = 4 test cases, 1 training run(s))" in v["text"]


def test_beyond_two_standard_errors_in_the_claimed_direction_is_reproduced():
    res = _res({"fully": FULLY, "rgsm_al": [0.52, 0.58, 0.72, 0.53]}, [0, 1, 0, 1])
    v = report.claim_verdict(res, "P4-T3")  # +0.12, +0.08, +0.12, +0.08: mean 0.10
    assert v["verdict"] == "reproduced" and v["diff"] == pytest.approx(0.10)


def test_significantly_worse_without_a_converged_baseline_is_inconclusive():
    res = _res({"fully": FULLY, "rgsm_al": [0.38, 0.44, 0.58, 0.39]}, [0, 1, 0, 1], RISING)
    v = report.claim_verdict(res, "P4-T3")
    assert v["verdict"] == "inconclusive" and v["converged"] is False
    assert "run too small" not in v["text"]


def test_table2_is_decided_only_when_no_baseline_is_within_two_standard_errors():
    semi = [0.20, 0.30, 0.40, 0.25]
    # clearly above uniform pseudo-labels, within 2 SE of fully supervised: too small
    res = _res({"fully": FULLY, "semi": semi, "rgsm_al": [0.45, 0.45, 0.65, 0.40]},
               [0, 1, 0, 1])
    v = report.claim_verdict(res, "P4-T2")
    assert v["text"].startswith("**inconclusive** (run too small: the difference 0.000")
    # clearly below fully supervised: not reproduced, although above uniform pseudo-labels
    res = _res({"fully": FULLY, "semi": semi, "rgsm_al": [0.38, 0.44, 0.58, 0.39]},
               [0, 1, 0, 1])
    assert report.claim_verdict(res, "P4-T2")["verdict"] == "not reproduced"
