"""The four P1 chapters run end to end under papermill (cpu profile, tiny overrides) on the
phantom and on a tiny folder in ma20-slices' exact layout, and write complete result tables
and scorecard entries naming the data used; the real ma20-slices feed the loop when
../shared/data is present; the profile helpers, mechanism checks and verdicts give
hand-computed values."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidlib.experiments import p1
from covidlib.report import book
from covidlib.verdict import Verdict

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("COVIDLIB_SHARED_DATA", REPO.parent / "shared" / "data"))

TINY = {
    "size": 32, "max_slices": {"train": 8, "val": 3, "test": 4}, "cycles": 1, "epochs": 1,
    "epoch_items": None, "n_samples": 2, "batch_size": 4, "per_cycle": 2,
    "model_kwargs": {"base_width": 4, "depth": 2, "dropout": 0.5}, "fig6_regions": [16, 64],
    "fig6_initial_regions": 32, "full_epochs": 1, "figure_slices": 1,
}


def test_settings_and_helpers():
    s = p1.settings("cpu", {"cycles": 2})
    assert s.cycles == 2 and s.n_regions == 64 and s is not p1.PROFILES["cpu"]
    assert p1.settings("paper").cycles == 100 and p1.settings("paper").epochs == 40
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
    t = p1.effort_table(v, p1.settings("cpu", {"initial_images": 5, "per_cycle": 10}), 64, 3,
                        40)
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
    # largest common cost 975 s: point reaches 0.20, per-pixel has nothing that cheap, and at
    # its cheapest (1100 s) it scores 0.15: point labels are cheaper and higher
    assert p1.fig7_verdict(g) == ("holds (cheaper and higher): point 0.200 Dice at <= 975 s vs "
                                  "per-pixel 0.150 at its cheapest, 1100 s")
    g.loc[2, "dice"] = 0.25
    assert p1.fig7_verdict(g).startswith("no comparison at equal cost: point 0.200")
    g.loc[2, "dice"] = 0.15
    g.loc[2, "seconds"] = 970
    assert p1.fig7_verdict(g) == "holds: at <= 975 s: point 0.200 vs per-pixel 0.150 Dice"


def _execute(name: str, out_dir: Path, params: dict) -> None:
    import papermill

    papermill.execute_notebook(str(REPO / "notebooks" / f"{name}.ipynb"),
                               str(out_dir / f"{name}.ipynb"), parameters=params,
                               kernel_name="python3", cwd=str(REPO / "notebooks"),
                               progress_bar=False)
    # every glue key the prose cites (the "In two lines" opening included) was glued
    nb = nbformat.read(out_dir / f"{name}.ipynb", as_version=4)
    assert book.unresolved_glue(nb) == [], name


def test_the_four_chapters_run_and_write_complete_tables(synthetic_root, tmp_path,
                                                         monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernels: one thread each
    results = tmp_path / "results"
    common = {"profile": "cpu", "device": "cpu", "results_dir": str(results),
              "data_root": str(synthetic_root), "seeds": [0], "overrides": TINY,
              "dataset": "synthetic"}
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
    # the point runs of Fig. 7 and the headline are the Fig. 5 runs, read from the cache;
    # + 1 every-region run of the headline's upper-bound check
    assert len(list((results / "p1_al").glob("*.json"))) == 4 + 2 + 1 + 1
    # one fully supervised baseline per split, shared by every chapter of that split
    assert len(list((results / "p1_full").glob("*.json"))) == 2
    assert not (results / "p1_checkpoints").exists() or not any(
        (results / "p1_checkpoints").iterdir())
    for artifact in ("P1-F5", "P1-F6", "P1-F7", "P1-headline", "P1-F2"):
        entry = json.loads((results / "scorecard" / f"{artifact}.json").read_text())
        assert entry["verdict"] and entry["provenance"]["profile"] == "cpu"
        assert entry["provenance"]["dataset"] == "synthetic"
        if artifact != "P1-F2":
            assert entry["verdict"].startswith(("reproduced", "not reproduced", "inconclusive"))
    head = json.loads((results / "scorecard" / "P1-headline.json").read_text())
    assert "every-region point Dice" in head["ours"]


# --------------------------------------------------------------------------------------------
# ma20-slices: a tiny folder in the real layout (always), the real files (when present)
# --------------------------------------------------------------------------------------------


def write_ma20_fixture(root: Path, per_volume: int = 20, size: int = 32) -> Path:
    """``<root>/ma20-slices`` in the layout of ../shared/data/ma20-slices (data/img/{ct,
    covid,lungs}/NNNN.png, volumes.csv): 10 volumes of ``per_volume`` slices; slice i has a
    bright square of infection (side 6, {0, 255}) at a place that moves with i, on a darker
    lung (left and right thirds)."""
    folder = root / "ma20-slices"
    for sub in ("ct", "covid", "lungs"):
        (folder / "data" / "img" / sub).mkdir(parents=True, exist_ok=True)
    rows, rng = ["slice,volume"], np.random.default_rng(0)
    for i in range(10 * per_volume):
        lung = np.zeros((size, size), np.uint8)
        lung[4:-4, 2:size // 2 - 2] = 255
        lung[4:-4, size // 2 + 2:-2] = 255
        inf = np.zeros((size, size), np.uint8)
        y, x = 6 + (i * 5) % (size - 16), 4 + (i * 3) % (size // 2 - 10)
        inf[y:y + 6, x:x + 6] = 255
        ct = (rng.integers(0, 30, (size, size)) + np.where(lung > 0, 60, 20)
              + np.where(inf > 0, 120, 0)).astype(np.uint8)
        name = f"{i:04d}"
        for sub, arr in (("ct", ct), ("covid", inf), ("lungs", lung)):
            Image.fromarray(arr).save(folder / "data" / "img" / sub / f"{name}.png")
        rows.append(f"{name},{i // per_volume + 1}")
    (folder / "volumes.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_chapters_on_a_tiny_ma20_slices_folder(tmp_path, monkeypatch):
    """dataset="auto" finds the (fixture) ma20-slices, runs Fig. 5 on B-Mixed and B-Sep and
    the headline on B-Mixed, and names ma20-slices in the provenance."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("COVIDLIB_DECODED_CACHE", str(tmp_path / "decoded"))
    root = tmp_path / "data"
    write_ma20_fixture(root)
    assert p1.resolve_dataset("auto", root) == "ma20-slices"
    assert p1.records_scorecard("ma20-slices", root)
    assert not p1.records_scorecard("synthetic", root)  # a phantom run writes no P1 row
    results = tmp_path / "results"
    common = {"profile": "cpu", "device": "cpu", "results_dir": str(results),
              "data_root": str(root), "seeds": [0], "overrides": TINY, "K": 16}
    _execute("p1_entropy_vs_random", tmp_path, {**common, "splits": ["mixed", "sep"]})
    _execute("p1_upper_bound", tmp_path, common)
    f5 = pd.read_csv(results / "p1" / "fig5_ma20-slices_cpu.csv")
    assert set(f5.dataset) == {"ma20-slices"} and set(f5.split) == {"mixed", "sep"}
    assert len(f5) == 8 and not f5[["dice", "spec"]].isna().any().any()
    for artifact in ("P1-F5", "P1-headline", "P1-F2"):
        entry = json.loads((results / "scorecard" / f"{artifact}.json").read_text())
        assert entry["provenance"]["dataset"] == "ma20-slices"
    f5e = json.loads((results / "scorecard" / "P1-F5.json").read_text())
    assert {"mixed entropy infected share", "sep random infected share"} <= set(f5e["ours"])


def test_real_ma20_slices_feed_the_loop():
    if not (SHARED_DATA / "ma20-slices").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA / 'ma20-slices'} (set "
                    "COVIDLIB_SHARED_DATA to the folder holding ma20-slices/)")
    assert p1.resolve_dataset("auto", SHARED_DATA) == "ma20-slices"
    s = p1.settings("cpu", TINY)
    for split, n_train in (("mixed", 556), ("sep", 900)):  # the manifest's splits
        data = p1.load_data("ma20-slices", split, s, SHARED_DATA)
        assert data.fingerprint["name"] == "ma20-slices" and data.fingerprint["real"]
        assert data.n_train_split == n_train and data.masks.shape == (8, 32, 32)
        assert data.masks.any()  # this derivative keeps infected slices only
    cfg = p1.al_config("ma20-slices", "mixed", s, n_regions=16)
    res = p1.run_al(cfg, data_root=SHARED_DATA, device="cpu")
    assert [r["cycle"] for r in res["records"]] == [0, 1]
    assert res["data"]["name"] == "ma20-slices"


# --------------------------------------------------------------------------------------------
# Mechanism checks and verdicts on hand-made runs
# --------------------------------------------------------------------------------------------


def _full(split: str, seed: int, val: list[float], dice: float) -> tuple[dict, dict]:
    hist = [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "val_dice": v}
            for e, v in enumerate(val)]
    return {"split": split, "seed": seed}, {"history": hist, "test": {"dice": dice}}


def test_baseline_convergence_and_chapter_verdict():
    runs = p1.Runs("cpu", "ma20-slices", {})
    runs.full.append(_full("mixed", 0, [0.2, 0.5, 0.6, 0.6, 0.6, 0.6], 0.5))
    runs.full.append(_full("mixed", 1, [0.2, 0.5, 0.6, 0.62, 0.6, 0.6], 0.5))
    runs.full.append(_full("sep", 0, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 0.5))
    curves = p1.baseline_curves(runs)
    assert list(curves.columns) == ["split", "seed", "epoch", "train_loss", "val_dice"]
    assert len(curves) == 18
    # mixed, mean over seeds: 0.2, 0.5, 0.6 | 0.61, 0.6, 0.6 -> gain 0.01: not < 0.01
    c = p1.baseline_convergence(runs, "mixed")
    assert not c.converged and math.isclose(c.gain, 0.01)
    assert p1.baseline_convergence(runs, "mixed", tol=0.02).converged
    assert not p1.baseline_convergence(runs, "sep").converged  # still rising by 0.3
    with pytest.raises(ValueError, match="no fully supervised baseline of split 'x'"):
        p1.baseline_convergence(runs, "x")
    v = p1.chapter_verdict(runs, "sep", "not reproduced: a")
    assert v.label == "inconclusive" and v.text.endswith(": not reproduced: a")
    runs.full[2] = _full("sep", 0, [0.1, 0.6, 0.6, 0.6, 0.6, 0.6], 0.5)
    v = p1.chapter_verdict(runs, "sep", "not reproduced: a", False, "M")
    assert v.text == "not reproduced with a converged baseline, M absent: not reproduced: a"
    assert p1.chapter_verdict(runs, "sep", "holds: b").text == "reproduced: holds: b"
    v = p1.chapter_verdict(runs, "sep", "no comparison at equal cost: c")
    assert v.label == "inconclusive" and v.text.endswith("possible: no comparison at equal cost: c")


def test_upper_bound_check_by_hand():
    c = p1.upper_bound_check(0.2, 0.4, 0.5)
    assert c["al_of_ceiling"] == 0.5 and c["ceiling_of_full"] == 0.8
    assert math.isclose(c["al_of_full"], 0.4) and c["ceiling_reaches_full"] is False
    assert p1.upper_bound_check(0.2, 0.45, 0.5)["ceiling_reaches_full"] is True  # 0.9
    zero = p1.upper_bound_check(0.2, 0.4, 0.0)
    assert math.isnan(zero["ceiling_of_full"]) and zero["ceiling_reaches_full"] is False


def test_mechanism_shares_by_hand():
    shares = pd.DataFrame({
        "split": ["mixed"] * 4 + ["sep"] * 2,
        "heuristic": ["random", "random", "entropy", "entropy", "random", "entropy"],
        "seed": [0] * 6, "cycle": [0, 1, 0, 1, 0, 0], "selected regions": [10] * 6,
        "infected share": [0.1, 0.3, 0.5, 0.7, 0.4, 0.2]})
    assert p1.mechanism_present(shares, "mixed") is True  # 0.6 > 0.2
    assert p1.mechanism_present(shares, "sep") is False  # 0.2 < 0.4
    assert p1.mechanism_present(shares[shares.heuristic == "random"], "mixed") is None
    m = p1.mechanism_summary(shares, {"mixed": 0.25, "sep": 0.3}).set_index(
        ["split", "heuristic"])
    assert m.loc[("mixed", "entropy"), "infected share (mean)"] == 0.6
    assert m.loc[("mixed", "random"), "per cycle"] == "0.10, 0.30"
    assert m.loc[("sep", "random"), "share in the whole pool"] == 0.3


def test_resolve_dataset(tmp_path):
    assert p1.resolve_dataset("auto", tmp_path) == "synthetic"  # no ma20-slices there
    assert p1.resolve_dataset("covid-semiseg", tmp_path) == "covid-semiseg"
    with pytest.raises(ValueError, match="dataset=''"):
        p1.resolve_dataset("", tmp_path)
    assert "COVID-19-B" in p1.data_note("ma20-slices")
    assert "stand-in" in p1.data_note("synthetic")


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
    rep = Verdict("reproduced", "reproduced: holds, split mixed: ...")
    f5 = p1.fig5_scorecard(curves, {"mixed": rep}, paper)
    # entropy's last-cycle Dice: 0.5 and 0.7 -> 0.600 ± 0.100
    assert f5 == {"paper": "entropy beats random on Dice (A/B, mixed and sep); random spec "
                           "0.85-0.99",
                  "ours": {"mixed entropy Dice": "0.600 ± 0.100", "random spec": "0.95-0.97"},
                  "verdict": "reproduced (mixed: reproduced: holds, split mixed: ...)"}
    both = pd.concat([curves, curves.assign(split="sep")], ignore_index=True)
    nope = Verdict("not reproduced", "not reproduced with a converged baseline: b")
    shares = pd.DataFrame({"split": ["mixed", "mixed"], "heuristic": ["random", "entropy"],
                           "infected share": [0.125, 0.5]})
    two = p1.fig5_scorecard(both, {"mixed": rep, "sep": nope}, paper, shares)
    assert two["ours"]["sep entropy Dice"] == "0.600 ± 0.100"
    assert two["ours"]["mixed random infected share"] == 0.12  # round(0.125, 2), half to even
    assert two["ours"]["mixed entropy infected share"] == 0.5
    assert two["verdict"].startswith("not reproduced (mixed: reproduced: holds")
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
    check = p1.upper_bound_check(0.1071, 0.30149, 0.5423)
    h = p1.headline_scorecard(numbers, values, "v", check)
    assert h["ours"]["every-region point Dice"] == 0.301
    assert h["paper"] == {"effort fraction": 0.07, "Dice fraction": 0.9, "AL Dice": 0.76,
                          "full Dice": 0.84}
