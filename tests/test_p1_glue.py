"""covidlib.experiments.p1_glue: P1's numbers, the cpu profile's sizes and the per-slice costs
that the P1 chapters glue into their prose, against hand-computed values."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import pytest

from covidlib.experiments import p1_glue


def test_paper_glue_is_p1_yaml_formatted():
    g = p1_glue.paper_glue()
    # P1 Sec. 5.3: 84 % full, 76 % AL, about 90 % of it at 7 % of 368 x 96 = 35328 s
    assert (g["p1_paper_full_dice"], g["p1_paper_al_dice"], g["p1_paper_dice_fraction"],
            g["p1_paper_effort_fraction"]) == ("84 %", "76 %", "90 %", "7 %")
    assert (g["p1_paper_train_slices"], g["p1_paper_seconds_per_slice"],
            g["p1_paper_full_effort_seconds"], g["p1_paper_al_seconds"]) == (368, 96, 35328, 2460)
    assert (g["p1_paper_scan_minutes"], g["p1_paper_scan_slices"]) == (400, 250)
    assert 400 * 60 / 250 == g["p1_paper_seconds_per_slice"]  # Ma et al.'s 96 s per slice
    assert (g["p1_paper_spec_low"], g["p1_paper_spec_high"]) == (0.85, 0.99)
    # Sec. 5.2: 192 s at 3 s per region buys 64 regions; the text's count is 3 images at K = 64
    assert (g["p1_paper_initial_budget"], g["p1_paper_budget_regions"],
            g["p1_paper_initial_images_k64"], g["p1_paper_seconds_per_point"]) == (192, 64, 3, 3)


@dataclass(frozen=True)
class _S:
    size: int = 64
    cycles: int = 3
    per_cycle: int = 10
    initial_images: int = 4
    fig6_initial_regions: int = 192
    model_kwargs: dict = field(default_factory=lambda: {"base_width": 8, "depth": 3})


def test_cpu_profile_glue_reads_dicts_and_dataclasses():
    want = {"p1_cpu_size": 64, "p1_cpu_width": 8, "p1_cpu_depth": 3, "p1_cpu_cycles": 3,
            "p1_cpu_per_cycle": 10, "p1_cpu_initial_images": 4}
    assert p1_glue.cpu_profile_glue({"cpu": _S()}) == want
    as_dict = {"size": 64, "cycles": 3, "per_cycle": 10, "initial_images": 4,
               "model_kwargs": {"base_width": 8, "depth": 3}}
    assert p1_glue.cpu_profile_glue({"cpu": as_dict}) == want
    with pytest.raises(p1_glue.P1GlueError, match="no 'size'"):
        p1_glue.setting({}, "size")


def _costs(points: float, polygon: float) -> pd.DataFrame:
    return pd.DataFrame({"scheme": ["points and tags, K = 16", "per-pixel by region, K = 16",
                                    "per-pixel, whole slice", "P1's full slice (96 s)"],
                         "seconds per slice (mean)": [points, 50.0, polygon, 96.0]})


def test_whole_image_glue_compares_with_96_s():
    assert p1_glue.whole_image_glue(_costs(192.0, 40.25)) == {
        "p1_slice_points": "192 s, more than", "p1_slice_pixel": "40.2 s, below"}
    # the index form the chapter shows (set_index("scheme")) and another reference cost
    indexed = _costs(48.0, 120.0).set_index("scheme")
    assert p1_glue.whole_image_glue(indexed, seconds_per_slice=100) == {
        "p1_slice_points": "48 s, less than", "p1_slice_pixel": "120.0 s, above"}
    with pytest.raises(p1_glue.P1GlueError, match="per-pixel, whole slice"):
        p1_glue.whole_image_glue(_costs(1, 2).iloc[:2])


def test_fig6_table_adds_initial_images_and_region_side():
    summary = pd.DataFrame({"K (regions per image)": [16, 64, 256], "seeds": [1, 1, 1],
                            "Dice (last cycle)": ["0.1", "0.2", "0.3"],
                            "dice_mean": [0.1, 0.2, 0.3], "dice_std": [0.0, 0.0, 0.0]})
    t = p1_glue.fig6_table(summary, _S(size=64, fig6_initial_regions=192))
    # 192 / 16 = 12, 192 / 64 = 3, 192 / 256 = 0.75 -> 1 image; 64 / 4 = 16, 64 / 8 = 8, 64 / 16 = 4
    assert t["initial images"].tolist() == [12, 3, 1]
    assert t["region side (px)"].tolist() == [16.0, 8.0, 4.0]
    assert "dice_mean" not in t and "dice_std" not in t and "dice_mean" in summary


def test_curves_table_picks_and_rounds():
    cols = p1_glue.CURVE_COLUMNS["fig7"]
    curves = pd.DataFrame([{c: 1.23456 for c in cols} | {"extra": 9}])
    t = p1_glue.curves_table(curves, "fig7")
    assert t.columns.tolist() == cols and t.iloc[0]["dice"] == 1.235
    with pytest.raises(p1_glue.P1GlueError, match="lack columns"):
        p1_glue.curves_table(curves.drop(columns=["dice"]), "fig7")
    with pytest.raises(p1_glue.P1GlueError, match="'fig9'"):
        p1_glue.curves_table(curves, "fig9")


def test_specificity_and_verdict_lines():
    from covidlib.verdict import Verdict

    key = {"split": "mixed", "n_regions": 64, "supervision": "point"}
    rows = [key | {"heuristic": h, "seed": s, "cycle": c, "spec": sp}
            for h, s, c, sp in (("random", 0, 0, 0.5), ("random", 0, 1, 0.9),
                                ("random", 1, 1, 0.95), ("entropy", 0, 1, 0.1))]
    paper = {"values": {"random_specificity_range": [0.85, 0.99]}}
    # last cycles of the random runs: 0.9 (seed 0) and 0.95 (seed 1)
    assert p1_glue.specificity_line(pd.DataFrame(rows), paper) == \
        "random selection's last-cycle specificity: 0.900-0.950 (P1: 0.85-0.99)"
    assert p1_glue.verdict_lines({"mixed": Verdict("reproduced", "a"),
                                  "sep": Verdict("inconclusive", "b")}) == \
        "mixed: a\nsep: b"


def test_per_split_helpers_call_the_mechanism_once_per_split(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(p1_glue, "pool_infected_share",
                        lambda runs, split, root: {"mixed": 0.25, "sep": 0.5}[split])
    monkeypatch.setattr(p1_glue, "baseline_convergence",
                        lambda runs, split: SimpleNamespace(reason=f"{split} flat"))
    assert p1_glue.pool_shares(None, ["mixed", "sep"]) == {"mixed": 0.25, "sep": 0.5}
    assert p1_glue.convergence_reasons(None, ["sep"]) == {"sep": "sep flat"}


def test_headline_share_and_mechanism_text_come_from_p1_yaml():
    from covidlib.experiments import p1_mechanism

    # P1 Sec. 5.3: "around 90% of the upper bound" (dice_fraction: 0.90)
    assert p1_mechanism.headline_share() == 0.9
    assert "reach 90 % of the fully supervised Dice" in p1_mechanism.MECHANISMS["P1-headline"]
    # 0.45 / 0.5 = 0.9 reaches the default share; 0.4 / 0.5 = 0.8 does not
    assert p1_mechanism.upper_bound_check(0.2, 0.45, 0.5)["ceiling_reaches_full"] is True
    assert p1_mechanism.upper_bound_check(0.2, 0.4, 0.5)["ceiling_reaches_full"] is False
    assert p1_mechanism.upper_bound_check(0.2, 0.4, 0.5, share=0.8)["ceiling_reaches_full"]


def test_dataset_glue_reads_the_ma20_slices_manifest():
    # data_manifests/ma20-slices.yaml: mixed = 0.45 / 0.05 / 0.50 of each volume's slices,
    # sep = 7 / 1 / 2 of its 10 derived volumes
    assert p1_glue.dataset_glue() == {
        "p1_data_mixed_train": "45 %", "p1_data_mixed_val": "5 %", "p1_data_mixed_test": "50 %",
        "p1_data_sep_train": 7, "p1_data_sep_val": 1, "p1_data_sep_test": 2,
        "p1_data_volumes": 10}


def test_dataset_glue_names_a_manifest_without_the_p1_splits():
    with pytest.raises(p1_glue.P1GlueError, match=r"covid-semiseg.*'mixed', 'sep'"):
        p1_glue.dataset_glue("covid-semiseg")
