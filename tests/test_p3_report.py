"""P3's verdict follows the shared rule (issue 14, item 2): from one seed, or with a mean gap
(variance - random) inside the std of the per-seed mean gaps, it is "inconclusive (run too
small: ...)" whichever way the gap points; beyond it, reproduced or not reproduced with a
converged baseline. Hand-made curves, hand-computed numbers."""

from __future__ import annotations

import pandas as pd

from covidlib.experiments import p3_report
from covidlib.verdict import Convergence

FLAT = Convergence(True, 0.8, 20, 0.0, "validation flat")
PRESENT = {"mean_spearman": 0.5, "present": True}


def _curves(gaps: dict[int, list[float]]) -> pd.DataFrame:
    """Seed -> validation Dice gap (variance - random) at iterations 1, 2, ...; random at
    0.5, iteration 0 shared (no gap)."""
    rows = []
    for seed, per_it in gaps.items():
        for it, g in enumerate([0.0, *per_it]):
            for strategy, v in (("variance", 0.5 + g), ("random", 0.5)):
                rows.append({"task": "heart", "strategy": strategy, "seed": seed,
                             "iteration": it, "n_labelled": 7 + 3 * it,
                             "fraction_of_all": (7 + 3 * it) / 20, "val_dice": v,
                             "dice": v})
    return pd.DataFrame(rows)


def _verdict(gaps: dict[int, list[float]]) -> str:
    return p3_report.verdict(_curves(gaps), "heart", baseline=FLAT, mechanism=PRESENT)


def test_one_seed_is_too_small_even_with_a_large_gap():
    v = _verdict({0: [0.2, 0.3]})
    assert v.startswith("heart: inconclusive (run too small: one seed, no spread to compare "
                        "the difference with), mechanism (variance points at the model's "
                        "errors) present: MC-dropout variance selection beats random")
    # the old fixed 0.01 threshold called this random's win a finding
    assert _verdict({0: [-0.2, -0.3]}).startswith("heart: inconclusive (run too small: one "
                                                  "seed")


def test_a_mean_gap_inside_the_seeds_spread_is_too_small():
    # per-seed mean gaps 0.10 and -0.04: mean 0.03, sample std 0.099; variance wins 2 of 4
    v = _verdict({0: [0.10, 0.10], 1: [-0.02, -0.06]})
    assert v.startswith("heart: inconclusive (run too small: the difference 0.030 is inside "
                        "the seeds' spread 0.099)")
    assert "tie or alternate" in v and "std over 2 seed(s) 0.099" in v
    # -0.05 on the mean but +0.05 / -0.15 per seed: random's lead is inside the spread too
    v = _verdict({0: [0.05, 0.05], 1: [-0.15, -0.15]})
    assert v.startswith("heart: inconclusive (run too small: the difference 0.050 is inside "
                        "the seeds' spread 0.141)")


def test_beyond_the_spread_the_claim_is_decided():
    # per-seed mean gaps 0.10 and 0.12 (std 0.014): reproduced, whatever the old threshold
    v = _verdict({0: [0.10, 0.10], 1: [0.11, 0.13]})
    assert v.startswith("heart: reproduced: MC-dropout variance selection beats random")
    assert "gap over selection rounds and seeds +0.110, std over 2 seed(s) 0.014" in v
    # a small but consistent gap (+0.005 each seed-round) is below 0.01 and still decided
    assert _verdict({0: [0.005], 1: [0.006]}).startswith("heart: reproduced")
    # random ahead by 0.11 +- 0.014, converged baseline: a finding
    v = _verdict({0: [-0.10, -0.10], 1: [-0.11, -0.13]})
    assert v.startswith("heart: not reproduced with a converged baseline, mechanism (variance "
                        "points at the model's errors) present: random selection beats")
    # the same without a converged baseline
    climbing = Convergence(False, 0.6, 24, 0.1, "still improving")
    v = p3_report.verdict(_curves({0: [-0.10], 1: [-0.12]}), "heart", baseline=climbing)
    assert v.startswith("heart: inconclusive, the fully supervised baseline has not converged")


def test_majority_of_seed_rounds_stays_part_of_the_claim():
    # mean gap +0.10 (per seed 0.10, 0.10: no spread) but variance wins 2 of 6 seed-rounds
    v = _verdict({0: [0.4, -0.05, -0.05], 1: [0.4, -0.05, -0.05]})
    assert v.startswith("heart: not reproduced with a converged baseline")
    assert "tie or alternate" in v
