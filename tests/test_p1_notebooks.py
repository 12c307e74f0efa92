"""The four P1 chapters run end to end under papermill (cpu profile, tiny overrides) and
write complete result tables and scorecard entries; the profile helpers refuse bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from covidlib.experiments import p1

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "size": 32, "max_slices": {"train": 8, "val": 3, "test": 4}, "cycles": 1, "epochs": 1,
    "epoch_items": None, "n_samples": 2, "batch_size": 4, "per_cycle": 2,
    "model_kwargs": {"base_width": 4, "depth": 2, "dropout": 0.5}, "fig6_regions": [16, 64],
    "fig6_initial_regions": 32, "full_epochs": 1, "figure_slices": 1,
}


def test_settings_and_helpers():
    s = p1.settings("cpu", {"cycles": 2})
    assert s["cycles"] == 2 and s["n_regions"] == 64 and s is not p1.PROFILES["cpu"]
    assert p1.settings("paper")["cycles"] == 100 and p1.settings("paper")["epochs"] == 40
    with pytest.raises(ValueError, match="unknown profile 'tpu'"):
        p1.settings("tpu")
    with pytest.raises(ValueError, match=r"\['cycle'\]"):
        p1.settings("cpu", {"cycle": 2})
    # P1 Sec. 5.2: 192 regions -> 3 images at K = 64, 12 at K = 16, 1 at K = 256 (0.75)
    assert [p1.fig6_initial_images(k) for k in (16, 64, 256, 1024)] == [12, 3, 1, 1]
    # P1 Sec. 5.3: 5 x 3 x 64 + 100 x 5 x 3 = 2460 s of 368 x 96 = 35328 s
    e = p1.effort_arithmetic(5, 64, 100, 5, 368)
    assert e["al_seconds"] == 2460 and e["full_effort_seconds"] == 35328
    assert round(e["fraction"], 4) == 0.0696
    v = {"initial_images": 5, "regions_per_image": 64, "cycles": 100, "regions_per_cycle": 5,
         "train_slices": 368}
    t = p1.effort_table(v, {"initial_images": 5, "per_cycle": 10}, 64, 3, 40)
    assert t.loc["P1 schedule, P1 pool", "al_seconds"] == 2460
    # ours: 5 x 3 x 64 + 3 x 10 x 3 = 1050 s, against 40 x 96 = 3840 s and 35328 s
    assert t.loc["our schedule, our pool"].tolist() == [1050, 3840, round(1050 / 3840, 4)]
    assert t.loc["our schedule, P1's pool", "fraction"] == round(1050 / 35328, 4)
    cfg = p1.al_config("synthetic", "sep", s, heuristic="random", seed=4, n_regions=16)
    assert (cfg.split, cfg.heuristic, cfg.seed, cfg.n_regions, cfg.cycles) == (
        "sep", "random", 4, 16, 2)


def _frame(rows: list[tuple]) -> pd.DataFrame:
    cols = ["split", "heuristic", "n_regions", "supervision", "seed", "cycle", "dice",
            "seconds"]
    return pd.DataFrame(rows, columns=cols)


def test_verdicts_on_hand_made_curves():
    f = _frame([
        ("mixed", "random", 64, "point", 0, 0, 0.10, 960), ("mixed", "random", 64, "point", 0, 1,
                                                             0.20, 975),
        ("mixed", "entropy", 64, "point", 0, 0, 0.10, 960), ("mixed", "entropy", 64, "point", 0,
                                                             1, 0.30, 975),
        ("mixed", "random", 64, "point", 1, 0, 0.10, 960), ("mixed", "random", 64, "point", 1, 1,
                                                             0.25, 975),
        ("mixed", "entropy", 64, "point", 1, 0, 0.10, 960), ("mixed", "entropy", 64, "point", 1,
                                                             1, 0.35, 975),
    ])
    assert p1.fig5_verdict(f, "mixed").startswith("holds")  # +0.10 for both seeds
    assert "+0.100" in p1.fig5_verdict(f, "mixed")
    f.loc[(f.heuristic == "entropy") & (f.seed == 1) & (f.cycle == 1), "dice"] = 0.05
    assert p1.fig5_verdict(f, "mixed").startswith("mixed result")  # -0.05 on average, 1 of 2 higher
    f.loc[(f.heuristic == "entropy") & (f.cycle == 1), "dice"] = 0.0
    assert p1.fig5_verdict(f, "mixed").startswith("not reproduced")

    sizes = pd.DataFrame({"K (regions per image)": [16, 64, 256], "dice_mean": [0.1, 0.2, 0.3]})
    assert p1.fig6_verdict(sizes).startswith("holds (Dice rises with K throughout)")
    sizes["dice_mean"] = [0.3, 0.2, 0.1]
    assert p1.fig6_verdict(sizes).startswith("not reproduced")

    g = _frame([
        ("mixed", "entropy", 64, "point", 0, 0, 0.10, 960),
        ("mixed", "entropy", 64, "point", 0, 1, 0.20, 975),
        ("mixed", "entropy", 64, "pixel", 0, 0, 0.15, 1100),
        ("mixed", "entropy", 64, "pixel", 0, 1, 0.30, 1200),
    ])
    # largest common cost 975 s: point reaches 0.20, per-pixel has nothing that cheap
    assert p1.fig7_verdict(g).startswith("no comparison")
    g.loc[2, "seconds"] = 970
    assert p1.fig7_verdict(g) == "holds: at <= 975 s: point 0.200 vs per-pixel 0.150 Dice"


def _execute(name: str, out_dir: Path, params: dict) -> None:
    import papermill

    papermill.execute_notebook(str(REPO / "notebooks" / f"{name}.ipynb"),
                               str(out_dir / f"{name}.ipynb"), parameters=params,
                               kernel_name="python3", cwd=str(REPO / "notebooks"),
                               progress_bar=False)


def test_the_four_chapters_run_and_write_complete_tables(synthetic_root, tmp_path,
                                                         monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernels: one thread each
    results = tmp_path / "results"
    common = {"profile": "cpu", "device": "cpu", "results_dir": str(results),
              "data_root": str(synthetic_root), "seeds": [0], "overrides": TINY}
    _execute("p1_entropy_vs_random", tmp_path, {**common, "K": 16,
                                                 "splits": ["mixed", "sep"]})
    _execute("p1_region_size", tmp_path, common)
    _execute("p1_point_vs_pixel", tmp_path, {**common, "K": 16})
    _execute("p1_upper_bound", tmp_path, {**common, "K": 16})

    def table(name: str) -> pd.DataFrame:
        frame = pd.read_csv(results / "p1" / f"{name}_synthetic_cpu.csv")
        assert list(frame.columns) == p1.CURVE_COLUMNS
        assert not frame[["dice", "spec", "seconds", "n_labelled_regions"]].isna().any().any()
        return frame

    f5 = table("fig5")  # 2 splits x 2 heuristics x 1 seed x 2 cycles
    assert len(f5) == 8
    assert set(zip(f5.split, f5.heuristic, f5.cycle, strict=True)) == {
        (s, h, c) for s in ("mixed", "sep") for h in ("random", "entropy") for c in (0, 1)}
    # cycle 0: 5 initial images x 16 regions x 3 s; cycle 1: + 2 regions
    assert sorted(set(f5.seconds)) == [240.0, 246.0]
    f6 = table("fig6")  # initial 32 regions: 2 images at K = 16, 1 at K = 64
    assert sorted(set(f6.n_regions)) == [16, 64] and len(f6) == 4
    first = f6[f6.cycle == 0].set_index("n_regions")["n_labelled_regions"]
    assert first.to_dict() == {16: 32, 64: 64}
    f7 = table("fig7")
    assert sorted(set(f7.supervision)) == ["pixel", "point"] and len(f7) == 4
    head = table("headline")
    assert len(head) == 4
    # the point runs of Fig. 7 and the headline are the Fig. 5 runs, read from the cache
    assert len(list((results / "p1_al").glob("*.json"))) == 4 + 2 + 1
    assert not (results / "p1_checkpoints").exists() or not any(
        (results / "p1_checkpoints").iterdir())
    for artifact in ("P1-F5", "P1-F6", "P1-F7", "P1-headline", "P1-F2"):
        entry = json.loads((results / "scorecard" / f"{artifact}.json").read_text())
        assert entry["verdict"] and entry["provenance"]["profile"] == "cpu"


def _curves() -> pd.DataFrame:
    """Two seeds of random and entropy on split 'mixed', cycles 0-1 (hand-made)."""
    rows = []
    for h, dice, spec in (("random", (0.1, 0.2, 0.3, 0.4), (0.9, 0.95, 0.8, 0.97)),
                          ("entropy", (0.2, 0.5, 0.2, 0.7), (0.9, 0.9, 0.9, 0.9))):
        for i, (seed, cycle) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            rows.append({"split": "mixed", "heuristic": h, "n_regions": 64,
                         "supervision": "point", "seed": seed, "cycle": cycle,
                         "n_labelled_regions": 320 + 10 * cycle, "dice": dice[i],
                         "spec": spec[i], "sens": 0.5, "seconds": 960 + 30 * cycle,
                         "n_selected_points": 3})
    return pd.DataFrame(rows)


def test_scorecard_entries_by_hand():
    curves = _curves()
    # last cycle of the random runs: seed 0 spec 0.95, seed 1 spec 0.97
    assert p1.random_specificity_range(curves) == (0.95, 0.97)
    with pytest.raises(ValueError, match="no random-selection run"):
        p1.random_specificity_range(curves[curves.heuristic == "entropy"])
    paper = {"values": {"random_specificity_range": [0.85, 0.99]}, "claims": ["c"]}
    f5 = p1.fig5_scorecard(curves, {"mixed": "holds, split mixed: ..."}, paper)
    # entropy's last-cycle Dice: 0.5 and 0.7 -> 0.600 ± 0.100
    assert f5 == {"paper": "entropy beats random on Dice (A/B, mixed and sep); random spec "
                           "0.85-0.99",
                  "ours": {"mixed entropy Dice": "0.600 ± 0.100", "random spec": "0.95-0.97"},
                  "verdict": "holds: holds, split mixed: ..."}
    both = pd.concat([curves, curves.assign(split="sep")], ignore_index=True)
    two = p1.fig5_scorecard(both, {"mixed": "holds, a", "sep": "mixed result, b"}, paper)
    assert two["ours"]["sep entropy Dice"] == "0.600 ± 0.100"
    assert two["verdict"] == "not reproduced everywhere: holds, a; mixed result, b"
    summary = pd.DataFrame({"K (regions per image)": [16, 64], "dice_mean": [0.31234, 0.5]})
    assert p1.fig6_scorecard(summary, "v", paper) == {
        "paper": "c", "ours": {"K=16": 0.312, "K=64": 0.5}, "verdict": "v"}
    s7 = pd.DataFrame({"supervision": ["point", "pixel"], "Dice (last cycle)": ["0.5", "0.4"],
                       "seconds (last)": [1049.6, 3000.2]})
    assert p1.fig7_scorecard(s7, "v", paper)["ours"] == {
        "point Dice (last)": "0.5", "pixel Dice (last)": "0.4",
        "point seconds (last)": 1050, "pixel seconds (last)": 3000}
    numbers = {"effort_fraction": 0.27349, "dice_fraction": 0.19712, "al_dice": 0.1071,
               "full_dice": 0.5423}
    values = {"effort_fraction": 0.07, "dice_fraction": 0.9, "al_dice": 0.76, "full_dice": 0.84}
    h = p1.headline_scorecard(numbers, values, "v")
    assert h["ours"] == {"effort fraction": 0.273, "Dice fraction": 0.197, "AL Dice": 0.107,
                         "full Dice": 0.542}
    assert h["paper"] == {"effort fraction": 0.07, "Dice fraction": 0.9, "AL Dice": 0.76,
                          "full Dice": 0.84}
