"""The two P2 chapters run under papermill (tiny profile) and write every row and column."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import papermill

from covidlib.report import book

REPO = Path(__file__).resolve().parents[1]
TINY = {"size": 32, "epochs": 1, "model_kwargs": {"base_width": 4, "depth": 2},
        "max_slices": {"train": 6, "val": 3, "test": 6},
        "stand_in_seeds": None}  # both seeds on the phantom, for the spread columns


def _run(tmp_path: Path, notebook: str, synthetic_root: Path, **params) -> nbformat.NotebookNode:
    out = tmp_path / f"{notebook}.ipynb"
    papermill.execute_notebook(
        str(REPO / "notebooks" / f"{notebook}.ipynb"), str(out), kernel_name="python3",
        cwd=str(REPO / "notebooks"), progress_bar=False,
        parameters={"profile": "cpu", "dataset": "synthetic", "data_root": str(synthetic_root),
                    "device": "cpu", "seeds": [0, 1], "results_dir": str(tmp_path / "results"),
                    "overrides": TINY, **params})
    nb = nbformat.read(out, as_version=4)
    # every glue key the prose cites (the "In two lines" opening included) was glued
    assert book.unresolved_glue(nb) == [], notebook
    return nb


def _mimes(nb: nbformat.NotebookNode) -> list[str]:
    return [m for c in nb.cells if c.cell_type == "code" for o in c.outputs
            for m in o.get("data", {})]


def test_segmentation_notebook(tmp_path, synthetic_root):
    nb = _run(tmp_path, "p2_segmentation", synthetic_root, tables=["P2-T2", "P2-T4"],
              figure3=True)
    results = tmp_path / "results"
    for artifact in ("P2-T2", "P2-T4"):
        frame = pd.read_csv(results / "p2" / f"{artifact}_synthetic.csv", index_col="loss")
        assert list(frame.index) == ["fully", "pl", "cb_flip", "cb_flip_rot"]
        for m in ("dice", "iou", "ppv", "sens", "spec"):
            for part in ("paper", "mean", "std"):
                assert f"{m}_{part}" in frame.columns
        assert set(frame["n_seeds"]) == {2}
        assert frame.loc["pl", "dice_paper"] == {"P2-T2": 0.54, "P2-T4": 0.57}[artifact]
        assert frame[[f"{m}_mean" for m in ("dice", "iou", "sens", "spec")]].notna().all().all()
    assert _mimes(nb).count("image/png") == 3  # Figure 3 and the two baseline curves
    text = json.dumps(nb)
    assert "pairs are ordered as in the paper" in text and "P2 Table 4" in text
    # the baseline's curve (one per table) beside Figure 3, and a three-way verdict per claim
    assert "**Baseline** (Fully Supervised)" in text
    assert "predicted infection pixels inside the lungs" in text
    assert any(v in text for v in ("**reproduced**", "**not reproduced**", "**inconclusive**"))
    # COVID-19-A's sizes reach the prose through glue: P2's printed 50 / 5 / 48, ours 45 / 5 / 48
    glued = {o["metadata"]["scrapbook"]["name"]: v for c in nb.cells if c.cell_type == "code"
             for o in c.outputs if "scrapbook" in o.get("metadata", {})
             for k, v in o["data"].items() if k.endswith("text/plain")}
    assert {k: glued[f"p2_a_{k}"] for k in ("paper_train", "paper_val", "paper_test",
                                            "paper_train_only")} == {
        "paper_train": "50", "paper_val": "5", "paper_test": "48", "paper_train_only": "45"}
    assert glued["p2_a_ours_train"] == "6"  # the tiny profile keeps 6 training slices
    for artifact in ("P2-T2", "P2-T4", "P2-F3", "P2-S"):
        entry = json.loads((results / "scorecard" / f"{artifact}.json").read_text())
        assert entry["verdict"] and entry["provenance"]["profile"] == "cpu"


def test_counting_notebook(tmp_path, synthetic_root):
    nb = _run(tmp_path, "p2_counting", synthetic_root, tables=["P2-T7"])
    frame = pd.read_csv(tmp_path / "results" / "p2" / "P2-T7_synthetic.csv", index_col="loss")
    assert list(frame.index) == ["pl", "lcfcn", "cb_lcfcn"]
    assert [c for c in frame.columns if c[:3] in ("mae", "gam")] == [
        "mae_paper", "mae_mean", "mae_std", "game_paper", "game_mean", "game_std"]
    assert frame.loc["cb_lcfcn", "game_paper"] == 1.74
    assert (frame[["mae_mean", "game_mean"]] >= 0).all().all()
    assert "predicting no region at all" in json.dumps(nb)
