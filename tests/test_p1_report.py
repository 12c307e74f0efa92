"""P1's verdicts follow the shared rule (issue 14, item 2): a comparison from one seed, or a
difference inside the seeds' spread, is "inconclusive (run too small: ...)"; a difference
beyond the spread is reproduced, or not reproduced with a converged baseline. Hand-made runs,
hand-computed numbers."""

from __future__ import annotations

import pandas as pd

from covidlib.experiments import p1

COLS = ["split", "heuristic", "n_regions", "supervision", "seed", "cycle", "dice", "seconds",
        "n_labelled_regions"]
FLAT = [0.1, 0.6, 0.6, 0.6, 0.6, 0.6]  # validation Dice: converged (gain 0 over 3 epochs)
RISING = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]  # still rising: not converged


def _runs(val: list[float] = FLAT, seeds: tuple[int, ...] = (0, 1)) -> p1.Runs:
    """Runs holding only the fully supervised baselines of split "mixed" (one per seed)."""
    runs = p1.Runs("cpu", "synthetic", {})
    for seed in seeds:
        hist = [{"epoch": e + 1, "train_loss": 1.0, "val_dice": v} for e, v in enumerate(val)]
        runs.full.append(({"split": "mixed", "seed": seed},
                          {"history": hist, "test": {"dice": 0.5},
                           "full_effort_seconds": 10000.0}))
    return runs


def _fig5(diffs: dict[int, float]) -> pd.DataFrame:
    """Per seed: random scores 0.2 at cycle 1, entropy 0.2 + the seed's difference."""
    rows = []
    for seed, d in diffs.items():
        for h, last in (("random", 0.2), ("entropy", 0.2 + d)):
            rows += [("mixed", h, 64, "point", seed, 0, 0.1, 960, 192),
                     ("mixed", h, 64, "point", seed, 1, last, 975, 197)]
    return pd.DataFrame(rows, columns=COLS)


def _fig5_verdict(diffs: dict[int, float], val: list[float] = FLAT):
    return p1.chapter_verdict(_runs(val), "mixed", p1.fig5_verdict(_fig5(diffs), "mixed"),
                              False, "M")


def test_fig5_one_seed_is_too_small_even_when_entropy_wins():
    v = _fig5_verdict({0: 0.10})
    assert v.label == "inconclusive"
    assert v.text.startswith("inconclusive (run too small: one seed, no spread to compare the "
                             "difference with), M absent: holds, split mixed: entropy - random "
                             "= +0.100")


def test_fig5_two_seeds_inside_their_spread_are_too_small():
    # differences +0.10 and -0.20: mean -0.05, sample std sqrt(2 x 0.15^2) = 0.212
    c = p1.fig5_verdict(_fig5({0: 0.10, 1: -0.20}), "mixed")
    assert (c.n_seeds, round(c.gap, 3), round(c.spread, 3)) == (2, -0.05, 0.212)
    v = _fig5_verdict({0: 0.10, 1: -0.20})
    assert v.label == "inconclusive"
    assert v.text.startswith("inconclusive (run too small: the difference 0.050 is inside the "
                             "seeds' spread 0.212), M absent: mixed result")


def test_fig5_beyond_the_spread_decides_either_way():
    # +0.10 and +0.12: mean 0.11, std 0.014
    v = _fig5_verdict({0: 0.10, 1: 0.12})
    assert v.label == "reproduced" and "std of the differences 0.014" in v.text
    # -0.10 and -0.12, converged baseline: a finding
    v = _fig5_verdict({0: -0.10, 1: -0.12})
    assert v.text.startswith("not reproduced with a converged baseline, M absent: not "
                             "reproduced, split mixed: entropy - random = -0.110")
    # the same with a baseline still rising: inconclusive because of the baseline
    v = _fig5_verdict({0: -0.10, 1: -0.12}, RISING)
    assert v.text.startswith("inconclusive, the fully supervised baseline has not converged")


def test_fig5_without_paired_runs_is_no_comparison():
    f = _fig5({0: 0.1})
    v = p1.chapter_verdict(_runs(), "mixed", p1.fig5_verdict(f[f.heuristic == "random"],
                                                             "mixed"))
    assert v.label == "inconclusive" and "no paired runs of entropy and random" in v.text


def _fig6(last: dict[int, list[float]]) -> pd.DataFrame:
    """K -> last-cycle Dice per seed (cycle 0 at 0.1)."""
    rows = []
    for k, dice in last.items():
        for seed, d in enumerate(dice):
            rows += [("mixed", "entropy", k, "point", seed, 0, 0.1, 900, 192),
                     ("mixed", "entropy", k, "point", seed, 1, d, 930, 202)]
    return pd.DataFrame(rows, columns=COLS)


def test_fig6_summary_carries_seeds_and_sample_std():
    s = p1.fig6_summary(_fig6({16: [0.20, 0.22], 64: [0.40, 0.42]}))
    assert s["seeds"].tolist() == [2, 2]
    assert [round(x, 4) for x in s["dice_std"]] == [0.0141, 0.0141]
    assert [round(x, 2) for x in s["dice_mean"]] == [0.21, 0.41]


def test_fig6_verdicts_follow_the_rule():
    runs = _runs()

    def verdict(last):
        return p1.chapter_verdict(runs, "mixed", p1.fig6_verdict(p1.fig6_summary(_fig6(last))))

    # gap 0.41 - 0.21 = 0.20 against 0.014 + 0.014: reproduced
    assert verdict({16: [0.20, 0.22], 64: [0.40, 0.42]}).label == "reproduced"
    # one seed: too small, although K=16 is the lowest
    v = verdict({16: [0.20], 64: [0.40]})
    assert v.text.startswith("inconclusive (run too small: one seed") and "holds" in v.text
    # gap 0.31 - 0.30 = 0.01 inside 0.141 + 0.014 = 0.156
    v = verdict({16: [0.20, 0.40], 64: [0.30, 0.32]})
    assert v.text.startswith("inconclusive (run too small: the difference 0.010 is inside the "
                             "seeds' spread 0.156)")
    # the biggest regions clearly best (0.40 vs 0.21): not reproduced, baseline converged
    v = verdict({16: [0.40, 0.42], 64: [0.20, 0.22]})
    assert v.text.startswith("not reproduced with a converged baseline: not reproduced")


def _fig7(point_last: list[float], pixel_at_970: list[float]) -> pd.DataFrame:
    rows = []
    for seed, (p, q) in enumerate(zip(point_last, pixel_at_970, strict=True)):
        rows += [("mixed", "entropy", 64, "point", seed, 0, 0.10, 960, 192),
                 ("mixed", "entropy", 64, "point", seed, 1, p, 975, 197),
                 ("mixed", "entropy", 64, "pixel", seed, 0, q, 970, 192),
                 ("mixed", "entropy", 64, "pixel", seed, 1, 0.40, 1200, 197)]
    return pd.DataFrame(rows, columns=COLS)


def test_fig7_verdicts_follow_the_rule():
    runs = _runs()
    # at <= 975 s: point 0.30, 0.32 (std 0.014) vs per-pixel 0.15, 0.15 (std 0): gap 0.16
    c = p1.fig7_verdict(_fig7([0.30, 0.32], [0.15, 0.15]))
    assert c == "holds: at <= 975 s: point 0.310 vs per-pixel 0.150 Dice"
    assert (c.n_seeds, round(c.gap, 3), round(c.spread, 4)) == (2, 0.16, 0.0141)
    assert p1.chapter_verdict(runs, "mixed", c).label == "reproduced"
    v = p1.chapter_verdict(runs, "mixed", p1.fig7_verdict(_fig7([0.30], [0.15])))
    assert v.text.startswith("inconclusive (run too small: one seed")
    # point 0.30, 0.10 (std 0.141) vs 0.15, 0.15: gap 0.05 inside the spread
    v = p1.chapter_verdict(runs, "mixed", p1.fig7_verdict(_fig7([0.30, 0.10], [0.15, 0.15])))
    assert v.text.startswith("inconclusive (run too small: the difference 0.050 is inside")
    # per-pixel clearly higher: not reproduced with a converged baseline
    v = p1.chapter_verdict(runs, "mixed", p1.fig7_verdict(_fig7([0.10, 0.11], [0.30, 0.30])))
    assert v.label == "not reproduced"


def _headline_runs(al_dice: list[float]) -> p1.Runs:
    """Entropy AL at 500 s with ``al_dice`` per seed; full Dice 0.5, effort 10000 s."""
    runs = _runs(seeds=tuple(range(len(al_dice))))
    for seed, d in enumerate(al_dice):
        recs = [{"cycle": c, "n_labelled_regions": 192 + c, "seconds": 480.0 + 20 * c,
                 "test": {"dice": dd, "iou": None, "ppv": None, "sens": None, "spec": None},
                 "val_dice": None, "best_epoch": 1, "selected_kinds": []}
                for c, dd in ((0, 0.1), (1, d))]
        runs.items.append(({"split": "mixed", "heuristic": "entropy", "n_regions": 64,
                            "supervision": "point", "seed": seed},
                           {"config": {"dataset": "synthetic"}, "records": recs}))
    return runs


def test_headline_verdicts_follow_the_rule():
    paper = {"values": {"dice_fraction": 0.9, "effort_fraction": 0.07}}

    def verdict(al_dice):
        runs = _headline_runs(al_dice)
        return p1.chapter_verdict(runs, "mixed", p1.headline_verdict(runs, paper))

    # shares 0.90 and 0.92 (std 0.014), mean 0.91 >= 0.85; effort 500 / 10000 = 5 % <= 14 %
    assert verdict([0.45, 0.46]).label == "reproduced"
    v = verdict([0.45])
    assert v.text.startswith("inconclusive (run too small: one seed") and "holds" in v.text
    # shares 0.8 and 1.0: mean 0.9, 0.05 above 0.85 but inside the std 0.141
    v = verdict([0.40, 0.50])
    assert v.text.startswith("inconclusive (run too small: the difference 0.050 is inside the "
                             "seeds' spread 0.141)")
    # shares 0.20 and 0.22: far below, converged baseline
    v = verdict([0.10, 0.11])
    assert v.text.startswith("not reproduced with a converged baseline: not reproduced: 21% ")


def test_plain_sentence_takes_the_seeds_of_the_runs():
    runs = _headline_runs([0.45])  # one seed of split "mixed"
    v = p1.chapter_verdict(runs, "mixed", "holds: typed by hand")
    assert v.text == ("inconclusive (run too small: one seed, no spread to compare the "
                      "difference with): holds: typed by hand")
    assert p1.chapter_verdict(_headline_runs([0.45, 0.46]), "mixed", "holds: b").text == \
        "reproduced: holds: b"


def test_headline_targets_missing_from_the_paper_come_from_p1_yaml():
    from covidlib.experiments import p1_report

    v = p1_report.paper_headline()  # p1.yaml P1-headline (Sec. 5.3)
    assert (v["dice_fraction"], v["effort_fraction"], v["seconds_per_slice"]) == (0.9, 0.07, 96)
    runs = _headline_runs([0.45, 0.46])
    # no values given: P1's 90 % with 7 %; shares 0.90 / 0.92 -> 91 %, effort 500 / 10000 = 5 %
    assert p1_report.headline_verdict(runs, {}) == (
        "holds: 91% of the fully supervised Dice with 5% of the full labelling effort "
        "(P1: 90% with 7%)")
    # a given target wins over p1.yaml's
    assert p1_report.headline_verdict(runs, {"values": {"effort_fraction": 0.5}}) \
        .endswith("(P1: 90% with 50%)")
