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
