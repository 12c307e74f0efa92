"""covidlib.verdict: the plateau rule of a baseline's validation curve and the three-way
verdict, on hand-made curves."""

from __future__ import annotations

import math

import pytest

from covidlib.verdict import (
    INCONCLUSIVE,
    MIN_SEEDS,
    NOT_REPRODUCED,
    REPRODUCED,
    Comparison,
    Convergence,
    Verdict,
    baseline_converged,
    combine_verdicts,
    paired_spread,
    run_too_small,
    three_way_verdict,
)


def test_flat_curve_has_converged():
    # best before the last 3 epochs: 0.50; best of the last 3: 0.505 -> gain 0.005 < 0.01
    c = baseline_converged([0.1, 0.3, 0.5, 0.49, 0.505, 0.5], window=3, tol=0.01)
    assert c.converged and c.best == 0.505 and c.best_epoch == 5
    assert math.isclose(c.gain, 0.005)
    assert "flat" in c.reason and "+0.005" in c.reason


def test_rising_curve_has_not_converged():
    # best before: 0.3 (epoch 3); last 3 epochs reach 0.6 -> gain 0.3
    c = baseline_converged([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], window=3, tol=0.01)
    assert not c.converged and c.best_epoch == 6
    assert math.isclose(c.gain, 0.3) and "still improving" in c.reason


def test_falling_curve_counts_as_flat():
    # over-fitting after the best epoch: the last epochs gain nothing
    c = baseline_converged([0.2, 0.6, 0.5, 0.4, 0.3], window=3, tol=0.01)
    assert c.converged and c.best_epoch == 2 and math.isclose(c.gain, -0.1)


def test_short_or_empty_curves_are_not_converged():
    assert not baseline_converged([0.5, 0.6, 0.6], window=3).converged  # 3 epochs < 4
    c = baseline_converged([None, float("nan")], window=1)
    assert not c.converged and c.best_epoch is None and "no finite" in c.reason
    c = baseline_converged([0.0, 0.0, 0.0, 0.0, 0.0], window=2)  # flat, but at nothing
    assert not c.converged and "never rose above 0" in c.reason
    c = baseline_converged([0.5, 0.6, None, None], window=2)
    assert not c.converged and "missing" in c.reason
    # missing scores among finite ones are skipped: best before = 0.5, last 2 best = 0.5
    assert baseline_converged([0.5, None, 0.5, None], window=2).converged


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="window=0"):
        baseline_converged([0.1, 0.2], window=0)
    with pytest.raises(ValueError, match="tol=-1"):
        baseline_converged([0.1, 0.2], tol=-1)


def test_three_way_verdict():
    conv = Convergence(True, 0.8, 10, 0.001, "flat")
    not_conv = Convergence(False, 0.3, 20, 0.2, "still improving")
    v = three_way_verdict(True, not_conv, False, "0.80 vs 0.76")
    assert v.label == REPRODUCED and v.text == "reproduced: 0.80 vs 0.76" and str(v) == v.text
    v = three_way_verdict(False, conv, True, "x", mechanism="infected share higher")
    assert v.label == NOT_REPRODUCED
    assert v.text == "not reproduced with a converged baseline, infected share higher present: x"
    v = three_way_verdict(False, True, False)
    assert v.text == "not reproduced with a converged baseline, mechanism absent"
    v = three_way_verdict(False, conv, None)
    assert v.text == "not reproduced with a converged baseline"
    v = three_way_verdict(False, not_conv, True, "x")
    assert v.label == INCONCLUSIVE
    assert v.text == ("inconclusive, the fully supervised baseline has not converged "
                      "(still improving): x")
    assert three_way_verdict(False, False).label == INCONCLUSIVE


def test_combine_verdicts():
    r, n, i = (Verdict(REPRODUCED, "reproduced: a"), Verdict(NOT_REPRODUCED, "not reproduced b"),
               Verdict(INCONCLUSIVE, "inconclusive c"))
    assert combine_verdicts({"mixed": r, "sep": r}).label == REPRODUCED
    both = combine_verdicts({"mixed": r, "sep": n})
    assert both.label == NOT_REPRODUCED
    assert both.text == "not reproduced (mixed: reproduced: a; sep: not reproduced b)"
    assert combine_verdicts({"mixed": n, "sep": i}).label == INCONCLUSIVE
    with pytest.raises(ValueError, match="no parts"):
        combine_verdicts({})
    with pytest.raises(ValueError, match="holds"):
        combine_verdicts({"a": Verdict("holds", "x")})


def test_run_too_small():
    assert MIN_SEEDS == 2
    assert run_too_small() is None and run_too_small(n_seeds=2) is None
    assert run_too_small(n_seeds=1) == "one seed, no spread to compare the difference with"
    assert run_too_small(n_seeds=0).startswith("0 seeds")
    # gap 0.1 > spread 0.05: decided; 0.05 <= 0.05 or 0.02 < 0.3: inside the spread
    assert run_too_small(3, gap=0.1, spread=0.05) is None
    assert run_too_small(3, gap=0.05, spread=0.05) == (
        "the difference 0.050 is inside the seeds' spread 0.050")
    assert run_too_small(3, gap=-0.02, spread=0.3) == (
        "the difference 0.020 is inside the seeds' spread 0.300")
    assert run_too_small(3, gap=0.1, spread=float("nan")) is not None  # no spread known
    with pytest.raises(ValueError, match="n_seeds=-1"):
        run_too_small(-1)


def test_too_small_verdicts_are_inconclusive_either_way():
    """Issue 14: one seed, or a difference inside the seeds' spread, decides nothing."""
    conv = Convergence(True, 0.8, 10, 0.001, "flat")
    not_conv = Convergence(False, 0.3, 20, 0.2, "still improving")
    v = three_way_verdict(True, conv, None, "0.41 vs 0.31", n_seeds=1)
    assert v.label == INCONCLUSIVE
    assert v.text == ("inconclusive (run too small: one seed, no spread to compare the "
                      "difference with): 0.41 vs 0.31")
    v = three_way_verdict(False, conv, True, "x", mechanism="m", n_seeds=3, gap=0.01,
                          spread=0.04)
    assert v.text == ("inconclusive (run too small: the difference 0.010 is inside the "
                      "seeds' spread 0.040), m present: x")
    v = three_way_verdict(True, not_conv, n_seeds=1)
    assert v.label == INCONCLUSIVE and v.text.endswith(
        "; the fully supervised baseline has not converged (still improving)")
    # enough seeds and a gap beyond the spread: the usual three-way rule
    assert three_way_verdict(True, conv, n_seeds=3, gap=0.1, spread=0.02).label == REPRODUCED
    assert three_way_verdict(False, conv, n_seeds=3, gap=0.1,
                             spread=0.02).label == NOT_REPRODUCED


def test_run_too_small_names_the_unit_and_the_spread():
    assert run_too_small(1, unit="training run") == (
        "one training run, no spread to compare the difference with")
    assert run_too_small(0, unit="training run").startswith("0 training runs")
    assert run_too_small(gap=0.01, spread=0.03, spread_name="two standard errors") == (
        "the difference 0.010 is inside two standard errors 0.030")


def test_paired_spread_by_hand():
    # differences 0.1 and -0.2: mean -0.05, sample std sqrt(2 x 0.15^2 / 1) = 0.2121
    n, mean, std = paired_spread([0.1, -0.2])
    assert n == 2 and math.isclose(mean, -0.05) and math.isclose(std, 0.15 * math.sqrt(2))
    assert paired_spread([0.3]) == (1, 0.3, 0.0)
    n, mean, std = paired_spread([float("nan"), None, 0.2, 0.4, 0.6])  # non-finite left out
    assert n == 3 and math.isclose(mean, 0.4) and math.isclose(std, 0.2)
    n, mean, std = paired_spread([])
    assert n == 0 and math.isnan(mean) and math.isnan(std)


def test_comparison_is_a_sentence_carrying_the_rules_inputs():
    c = Comparison("holds: a", n_seeds=2, gap=0.1, spread=0.3)
    assert c == "holds: a" and c.startswith("holds") and isinstance(c, str)
    assert f"{c}" == "holds: a" and c.stats() == {"n_seeds": 2, "gap": 0.1, "spread": 0.3}
    assert Comparison("x").stats() == {"n_seeds": None, "gap": None, "spread": None}
    v = three_way_verdict(c.startswith("holds"), True, None, c, **c.stats())
    assert v.text == ("inconclusive (run too small: the difference 0.100 is inside the seeds' "
                      "spread 0.300): holds: a")
